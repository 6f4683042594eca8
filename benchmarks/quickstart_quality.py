"""The README quick start's quality per CPU-minute: its final FID over training and sampling seeds.

    python benchmarks/quickstart_quality.py [--config configs/digits/rectified_flow.yaml]
        [--seeds 0 1 2] [--sampling_seeds 0 1] [--num_samples 2000]
        [--override KEY VALUE ...] [--workdir runs/bench/quickstart_quality] [--rescore]
        [--out benchmarks/results/quickstart_quality.json]

The quick start reports one 500-sample ``val/fid`` of one run, which moves by several points
with the seed. This script fits the config as the quick start does (its callbacks, FID checks
and sample grids included, so the wall time is what a user waits), once per training seed
(``seed_everything``), and scores each final checkpoint as the config's FID callback does (EMA
weights, the model's sampler, and the callback's autoguidance guide: an
``EarlierSelf`` guide is the file the run wrote) with ``--num_samples`` samples against val
(digits features) for each sampling seed.
``--override KEY VALUE`` (repeatable) passes a CLI override to every fit, e.g. ``--override
model.init_args.time_sampling diffusion_pl.time_sampling.LogitNormal``, so that a changed
recipe is measured the same way.

Reported: per training seed the fit's wall seconds, its own last ``val/fid``, and the FID per
sampling seed; then the mean over everything, the spread over sampling seeds (largest
max − min within a training seed), the standard deviation over the training seeds' means,
and the ratio to the real-data floor (issue 27's target: ≤ 2× the floor, 8.5). About 10
minutes per training seed on 2 CPU cores, plus ~30 s per 2,000-sample FID.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, markdown_table, report_header, run_record, shown, write_results

from diffusion_pl.checkpoints import load_datamodule, load_module
from diffusion_pl.cli import main as cli
from diffusion_pl.metrics import FIDEvaluator

DIGITS_FLOOR = 4.25
"""FID of the digits train split against val with the digits features (RESULTS.md, issue 4)."""


def fit(config: Path, root: Path, seed: int, overrides: list[list[str]]) -> tuple[Path, float]:
    """``diffusion-pl fit`` of ``config`` with ``seed`` under ``root``: its last.ckpt and the
    wall seconds it took."""
    extra = [arg for key, value in overrides for arg in (f"--{key}", value)]
    start = time.perf_counter()
    cli(["fit", "--config", str(config), "--seed_everything", str(seed),
         "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
         *extra])  # fmt: skip
    seconds = time.perf_counter() - start
    return max(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime), seconds


def fid_guide(config: Path, ckpt: Path) -> dict:
    """The autoguidance of ``config``'s FID callback, as ``FIDEvaluator.evaluate`` arguments:
    the guide ``EarlierSelf`` wrote beside ``ckpt`` and its w, or none (also when the run
    stopped before the guide's step, as the callback then samples unguided)."""
    for callback in yaml.safe_load(config.read_text())["trainer"].get("callbacks", []):
        init = callback.get("init_args", {})
        if callback["class_path"].endswith("callbacks.FID") and init.get("guide"):
            guide = init["guide"]
            if not guide["class_path"].endswith("EarlierSelf"):
                raise ValueError(f"{config}: only an EarlierSelf guide is scored here")
            path = ckpt.parent / f"guide-step={guide['init_args']['step']}.ckpt"
            if not path.exists():
                return {}
            return {"guide": load_module(path).eval().requires_grad_(False),
                    "guidance_scale": init["guidance_scale"]}  # fmt: skip
    return {}


def last_val_fid(ckpt: Path) -> float | None:
    """The run's own last ``val/fid`` (its FID callback's, at the config's sample count)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    for callback in state.get("callbacks", {}).values():
        if "best_model_score" in callback and callback.get("monitor") == "val/fid":
            score = callback.get("current_score")
            return None if score is None else float(score)
    return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/digits/rectified_flow.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sampling_seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--num_samples", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=500, help="images per sampling batch")
    parser.add_argument("--override", nargs=2, action="append", default=[],
                        metavar=("KEY", "VALUE"), help="a CLI override of every fit")  # fmt: skip
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="score the last.ckpt of each seed under --workdir, without fitting",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/bench/quickstart_quality")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks/results/quickstart_quality.json")  # fmt: skip
    args = parser.parse_args(argv)
    results = {**run_record("quickstart_quality.py", argv, args), "runs": []}
    evaluators = {seed: FIDEvaluator("digits", "val", args.num_samples, args.batch_size,
                                     seed=seed, progress=False)
                  for seed in args.sampling_seeds}  # fmt: skip
    for seed in args.seeds:
        root = args.workdir / f"seed{seed}"
        if args.rescore:  # score the fits of an earlier call again, e.g. with more samples
            ckpt, seconds = max(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime), None
        else:
            ckpt, seconds = fit(args.config, root, seed, args.override)
        module = load_module(ckpt, map_location=args.device).eval()
        datamodule = load_datamodule(ckpt)
        guide = fid_guide(args.config, ckpt)
        fids = {k: round(e.evaluate(module, datamodule, **guide)["fid"], 3)
                for k, e in evaluators.items()}  # fmt: skip
        results["runs"].append({"seed": seed, "fit_seconds": seconds and round(seconds, 1),
                                "guided": bool(guide),
                                "val_fid": last_val_fid(ckpt), "fid": fids})  # fmt: skip
        write_results(args.out, results, report(results))
    print(report(results), flush=True)
    return results


def summary(runs: list[dict]) -> dict:
    """Mean FID over all runs and sampling seeds, the largest spread over sampling seeds within
    a run, the standard deviation of the runs' means, and the mean fit seconds."""
    means = [statistics.fmean(r["fid"].values()) for r in runs]
    fits = [r["fit_seconds"] for r in runs]
    return {
        "mean": statistics.fmean(means),
        "sampling_spread": max(max(r["fid"].values()) - min(r["fid"].values()) for r in runs),
        "seed_std": statistics.stdev(means) if len(means) > 1 else None,
        "fit_seconds": None if None in fits else statistics.fmean(fits),
    }


def report(results: dict) -> str:
    """The Markdown report: a row per training seed, then the summary against the floor."""
    s = results["settings"]
    lines = report_header(
        "The quick start's final FID over seeds", results,
        f"Config {Path(s['config']).name}, overrides {s['override'] or 'none'}; FID of "
        f"{s['num_samples']:,} samples (EMA weights) against val, digits features.",
    )  # fmt: skip
    sampling = s["sampling_seeds"]
    rows = [[r["seed"], shown(r["fit_seconds"]), shown(r["val_fid"], "{:.2f}"),
             *(f"{r['fid'][k]:.2f}" for k in sampling)] for r in results["runs"]]  # fmt: skip
    header = [
        "training seed",
        "fit s",
        "own val/fid",
        *(f"FID, sampling seed {k}" for k in sampling),
    ]
    lines += [markdown_table(header, rows), ""]
    m = summary(results["runs"])
    std = shown(m["seed_std"], "{:.2f}")
    lines += [markdown_table(
        ["mean FID", "spread over sampling seeds", "std over training seeds", "÷ floor (≤ 2)",
         "mean fit s"],
        [[f"{m['mean']:.2f}", f"{m['sampling_spread']:.2f}", std,
          f"{m['mean'] / DIGITS_FLOOR:.2f}", shown(m["fit_seconds"], "{:.0f}")]],
    )]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
