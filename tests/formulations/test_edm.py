"""EDM: the preconditioning recovers the exact denoiser, its target has unit variance, the
log-normal noise levels have the paper's moments, and the toy recipe trains."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from mixture_checks import mixture_oracle
from torch import Tensor, nn

from diffusion_pl.data import Toy2D
from diffusion_pl.denoiser import Denoiser
from diffusion_pl.formulations import EDM
from diffusion_pl.nets import MLP
from diffusion_pl.oracle import GaussianMixtureOracle
from diffusion_pl.parameterization import EDMPreconditioning
from diffusion_pl.paths import LinearPath, NoisePath, VEPath, VPLinearPath
from diffusion_pl.samplers.grids import karras_sigmas
from diffusion_pl.time_sampling import LogNormal
from diffusion_pl.weighting import EDM as EDMWeighting

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
PATHS = [VEPath(0.002, 80.0), VPLinearPath(), LinearPath()]
IDS = ["ve", "vp", "linear"]


def _times_of_sigmas(path: NoisePath, sigmas: list[float]) -> Tensor:
    """The times t with σ_t/α_t = σ̃ for each σ̃, float64."""
    return path.time_of_log_snr(-2.0 * torch.log(torch.tensor(sigmas, dtype=torch.float64)))


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_exact_target_through_the_preconditioning_gives_the_oracle(path: NoisePath) -> None:
    """predict(target(x̂_0, ε̂)) = (x̂_0, ε̂) of the exact mixture denoiser, to 1e-10 in float64,
    also at the linear path's ends t = 0 (σ̃ = 0) and t = 1 (σ̃ = ∞)."""
    oracle, precond = mixture_oracle(path), EDMPreconditioning(sigma_data=0.5)
    times = [0.0, 0.05, 0.3, 0.6, 0.9, 1.0] if isinstance(path, LinearPath) else [0.05, 0.3, 0.9]
    x = 3.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in times:
        tb = torch.full((64,), t, dtype=torch.float64)
        c = path.coefficients(tb, 2)
        exact = oracle(x, tb)
        got = precond.predict(precond.target(exact.x0, exact.eps, c), x, c)
        torch.testing.assert_close(got.x0, exact.x0, rtol=0, atol=1e-10)
        if float(path.sigma(tb[0])) > 0:  # ε̂ is undefined where σ = 0
            torch.testing.assert_close(got.eps, exact.eps, rtol=0, atol=1e-10)


class ExactF(nn.Module):
    """The net F that makes D the mixture's exact denoiser, reading x and σ̃ from what it sees
    (c_in x̃ and c_noise = ¼ ln σ̃) exactly as a trained net must."""

    num_classes = None

    def __init__(self, path: NoisePath, precond: EDMPreconditioning) -> None:
        super().__init__()
        self.path, self.precond, self.oracle = path, precond, mixture_oracle(path)

    def forward(self, x_in: Tensor, noise_labels: Tensor, class_labels: Tensor | None) -> Tensor:
        t = self.path.time_of_log_snr(-8.0 * noise_labels)
        c = self.path.coefficients(t, x_in.ndim)
        x = x_in / self.precond.input_scale(c)
        exact = self.oracle(x, t)
        return self.precond.target(exact.x0, exact.eps, c)


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_denoiser_feeds_the_net_c_in_x_and_c_noise(path: NoisePath) -> None:
    precond = EDMPreconditioning(sigma_data=0.5)
    denoiser = Denoiser(ExactF(path, precond), path, precond)
    x = 3.0 * torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for t in _times_of_sigmas(path, [0.01, 0.5, 5.0, 60.0]):
        torch.testing.assert_close(
            denoiser(x, t).x0, mixture_oracle(path)(x, t).x0, rtol=0, atol=1e-10
        )


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_effective_target_has_unit_variance_and_unit_weight(path: NoisePath) -> None:
    """x_0 ~ N(0, σ_d²): Var[(x_0 − c_skip x̃)/c_out] = 1 at every σ̃ (200,000 draws: the
    sample variance's standard error is √(2/n) ≈ 0.003, tolerance 0.015); and the weight
    λ(σ̃) c_out², w(t) · k², is exactly 1."""
    sigma_data, n = 0.7, 200_000
    precond, weighting = EDMPreconditioning(sigma_data), EDMWeighting(sigma_data)
    g = torch.Generator().manual_seed(2)
    sigmas = [0.002, 0.05, 0.5, 0.7, 3.0, 80.0]
    for t in _times_of_sigmas(path, sigmas):
        x0 = sigma_data * torch.randn(n, generator=g, dtype=torch.float64)
        eps = torch.randn(n, generator=g, dtype=torch.float64)
        c = path.coefficients(t.expand(n), 1)
        target = precond.target(x0, eps, c)
        assert abs(float(target.var()) - 1.0) < 0.015
        unit = weighting(path, t[None]) * weighting.error_scale(precond, path.coefficients(t, 1))
        torch.testing.assert_close(unit, torch.ones(1, dtype=torch.float64), rtol=1e-12, atol=0)


def test_noise_label_is_a_quarter_log_sigma_clamped_to_the_sampling_range() -> None:
    path, precond = LinearPath(), EDMPreconditioning(0.5, sigma_min=0.002, sigma_max=80.0)
    t = torch.tensor([0.0, 0.2, 0.5, 1.0], dtype=torch.float64)
    labels = precond.noise_label(t, path.coefficients(t, 2))
    expected = [math.log(0.002) / 4, math.log(0.25) / 4, 0.0, math.log(80.0) / 4]
    torch.testing.assert_close(labels, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("path", [VEPath(0.002, 80.0), VPLinearPath(t_min=1e-5)], ids=["ve", "vp"])
def test_log_normal_has_the_papers_moments(path: NoisePath) -> None:
    """ln σ̃ of the drawn times has mean P_mean and std P_std (200,000 draws, standard errors
    0.003 and 0.002, tolerance 0.015). VP with t_min = 1e-5 (σ̃ ≥ 0.003) so that the clamp to
    the path's range moves no measurable mass."""
    t = LogNormal(p_mean=-1.2, p_std=1.2)(
        200_000, path, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    assert float(t.min()) >= path.t_min and float(t.max()) <= path.t_max
    log_sigma = -0.5 * path.log_snr(t)
    assert abs(float(log_sigma.mean()) + 1.2) < 0.015
    assert abs(float(log_sigma.std()) - 1.2) < 0.015


def test_log_normal_is_clamped_to_the_path_and_refuses_bad_std() -> None:
    path = VPLinearPath()  # σ̃(t_min = 1e-3) ≈ 0.01: about 0.2 % of draws are below
    t = LogNormal()(100_000, path, generator=torch.Generator().manual_seed(4))
    assert t.dtype == torch.float32 and float(t.min()) == pytest.approx(1e-3)
    assert 0.001 < float((t == t.min()).double().mean()) < 0.004
    with pytest.raises(ValueError, match="p_std must be > 0"):
        LogNormal(p_std=0.0)


def test_default_sampler_is_edms_heun_at_35_nfe() -> None:
    module = EDM(MLP(hidden=16, depth=1), (2,))
    ts = module.sampler.time_grid(module.path, None)
    torch.testing.assert_close(module.path.sigma(ts), karras_sigmas(0.002, 80.0, 17))
    precond = module.parameterization
    denoiser = Denoiser(ExactF(module.path, precond), module.path, precond)
    module.sampler(denoiser, module.path, (4, 2), generator=torch.Generator().manual_seed(5))
    assert denoiser.nfe == 35


def test_bad_preconditioning_settings_fail_early() -> None:
    with pytest.raises(ValueError, match="sigma_data must be > 0"):
        EDMPreconditioning(sigma_data=0.0)
    with pytest.raises(ValueError, match="0 < sigma_min < sigma_max"):
        EDMPreconditioning(sigma_min=1.0, sigma_max=0.5)


@pytest.mark.slow
def test_toy_config_trains() -> None:
    """The toy config's σ_d (the data's std, checked here) makes the untrained loss 1, and a
    few hundred Adam steps at its learning rate close more than a third of the gap to the
    exact optimum, the loss of the mixture's exact denoiser on the same (t, ε) draws."""
    config = yaml.safe_load((ROOT / "configs/toy2d/edm.yaml").read_text())["model"]["init_args"]
    data = Toy2D("8gaussians", num_train=20_000, num_val=2000)
    train, val = data.load("train").tensors[0], data.load("val").tensors[0]
    assert config["sigma_data"] == pytest.approx(float(train.std()), rel=0.02)
    torch.manual_seed(0)
    module = EDM(MLP(hidden=64, depth=2), (2,), sigma_data=config["sigma_data"])
    optimizer = torch.optim.Adam(module.parameters(), lr=config["optimizer"]["init_args"]["lr"])

    def val_loss() -> float:
        with torch.no_grad():
            return float(module.loss(val, generator=torch.Generator().manual_seed(6)).mean())

    g = torch.Generator().manual_seed(6)  # the (t, ε) val_loss draws, in its order
    t = module.objective.time_sampling(len(val), module.path, generator=g).double()
    eps = torch.randn(val.shape, generator=g).double()
    x0, c = val.double(), module.path.coefficients(t, 2)
    exact = GaussianMixtureOracle(module.path, data.mixture())(c.alpha * x0 + c.sigma * eps, t)
    precond = module.parameterization
    optimum = float(
        ((precond.target(exact.x0, exact.eps, c) - precond.target(x0, eps, c)) ** 2).mean()
    )
    before = val_loss()
    assert before == pytest.approx(1.0, abs=0.05)
    g = torch.Generator().manual_seed(7)
    for _ in range(300):
        batch = train[torch.randint(len(train), (256,), generator=g)]
        optimizer.zero_grad()
        module.loss(batch, generator=g).mean().backward()
        optimizer.step()
    assert val_loss() < before - (before - optimum) / 3
