"""Gaussian mixtures: data whose noisy marginals, scores and denoisers are known exactly.

One class holds a mixture — its means, covariances and weights, their validation, sampling and
the per-component Gaussian terms of α x_0 + σ ε — for both the data sources
(:mod:`diffusion_pl.data.toy2d`) and the exact denoiser (:mod:`diffusion_pl.oracle`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from diffusion_pl.tensors import append_dims

__all__ = ["GaussianMixtureSpec"]


class GaussianMixtureSpec:
    """Gaussian mixture p(x) = Σ_k π_k N(x; μ_k, Σ_k), in float64.

    Args:
        means: μ, ``[K, D]``.
        covs: Σ, ``[K, D, D]``, each symmetric positive definite.
        weights: π, ``[K]``, positive and summing to 1 within 1e-6.

    Reference: Bishop (2006), "Pattern Recognition and Machine Learning", Sec. 9.2.
    """

    def __init__(self, means: Tensor, covs: Tensor, weights: Tensor) -> None:
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covs = torch.as_tensor(covs, dtype=torch.float64)
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if self.means.ndim != 2 or 0 in self.means.shape:
            raise ValueError(f"means must be a non-empty [K, D] table, got {self.means.tolist()}")
        k, d = self.means.shape
        if self.covs.shape != (k, d, d):
            raise ValueError(
                f"covs must be [K, D, D] = [{k}, {d}, {d}] (one matrix per mean), "
                f"got shape {list(self.covs.shape)}"
            )
        if self.weights.shape != (k,):
            raise ValueError(f"weights needs one entry per mean ({k}), got {self.weights.tolist()}")
        if (self.weights <= 0).any():
            raise ValueError(f"weights must be positive, got {self.weights.tolist()}")
        total = self.weights.sum().item()
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"weights must sum to 1 (within 1e-6), got {self.weights.tolist()} "
                f"summing to {total}"
            )
        symmetric = torch.equal(self.covs, self.covs.mT)
        if not symmetric or torch.linalg.cholesky_ex(self.covs).info.any():
            raise ValueError(f"covs must be symmetric positive definite, got {self.covs.tolist()}")

    @classmethod
    def isotropic(
        cls,
        means: Sequence[Sequence[float]],
        std: float | Sequence[float],
        weights: Sequence[float] | None = None,
    ) -> GaussianMixtureSpec:
        """The mixture Σ_k π_k N(μ_k, σ_k² I), from plain lists as written in YAML.

        Args:
            means: K points of equal dimension D.
            std: one σ shared by all components, or one per component; each > 0.
            weights: K mixture weights; None gives equal weights 1/K.
        """
        lengths = [len(m) for m in means]
        if len(set(lengths)) > 1:
            raise ValueError(f"all means must have the same dimension, got lengths {lengths}")
        k, d = len(means), (lengths[0] if lengths else 0)
        stds = torch.as_tensor(std, dtype=torch.float64)
        stds = stds.repeat(k) if stds.ndim == 0 else stds
        if stds.shape != (k,):
            raise ValueError(f"std needs one entry per mean ({k}), got {stds.tolist()}")
        if (stds <= 0).any():
            raise ValueError(f"std must be > 0, got {stds.tolist()}")
        return cls(
            means=torch.as_tensor(means, dtype=torch.float64).reshape(k, d),
            covs=stds.view(k, 1, 1) ** 2 * torch.eye(d, dtype=torch.float64),
            weights=torch.ones(k, dtype=torch.float64) / k
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float64),
        )

    @property
    def dim(self) -> int:
        """Dimension D of the data space."""
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        """Number of components K."""
        return self.means.shape[0]

    @property
    def stds(self) -> Tensor:
        """σ ``[K]`` of an isotropic mixture (Σ_k = σ_k² I); a ValueError for any other."""
        variances = self.covs.diagonal(dim1=-2, dim2=-1)
        isotropic = torch.equal(self.covs, torch.diag_embed(variances)) and torch.equal(
            variances, variances[:, :1].expand_as(variances)
        )
        if not isotropic:
            raise ValueError(
                f"stds exist only for isotropic components Σ_k = σ_k² I, got covs "
                f"{self.covs.tolist()}: use covs"
            )
        return variances[:, 0].sqrt()

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``n`` points and the component each came from: x = μ_k + L_k ε, Σ_k = L_k L_kᵀ.

        Args:
            n: number of points.
            generator: source of randomness (components first, then ε).

        Returns:
            ``x``: ``[n, D]`` float64 and ``k``: ``[n]`` int64 component indices.
        """
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        scale_tril = torch.linalg.cholesky(self.covs)
        x = torch.empty_like(eps)
        for j in range(self.num_components):  # K small: no [n, D, D] gather of the factors
            rows = k == j
            x[rows] = self.means[j] + eps[rows] @ scale_tril[j].T
        return x, k

    def components(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Per-component terms of the law of α x_0 + σ ε, a mixture of N(α μ_k, C_k).

        C_k = α² Σ_k + σ² I (the mixture seen on a noise path at α_t, σ_t).

        Args:
            x: ``[B, D]`` points, float64.
            alpha: ``[B]`` α.
            sigma: ``[B]`` σ.

        Returns:
            log π_k N(x; α μ_k, C_k) ``[B, K]`` and C_k⁻¹ (x − α μ_k) ``[B, K, D]``.
        """
        eye = torch.eye(self.dim, dtype=torch.float64, device=x.device)
        cov = append_dims(alpha**2, 4) * self.covs + append_dims(sigma**2, 4) * eye
        chol = torch.linalg.cholesky(cov)  # [B, K, D, D]
        diff = x[:, None, :] - append_dims(alpha, 3) * self.means  # [B, K, D]
        solved = torch.cholesky_solve(diff.unsqueeze(-1), chol).squeeze(-1)
        half_logdet = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        log_n = (
            -0.5 * (diff * solved).sum(-1) - half_logdet - 0.5 * self.dim * math.log(2 * math.pi)
        )
        return torch.log(self.weights) + log_n, solved

    def assign(self, x: Tensor) -> Tensor:
        """Most likely component k of each point ``[B]``: argmax_k π_k N(x; μ_k, Σ_k)."""
        x = x.to(torch.float64)
        ones = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        return self.components(x, ones, torch.zeros_like(ones))[0].argmax(1)
