"""Consistency models against exact answers: the true consistency function of the test mixture
(the PF-ODE solution map to σ_min, by RK45 on the exact denoiser), the boundary condition, the
distillation loss at the teacher's solver order, iCT's constants, and fits through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import fit_config
from mixture_checks import MIXTURE, check_mixture, mixture_oracle
from torch import Tensor

from diffusion_pl.checkpoints import Checkpoint, load_module, read_checkpoint
from diffusion_pl.cli import main
from diffusion_pl.consistency_function import ConsistencyPreconditioning
from diffusion_pl.denoiser import Denoiser
from diffusion_pl.formulations import ConsistencyModel, RectifiedFlow
from diffusion_pl.formulations.consistency_checks import (
    check_same_reading,
    check_teacher_kind,
    check_teacher_range,
)
from diffusion_pl.nets import MLP, UNet
from diffusion_pl.objectives.consistency import (
    ECTLevels,
    EulerStep,
    HeunStep,
    LognormalIntervals,
    Progress,
    consistency_loss,
    ect_lower_level,
    ict_num_scales,
    karras_levels,
    lognormal_level_probs,
    pseudo_huber,
    scaled_denoiser,
)
from diffusion_pl.parameterization import Prediction, VelocityPrediction
from diffusion_pl.paths import LinearPath, NoisePath, VEPath, VPLinearPath
from diffusion_pl.randomness import sample_generators
from diffusion_pl.samplers import SAMPLERS, ConsistencySampler
from diffusion_pl.samplers.rk45 import solve_ode_rk45

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
VE = VEPath(SIGMA_MIN, SIGMA_MAX)


def true_consistency(path: NoisePath, tol: float) -> callable:
    """f*(x̃, σ̃ [B]): the PF-ODE of the exact mixture denoiser solved from each example's own
    σ̃ down to σ_min by RK45 (rtol = atol = ``tol``), in scaled space.

    Per-example start levels run on one clock s ∈ [0, 1] with σ̃(s) = σ̃^{1−s} σ_min^s, so
    dx̃/ds = ε̂(x̃, σ̃(s)) · σ̃(s) ln(σ_min/σ̃).
    """
    denoiser = scaled_denoiser(mixture_oracle(path), path)

    def f(x: Tensor, sigma: Tensor) -> Tensor:
        log_ratio = torch.log(SIGMA_MIN / sigma.to(torch.float64))

        def drift(y: Tensor, s: Tensor) -> Tensor:
            level = sigma * torch.exp(s * log_ratio)
            return denoiser(y, level).eps * (level * log_ratio)[:, None]

        return solve_ode_rk45(drift, x.to(torch.float64), 0.0, 1.0, rtol=tol, atol=tol)[0]

    return f


class TrueConsistencyDenoiser:
    """f* as a denoiser ``(x, t) -> Prediction`` on ``path`` (x̂_0 = f*, the sampler's read)."""

    def __init__(self, path: NoisePath) -> None:
        self.path, self.f = path, true_consistency(path, tol=1e-6)

    def __call__(self, x: Tensor, t: Tensor | float) -> Prediction:
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        alpha, sigma = self.path.alpha(t)[:, None], self.path.sigma(t)[:, None]
        x0 = self.f(x.to(torch.float64) / alpha, (sigma / alpha)[:, 0])
        return Prediction(x0=x0, eps=(x - alpha * x0) / sigma)


def test_one_step_of_the_true_consistency_function_reproduces_the_mixture() -> None:
    """One step of Algorithm 1 with f* turns 4,000 prior draws N(0, 80² I) into the 0.8/0.2
    mixture: weights ±2 points, means and stds ±0.05 (about 3 Monte-Carlo standard errors,
    mixture_checks)."""
    x = ConsistencySampler(steps=1)(TrueConsistencyDenoiser(VE), VE, (4000, 2),
                                    generator=torch.Generator().manual_seed(0),
                                    dtype=torch.float64)  # fmt: skip
    check_mixture(mixture_oracle(VE), x)


def test_on_the_linear_path_the_sampler_starts_at_sigma_max() -> None:
    """Where σ̃(t_max) = ∞ (the linear path) the first evaluation is at σ̃ = σ_max = 80,
    t = 80/81, on the prior draw rescaled to std 80/81; one step of f* there is the mixture."""
    path, calls = LinearPath(), []
    oracle = TrueConsistencyDenoiser(path)

    def spy(x: Tensor, t: Tensor) -> Prediction:
        calls.append((float(t), float(x.std())))
        return oracle(x, t)

    x = ConsistencySampler(steps=1)(spy, path, (4000, 2), dtype=torch.float64,
                                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert calls[0] == pytest.approx((80 / 81, 80 / 81), rel=0.03)
    check_mixture(mixture_oracle(path), x)
    mid = ((80 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7
    ts = ConsistencySampler(steps=2).time_grid(path, None)
    assert ts.tolist() == pytest.approx([80 / 81, mid / (1 + mid)], rel=1e-12)
    assert ConsistencySampler(steps=2).time_grid(VE, None)[0] == VE.t_max


def test_multistep_sampler_renoises_at_its_levels_with_per_sample_noise() -> None:
    """Two steps on f*: still the mixture (x̂ is re-noised to σ̃ = 2.52 and mapped back), with
    sample k the same in any batch; three evaluations for three steps."""
    oracle = TrueConsistencyDenoiser(VE)
    sampler = ConsistencySampler(steps=2)
    assert sampler.levels() == pytest.approx([((80 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7])
    x = sampler(oracle, VE, (4000, 2), generator=sample_generators(0, 0, 4000),
                dtype=torch.float64)  # fmt: skip
    check_mixture(mixture_oracle(VE), x)
    part = sampler(oracle, VE, (5, 2), generator=sample_generators(0, 3, 5), dtype=torch.float64)
    torch.testing.assert_close(part, x[3:8], rtol=0, atol=1e-5)  # RK45's batch-wide step size
    calls = []
    sampler = ConsistencySampler(steps=3, sigmas=[5.0, 0.5])
    sampler(lambda x, t: calls.append(float(VE.sigma(torch.as_tensor(t)))) or oracle(x, t), VE,
            (4, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # fmt: skip
    assert calls == pytest.approx([80.0, 5.0, 0.5])


@pytest.mark.parametrize("net", ["mlp", "unet"])
def test_boundary_condition_is_exact_for_any_weights(net: str) -> None:
    """f_θ(x, σ_min) = x bit for bit on the VE path, for random weights (float32 and float64);
    on the VP path, where the level σ_min sits at some t with α < 1, to float rounding."""
    torch.manual_seed(0)
    if net == "mlp":
        model = ConsistencyModel(MLP(dim=2, hidden=32, depth=2), (2,), sigma_data=2.0)
        x = 5.0 * torch.randn(64, 2)
    else:
        unet = UNet(in_channels=1, image_size=8, base_channels=8, channel_mult=[1],
                    num_res_blocks=1, attn_resolutions=[])  # fmt: skip
        model = ConsistencyModel(unet, (1, 8, 8))
        x = torch.randn(4, 1, 8, 8)
    for p in model.parameters():
        p.data.normal_()  # weights far from the initialisation
    assert torch.equal(model.denoiser()(x, 0.0).x0, x)
    assert torch.equal(model.double().denoiser()(x.double(), 0.0).x0, x.double())
    precond = ConsistencyPreconditioning(sigma_data=0.5)
    vp = VPLinearPath()
    t = vp.time_of_log_snr(torch.tensor([-2.0 * math.log(SIGMA_MIN)], dtype=torch.float64))
    x = torch.randn(8, 2, dtype=torch.float64)
    c = vp.coefficients(t.expand(8), 2)
    got = precond.predict(torch.randn(8, 2, dtype=torch.float64), c.alpha * x, c).x0
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)


def test_preconditioning_matches_song_et_al_and_is_finite_at_the_ends() -> None:
    """x̂_0 = c_skip x̃ + c_out F with App. C's c_skip, c_out on the linear path (α ≠ 1), and
    finite at t = 1 (α = 0, σ̃ = ∞: x̂_0 = σ_d F)."""
    precond, path, sd = ConsistencyPreconditioning(sigma_data=0.5), LinearPath(), 0.5
    t = torch.tensor([0.3, 0.9, 1.0], dtype=torch.float64)
    c = path.coefficients(t, 2)
    x, out = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    got = precond.predict(out, x, c).x0
    s = (c.sigma / c.alpha)[:2]
    c_skip = sd**2 / ((s - SIGMA_MIN) ** 2 + sd**2)
    c_out = sd * (s - SIGMA_MIN) / torch.sqrt(sd**2 + s**2)
    torch.testing.assert_close(got[:2], c_skip * x[:2] / c.alpha[:2] + c_out * out[:2])
    torch.testing.assert_close(got[2], sd * out[2], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="no regression target"):
        precond.target(x, x, c)


def test_distillation_loss_of_the_true_function_vanishes_at_the_solvers_order() -> None:
    """Exact teacher, student = target = f*: the loss is the solver's local error seen through
    f*, so it falls as h^(2(p+1)) with h ∝ 1/N: N^−6 for Heun, N^−4 for Euler. Intervals at the
    fixed fractions 0.1 … 0.9 of the ρ-ramp (N − 1 = 20, 40, 80), 32 examples, squared L2.
    Measured: Heun 2.2e-5, 2.8e-7, 3.3e-9 (slope −6.3); Euler 3.1e-5 → 2.4e-6 (−3.7, the
    asymptotic −4 not reached yet at N = 81)."""
    f, teacher = true_consistency(VE, tol=1e-7), scaled_denoiser(mixture_oracle(VE), VE)
    g = torch.Generator().manual_seed(0)
    x0 = MIXTURE.sample(32, g)[0].repeat(5, 1)
    z = torch.randn(32, 2, generator=g, dtype=torch.float64).repeat(5, 1)

    def loss(n: int, solver: HeunStep | EulerStep) -> float:
        sigmas = karras_levels(SIGMA_MIN, SIGMA_MAX, n)
        idx = (torch.tensor([1, 3, 5, 7, 9]) * ((n - 1) // 10)).repeat_interleave(32)

        def l2(a: Tensor, b: Tensor) -> Tensor:
            return (a - b).pow(2).sum(1)

        return float(consistency_loss(f, f, x0, z, sigmas[idx], sigmas[idx + 1], teacher=teacher,
                                      teacher_step=solver, distance=l2).mean())  # fmt: skip

    heun = [loss(n, HeunStep()) for n in (21, 41, 81)]
    slope = np.polyfit(np.log([20, 40, 80]), np.log(heun), 1)[0]
    assert -7.0 < slope < -5.5 and heun[-1] < 1e-8
    euler = [loss(n, EulerStep()) for n in (41, 81)]
    assert -4.5 < math.log2(euler[1] / euler[0]) < -3.3 and euler[1] > 100 * heun[-1]


def test_the_student_and_its_target_draw_the_same_dropout_masks() -> None:
    """At equal levels with the student as its own target the loss is exactly 0 with dropout
    on, though two calls of the same net draw different masks; and after the loss the global
    generator stands where one call leaves it (the student's draws replay the target's)."""
    net = UNet(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2),
               num_res_blocks=1, attn_resolutions=(4,), dropout=0.5).train()  # fmt: skip
    torch.manual_seed(0)
    with torch.no_grad():  # the UNet's zero-initialised output layers would hide the dropout
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    f = scaled_denoiser(Denoiser(net, VE, ConsistencyPreconditioning(0.5)), VE)

    def consistency(x: Tensor, sigma: Tensor) -> Tensor:
        return f(x, sigma).x0

    torch.manual_seed(0)
    x0, z, sigma = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.full((4,), 1.5)
    with torch.no_grad():
        assert not torch.equal(consistency(x0 + 1.5 * z, sigma), consistency(x0 + 1.5 * z, sigma))
    torch.manual_seed(1)
    loss = consistency_loss(consistency, consistency, x0, z, sigma, sigma,
                            distance=lambda a, b: (a - b).pow(2).flatten(1).sum(1))  # fmt: skip
    after_loss = torch.rand(1)
    assert torch.equal(loss, torch.zeros(4)) and loss.requires_grad
    torch.manual_seed(1)
    with torch.no_grad():
        consistency(x0 + 1.5 * z, sigma)
    assert torch.equal(torch.rand(1), after_loss)


def test_ict_curriculum_levels_and_pseudo_huber_constants() -> None:
    """N(k) = min(10 · 2^⌊k/K'⌋, 1280) + 1 with K' = ⌊K/8⌋ (iCT: 400k iterations, K' = 50k);
    the log-normal interval masses; c = 0.00054 √d (0.03 on CIFAR-10)."""
    counts = [ict_num_scales(k, 400_000) for k in (0, 49_999, 50_000, 100_000, 349_999, 350_000)]
    assert counts == [11, 11, 21, 41, 641, 1281]
    assert ict_num_scales(399_999, 400_000) == 1281 and ict_num_scales(3, 4) == 81  # K' ≥ 1
    sigmas = karras_levels(SIGMA_MIN, SIGMA_MAX, 11)
    assert float(sigmas[0]) == pytest.approx(SIGMA_MIN) and float(sigmas[-1]) == pytest.approx(80)
    normal = torch.distributions.Normal(-1.1, 2.0)
    mass = normal.cdf(sigmas.log()[1:]) - normal.cdf(sigmas.log()[:-1])
    torch.testing.assert_close(lognormal_level_probs(sigmas), mass / mass.sum())
    unet = UNet(in_channels=3, image_size=32, base_channels=8, channel_mult=[1],
                num_res_blocks=1, attn_resolutions=[])  # fmt: skip
    cifar = ConsistencyModel(unet, (3, 32, 32))
    huber_c = cifar.objective.distance.constant(cifar.data_shape)
    assert huber_c == pytest.approx(0.00054 * math.sqrt(3072)) and huber_c > 0.0299
    a = torch.zeros(2, 3)
    b = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    torch.testing.assert_close(pseudo_huber(a, b, 0.5), torch.tensor([0.0, math.sqrt(25.25) - 0.5]))


def test_bad_settings_and_a_teacher_out_of_range_fail_early() -> None:
    with pytest.raises(ValueError, match=r"sigma_min=0\.002 differs from the model's"):
        ConsistencyModel(MLP(dim=2, hidden=8, depth=1), (2,), sigma_min=0.01)
    with pytest.raises(ValueError, match=r"sigma_max=40.0 differs from the model's sigma_max"):
        ConsistencyModel(MLP(dim=2, hidden=8, depth=1), (2,),
                         sampler=ConsistencySampler(sigma_max=40.0))  # fmt: skip
    with pytest.raises(ValueError, match="init_from_teacher needs a teacher to copy"):
        ConsistencyModel(MLP(dim=2, hidden=8, depth=1), (2,), init_from_teacher=True)
    with pytest.raises(ValueError, match="3 steps need 2 intermediate sigmas"):
        ConsistencySampler(steps=3, sigmas=[5.0])
    assert ConsistencySampler(sigmas=[0.821]).with_steps(2).levels() == [0.821]
    with pytest.raises(ValueError, match=r"covers sigma/alpha in \[0.01.*sigma_min >= 0.01"):
        check_teacher_range(VPLinearPath(), SIGMA_MIN, SIGMA_MAX)
    check_teacher_range(LinearPath(), SIGMA_MIN, SIGMA_MAX)
    assert SAMPLERS["consistency"] is ConsistencySampler
    assert "`consistency`" in (ROOT / "README.md").read_text()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy rectified flow, 20 steps of the shipped config (a poor but real teacher)."""
    root = tmp_path_factory.mktemp("teacher")
    return fit_config(ROOT / "configs/toy2d/rectified_flow.yaml", root, "--trainer.max_steps", "20",
                      "--data.global_batch_size", "64", "--data.source.init_args.num_train", "256",
                      "--data.source.init_args.num_val", "64",
                      "--model.init_args.sampler.init_args.steps", "4")  # fmt: skip


SMALL = ("--trainer.max_steps", "6", "--data.global_batch_size", "32",
         "--trainer.check_val_every_n_epoch", "1", "--data.source.init_args.num_train", "64",
         "--data.source.init_args.num_val", "32")  # fmt: skip


@pytest.mark.slow
def test_distillation_and_training_fit_through_the_cli_and_sample(
    teacher: Path, tmp_path: Path
) -> None:
    """The shipped toy CD and CT configs train a few steps; the checkpoint holds the student
    only (no teacher weights, the optimizer over the net alone) and `sample --sampler
    consistency` reads it at 1 and 2 steps."""
    cd = fit_config(ROOT / "configs/toy2d/consistency_distill.yaml", tmp_path / "cd", *SMALL,
                    "--model.init_args.teacher.init_args.path", str(teacher))  # fmt: skip
    state = read_checkpoint(cd)
    assert all(k.startswith(("net.", "target_net.")) for k in state["state_dict"])
    (opt,) = state["optimizer_states"]
    net = load_module(cd).net
    assert len(opt["param_groups"][0]["params"]) == len(list(net.parameters()))
    ct = fit_config(ROOT / "configs/toy2d/consistency_train.yaml", tmp_path / "ct", *SMALL)
    for ckpt in (cd, ct):
        for steps in ("1", "2"):
            out = tmp_path / f"{ckpt.parent.parent.parent.parent.name}_{steps}.npz"
            main(["sample", "--ckpt_path", str(ckpt), "--num_samples", "8", "--output", str(out),
                  "--sampler", "consistency", "--steps", steps])  # fmt: skip
            samples = np.load(out)["samples"]
            assert samples.shape == (8, 2) and np.isfinite(samples).all()


def test_a_missing_teacher_or_init_names_its_argument(tmp_path: Path) -> None:
    missing = tmp_path / "no.ckpt"
    for key in ("teacher", "init"):
        model = ConsistencyModel(
            MLP(dim=2, hidden=8, depth=1), (2,), **{key: Checkpoint(str(missing))}
        )
        expected = rf"^{key} \(model\.init_args\.{key}\): checkpoint '{missing}' does not exist"
        with pytest.raises(FileNotFoundError, match=expected):
            model.setup("fit")


def test_a_consistency_model_is_refused_as_a_distillation_teacher() -> None:
    """Its x̂_0 is the end of the ODE, not the posterior mean the teacher's step needs."""
    consistency = ConsistencyModel(MLP(dim=2, hidden=8, depth=1), (2,))
    with pytest.raises(ValueError, match=r"^the teacher c\.ckpt is a consistency model \(Consis"):
        check_teacher_kind(consistency, "the teacher c.ckpt")
    check_teacher_kind(RectifiedFlow(MLP(dim=2, hidden=8, depth=1), (2,)))  # a diffusion model


@pytest.mark.slow
def test_a_teacher_of_other_data_fails_naming_both_shapes(teacher: Path) -> None:
    unet = UNet(in_channels=1, image_size=8, base_channels=8, channel_mult=[1], num_res_blocks=1,
                attn_resolutions=[])  # fmt: skip
    model = ConsistencyModel(unet, (1, 8, 8), teacher=Checkpoint(str(teacher)),
                             levels=LognormalIntervals(num_scales=18))  # fmt: skip
    shapes = (rf"teacher {teacher} was trained on data of shape \(2,\) but this model's data "
              r"have shape \(1, 8, 8\)")  # fmt: skip
    with pytest.raises(ValueError, match=shapes):
        model.setup("fit")


@pytest.mark.slow
def test_distillation_reads_the_teacher_on_its_own_path(teacher: Path) -> None:
    """The loss's teacher step equals a Heun step on the teacher's own velocity ODE mapped to
    σ̃: dx̃/dσ̃ = ε̂ at x = α x̃ on the linear path (checked against the teacher's Denoiser).
    A student on the teacher's path and parameterization, copied from it, is Song et al.'s
    f = c_skip x̃ + c_out F over the EDM net F = (D − c_skip^E x̃)/c_out^E whose denoiser is
    the teacher's D; a student that would read the copied net otherwise is refused."""
    model = ConsistencyModel(MLP(dim=2, hidden=256, depth=4), (2,), path=LinearPath(),
                             parameterization=VelocityPrediction(), sigma_data=2.87,
                             teacher=Checkpoint(str(teacher)),
                             levels=LognormalIntervals(num_scales=18),
                             init_from_teacher=True)  # fmt: skip
    model.setup("fit")
    rf = load_module(teacher)
    for mine, theirs in zip(model.net.parameters(), rf.net.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    x = torch.randn(5, 2)
    sigma = torch.tensor([0.5, 1.0, 2.0, 10.0, 70.0])
    t = sigma / (1 + sigma)  # the linear path's time of σ̃ = t/(1 − t)
    want = Denoiser(rf.net, rf.path, rf.parameterization)(x * (1 - t)[:, None], t)
    got = model.objective.teacher_denoiser(None, x.device)(x, sigma).eps
    torch.testing.assert_close(got, want.eps, rtol=1e-5, atol=1e-5)
    s, sd, d = sigma[:, None].double(), 2.87, want.x0.double()
    f_edm = (d - sd**2 / (s**2 + sd**2) * x) / (s * sd / torch.sqrt(s**2 + sd**2))
    c_skip = sd**2 / ((s - SIGMA_MIN) ** 2 + sd**2)
    c_out = sd * (s - SIGMA_MIN) / torch.sqrt(s**2 + sd**2)
    got = model.objective.consistency_fn(model, model.net.eval(), None)(x, sigma)
    torch.testing.assert_close(got.double(), c_skip * x + c_out * f_edm, rtol=1e-5, atol=1e-5)
    other = ConsistencyModel(MLP(dim=2, hidden=256, depth=4), (2,), sigma_data=2.87,
                             teacher=Checkpoint(str(teacher)),
                             levels=LognormalIntervals(num_scales=18),
                             init_from_teacher=True)  # fmt: skip
    with pytest.raises(ValueError, match="path VEPath and parameterization EDMPreconditioning "
                       "must be the model's, LinearPath and VelocityPrediction"):  # fmt: skip
        other.setup("fit")


def test_the_reading_check_passes_a_conditional_model_of_the_same_reading() -> None:
    """A class-conditional rectified flow read on its own path and parameterization passes the
    check (labels reach both readings); under EDM's reading it fails naming both."""
    torch.manual_seed(0)
    flow = RectifiedFlow(MLP(dim=2, hidden=32, depth=2, num_classes=3), (2,))
    net = MLP(dim=2, hidden=32, depth=2, num_classes=3)
    student = ConsistencyModel(net, (2,), path=LinearPath(), parameterization=VelocityPrediction())
    student.copy_net_from(flow.net)
    check_same_reading(student, flow, "init flow.ckpt")
    edm_reader = ConsistencyModel(MLP(dim=2, hidden=32, depth=2, num_classes=3), (2,))
    edm_reader.copy_net_from(flow.net)
    with pytest.raises(ValueError, match=r"init flow\.ckpt: the student reads that RectifiedFlow"):
        check_same_reading(edm_reader, flow, "init flow.ckpt")


def test_ect_mapping_stages_and_levels() -> None:
    """ECT's r = t (1 − 2^−(s+1) (1 + 8 sigmoid(−t))) clamped at 0, by hand; the stage advances
    every ``stage_steps`` of the step handed in; drawn pairs keep σ_min ≤ r < t ≤ σ_max with r
    the mapping of t."""
    t = torch.tensor([0.5, 1.0, 80.0], dtype=torch.float64)
    for stage in (0, 3):
        want = [max(x * (1 - 2.0 ** -(stage + 1) * (1 + 8 / (1 + math.exp(x)))), 0) for x in t]
        torch.testing.assert_close(ect_lower_level(t, stage), torch.tensor(want, dtype=t.dtype))
    assert (
        ect_lower_level(t, 0)[:2].tolist() == [0.0, 0.0] and float(ect_lower_level(t, 0)[2]) == 40
    )
    gaps = [float(80 - ect_lower_level(t, s)[2]) for s in range(4)]
    assert gaps == pytest.approx([40, 20, 10, 5])  # sigmoid(−80) ≈ 0: t − r halves per stage
    model = ConsistencyModel(MLP(dim=2, hidden=8, depth=1), (2,), levels=ECTLevels(stage_steps=10))
    objective = model.objective
    assert objective.levels.stage(objective.progress(25)) == 2
    assert objective.metrics(25) == {"train/ect_stage": 2.0}
    lo, hi = objective.draw_levels(25, 4000, torch.Generator().manual_seed(0), torch.device("cpu"),
                                   torch.float32)  # fmt: skip
    assert (lo >= SIGMA_MIN).all() and (lo < hi).all()
    assert (hi >= 2 * SIGMA_MIN).all() and (hi <= SIGMA_MAX).all()
    torch.testing.assert_close(lo, ect_lower_level(hi, 2).clamp_min(SIGMA_MIN))
    inside = hi[(hi > 2 * SIGMA_MIN) & (hi < SIGMA_MAX)].log()  # log-normal(−1.1, 2) up to clipping
    assert float(inside.mean()) == pytest.approx(-1.1, abs=0.15)
    with pytest.raises(ValueError, match="ECT's q must be > 1"):
        ECTLevels(q=1.0)
    with pytest.raises(ValueError, match="need the training length K"):
        ECTLevels()(4, None, torch.device("cpu"), objective.span, Progress(3, None))
    assert ECTLevels().stage(Progress(30, 80)) == 3  # K/8 = 10 steps per stage


@pytest.mark.slow
def test_ect_starts_from_init_without_a_teacher(teacher: Path, tmp_path: Path) -> None:
    """``init`` copies a checkpoint's net into the student when fitting starts (and only
    then), loads no teacher, and refuses being given with ``init_from_teacher``; the shipped
    toy ECT config tunes from a toy EDM run through the CLI."""
    model = ConsistencyModel(MLP(dim=2, hidden=256, depth=4), (2,), path=LinearPath(),
                             parameterization=VelocityPrediction(), init=Checkpoint(str(teacher)),
                             levels=ECTLevels())  # fmt: skip
    model.setup("validate")
    rf = load_module(teacher)
    assert not torch.equal(next(model.net.parameters()), next(rf.net.parameters()))
    model.setup("fit")
    for mine, theirs in zip(model.net.parameters(), rf.net.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    assert model.teacher is None and model.objective.teacher is None
    with pytest.raises(ValueError, match=r"init_from_teacher and init \("):
        ConsistencyModel(MLP(dim=2, hidden=8, depth=1), (2,), teacher=Checkpoint(str(teacher)),
                         init_from_teacher=True, init=Checkpoint(str(teacher)))  # fmt: skip
    edm = fit_config(ROOT / "configs/toy2d/edm.yaml", tmp_path / "edm", *SMALL)
    tuned = fit_config(ROOT / "configs/toy2d/consistency_tune.yaml", tmp_path / "ect", *SMALL,
                       "--model.init_args.init.init_args.path", str(edm))  # fmt: skip
    state = read_checkpoint(tuned)
    levels = state["hyper_parameters"]["levels"]["class_path"]
    assert state["global_step"] == 6 and levels == "diffusion_pl.objectives.consistency.ECTLevels"
