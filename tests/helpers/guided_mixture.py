"""The class-conditional two-class mixture of the LCM tests (class = component), its exact
guided teacher, and its exact guided consistency function f*_ω (the guided PF-ODE by RK45)."""

from __future__ import annotations

import torch
from mixture_checks import IsotropicMixtureOracle, OracleNet
from torch import Tensor

from diffusion_pl.formulations import VDM
from diffusion_pl.mixture import GaussianMixtureSpec
from diffusion_pl.objectives import Teacher
from diffusion_pl.parameterization import EpsilonPrediction, Prediction
from diffusion_pl.paths import NoisePath, VPLinearPath
from diffusion_pl.samplers.rk45 import solve_ode_rk45
from diffusion_pl.tensors import append_dims

__all__ = [
    "CLASSES",
    "VP",
    "InMemory",
    "TrueLCMDenoiser",
    "class_moments",
    "exact_teacher",
    "guided_pair",
    "true_lcm",
]

VP = VPLinearPath()
# Two overlapping classes, so that guidance moves the samples: class k = component k.
CLASSES = GaussianMixtureSpec.isotropic([[-1.0, 0.0], [1.0, 0.0]], 0.6, [0.5, 0.5])


class InMemory(Teacher):
    """A model already in memory, handed to training as a teacher."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def load(self, map_location: str | torch.device = "cpu") -> torch.nn.Module:
        return self.model.eval().requires_grad_(False)

    def __str__(self) -> str:
        return "in-memory"


def exact_teacher(path: NoisePath) -> VDM:
    """The exact class-conditional mixture as an ε-prediction VDM on ``path``."""
    net = OracleNet(IsotropicMixtureOracle(path, CLASSES), EpsilonPrediction())
    return VDM(net, (2,), path=path, p_uncond=0.1)


def guided_pair(path: NoisePath, y: Tensor, omega: Tensor) -> callable:
    """The exact guided pair x̂_∅ + ω (x̂_y − x̂_∅) (ε̂ alike) at x̃, σ̃ in scaled space."""
    oracle = IsotropicMixtureOracle(path, CLASSES)
    null = torch.full_like(y, CLASSES.num_components)

    def call(x: Tensor, sigma: Tensor) -> Prediction:
        t = path.time_of_log_snr(-2.0 * torch.log(sigma.to(torch.float64)))
        alpha = append_dims(path.alpha(t), x.ndim)
        cond, uncond = oracle(alpha * x, t, y), oracle(alpha * x, t, null)
        w = append_dims(omega, x.ndim)
        return Prediction(cond.x0 * w + uncond.x0 * (1 - w), cond.eps * w + uncond.eps * (1 - w))

    return call


def true_lcm(path: NoisePath, y: Tensor, omega: Tensor, tol: float = 1e-7) -> callable:
    """f*_ω(x̃, σ̃ [B]) in LCM's reading: the guided PF-ODE dx̃/dσ̃ = ε̂_ω solved by RK45 from each
    example's σ̃ down to σ̃(t_min), returned as the point x = α(t_min) x̃ there (LCM's boundary
    is f(x, t_min) = x). One clock s ∈ [0, 1], σ̃(s) = σ̃^{1−s} σ̃_min^s."""
    pair = guided_pair(path, y, omega)
    t_min = torch.tensor(path.t_min, dtype=torch.float64)
    sigma_min = float(path.sigma(t_min) / path.alpha(t_min))
    alpha_min = float(path.alpha(t_min))

    def f(x: Tensor, sigma: Tensor) -> Tensor:
        log_ratio = torch.log(sigma_min / sigma.to(torch.float64))

        def drift(z: Tensor, s: Tensor) -> Tensor:
            level = sigma * torch.exp(s * log_ratio)
            return pair(z, level).eps * (level * log_ratio)[:, None]

        end = solve_ode_rk45(drift, x.to(torch.float64), 0.0, 1.0, rtol=tol, atol=tol)[0]
        return alpha_min * end

    return f


class TrueLCMDenoiser:
    """f*_ω as a denoiser ``(x, t) -> Prediction`` on ``path`` (x̂_0 = f*, what samplers read)."""

    def __init__(self, path: NoisePath, y: Tensor, omega: float) -> None:
        self.path = path
        self.f = true_lcm(path, y, torch.full(y.shape, omega, dtype=torch.float64), tol=1e-6)

    def __call__(self, x: Tensor, t: Tensor | float) -> Prediction:
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        alpha, sigma = self.path.alpha(t)[:, None], self.path.sigma(t)[:, None]
        x0 = self.f(x.to(torch.float64) / alpha, (sigma / alpha)[:, 0])
        return Prediction(x0=x0, eps=(x - alpha * x0) / sigma)


def class_moments(x: Tensor, y: Tensor) -> Tensor:
    """Per class: mean of the first coordinate, and std of each coordinate ``[K, 3]``."""
    rows = [torch.stack([x[y == k, 0].mean(), *x[y == k].std(0)]) for k in range(2)]
    return torch.stack(rows)
