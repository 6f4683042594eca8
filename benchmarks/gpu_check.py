"""The GPU check: run it whenever a GPU is at hand (about 5 minutes on one H100).

    python benchmarks/gpu_check.py [--cases peak train compile fid ddp] [--steps 200]
        [--batch 128] [--fid_samples 2000] [--matmul_size 8192]
        [--out benchmarks/results/gpu_check.json]

Every case but ``peak`` is one ``diffusion-pl fit`` process (the real CLI, as
benchmarks/scale_throughput.py runs it), no validation unless stated, a CSV logger:

* ``peak``: the GPU's dense matmul GFLOP/s in the training precision (n = ``--matmul_size``,
  8192; bf16 for ``bf16-mixed``; the fastest of 3 runs), the denominator of MFU.
* ``train``: configs/cifar10/rectified_flow.yaml's UNet (35.7 M parameters) in
  ``--precision`` (bf16-mixed), ``--steps`` steps at ``--batch``, on random 32×32 RGB images in
  local parquet shards (CIFAR-10's shape; CIFAR-10 itself needs the hub). Images/s is the
  :class:`~diffusion_pl.callbacks.Throughput` rate of the last 20 steps, so start-up is left
  out; MFU = images/s × the training FLOPs of one image (forward + backward counted by
  ``FlopCounterMode``, attention included; norms and activations not) ÷ the ``peak``.
* ``compile``: the same with :class:`~diffusion_pl.callbacks.CompileNet` (inductor); the wall
  time includes compiling.
* ``fid``: configs/digits/rectified_flow.yaml, ``--steps`` steps at ``--batch``, then one
  validation with its FID callback at ``--fid_samples`` samples (the shipped digits features,
  offline), against the same run without it: the difference is the FID's seconds here.
* ``ddp``: the digits config under ``DDPStrategy`` with the ``--backend`` process group (NCCL)
  on 1 device, ``--steps`` steps at ``--batch``: it must finish; its images/s.

``--device cpu --precision 32-true --backend gloo`` runs the same cases on the CPU (the
smoke test does so with ``--base_channels`` narrowing the CIFAR-10 UNet). Writes JSON and a
Markdown report (``.md`` beside it, also printed).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import torch
import yaml
from _common import ROOT, markdown_table, report_header, run_record, write_results
from scale_throughput import CONFIGS, cifar_shards, fit_rate, hf_source
from unet_throughput import counted_flops, matmul_peak_gflops

CASES = ("peak", "train", "compile", "fid", "ddp")


def cifar_model(base_channels: int | None) -> dict:
    """configs/cifar10/rectified_flow.yaml's ``model`` (its UNet narrowed if asked)."""
    model = yaml.safe_load((ROOT / CONFIGS["cifar"]).read_text())["model"]
    if base_channels is not None:
        model["init_args"]["net"]["init_args"]["base_channels"] = base_channels
    return model


def training_flops_per_image(net: dict) -> int:
    """FLOPs of one image's forward + backward through ``net`` (a class_path/init_args dict),
    counted as unet_throughput counts them (:func:`counted_flops`) on a batch of 2 (per image:
    half of it)."""
    module_name, _, class_name = net["class_path"].rpartition(".")
    model = getattr(importlib.import_module(module_name), class_name)(**net["init_args"])
    size, channels = model.image_size, model.in_channels
    x, t = torch.randn(2, channels, size, size), torch.rand(2)
    return counted_flops(lambda: model(x, t).square().mean().backward()) // 2


def trainer_settings(args: argparse.Namespace, **more: object) -> dict:
    """The trainer keys every fit case shares: the device and the precision."""
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    return {"accelerator": accelerator, "precision": args.precision, **more}


def compile_callback() -> list[dict]:
    """The callbacks of the ``compile`` case: CompileNet with inductor."""
    return [{"class_path": "diffusion_pl.callbacks.CompileNet",
             "init_args": {"backend": "inductor"}}]  # fmt: skip


def fid_callback(samples: int) -> list[dict]:
    """The callbacks of the ``fid`` case: the digits config's FID at ``samples`` samples."""
    return [{"class_path": "diffusion_pl.callbacks.FID",
             "init_args": {"feature": {"class_path": "diffusion_pl.metrics.DigitsFeatures"},
                           "num_samples": samples, "batch_size": 500}}]  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    """Every case of ``--cases``; the rows and, with ``peak`` and ``train``, the MFU."""
    results: dict = {"rows": []}
    work, steps, batch = args.workdir, args.steps, args.batch
    if "peak" in args.cases:
        dtype = torch.bfloat16 if args.precision.startswith("bf16") else torch.float32
        peak = matmul_peak_gflops(args.matmul_size, args.device, 3, dtype=dtype)
        results["peak_gflops"] = round(peak, 1)
    if {"train", "compile"} & set(args.cases):
        model = cifar_model(args.base_channels)
        flops = training_flops_per_image(model["init_args"]["net"])
        results["train_gflop_per_image"] = round(flops / 1e9, 3)
        shards = cifar_shards(work / "cifar_shards", n=max(512, batch))
        source = hf_source(shards, 32, 3, streaming=False)
        for case, callbacks in (("train", []), ("compile", compile_callback())):
            if case in args.cases:
                row = fit_rate(case, "cifar", source, 1, batch, steps, work,
                               trainer_settings(args, callbacks=callbacks), model)  # fmt: skip
                if "peak_gflops" in results:
                    achieved = row["images_per_sec"] * results["train_gflop_per_image"]
                    row["mfu"] = round(achieved / results["peak_gflops"], 4)
                results["rows"].append(row)
    if "fid" in args.cases:
        once = {"limit_val_batches": 1, "val_check_interval": steps,
                "check_val_every_n_epoch": None}  # fmt: skip
        for case, callbacks in (("fid", fid_callback(args.fid_samples)), ("no_fid", [])):
            evaluate = trainer_settings(args, callbacks=callbacks, **once)
            results["rows"].append(fit_rate(case, "digits", None, 1, batch, steps, work, evaluate))
        with_fid, without = results["rows"][-2:]
        results["fid_seconds"] = round(with_fid["wall_seconds"] - without["wall_seconds"], 1)
    if "ddp" in args.cases:
        ddp = {"class_path": "lightning.pytorch.strategies.DDPStrategy",
               "init_args": {"process_group_backend": args.backend}}  # fmt: skip
        results["rows"].append(fit_rate("ddp", "digits", None, 1, batch, steps, work,
                                        trainer_settings(args, strategy=ddp)))  # fmt: skip
    return results


def report(results: dict) -> str:
    """The Markdown report: one row per fit, then the peak, MFU and FID seconds."""
    s = results["settings"]
    lines = report_header(
        "GPU check: bf16 training throughput and MFU, compile, FID, DDP", results,
        f"device {s['device']}, precision {s['precision']}, DDP backend {s['backend']}.",
    )  # fmt: skip
    rows = [[r["case"], r["net"], r["global_batch"], r["steps"], r["images_per_sec"],
             r.get("mfu", "—"), r["wall_seconds"], r["metrics"].get("val/fid", "—")]
            for r in results["rows"]]  # fmt: skip
    headers = ["case", "config", "batch", "steps", "images/s", "MFU", "wall s", "val/fid"]
    lines.append(markdown_table(headers, rows))
    for key in ("peak_gflops", "train_gflop_per_image", "fid_seconds"):
        if key in results:
            lines.append(f"\n{key}: {results[key]}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--steps", type=int, default=200, help="training steps of each fit")
    parser.add_argument("--batch", type=int, default=128, help="the global batch of every fit")
    parser.add_argument("--fid_samples", type=int, default=2000)
    parser.add_argument("--base_channels", type=int, help="narrow the CIFAR-10 UNet")
    parser.add_argument("--matmul_size", type=int, default=8192, help="n of the peak's matmul")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--backend", default="nccl", help="DDP process group backend")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/benchmarks/gpu_check")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gpu_check.json")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; use --device cpu for the smoke run")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the check; return what it wrote to ``--out``."""
    args = parse_args(argv)
    results = {**run_record("gpu_check.py", argv, args), **run(args)}
    markdown = report(results)
    write_results(args.out, results, markdown)
    print(markdown, flush=True)
    return results


if __name__ == "__main__":
    main()
