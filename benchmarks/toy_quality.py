"""Train each formulation's toy2d config with its defaults, then measure mode coverage.

    python benchmarks/toy_quality.py [--configs configs/toy2d/rectified_flow.yaml ...]
        [--dataset 8gaussians] [--num_samples 5000] [--out benchmarks/results/toy_quality.json]

For each config: ``diffusion-pl fit`` in a subprocess (wall time measured, the ~7 s Lightning
import included: ``train_seconds`` up to the final checkpoint, ``fit_seconds`` also with the
end-of-fit sample picture), then ``num_samples`` samples with the config's default sampler,
scored by the fraction within 3 std of a mode and each mode's share
(``diffusion_pl.metrics.mode_stats``). ``consistency_distill.yaml`` runs last and distils the
rectified flow this benchmark trained (its newest checkpoint under ``--workdir``), or, when
there is none, the teacher its config names (runs/toy2d/rectified_flow).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from diffusion_pl.checkpoints import load_module
from diffusion_pl.data import Toy2D
from diffusion_pl.metrics import mode_stats

ROOT = Path(__file__).resolve().parents[1]


def run(config: Path, dataset: str, num_samples: int, workdir: Path, extra: list[str]) -> dict:
    """Fit one config (defaults plus ``extra`` overrides) and score its samples."""
    root = workdir / config.stem / dataset
    cmd = [sys.executable, "-m", "diffusion_pl", "fit", "--config", str(config),
           "--data.source.init_args.name", dataset, "--trainer.default_root_dir", str(root),
           "--trainer.enable_progress_bar", "false", *extra]  # fmt: skip
    start, wall_start = time.perf_counter(), time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    fit_seconds = time.perf_counter() - start
    ckpt = max(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    # Up to the final checkpoint: start-up and training, without the end-of-fit picture.
    train_seconds = ckpt.stat().st_mtime - wall_start
    module = load_module(ckpt)
    start = time.perf_counter()
    samples = module.sample(num_samples, generator=torch.Generator().manual_seed(0))
    sample_seconds = time.perf_counter() - start
    spec = Toy2D(dataset).mixture()
    stats = mode_stats(samples, spec.means, float(spec.stds[0]))
    return {
        "config": str(config.resolve().relative_to(ROOT)),
        "dataset": dataset,
        "overrides": extra,
        "train_seconds": round(train_seconds, 1),
        "fit_seconds": round(fit_seconds, 1),
        "sampler": repr(module.sampler),
        "sample_seconds": round(sample_seconds, 1),
        "within_3_std": round(stats.within, 4),
        "mode_weights": [round(w, 4) for w in stats.weights.tolist()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", type=Path,
                        default=sorted((ROOT / "configs/toy2d").glob("*.yaml")))  # fmt: skip
    parser.add_argument("--dataset", default="8gaussians")
    parser.add_argument("--num_samples", type=int, default=5000)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/benchmarks/toy_quality")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/toy_quality.json")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="overrides for every fit, e.g. --trainer.max_steps 100")  # fmt: skip
    args = parser.parse_args()
    results = []
    for config in sorted(args.configs, key=lambda c: c.stem == "consistency_distill"):
        if config.stem == "reflow":
            continue  # needs a trained flow and its pairs: see benchmarks/reflow_toy.py
        extra = args.extra
        teachers = list((args.workdir / "rectified_flow" / args.dataset).rglob("last.ckpt"))
        if config.stem == "consistency_distill" and teachers:
            teacher = max(teachers, key=lambda p: p.stat().st_mtime)
            extra = ["--model.init_args.teacher.init_args.path", str(teacher), *extra]
        result = run(config, args.dataset, args.num_samples, args.workdir, extra)
        print(json.dumps(result), flush=True)
        results.append(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else []
    keep = [r for r in previous if (r["config"], r["dataset"]) not in
            {(r2["config"], r2["dataset"]) for r2 in results}]  # fmt: skip
    args.out.write_text(json.dumps(keep + results, indent=2) + "\n")


if __name__ == "__main__":
    main()
