"""Each formulation's loss against a hand computation; fast_dev_run of each on toy data."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import Tensor, nn

from diffusion_pl.data import DiffusionDataModule, Toy2D
from diffusion_pl.formulations import NCSN, RectifiedFlow, Reflow, ScoreSDE
from diffusion_pl.nets import MLP
from diffusion_pl.paths import VEPath, VPLinearPath
from diffusion_pl.samplers import EulerSampler


class Linear2D(nn.Module):
    """A fixed, hand-checkable 'network': out = 0.5 x + noise_label."""

    num_classes = None

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None) -> Tensor:
        return 0.5 * x + noise_labels[:, None]


def _draw(module, x0: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """The (t, ε) that ``module.loss`` draws from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    t = module.sample_time(x0.shape[0], g)
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
    module = RectifiedFlow(Linear2D(), (2,), time_distribution="logit_normal", logit_mean=1.0)
    t = module.sample_time(20000, torch.Generator().manual_seed(0))
    assert float(t.min()) > 0 and float(t.max()) < 1
    assert float(t.median()) == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.01)


def test_reflow_regresses_on_the_coupled_noise() -> None:
    module = Reflow(Linear2D(), (2,))
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(0)
    t = module.sample_time(6, g)
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


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_score_sde_weightings_by_hand(weighting: str) -> None:
    path = VPLinearPath()
    module = ScoreSDE(Linear2D(), (2,), path=path, weighting=weighting)
    t, eps = _draw(module, X0, 0)
    assert float(t.min()) >= module.t_eps
    alpha, sigma = path.alpha(t)[:, None], path.sigma(t)[:, None]
    out = 0.5 * (alpha * X0 + sigma * eps) + t[:, None]
    weight = torch.ones_like(t) if weighting == "sigma2" else path.g2(t) / sigma[:, 0] ** 2
    # λ(t)‖s + ε/σ‖² with s = out/σ: σ² → ‖out + ε‖², g² → g²/σ² ‖out + ε‖².
    expected = weight * (out + eps).pow(2).mean(1)
    torch.testing.assert_close(
        module.loss(X0, generator=torch.Generator().manual_seed(0)), expected
    )


def test_ve_likelihood_weight_is_constant() -> None:
    module = ScoreSDE(Linear2D(), (2,), path=VEPath(0.01, 50.0), weighting="likelihood")
    t = torch.linspace(0.1, 0.9, 5)
    torch.testing.assert_close(module.loss_weight(t), torch.full((5,), 2 * math.log(5000.0)))


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
    data = DiffusionDataModule(Toy2D("8gaussians", num_train=256, num_val=64), batch_size=32)
    trainer = L.Trainer(
        fast_dev_run=True, accelerator="cpu", default_root_dir=tmp_path, enable_progress_bar=False
    )
    trainer.fit(module, data)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_sample_rejects_nonpositive_n() -> None:
    with pytest.raises(ValueError, match="number of samples must be > 0"):
        RectifiedFlow(Linear2D(), (2,)).sample(0)
