"""MeanFlow: a net of the average velocity u(z, r, t), trained through the MeanFlow identity.

On the linear path z_t = (1 − t) x + t ε (rectified flow's; dz/dt = v = ε − x), the average
velocity over [r, t] of the probability-flow trajectory through z_t is

    u(z_t, r, t) = (1 / (t − r)) ∫_r^t v(z_τ, τ) dτ = (z_t − z_r) / (t − r),

and differentiating (t − r) u = ∫_r^t v dτ in t gives the MeanFlow identity

    u(z_t, r, t) = v(z_t, t) − (t − r) d/dt u(z_t, r, t),   d/dt u = v · ∂_z u + ∂_t u.

Training regresses u_θ on the right-hand side with the conditional velocity v = ε − x in place
of the marginal one (the target is linear in v, so its mean given z_t is the marginal target)
and d/dt u_θ from one forward-mode Jacobian-vector product along the tangent (v, 0, 1) in
(z, r, t), under a stop-gradient. One network call then maps noise to data:
z_0 = z_1 − u_θ(z_1, 0, 1).

Reference: Geng, Deng, Bai, Kolter & He (2025), "Mean Flows for One-step Generative Modeling",
Sec. 4.1 (identity, loss, Algorithm 1), Sec. 4.3 (adaptive loss weighting, (r, t) sampling,
conditioning on (t, t − r)), Algorithm 2 (sampling).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jsonargparse import lazy_instance
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from diffusion_pl.formulations.base import DiffusionModule
from diffusion_pl.hparams import save_config
from diffusion_pl.nets.protocol import MultiLabelDenoiserNet
from diffusion_pl.parameterization import AverageVelocityDenoiser, AverageVelocityPrediction
from diffusion_pl.paths import LinearPath
from diffusion_pl.randomness import Generators, rand, randn
from diffusion_pl.samplers import MeanFlowSampler, Sampler
from diffusion_pl.tensors import append_dims
from diffusion_pl.time_sampling import LogitNormal, TimeSampling
from diffusion_pl.weighting import Constant

__all__ = ["MeanFlow", "meanflow_target"]

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


class MeanFlow(DiffusionModule):
    """MeanFlow on the linear path: u_θ(z, r, t) with ‖Δ‖² / sg(‖Δ‖² + c)^p, Δ = u_θ − u_tgt.

    Each example draws two times from ``time_sampling``, t the larger and r the smaller; a
    fraction ``1 − interval_ratio`` of them then gets r = t (plain flow matching, whose target is
    v itself). The loss per example is the adaptively weighted squared error
    w ‖Δ‖², w = sg(1 / (‖Δ‖² + c)^p), ‖Δ‖² the sum over the example's entries: p = 0 is the
    squared L2 loss, p = ½ behaves as the pseudo-Huber loss, p = 1 as a robust L2 (loss ≈ 1
    wherever ‖Δ‖² ≫ c). (The base class's weighting is not used: the weight is the error's own.)

    The net sees (t, t − r) as two noise labels (``num_noise_labels: 2`` on ``MLP`` or
    ``UNet``), each embedded and summed. The default sampler is one mean-flow jump
    (:class:`~diffusion_pl.samplers.MeanFlowSampler`, 1 NFE; ``steps: K`` for K jumps); every
    ODE sampler also runs, on u(z, t, t) = v(z, t).

    Defaults are the paper's ImageNet ones, which its ablations (Table 1) chose: 25 % of r ≠ t
    (best of 0, 25, 50 and 100 %; at 0 % it is flow matching, which fails at 1 NFE), t and r
    logit-normal(−0.4, 1.0), p = 1, c = 10⁻³. Its CIFAR-10 configuration (appendix) is 75 % of
    r ≠ t, logit-normal(−2.0, 2.0), p = 0.75.
    Classifier-free guidance built into the training target (the paper's Sec. 4.2) is not
    implemented; a class-conditional net with ``p_uncond`` trains the conditional and
    unconditional average velocities, and sampling-time guidance (w ∉ {0, 1}) runs with the ODE
    samplers only.

    Args:
        net: a net with ``num_noise_labels = 2`` (``MLP``, ``UNet``).
        data_shape: one example's shape (linked from the data module).
        time_sampling: the distribution of each of the two times (``LogitNormal(-0.4, 1.0)``).
        interval_ratio: the fraction of examples with r < t, in [0, 1].
        adaptive_p: p ≥ 0, the power of the adaptive weight.
        adaptive_c: c > 0, its offset.
        sampler: default sampler (one mean-flow jump).
        **kwargs: ``optimizer``, ``lr_scheduler``, ``p_uncond``, ``guidance_scale``,
            ``clip_samples`` (:class:`DiffusionModule`).

    Reference: Geng et al. (2025), "Mean Flows for One-step Generative Modeling", Sec. 4,
    Table 1 (ablations) and the appendix's configurations.
    """

    denoiser_type = AverageVelocityDenoiser

    def __init__(
        self,
        net: nn.Module,
        data_shape: tuple[int, ...],
        time_sampling: TimeSampling = lazy_instance(LogitNormal, mean=-0.4, std=1.0),
        interval_ratio: float = 0.25,
        adaptive_p: float = 1.0,
        adaptive_c: float = 1e-3,
        sampler: Sampler = lazy_instance(MeanFlowSampler, steps=1),
        **kwargs,
    ) -> None:
        labels = net.num_noise_labels if isinstance(net, MultiLabelDenoiserNet) else 1
        if labels != 2:
            raise ValueError(
                f"MeanFlow's net sees two noise labels, (t, t - r), but this "
                f"{type(net).__name__} takes {labels}: set "
                "model.init_args.net.init_args.num_noise_labels: 2"
            )
        if not 0 <= interval_ratio <= 1:
            raise ValueError(
                f"interval_ratio is the fraction of examples with r < t, in [0, 1]; got "
                f"{interval_ratio} (the paper: 0.25 on ImageNet, 0.75 on CIFAR-10)"
            )
        if not adaptive_p >= 0:
            raise ValueError(f"adaptive_p must be >= 0 (0: plain squared L2), got {adaptive_p}")
        if not adaptive_c > 0:
            raise ValueError(f"adaptive_c must be > 0 (the paper: 1e-3), got {adaptive_c}")
        super().__init__(
            net,
            data_shape,
            LinearPath(),
            AverageVelocityPrediction(),
            Constant(),
            time_sampling,
            sampler,
            **kwargs,
        )
        self.interval_ratio = interval_ratio
        self.adaptive_p, self.adaptive_c = adaptive_p, adaptive_c
        save_config(self)

    def interval_times(
        self,
        n: int,
        generator: Generators,
        device: torch.device | str | None,
        dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor]:
        """``(r, t)``, each ``[n]``: two draws of ``time_sampling``, sorted, and r = t in a
        fraction ``1 − interval_ratio`` of the rows (Geng et al., 2025, Sec. 4.3)."""
        first, second = (
            self.time_sampling(n, self.path, generator=generator, device=device, dtype=dtype)
            for _ in range(2)
        )
        t, r = torch.maximum(first, second), torch.minimum(first, second)
        apart = rand((n,), generator, device=device, dtype=dtype)
        return torch.where(apart < self.interval_ratio, r, t), t

    def loss(
        self,
        x0: Tensor,
        y: Tensor | None = None,
        generator: Generators = None,
        eps: Tensor | None = None,
    ) -> Tensor:
        """Per-example loss ``[B]``: sg(1 / (‖Δ‖² + c)^p) ‖Δ‖², Δ = u_θ(z_t, r, t) − u_tgt.

        Args:
            x0: data ``[B, ...]``.
            y: labels ``[B]`` (used by class-conditional nets, dropped with ``p_uncond``).
            generator: source of the label dropout, t and r, which rows keep r < t, and ε,
                drawn in that order.
            eps: noise coupled to ``x0``; drawn independently when None.
        """
        y = self.class_labels(self.drop_labels(y, generator))
        dtype = torch.promote_types(x0.dtype, torch.float32)
        r, t = self.interval_times(x0.shape[0], generator, x0.device, dtype)
        if eps is None:
            eps = randn(x0.shape, generator, device=x0.device)
        c = self.path.coefficients(t, x0.ndim)
        z = c.alpha * x0 + c.sigma * eps
        velocity = self.parameterization.target(x0, eps, c)

        def average_velocity(z: Tensor, r: Tensor, t: Tensor) -> Tensor:
            labels = AverageVelocityPrediction.interval_labels(r, t)
            return self.net(z, labels, y).to(dtype)

        out, target = meanflow_target(average_velocity, z, r, t, velocity)
        error = (out - target).flatten(1).pow(2).sum(1)
        weight = (error.detach() + self.adaptive_c).pow(-self.adaptive_p)
        return weight * error
