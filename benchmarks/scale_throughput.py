"""Training throughput in images per second: 1 against 2 processes, in-memory against streamed.

    python benchmarks/scale_throughput.py [--cases digits cifar stream] [--digits_steps 80]
        [--cifar_steps 26] [--digits_batch 128] [--cifar_batch 8]
        [--out benchmarks/results/scale_throughput.json]

Every case is one ``diffusion-pl fit`` process tree on the CPU (Lightning starts the second
process of a 2-process run; DDP over gloo), fp32, no validation, no callbacks of the config's
own, a CSV logger writing every step. The figure is the ``train/images_per_sec`` that
:class:`diffusion_pl.callbacks.Throughput` logs at the last step: the global batch × the last
20 optimizer steps over their wall-clock time, all processes together, so the first
steps (start-up, allocation) are left out. A 1-process run uses 2 torch threads, a 2-process
run 1 each: the same 2 cores either way. The global batch is the same for 1 and 2 processes
(``data.global_batch_size``), so both train the same model (tests/training/test_global_batch.py).

Cases:

* ``digits``: configs/digits/rectified_flow.yaml (its UNet, 8×8 greyscale, the in-memory
  scikit-learn digits), 1 and 2 processes.
* ``cifar``: configs/cifar10/rectified_flow.yaml's DDPM-size UNet (35.7 M parameters, 32×32
  RGB) on a local parquet copy of random images (CIFAR-10 itself needs the hub), 1 and 2
  processes.
* ``stream``: the digits case again, reading the same 1,437 train images as PNGs from 4
  local parquet shards through ``HFImages(streaming: true)`` (shuffle buffer 256), against the
  same shards read into memory (``streaming: false``) and the in-memory digits; 1 process,
  then 2 streamed.

Writes JSON and a Markdown report (``.md``, also printed).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import datasets as hf
import numpy as np
import PIL.Image
import yaml
from _common import ROOT, markdown_table, report_header, run_record, write_results

from diffusion_pl.callbacks import Throughput
from diffusion_pl.data import Digits

CONFIGS = {
    "digits": "configs/digits/rectified_flow.yaml",
    "cifar": "configs/cifar10/rectified_flow.yaml",
}
WINDOW = Throughput().window  # the steps its images/s averages over
SHARDS = 4


def write_shards(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """``images`` (uint8 [N, H, W] or [N, H, W, 3]) as PNGs in SHARDS train parquet shards and a
    test shard of the first 64 (HFImages needs a val split)."""
    features = hf.Features({"image": hf.Image(), "label": hf.Value("int64")})
    root.mkdir(parents=True, exist_ok=True)

    def shard(index: np.ndarray, path: Path) -> None:
        rows = {"image": [PIL.Image.fromarray(images[i]) for i in index],
                "label": [int(labels[i]) for i in index]}  # fmt: skip
        hf.Dataset.from_dict(rows, features=features).to_parquet(path)

    for k, index in enumerate(np.array_split(np.arange(len(images)), SHARDS)):
        shard(index, root / f"train-{k}.parquet")
    shard(np.arange(64), root / "test-0.parquet")
    return root


def digits_shards(root: Path) -> Path:
    """The digits train split (8×8, 17 grey levels) as 8-bit PNG shards."""
    x, y = Digits().load("train").tensors
    pixels = ((x[:, 0] + 1) * 127.5).round().clamp(0, 255).byte()
    return write_shards(root, pixels.numpy(), y.numpy())


def cifar_shards(root: Path, n: int = 512) -> Path:
    """``n`` random 32×32 RGB images: the CIFAR-10 shape without the hub."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return write_shards(root, images, rng.integers(0, 10, n))


def hf_source(path: Path, size: int, channels: int, streaming: bool) -> dict:
    """The ``data.source`` of local parquet shards."""
    files = {"train": "train-*.parquet", "test": "test-*.parquet"}
    return {"class_path": "diffusion_pl.data.HFImages",
            "init_args": {"path": str(path), "builder": "parquet", "image_column": "image",
                          "label_column": "label", "image_size": size, "channels": channels,
                          "num_classes": None, "streaming": streaming, "shuffle_buffer": 256,
                          "data_files": files}}  # fmt: skip


def fit_rate(
    name: str,
    net: str,
    source: dict | None,
    processes: int,
    batch: int,
    steps: int,
    workdir: Path,
    trainer: dict | None = None,
    model: dict | None = None,
) -> dict:
    """Run one case (fp32 on the CPU unless ``trainer`` overrides those keys; ``model``, if
    given, replaces the config's model); its images per second over the last window, the whole
    wall time, and the last value of every metric."""
    root = workdir / name
    override = {
        "trainer": {"accelerator": "cpu", "devices": processes, "precision": "32-true",
                    "strategy": "ddp" if processes > 1 else "auto", "max_steps": steps,
                    "limit_val_batches": 0, "log_every_n_steps": 1, "callbacks": [],
                    "enable_progress_bar": False, "default_root_dir": str(root),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(root)}}},
        "data": {"global_batch_size": batch, "max_device_batch": None, "num_workers": 0,
                 "pin_memory": False},
    }  # fmt: skip
    override["trainer"].update(trainer or {})
    if model is not None:
        override["model"] = model
    if source is not None:
        override["data"]["source"] = source
    root.mkdir(parents=True, exist_ok=True)
    (root / "override.yaml").write_text(yaml.safe_dump(override, sort_keys=False))
    threads = str(2 // processes)
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": path}
    command = [sys.executable, "-m", "diffusion_pl", "fit", "--config", str(ROOT / CONFIGS[net]),
               "--config", str(root / "override.yaml")]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    metrics = max(root.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    last = {key: float(value) for row in csv.DictReader(metrics.open())
            for key, value in row.items() if value}  # fmt: skip
    return {"case": name, "net": net, "processes": processes, "threads_per_process": int(threads),
            "global_batch": batch, "steps": steps, "images_per_sec": last["train/images_per_sec"],
            "wall_seconds": round(wall, 1), "metrics": last}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=["digits", "cifar", "stream"],
                        default=["digits", "cifar", "stream"])  # fmt: skip
    parser.add_argument("--digits_steps", type=int, default=80)
    parser.add_argument("--cifar_steps", type=int, default=26)
    parser.add_argument("--digits_batch", type=int, default=128)
    parser.add_argument("--cifar_batch", type=int, default=8)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/benchmarks/scale_throughput")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks/results/scale_throughput.json")  # fmt: skip
    args = parser.parse_args(argv)
    rows = []
    digits = (args.digits_batch, args.digits_steps)
    if "digits" in args.cases:
        rows += [fit_rate(f"digits_{p}proc", "digits", None, p, *digits, args.workdir)
                 for p in (1, 2)]  # fmt: skip
    if "cifar" in args.cases:
        source = hf_source(cifar_shards(args.workdir / "cifar_shards"), 32, 3, streaming=False)
        rows += [fit_rate(f"cifar_{p}proc", "cifar", source, p, args.cifar_batch,
                          args.cifar_steps, args.workdir) for p in (1, 2)]  # fmt: skip
    if "stream" in args.cases:
        shards = digits_shards(args.workdir / "digits_shards")
        if "digits" not in args.cases:
            rows.append(fit_rate("digits_1proc", "digits", None, 1, *digits, args.workdir))
        memory = hf_source(shards, 8, 1, streaming=False)
        rows.append(fit_rate("parquet_in_memory_1proc", "digits", memory, 1, *digits, args.workdir))
        stream = hf_source(shards, 8, 1, streaming=True)
        rows += [fit_rate(f"parquet_streamed_{p}proc", "digits", stream, p, *digits, args.workdir)
                 for p in (1, 2)]  # fmt: skip
    results = {**run_record("scale_throughput.py", argv, args), "rows": rows}
    write_results(args.out, results, report(results))
    print(report(results), flush=True)
    return results


def report(results: dict) -> str:
    """The Markdown report: img/s per case, and each against its 1-process in-memory peer."""
    rows = results["rows"]
    peers = ("digits_1proc", "cifar_1proc")
    base = {r["net"]: r["images_per_sec"] for r in rows if r["case"] in peers}
    table = [[r["case"], r["net"], r["processes"], r["threads_per_process"], r["global_batch"],
              r["steps"], f"{r['images_per_sec']:.1f}",
              f"{r['images_per_sec'] / base[r['net']]:.2f}" if r["net"] in base else "",
              r["wall_seconds"]] for r in rows]  # fmt: skip
    lines = report_header(
        "Training throughput: processes and streaming",
        results,
        f"images/s over the last {WINDOW} steps of each run; ratio: "
        "against the same net's 1-process in-memory run of this call.",
    )
    headers = ["case", "net", "processes", "threads each", "global batch", "steps", "images/s",
               "ratio", "wall s"]  # fmt: skip
    return "\n".join([*lines, markdown_table(headers, table), ""])


if __name__ == "__main__":
    main()
