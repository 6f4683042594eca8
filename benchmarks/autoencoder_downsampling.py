"""Which code size for the digits autoencoder: 8x8 (f = 4) or 4x4 (f = 8), 4 channels each.

    python benchmarks/autoencoder_downsampling.py [--steps 200] [--batch_size 32]
        [--out benchmarks/results/autoencoder_downsampling.json]

Trains ``AutoencoderKLModule`` with each ``block_out_channels`` of ``CANDIDATES`` for the same
number of steps, batch, seed, learning rate and loss (L1 + 1e-6 KL, no perceptual term and no
discriminator: the reconstruction capacity of the code size alone), in a plain loop on one
thread, then reports on the 360 val images: the L1 and PSNR of the reconstructions D(μ(x)) and
their rFID with the digits features, and the training time. configs/digits/autoencoder.yaml
names the choice and these numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, run_record

from diffusion_pl.autoencoders import AutoencoderKLModule, reconstruction_fid
from diffusion_pl.data import DiffusionDataModule, Digits
from diffusion_pl.metrics import FIDEvaluator

CANDIDATES = {"f4 (8x8x4 codes)": [32, 64, 64], "f8 (4x4x4 codes)": [32, 64, 64, 64]}


def train(channels: list[int], steps: int, batch_size: int, seed: int) -> AutoencoderKLModule:
    """The autoencoder after ``steps`` Adam steps on the train split (fixed order and noise)."""
    torch.manual_seed(seed)
    module = AutoencoderKLModule((1, 32, 32), channels)
    data = DiffusionDataModule(Digits(size=32)).dataset("train")
    x_all = torch.stack([data[i][0] for i in range(len(data))])
    optimizer = torch.optim.Adam(module.parameters(), lr=5e-4, betas=(0.5, 0.9))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(len(x_all), (batch_size,), generator=generator)
        loss = module.losses(x_all[index], generator, adversarial=False)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return module.eval()


@torch.no_grad()
def evaluate(module: AutoencoderKLModule) -> dict[str, float]:
    """Val L1, PSNR (images in [−1, 1], peak-to-peak 2) and rFID (digits features)."""
    datamodule = DiffusionDataModule(Digits(size=32))
    x = datamodule.real_samples("val", len(datamodule.dataset("val")))
    x_hat = module.reconstruct(x).clamp(-1, 1)
    mse = float((x_hat - x).pow(2).mean())
    evaluator = FIDEvaluator("digits", num_samples=len(x), batch_size=360, progress=False)
    rfid = reconstruction_fid(evaluator, module, datamodule)["fid"]
    return {"l1": float((x_hat - x).abs().mean()), "psnr": 10 * math.log10(4 / mse), "rfid": rfid}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    default = ROOT / "benchmarks/results/autoencoder_downsampling.json"
    parser.add_argument("--out", type=Path, default=default)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {**run_record("autoencoder_downsampling.py", argv, args), "candidates": {}}
    for name, channels in CANDIDATES.items():
        start = time.perf_counter()
        module = train(channels, args.steps, args.batch_size, args.seed)
        seconds = time.perf_counter() - start
        results["candidates"][name] = {"block_out_channels": channels, "train_s": seconds,
                                       **evaluate(module)}  # fmt: skip
        print(name, json.dumps(results["candidates"][name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
