"""``diffusion-pl reflow``: couple noise with samples of a trained flow, to train a straighter
one on the pairs (Liu et al. 2023, "Flow Straight and Fast", Sec. 2.3)."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffusion_pl.checkpoints import load_module
from diffusion_pl.cli.options import check_device, check_positive
from diffusion_pl.cli.outputs import check_writable, save_results
from diffusion_pl.formulations import RectifiedFlow
from diffusion_pl.reflow import flow_pairs

__all__ = ["reflow"]


def reflow(
    ckpt_path: str,
    num_pairs: int,
    output: str,
    steps: int = 100,
    seed: int = 0,
    batch_size: int = 1000,
    device: str = "cpu",
) -> Path:
    """Couple noise with samples of a trained flow: write ``{noise, samples}`` to a ``.pt`` file.

    Train the next (straighter) flow on the pairs with the ``Reflow`` formulation and the
    ``ReflowPairs`` data source (see configs/toy2d/reflow.yaml). Prints the straightness of the
    flow that generated them.

    Args:
        ckpt_path: checkpoint of a rectified flow written by ``diffusion-pl fit``.
        num_pairs: number of (noise, sample) pairs (> 0).
        output: path of the ``.pt`` file to write (checked before any work).
        steps: Euler steps of the flow ODE per pair.
        seed: seed of the noise.
        batch_size: pairs per network batch.
        device: torch device, e.g. ``cpu`` or ``cuda``.
    """
    check_positive(num_pairs=num_pairs, steps=steps, batch_size=batch_size)
    check_device(device)
    out = Path(output)
    check_writable("output", out)
    module = load_module(ckpt_path, map_location=device)
    if not isinstance(module, RectifiedFlow):
        raise ValueError(
            f"{ckpt_path} holds a {type(module).__name__}; reflow needs a RectifiedFlow checkpoint"
        )
    module.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    noise = module.path.prior_sample(
        (num_pairs, *module.data_shape), generator=generator, device=device
    )
    samples, straightness = [], []
    for chunk in tqdm(noise.split(batch_size), desc="reflow pairs", unit="batch"):
        x, s = flow_pairs(module.denoiser(), module.path, chunk, steps)
        samples.append(x.cpu())
        straightness.append(s * len(chunk))
    pairs = {"noise": noise.cpu(), "samples": torch.cat(samples)}
    save_results("output", {out: lambda f: torch.save(pairs, f)})
    print(f"wrote {out}: {num_pairs} pairs; straightness {sum(straightness) / num_pairs:.4f}")
    return out
