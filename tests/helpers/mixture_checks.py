"""The unequal two-mode mixture every sampler test reproduces, and its Monte-Carlo checks.

Data: π = (0.8, 0.2) over N((−4, 0), 0.5² I) and N((4, 0), 0.5² I). With n = 4000 samples the
Monte-Carlo standard errors are: mode weight √(0.8 · 0.2 / 4000) = 0.0063; mean of the small
mode (n ≈ 800) 0.5/√800 = 0.018; its std 0.5/√1600 = 0.0125. The default tolerances (weights
±0.02, means ±0.05, stds ±0.05) are about 3, 2.8 and 4 standard errors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_pl.mixture import GaussianMixtureSpec
from diffusion_pl.oracle import GaussianMixtureOracle, responsibilities
from diffusion_pl.parameterization import (
    EpsilonPrediction,
    Parameterization,
    Prediction,
    ScorePrediction,
    VelocityPrediction,
    VPrediction,
    X0Prediction,
)
from diffusion_pl.paths import (
    DDPMPath,
    LinearPath,
    NoisePath,
    SubVPPath,
    VEPath,
    VPCosinePath,
    VPLinearPath,
)
from diffusion_pl.tensors import as_batch

__all__ = [
    "ALL_PATHS",
    "MEANS",
    "MIXTURE",
    "STDS",
    "WEIGHTS",
    "IsotropicMixtureOracle",
    "N",
    "OracleNet",
    "check_mixture",
    "mixture_oracle",
    "mode_weights",
    "seeded",
]

MEANS = torch.tensor([[-4.0, 0.0], [4.0, 0.0]], dtype=torch.float64)
STDS = torch.tensor([0.5, 0.5], dtype=torch.float64)
WEIGHTS = torch.tensor([0.8, 0.2], dtype=torch.float64)
MIXTURE = GaussianMixtureSpec.isotropic(MEANS.tolist(), STDS.tolist(), WEIGHTS.tolist())
N = 4000

ALL_PATHS = {
    "vp_linear": VPLinearPath,
    "vp_cosine": VPCosinePath,
    "sub_vp": SubVPPath,
    "ve": VEPath,
    "linear": LinearPath,
    "ddpm": DDPMPath,
}
"""Each noise path of docs/math.md (with its paper defaults), by the name tests give it."""


class IsotropicMixtureOracle(GaussianMixtureOracle):
    """:class:`GaussianMixtureOracle` for isotropic components, in closed form.

    With Σ_k = s_k² I, C_k = (α² s_k² + σ²) I is a scalar per component, so the score and
    x̂_0 need no Cholesky factor: about 30× faster than the general oracle on 2-D batches (whose
    per-sample batched Cholesky costs ~10 ms per call for 4000 points), which lets the sampler
    tests run the step counts the papers use. ``test_fast_oracle_matches_general_oracle``
    checks it against the general oracle on every path.
    """

    def __init__(self, path: NoisePath, mixture: GaussianMixtureSpec) -> None:
        super().__init__(path, mixture)
        self.stds = mixture.stds

    def _iso(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """log π_k N(x; α μ_k, c_k I) and c_k ``[K, B]``, x − α μ_k ``[K, B, D]``, α ``[B]``.

        Component-major layout: reductions over K run over the leading dimension, which is
        ~20× faster on CPU than reducing a trailing dimension of size 2.
        """
        t = as_batch(t, x.shape[0], x).to(torch.float64)
        alpha, sigma = self.path.alpha(t), self.path.sigma(t)
        var = alpha**2 * self.stds[:, None] ** 2 + sigma**2
        diff = x - alpha[:, None] * self.mixture.means[:, None, :]
        sq = (diff * diff) @ torch.ones(x.shape[1], dtype=x.dtype, device=x.device)
        log_joint = (
            torch.log(self.mixture.weights)[:, None]
            - 0.5 * sq / var
            - 0.5 * x.shape[1] * torch.log(2 * math.pi * var)
        )
        return log_joint, var, diff, alpha

    def class_logits(self, x: Tensor, t: Tensor | float) -> Tensor:
        return self._iso(x.to(torch.float64), t)[0].T

    def score(self, x: Tensor, t: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        log_joint, var, diff, _ = self._iso(x.to(torch.float64), t)
        resp = responsibilities(log_joint, class_labels, dim=0)
        return -((resp / var)[..., None] * diff).sum(0)

    def __call__(
        self, x: Tensor, t: Tensor | float, class_labels: Tensor | None = None
    ) -> Prediction:
        x = x.to(torch.float64)
        log_joint, var, diff, alpha = self._iso(x, t)
        resp = responsibilities(log_joint, class_labels, dim=0)
        score = -((resp / var)[..., None] * diff).sum(0)
        shrink = (resp * self.stds[:, None] ** 2 / var)[..., None] * diff
        means = self.mixture.means[:, None, :]
        x0 = (resp[..., None] * means).sum(0) + alpha[:, None] * shrink.sum(0)
        sigma = self.path.sigma(as_batch(t, x.shape[0], x).to(torch.float64))
        return Prediction(x0=x0, eps=-sigma[:, None] * score)


class OracleNet:
    """The exact class-conditional mixture as a network whose output ``parameterization`` reads.

    ``net(x, t, labels)`` returns the parameterization's target for the exact pair of
    p_t(x | y) (label y < K) or of p_t(x) (label K = ∅, or None). Records each call's batch.
    A formulation takes it as its net (a :class:`~diffusion_pl.nets.protocol.DenoiserNet` with
    ``num_classes`` = K), so whole ``sample`` calls run on the exact model.
    """

    def __init__(self, oracle: GaussianMixtureOracle, parameterization: Parameterization) -> None:
        self.oracle, self.parameterization = oracle, parameterization
        self.num_classes = oracle.mixture.num_components
        self.batches: list[int] = []

    def __call__(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None) -> Tensor:
        self.batches.append(x.shape[0])
        pred = self.oracle(x, noise_labels, class_labels)
        c = self.oracle.path.coefficients(noise_labels.double(), x.ndim)
        return self.parameterization.target(pred.x0, pred.eps, c)

    def check_data_shape(self, data_shape: tuple[int, ...]) -> None:
        """Examples are points of the mixture's dimension D."""
        if tuple(data_shape) != (self.oracle.mixture.dim,):
            raise ValueError(f"the mixture is {self.oracle.mixture.dim}-D, got {data_shape}")


def mixture_oracle(path: NoisePath) -> IsotropicMixtureOracle:
    """The exact denoiser of the test mixture on ``path``."""
    return IsotropicMixtureOracle(path, MIXTURE)


def mode_weights(oracle: GaussianMixtureOracle, x: Tensor) -> Tensor:
    """Share of samples assigned to each mode ``[K]``."""
    mixture = oracle.mixture
    return torch.bincount(mixture.assign(x), minlength=mixture.num_components).double() / len(x)


def check_mixture(
    oracle: GaussianMixtureOracle,
    x: Tensor,
    *,
    weight_tol: float = 0.02,
    mean_tol: float = 0.05,
    std_tol: float = 0.05,
) -> None:
    """Assert mode weights within ±``weight_tol``, per-mode means and stds within their tols."""
    assert torch.isfinite(x).all()
    mixture, labels = oracle.mixture, oracle.mixture.assign(x)
    torch.testing.assert_close(mode_weights(oracle, x), mixture.weights, atol=weight_tol, rtol=0)
    for k in range(mixture.num_components):
        xk = x[labels == k].double()
        std_k = torch.sqrt(torch.diagonal(mixture.covs[k]))
        torch.testing.assert_close(xk.mean(0), mixture.means[k], atol=mean_tol, rtol=0)
        torch.testing.assert_close(xk.std(0), std_k, atol=std_tol, rtol=0)


PAIRS = [
    (VelocityPrediction(), LinearPath()),
    (EpsilonPrediction(), VPLinearPath()),
    (ScorePrediction(), VEPath()),
    (X0Prediction(), DDPMPath()),
    (VPrediction(), VPLinearPath()),
]
"""One parameterization on each kind of path: the (param, path) cases of the guidance tests."""
PAIR_IDS = [f"{type(p).__name__}-{type(q).__name__}" for p, q in PAIRS]


def seeded(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)
