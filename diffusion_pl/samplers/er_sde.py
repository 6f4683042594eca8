"""ER-SDE-Solver: multistep solvers of the extended reverse-time SDE family, in σ̃ = σ/α.

Cui et al. (2023) write every reverse process with the data's marginals as one family indexed by
a noise scale function φ(σ̃) (φ(σ̃)/σ̃ non-decreasing), on the scaled variable x̃ = x/α. Its exact
solution from σ̃_s down to σ̃_t < σ̃_s, with r = φ(σ̃_t)/φ(σ̃_s), is

    x̃_t = r x̃_s + φ(σ̃_t) ∫_{σ̃_t}^{σ̃_s} φ'(σ)/φ(σ)² x̂_0(σ) dσ + √(σ̃_t² − r² σ̃_s²) z,

φ(σ̃) = σ̃ being the probability-flow ODE (no noise) and φ(σ̃) = σ̃² the reverse SDE. Expanding
x̂_0 in σ̃ through its past values (Newton's divided differences f₁, f₂) and integrating by parts
gives the solver of order k ≤ 3:

    x̃_t = r x̃_s + (1 − r) D_s
          + f₁ [(σ̃_t − σ̃_s) + φ(σ̃_t) ∫ dσ/φ]                              (k ≥ 2)
          + f₂ [(σ̃_t − σ̃_s)(σ̃_t − σ̃_p) + φ(σ̃_t) ∫ (2σ − σ̃_s − σ̃_p)/φ dσ]   (k = 3)
          + noise,

the integrals over [σ̃_t, σ̃_s], taken by Simpson's rule in log σ̃. One network call per step.

The noise scale here is φ(σ̃) = σ̃ (e^{σ̃^0.3} + 10)^η: η = 0 is the ODE (first order: DDIM),
η = 1 the paper's recommended "ER SDE 5", between the ODE and the reverse SDE. (The η that
blends the two is ours; the paper lists the functions one by one.)

Reference: Cui et al. (2023), "Elucidating the Solution Space of Extended Reverse-Time SDE for
Diffusion Models" (the ER SDE, its exact solution and ER-SDE-Solver-1/2/3, there with a Taylor
rather than Newton expansion at order 3) and App. A.8 (noise scale functions; "ER SDE 5" is
their code's default).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_pl.parameterization import DenoiserFn
from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import Generators, randn
from diffusion_pl.samplers.base import Sampler, denoise, progress_bar
from diffusion_pl.samplers.dpm_solver_sde import check_eta
from diffusion_pl.samplers.grids import LogSNRGrid
from diffusion_pl.samplers.multistep import check_order, schedule, step_order

__all__ = ["ERSDESampler", "noise_scale_ratio", "sample_er_sde"]

_POINTS = 101
"""Simpson points of the integrals in log σ̃ (odd)."""


def _excess(sigma: Tensor | float, eta: float) -> Tensor:
    """g(σ̃) = φ(σ̃)/σ̃ = (e^{σ̃^0.3} + 10)^η (∞ at σ̃ = ∞ for η > 0, 1 for η = 0)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return torch.ones_like(sigma) if eta == 0 else (torch.exp(sigma**0.3) + 10.0) ** eta


def noise_scale_ratio(sigma_t: float, sigma_s: float, eta: float) -> float:
    """g(σ̃_t)/g(σ̃_s), so r = (σ̃_t/σ̃_s) · this; 0 from σ̃_s = ∞ where η > 0."""
    return float(_excess(sigma_t, eta) / _excess(sigma_s, eta))


def _integrals(sigma_t: float, sigma_s: float, sigma_p: float, eta: float) -> tuple[float, float]:
    """φ(σ̃_t) ∫ dσ/φ and φ(σ̃_t) ∫ (2σ − σ̃_s − σ̃_p)/φ dσ over [σ̃_t, σ̃_s], σ = e^u."""
    u = torch.linspace(math.log(sigma_t), math.log(sigma_s), _POINTS, dtype=torch.float64)
    inv_g = 1.0 / _excess(u.exp(), eta)  # σ/φ(σ): dσ/φ = du / g
    weights = torch.ones(_POINTS, dtype=torch.float64)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    step = (u[-1] - u[0]) / (_POINTS - 1) / 3.0
    phi_t = sigma_t * float(_excess(sigma_t, eta))
    first = phi_t * float(step * (weights * inv_g).sum())
    second = phi_t * float(step * (weights * inv_g * (2 * u.exp() - sigma_s - sigma_p)).sum())
    return first, second


@torch.no_grad()
def sample_er_sde(
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    ts: Tensor,
    *,
    order: int = 3,
    eta: float = 1.0,
    generator: Generators = None,
    progress: bool = False,
) -> Tensor:
    """ER-SDE-Solver of ``order`` from ``ts[0]`` to ``ts[-1]`` (module docstring).

    Steps start at order 1 and rise as outputs accumulate; an output at α = 0 (σ̃ = ∞) is
    not used for differences; runs under 10 steps lower the order of their last steps, and a
    step to σ = 0 is first order (x_t = α_t x̂_0), as for the other multistep solvers.

    Shared arguments: as in :mod:`diffusion_pl.samplers.base`.

    Args:
        order: 1, 2 or 3.
        eta: η of the noise scale φ(σ̃) = σ̃ (e^{σ̃^0.3} + 10)^η: 0 the ODE, 1 the paper's
            "ER SDE 5".

    Reference: Cui et al. (2023), "Elucidating the Solution Space of Extended Reverse-Time SDE
    for Diffusion Models" (the exact solution and ER-SDE-Solver-1/2/3).
    """
    check_order(order, (1, 2, 3), "er_sde")
    check_eta(eta)
    alpha, sigma, lam = schedule(path, ts)
    scaled = sigma / alpha  # σ̃, ∞ where α = 0
    steps = len(ts) - 1
    outputs: list[Tensor] = []
    levels: list[float] = []
    lams: list[float] = []  # λ = −log σ̃: −∞ where α = 0, which step_order leaves out
    for i in progress_bar(range(steps), steps, progress, "er-sde"):
        outputs.append(denoise(denoiser, x, ts[i]).x0)
        levels.append(float(scaled[i]))
        lams.append(float(lam[i]))
        k = step_order(order, i, steps, lams, float(sigma[i + 1]))
        s_t, s_s = float(scaled[i + 1]), levels[-1]
        a_t = float(alpha[i + 1])
        ratio = noise_scale_ratio(s_t, s_s, eta) if s_t > 0 else 0.0
        r = s_t / s_s * ratio  # 0 from σ̃_s = ∞
        # r x̃_s with x̃_s = x/α_s, as (σ̃_t/σ_s)·g_t/g_s x: finite from α_s = 0
        x_scaled = (s_t / float(sigma[i]) * ratio) * x + (1.0 - r) * outputs[-1]
        if k >= 2:
            f1 = (outputs[-1] - outputs[-2]) / (s_s - levels[-2])
            first, second = _integrals(s_t, s_s, levels[-2], eta)
            x_scaled = x_scaled + f1 * ((s_t - s_s) + first)
            if k >= 3:
                f1_before = (outputs[-2] - outputs[-3]) / (levels[-2] - levels[-3])
                f2 = (f1 - f1_before) / (s_s - levels[-3])
                x_scaled = x_scaled + f2 * ((s_t - s_s) * (s_t - levels[-2]) + second)
        if eta > 0 and s_t > 0:
            spread = s_t * math.sqrt(max(0.0, 1.0 - ratio**2))
            x_scaled = x_scaled + spread * randn(x.shape, generator, device=x.device, dtype=x.dtype)
        x = a_t * x_scaled
        del outputs[:-3], levels[:-3], lams[:-3]
    return x


class ERSDESampler(Sampler, steps=20):
    """ER-SDE-Solver (Cui et al. 2023): multistep solver of the extended reverse-time SDE.

    Its noise scale runs from the PF-ODE (η = 0) to the paper's "ER SDE 5" (η = 1).
    On a log-SNR grid, like the other multistep solvers.
    """

    name = "er_sde"
    solver = staticmethod(sample_er_sde)
    default_grid = LogSNRGrid()
    randomness = "stochastic if eta > 0"

    def validate(self) -> None:
        check_order(self.order, (1, 2, 3), "er_sde")
        check_eta(self.eta)

    def is_deterministic(self) -> bool:
        """Deterministic at η = 0 (the ODE)."""
        return self.eta == 0
