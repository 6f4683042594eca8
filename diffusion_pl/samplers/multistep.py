"""Multistep few-step solvers of the probability-flow ODE: DPM-Solver++, UniPC and iPNDM.

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

from diffusion_pl.parameterization import Prediction
from diffusion_pl.paths import NoisePath
from diffusion_pl.samplers.base import DenoiserFn, Sampler, progress_bar
from diffusion_pl.samplers.grids import EDMGrid, Grid, LogSNRGrid

__all__ = [
    "DPMSolver3MSampler",
    "DPMSolverSampler",
    "IPNDMSampler",
    "UniPCSampler",
    "sample_dpmpp",
    "sample_ipndm",
    "sample_unipc",
]


def _schedule(path: NoisePath, ts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """α, σ and λ = ½ log-SNR on the grid ``ts`` ``[N + 1]``, float64 on the CPU."""
    with torch.no_grad():
        ts = ts.to("cpu", torch.float64)
        return path.alpha(ts), path.sigma(ts), 0.5 * path.log_snr(ts)


def _denoise(denoiser: DenoiserFn, x: Tensor, t: Tensor) -> Prediction:
    """The denoiser's (x̂_0, ε̂) at one time ``t`` for the whole batch."""
    return denoiser(x, t.to(x.dtype).expand(x.shape[0]))


def _usable(lams: list[float], order: int) -> int:
    """How many of the newest outputs (at λ values ``lams``) a step of ``order`` may use:
    outputs at λ = −∞ (α = 0) carry no weight once a finite step has been taken."""
    count = 0
    for lam in reversed(lams[-order:]):
        if count > 0 and math.isinf(lam):
            break
        count += 1
    return count


def _step_order(order: int, i: int, steps: int, lams: list[float], sigma_next: float) -> int:
    """Order of step ``i`` of ``steps``: at most the usable history; lower on the last steps of
    runs under 10 steps (Lu et al.'s reference ``lower_order_final``); 1 on a step to σ = 0."""
    k = min(order, _usable(lams, order))
    if steps < 10:
        k = min(k, steps - i)
    return 1 if sigma_next == 0 else k


@torch.no_grad()
def sample_dpmpp(
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    ts: Tensor,
    *,
    order: int = 2,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """DPM-Solver++(1S / 2M / 3M): multistep data-prediction solver of order 1, 2 or 3.

    With φ₁ = e^{−h} − 1, φ₂ = φ₁/h + 1, φ₃ = φ₂/h − ½ and past outputs m₀ (now), m₁, m₂ at
    step ratios r₀ = h₀/h, r₁ = h₁/h (Lu et al.'s reference code, ``multistep_dpm_solver``):
    order 1 is x_s = (σ_s/σ_t) x_t − α_s φ₁ m₀, which is DDIM(η = 0); order 2 (Alg. 2) adds
    −½ α_s φ₁ D₁ with D₁ = (m₀ − m₁)/r₀; order 3 adds α_s φ₂ D₁ − α_s φ₃ D₂ with the divided
    differences D₁₀ = (m₀ − m₁)/r₀, D₁₁ = (m₁ − m₂)/r₁, D₁ = D₁₀ + r₀/(r₀ + r₁) (D₁₀ − D₁₁)
    ≈ h x̂₀' and D₂ = 2 (D₁₀ − D₁₁)/(r₀ + r₁) ≈ h² x̂₀''. (The reference code's multistep
    third-order update drops this factor 2, which pairs φ₃ with ½ h² x̂₀'' and leaves the
    method second order; ``tests/test_solvers_order.py`` measures order 3 with it.) The first
    steps warm up at lower order.

    Args:
        denoiser: ``(x, t) -> Prediction``.
        path: the noise path.
        x: samples at ``ts[0]``, ``[B, ...]``.
        ts: decreasing times ``[N + 1]``.
        order: 1, 2 (DPM-Solver++(2M)) or 3 (3M).
        generator: unused (deterministic); accepted for the shared sampler signature.
        progress: show a progress bar.

    Reference: Lu et al. (2022b), "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
    Probabilistic Models", Alg. 2 and App. B.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver++ order must be 1, 2 or 3, got {order}")
    alpha, sigma, lam = _schedule(path, ts)
    steps = len(ts) - 1
    x0s: list[Tensor] = []
    lams: list[float] = []
    for i in progress_bar(range(steps), steps, progress, f"dpm-solver++ ({order}M)"):
        x0s.append(_denoise(denoiser, x, ts[i]).x0)
        lams.append(float(lam[i]))
        k = _step_order(order, i, steps, lams, float(sigma[i + 1]))
        h = lam[i + 1] - lam[i]
        a_s = float(alpha[i + 1])
        phi1 = float(torch.expm1(-h))
        x = float(sigma[i + 1] / sigma[i]) * x - a_s * phi1 * x0s[-1]
        if k >= 2:
            r0 = float((lam[i] - lam[i - 1]) / h)
            d10 = (x0s[-1] - x0s[-2]) / r0
            if k == 2:
                x = x - 0.5 * a_s * phi1 * d10
            else:
                r1 = float((lam[i - 1] - lam[i - 2]) / h)
                d11 = (x0s[-2] - x0s[-3]) / r1
                d1 = d10 + (r0 / (r0 + r1)) * (d10 - d11)
                d2 = 2.0 * (d10 - d11) / (r0 + r1)
                phi2 = phi1 / float(h) + 1.0
                phi3 = phi2 / float(h) - 0.5
                x = x + a_s * phi2 * d1 - a_s * phi3 * d2
        del x0s[:-2], lams[:-2]
    return x


def _weighted(coefs: list[float], terms: list[Tensor], like: Tensor) -> Tensor:
    """Σ_j c_j D_j (zeros shaped as ``like`` when there are no terms)."""
    return sum((c * d for c, d in zip(coefs, terms, strict=True)), torch.zeros_like(like))


def _unipc_coefficients(rks: list[float], h: float) -> tuple[Tensor, float, Tensor]:
    """UniPC's B(h) = e^{−h} − 1 (bh2, data prediction), R_{ij} = r_j^{i}, b_i = i! φ_{i+1}/B(h)
    for the step ratios ``rks`` (the last is 1), as in Zhao et al.'s reference code."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = h_phi_1
    r = torch.tensor(rks, dtype=torch.float64)
    rows, b, factorial = [], [], 1
    for i in range(1, len(rks) + 1):
        rows.append(r ** (i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return torch.stack(rows), b_h, torch.tensor(b, dtype=torch.float64)


@torch.no_grad()
def sample_unipc(
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    ts: Tensor,
    *,
    order: int = 2,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """UniPC: the UniP-p predictor and the UniC corrector, B(h) = e^{h} − 1 (bh2).

    Each step predicts x_s with UniP of order p from p past x̂_0, evaluates the model at the
    prediction, and corrects x_s with UniC, which also uses that new output (so the corrector
    costs no extra call and raises the order of accuracy to p + 1). The output at the predicted
    x_s is what later steps reuse; the last step is not corrected. The order-2 predictor and
    the order-1 corrector use the reference code's fixed ρ = ½; in data-prediction form
    B(h) = e^{−h} − 1 there, with h = λ_s − λ_t.

    Args:
        denoiser: ``(x, t) -> Prediction``.
        path: the noise path.
        x: samples at ``ts[0]``, ``[B, ...]``.
        ts: decreasing times ``[N + 1]``.
        order: predictor order p (1, 2 or 3; the paper's 2 by default for few steps).
        generator: unused (deterministic); accepted for the shared sampler signature.
        progress: show a progress bar.

    Reference: Zhao et al. (2023), "UniPC: A Unified Predictor-Corrector Framework for Fast
    Sampling of Diffusion Models", Alg. 1–2 (UniC-p, UniP-p) and Sec. 3.3 (B(h) choices).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3, got {order}")
    alpha, sigma, lam = _schedule(path, ts)
    steps = len(ts) - 1
    x0s: list[Tensor] = [_denoise(denoiser, x, ts[0]).x0]
    lams: list[float] = [float(lam[0])]
    for i in progress_bar(range(steps), steps, progress, f"unipc (order {order})"):
        k = _step_order(order, i, steps, lams, float(sigma[i + 1]))
        h = float(lam[i + 1] - lam[i])
        a_s = float(alpha[i + 1])
        rks = [(lams[-1 - j] - lams[-1]) / h for j in range(1, k)] + [1.0]
        diffs = [(x0s[-1 - j] - x0s[-1]) / rks[j - 1] for j in range(1, k)]
        rmat, b_h, b = _unipc_coefficients(rks, h)
        base = float(sigma[i + 1] / sigma[i]) * x - a_s * math.expm1(-h) * x0s[-1]
        if k == 1:
            rho_p = []
        else:
            rho_p = [0.5] if k == 2 else torch.linalg.solve(rmat[:-1, :-1], b[:-1]).tolist()
        x_pred = base - a_s * b_h * _weighted(rho_p, diffs, x)
        if i == steps - 1:
            return x_pred
        x0_new = _denoise(denoiser, x_pred, ts[i + 1]).x0
        x = x_pred
        if math.isfinite(lam[i]):  # no corrector on a step from α = 0: its λ-interval is infinite
            rho_c = [0.5] if k == 1 else torch.linalg.solve(rmat, b).tolist()
            terms = [*diffs, x0_new - x0s[-1]]
            x = base - a_s * b_h * _weighted(rho_c, terms, x)
        x0s.append(x0_new)
        lams.append(float(lam[i + 1]))
        del x0s[:-3], lams[:-3]
    return x


def _adams_bashforth_weights(nodes: list[float], target: float) -> list[float]:
    """Weights w_j with Σ w_j f(σ_j) = mean of the interpolant of f over [σ_0, target].

    ``nodes`` σ_0 (now), σ_1, … (past); exact for polynomials of degree < 4 (two-point Gauss–
    Legendre on the Lagrange basis). On equal steps they are PNDM's 1; 3/2, −1/2; 23/12, −16/12,
    5/12; 55/24, −59/24, 37/24, −9/24.
    """
    span = target - nodes[0]
    us = [(s - nodes[0]) / span for s in nodes]
    gauss = (0.5 - 0.5 / math.sqrt(3.0), 0.5 + 0.5 / math.sqrt(3.0))
    weights = []
    for j, uj in enumerate(us):
        total = 0.0
        for g in gauss:
            total += 0.5 * math.prod((g - um) / (uj - um) for m, um in enumerate(us) if m != j)
        weights.append(total)
    return weights


@torch.no_grad()
def sample_ipndm(
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    ts: Tensor,
    *,
    max_order: int = 4,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """iPNDM: Adams–Bashforth of order up to 4 on dx̃/dσ̃ = ε̂, x̃ = x/α, σ̃ = σ/α.

    Step i uses order min(i + 1, ``max_order``): Euler (= DDIM), then AB2, AB3, AB4 (Zhang &
    Chen's warm-up, replacing PNDM's Runge–Kutta start). The Adams–Bashforth weights are those
    of the actual steps in σ̃ (the variable-step form; on equal steps PNDM's fixed ones), so the
    order holds on any grid. Written on x itself:

        x_s = α_s x̂_0 + σ_s ε̂ + α_s (σ̃_s − σ̃_t) Σ_{j ≥ 1} w_j (ε̂_j − ε̂)

    (the first two terms are the Euler step), finite at α_t = 0 and σ_s = 0.

    Args:
        denoiser: ``(x, t) -> Prediction``.
        path: the noise path.
        x: samples at ``ts[0]``, ``[B, ...]``.
        ts: decreasing times ``[N + 1]``.
        max_order: highest Adams–Bashforth order, 1 … 4 (paper: 4).
        generator: unused (deterministic); accepted for the shared sampler signature.
        progress: show a progress bar.

    Reference: Zhang & Chen (2023), "Fast Sampling of Diffusion Models with Exponential
    Integrator" (DEIS), App. (iPNDM); Liu et al. (2022), "Pseudo Numerical Methods for
    Diffusion Models" (PNDM), Eq. 12; Zhou et al. (2024), "Fast ODE-based Sampling for Diffusion
    Models in Around 5 Steps" (variable-step iPNDM).
    """
    if max_order not in (1, 2, 3, 4):
        raise ValueError(f"iPNDM max_order must be 1 … 4, got {max_order}")
    alpha, sigma, _ = _schedule(path, ts)
    sigma_tilde = sigma / alpha
    steps = len(ts) - 1
    eps: list[Tensor] = []
    nodes: list[float] = []
    for i in progress_bar(range(steps), steps, progress, f"ipndm (order {max_order})"):
        pred = _denoise(denoiser, x, ts[i])
        eps.insert(0, pred.eps)
        nodes.insert(0, float(sigma_tilde[i]))
        k = min(max_order, len(_finite_prefix(nodes)))
        a_s, s_next = float(alpha[i + 1]), float(sigma_tilde[i + 1])
        x = a_s * pred.x0 + float(sigma[i + 1]) * pred.eps
        if k >= 2:
            w = _adams_bashforth_weights(nodes[:k], s_next)
            extra = sum(wj * (e - pred.eps) for wj, e in zip(w[1:], eps[1:k], strict=True))
            x = x + a_s * (s_next - nodes[0]) * extra
        del eps[max_order - 1 :], nodes[max_order - 1 :]
    return x


def _finite_prefix(values: list[float]) -> list[float]:
    """The leading run of finite values (σ̃ = ∞ ends the usable history)."""
    out = []
    for v in values:
        if not math.isfinite(v):
            break
        out.append(v)
    return out or values[:1]


class _LogSNRMultistepSampler(Sampler):
    """A multistep solver of ``order`` 1–3 on a log-SNR grid (DPM-Solver++ and UniPC)."""

    default_grid = LogSNRGrid()

    def __init__(
        self, steps: int = 20, order: int = 2, grid: Grid | None = None, denoise_final: bool = True
    ) -> None:
        if order not in (1, 2, 3):
            raise ValueError(f"{type(self).__name__}: order must be 1, 2 or 3, got {order}")
        super().__init__(steps=steps, order=order, grid=grid, denoise_final=denoise_final)


class DPMSolverSampler(_LogSNRMultistepSampler):
    """DPM-Solver++(2M) (``order`` 3: 3M) on a log-SNR grid; ``steps`` network evaluations.

    Args:
        steps: number of steps (paper: 10–20).
        order: 1, 2 or 3.
        grid: the time grid; None: :class:`LogSNRGrid` (Lu et al.'s choice for pixel models).
        denoise_final: return x̂_0 at ``path.t_min``.
    """

    solver = staticmethod(sample_dpmpp)


class DPMSolver3MSampler(DPMSolverSampler):
    """DPM-Solver++(3M): :class:`DPMSolverSampler` with ``order`` 3 by default."""

    def __init__(
        self, steps: int = 20, order: int = 3, grid: Grid | None = None, denoise_final: bool = True
    ) -> None:
        super().__init__(steps=steps, order=order, grid=grid, denoise_final=denoise_final)


class UniPCSampler(_LogSNRMultistepSampler):
    """UniPC (bh2) on a log-SNR grid; ``steps`` network evaluations.

    Args:
        steps: number of steps (paper: 5–10 for few-step sampling).
        order: UniP order p (the corrector makes it p + 1 accurate).
        grid: the time grid; None: :class:`LogSNRGrid` (Zhao et al.'s choice for pixel models).
        denoise_final: return x̂_0 at ``path.t_min``.
    """

    solver = staticmethod(sample_unipc)


class IPNDMSampler(Sampler):
    """iPNDM on EDM's ρ = 7 grid; ``steps`` network evaluations.

    Args:
        steps: number of steps.
        max_order: highest Adams–Bashforth order (1 … 4; Zhang & Chen: 4).
        grid: the time grid; None: :class:`EDMGrid` (Zhou et al.'s setting for iPNDM).
        denoise_final: return x̂_0 at ``path.t_min``.
    """

    solver = staticmethod(sample_ipndm)
    default_grid = EDMGrid()

    def __init__(
        self,
        steps: int = 20,
        max_order: int = 4,
        grid: Grid | None = None,
        denoise_final: bool = True,
    ) -> None:
        if max_order not in (1, 2, 3, 4):
            raise ValueError(f"iPNDM max_order must be 1 … 4, got {max_order}")
        super().__init__(steps=steps, max_order=max_order, grid=grid, denoise_final=denoise_final)
