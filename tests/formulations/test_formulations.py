"""Each formulation's loss against a hand computation; weightings and time sampling against
exact answers; NCSN's one source of levels; fast_dev_run of each formulation on toy data."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from cli_runs import cli_error
from torch import Tensor, nn

from diffusion_pl.cli import main
from diffusion_pl.data import DiffusionDataModule, Toy2D
from diffusion_pl.formulations import NCSN, RectifiedFlow, Reflow, ScoreSDE
from diffusion_pl.nets import MLP
from diffusion_pl.paths import DDPMPath, LinearPath, VEPath, VPLinearPath
from diffusion_pl.samplers import EulerSampler
from diffusion_pl.samplers.langevin import AnnealedLangevinSampler
from diffusion_pl.time_sampling import DiscreteUniform, LogitNormal, Uniform
from diffusion_pl.weighting import EDM, Constant, Likelihood, MinSNR

ROOT = Path(__file__).resolve().parents[2]


class Linear2D(nn.Module):
    """A fixed, hand-checkable 'network': out = 0.5 x + noise_label."""

    num_classes = None

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None) -> Tensor:
        return 0.5 * x + noise_labels[:, None]

    def check_data_shape(self, data_shape: tuple[int, ...]) -> None:
        pass


def _draw(module, x0: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """The (t, ε) that ``module.loss`` draws from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    t = module.objective.time_sampling(x0.shape[0], module.path, generator=g)
    return t, torch.randn(x0.shape, generator=g)


X0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(1))


def test_rectified_flow_loss_by_hand() -> None:
    module = RectifiedFlow(Linear2D(), (2,))
    t, eps = _draw(module, X0, 0)
    x_t = (1 - t[:, None]) * X0 + t[:, None] * eps
    expected = ((0.5 * x_t + t[:, None]) - (eps - X0)).pow(2).mean(1)
    torch.testing.assert_close(
        module.loss(X0, generator=torch.Generator().manual_seed(0)), expected
    )


def test_logit_normal_times() -> None:
    module = RectifiedFlow(Linear2D(), (2,), time_sampling=LogitNormal(mean=1.0))
    g = torch.Generator().manual_seed(0)
    t = module.objective.time_sampling(20000, module.path, generator=g)
    assert float(t.min()) > 0 and float(t.max()) < 1
    assert float(t.median()) == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.01)


def test_reflow_regresses_on_the_coupled_noise() -> None:
    module = Reflow(Linear2D(), (2,))
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(2))
    t = module.objective.time_sampling(6, module.path, generator=torch.Generator().manual_seed(0))
    x_t = (1 - t[:, None]) * X0 + t[:, None] * z
    expected = ((0.5 * x_t + t[:, None]) - (z - X0)).pow(2).mean(1)
    loss = module.batch_loss((X0, z), torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss, expected)


def test_ncsn_levels_and_loss_by_hand() -> None:
    module = NCSN(Linear2D(), (2,), sigma_min=0.01, sigma_max=10.0, num_levels=4)
    t, eps = _draw(module, X0, 0)
    levels_hit = (t[:, None] - torch.tensor([0.0, 1 / 3, 2 / 3, 1.0])).abs().min(1).values
    assert float(levels_hit.max()) < 1e-6
    sigma = 0.01 * 1000 ** t[:, None]
    out = 0.5 * (X0 + sigma * eps) + t[:, None]  # the net outputs σ·s
    expected = 0.5 * (out + eps).pow(2).mean(1)  # ½‖σ s + ε‖² (λ(σ) = σ²)
    torch.testing.assert_close(
        module.loss(X0, generator=torch.Generator().manual_seed(0)), expected
    )
    levels = VEPath(0.01, 10.0).sigma(torch.linspace(0, 1, 4))
    torch.testing.assert_close(levels, torch.tensor([0.01, 0.1, 1.0, 10.0]))


@pytest.mark.parametrize("weighting", [Constant(), Likelihood()], ids=type)
def test_score_sde_weightings_by_hand(weighting) -> None:
    path = VPLinearPath()
    module = ScoreSDE(Linear2D(), (2,), path=path, weighting=weighting)
    t, eps = _draw(module, X0, 0)
    assert float(t.min()) >= 1e-5
    alpha, sigma = path.alpha(t)[:, None], path.sigma(t)[:, None]
    out = 0.5 * (alpha * X0 + sigma * eps) + t[:, None]
    likelihood = isinstance(weighting, Likelihood)
    weight = path.g2(t) / sigma[:, 0] ** 2 if likelihood else torch.ones_like(t)
    # λ(t)‖s + ε/σ‖² with s = out/σ: σ² → ‖out + ε‖², g² → g²/σ² ‖out + ε‖².
    expected = weight * (out + eps).pow(2).mean(1)
    torch.testing.assert_close(
        module.loss(X0, generator=torch.Generator().manual_seed(0)), expected
    )


def test_ve_likelihood_weight_is_constant() -> None:
    t = torch.linspace(0.1, 0.9, 5)
    expected = torch.full((5,), 2 * math.log(5000.0))
    torch.testing.assert_close(Likelihood()(VEPath(0.01, 50.0), t), expected)


def test_min_snr_and_edm_weights_by_hand() -> None:
    """On ε: min(SNR, γ)/SNR, and EDM's λ(σ̃) σ̃² = (σ̃² + σ_d²)/σ_d² (λ on x₀, Table 1)."""
    path = LinearPath()  # SNR = ((1 − t)/t)², σ̃ = t/(1 − t)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    snr = ((1 - t) / t) ** 2
    torch.testing.assert_close(MinSNR(5.0)(path, t), snr.clamp(max=5.0) / snr)
    sigma_tilde = t / (1 - t)
    lam = (sigma_tilde**2 + 0.25) / (sigma_tilde * 0.5) ** 2
    torch.testing.assert_close(EDM(0.5)(path, t), lam * sigma_tilde**2)


def test_uniform_times() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.rand(5, generator=g)
    t = Uniform(t_min=0.2, t_max=0.7)(5, VEPath(), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(t, 0.2 + 0.5 * u)
    path = VPLinearPath()  # t_min 1e-3: the path's own interval by default
    t = Uniform(low_discrepancy=True)(8, path, generator=g, dtype=torch.float64)
    gaps = torch.sort(t).values.diff()
    torch.testing.assert_close(gaps, torch.full((7,), 0.999 / 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="need t_min < t_max"):
        Uniform(t_min=0.5, t_max=0.5)


def test_discrete_uniform_draws_every_grid_time_equally() -> None:
    path = DDPMPath(10)  # the grid i/10, i = 1 … 10
    for first, low_discrepancy in ((0, False), (1, True)):
        draw = DiscreteUniform(first=first, low_discrepancy=low_discrepancy)
        t = draw(20_000, path, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        steps = (t * 10).round().long()
        torch.testing.assert_close(t * 10, steps.double(), rtol=0, atol=1e-12)
        counts = torch.bincount(steps - first - 1, minlength=10 - first).double()
        assert len(counts) == 10 - first
        assert float((counts / len(t) - 1 / (10 - first)).abs().max()) < 0.01  # ≈ 5 s.e.
    with pytest.raises(ValueError, match=r"num_steps=None: use a discrete path"):
        DiscreteUniform()(4, VEPath())


def test_ncsn_levels_have_one_source() -> None:
    """The sampler anneals at exactly the trained levels; another count is refused early."""
    module = NCSN(Linear2D(), (2,), sigma_min=0.01, sigma_max=10.0, num_levels=4)
    assert module.path.num_steps == 4 and module.sampler.steps is None
    seen = []

    def denoiser(x: Tensor, t: Tensor):
        seen.append(float(t[0]))
        return module.denoiser()(x, t)

    AnnealedLangevinSampler(steps_per_level=1, denoise_final=False)(denoiser, module.path, (3, 2))
    g = torch.Generator().manual_seed(0)
    levels = module.objective.time_sampling(1000, module.path, generator=g)
    assert sorted(set(seen)) == sorted(set(levels.tolist())) == pytest.approx([0, 1 / 3, 2 / 3, 1])
    with pytest.raises(ValueError, match=r"steps=5 levels.*the path's 4 levels"):
        NCSN(Linear2D(), (2,), num_levels=4, sampler=AnnealedLangevinSampler(steps=5))
    with pytest.raises(ValueError, match=r"VEPath is continuous: set steps"):
        AnnealedLangevinSampler().check(VEPath())


def test_ncsn_config_with_other_sampler_levels_fails_at_startup(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = ["fit", "--config", str(ROOT / "configs/toy2d/ncsn.yaml")]
    with cli_error(capsys, r"steps=7 levels.*the path's 20 levels"):
        main([*config, "--model.init_args.sampler.init_args.steps", "7"])


def test_nets_without_the_protocol_are_refused() -> None:
    class Bare(nn.Module):
        def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None):
            return x

    with pytest.raises(ValueError, match=r"Bare is not a DenoiserNet.*num_classes"):
        RectifiedFlow(Bare(), (2,))


@pytest.mark.slow
@pytest.mark.parametrize(
    "make",
    [
        lambda: RectifiedFlow(MLP(hidden=32, depth=1), (2,), sampler=EulerSampler(steps=3)),
        lambda: NCSN(MLP(hidden=32, depth=1), (2,)),
        lambda: ScoreSDE(MLP(hidden=32, depth=1), (2,)),
    ],
    ids=["rectified_flow", "ncsn", "score_sde"],
)
def test_fast_dev_run_on_toy_data(make, tmp_path) -> None:
    module = make()
    data = DiffusionDataModule(Toy2D("8gaussians", num_train=256, num_val=64), global_batch_size=32)
    trainer = L.Trainer(
        fast_dev_run=True, accelerator="cpu", default_root_dir=tmp_path, enable_progress_bar=False
    )
    trainer.fit(module, data)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_sample_rejects_nonpositive_n() -> None:
    with pytest.raises(ValueError, match="number of samples must be > 0"):
        RectifiedFlow(Linear2D(), (2,)).sample(0)
