"""VDM's view of a noise path through γ(t) = −log-SNR, and the learned VP schedule.

Kingma et al. (2021) write every variance-preserving path through one monotone increasing
function γ(t) = −λ_t: α_t² = sigmoid(−γ(t)) and σ_t² = sigmoid(γ(t)). :class:`LearnedVPPath`
learns γ with the monotone network of their App. H; :func:`gamma` and :func:`d_gamma` read γ
and γ'(t) off any fixed path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_pl.paths import NoisePath, PathCoefficients
from diffusion_pl.tensors import append_dims

__all__ = ["LearnedVPPath", "d_gamma", "gamma"]


def gamma(path: NoisePath, t: Tensor) -> Tensor:
    """γ(t) = −λ_t = log(σ_t² / α_t²) of any path, ``[B]``."""
    return -path.log_snr(t)


def d_gamma(path: NoisePath, t: Tensor) -> Tensor:
    """γ'(t) = 2 (σ'_t/σ_t − α'_t/α_t) of any path, ``[B]`` (= −dλ_t/dt)."""
    c = path.coefficients(t, t.ndim)
    return 2.0 * (c.d_sigma / c.sigma - c.d_alpha / c.alpha)


class _PositiveLinear(nn.Module):
    """``y = softplus(W) x (+ b)``: a linear layer with positive weights, monotone in x."""

    def __init__(
        self, in_features: int, out_features: int, weight_std: float, bias: bool = True
    ) -> None:
        super().__init__()
        self.raw_weight = nn.Parameter(torch.randn(out_features, in_features) * weight_std)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def weight(self, dtype: torch.dtype) -> Tensor:
        """The positive weight matrix ``[out, in]`` in ``dtype``."""
        return F.softplus(self.raw_weight).to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        y = x @ self.weight(x.dtype).T
        return y if self.bias is None else y + self.bias.to(x.dtype)


class LearnedVPPath(nn.Module, NoisePath):
    """VP path with a learned, monotone γ(t): α_t² = sigmoid(−γ(t)), σ_t² = sigmoid(γ(t)).

    The monotone network γ̃(t) = l₁(t) + l₃(φ(l₂(l₁(t)))) has positive weights (softplus) and
    φ = sigmoid, so γ̃ increases in t. It is rescaled to the learned end points:

        γ(t) = γ₀ + (γ₁ − γ₀) · (γ̃(t) − γ̃(0)) / (γ̃(1) − γ̃(0)),

    so γ(0) = γ₀ and γ(1) = γ₁ exactly (``gamma_min`` and ``gamma_max`` are their initial
    values). γ'(t) is analytic through the network and differentiable in every parameter.
    The path holds parameters, so a formulation that owns it trains it with the network.
    The end points are free parameters: γ stays increasing as long as γ₁ > γ₀.

    Args:
        gamma_min: initial γ₀ = γ(0) (−13.3: σ_0 ≈ 1.3e-3).
        gamma_max: initial γ₁ = γ(1) (5.0: α_1 ≈ 0.082).
        hidden: width of l₂ (1024 in the paper).
        t_min: the last time samplers visit (γ is finite at 0, so 0 by default).

    Reference: Kingma et al. (2021), "Variational Diffusion Models", Sec. 3 and App. H.
    """

    def __init__(
        self,
        gamma_min: float = -13.3,
        gamma_max: float = 5.0,
        hidden: int = 1024,
        t_min: float = 0.0,
    ) -> None:
        super().__init__()
        if not gamma_min < gamma_max:
            raise ValueError(f"need gamma_min < gamma_max, got {gamma_min}, {gamma_max}")
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        self.gamma_0 = nn.Parameter(torch.tensor(float(gamma_min)))
        self.gamma_1 = nn.Parameter(torch.tensor(float(gamma_max)))
        self.l1 = _PositiveLinear(1, 1, weight_std=0.0)
        self.l2 = _PositiveLinear(1, hidden, weight_std=1.0)
        self.l3 = _PositiveLinear(hidden, 1, weight_std=1.0, bias=False)  # cancels in γ
        with torch.no_grad():  # start close to the linear γ of VDM's fixed schedule
            self.l2.bias.normal_()
            self.l3.raw_weight.sub_(7.0)
        self.t_min, self.t_max = t_min, 1.0

    def _net(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """γ̃(t) and dγ̃/dt for t ``[B]``, in t's dtype."""
        w1 = self.l1.weight(t.dtype)[0, 0]
        h = self.l1(t[:, None])  # [B, 1]
        s = torch.sigmoid(self.l2(h))  # [B, hidden]
        w2, w3 = self.l2.weight(t.dtype)[:, 0], self.l3.weight(t.dtype)[0]
        value = h[:, 0] + self.l3(s)[:, 0]
        slope = w1 + w1 * (s * (1 - s)) @ (w2 * w3)
        return value, slope

    def gamma_and_slope(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """γ(t) and γ'(t), each shaped as t (``[B]`` or 0-dim), in t's dtype even under autocast.

        Mixed precision would run the network's matrix products in bf16/fp16 and blur
        log-SNR where the loss is most sensitive (schedules stay float32/64).
        """
        with torch.autocast(t.device.type, enabled=False):
            return self._gamma_and_slope(t)

    def _gamma_and_slope(self, t: Tensor) -> tuple[Tensor, Tensor]:
        shape = t.shape
        flat = t.reshape(-1)
        ends, _ = self._net(torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device))
        value, slope = self._net(flat)
        g0, g1 = self.gamma_0.to(t.dtype), self.gamma_1.to(t.dtype)
        scale = (g1 - g0) / (ends[1] - ends[0])
        return (g0 + scale * (value - ends[0])).reshape(shape), (scale * slope).reshape(shape)

    def gamma(self, t: Tensor) -> Tensor:
        """γ(t) = −log-SNR, shaped as t."""
        return self.gamma_and_slope(t)[0]

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sigmoid(-self.gamma(t)).sqrt()

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sigmoid(self.gamma(t)).sqrt()

    def d_alpha(self, t: Tensor) -> Tensor:
        """dα/dt = −½ γ' σ² α."""
        g, dg = self.gamma_and_slope(t)
        return -0.5 * dg * torch.sigmoid(g) * torch.sigmoid(-g).sqrt()

    def d_sigma(self, t: Tensor) -> Tensor:
        """dσ/dt = ½ γ' α² σ."""
        g, dg = self.gamma_and_slope(t)
        return 0.5 * dg * torch.sigmoid(-g) * torch.sigmoid(g).sqrt()

    def log_snr(self, t: Tensor) -> Tensor:
        return -self.gamma(t)

    def as_time(self, t: float) -> Tensor:
        """``t`` on the device and in the dtype of the parameters (they move with the model)."""
        return self.gamma_0.new_tensor(t)

    @torch.no_grad()
    def prior_std(self) -> float:
        """σ(1) = √sigmoid(γ₁), the standard deviation of the prior samplers start from."""
        return super().prior_std()

    def coefficients(self, t: Tensor, ndim: int) -> PathCoefficients:
        """As :meth:`NoisePath.coefficients`, with one evaluation of the network."""
        g, dg = self.gamma_and_slope(t)
        alpha2, sigma2 = torch.sigmoid(-g), torch.sigmoid(g)
        alpha, sigma = alpha2.sqrt(), sigma2.sqrt()
        return PathCoefficients(
            alpha=append_dims(alpha, ndim),
            sigma=append_dims(sigma, ndim),
            d_alpha=append_dims(-0.5 * dg * sigma2 * alpha, ndim),
            d_sigma=append_dims(0.5 * dg * alpha2 * sigma, ndim),
            t=append_dims(t, ndim),
        )
