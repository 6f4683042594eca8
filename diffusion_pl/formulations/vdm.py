"""VDM and the DDPM family: VP paths, ε / x₀ / v prediction, four loss weightings, the bound.

Every weighting here is ``w(t) ‖ε̂ − ε‖²`` on the denoiser's ε̂ (MATH.md, "Losses are one
family"; ‖ε̂ − ε‖² = SNR(t) ‖x̂_0 − x_0‖², so a weight on x̂_0's error divides by SNR):

    eps_mse   w = 1                          DDPM's L_simple (Ho et al., 2020, Eq. 14)
    snr_x0    w = 1                          SNR(t) ‖x̂_0 − x_0‖², the same loss written for x₀
    min_snr   w = min(SNR(t), γ) / SNR(t)    min-SNR-γ: min(SNR, γ) ‖x̂_0 − x_0‖² (Hang et al., 2023)
    elbo      the variational bound itself: prior KL + diffusion loss + reconstruction

The weighting does not depend on the parameterization: with ``X0Prediction`` or ``VPrediction``
the network's own regression target is only a reading of the same error (e.g. ``eps_mse`` with
x₀-prediction is the SNR-weighted x₀ loss; min-SNR with v-prediction is Hang et al.'s
min(SNR, γ)/(SNR + 1) on ‖v̂ − v‖²).

The bound (Kingma et al., 2021, Eq. 11–17) takes z_0 at ``path.t_min`` and z_1 at
``path.t_max``. In continuous time its diffusion loss is ½ ∫ γ'(t) ‖ε − ε̂‖² dt; with N
discrete steps it is (N/2) E_i[(SNR(s_i) − SNR(t_i)) ‖x_0 − x̂_0‖²], which is the same as
(N/2) E_i[expm1(λ_s − λ_t) ‖ε − ε̂‖²] (λ = log-SNR).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from diffusion_pl.formulations.base import DiffusionModule, mean_flat
from diffusion_pl.hparams import save_config
from diffusion_pl.learned_schedule import d_gamma
from diffusion_pl.parameterization import EpsilonPrediction, Parameterization
from diffusion_pl.paths import DDPMPath, NoisePath
from diffusion_pl.samplers import DenoiserFn, Sampler
from diffusion_pl.samplers.ancestral import DDPMSampler

__all__ = [
    "VDM",
    "VariationalBound",
    "Weighting",
    "diffusion_loss",
    "discretized_gaussian_log_prob",
    "draw_times",
    "elbo_weight",
    "prior_kl",
    "reconstruction_nll",
    "variational_bound",
]

Weighting = Literal["eps_mse", "snr_x0", "min_snr", "elbo"]
_WEIGHTINGS = ("eps_mse", "snr_x0", "min_snr", "elbo")


def draw_times(
    path: NoisePath,
    n: int,
    steps: int | None,
    *,
    first: int = 0,
    low_discrepancy: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Times ``[n]`` (float64) on [t_min, t_max]: uniform, or on a grid of ``steps`` steps.

    The grid is t_i = t_min + i (t_max − t_min) / steps for i = ``first`` … ``steps``
    (on ``DDPMPath(T)`` with steps = T − 1 these are DDPM's i/T). With ``low_discrepancy``
    one uniform u_0 is drawn and u_k = (u_0 + k/n) mod 1 (Kingma et al., 2021, App. I.1):
    each u_k is still uniform, but the batch covers [0, 1) evenly.
    """
    if low_discrepancy:
        u0 = torch.rand(1, generator=generator, device=device, dtype=torch.float64)
        u = torch.remainder(u0 + torch.arange(n, device=device, dtype=torch.float64) / n, 1.0)
    else:
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    span = path.t_max - path.t_min
    if steps is None:
        return path.t_min + span * u
    i = first + (u * (steps + 1 - first)).floor().clamp(max=steps - first)
    return path.t_min + span * i / steps


def elbo_weight(path: NoisePath, t: Tensor, steps: int | None) -> Tensor:
    """The bound's weight on ‖ε − ε̂‖² (summed over dimensions) at t ``[B]``, in nats.

    Continuous time: ½ (t_max − t_min) γ'(t), the integral ½ ∫ γ'(t) ‖ε − ε̂‖² dt read as an
    expectation over t ~ U(t_min, t_max) (Kingma et al., 2021, Eq. 17). ``steps`` = N:
    (N/2) (SNR(s)/SNR(t) − 1) with s = t − (t_max − t_min)/N (Eq. 13 in ε form).
    """
    span = path.t_max - path.t_min
    if steps is None:
        return 0.5 * span * d_gamma(path, t)
    s = t - span / steps
    return 0.5 * steps * torch.expm1(path.log_snr(s) - path.log_snr(t))


def prior_kl(path: NoisePath, x0: Tensor) -> Tensor:
    """KL(q(z_1 | x_0) ‖ N(0, σ_1² I)) in nats ``[B]``, z_1 at ``path.t_max``: ½ SNR(1) ‖x_0‖².

    The prior is the one samplers draw from (``NoisePath.prior_sample``); on VP paths
    σ_1² = 1 − α_1², and the KL to N(0, I) differs from this by O(α_1⁴) per dimension.
    """
    t1 = torch.full((x0.shape[0],), path.t_max, dtype=x0.dtype, device=x0.device)
    return 0.5 * path.log_snr(t1).exp() * x0.flatten(1).pow(2).sum(1)


def _log_normal_interval(a: Tensor, b: Tensor) -> Tensor:
    """log(Φ(b) − Φ(a)) for a < b, stable in both tails (a may be −∞, b may be +∞)."""
    flip = a > 0  # use Φ(b) − Φ(a) = Φ(−a) − Φ(−b) so both CDFs are small, not near 1
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    u = log_lo - log_hi  # <= 0
    log1mexp = torch.where(u > -math.log(2), torch.log(-torch.expm1(u)), torch.log1p(-u.exp()))
    return log_hi + log1mexp


def discretized_gaussian_log_prob(
    x: Tensor, mean: Tensor, scale: Tensor, num_levels: int
) -> Tensor:
    """Elementwise log P(x) of N(mean, scale²) discretized to ``num_levels`` levels on [−1, 1].

    Level k sits at x_k = 2k/(L − 1) − 1 and owns the bin x_k ± 1/(L − 1); the end bins reach
    to ∓∞, so the probabilities of the L levels sum to 1. Computed in float64.

    Reference: Ho et al. (2020), "Denoising Diffusion Probabilistic Models", Eq. 13.
    """
    x, mean, scale = x.double(), mean.double(), scale.double()
    half = 1.0 / (num_levels - 1)
    a = torch.where(x < -1 + half, -math.inf, (x - half - mean) / scale)
    b = torch.where(x > 1 - half, math.inf, (x + half - mean) / scale)
    return _log_normal_interval(a, b)


def reconstruction_nll(
    denoiser: DenoiserFn,
    path: NoisePath,
    x0: Tensor,
    eps: Tensor,
    num_levels: int | None,
) -> Tensor:
    """−log p(x_0 | z_0) in nats ``[B]``, z_0 = α_0 x_0 + σ_0 ε at ``path.t_min``.

    The decoder is N(x̂_0(z_0), (σ_0/α_0)²) per dimension, discretized to ``num_levels`` levels
    (a probability, Ho et al.'s L_0), or, for continuous data (``num_levels`` None), its
    density. VDM's decoder uses z_0/α_0 as the mean; x̂_0(z_0) is the same at high SNR and
    much better at DDPM's σ_0 = √β_1 = 0.01, which is wider than an 8-bit bin.
    """
    t0 = torch.full((x0.shape[0],), path.t_min, dtype=x0.dtype, device=x0.device)
    c = path.coefficients(t0, x0.ndim)
    mean = denoiser(c.alpha * x0 + c.sigma * eps, t0).x0
    scale = c.sigma / c.alpha
    if num_levels is None:
        z = (x0 - mean) / scale
        nll = 0.5 * z**2 + torch.log(scale) + 0.5 * math.log(2 * math.pi)
    else:
        nll = -discretized_gaussian_log_prob(x0, mean, scale, num_levels)
    return nll.flatten(1).sum(1).to(x0.dtype)


def diffusion_loss(
    denoiser: DenoiserFn,
    path: NoisePath,
    x0: Tensor,
    t: Tensor,
    eps: Tensor,
    steps: int | None,
) -> Tensor:
    """One-sample estimate of the bound's diffusion loss in nats ``[B]``: w(t) ‖ε − ε̂(z_t)‖².

    ``t`` must come from :func:`draw_times` with ``first=1`` for discrete ``steps``.
    """
    z_t = path.marginal(x0, t, eps)
    eps_hat = denoiser(z_t, t).eps
    return elbo_weight(path, t, steps) * (eps_hat - eps).flatten(1).pow(2).sum(1)


@dataclass(frozen=True)
class VariationalBound:
    """The three terms of −log p(x_0) ≤ prior + diffusion + reconstruction, nats ``[B]``."""

    prior: Tensor
    diffusion: Tensor
    reconstruction: Tensor

    @property
    def nats(self) -> Tensor:
        """The whole bound in nats ``[B]``."""
        return self.prior + self.diffusion + self.reconstruction

    def bits_per_dim(self, dim: int) -> Tensor:
        """The bound in bits per dimension ``[B]``: nats / (D ln 2).

        With a discretized decoder this bounds the discrete NLL of the L-level data: its bits
        are those of the levels themselves (at most log₂ L), so the rescaling of levels to
        [−1, 1] needs no correction. With the continuous decoder it bounds −log p(x) of the
        density in the data's own coordinates (it may be negative).
        """
        return self.nats / (dim * math.log(2.0))


def variational_bound(
    denoiser: DenoiserFn,
    path: NoisePath,
    x0: Tensor,
    *,
    steps: int | None,
    num_levels: int | None,
    low_discrepancy: bool = True,
    generator: torch.Generator | None = None,
) -> VariationalBound:
    """Unbiased one-sample estimate of VDM's bound for each example of ``x0`` ``[B, ...]``.

    One t and two independent noises per example (one for z_t, one for z_0), all drawn from
    ``generator``; the prior term is exact.

    Reference: Kingma et al. (2021), "Variational Diffusion Models", Eq. 11–17.
    """
    t = draw_times(
        path,
        x0.shape[0],
        steps,
        first=1,
        low_discrepancy=low_discrepancy,
        generator=generator,
        device=x0.device,
    ).to(x0.dtype)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    eps0 = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return VariationalBound(
        prior=prior_kl(path, x0),
        diffusion=diffusion_loss(denoiser, path, x0, t, eps, steps),
        reconstruction=reconstruction_nll(denoiser, path, x0, eps0, num_levels),
    )


class VDM(DiffusionModule):
    """Variational diffusion models and DDPM: a VP path, a weighted ε regression, the bound.

    Training draws t uniformly on [t_min, t_max] (continuous time) or on the discrete grid
    (DDPM: t ∈ {1, …, T}/T), x_t = α_t x_0 + σ_t ε, and minimizes ``weighting``'s loss (module
    docstring). ``elbo`` trains on the whole bound in bits per dimension; it is the only
    weighting that is a bound, so it is required to learn the schedule (``LearnedVPPath``),
    whose parameters then get the plain gradient of the bound. In continuous time the expected
    diffusion loss depends on γ only through its end points (Kingma et al., 2021, Eq. 20);
    the paper's extra variance-minimizing gradient for γ's shape is not implemented.
    Validation logs ``val/loss`` (the training objective) and ``val/bpd``, the bound in bits
    per dimension on the validation data (one t and one ε per example).

    Args:
        net: the network; it sees t ∈ [0, 1] as its noise label.
        data_shape: one example's shape (linked from the data module).
        path: the noise path: ``DDPMPath`` (discrete, T steps, linear or cosine β),
            ``VPLinearPath``, ``VPCosinePath`` or the learned ``LearnedVPPath``.
        parameterization: what the net predicts: ε (``EpsilonPrediction``), x₀ or v.
        weighting: ``eps_mse``, ``snr_x0``, ``min_snr`` or ``elbo`` (module docstring).
        min_snr_gamma: γ of min-SNR-γ (5 in the paper).
        discrete_steps: number N of discrete steps of the bound and of training times; None
            takes a discrete path's own grid (``DDPMPath(T)``: N = T − 1 steps from t_min = 1/T
            to 1, z_0 at t = 1/T) and continuous time on other paths; 0 forces continuous time.
        low_discrepancy: draw the batch's times as (u_0 + k/B) mod 1 (VDM, App. I.1).
        num_levels: quantization levels of the data for the discretized decoder of the bound
            (256 for 8-bit images, 17 for digits; linked from the data module); None for
            continuous data, whose bound uses the Gaussian decoder's density.
        sampler: default sampler (DDPM ancestral; ``DDIMSampler`` for fewer steps).
        optimizer: optimizer factory.
        lr_scheduler: optional LR scheduler factory, stepped per optimizer step.
        p_uncond: probability of training with the null label instead of the class label
            (classifier-free guidance; needs a class-conditional net).
        guidance_scale: default classifier-free guidance scale w of ``sample``.

    Reference: Kingma et al. (2021), "Variational Diffusion Models"; Ho et al. (2020),
    "Denoising Diffusion Probabilistic Models"; Hang et al. (2023), "Efficient Diffusion
    Training via Min-SNR Weighting Strategy".
    """

    def __init__(
        self,
        net: nn.Module,
        data_shape: tuple[int, ...],
        path: NoisePath = lazy_instance(DDPMPath),
        parameterization: Parameterization = lazy_instance(EpsilonPrediction),
        weighting: Weighting = "eps_mse",
        min_snr_gamma: float = 5.0,
        discrete_steps: int | None = None,
        low_discrepancy: bool = True,
        num_levels: int | None = None,
        sampler: Sampler = lazy_instance(DDPMSampler, steps=999),
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        p_uncond: float = 0.0,
        guidance_scale: float = 1.0,
    ) -> None:
        if weighting not in _WEIGHTINGS:
            raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
        if min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be > 0, got {min_snr_gamma}")
        if discrete_steps is not None and discrete_steps < 0:
            raise ValueError(f"discrete_steps must be >= 0 (0: continuous), got {discrete_steps}")
        if num_levels is not None and num_levels < 2:
            raise ValueError(f"num_levels must be >= 2 or None (continuous), got {num_levels}")
        learned = isinstance(path, nn.Module) and any(p.requires_grad for p in path.parameters())
        if learned and weighting != "elbo":
            raise ValueError(
                f"a learned path ({type(path).__name__}) is trained by the variational bound: "
                f"use weighting='elbo', not {weighting!r}"
            )
        super().__init__(
            net,
            data_shape,
            path,
            parameterization,
            sampler,
            optimizer,
            lr_scheduler,
            p_uncond=p_uncond,
            guidance_scale=guidance_scale,
        )
        self.weighting, self.min_snr_gamma = weighting, min_snr_gamma
        self.low_discrepancy, self.num_levels = low_discrepancy, num_levels
        if discrete_steps is None:
            own = getattr(path, "num_steps", None)  # a discrete path's own grid
            discrete_steps = None if own is None else own - 1
        self.discrete_steps = discrete_steps or None
        save_config(self)

    @property
    def dim(self) -> int:
        """D, the number of entries of one example."""
        return math.prod(self.data_shape)

    def sample_time(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Training times ``[n]``: the whole grid for regressions, steps 1 … N for the bound."""
        first = 1 if self.weighting == "elbo" else 0
        t = draw_times(
            self.path,
            n,
            self.discrete_steps,
            first=first,
            low_discrepancy=self.low_discrepancy,
            generator=generator,
            device=self.device,
        )
        return t.float()

    def loss_weight(self, t: Tensor) -> Tensor:
        """Weight ``[B]`` on the per-dimension mean of ‖ε̂ − ε‖² (for ``elbo``: in nats)."""
        if self.weighting in ("eps_mse", "snr_x0"):  # SNR ‖x̂_0 − x_0‖² = ‖ε̂ − ε‖²
            return torch.ones_like(t)
        if self.weighting == "min_snr":
            snr = self.path.log_snr(t).exp()
            return snr.clamp(max=self.min_snr_gamma) / snr
        return elbo_weight(self.path, t, self.discrete_steps)

    def bound(
        self, x0: Tensor, y: Tensor | None = None, generator: torch.Generator | None = None
    ) -> VariationalBound:
        """The variational bound per example, in nats (see :func:`variational_bound`)."""
        return variational_bound(
            self.denoiser(self.class_labels(y)),
            self.path,
            x0,
            steps=self.discrete_steps,
            num_levels=self.num_levels,
            low_discrepancy=self.low_discrepancy,
            generator=generator,
        )

    def loss(
        self, x0: Tensor, y: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Per-example loss ``[B]``: w(t) · mean ‖ε̂ − ε‖², or the bound in bits per dim."""
        y = self.drop_labels(y, generator)
        if self.weighting == "elbo":
            return self.bound(x0, y, generator).bits_per_dim(self.dim)
        t = self.sample_time(x0.shape[0], generator)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device)
        eps_hat = self.denoiser(self.class_labels(y))(self.path.marginal(x0, t, eps), t).eps
        return self.loss_weight(t) * mean_flat((eps_hat - eps) ** 2)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x0, y = batch
        # A fixed generator per batch makes both numbers comparable from one epoch to the next.
        generator = torch.Generator(device=x0.device).manual_seed(batch_idx)
        bpd = self.bound(x0, y, generator).bits_per_dim(self.dim).mean()
        loss = bpd if self.weighting == "elbo" else self.loss(x0, y, generator).mean()
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/bpd", bpd, prog_bar=True, sync_dist=True)
        return loss
