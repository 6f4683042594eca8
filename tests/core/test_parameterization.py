"""Parameterizations round-trip in float64 on every path; PF-ODE drift identities."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from diffusion_pl.denoiser import Denoiser
from diffusion_pl.parameterization import (
    EpsilonPrediction,
    Parameterization,
    ScorePrediction,
    VelocityPrediction,
    VPrediction,
    X0Prediction,
)
from diffusion_pl.paths import LinearPath, NoisePath, PathCoefficients

PARAMETERIZATIONS = [
    EpsilonPrediction(),
    X0Prediction(),
    VPrediction(),
    ScorePrediction(),
    ScorePrediction(scaled_by_sigma=False),
    VelocityPrediction(),
]


def _draw(path: NoisePath, shape: tuple[int, ...]):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.rand(shape[0], generator=g, dtype=torch.float64) * 0.9 + 0.05
    c = path.coefficients(t, len(shape))
    return x0, eps, t, c, c.alpha * x0 + c.sigma * eps


@pytest.mark.parametrize("param", PARAMETERIZATIONS, ids=lambda p: repr(type(p).__name__))
@pytest.mark.parametrize("shape", [(16, 2), (4, 3, 5, 5)])
def test_target_round_trips_to_x0_and_eps(
    path: NoisePath, param: Parameterization, shape: tuple[int, ...]
) -> None:
    x0, eps, _, c, x = _draw(path, shape)
    pred = param.predict(param.target(x0, eps, c), x, c)
    torch.testing.assert_close(pred.x0, x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(pred.eps, eps, rtol=1e-9, atol=1e-9)


def test_score_and_velocity_identities(path: NoisePath) -> None:
    x0, eps, t, c, x = _draw(path, (32, 2))
    pred = EpsilonPrediction().predict(eps, x, c)
    torch.testing.assert_close(pred.score(c), -eps / c.sigma)
    # PF-ODE drift f x − ½ g² s equals α' x0 + σ' ε (docs/math.md).
    f, g2 = path.f(t)[:, None], path.g2(t)[:, None]
    torch.testing.assert_close(pred.velocity(c), f * x - 0.5 * g2 * pred.score(c))
    torch.testing.assert_close(pred.velocity(c), c.d_alpha * x0 + c.d_sigma * eps)


def test_linear_path_drift_is_rectified_flow_velocity() -> None:
    path = LinearPath()
    x0, eps, _, c, x = _draw(path, (32, 2))
    pred = VelocityPrediction().predict(eps - x0, x, c)
    torch.testing.assert_close(pred.velocity(c), eps - x0)
    # Stable at both ends of the linear path, where α or σ vanish.
    for t_end in (0.0, 1.0):
        c_end = path.coefficients(torch.full((32,), t_end, dtype=torch.float64), 2)
        x_end = c_end.alpha * x0 + c_end.sigma * eps
        pred = VelocityPrediction().predict(eps - x0, x_end, c_end)
        torch.testing.assert_close(pred.x0, x0)
        torch.testing.assert_close(pred.eps, eps)


def test_denoiser_casts_and_counts() -> None:
    path = LinearPath()
    seen = {}

    def net(x, labels, class_labels):
        seen["labels"] = labels
        return torch.zeros_like(x, dtype=torch.bfloat16)

    class ScaledLabels(VelocityPrediction):  # the net sees 1000 t, as DDPM's nets do
        def noise_label(self, t: Tensor, c: PathCoefficients) -> Tensor:
            return 1000 * t

    den = Denoiser(net, path, ScaledLabels())
    x = torch.randn(5, 2)
    pred = den(x, 0.25)
    assert pred.x0.dtype == torch.float32 and den.nfe == 1
    torch.testing.assert_close(seen["labels"], torch.full((5,), 250.0))
    torch.testing.assert_close(pred.x0, x)  # û = 0 ⇒ x̂_0 = x − t·0


@pytest.mark.parametrize("param", PARAMETERIZATIONS, ids=lambda p: repr(type(p).__name__))
def test_eps_scale_is_the_derivative_of_eps_hat(param: Parameterization, path: NoisePath) -> None:
    """ε̂ − ε = k (F − target) with k = ∂ε̂/∂F, in float64 on every path."""
    x0, eps, _, c, x = _draw(path, (16, 2))
    target = param.target(x0, eps, c)
    out = target + torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).double()
    eps_hat = param.predict(out, x, c).eps
    torch.testing.assert_close(eps_hat - eps, param.eps_scale(c) * (out - target))
