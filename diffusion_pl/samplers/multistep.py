"""What the multistep few-step solvers of the PF-ODE share: DPM-Solver++, UniPC and iPNDM.

All three reuse the model's earlier outputs instead of extra evaluations, so ``steps`` steps
cost ``steps`` network calls. With λ = log(α/σ) (half the log-SNR) and h = λ_s − λ_t for a
step t → s, the exact solution in data-prediction form (Lu et al. 2022b, Eq. 9) is

    x_s = (σ_s/σ_t) x_t + σ_s ∫_{λ_t}^{λ_s} e^λ x̂_0(x_λ, λ) dλ,

and DPM-Solver++ and UniPC approximate x̂_0 by polynomials in λ through its past values.
iPNDM instead runs Adams–Bashforth on the same ODE written in σ̃ = σ/α for x̃ = x/α,
dx̃/dσ̃ = ε̂ (Karras et al. 2022, Eq. 4 on the scaled variable).

Both ends of a path are handled: a step from α = 0 (λ = −∞, the linear path at t = 1) is the
exact limit of the first-order step, x_s = σ_s x_t + α_s x̂_0, and the outputs before it drop out
of later steps (their weight vanishes in the limit); a step to σ = 0 (λ = +∞, the linear path
at t = 0) is first order, x_s = α_s x̂_0, the data-prediction step's exact value there.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_pl.paths import NoisePath

__all__ = ["check_order", "schedule", "step_order"]


def schedule(path: NoisePath, ts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """α, σ and λ = ½ log-SNR on the grid ``ts`` ``[N + 1]``, float64 on the CPU."""
    with torch.no_grad():
        ts = ts.to("cpu", torch.float64)
        return path.alpha(ts), path.sigma(ts), 0.5 * path.log_snr(ts)


def _usable(lams: list[float], order: int) -> int:
    """How many of the newest outputs (at λ values ``lams``) a step of ``order`` may use:
    outputs at λ = −∞ (α = 0) carry no weight once a finite step has been taken."""
    count = 0
    for lam in reversed(lams[-order:]):
        if count > 0 and math.isinf(lam):
            break
        count += 1
    return count


def step_order(order: int, i: int, steps: int, lams: list[float], sigma_next: float) -> int:
    """Order of step ``i`` of ``steps``: at most the usable history; lower on the last steps of
    runs under 10 steps (Lu et al.'s reference ``lower_order_final``); 1 on a step to σ = 0."""
    k = min(order, _usable(lams, order))
    if steps < 10:
        k = min(k, steps - i)
    return 1 if sigma_next == 0 else k


def check_order(order: int, orders: tuple[int, ...], solver: str) -> None:
    """Refuse an ``order`` of ``solver`` outside ``orders``."""
    if order not in orders:
        allowed = ", ".join(map(str, orders[:-1])) + f" or {orders[-1]}"
        raise ValueError(f"{solver} order must be {allowed}, got {order}")
