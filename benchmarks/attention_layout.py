"""Which attention kernel our UNet's AttnBlock reaches, and what the q/k/v layout costs.

    python benchmarks/attention_layout.py [--shapes 32x128x16 128x64x4] [--iters 10]
        [--repeats 3] [--device cpu|cuda] [--out benchmarks/results/attention_layout.json]

``scaled_dot_product_attention`` picks a fused (flash) kernel only when each head's channels
are contiguous in memory. The first AttnBlock cut q, k and v out of a 1×1 convolution's
``[B, 3C, H·W]`` output, where they have stride H·W: SDPA fell back to its math kernel, which
stores the whole H·W × H·W attention matrix. The current block treats pixels as tokens
``[B, H·W, C]`` and projects them with a linear layer, so q, k, v come out head-contiguous.

Per shape ``BxCxR`` (batch, channels, resolution R×R; the defaults are the attention layers of
the ``cifar`` and ``digits`` presets of unet_throughput.py), both layouts with the same weights
are checked to give the same output, profiled for the SDPA kernel they reach, and timed:
training (forward + backward of a squared-output loss) and inference forward, ms per call,
best of ``--repeats`` runs of ``--iters`` calls, the two layouts interleaved.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import ROOT, command_line, machine, markdown_table, report_header, write_results
from torch import Tensor, nn
from torch.profiler import profile

from diffusion_pl.nets.blocks import AttnBlock


class ConvLayoutAttn(nn.Module):
    """The first AttnBlock's layout, for comparison: q, k, v from a 1×1 convolution, stride H·W.

    Shares ``block``'s norm and weights (viewed as 1×1 kernels), so both compute the same map.
    """

    def __init__(self, block: AttnBlock) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        blk = self.block
        qkv = F.conv2d(blk.norm(x), blk.qkv.weight[..., None, None], blk.qkv.bias)
        q, k, v = (
            qkv.reshape(b, 3, blk.num_heads, c // blk.num_heads, -1).transpose(-1, -2).unbind(1)
        )
        h = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, height, width)
        h = F.conv2d(h, blk.proj.weight[..., None, None], blk.proj.bias)
        return (x + h) * blk.out_scale


def sdpa_kernels(net: nn.Module, x: Tensor) -> list[str]:
    """The ATen attention kernels one forward of ``net`` runs."""
    with torch.no_grad(), profile() as prof:
        net(x)
    names = {e.name for e in prof.events()}
    return sorted(
        n for n in names if "attention" in n and n != "aten::scaled_dot_product_attention"
    )


def ms_per_call(fn: Callable[[], object], iters: int, device: str) -> float:
    """Mean milliseconds of ``fn`` over ``iters`` calls after one untimed call."""
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e3


def measure(shape: str, args: argparse.Namespace) -> dict:
    """Kernels and timings of both layouts at one ``BxCxR`` shape."""
    batch, channels, res = (int(v) for v in shape.split("x"))
    torch.manual_seed(0)
    block = AttnBlock(channels, 1, min(32, channels // 4), skip_rescale=True).to(args.device)
    nn.init.normal_(block.proj.weight, std=channels**-0.5)  # not the zero init: outputs differ
    nets = {"tokens (current)": block, "1×1 conv (first)": ConvLayoutAttn(block)}
    x = torch.randn(batch, channels, res, res, device=args.device, requires_grad=True)
    torch.testing.assert_close(nets["1×1 conv (first)"](x), block(x), rtol=1e-4, atol=1e-4)

    def train(net: nn.Module) -> None:
        net(x).square().mean().backward()

    def forward(net: nn.Module) -> None:
        with torch.no_grad():
            net(x)

    best: dict[tuple[str, str], float] = {}
    for _ in range(args.repeats):
        for name, net in nets.items():
            for phase, fn in (("train", train), ("forward", forward)):
                ms = ms_per_call(lambda n=net, f=fn: f(n), args.iters, args.device)
                best[name, phase] = min(best.get((name, phase), float("inf")), ms)
    return {
        name: {
            "kernels": sdpa_kernels(net, x),
            "train_ms": round(best[name, "train"], 2),
            "forward_ms": round(best[name, "forward"], 2),
        }
        for name, net in nets.items()
    }


def report(results: dict) -> str:
    """The Markdown report: one row per (shape, layout)."""
    rows = [
        [shape, name, ", ".join(r["kernels"]), r["train_ms"], r["forward_ms"]]
        for shape, layouts in results["shapes"].items()
        for name, r in layouts.items()
    ]
    header = report_header(
        "AttnBlock: q/k/v layout and the SDPA kernel it reaches",
        results,
        f"Best of {results['repeats']} × {results['iters']} calls, ms per call.",
    )
    return "\n".join([
        *header,
        markdown_table(["B×C×R", "layout", "SDPA kernel", "train (fwd + bwd) ms", "forward ms"],
                       rows),
    ])  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["32x128x16", "128x64x4"])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/attention_layout.json"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    results = {
        "command": command_line("attention_layout.py", argv),
        "machine": machine(args.device),
        "iters": args.iters,
        "repeats": args.repeats,
        "shapes": {shape: measure(shape, args) for shape in args.shapes},
    }
    markdown = report(results)
    write_results(args.out, results, markdown)
    print(markdown)
    return results


if __name__ == "__main__":
    main()
