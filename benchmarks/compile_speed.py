"""Training-step speed of a network eager vs ``torch.compile``d, and what compiling costs.

    python benchmarks/compile_speed.py [--net mlp|unet] [--batch 256] [--steps 50]
        [--device cpu|cuda] [--precision 32|bf16] [--mode default|reduce-overhead|max-autotune]

One step is what ``diffusion-pl fit`` does per batch: the rectified-flow loss, backward, Adam.
Prints one JSON line: compile seconds (the first compiled step, which traces and builds the
kernels), steps/s eager and compiled, and the speed-up. ``CompileNet`` (trainer.callbacks)
pays when the speed-up times the run's steps outweighs the compile seconds.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from diffusion_pl.formulations import RectifiedFlow
from diffusion_pl.nets import MLP, UNet

NETS = {
    "mlp": (lambda: MLP(dim=2, hidden=256, depth=4), (2,)),  # configs/toy2d
    "unet": (  # configs/digits
        lambda: UNet(1, image_size=8, base_channels=32, channel_mult=(1, 2), attn_resolutions=(4,)),
        (1, 8, 8),
    ),
}


def steps_per_second(
    net: nn.Module, shape: tuple[int, ...], batch: int, steps: int, device: str, bf16: bool
) -> tuple[float, float]:
    """(seconds of the first step, steps per second over the next ``steps``)."""
    module = RectifiedFlow(net, shape).to(device)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)
    x0 = torch.randn(batch, *shape, device=device)

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = module.loss(x0).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    first = timed(1)
    return first, steps / timed(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--net", choices=sorted(NETS), default="mlp")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument("--mode", default="default")
    args = parser.parse_args()
    build, shape = NETS[args.net]
    bf16 = args.precision == "bf16"
    torch.manual_seed(0)
    _, eager = steps_per_second(build(), shape, args.batch, args.steps, args.device, bf16)
    net = build()
    net.compile(mode=args.mode)
    compile_s, compiled = steps_per_second(net, shape, args.batch, args.steps, args.device, bf16)
    print(json.dumps({
        **vars(args), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "compile_seconds": round(compile_s, 1), "eager_steps_per_s": round(eager, 1),
        "compiled_steps_per_s": round(compiled, 1), "speedup": round(compiled / eager, 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
