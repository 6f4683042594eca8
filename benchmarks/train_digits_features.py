"""Train the digits feature network that digits FID uses, and write its weights (< 1 MB).

    python benchmarks/train_digits_features.py [--epochs 60] [--seed 0]
        [--out diffusion_pl/metrics/digits_classifier.pt]

Trains :class:`diffusion_pl.metrics.features.DigitsClassifier` on the digits train split
(1,437 images; the ``Digits`` source's default split) with random ±1-pixel shifts, Adam and a
cosine learning-rate decay, then reports accuracy on the held-out val split (360 images), which
the network never sees. The weights file records that accuracy and the command's settings.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from diffusion_pl.data import Digits
from diffusion_pl.metrics.features import DIGITS_WEIGHTS, DigitsClassifier


def shift(x: Tensor, generator: torch.Generator) -> Tensor:
    """Translate each image by a random offset in {−1, 0, 1}² pixels (background fills in)."""
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    offsets = torch.randint(0, 3, (len(x), 2), generator=generator)
    pairs = zip(padded, offsets.tolist(), strict=True)
    return torch.stack([p[:, i : i + 8, j : j + 8] for p, (i, j) in pairs])


@torch.no_grad()
def accuracy(net: DigitsClassifier, x: Tensor, y: Tensor) -> float:
    """Fraction of ``x`` classified as ``y``."""
    net.eval()
    return float((net(x).argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DIGITS_WEIGHTS)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    source = Digits()
    x_train, y_train = source.load("train").tensors
    x_val, y_val = source.load("val").tensors
    net = DigitsClassifier()
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    steps = args.epochs * (len(x_train) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(x_train), generator=generator)
        for index in order.split(args.batch_size):
            if len(index) < args.batch_size:
                continue
            loss = F.cross_entropy(net(shift(x_train[index], generator)), y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}: loss {loss.item():.4f}, "
                  f"val accuracy {accuracy(net, x_val, y_val):.4f}", flush=True)  # fmt: skip
    result = {
        "train_accuracy": accuracy(net, x_train, y_train),
        "val_accuracy": accuracy(net, x_val, y_val),
        "num_val": len(x_val),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": net.state_dict(), **result}, args.out)
    print(result)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
