"""Latent against pixel diffusion on the 32x32 digits, with the autoencoder trained here.

    python benchmarks/latent_quality.py [--ae_steps 3000] [--minutes 10] [--num_samples 2000]
        [--workdir runs/bench/latent_quality] [--out benchmarks/results/latent_quality.json]

1. Fits configs/digits/autoencoder.yaml for ``--ae_steps`` steps (its export writes the
   autoencoder with its measured scaling factor) and measures its rFID: the digits-features FID
   of the reconstructions of the 360 val images against the val statistics, beside the
   real-data floor (the 1,437 train images against val, at 32x32).
2. Encodes the digits with it (``diffusion-pl encode``), then fits the configs/digits/ files
   latent_rectified_flow.yaml (on the codes) and rectified_flow_32.yaml (on the pixels) for
   the same wall time, ``--minutes`` each (Lightning's ``max_time``; the autoencoder's own
   training is not counted), without their FID and sample-grid callbacks.
3. Scores each with the FID of ``--num_samples`` samples (EMA weights, 50 Euler steps; latent
   samples decoded) against val, and times sampling (images per second, decoding included).
4. Draws the picture: rows of real val images, their reconstructions, latent samples and pixel
   samples (``.png`` beside the JSON).

Writes JSON and a Markdown report (``.md``, also printed). The issue's targets: rFID ≤ 2× the
floor; latent FID ≤ 1.5× the pixel FID. ``--base_channels``, ``--ae_channels`` and small
counts make the tiny run of tests/benchmarks (about 10 s).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, markdown_table, report_header, run_record, write_results

from diffusion_pl.autoencoders import reconstruction_fid
from diffusion_pl.checkpoints import load_datamodule, load_module
from diffusion_pl.cli import main as cli
from diffusion_pl.data import DiffusionDataModule, Digits
from diffusion_pl.generate import generate
from diffusion_pl.metrics import FIDEvaluator
from diffusion_pl.visualize import save_image_grid

NO_PICTURES = ["--trainer.callbacks", "lightning.pytorch.callbacks.ModelCheckpoint",
               "--trainer.callbacks.save_last", "true",
               "--trainer.callbacks+=diffusion_pl.callbacks.EMA",
               "--trainer.callbacks.halflife_samples", "10000",
               "--trainer.callbacks.rampup_ratio", "0.05"]  # fmt: skip


def fit(config: str, root: Path, *overrides: str) -> Path:
    """``diffusion-pl fit`` of a shipped config under ``root``, without validation; its
    newest last.ckpt."""
    cli(["fit", "--config", str(ROOT / "configs/digits" / config),
         "--trainer.default_root_dir", str(root), "--trainer.limit_val_batches", "0",
         "--trainer.enable_progress_bar", "false", *overrides])  # fmt: skip
    return max(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)


def sample_and_score(ckpt: Path, args: argparse.Namespace) -> tuple[dict, torch.Tensor]:
    """FID of ``num_samples`` samples (decoded), sampling speed, and the first 10 samples."""
    module = load_module(ckpt, args.device).eval()
    datamodule = load_datamodule(ckpt)
    n = min(args.num_samples, 500)
    start = time.perf_counter()
    x = datamodule.decode(generate(module, n, seed=1, batch_size=n).to(args.device))
    seconds = time.perf_counter() - start
    evaluator = FIDEvaluator("digits", num_samples=args.num_samples, batch_size=500,
                             cache_dir=str(args.workdir / "fid"), progress=False)  # fmt: skip
    fid = evaluator.evaluate(module, datamodule)["fid"]
    steps = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    return {"fid": fid, "img_per_s": n / seconds, "steps": steps}, x[:10].cpu()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ae_steps", type=int, default=3000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--num_samples", type=int, default=2000)
    parser.add_argument("--ae_channels", type=int, nargs="+", default=None)
    parser.add_argument("--base_channels", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/bench/latent_quality")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/latent_quality.json")
    args = parser.parse_args(argv)
    results = run_record("latent_quality.py", argv, args)
    accel = ["--trainer.accelerator", "gpu" if args.device.startswith("cuda") else "cpu"]
    ae_args = [*accel, "--trainer.max_steps", str(args.ae_steps), *NO_PICTURES]
    if args.ae_channels:
        ae_args += ["--model.init_args.block_out_channels", str(args.ae_channels),
                    "--model.init_args.norm_num_groups", str(min(args.ae_channels))]  # fmt: skip
    start = time.perf_counter()
    ae_ckpt = fit("autoencoder.yaml", args.workdir / "autoencoder", *ae_args)
    ae_seconds = time.perf_counter() - start
    autoencoder = ae_ckpt.parent.parent / "autoencoder"

    ae = load_module(ae_ckpt, args.device).eval()
    digits = DiffusionDataModule(Digits(size=32))
    evaluator = FIDEvaluator("digits", num_samples=360, batch_size=360,
                             cache_dir=str(args.workdir / "fid"), progress=False)  # fmt: skip
    rfid = reconstruction_fid(evaluator, ae, digits)["fid"]
    evaluator.prepare_reference(digits)
    floor = evaluator.score_images(digits.real_samples("train", 1437))["fid"]
    results["autoencoder"] = {"folder": str(autoencoder), "train_s": ae_seconds,
                              "rfid": rfid, "floor": floor}  # fmt: skip

    codes = args.workdir / "latents"
    cli(["encode", "--config", str(ROOT / "configs/digits/rectified_flow_32.yaml"),
         "--autoencoder", str(autoencoder), "--output", str(codes),
         "--device", args.device])  # fmt: skip
    budget = time.strftime("%H:%M:%S", time.gmtime(args.minutes * 60))
    run = [*accel, "--trainer.max_steps", "-1", "--trainer.max_time", f"00:{budget}",
           *NO_PICTURES]  # fmt: skip
    if args.base_channels:
        run += ["--model.init_args.net.init_args.base_channels", str(args.base_channels)]
    latent = fit("latent_rectified_flow.yaml", args.workdir / "latent", *run,
                 "--data.source.init_args.path", str(codes))  # fmt: skip
    pixel = fit("rectified_flow_32.yaml", args.workdir / "pixel", *run)
    results["latent"], latent_x = sample_and_score(latent, args)
    results["pixel"], pixel_x = sample_and_score(pixel, args)

    real = digits.real_samples("val", 10)
    with torch.no_grad():
        reconstructed = ae.reconstruct(real.to(args.device)).clamp(-1, 1).cpu()
    picture = save_image_grid(torch.cat([real, reconstructed, latent_x, pixel_x]),
                              args.out.with_suffix(".png"), nrow=10)  # fmt: skip
    results["picture"] = picture.name  # beside the JSON
    write_results(args.out, results, report(results))
    print(report(results))
    return results


def report(results: dict) -> str:
    """The Markdown report."""
    ae, latent, pixel = results["autoencoder"], results["latent"], results["pixel"]
    minutes = results["settings"]["minutes"]
    lines = report_header(
        "Latent against pixel rectified flow on the 32x32 digits", results,
        f"Autoencoder: {results['settings']['ae_steps']} steps in {ae['train_s']:.0f} s; each "
        f"flow {minutes:g} min of training; FID of {results['settings']['num_samples']} "
        "samples against val (digits features).",
    )  # fmt: skip
    rows = [
        ["autoencoder rFID (val reconstructions)", f"{ae['rfid']:.2f}",
         f"≤ 2 × floor {ae['floor']:.2f} = {2 * ae['floor']:.2f}"],
        ["latent rectified flow FID", f"{latent['fid']:.2f}",
         f"≤ 1.5 × pixel = {1.5 * pixel['fid']:.2f}"],
        ["pixel rectified flow FID", f"{pixel['fid']:.2f}", ""],
        ["steps in the budget (latent / pixel)", f"{latent['steps']} / {pixel['steps']}", ""],
        ["sampling img/s (latent / pixel)",
         f"{latent['img_per_s']:.1f} / {pixel['img_per_s']:.1f}",
         f"ratio {latent['img_per_s'] / pixel['img_per_s']:.2f}"],
    ]  # fmt: skip
    lines += [markdown_table(["figure", "value", "target"], rows), "",
              f"Picture ({results['picture']}): rows of real val digits, their "
              "reconstructions, latent samples, pixel samples."]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
