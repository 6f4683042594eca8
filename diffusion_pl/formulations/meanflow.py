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

from jsonargparse import lazy_instance
from torch import nn

from diffusion_pl.denoiser import AverageVelocityDenoiser
from diffusion_pl.formulations.base import DiffusionModule
from diffusion_pl.hparams import save_config
from diffusion_pl.nets.protocol import MultiLabelDenoiserNet
from diffusion_pl.objectives.meanflow import MeanFlowLoss, meanflow_target
from diffusion_pl.parameterization import AverageVelocityPrediction
from diffusion_pl.paths import LinearPath
from diffusion_pl.samplers import MeanFlowSampler, Sampler
from diffusion_pl.time_sampling import LogitNormal, TimeSampling

__all__ = ["MeanFlow", "meanflow_target"]


class MeanFlow(DiffusionModule):
    """MeanFlow on the linear path: u_θ(z, r, t) with ‖Δ‖² / sg(‖Δ‖² + c)^p, Δ = u_θ − u_tgt.

    Each example draws two times from ``time_sampling``, t the larger and r the smaller; a
    fraction ``1 − interval_ratio`` of them then gets r = t (plain flow matching, whose target is
    v itself). The loss per example is the adaptively weighted squared error
    w ‖Δ‖², w = sg(1 / (‖Δ‖² + c)^p), ‖Δ‖² the sum over the example's entries: p = 0 is the
    squared L2 loss, p = ½ behaves as the pseudo-Huber loss, p = 1 as a robust L2 (loss ≈ 1
    wherever ‖Δ‖² ≫ c): :class:`~diffusion_pl.objectives.MeanFlowLoss`.

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
    net_noise_labels = 2  # (t, t − r)

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
        if labels != self.net_noise_labels:
            raise ValueError(
                f"MeanFlow's net sees two noise labels, (t, t - r), but this "
                f"{type(net).__name__} takes {labels}: set "
                f"model.init_args.net.init_args.num_noise_labels: {self.net_noise_labels}"
            )
        super().__init__(
            net,
            data_shape,
            LinearPath(),
            AverageVelocityPrediction(),
            MeanFlowLoss(time_sampling, interval_ratio, adaptive_p, adaptive_c),
            sampler,
            **kwargs,
        )
        save_config(self)
