"""Exact answers for Gaussian-mixture data on any noise path (docs/math.md, "Exact answers").

If x_0 ~ Σ_k π_k N(μ_k, Σ_k) then x_t ~ Σ_k π_k N(α_t μ_k, C_k) with C_k = α_t² Σ_k + σ_t² I,
so the score, Tweedie's x̂_0, ε̂ and log p_t(x) are closed-form. Fed to a sampler in place of
a network, the oracle separates sampler bugs from training bugs. The mixture itself (and its
samples) is a :class:`~diffusion_pl.mixture.GaussianMixtureSpec`; the oracle adds the path.

Read the component index as a class label y and the mixture is also the exact class-conditional
model: p_t(x | y = k) = N(α_t μ_k, C_k), and the exact noisy classifier p_t(y = k | x) is the
posterior responsibility r_k(x) = π_k N(x; α_t μ_k, C_k) / p_t(x). Label K (the number of
components) stands for "no label", as the null row of the class-conditional nets.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_pl.mixture import GaussianMixtureSpec
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
        mixture: the data distribution (means, covariances, weights; it also samples).
    """

    def __init__(self, path: NoisePath, mixture: GaussianMixtureSpec) -> None:
        self.path = path
        self.mixture = mixture

    def _components(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """log π_k N(x; α μ_k, C_k) ``[B, K]`` and C_k⁻¹(x − α μ_k) ``[B, K, D]`` at time t."""
        t = as_batch(t, x.shape[0], x).to(torch.float64)
        return self.mixture.components(x, self.path.alpha(t), self.path.sigma(t))

    def log_prob(self, x: Tensor, t: Tensor | float) -> Tensor:
        """log p_t(x) ``[B]`` for x ``[B, D]``."""
        log_joint, _ = self._components(x.to(torch.float64), t)
        return torch.logsumexp(log_joint, dim=1)

    def class_logits(self, x: Tensor, t: Tensor | float) -> Tensor:
        """log π_k N(x; α_t μ_k, C_k) ``[B, K]``: their softmax is the exact p_t(y = k | x)."""
        return self._components(x.to(torch.float64), t)[0]

    def score(self, x: Tensor, t: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        """∇ log p_t(x) = Σ_k r_k(x) · (−C_k⁻¹ (x − α_t μ_k)), ``[B, D]``; given labels y < K,
        ∇ log p_t(x | y) = −C_y⁻¹ (x − α_t μ_y)."""
        log_joint, solved = self._components(x.to(torch.float64), t)
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
        cov_solved = torch.einsum("kde,bke->bkd", self.mixture.covs, solved)
        alpha = append_dims(self.path.alpha(t), 3)
        x0 = (resp * (self.mixture.means + alpha * cov_solved)).sum(1)
        return Prediction(x0=x0, eps=-append_dims(self.path.sigma(t), 2) * score)
