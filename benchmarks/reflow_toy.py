"""Reflow on the 8gaussians toy: straightness and few-step quality before and after.

    python benchmarks/reflow_toy.py [--num_pairs 50000] [--out benchmarks/results/reflow_toy.json]

Trains configs/toy2d/rectified_flow.yaml (1-rectified flow), draws (noise, sample) pairs with
``diffusion-pl reflow``, trains configs/toy2d/reflow.yaml (2-rectified flow) from the first
flow's weights, then reports for both flows: straightness S (Liu et al. 2023, Eq. 6; 0 = straight)
and mode coverage of 5,000 samples at 1, 2, 4 and 100 Euler steps.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from diffusion_pl.checkpoints import load_module
from diffusion_pl.data import Toy2D
from diffusion_pl.metrics import mode_stats
from diffusion_pl.reflow import flow_pairs

ROOT = Path(__file__).resolve().parents[1]


def fit(config: str, root: Path, *extra: str) -> Path:
    """Run ``diffusion-pl fit`` on a config and return its last checkpoint."""
    subprocess.run([sys.executable, "-m", "diffusion_pl", "fit", "--config", str(ROOT / config),
                    "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar",
                    "false", *extra], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return max(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)


def evaluate(ckpt: Path, n: int) -> dict:
    """Straightness (100 Euler steps) and mode coverage at several step counts."""
    module = load_module(ckpt).eval()
    spec = Toy2D("8gaussians").mixture()
    noise = module.path.prior_sample((n, 2), generator=torch.Generator().manual_seed(1))
    result = {"straightness": round(flow_pairs(module.denoiser(), module.path, noise, 100)[1], 4)}
    for steps in (1, 2, 4, 100):
        x, _ = flow_pairs(module.denoiser(), module.path, noise, steps)
        stats = mode_stats(x, spec.means, float(spec.stds[0]))
        result[f"euler_{steps}"] = {
            "within_3_std": round(stats.within, 4),
            "min_weight": round(float(stats.weights.min()), 4),
            "max_weight": round(float(stats.weights.max()), 4),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_pairs", type=int, default=50000)
    parser.add_argument("--num_samples", type=int, default=5000)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/benchmarks/reflow_toy")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/reflow_toy.json")
    args = parser.parse_args()
    first = fit("configs/toy2d/rectified_flow.yaml", args.workdir / "rectified_flow")
    pairs = args.workdir / "pairs.pt"
    command = f"reflow --ckpt_path {first} --num_pairs {args.num_pairs} --output {pairs}"
    subprocess.run([sys.executable, "-m", "diffusion_pl", *command.split()], check=True)
    second = fit("configs/toy2d/reflow.yaml", args.workdir / "reflow",
                 "--model.init_args.init_from", str(first),
                 "--data.source.init_args.path", str(pairs))  # fmt: skip
    results = {"1-rectified": evaluate(first, args.num_samples),
               "2-rectified": evaluate(second, args.num_samples)}  # fmt: skip
    print(json.dumps(results, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
