"""The first stage's loss (Rombach et al. 2022, Sec. 3 and App. G; CompVis/latent-diffusion's
``LPIPSWithDiscriminator``), as typed settings.

For an image x, its reconstruction x̂ = D(z), z ~ q(z | x) = N(μ(x), σ²(x)):

    L = L_rec(x, x̂) + w_p · ‖φ(x̂) − φ(x)‖² + β · KL(q(z | x) ‖ N(0, I)) + λ · w_adv · L_G,

with L_rec the mean L1 or squared L2 pixel error (:class:`L1`, :class:`L2`), φ a frozen
feature net (the perceptual term; LDM uses LPIPS, whose weights need the network, so the
shipped digits classifier's features stand in for it here), KL = ½ Σ (μ² + σ² − 1 − log σ²)
per example (summed over the code, averaged over the batch, as LDM), β small (LDM: 1e-6),
and the adversarial term on from a configured step: the generator's hinge loss
L_G = −E[D(x̂)] with LDM's adaptive weight (W the weight of the decoder's last layer)

    λ = clamp(‖∇_W (L_rec + w_p L_p)‖ / (‖∇_W L_G‖ + 10⁻⁴), 0, λ_max),

and the patch discriminator's hinge loss ½ (E[relu(1 − D(x))] + E[relu(1 + D(x̂))]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_pl.autoencoders.discriminator import PatchDiscriminator

__all__ = [
    "L1",
    "L2",
    "Adversarial",
    "Perceptual",
    "Reconstruction",
    "adaptive_weight",
    "hinge_discriminator_loss",
    "kl_divergence",
]


class Reconstruction:
    """A pixel reconstruction error L_rec(x, x̂), averaged over pixels and the batch."""

    def __call__(self, x: Tensor, x_hat: Tensor) -> Tensor:
        raise NotImplementedError


class L1(Reconstruction):
    """Mean |x̂ − x| (LDM's choice, sharper than L2)."""

    def __call__(self, x: Tensor, x_hat: Tensor) -> Tensor:
        return (x_hat - x).abs().mean()


class L2(Reconstruction):
    """Mean (x̂ − x)²."""

    def __call__(self, x: Tensor, x_hat: Tensor) -> Tensor:
        return (x_hat - x).pow(2).mean()


class Perceptual(nn.Module):
    """The perceptual term w_p · ‖φ(x̂) − φ(x)‖² (mean over features) through a frozen φ.

    The stand-in for LPIPS (Zhang et al. 2018), whose weights need the network: any frozen
    feature net of the project with the FID extractors' contract (images in [−1, 1] →
    ``[B, num_features]``), e.g. ``diffusion_pl.metrics.DigitsFeatures`` for the digits.

    Args:
        feature: φ, frozen here (its parameters get no gradient).
        weight: w_p.
    """

    def __init__(self, feature: nn.Module, weight: float = 1.0) -> None:
        super().__init__()
        if weight <= 0:
            raise ValueError(f"the perceptual weight must be > 0 (or no perceptual), got {weight}")
        self.feature = feature.requires_grad_(False).eval()
        self.weight = weight

    def train(self, mode: bool = True) -> Perceptual:
        """Stay in eval mode: φ is frozen."""
        return super().train(False)

    def forward(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """‖φ(x̂) − φ(x)‖² averaged over features and the batch (unweighted)."""
        return (self.feature(x_hat) - self.feature(x).detach()).pow(2).mean()


class Adversarial(nn.Module):
    """The patch discriminator's settings: its net, when it starts, and the generator's weight.

    Args:
        discriminator: the patch discriminator (default: :class:`PatchDiscriminator`).
        start_step: the optimizer step from which both hinge losses are on (LDM: 50,001).
        weight: w_adv, multiplying the adaptive weight λ (LDM: 0.5).
        max_weight: λ_max, the clamp of λ (LDM: 10⁴).
        lr: the discriminator's learning rate; None: the autoencoder's.
    """

    def __init__(
        self,
        discriminator: nn.Module | None = None,
        start_step: int = 0,
        weight: float = 0.5,
        max_weight: float = 1e4,
        lr: float | None = None,
    ) -> None:
        super().__init__()
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        if weight <= 0 or max_weight <= 0:
            raise ValueError(
                f"weight ({weight}) and max_weight ({max_weight}) must be > 0; to train without "
                "a discriminator set adversarial: null"
            )
        if lr is not None and lr <= 0:
            raise ValueError(f"the discriminator's lr must be > 0 or null, got {lr}")
        self.discriminator = discriminator if discriminator is not None else PatchDiscriminator()
        self.start_step, self.weight, self.max_weight, self.lr = start_step, weight, max_weight, lr

    def on(self, step: int) -> bool:
        """Whether the adversarial terms are on at optimizer step ``step``."""
        return step >= self.start_step

    def generator_loss(self, x_hat: Tensor) -> Tensor:
        """L_G = −E[D(x̂)], through a copy of D's weights that gets no gradient."""
        frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        logits = torch.func.functional_call(self.discriminator, frozen, (x_hat,))
        return -logits.mean()

    def discriminator_loss(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """D's hinge loss on real x and detached reconstructions x̂."""
        return hinge_discriminator_loss(
            self.discriminator(x.detach()), self.discriminator(x_hat.detach())
        )


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ (μ² + σ² − 1 − log σ²), summed per example, batch-averaged."""
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1).mean()


def hinge_discriminator_loss(real: Tensor, fake: Tensor) -> Tensor:
    """½ (E[relu(1 − D(x))] + E[relu(1 + D(x̂))]) (Lim & Ye 2017; LDM's ``hinge_d_loss``)."""
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def adaptive_weight(
    rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float
) -> Tensor:
    """λ = clamp(‖∇_W L_rec‖ / (‖∇_W L_G‖ + 10⁻⁴), 0, λ_max), detached (LDM, Esser et al. 2021).

    Args:
        rec_loss: the reconstruction loss (with the perceptual term).
        g_loss: the generator's adversarial loss.
        last_layer: W, the weight of the decoder's last layer.
        max_weight: λ_max.
    """
    (rec_grad,) = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    (g_grad,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    weight = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()
