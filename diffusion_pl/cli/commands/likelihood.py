"""``diffusion-pl likelihood``: the negative log-likelihood of a data split in bits per
dimension, by the PF-ODE (Song et al. 2021, "Score-Based Generative Modeling through SDEs",
App. D.2) or VDM's variational bound (Kingma et al. 2021), with its standard error over the
examples."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from diffusion_pl.bound import bound_steps, variational_bound
from diffusion_pl.checkpoints import load_datamodule
from diffusion_pl.cli.loading import load_diffusion_module
from diffusion_pl.cli.options import check_device, check_positive
from diffusion_pl.cli.outputs import check_writable, json_writer, measurement, save_results
from diffusion_pl.errors import UsageError
from diffusion_pl.formulations import DiffusionModule
from diffusion_pl.likelihood import bits_per_dim, check_t_eps, dequantize, log_likelihood

__all__ = ["likelihood"]


def likelihood(
    ckpt_path: str,
    split: Literal["train", "val"] = "val",
    num_samples: int = 500,
    batch_size: int = 100,
    method: Literal["ode", "bound"] = "ode",
    divergence: Literal["exact", "hutchinson"] = "hutchinson",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_eps: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    output: str | None = None,
) -> dict[str, object]:
    """Negative log-likelihood of a data split under a checkpoint, in bits per dimension.

    ``--method ode`` (default) integrates the PF-ODE; ``--method bound`` computes VDM's
    variational bound (prior + diffusion + reconstruction), on a discrete path (DDPM's T steps)
    summed over all its steps per example (T network calls each), on a continuous one the
    one-sample estimate. Either way the result carries its standard error over the examples.

    For the ODE, discrete data (images, digits) are uniformly dequantized and the result is a
    bound on the discrete NLL; continuous data (toys) report −log p / (D ln 2) of the density
    itself. The ODE runs from t_eps to the path's t_max, so the number is the likelihood of
    p_{t_eps}, the data blurred by σ(t_eps); the t_eps used is printed and returned.

    Args:
        ckpt_path: checkpoint written by ``diffusion-pl fit`` (its data config is reused).
        split: ``train`` or ``val``.
        num_samples: number of examples (the first ones of the split).
        batch_size: examples per ODE solve (or bound).
        method: ``ode`` (the PF-ODE's exact likelihood) or ``bound`` (VDM's bound).
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
            sampler (the rk45 solver, or ``bound``), steps (None: adaptive; the bound's steps),
            nfe (per example), feature (None), then bpd, bpd_stderr, and the ODE's
            nfe_per_batch, t_eps, divergence, rtol, atol.
    """
    check_positive(num_samples=num_samples, batch_size=batch_size, rtol=rtol, atol=atol)
    check_device(device)
    if output is not None:
        check_writable("output", output)
    module = load_diffusion_module(ckpt_path, device)
    datamodule = load_datamodule(ckpt_path)
    data = datamodule.real_samples(split, num_samples, "--num_samples").to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    if method == "bound":
        result = _bound(module, data, datamodule.num_levels, batch_size, generator)
        result = measurement(ckpt_path, split=split, num_samples=len(data), seed=seed, **result)
        print(f"{split}: {result['bpd']:.4f} ± {result['bpd_stderr']:.4f} bits/dim (variational "
              f"bound over {len(data)} examples, {result['nfe']:g} network evaluations each)",
              flush=True)  # fmt: skip
    else:
        result, origin = _ode(module, data, datamodule.num_levels, batch_size, generator,
                              divergence, rtol, atol, t_eps)  # fmt: skip
        result = measurement(ckpt_path, split=split, num_samples=len(data), seed=seed, **result)
        print(f"{split}: {result['bpd']:.4f} ± {result['bpd_stderr']:.4f} bits/dim over "
              f"{len(data)} examples ({result['nfe_per_batch']:.0f} network evaluations per "
              f"batch; t_eps={result['t_eps']:g}, {origin})", flush=True)  # fmt: skip
    if output is not None:
        save_results("output", {Path(output): json_writer(result)})
        print(f"wrote {output}", flush=True)
    return result


def _stderr(values: torch.Tensor) -> float:
    """The standard error of the mean of ``values`` (0 for one value)."""
    return float(values.std() / math.sqrt(len(values))) if len(values) > 1 else 0.0


def _ode(
    module: DiffusionModule,
    data: torch.Tensor,
    levels: int | None,
    batch_size: int,
    generator: torch.Generator,
    divergence: Literal["exact", "hutchinson"],
    rtol: float,
    atol: float,
    t_eps: float | None,
) -> tuple[dict[str, object], str]:
    """The PF-ODE's bits per dimension of ``data``, how they were measured, and where t_eps
    came from."""
    origin = "--t_eps"
    if t_eps is None:
        t_eps, origin = module.likelihood_t_eps, f"{type(module).__name__}'s paper"
    if t_eps is None:
        t_eps, origin = module.path.t_min, "the path's t_min"
    check_t_eps(module.path, t_eps)
    bpd, nfe = [], 0
    for x in tqdm(data.split(batch_size), desc="likelihood (PF-ODE)", unit="batch"):
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
    values = torch.cat(bpd)
    return {"sampler": "rk45", "steps": None, "nfe": nfe / len(bpd), "feature": None,
            "bpd": float(values.mean()), "bpd_stderr": _stderr(values),
            "nfe_per_batch": nfe / len(bpd), "t_eps": t_eps, "divergence": divergence,
            "rtol": rtol, "atol": atol}, origin  # fmt: skip


@torch.no_grad()  # an evaluation: the sum over T steps must not keep T graphs alive
def _bound(
    module: DiffusionModule,
    data: torch.Tensor,
    levels: int | None,
    batch_size: int,
    generator: torch.Generator,
) -> dict[str, object]:
    """VDM's variational bound in bits per dimension of ``data``, summed over all the steps of
    a discrete path, and how it was measured."""
    path = module.path
    steps = bound_steps(path)
    sigma_min = path.coefficients(torch.tensor([path.t_min]), 1).sigma
    if not float(sigma_min) > 0:
        raise UsageError(
            f"--method bound needs noise at the path's first time, but {type(path).__name__} "
            f"has sigma(t_min={path.t_min:g}) = 0 (its data end is noiseless); use --method ode"
        )
    bpd = []
    for x in tqdm(data.split(batch_size), desc="likelihood (bound)", unit="batch"):
        bound = variational_bound(
            module.denoiser(), path, x, num_levels=levels, generator=generator,
            all_steps=steps is not None,
        )  # fmt: skip
        bpd.append(bound.bits_per_dim(x[0].numel()))
    values = torch.cat(bpd)
    nfe = (steps or 1) + 1  # the diffusion terms and the reconstruction
    return {"sampler": "bound", "steps": steps, "nfe": nfe, "feature": None,
            "bpd": float(values.mean()), "bpd_stderr": _stderr(values)}  # fmt: skip
