"""Exact answers for Gaussian-mixture data on any noise path (MATH.md, "Exact answers").

If x_0 ~ Σ_k π_k N(μ_k, Σ_k) then x_t ~ Σ_k π_k N(α_t μ_k, C_k) with C_k = α_t² Σ_k + σ_t² I,
so the score, Tweedie's x̂_0, ε̂ and log p_t(x) are closed-form. Fed to a sampler in place of
a network, the oracle separates sampler bugs from training bugs.

Read the component index as a class label y and the mixture is also the exact class-conditional
model: p_t(x | y = k) = N(α_t μ_k, C_k), and the exact noisy classifier p_t(y = k | x) is the
posterior responsibility r_k(x) = π_k N(x; α_t μ_k, C_k) / p_t(x). Label K (the number of
components) stands for "no label", as the null row of the class-conditional nets.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_pl.parameterization import Prediction
from diffusion_pl.paths import NoisePath
from diffusion_pl.tensors import append_dims, as_batch

__all__ = ["GaussianMixtureOracle", "responsibilities"]


def responsibilities(log_joint: Tensor, class_labels: Tensor | None, dim: int) -> Tensor:
    """Posterior weights of the components: r_k = softmax_k(log π_k N_k), or one-hot at y.

    Conditioning on y = k < K leaves component k alone, so its row is the one-hot e_k; rows with
    the null label K (or ``class_labels`` None) keep the unconditional responsibilities.

    Args:
        log_joint: log π_k N(x; α μ_k, C_k) with the K components along ``dim``.
        class_labels: ``[B]`` int64 in [0, K], or None.
        dim: the component dimension of ``log_joint`` (0 or 1).
    """
    resp = torch.softmax(log_joint, dim=dim)
    if class_labels is None:
        return resp
    k = log_joint.shape[dim]
    if class_labels.min() < 0 or class_labels.max() > k:
        raise ValueError(
            f"class labels must be in [0, {k}] ({k} = no label), got {class_labels.tolist()}"
        )
    one_hot = torch.nn.functional.one_hot(class_labels.clamp(max=k - 1), k).to(resp.dtype)
    labelled = (class_labels < k)[:, None]
    if dim == 0:
        one_hot, labelled = one_hot.T, labelled.T
    return torch.where(labelled, one_hot, resp)


class GaussianMixtureOracle:
    """The exact denoiser of a Gaussian mixture on a given path, in float64.

    Args:
        path: the noise path.
        means: component means ``[K, D]``.
        covs: component covariances ``[K, D, D]``, or isotropic stds ``[K]``.
        weights: mixture weights ``[K]`` summing to 1.
    """

    def __init__(self, path: NoisePath, means: Tensor, covs: Tensor, weights: Tensor) -> None:
        self.path = path
        self.means = torch.as_tensor(means, dtype=torch.float64)
        k, d = self.means.shape
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.ndim == 1:
            covs = covs.view(k, 1, 1) ** 2 * torch.eye(d, dtype=torch.float64)
        self.covs = covs
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if not math.isclose(float(self.weights.sum()), 1.0, abs_tol=1e-6):
            raise ValueError(f"weights must sum to 1, got {self.weights.tolist()}")

    def _components(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Per-component log π_k N(x; α μ_k, C_k) ``[B, K]`` and C_k⁻¹(x − α μ_k) ``[B, K, D]``."""
        alpha, sigma = self.path.alpha(t), self.path.sigma(t)
        eye = torch.eye(self.means.shape[1], dtype=torch.float64, device=x.device)
        cov = (
            append_dims(alpha**2, 3)[:, None] * self.covs + append_dims(sigma**2, 3)[:, None] * eye
        )
        chol = torch.linalg.cholesky(cov)  # [B, K, D, D]
        diff = x[:, None, :] - append_dims(alpha, 2)[:, None] * self.means  # [B, K, D]
        solved = torch.cholesky_solve(diff.unsqueeze(-1), chol).squeeze(-1)
        half_logdet = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        d = x.shape[1]
        log_n = -0.5 * (diff * solved).sum(-1) - half_logdet - 0.5 * d * math.log(2 * math.pi)
        return torch.log(self.weights) + log_n, solved

    def log_prob(self, x: Tensor, t: Tensor | float) -> Tensor:
        """log p_t(x) ``[B]`` for x ``[B, D]``."""
        x = x.to(torch.float64)
        log_joint, _ = self._components(x, as_batch(t, x.shape[0], x).to(torch.float64))
        return torch.logsumexp(log_joint, dim=1)

    def class_logits(self, x: Tensor, t: Tensor | float) -> Tensor:
        """log π_k N(x; α_t μ_k, C_k) ``[B, K]``: their softmax is the exact p_t(y = k | x)."""
        x = x.to(torch.float64)
        log_joint, _ = self._components(x, as_batch(t, x.shape[0], x).to(torch.float64))
        return log_joint

    def score(self, x: Tensor, t: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        """∇ log p_t(x) = Σ_k r_k(x) · (−C_k⁻¹ (x − α_t μ_k)), ``[B, D]``; given labels y < K,
        ∇ log p_t(x | y) = −C_y⁻¹ (x − α_t μ_y)."""
        x = x.to(torch.float64)
        log_joint, solved = self._components(x, as_batch(t, x.shape[0], x).to(torch.float64))
        resp = responsibilities(log_joint, class_labels, dim=1)
        return -(resp[..., None] * solved).sum(1)

    def __call__(
        self, x: Tensor, t: Tensor | float, class_labels: Tensor | None = None
    ) -> Prediction:
        """The exact pair: x̂_0 = E[x_0 | x_t] = Σ_k r_k (μ_k + α Σ_k C_k⁻¹ (x − α μ_k)), ε̂ = −σ s.

        Both forms stay finite at the path's ends (α = 0 or σ = 0), unlike Tweedie's
        (x + σ² s) / α, which equals x̂_0 wherever α > 0. Rows with a label y < K get the pair
        of p_t(x | y), component y alone (r = e_y); label K or None, of the whole mixture.
        """
        x = x.to(torch.float64)
        t = as_batch(t, x.shape[0], x).to(torch.float64)
        log_joint, solved = self._components(x, t)
        resp = responsibilities(log_joint, class_labels, dim=1)[..., None]  # [B, K, 1]
        score = -(resp * solved).sum(1)
        cov_solved = torch.einsum("kde,bke->bkd", self.covs, solved)
        alpha = append_dims(self.path.alpha(t), 3)
        x0 = (resp * (self.means + alpha * cov_solved)).sum(1)
        return Prediction(x0=x0, eps=-append_dims(self.path.sigma(t), 2) * score)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw n data points and their component labels."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covs)[labels]
        return self.means[labels] + (chol @ noise.unsqueeze(-1)).squeeze(-1), labels

    def assign(self, x: Tensor) -> Tensor:
        """Most likely component of each data point ``[B]`` (for mode-weight checks)."""
        log_joint, _ = self._components(
            x.to(torch.float64), torch.zeros(x.shape[0], dtype=torch.float64)
        )
        return log_joint.argmax(1)
