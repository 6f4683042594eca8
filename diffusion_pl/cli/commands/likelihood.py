"""``diffusion-pl likelihood``: the PF-ODE negative log-likelihood of a data split, in bits per
dimension (Song et al. 2021, "Score-Based Generative Modeling through SDEs", App. D.2)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from diffusion_pl.checkpoints import load_datamodule
from diffusion_pl.cli.loading import load_diffusion_module
from diffusion_pl.cli.options import check_device, check_positive
from diffusion_pl.cli.outputs import check_writable, json_writer, measurement, save_results
from diffusion_pl.likelihood import bits_per_dim, check_t_eps, dequantize, log_likelihood

__all__ = ["likelihood"]


def likelihood(
    ckpt_path: str,
    split: Literal["train", "val"] = "val",
    num_samples: int = 500,
    batch_size: int = 100,
    divergence: Literal["exact", "hutchinson"] = "hutchinson",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_eps: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    output: str | None = None,
) -> dict[str, object]:
    """PF-ODE negative log-likelihood of a data split under a checkpoint, in bits per dimension.

    Discrete data (images, digits) are uniformly dequantized and the result is a bound on the
    discrete NLL; continuous data (toys) report −log p / (D ln 2) of the density itself. The
    ODE runs from t_eps to the path's t_max, so the number is the likelihood of p_{t_eps}, the
    data blurred by σ(t_eps); the t_eps used is printed and returned.

    Args:
        ckpt_path: checkpoint written by ``diffusion-pl fit`` (its data config is reused).
        split: ``train`` or ``val``.
        num_samples: number of examples (the first ones of the split).
        batch_size: examples per ODE solve.
        divergence: ``exact`` trace (low dimension) or ``hutchinson`` estimate.
        rtol: RK45 relative tolerance.
        atol: RK45 absolute tolerance.
        t_eps: start time of the ODE; default: the formulation's paper's, 1e-5 for score-SDE
            (Song et al. 2021; their likelihood code's eps), else the path's t_min (0 on rectified
            flow's linear path; the others' papers report no PF-ODE likelihood).
        seed: seed of dequantization noise and Hutchinson probes.
        device: torch device, e.g. ``cpu`` or ``cuda``.
        output: optional JSON file (checked before any work) for the result and how it was
            measured, as ``fid --output`` records it: checkpoint, split, num_samples, seed,
            sampler (the rk45 solver), steps (None: adaptive), nfe (per example), feature
            (None), then bpd, nfe_per_batch, t_eps, divergence, rtol, atol.
    """
    check_positive(num_samples=num_samples, batch_size=batch_size, rtol=rtol, atol=atol)
    check_device(device)
    if output is not None:
        check_writable("output", output)
    module = load_diffusion_module(ckpt_path, device)
    origin = "--t_eps"
    if t_eps is None:
        t_eps, origin = module.likelihood_t_eps, f"{type(module).__name__}'s paper"
    if t_eps is None:
        t_eps, origin = module.path.t_min, "the path's t_min"
    check_t_eps(module.path, t_eps)
    datamodule = load_datamodule(ckpt_path)
    data = datamodule.real_samples(split, num_samples, "--num_samples").to(device)
    levels = datamodule.num_levels
    generator = torch.Generator(device=device).manual_seed(seed)
    bpd, nfe = [], 0
    for x in tqdm(data.split(batch_size), desc=f"likelihood ({split})", unit="batch"):
        if levels is not None:
            x = dequantize(x, levels, generator)
        logp, n = log_likelihood(
            module.denoiser(), module.path, x, divergence=divergence, rtol=rtol, atol=atol,
            t_eps=t_eps, generator=generator,
        )  # fmt: skip
        nfe += n
        if levels is None:
            bpd.append(-logp / (x[0].numel() * math.log(2)))
        else:
            bpd.append(bits_per_dim(logp, tuple(x.shape), levels))
    result = measurement(
        ckpt_path, split=split, num_samples=len(data), seed=seed, sampler="rk45", steps=None,
        nfe=nfe / len(bpd), feature=None, bpd=float(torch.cat(bpd).mean()),
        nfe_per_batch=nfe / len(bpd), t_eps=t_eps, divergence=divergence, rtol=rtol, atol=atol,
    )  # fmt: skip
    print(f"{split}: {result['bpd']:.4f} bits/dim over {len(data)} examples "
          f"({result['nfe_per_batch']:.0f} network evaluations per batch; "
          f"t_eps={t_eps:g}, {origin})", flush=True)  # fmt: skip
    if output is not None:
        save_results("output", {Path(output): json_writer(result)})
        print(f"wrote {output}", flush=True)
    return result
