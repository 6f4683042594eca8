"""Training and sampling throughput of our UNet against diffusers' UNet2DModel of the same layout.

    pip install diffusers       # for this benchmark only; diffusion-pl does not depend on it
    python benchmarks/unet_throughput.py [--preset digits cifar] [--batch B] [--base_channels C]
        [--steps 10] [--warmup 3] [--repeats 3] [--sample_nfe 20] [--threads T]
        [--device cpu|cuda] [--ours_only] [--out benchmarks/results/unet_throughput.json]

Per preset, in one process, with the same batch, threads and fp32 inputs:

* training: images/s of forward + backward + Adam step on a rectified-flow regression;
* sampling: samples/s of the Euler PF-ODE sampler at ``--sample_nfe`` network evaluations;
* achieved GFLOP/s: convolution, matmul and attention FLOPs of one step counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (norms and activations are not counted; the
  same count for both nets) per second, beside the GFLOP/s of a large fp32 matmul measured in
  the same run (the peak);
* peak memory of each phase: on CUDA ``torch.cuda.max_memory_allocated`` (tensors only); on the
  CPU the process's peak resident set (Linux ``VmHWM``, reset before each phase; it includes
  the Python process and torch, so read it beside the resident set before the phase).

Each measurement is taken ``--repeats`` times, ours and diffusers' interleaved, and the fastest
is kept (the least disturbed by other work on the machine).

The layouts match block for block (``diffusers_unet``):

    base_channels · channel_mult        → block_out_channels
    num_res_blocks                      → layers_per_block (decoder: one more, in both)
    attn_resolutions                    → AttnDownBlock2D / AttnUpBlock2D at those resolutions,
                                          DownBlock2D / UpBlock2D elsewhere
    middle res → attn → res             → UNetMidBlock2D (add_attention=True)
    num_heads = 1                       → attention_head_dim = None (one head of all channels)
    num_groups = min(32, base / 4)      → norm_num_groups (both then use it in every norm)
    strided conv / nearest + conv       → Downsample2D / Upsample2D with conv (the default)
    positional embedding → 4·base MLP   → Timesteps + TimestepEmbedding (4·base)
    dropout                             → dropout

Left different, at no cost in FLOPs: our residual sums are scaled by 1/√2 (NCSN++), and our
q, k, v come from one fused linear layer where diffusers uses three.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import ROOT, markdown_table, report_header, run_record, write_results
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from diffusion_pl.denoiser import Denoiser
from diffusion_pl.nets import UNet
from diffusion_pl.parameterization import VelocityPrediction
from diffusion_pl.paths import LinearPath
from diffusion_pl.samplers import EulerSampler


@dataclasses.dataclass(frozen=True)
class Layout:
    """A UNet layout both libraries build, and the batch it is measured at."""

    in_channels: int
    image_size: int
    base_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    dropout: float
    batch: int

    @property
    def num_groups(self) -> int:
        """GroupNorm groups: ours takes min(num_groups, C/4) per layer, diffusers one number."""
        return min(32, self.base_channels // 4)

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image's shape (C, H, W)."""
        return self.in_channels, self.image_size, self.image_size


PRESETS = {
    "digits": Layout(1, 8, 32, (1, 2), 2, (4,), 0.1, batch=128),  # configs/digits (1.0M)
    "cifar": Layout(3, 32, 64, (1, 2, 2), 2, (16,), 0.1, batch=32),  # a small CIFAR-10 UNet
}


class DiffusersNet(nn.Module):
    """``UNet2DModel`` called as our nets are: ``(x, t ∈ [0, 1]) -> output``.

    t is scaled to DDPM's 1000 steps, as our positional embedding scales it.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return self.model(x, t * 1000).sample


def our_unet(layout: Layout) -> nn.Module:
    """diffusion_pl's UNet of ``layout`` (one attention head)."""
    return UNet(
        layout.in_channels,
        image_size=layout.image_size,
        base_channels=layout.base_channels,
        channel_mult=layout.channel_mult,
        num_res_blocks=layout.num_res_blocks,
        attn_resolutions=layout.attn_resolutions,
        dropout=layout.dropout,
        num_heads=1,
        num_groups=layout.num_groups,
    )


def diffusers_unet(layout: Layout) -> nn.Module:
    """diffusers' ``UNet2DModel`` of ``layout`` (the mapping is in the module docstring)."""
    try:
        from diffusers import UNet2DModel
    except ImportError as err:
        raise SystemExit(
            "the comparison needs diffusers, which diffusion-pl does not depend on: "
            "`pip install diffusers` (or `pip install -e .[bench]`), or pass --ours_only"
        ) from err
    resolutions = [layout.image_size // 2**i for i in range(len(layout.channel_mult))]
    attention = [r in layout.attn_resolutions for r in resolutions]
    model = UNet2DModel(
        sample_size=layout.image_size,
        in_channels=layout.in_channels,
        out_channels=layout.in_channels,
        block_out_channels=tuple(layout.base_channels * m for m in layout.channel_mult),
        layers_per_block=layout.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in attention[::-1]),
        attention_head_dim=None,
        norm_num_groups=layout.num_groups,
        norm_eps=1e-6,
        dropout=layout.dropout,
    )
    return DiffusersNet(model)


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so wall time covers it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def seconds_per_call(fn: Callable[[], object], warmup: int, iters: int, device: str) -> float:
    """Mean wall time of ``fn`` over ``iters`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / iters


def matmul_peak_gflops(
    n: int, device: str, repeats: int, iters: int = 5, dtype: torch.dtype = torch.float32
) -> float:
    """GFLOP/s of an ``n × n`` matmul in ``dtype``: the machine's practical peak for dense
    kernels.

    The fastest of ``repeats`` runs of ``iters`` calls, like the nets' timings: one disturbed
    run would otherwise lower the peak below what the nets reach.
    """
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    seconds = min(
        seconds_per_call(lambda: torch.mm(a, b, out=out), 1, iters, device) for _ in range(repeats)
    )
    return 2 * n**3 / seconds / 1e9


def counted_flops(fn: Callable[[], object]) -> int:
    """The FLOPs of ``fn()`` counted by ``FlopCounterMode`` (convolutions, matmuls, attention;
    not norms or activations).

    Attention runs on SDPA's math backend here: FlopCounterMode does not count the fused CPU
    kernel, which would drop attention from the count (a fifth of the CIFAR-10 UNet's).
    """
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def memory_mib(device: str, peak: bool) -> float:
    """Peak (or current) memory in MiB: CUDA tensors, or this process's resident set."""
    if device.startswith("cuda"):
        used = torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()
        return used / 2**20
    status = Path("/proc/self/status")
    if status.is_file():
        key = "VmHWM:" if peak else "VmRSS:"
        line = next(x for x in status.read_text().splitlines() if x.startswith(key))
        return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # macOS: bytes, lifetime


def reset_peak_memory(device: str) -> None:
    """Start a new peak: CUDA's allocator statistics, or Linux's ``VmHWM`` (clear_refs 5)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError):  # not Linux: the peak stays the lifetime peak
        Path("/proc/self/clear_refs").write_text("5")


class Bench:
    """One network's training step and sampler at a layout, with their FLOP counts.

    Args:
        net: ``net(x, t)`` with t ∈ [0, 1].
        layout: the layout and batch.
        nfe: network evaluations per sample of the Euler sampler.
        device: where to run.
    """

    def __init__(self, net: nn.Module, layout: Layout, nfe: int, device: str) -> None:
        self.net, self.layout, self.nfe, self.device = net.to(device), layout, nfe, device
        generator = torch.Generator(device).manual_seed(0)
        shape = (layout.batch, *layout.shape)
        x0 = torch.randn(shape, generator=generator, device=device)
        eps = torch.randn(shape, generator=generator, device=device)
        self.t = torch.rand(layout.batch, generator=generator, device=device)
        s = self.t.view(-1, 1, 1, 1)
        self.x_t, self.target = (1 - s) * x0 + s * eps, eps - x0  # rectified-flow regression
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-4)
        self.path = LinearPath()
        self.denoiser = Denoiser(self.net, self.path, VelocityPrediction())
        self.sampler = EulerSampler(steps=nfe)  # σ(t_min) = 0: exactly nfe evaluations

    @property
    def parameters(self) -> int:
        """The network's number of parameters."""
        return sum(p.numel() for p in self.net.parameters())

    def loss(self) -> Tensor:
        """The batch's mean squared velocity error."""
        return F.mse_loss(self.net(self.x_t, self.t), self.target)

    def train_step(self) -> None:
        """Forward, backward and an Adam step."""
        self.net.train()
        self.loss().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def sample(self) -> Tensor:
        """One batch of samples."""
        self.net.eval()
        generator = torch.Generator(self.device).manual_seed(0)
        shape = (self.layout.batch, *self.layout.shape)
        return self.sampler(
            self.denoiser, self.path, shape, generator=generator, device=self.device
        )

    def flops(self) -> tuple[int, int]:
        """Counted FLOPs (:func:`counted_flops`) of (one training forward + backward, one
        sampling forward) at the batch."""
        self.net.train()
        train = counted_flops(lambda: self.loss().backward())
        self.net.zero_grad(set_to_none=True)
        self.net.eval()
        with torch.no_grad():
            forward = counted_flops(lambda: self.net(self.x_t, self.t))
        return train, forward


def measure(benches: dict[str, Bench], args: argparse.Namespace) -> dict[str, dict]:
    """Best-of-``repeats`` timings, the nets interleaved; each phase's memory (first repeat)."""
    # The training steps warm the kernels up; the first repeat of sampling warms its own.
    phases = {"train": (Bench.train_step, args.warmup, args.steps), "sample": (Bench.sample, 0, 1)}
    best = {(name, phase): float("inf") for name in benches for phase in phases}
    memory = {}
    for _ in range(args.repeats):
        for phase, (fn, warmup, iters) in phases.items():
            for name, bench in benches.items():
                reset_peak_memory(args.device)  # then the peak is at least the current level
                before = memory_mib(args.device, peak=False)
                seconds = seconds_per_call(lambda b=bench, f=fn: f(b), warmup, iters, args.device)
                best[name, phase] = min(best[name, phase], seconds)
                memory.setdefault((name, phase), (before, memory_mib(args.device, peak=True)))
    results = {}
    for name, bench in benches.items():
        train_flops, forward_flops = bench.flops()
        batch, train_s, sample_s = bench.layout.batch, best[name, "train"], best[name, "sample"]
        results[name] = {
            "parameters": bench.parameters,
            "train_images_per_s": round(batch / train_s, 1),
            "train_gflops_per_s": round(train_flops / train_s / 1e9, 1),
            "train_gflop_per_step": round(train_flops / 1e9, 3),
            "sample_per_s": round(batch / sample_s, 2),
            "sample_gflops_per_s": round(forward_flops * bench.nfe / sample_s / 1e9, 1),
            "train_memory_mib": [round(m) for m in memory[name, "train"]],
            "sample_memory_mib": [round(m) for m in memory[name, "sample"]],
        }
    return results


def report(results: dict) -> str:
    """The Markdown report: one row per (preset, network), the ratios below."""
    s = results["settings"]
    lines = report_header(
        "UNet throughput: ours against diffusers' UNet2DModel",
        results,
        "fp32. "
        f"Matmul peak measured in the run (best of {s['repeats']} before and after the nets): "
        f"**{results['matmul_peak_gflops']:.0f} GFLOP/s**. "
        f"Training: forward + backward + Adam, best of {s['repeats']} × {s['steps']} steps. "
        f"Sampling: Euler, {s['sample_nfe']} NFE. Memory (before → peak of the phase, MiB): "
        f"{results['memory_kind']}.",
    )
    rows, ratios = [], []
    for preset in results["presets"]:
        layout = preset["layout"]
        shape = "{in_channels}×{image_size}×{image_size}".format(**layout)
        for name, r in preset["nets"].items():
            peak = results["matmul_peak_gflops"]
            rows.append([
                f"{preset['name']} ({shape}, batch {layout['batch']})", name,
                f"{r['parameters']:,}", r["train_images_per_s"],
                f"{r['train_gflops_per_s']} ({r['train_gflops_per_s'] / peak:.0%})",
                r["sample_per_s"], r["sample_gflops_per_s"],
                "{} → {}".format(*r["train_memory_mib"]), "{} → {}".format(*r["sample_memory_mib"]),
            ])  # fmt: skip
        if "ratio" in preset:
            ratios.append(f"- {preset['name']}: ours / diffusers = {preset['ratio']['train']:.2f}× "
                          f"training, {preset['ratio']['sample']:.2f}× sampling")  # fmt: skip
    headers = ["layout", "net", "parameters", "train img/s", "train GFLOP/s (of peak)",
               "samples/s", "sample GFLOP/s", "train memory", "sample memory"]  # fmt: skip
    lines += [markdown_table(headers, rows), "", *ratios]
    return "\n".join(lines).rstrip()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", nargs="+", choices=list(PRESETS), default=list(PRESETS))
    parser.add_argument("--batch", type=int, help="override every preset's batch")
    parser.add_argument("--base_channels", type=int, help="override every preset's width")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sample_nfe", type=int, default=20)
    parser.add_argument("--matmul_size", type=int, default=2048)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ours_only", action="store_true", help="without diffusers")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/unet_throughput.json"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; return what it wrote to ``--out``."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = {k: v for k, v in [("batch", args.batch), ("base_channels", args.base_channels)]
                 if v is not None}  # fmt: skip

    def peak_gflops() -> float:
        return matmul_peak_gflops(args.matmul_size, args.device, args.repeats)

    peak = peak_gflops()
    builders = {"ours": our_unet} | ({} if args.ours_only else {"diffusers": diffusers_unet})
    results = {
        **run_record("unet_throughput.py", argv, args),
        "memory_kind": (
            "CUDA max_memory_allocated (tensors)"
            if args.device.startswith("cuda")
            else "process resident set (VmRSS → VmHWM)"
        ),
        "presets": [],
    }
    for name in args.preset:
        layout = dataclasses.replace(PRESETS[name], **overrides)
        benches = {net: Bench(build(layout), layout, args.sample_nfe, args.device)
                   for net, build in builders.items()}  # fmt: skip
        nets = measure(benches, args)
        preset = {"name": name, "layout": dataclasses.asdict(layout), "nets": nets}
        if "diffusers" in nets:
            ours, theirs = nets["ours"], nets["diffusers"]
            preset["ratio"] = {
                "train": round(ours["train_images_per_s"] / theirs["train_images_per_s"], 3),
                "sample": round(ours["sample_per_s"] / theirs["sample_per_s"], 3),
            }
        results["presets"].append(preset)
    # Measured before and after the nets (the best of both), so a disturbance at one end of
    # the run cannot put the peak below what the nets achieved.
    # Unrounded: a tiny --matmul_size under load can measure < 0.05 GFLOP/s, and the report
    # divides by it.
    results["matmul_peak_gflops"] = max(peak, peak_gflops())
    write_results(args.out, results, report(results))
    print(report(results), flush=True)
    return results


if __name__ == "__main__":
    main()
