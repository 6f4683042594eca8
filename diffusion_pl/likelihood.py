"""Exact log-likelihood through the probability-flow ODE, and bits per dimension.

Along a PF-ODE trajectory dx/dt = f̃(x, t) the density obeys d log p_t(x_t)/dt = −∇·f̃(x_t, t)
(instantaneous change of variables), so integrating the augmented state [x, ∫ ∇·f̃ dt] from the
data at t_ε up to t_max gives

    log p_{t_ε}(x) = log p_{t_max}(x_{t_max}) + ∫_{t_ε}^{t_max} ∇·f̃(x_t, t) dt,

with p_{t_max} replaced by the prior N(0, σ_{t_max}² I).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from diffusion_pl.parameterization import DenoiserFn
from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import Generators, randn
from diffusion_pl.samplers.ode import ode_drift
from diffusion_pl.samplers.rk45 import solve_ode_rk45

__all__ = ["bits_per_dim", "check_t_eps", "dequantize", "discrete_nll", "log_likelihood"]


def _divergence(f: Tensor, x: Tensor, probe: Tensor | None) -> Tensor:
    """∇·f per sample ``[B]``: exact (one backward per dimension) or zᵀ (∂f/∂x) z if ``probe``.

    Assumes samples do not interact (no batch statistics in the net), so the per-sample
    Jacobian blocks are read from gradients of batch sums.
    """
    if probe is not None:
        (vjp,) = torch.autograd.grad(f, x, probe)
        return (vjp * probe).flatten(1).sum(1)
    f_flat, d = f.flatten(1), f[0].numel()
    div = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
    for i in range(d):
        (grad,) = torch.autograd.grad(f_flat[:, i].sum(), x, retain_graph=i < d - 1)
        div = div + grad.flatten(1)[:, i]
    return div


@torch.no_grad()
def check_t_eps(path: NoisePath, t_eps: float) -> None:
    """Raise ValueError, saying why, unless the PF-ODE likelihood can start at ``t_eps``.

    The start must lie in [0, t_max); on a discrete path (DDPM's steps, NCSN's levels) it must
    not fall below the first time the net was trained at (``t_min``); and the ODE's drift
    α'_t x̂_0 + σ'_t ε̂ must be finite there, which fails at t = 0 on the VP paths, where
    σ_t = √(1 − α_t²) has an infinite slope.
    """
    if not 0 <= t_eps < path.t_max:
        raise ValueError(
            f"t_eps={t_eps} is outside [0, t_max={path.t_max}) of {type(path).__name__}: the "
            "likelihood integrates from t_eps (near the data) up to t_max"
        )
    if path.num_steps is not None and t_eps < path.t_min:
        raise ValueError(
            f"t_eps={t_eps} is below t_min={path.t_min}, the first of the {path.num_steps} "
            f"discrete times of {type(path).__name__} the net was trained at: use "
            f"t_eps >= {path.t_min}"
        )
    t = path.as_time(t_eps)
    values = [path.alpha(t), path.sigma(t), path.d_alpha(t), path.d_sigma(t)]
    if not all(bool(torch.isfinite(v)) for v in values) or not float(values[0]) > 0:
        raise ValueError(
            f"t_eps={t_eps}: the probability-flow ODE of {type(path).__name__} is singular there "
            f"(α = {float(values[0]):.3g}, σ = {float(values[1]):.3g}, dσ/dt = "
            f"{float(values[3]):.3g}): start a little later, e.g. t_eps=1e-5 (score-SDE's)"
        )


@torch.no_grad()
def log_likelihood(
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    *,
    divergence: Literal["exact", "hutchinson"] = "hutchinson",
    probe: Literal["rademacher", "gaussian"] = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_eps: float | None = None,
    prior_logp: Callable[[Tensor], Tensor] | None = None,
    generator: Generators = None,
    progress: bool = False,
) -> tuple[Tensor, int]:
    """log p_{t_ε}(x) in nats by integrating the PF-ODE and its divergence with RK45.

    The augmented state [x, ℓ], dℓ/dt = ∇·f̃, runs from ``t_eps`` to ``path.t_max`` as one
    flattened ``[B, D + 1]`` state (as score_sde does, the RK45 error norm covers x and ℓ).
    The denoiser is called under ``torch.enable_grad()`` with x requiring grad.
    ``divergence="exact"`` costs D backward passes per evaluation (low D only);
    ``"hutchinson"`` one vector–Jacobian product with a probe z (E[zzᵀ] = I) drawn once per
    solve from ``generator`` (on x's device), an unbiased estimate of log p.

    Args:
        denoiser: ``(x, t) -> Prediction``, differentiable in x.
        path: the noise path.
        x: data ``[B, ...]`` (dequantized if discrete, see :func:`dequantize`).
        divergence: ``"exact"`` trace or ``"hutchinson"`` (Hutchinson–Skilling) estimate.
        probe: distribution of the Hutchinson probe, ``"rademacher"`` (±1) or ``"gaussian"``.
        rtol: relative tolerance of RK45.
        atol: absolute tolerance of RK45.
        t_eps: start time; default ``path.t_min``. The result is log p_{t_eps}
            (:func:`check_t_eps` says where it may lie).
        prior_logp: log-density of x_{t_max} ``[B]``; default ``path.prior_logp``.
        generator: source of the Hutchinson probe (one generator, or one per sample).
        progress: show a progress bar over t.

    Returns:
        log-density in nats per sample ``[B]`` and the number of network evaluations.

    Reference: Song et al. (2021), "Score-Based Generative Modeling through SDEs", App. D.2;
    Chen et al. (2018), "Neural ODEs", Thm. 1; Grathwohl et al. (2019), "FFJORD", Sec. 3
    (Hutchinson, 1989; Skilling, 1989).
    """
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence must be 'exact' or 'hutchinson', got {divergence!r}")
    if probe not in ("rademacher", "gaussian"):
        raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
    z = None
    if divergence == "hutchinson":
        z = randn(x.shape, generator, device=x.device, dtype=x.dtype)
        if probe == "rademacher":
            z = z.sign() + (z == 0)  # ±1, each with probability ½

    def augmented_drift(y: Tensor, t: Tensor) -> Tensor:
        with torch.enable_grad():
            xt = y[:, :-1].reshape(x.shape).detach().requires_grad_(True)
            f = ode_drift(denoiser, path, xt, t)
            div = _divergence(f, xt, z)
        return torch.cat([f.detach().flatten(1), div.detach()[:, None]], 1).to(y.dtype)

    t0 = path.t_min if t_eps is None else t_eps
    check_t_eps(path, t0)
    state = torch.cat([x.flatten(1), x.new_zeros(x.shape[0], 1)], 1)
    state, nfe = solve_ode_rk45(
        augmented_drift, state, t0, path.t_max, rtol=rtol, atol=atol, progress=progress
    )
    x_end, delta = state[:, :-1].reshape(x.shape), state[:, -1]
    log_prior = (path.prior_logp if prior_logp is None else prior_logp)(x_end)
    return log_prior + delta, nfe


def dequantize(x: Tensor, num_levels: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniformly dequantize data x = 2k/(L − 1) − 1 to x + (2/(L − 1)) (u − ½), u ~ U[0, 1)ᴰ.

    On the integer scale this is k + u; the map v ↦ 2(v − ½)/(L − 1) − 1 places each level's
    unit cell centred on its training value x_k (see :func:`discrete_nll` for the bound).

    Args:
        x: data in [−1, 1] on the grid of ``num_levels`` levels, ``[B, ...]``.
        num_levels: L, e.g. 256 for 8-bit images, 17 for the digits data.
        generator: source of u (on x's device).

    Reference: Theis et al. (2016), "A note on the evaluation of generative models", Sec. 3.1.
    """
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + (2.0 / (num_levels - 1)) * (u - 0.5)


def discrete_nll(log_likelihood_nats: Tensor, x_shape: tuple[int, ...], num_levels: int) -> Tensor:
    """Upper bound in nats ``[B]`` on −log P(k) from log p_model(x_deq) in [−1, 1] space.

    With v = k + u on the integer scale and x = a (v − ½) − 1, a = 2/(L − 1), the density on
    the integer scale is p_v(v) = p_x(x) aᴰ. The discrete model P(k) = ∫_{[0,1)ᴰ} p_v(k + u) du
    sums to ≤ 1 over k, and by Jensen −log P(k) ≤ E_u[−log p_x(x_deq)] − D log a
    (Theis et al., 2016, Eq. 9; Ho et al., 2019, "Flow++", Sec. 3.1).

    Args:
        log_likelihood_nats: log p_model(x_deq) ``[B]`` in nats, with x_deq from
            :func:`dequantize`.
        x_shape: shape of the batch ``[B, ...]``; D is the number of entries per sample.
        num_levels: L.
    """
    if log_likelihood_nats.ndim != 1 or x_shape[0] != log_likelihood_nats.shape[0]:
        raise ValueError(
            f"want log-likelihoods [B] and the batch shape [B, ...], got "
            f"{tuple(log_likelihood_nats.shape)} and {tuple(x_shape)}"
        )
    d = math.prod(x_shape[1:])
    return -(log_likelihood_nats + d * math.log(2.0 / (num_levels - 1)))


def bits_per_dim(log_likelihood_nats: Tensor, x_shape: tuple[int, ...], num_levels: int) -> Tensor:
    """Bits per dimension ``[B]``: :func:`discrete_nll` / (D ln 2), a bound on the discrete NLL.

    A density uniform over the dequantized cube gives exactly log₂ L.
    """
    d = math.prod(x_shape[1:])
    return discrete_nll(log_likelihood_nats, x_shape, num_levels) / (d * math.log(2.0))
