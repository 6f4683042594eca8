"""MeanFlow's loss: u_θ(z, r, t) regressed on the MeanFlow identity's target, adaptively weighted.

On the linear path z_t = (1 − t) x + t ε the average velocity over [r, t] satisfies
u(z_t, r, t) = v(z_t, t) − (t − r) d/dt u(z_t, r, t), d/dt u = v · ∂_z u + ∂_t u; training
regresses u_θ on the right-hand side with the conditional v = ε − x and d/dt u_θ from one
forward-mode Jacobian-vector product under a stop-gradient.

Reference: Geng, Deng, Bai, Kolter & He (2025), "Mean Flows for One-step Generative Modeling",
Sec. 4.1 (identity, loss, Algorithm 1), Sec. 4.3 (adaptive loss weighting, (r, t) sampling).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from diffusion_pl.objectives.base import Batch, Model, Objective
from diffusion_pl.parameterization import AverageVelocityPrediction
from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import Generators, rand
from diffusion_pl.tensors import append_dims
from diffusion_pl.time_sampling import TimeSampling

__all__ = ["MeanFlowLoss", "meanflow_target"]

AverageVelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``u(z [B, ...], r [B], t [B]) -> [B, ...]``, the average velocity over [r, t]."""


def meanflow_target(
    u: AverageVelocityFn, z: Tensor, r: Tensor, t: Tensor, v: Tensor
) -> tuple[Tensor, Tensor]:
    """u(z, r, t) and its MeanFlow target sg[v − (t − r)(v · ∂_z u + ∂_t u)], in one jvp.

    ``torch.func.jvp`` of u along the tangent (v, 0, 1) in (z, r, t) gives u itself (with its
    graph, for the loss's gradient) and the total derivative d/dt u = v · ∂_z u + ∂_t u at once.
    Fused attention kernels have no forward-mode derivative, so any
    ``scaled_dot_product_attention`` inside u runs on the math kernel here (and only here).

    Args:
        u: the average-velocity function (a net, or an exact oracle).
        z: points z_t ``[B, ...]``.
        r: start times ``[B]``, r ≤ t.
        t: end times ``[B]``.
        v: the velocity dz/dt at z_t ``[B, ...]`` (the conditional ε − x when training).

    Returns:
        u(z, r, t) and the detached target, both ``[B, ...]``.

    Reference: Geng et al. (2025), Sec. 4.1 (the MeanFlow identity and its target), Algorithm 1.
    """
    with sdpa_kernel(SDPBackend.MATH):
        out, dudt = torch.func.jvp(u, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    return out, (v - append_dims(t - r, z.ndim) * dudt).detach()


class MeanFlowLoss(Objective):
    """Per example sg(1 / (‖Δ‖² + c)^p) ‖Δ‖², Δ = u_θ(z_t, r, t) − u_tgt, on the linear path.

    Each example draws two times from ``time_sampling``, t the larger and r the smaller; a
    fraction ``1 − interval_ratio`` of them then gets r = t (plain flow matching). p = 0 is the
    squared L2 loss, p = ½ behaves as the pseudo-Huber loss, p = 1 as a robust L2. Draws: label
    dropout, the two times, which rows keep r < t, ε, in that order.

    Args:
        time_sampling: the distribution of each of the two times.
        interval_ratio: the fraction of examples with r < t, in [0, 1].
        adaptive_p: p ≥ 0, the power of the adaptive weight.
        adaptive_c: c > 0, its offset.

    Reference: Geng et al. (2025), Sec. 4.1 (Eq. 9–10, Algorithm 1) and Sec. 4.3.
    """

    def __init__(
        self,
        time_sampling: TimeSampling,
        interval_ratio: float = 0.25,
        adaptive_p: float = 1.0,
        adaptive_c: float = 1e-3,
    ) -> None:
        if not 0 <= interval_ratio <= 1:
            raise ValueError(
                f"interval_ratio is the fraction of examples with r < t, in [0, 1]; got "
                f"{interval_ratio} (the paper: 0.25 on ImageNet, 0.75 on CIFAR-10)"
            )
        if not adaptive_p >= 0:
            raise ValueError(f"adaptive_p must be >= 0 (0: plain squared L2), got {adaptive_p}")
        if not adaptive_c > 0:
            raise ValueError(f"adaptive_c must be > 0 (the paper: 1e-3), got {adaptive_c}")
        self.time_sampling, self.interval_ratio = time_sampling, interval_ratio
        self.adaptive_p, self.adaptive_c = adaptive_p, adaptive_c

    def interval_times(
        self,
        path: NoisePath,
        n: int,
        generator: Generators,
        device: torch.device | str | None,
        dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor]:
        """``(r, t)``, each ``[n]`` on ``path``: two draws of ``time_sampling``, sorted, and
        r = t in a fraction ``1 − interval_ratio`` of the rows (Geng et al., 2025, Sec. 4.3)."""
        first, second = (
            self.time_sampling(n, path, generator=generator, device=device, dtype=dtype)
            for _ in range(2)
        )
        t, r = torch.maximum(first, second), torch.minimum(first, second)
        apart = rand((n,), generator, device=device, dtype=dtype)
        return torch.where(apart < self.interval_ratio, r, t), t

    def loss(self, model: Model, batch: Batch) -> Tensor:
        x0 = batch.x0
        d = self.draw(batch, partial(self.interval_times, model.path))
        r, t = d.times
        c = model.path.coefficients(t, x0.ndim)
        z = c.alpha * x0 + c.sigma * d.eps
        velocity = model.parameterization.target(x0, d.eps, c)

        def average_velocity(z: Tensor, r: Tensor, t: Tensor) -> Tensor:
            noise_labels = AverageVelocityPrediction.interval_labels(r, t)
            return model.net(z, noise_labels, batch.labels).to(d.dtype)

        out, target = meanflow_target(average_velocity, z, r, t, velocity)
        error = (out - target).flatten(1).pow(2).sum(1)
        weight = (error.detach() + self.adaptive_c).pow(-self.adaptive_p)
        return weight * error
