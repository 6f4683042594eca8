"""Latent consistency models against exact answers: a class-conditional Gaussian mixture (class
= component) gives the exact guided teacher, and its guided PF-ODE solved by RK45 the exact
guided consistency function f*_ω; LCM's boundary, its zero-initialised ω input, its sampler,
its objective and its loss are checked on them (tests/helpers/guided_mixture.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from guided_mixture import (
    CLASSES,
    VP,
    InMemory,
    TrueLCMDenoiser,
    class_moments,
    exact_teacher,
    guided_pair,
    true_lcm,
)
from torch import Tensor

from diffusion_pl.formulations import VDM, LatentConsistencyModel
from diffusion_pl.lcm import Timesteps, lcm_scalings
from diffusion_pl.nets import MLP, UNet
from diffusion_pl.objectives.consistency import DPMSolverStep, EulerStep, consistency_loss
from diffusion_pl.parameterization import (
    EpsilonPrediction,
    VelocityPrediction,
    VPrediction,
    X0Prediction,
)
from diffusion_pl.paths import DDPMPath, LinearPath, VPCosinePath, VPLinearPath
from diffusion_pl.randomness import rand, randn
from diffusion_pl.samplers import LCMSampler, lcm_timesteps
from diffusion_pl.tensors import append_dims

pytestmark = pytest.mark.usefixtures("one_thread")


def test_boundary_scalings_are_the_papers_and_exact_at_the_first_timestep() -> None:
    """c_skip, c_out at τ = 0, 1, 19, 999 are σ_d²/((10τ)² + σ_d²), 10τ/√((10τ)² + σ_d²)
    (diffusers' LCMScheduler, where installed, to 1e-12); at τ = 0 exactly 1 and 0; and a
    student with random weights has f(x, t_min) = x bit for bit (float32, float64)."""
    tau = torch.tensor([0.0, 1.0, 19.0, 999.0], dtype=torch.float64)
    c_skip, c_out = lcm_scalings(tau)
    torch.testing.assert_close(c_skip, 0.25 / (100 * tau**2 + 0.25), rtol=1e-15, atol=0)
    torch.testing.assert_close(c_out, 10 * tau / torch.sqrt(100 * tau**2 + 0.25))
    assert (float(c_skip[0]), float(c_out[0])) == (1.0, 0.0)
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.LCMScheduler()
    for i, step in enumerate(tau.long().tolist()):
        theirs = scheduler.get_scalings_for_boundary_condition_discrete(step)
        assert (float(c_skip[i]), float(c_out[i])) == pytest.approx(theirs, rel=1e-12, abs=1e-15)


READINGS = {
    "ddpm-eps": (DDPMPath(), EpsilonPrediction()),
    "vp-v": (VPLinearPath(), VPrediction()),
    "cosine-x0": (VPCosinePath(), X0Prediction()),
    "linear-velocity": (LinearPath(), VelocityPrediction()),
}


@pytest.mark.parametrize("name", sorted(READINGS))
def test_the_boundary_condition_holds_bit_for_bit_for_any_weights(name: str) -> None:
    """f(x, t_0) = x exactly at the first timestep, for random weights, every ω, float32 and
    float64; the next timestep already moves x. On the linear path the timesteps stop short of
    t = 0 and 1 (σ/α = 0 and ∞) by 1/T."""
    path, reading = READINGS[name]
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=16, depth=1, num_classes=2, num_noise_labels=2)
    model = LatentConsistencyModel(net, (2,), path=path, parameterization=reading)
    for p in model.parameters():
        p.data.normal_()  # weights far from the initialisation, ω's route included
    first, second = model.parameterization.timesteps.times()[:2].tolist()
    assert first == pytest.approx(1e-3, abs=1e-15)
    x, y = 3.0 * torch.randn(64, 2), torch.arange(64) % 3
    for omega in (0.0, 1.0, 6.5):
        assert torch.equal(model.denoiser(y, omega)(x, first).x0, x)
    model = model.double()
    assert torch.equal(model.denoiser(y, 2.0)(x.double(), first).x0, x.double())
    assert not torch.allclose(model.denoiser(y, 2.0)(x.double(), second).x0, x.double())


def test_a_zero_initialised_omega_input_leaves_the_teachers_net_bit_identical() -> None:
    """The student copied from a class-conditional UNet teacher (with ω as its second noise
    label) computes the teacher's raw output bit for bit at any ω, and so reads the same
    x̂_0 = D under LCM's c_skip, c_out; its EMA target starts equal too."""
    torch.manual_seed(0)
    config = dict(in_channels=1, image_size=8, base_channels=16, channel_mult=(1, 2),
                  num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, num_classes=10)  # fmt: skip
    teacher = VDM(UNet(**config), (1, 8, 8), p_uncond=0.1)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))  # zero-initialised output layers made nonzero
    student = LatentConsistencyModel(
        UNet(**config, num_noise_labels=2), (1, 8, 8), teacher=InMemory(teacher), omega_max=8.0
    )
    student.setup("fit")
    x, t = torch.randn(6, 1, 8, 8), torch.tensor([0.02, 0.1, 0.3, 0.5, 0.8, 1.0])
    y = torch.tensor([0, 3, 7, 9, 10, 2])
    expected = teacher.net(x, t, y)
    for omega in (0.0, 1.0, 3.7, 8.0):
        labels = torch.stack([t, torch.full_like(t, omega)], dim=-1)
        assert torch.equal(student.net.eval()(x, labels, y), expected)
        assert torch.equal(student.target_net(x, labels, y), expected)
    tau = torch.round(t * 1000) - 1
    c_skip, c_out = lcm_scalings(tau)
    x0 = teacher.denoiser(y)(x, t).x0
    got = student.denoiser(y, 3.0)(x, t).x0
    torch.testing.assert_close(got, append_dims(c_skip, 4) * x + append_dims(c_out, 4) * x0)


def test_sampler_timesteps_are_the_papers_code() -> None:
    """K = 1 … 8 steps pick the paper's timesteps of the 50-level skipping grid (diffusers'
    LCMScheduler.set_timesteps, where installed), at t = (τ + 1)/1000 on DDPMPath(1000)."""
    assert lcm_timesteps(4).tolist() == [999, 759, 499, 259]
    ts = LCMSampler(steps=4).time_grid(DDPMPath(), None)
    assert ts.tolist() == pytest.approx([1.0, 0.76, 0.5, 0.26], abs=1e-12)
    assert Timesteps.of(DDPMPath()).times()[[0, 19]].tolist() == pytest.approx([1e-3, 0.02])
    with pytest.raises(ValueError, match="takes 1 to 50 steps"):
        LCMSampler(steps=51)
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.LCMScheduler()
    for k in range(1, 9):
        scheduler.set_timesteps(k)
        assert lcm_timesteps(k).tolist() == scheduler.timesteps.tolist()


N_SAMPLES = 1500


@pytest.fixture(scope="module")
def guided_reference() -> dict[float, tuple[Tensor, Tensor]]:
    """For ω = 1 and 3: labels (half each class) and samples of the guided PF-ODE from the
    prior at t = 1 down to t_min, by RK45 (rtol = atol = 1e-7) on the exact guided pair."""
    y, x1 = torch.arange(N_SAMPLES) % 2, prior(torch.Generator().manual_seed(0))
    one = torch.ones(N_SAMPLES, dtype=torch.float64)
    top = float(VP.sigma(one[0]) / VP.alpha(one[0]))
    out = {}
    for omega in (1.0, 3.0):
        f = true_lcm(VP, y, omega * one, tol=1e-7)
        out[omega] = y, f(x1 / float(VP.alpha(one[0])), top * one)
    return out


def prior(generator: torch.Generator) -> Tensor:
    """``N_SAMPLES`` draws of VP's prior N(0, σ(1)² I), float64."""
    return VP.prior_std() * torch.randn(N_SAMPLES, 2, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_the_lcm_sampler_on_the_exact_consistency_function_draws_the_guided_distribution(
    steps: int, guided_reference: dict[float, tuple[Tensor, Tensor]]
) -> None:
    """LCM's sampler fed f*_ω. At ω = 1 (the conditional teacher, whose ODE is each class's own
    PF-ODE) every step count draws N(μ_y, 0.6² I) per class: class means ±0.05, stds ±0.05
    (about 2.5 and 3.5 standard errors of 750 samples). At ω = 3 one step is the guided ODE's
    own sample (the reference's, to 1e-4): guidance moves the class means from ∓1 to ∓1.61 and
    the first coordinate's std from 0.6 to 0.38. More steps keep most of that guidance (means
    beyond ∓1.3, std below 0.5) but not all of it, because the guided ODE is not the PF-ODE of
    its own end distribution: re-noised to t_i along the forward process, a guided sample is
    guided again only below t_i (measured means ∓1.50 at 2 steps, ∓1.37 at 4, ∓1.29 at 8)."""
    y, reference = guided_reference[3.0]
    g = torch.Generator().manual_seed(0)
    ts = LCMSampler(steps=steps).time_grid(VP, None)
    x1 = prior(g)
    sampler = LCMSampler(steps=steps).solver
    plain = sampler(TrueLCMDenoiser(VP, y, 1.0), VP, x1, ts, generator=g)
    means = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    expected = torch.stack([means, torch.full((2,), 0.6), torch.full((2,), 0.6)], dim=1)
    torch.testing.assert_close(class_moments(plain, y), expected, atol=0.05, rtol=0)
    guided_x = sampler(TrueLCMDenoiser(VP, y, 3.0), VP, x1, ts, generator=g)
    guided, ref = class_moments(guided_x, y), class_moments(reference, y)
    assert ref[:, 0].abs().tolist() == pytest.approx([1.61, 1.61], abs=0.02)
    assert ref[:, 1].tolist() == pytest.approx([0.38, 0.38], abs=0.02)
    if steps == 1:
        torch.testing.assert_close(guided_x, reference, atol=1e-4, rtol=0)
        return
    assert (guided[:, 0].abs() > 1.3).all() and (guided[:, 1] < 0.5).all()
    assert (guided[:, 0].abs() < ref[:, 0].abs() - 0.05).all()


def test_the_objective_draws_levels_z_omega_and_steps_the_guided_teacher() -> None:
    """The module's loss, rebuilt by hand from the same generator: τ_{n+k} = 20 j − 1 from
    one uniform, z, then ω ~ U[1, 4]; one DDIM step of the exact guided pair (mixed here, not
    by the objective's guidance) from x_{n+k} = α (x_0 + σ̃ z) to τ_n = max(τ_{n+k} − 20, 0);
    the student and its EMA target (equal at the start) read with ω as the net's second label;
    pseudo-Huber with c = 0.00054 √2. Equal to float32 rounding."""
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=16, depth=1, num_classes=2, num_noise_labels=2)
    for p in net.parameters():
        p.data.normal_(0, 0.5)
    teacher = InMemory(exact_teacher(VP))
    model = LatentConsistencyModel(net, (2,), path=VP, omega_max=4.0, teacher=teacher,
                                   init_from_teacher=False)  # fmt: skip
    model.setup("fit")
    x0, y = CLASSES.sample(64, torch.Generator().manual_seed(1))
    x0, y = x0.float(), y.long()
    loss = model.loss(x0, y, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    u = rand((64,), g, dtype=torch.float64)
    z = randn((64, 2), g)
    omega = 1.0 + 3.0 * rand((64,), g, dtype=torch.float64)
    hi = (torch.floor(u * 50).long() + 1) * 20 - 1
    lo = (hi - 20).clamp_min(0)
    times = Timesteps.of(VP).times()
    t_hi, t_lo = times[hi], times[lo]
    level = torch.exp(-0.5 * VP.log_snr(times))
    x_hi = x0.double() + level[hi][:, None] * z.double()
    pair = guided_pair(VP, y, omega)(x_hi, level[hi])
    x_lo = pair.x0 + level[lo][:, None] * pair.eps
    student = model.denoiser(y, omega.float())
    alpha_hi, alpha_lo = VP.alpha(t_hi)[:, None], VP.alpha(t_lo)[:, None]
    f_hi = student((alpha_hi * x_hi).float(), t_hi).x0
    f_lo = student((alpha_lo * x_lo).float(), t_lo).x0
    c = 0.00054 * math.sqrt(2)
    expected = torch.sqrt((f_hi - f_lo).pow(2).sum(1) + c**2) - c
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)
    assert set(lo[hi == 19].tolist()) <= {0} and (omega >= 1).all() and (omega < 4).all()


def test_the_lcm_loss_of_the_exact_function_vanishes_at_the_teacher_steps_order() -> None:
    """Exact guided teacher (the mixture as an ε-VDM, guided through the objective's own
    classifier-free guidance with ω per example in [1, 4]) and student = target = f*_ω: the
    loss is the teacher step's local error seen through f*, O(h^(2(p+1))) with h ∝ k, the
    skipping step. Pairs (τ − k, τ) at τ = 240, 480, 720, 960 on VP's 1000 timesteps, k = 40,
    20, 10: slope in k about 4 for DDIM (p = 1), 6 for DPM-Solver++(2S) (p = 2)."""
    teacher = exact_teacher(VP)
    student = LatentConsistencyModel(MLP(dim=2, hidden=8, depth=1, num_classes=2,
                                         num_noise_labels=2), (2,), path=VP,
                                     teacher=InMemory(teacher), init_from_teacher=False,
                                     omega_min=1.0, omega_max=4.0)  # fmt: skip
    student.setup("fit")
    objective = student.objective
    g = torch.Generator().manual_seed(0)
    n = 8
    x0 = CLASSES.sample(n, g)[0].repeat(4, 1)
    y = (torch.arange(n) % 2).repeat(4)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64).repeat(4, 1)
    omega = objective.draw_omega(4 * n, g, torch.device("cpu"))
    exact, at_top = true_lcm(VP, y, omega, tol=1e-9), {}
    levels = objective.span.levels
    hi = torch.tensor([240, 480, 720, 960]).repeat_interleave(n) - 1

    def f(x: Tensor, sigma: Tensor) -> Tensor:  # f*(x_{n+k}) is the same for every k: once
        if torch.equal(sigma, levels[hi]):
            return at_top.setdefault("f", exact(x, sigma))
        return exact(x, sigma)

    def l2(a: Tensor, b: Tensor) -> Tensor:
        return (a - b).pow(2).sum(1)

    def loss(k: int, step: EulerStep | DPMSolverStep) -> float:
        guided = objective.guided_teacher(y, omega, 2)
        return float(consistency_loss(f, f, x0, z, levels[hi - k], levels[hi], teacher=guided,
                                      teacher_step=step, distance=l2).mean())  # fmt: skip

    ks = [40, 20, 10]
    ddim = [loss(k, EulerStep()) for k in ks]
    dpm = [loss(k, DPMSolverStep()) for k in ks]
    assert ddim[-1] < 1e-6 and dpm[-1] < 1e-9
    ddim_slopes, dpm_slopes = np.diff(np.log2(ddim)), np.diff(np.log2(dpm))
    assert ((ddim_slopes < -3.7) & (ddim_slopes > -4.8)).all()
    assert ((dpm_slopes < -5.7) & (dpm_slopes > -7.2)).all()
