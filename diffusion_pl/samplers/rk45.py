"""Adaptive Dormand–Prince RK45 in torch, and the PF-ODE sampler built on it.

The solver mirrors the step-size control of the RK45 that score_sde calls through scipy
(``rtol = atol = 1e-5``): the error norm is the RMS over the **whole batch state** of
err / (atol + rtol · max(|y|, |y_new|)), as if the batch were one flattened vector (this is
what score_sde does), so one step size serves every sample. Step size, time and the
accept/reject decision live on the state's device as tensors; the only host transfer is one
scalar per attempted step (the current time, for the loop condition and the progress bar).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import Generators
from diffusion_pl.samplers.base import DenoiserFn, Sampler
from diffusion_pl.samplers.grids import uniform_time_grid
from diffusion_pl.samplers.ode import ode_drift

__all__ = ["RK45Sampler", "sample_rk45", "solve_ode_rk45"]

# Dormand & Prince (1980), Table 2 ("RK5(4)7M"): nodes c, stages a, 5th-order weights b
# (also the last stage row: first-same-as-last) and e = b − b̂, b̂ the embedded 4th order.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)

# Step-size controller (Hairer, Nørsett & Wanner, 1993, Sec. II.4, Eq. 4.13), scipy's values.
_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 0.2, 10.0
_ERROR_EXPONENT = -1 / 5  # −1 / (order of the embedded error estimate + 1)

Drift = Callable[[Tensor, Tensor], Tensor]
"""``drift(y [B, ...], t 0-dim float64) -> dy/dt [B, ...]``."""


def _rms(y: Tensor) -> Tensor:
    return y.pow(2).mean().sqrt()


def _combine(y: Tensor, h: Tensor, weights: tuple[float, ...], ks: list[Tensor]) -> Tensor:
    """y + h · Σ_j w_j k_j, skipping zero weights."""
    return y + h * sum(w * k for w, k in zip(weights, ks, strict=False) if w != 0)


def _initial_step(
    drift: Drift, y: Tensor, t: Tensor, k: Tensor, span: float, rtol: float, atol: float
) -> Tensor:
    """Starting |step| from one explicit Euler probe (one drift evaluation), at most ``span``.

    ``span`` is the signed length t1 − t0; the probe stays inside [t0, t1].

    Reference: Hairer, Nørsett & Wanner (1993), "Solving ODEs I", Sec. II.4, "Starting step
    size" (steps a–f), with the method's order 5 in the exponent.
    """
    scale = atol + y.abs() * rtol
    d0, d1 = _rms(y / scale), _rms(k / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1).to(t.dtype)
    h0 = h0.clamp(max=abs(span))
    direction = math.copysign(1.0, span)
    k1 = drift(y + (direction * h0).to(y.dtype) * k, t + direction * h0)
    d2 = (_rms((k1 - k) / scale) / h0).to(t.dtype)
    d_max = torch.maximum(d1.to(t.dtype), d2)
    h1 = torch.where(d_max <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6), (0.01 / d_max) ** (1 / 5))
    return torch.minimum(100 * h0, h1).clamp(max=abs(span))


def solve_ode_rk45(
    drift: Drift,
    x: Tensor,
    t0: float,
    t1: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    first_step: float | None = None,
    max_steps: int = 10_000,
    progress: bool = False,
) -> tuple[Tensor, int]:
    """Integrate dy/dt = drift(y, t) from ``t0`` to ``t1`` (either direction) with adaptive RK45.

    Dormand–Prince 5(4) with local extrapolation (the 5th-order solution is kept) and FSAL
    (the last stage of an accepted step is the first of the next): 6 evaluations per attempted
    step, plus 2 at the start (the initial drift and the step-size probe, unless
    ``first_step`` is given). A step is accepted when the RMS of
    err / (atol + rtol · max(|y|, |y_new|)) over the whole batch state is below 1.

    Args:
        drift: ``(y [B, ...], t) -> [B, ...]``; ``t`` is a 0-dim float64 tensor on y's device.
        x: initial state at ``t0``, ``[B, ...]``.
        t0: start time.
        t1: end time (reached exactly).
        rtol: relative tolerance.
        atol: absolute tolerance.
        first_step: initial |step|; by default chosen by Hairer's starting-step algorithm.
        max_steps: the most steps (accepted or rejected) before a RuntimeError.
        progress: show a tqdm bar over t, advancing by each accepted step.

    Returns:
        The state at ``t1`` and the number of drift evaluations.

    Reference: Dormand & Prince (1980), "A family of embedded Runge–Kutta formulae";
    Hairer, Nørsett & Wanner (1993), Sec. II.4 (step-size control).
    """
    span = abs(t1 - t0)
    if span == 0:
        return x, 0
    direction = 1.0 if t1 > t0 else -1.0
    t = torch.tensor(t0, dtype=torch.float64, device=x.device)
    t_end = torch.tensor(t1, dtype=torch.float64, device=x.device)
    k = drift(x, t)
    nfe = 1
    if first_step is None:
        h = _initial_step(drift, x, t, k, t1 - t0, rtol, atol)
        nfe += 1
    else:
        h = torch.tensor(abs(first_step), dtype=torch.float64, device=x.device)
    rejected = torch.zeros((), dtype=torch.bool, device=x.device)
    t_seen = t0
    with tqdm(total=span, disable=not progress, desc="rk45", leave=False) as bar:
        for _ in range(max_steps):
            remaining = (t_end - t).abs()
            h = torch.minimum(h, remaining)
            dt = direction * h
            ks = [k]
            for c, a in zip(_C[1:], _A[1:], strict=True):
                ks.append(drift(_combine(x, dt.to(x.dtype), a, ks), t + c * dt))
            x_new = _combine(x, dt.to(x.dtype), _B, ks)
            ks.append(drift(x_new, t + dt))
            nfe += 6
            err = _combine(torch.zeros_like(x), dt.to(x.dtype), _E, ks)
            err_norm = _rms(err / (atol + rtol * torch.maximum(x.abs(), x_new.abs())))
            accept = err_norm < 1  # NaN / inf errors are rejected and shrink the step 5x
            grow = torch.where(
                err_norm == 0, _MAX_FACTOR, _SAFETY * err_norm.pow(_ERROR_EXPONENT)
            ).clamp(max=_MAX_FACTOR)
            grow = torch.where(rejected, grow.clamp(max=1.0), grow)
            shrink = torch.nan_to_num(_SAFETY * err_norm.pow(_ERROR_EXPONENT), nan=0.0)
            factor = torch.where(accept, grow, shrink.clamp(min=_MIN_FACTOR))
            t = torch.where(accept, torch.where(h >= remaining, t_end, t + dt), t)
            x = torch.where(accept, x_new, x)
            k = torch.where(accept, ks[-1], k)
            h = h * factor.to(h.dtype)
            rejected = ~accept
            t_now = float(t)  # the one host sync per step
            bar.update(abs(t_now - t_seen))
            t_seen = t_now
            if t_now == t1:
                return x, nfe
    raise RuntimeError(
        f"solve_ode_rk45: t1={t1} not reached in {max_steps} steps (now t={t_seen:.6g}); "
        "loosen rtol/atol, raise max_steps, or check the drift for NaNs/stiffness"
    )


def _check_tolerances(rtol: float, atol: float) -> None:
    """Refuse tolerances that are not > 0."""
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"RK45: rtol and atol must be > 0, got {rtol}, {atol}")


@torch.no_grad()
def sample_rk45(
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    ts: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator: Generators = None,
    progress: bool = False,
) -> Tensor:
    """Integrate the PF-ODE dx/dt = α'_t x̂_0 + σ'_t ε̂ from ``ts[0]`` to ``ts[-1]`` with RK45.

    Only the end points of ``ts`` are used; the solver picks its own steps. The number of
    network evaluations is what the denoiser counts (``Denoiser.nfe``).

    Shared arguments: as in :mod:`diffusion_pl.samplers.base`.

    Args:
        ts: times whose first and last entries are the start and end, e.g. ``[t_max, t_min]``.
        rtol: relative tolerance.
        atol: absolute tolerance.
        progress: show a progress bar over t.

    Reference: Song et al. (2021), "Score-Based Generative Modeling through SDEs", Sec. 4.3
    and App. D.3 (RK45 on the probability-flow ODE, rtol = atol = 1e-5).
    """
    _check_tolerances(rtol, atol)
    x, _ = solve_ode_rk45(
        lambda y, t: ode_drift(denoiser, path, y, t),
        x,
        float(ts[0]),
        float(ts[-1]),
        rtol=rtol,
        atol=atol,
        progress=progress,
    )
    return x


class RK45Sampler(Sampler, grid=False):
    """Adaptive RK45 on the probability-flow ODE, t_max → t_min; the solver picks the steps.

    There is no ``steps`` argument (``with_steps`` refuses). The NFE of a call is not stored
    here (attributes are exactly the constructor arguments): read the ``nfe`` counter of the
    ``Denoiser``.
    """

    name = "rk45"
    solver = staticmethod(sample_rk45)
    nfe_per_step = "adaptive"

    def validate(self) -> None:
        _check_tolerances(self.rtol, self.atol)

    def time_grid(self, path: NoisePath, device: torch.device | str | None) -> Tensor:
        """The end points ``[t_max, t_min]``; the solver chooses the times between."""
        return uniform_time_grid(path, 1, device)
