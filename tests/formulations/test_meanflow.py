"""MeanFlow: the jvp target, the exact average velocity of a Gaussian mixture, sampling, the CLI.

The exact average velocity of the test mixture (mixture_checks: weights 0.8 / 0.2 at (∓4, 0),
std 0.5) on the linear path is u*(z, r, t) = (z − Φ_{t→r}(z)) / (t − r), Φ the flow map of the
probability-flow ODE dz/dt = v(z, t) with the oracle's exact velocity; for Gaussian data it is
closed form.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import fit_config
from mixture_checks import N, check_mixture, mixture_oracle
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import profile

from diffusion_pl.checkpoints import load_module
from diffusion_pl.cli import main
from diffusion_pl.formulations import MeanFlow, RectifiedFlow, meanflow_target
from diffusion_pl.mixture import GaussianMixtureSpec
from diffusion_pl.nets import MLP, PositionalEmbedding, UNet
from diffusion_pl.oracle import GaussianMixtureOracle
from diffusion_pl.parameterization import AverageVelocityPrediction, Prediction
from diffusion_pl.paths import LinearPath
from diffusion_pl.samplers import MeanFlowSampler, ode_drift, solve_ode_rk45
from diffusion_pl.tensors import append_dims
from diffusion_pl.time_sampling import LogitNormal

ROOT = Path(__file__).resolve().parents[2]
PATH = LinearPath()

pytestmark = pytest.mark.usefixtures("one_thread")


class Float64Positional(PositionalEmbedding):
    """Sinusoidal features of t itself (label_scale 1: sin(1000 t) would need steps far below
    1e-5 for a central difference), in the labels' own dtype (the shipped ones round to float32,
    which finite differences in t would see)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim, label_scale=1.0)

    def forward(self, noise_labels: Tensor) -> Tensor:
        args = torch.outer(self.label_scale * noise_labels, self.freqs.to(noise_labels.dtype))
        return torch.cat([args.sin(), args.cos()], dim=1)


def random_weights(net: torch.nn.Module, std: float, seed: int = 0) -> torch.nn.Module:
    """Every parameter redrawn from N(0, std²) (the zero-initialised output layers too)."""
    generator = torch.Generator().manual_seed(seed)
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=generator, dtype=p.dtype) * std
    return net


def net_average_velocity(net: torch.nn.Module):
    """u(z, r, t) of a two-label net, as MeanFlow's loss calls it."""
    return lambda z, r, t: net(z, AverageVelocityPrediction.interval_labels(r, t), None)


def finite_difference_target(u, z: Tensor, r: Tensor, t: Tensor, v: Tensor, h: float) -> Tensor:
    """v − (t − r) · [u(z + h v, r, t + h) − u(z − h v, r, t − h)] / 2h (central difference)."""
    dudt = (u(z + h * v, r, t + h) - u(z - h * v, r, t - h)) / (2 * h)
    return v - append_dims(t - r, z.ndim) * dudt


def small_meanflow(**kwargs) -> MeanFlow:
    """A MeanFlow of a small two-label MLP with these settings."""
    return MeanFlow(MLP(dim=2, hidden=16, depth=1, num_noise_labels=2), (2,), **kwargs)


def test_jvp_target_equals_finite_differences_on_an_mlp() -> None:
    """One jvp along (v, 0, 1) gives v − (t − r)(v·∂_z u + ∂_t u): in float64 it matches the
    central difference along the same direction to 1e-8 (measured: 3e-10), the output keeps its
    graph and the target has none (stop-gradient)."""
    net = MLP(dim=2, hidden=32, depth=2, embedding=Float64Positional, num_noise_labels=2)
    net = random_weights(net.double(), 0.3)
    u = net_average_velocity(net)
    g = torch.Generator().manual_seed(1)
    z, v = torch.randn(16, 2, generator=g, dtype=torch.float64), torch.randn(16, 2, generator=g)
    t = torch.rand(16, generator=g, dtype=torch.float64)
    r = t * torch.rand(16, generator=g, dtype=torch.float64)
    out, target = meanflow_target(u, z, r, t, v.double())
    torch.testing.assert_close(out, u(z, r, t), rtol=0, atol=1e-12)
    expected = finite_difference_target(u, z, r, t, v.double(), 1e-5)
    torch.testing.assert_close(target, expected, rtol=0, atol=1e-8)
    assert out.requires_grad and not target.requires_grad
    # r = t rows: the target is v itself (flow matching)
    _, at_t = meanflow_target(u, z, t, t, v.double())
    torch.testing.assert_close(at_t, v.double(), rtol=0, atol=0)


def attention_kernels(fn) -> set[str]:
    """The ATen scaled-dot-product kernels one call of ``fn`` runs."""
    with profile() as prof:
        fn()
    names = {e.name for e in prof.events() if "attention" in e.name}
    return names - {"aten::scaled_dot_product_attention"}


@pytest.mark.slow
def test_jvp_through_unet_attention_runs_on_the_math_kernel() -> None:
    """The fused CPU kernel has no forward-mode derivative; under meanflow_target the UNet's
    attention runs on the math kernel and its jvp target matches finite differences in float64
    (atol 1e-7, measured 2e-10); outside it the forward still reaches the fused kernel, with the
    same output as the math kernel."""
    net = UNet(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2),
               num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, embedding=Float64Positional,
               num_noise_labels=2)  # fmt: skip
    net = random_weights(net.double(), 0.2)
    u = net_average_velocity(net)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    v = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0.9, 0.5, 0.3], dtype=torch.float64)
    r = torch.tensor([0.1, 0.5, 0.0], dtype=torch.float64)
    kernels = attention_kernels(lambda: meanflow_target(u, z, r, t, v))
    assert kernels == {"aten::_scaled_dot_product_attention_math"}
    _, target = meanflow_target(u, z, r, t, v)
    expected = finite_difference_target(u, z, r, t, v, 1e-5)
    torch.testing.assert_close(target, expected, rtol=0, atol=1e-7)

    with torch.no_grad():
        fused_kernels = attention_kernels(lambda: u(z, r, t))
        fused = u(z, r, t)
        with sdpa_kernel(SDPBackend.MATH):
            math = u(z, r, t)
    assert fused_kernels == {"aten::_scaled_dot_product_flash_attention_for_cpu"}
    torch.testing.assert_close(fused, math, rtol=0, atol=1e-12)


def rk45_average_velocity(oracle: GaussianMixtureOracle, z: Tensor, r: float, t: float) -> Tensor:
    """u*(z, r, t) = (z − Φ_{t→r}(z)) / (t − r), Φ by RK45 at rtol = atol = 1e-9."""
    z = z.to(torch.float64)
    z_r, _ = solve_ode_rk45(
        lambda y, s: ode_drift(oracle, PATH, y, s), z, t, r, rtol=1e-9, atol=1e-9
    )
    return (z - z_r) / (t - r)


GAUSSIAN_MEAN, GAUSSIAN_STD = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.5


def gaussian_average_velocity(z: Tensor, r: Tensor, t: Tensor) -> Tensor:
    """u*(z, r, t) of data N(μ, s² I) on the linear path, in closed form.

    z_t ~ N(α_t μ, std_t² I), std_t² = α_t² s² + σ_t², and the PF-ODE velocity
    v = α'_t μ + (d ln std_t / dt)(z − α_t μ) is affine in z, so its flow map is
    Φ_{t→r}(z) = α_r μ + (std_r / std_t)(z − α_t μ), and u* = (z − Φ_{t→r}(z)) / (t − r).
    """
    alpha_t, alpha_r = append_dims(1 - t, z.ndim), append_dims(1 - r, z.ndim)
    std_t = torch.sqrt(alpha_t**2 * GAUSSIAN_STD**2 + append_dims(t, z.ndim) ** 2)
    std_r = torch.sqrt(alpha_r**2 * GAUSSIAN_STD**2 + append_dims(r, z.ndim) ** 2)
    z_r = alpha_r * GAUSSIAN_MEAN + std_r / std_t * (z - alpha_t * GAUSSIAN_MEAN)
    return (z - z_r) / append_dims(t - r, z.ndim)


def test_exact_average_velocity_is_a_fixed_point_of_the_meanflow_target() -> None:
    """u* satisfies the MeanFlow identity u = v − (t − r) d/dt u with the exact velocity v: its
    jvp target (the loss's regression target at u_θ = u*) is u* itself.

    Data N((1, −2), 0.5² I), whose u* is closed form (checked against RK45 on the exact oracle
    first: 1.6e-10 apart, tolerance 1e-7); 512 points of p_t at r, t drawn as MeanFlow draws
    them. Measured: |target − u*| ≤ 9e-16, where u* is up to 3.6; the tolerance is 1e-10. With
    the tangent (v, 1, 0), a derivative in r instead of t, the target misses u* by 2.2.
    """
    spec = GaussianMixtureSpec.isotropic([GAUSSIAN_MEAN.tolist()], GAUSSIAN_STD)
    oracle = GaussianMixtureOracle(PATH, spec)
    g = torch.Generator().manual_seed(0)
    module = small_meanflow(interval_ratio=1.0)
    r, t = module.objective.interval_times(module.path, 512, g, "cpu", torch.float64)
    x0, _ = spec.sample(512, g)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    z = append_dims(1 - t, 2) * x0 + append_dims(t, 2) * eps

    at = torch.full((64,), 0.3, dtype=torch.float64), torch.full((64,), 0.8, dtype=torch.float64)
    reference = rk45_average_velocity(oracle, z[:64], 0.3, 0.8)
    torch.testing.assert_close(gaussian_average_velocity(z[:64], *at), reference, rtol=0, atol=1e-7)

    v = oracle(z, t).velocity(PATH.coefficients(t, z.ndim))
    out, target = meanflow_target(gaussian_average_velocity, z, r, t, v)
    torch.testing.assert_close(target, out, rtol=0, atol=1e-10)
    _, wrong = torch.func.jvp(
        gaussian_average_velocity, (z, r, t), (v, torch.ones_like(r), torch.zeros_like(t))
    )
    assert (v - append_dims(t - r, 2) * wrong - out).abs().max() > 0.1


class ExactMeanFlow:
    """The mixture's exact denoiser with its exact average velocity (RK45): an ideal MeanFlow."""

    def __init__(self) -> None:
        self.oracle = mixture_oracle(PATH)
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor | float) -> Prediction:
        return self.oracle(x, t)

    def average_velocity(self, x: Tensor, r: Tensor | float, t: Tensor | float) -> Tensor:
        self.nfe += 1
        return rk45_average_velocity(self.oracle, x, float(r), float(t))


@pytest.mark.slow
def test_one_step_with_the_exact_average_velocity_draws_the_mixture() -> None:
    """z_0 = z_1 − u*(z_1, 0, 1) from 4000 prior draws reproduces the 0.8 / 0.2 mixture (weights
    ±0.02, per-mode means and stds ±0.05: check_mixture's Monte-Carlo tolerances) in one call,
    and two jumps (1 → ½ → 0) land on the same points (the exact flow composes; 1e-6)."""
    exact = ExactMeanFlow()
    one = MeanFlowSampler(steps=1)(exact, PATH, (N, 2), generator=torch.Generator().manual_seed(0))
    assert exact.nfe == 1
    check_mixture(exact.oracle, one)
    two = MeanFlowSampler(steps=2)(exact, PATH, (N, 2), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(two, one, rtol=0, atol=1e-6)


def test_interval_times() -> None:
    """r ≤ t always; a fraction ``interval_ratio`` of rows has r < t (±0.01 at n = 20000, 3.3
    standard errors); on those rows the two times are the sorted pair of logit-normal draws,
    so the mean of logit(r) and logit(t) is the distribution's mean −0.4 (±0.03)."""
    module = small_meanflow(interval_ratio=0.3)
    g = torch.Generator().manual_seed(0)
    r, t = module.objective.interval_times(module.path, 20000, g, "cpu", torch.float64)
    assert (r <= t).all() and (t < 1).all() and (r > 0).all()
    apart = r < t
    assert abs(apart.double().mean().item() - 0.3) < 0.01
    logits = torch.cat([torch.logit(r[apart]), torch.logit(t[apart])])
    assert abs(logits.mean().item() + 0.4) < 0.03


def test_loss_is_flow_matching_at_r_equals_t_with_the_adaptive_weight() -> None:
    """With ``interval_ratio = 0`` and p = 0 the loss is ‖u_θ(z_t, t, t) − (ε − x)‖² summed over
    the example (same draws: t twice, the r ≠ t coin, ε); with p = 1 it is that error e weighed
    by sg(1 / (e + c)): e / (e + c)."""
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
    plain = small_meanflow(interval_ratio=0.0, adaptive_p=0.0)
    random_weights(plain.net, 0.3)
    loss = plain.loss(x0, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    sampling = LogitNormal(-0.4, 1.0)
    t = torch.maximum(sampling(64, PATH, generator=g), sampling(64, PATH, generator=g))
    torch.rand(64, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    z = (1 - t[:, None]) * x0 + t[:, None] * eps
    out = plain.net(z, torch.stack([t, torch.zeros_like(t)], dim=1), None)
    expected = ((out - (eps - x0)) ** 2).sum(1)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)

    robust = small_meanflow(interval_ratio=0.0, adaptive_p=1.0, adaptive_c=0.01)
    robust.load_state_dict(plain.state_dict())
    weighted = robust.loss(x0, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(weighted, expected / (expected + 0.01), rtol=1e-6, atol=1e-7)


def test_bad_settings_fail_early() -> None:
    with pytest.raises(ValueError, match=r"takes 1: set .*num_noise_labels: 2"):
        MeanFlow(MLP(dim=2, hidden=16, depth=1), (2,))
    with pytest.raises(ValueError, match=r"interval_ratio .* got 1.5"):
        small_meanflow(interval_ratio=1.5)
    with pytest.raises(ValueError, match="adaptive_p must be >= 0"):
        small_meanflow(adaptive_p=-1.0)
    with pytest.raises(ValueError, match="adaptive_c must be > 0"):
        small_meanflow(adaptive_c=0.0)
    with pytest.raises(ValueError, match=r"2 noise labels per example, shaped \[B, 2\]"):
        MLP(dim=2, hidden=16, depth=1, num_noise_labels=2)(torch.zeros(4, 2), torch.zeros(4))
    flow = RectifiedFlow(MLP(dim=2, hidden=16, depth=1), (2,))
    with pytest.raises(ValueError, match=r"average velocity u\(z, r, t\).*use an ODE sampler"):
        flow.sample(4, sampler=MeanFlowSampler())


def test_one_label_nets_keep_their_state_dict() -> None:
    """A net with one noise label has exactly the modules it had (older checkpoints load); the
    second label adds its own embedding MLP only."""
    one = MLP(dim=2, hidden=16, depth=1).state_dict().keys()
    two = MLP(dim=2, hidden=16, depth=1, num_noise_labels=2).state_dict().keys()
    assert not any("more_labels" in k for k in one)
    assert set(two) - set(one) == {
        f"embed.more_labels.0.{k}" for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
    }


@pytest.mark.slow
def test_fit_and_sample_through_the_cli(tmp_path: Path) -> None:
    """A 30-step toy fit writes a checkpoint; ``sample`` draws from it with the default one-step
    sampler, with ``--steps 3`` mean-flow jumps, and with the Euler ODE sampler at r = t."""
    ckpt = fit_config(ROOT / "configs/toy2d/meanflow.yaml", tmp_path,
                      "--trainer.max_steps", "30", "--data.global_batch_size", "128",
                      "--data.source.init_args.num_train", "2048",
                      "--data.source.init_args.num_val", "256")  # fmt: skip
    results = {}
    for name, extra in (
        ("one", ""),
        ("three", "--steps 3"),
        ("euler", "--sampler euler --steps 4"),
    ):
        out = tmp_path / f"{name}.npz"
        main(f"sample --ckpt_path {ckpt} --num_samples 50 --seed 0 --output {out} {extra}".split())
        results[name] = np.load(out)["samples"]
        assert results[name].shape == (50, 2) and np.isfinite(results[name]).all()
    assert not np.allclose(results["one"], results["three"])
    module = load_module(ckpt)
    assert isinstance(module.sampler, MeanFlowSampler) and module.sampler.steps == 1
