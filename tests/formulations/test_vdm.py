"""VDM / DDPM: the learned γ, the loss weightings by hand, the bound against exact answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import fit_config
from jsonargparse import lazy_instance
from lightning import Trainer
from torch import Tensor, nn

from diffusion_pl.bound import bound_times, discretized_gaussian_log_prob, variational_bound
from diffusion_pl.cli import main
from diffusion_pl.cli.commands.likelihood import _bound
from diffusion_pl.data import DiffusionDataModule, Digits, Toy2D
from diffusion_pl.formulations import VDM
from diffusion_pl.learned_schedule import LearnedVPPath, d_gamma, gamma
from diffusion_pl.nets import MLP, UNet
from diffusion_pl.objectives import VariationalBoundLoss
from diffusion_pl.oracle import GaussianMixtureOracle
from diffusion_pl.parameterization import EpsilonPrediction, VPrediction, X0Prediction
from diffusion_pl.paths import DDPMPath, VPCosinePath, VPLinearPath, cosine_betas
from diffusion_pl.time_sampling import DiscreteUniform, Uniform
from diffusion_pl.weighting import ELBO, SNR, MinSNR

ROOT = Path(__file__).resolve().parents[2]


class _Affine(nn.Module):
    """A fixed, differentiable stand-in for a network: out = a x + b t (+ a trainable bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.1, -0.2]))

    num_classes = None

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return 0.3 * x + 0.5 * t[:, None] + self.bias

    def check_data_shape(self, data_shape: tuple[int, ...]) -> None:
        pass


def _vdm(**kwargs) -> VDM:
    kwargs.setdefault("path", VPLinearPath())
    kwargs.setdefault("parameterization", EpsilonPrediction())
    return VDM(_Affine(), (2,), **kwargs)


# --- the learned schedule ------------------------------------------------------------------


def _learned(seed: int = 0) -> LearnedVPPath:
    torch.manual_seed(seed)
    path = LearnedVPPath(hidden=32).double()
    with torch.no_grad():  # a visibly non-linear γ̃, so the tests see the network's shape
        path.l3.raw_weight.add_(4.0)
    return path


def test_learned_gamma_is_monotone_with_exact_end_points() -> None:
    path = _learned()
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    g = path.gamma(t).detach()
    assert (g.diff() > 0).all()
    assert g[0].item() == pytest.approx(-13.3, abs=1e-6)
    assert g[-1].item() == pytest.approx(5.0, abs=1e-6)
    with torch.no_grad():
        path.gamma_0.fill_(-10.0)
        path.gamma_1.fill_(7.0)
    g = path.gamma(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(g, torch.tensor([-10.0, 7.0], dtype=torch.float64))
    linear = torch.linspace(-10.0, 7.0, 2001, dtype=torch.float64)
    assert (path.gamma(t).detach() - linear).abs().max() > 0.1  # really not linear


def test_learned_path_derivatives_match_autograd() -> None:
    path = _learned()
    t = torch.linspace(0, 1, 33, dtype=torch.float64, requires_grad=True)
    g, dg = path.gamma_and_slope(t)
    (auto,) = torch.autograd.grad(g.sum(), t, retain_graph=True)
    torch.testing.assert_close(dg, auto)
    for name in ("alpha", "sigma"):
        (auto,) = torch.autograd.grad(getattr(path, name)(t).sum(), t)
        torch.testing.assert_close(getattr(path, f"d_{name}")(t), auto)
    alpha, sigma = path.alpha(t), path.sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha))
    torch.testing.assert_close(path.log_snr(t), -g)
    c = path.coefficients(t, 2)
    torch.testing.assert_close(c.d_sigma[:, 0], path.d_sigma(t))
    # γ' is differentiable in the parameters (the bound's diffusion weight needs it).
    grads = torch.autograd.grad(dg.sum(), [path.gamma_0, path.l2.raw_weight])
    assert all(torch.isfinite(gr).all() and gr.abs().sum() > 0 for gr in grads)


@pytest.mark.parametrize(
    "path", [VPLinearPath(), VPCosinePath(), DDPMPath(1000, cosine_betas)], ids=type
)
def test_gamma_view_of_fixed_paths(path) -> None:
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64, requires_grad=True)
    g = gamma(path, t)
    torch.testing.assert_close(g, torch.log(path.sigma(t) ** 2 / path.alpha(t) ** 2))
    (auto,) = torch.autograd.grad(g.sum(), t)
    torch.testing.assert_close(d_gamma(path, t), auto)
    assert (d_gamma(path, t) > 0).all()


# --- loss weightings against hand computations ---------------------------------------------


def _draws(model: VDM, x0: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """The t and ε a module's ``loss`` draws from ``manual_seed(seed)``, in the same order."""
    g = torch.Generator().manual_seed(seed)
    t = model.objective.time_sampling(x0.shape[0], model.path, generator=g)
    return t, torch.randn(x0.shape, generator=g)


@pytest.mark.parametrize("parameterization", [EpsilonPrediction(), X0Prediction(), VPrediction()])
def test_regression_weightings_by_hand(parameterization) -> None:
    x0 = torch.tensor([[1.0, -2.0], [0.5, 0.0], [-3.0, 4.0], [2.0, 2.0]])
    path = VPLinearPath()
    losses = {}
    for weighting in (SNR(), MinSNR(5.0)):
        model = _vdm(parameterization=parameterization, weighting=weighting)
        losses[type(weighting)] = model.loss(x0, generator=torch.Generator().manual_seed(3))
        t, eps = _draws(model, x0, 3)
    a, s = path.alpha(t)[:, None], path.sigma(t)[:, None]
    x_t = a * x0 + s * eps
    out = 0.3 * x_t + 0.5 * t[:, None] + torch.tensor([0.1, -0.2])
    if isinstance(parameterization, EpsilonPrediction):
        eps_hat = out
    elif isinstance(parameterization, X0Prediction):
        eps_hat = (x_t - a * out) / s
    else:
        eps_hat = s * x_t + a * out
    x0_hat = (x_t - s * eps_hat) / a
    snr = (a / s)[:, 0] ** 2
    mse_eps = ((eps_hat - eps) ** 2).mean(1)
    mse_x0 = ((x0_hat - x0) ** 2).mean(1)
    torch.testing.assert_close(losses[SNR], mse_eps)
    torch.testing.assert_close(losses[SNR], snr * mse_x0)  # the same loss in x₀ form
    torch.testing.assert_close(losses[MinSNR], snr.clamp(max=5.0) * mse_x0)
    assert (snr > 5).any() and (snr < 5).any()  # both sides of the truncation were exercised


def test_elbo_weighting_continuous_by_hand() -> None:
    x0 = torch.tensor([[1.0, -2.0], [0.5, 0.0], [-3.0, 4.0]])
    model = _vdm(weighting=ELBO(), low_discrepancy=False)
    path = model.path
    loss = model.loss(x0, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    t = path.t_min + (path.t_max - path.t_min) * torch.rand(3, generator=g)
    eps, eps0 = torch.randn(x0.shape, generator=g), torch.randn(x0.shape, generator=g)

    def eps_hat(x: Tensor, t: Tensor) -> Tensor:
        return 0.3 * x + 0.5 * t[:, None] + torch.tensor([0.1, -0.2])

    a, s = path.alpha(t)[:, None], path.sigma(t)[:, None]
    # γ'(t) of the VP-linear path: β(t) / (1 − α_t²).
    beta = 0.1 + t * 19.9
    dgamma = beta / (1 - path.alpha(t) ** 2)
    diffusion = 0.5 * 0.999 * dgamma * ((eps_hat(a * x0 + s * eps, t) - eps) ** 2).sum(1)
    t1 = torch.ones(3)
    prior = 0.5 * (path.alpha(t1) / path.sigma(t1)) ** 2 * (x0**2).sum(1)
    t0 = torch.full((3,), 1e-3)
    a0, s0 = path.alpha(t0)[:, None], path.sigma(t0)[:, None]
    z0 = a0 * x0 + s0 * eps0
    mean = (z0 - s0 * eps_hat(z0, t0)) / a0
    scale = s0 / a0
    recon = 0.5 * ((x0 - mean) / scale) ** 2 + torch.log(scale) + 0.5 * math.log(2 * math.pi)
    expected = (prior + diffusion + recon.sum(1)) / (2 * math.log(2))
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-4)


def test_elbo_weighting_discrete_is_vdm_eq_13() -> None:
    """(N/2) expm1(λ_s − λ_t) ‖ε − ε̂‖² equals (N/2)(SNR(s) − SNR(t)) ‖x_0 − x̂_0‖²."""
    path = DDPMPath(1000)
    model = VDM(_Affine(), (2,), path=path, weighting=ELBO())
    assert isinstance(model.objective, VariationalBoundLoss)  # ELBO() trains the whole bound
    t = torch.tensor([0.002, 0.5, 1.0])
    snr = path.log_snr(t.double()).exp()
    snr_s = path.log_snr(t.double() - 0.001).exp()
    # ‖ε − ε̂‖² = SNR(t) ‖x_0 − x̂_0‖², so the ε-weight is (N/2)(SNR(s) − SNR(t)) / SNR(t).
    expected = (999 / 2 * (snr_s - snr) / snr).float()
    torch.testing.assert_close(ELBO()(path, t), expected, rtol=1e-4, atol=0)


def test_ddpm_training_times_are_the_grid() -> None:
    path = DDPMPath(1000)
    regression = VDM(_Affine(), (2,), path=path)
    assert isinstance(regression.objective.time_sampling, DiscreteUniform)
    g = torch.Generator().manual_seed(0)
    times = regression.objective.time_sampling(20_000, path, generator=g)
    steps = (times.double() * 1000).round().long()
    assert set(steps.tolist()) == set(range(1, 1001))
    steps = (bound_times(path, 20_000, generator=g).double() * 1000).round().long()
    assert set(steps.tolist()) == set(range(2, 1001))  # the bound's steps 1 … N need a step s
    assert isinstance(_vdm().objective.time_sampling, Uniform)  # continuous time on VP-linear


def test_the_default_lazy_path_is_discrete_from_the_first_model() -> None:
    """A jsonargparse lazy default runs its __init__ late; VDM still sees DDPM's grid."""
    model = VDM(_Affine(), (2,), path=lazy_instance(DDPMPath, num_steps=100))
    assert isinstance(model.objective.time_sampling, DiscreteUniform)
    assert model.path.num_steps == 100


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="use weighting ELBO"):
        VDM(_Affine(), (2,), path=LearnedVPPath(hidden=4))
    with pytest.raises(ValueError, match="num_levels"):
        _vdm(num_levels=1)


def test_loss_honours_the_given_noise() -> None:
    """eps given to ``loss`` is the z_t noise of the regression and of the bound alike."""
    x0, eps = torch.randn(5, 2), torch.randn(5, 2)
    for weighting in (SNR(), ELBO()):
        model = _vdm(weighting=weighting)
        a = model.loss(x0, generator=torch.Generator().manual_seed(0), eps=eps)
        b = model.loss(x0, generator=torch.Generator().manual_seed(0), eps=-eps)
        c = model.loss(x0, generator=torch.Generator().manual_seed(0), eps=eps)
        assert torch.equal(a, c) and not torch.equal(a, b)


def test_the_bound_trains_the_learned_schedule() -> None:
    torch.manual_seed(0)
    model = VDM(_Affine(), (2,), path=LearnedVPPath(hidden=8), weighting=ELBO())
    names = {name for name, _ in model.named_parameters()}
    assert {"path.gamma_0", "path.gamma_1", "path.l2.raw_weight"} <= names
    x0 = torch.randn(16, 2)
    model.loss(x0, generator=torch.Generator().manual_seed(0)).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# --- the discretized decoder ---------------------------------------------------------------


def test_discretized_gaussian_is_a_distribution_over_the_levels() -> None:
    levels = torch.linspace(-1, 1, 17, dtype=torch.float64)
    for mean, scale in ((0.3, 0.2), (-1.4, 0.05), (0.0, 1e-4), (0.99, 3.0)):
        logp = discretized_gaussian_log_prob(
            levels, torch.full_like(levels, mean), torch.full_like(levels, scale), 17
        )
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    # A middle bin by hand: Φ((x + 1/16 − μ)/s) − Φ((x − 1/16 − μ)/s).
    normal = torch.distributions.Normal(0.3, 0.2)
    x = torch.tensor([0.25], dtype=torch.float64)
    by_hand = normal.cdf(x + 1 / 16) - normal.cdf(x - 1 / 16)
    got = discretized_gaussian_log_prob(x, torch.tensor([0.3]), torch.tensor([0.2]), 17).exp()
    torch.testing.assert_close(got, by_hand.double())
    # Far tails stay finite in log space.
    far = discretized_gaussian_log_prob(x, torch.tensor([-0.9]), torch.tensor([0.01]), 17)
    assert torch.isfinite(far).all() and far.item() < -1000


# --- the bound with the exact denoiser -----------------------------------------------------

# Expected gap E[bound − (−log p_0(x))] in nats on 8gaussians (D = 2), measured with 512k
# draws: linear γ (learned path at init) −0.01 ± 0.02, VP-linear −0.08 ± 0.06 (both ~0: the
# continuous bound is tight up to the prior and decoder), DDPM T = 1000 discrete 0.82 ± 0.08
# (its first few steps near the data are large in log-SNR). Bounds below are ≈ 3 SE wide.
BOUND_CASES = {
    "linear_gamma_continuous": (1000, 128, (-0.15, 0.2)),
    "vp_linear_continuous": (1000, 128, (-0.45, 0.5)),
    "ddpm_1000_discrete": (128, 999, (0.3, 1.5)),
}


def _bound_path(name: str):
    if name.startswith("linear_gamma"):
        torch.manual_seed(0)
        return LearnedVPPath(hidden=16).double().requires_grad_(False)
    return VPLinearPath() if name.startswith("vp_linear") else DDPMPath(1000)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BOUND_CASES))
def test_bound_with_exact_denoiser_is_above_the_true_nll(name: str) -> None:
    n, repeats, (low, high) = BOUND_CASES[name]
    path = _bound_path(name)
    spec = Toy2D("8gaussians").mixture()
    oracle = GaussianMixtureOracle(path, spec)
    g = torch.Generator().manual_seed(0)
    x, _ = spec.sample(n, g)
    # Repeating x spreads each example's low-discrepancy times over [t_min, t_max] evenly.
    bound = variational_bound(oracle, path, x.repeat(repeats, 1), num_levels=None, generator=g)
    gap = bound.nats.view(repeats, n).mean(0) - (-oracle.log_prob(x, 0.0))
    assert low < gap.mean().item() < high, f"gap {gap.mean():.3f} ± {gap.std() / n**0.5:.3f}"


@pytest.mark.slow
def test_the_bound_summed_over_all_steps_has_no_variance_over_t() -> None:
    """On DDPM's 999 steps the sum over every step (the exact oracle as the net) keeps the
    bound's gap to the true NLL, and redrawing its noise moves it far less than redrawing the
    one-sample estimate (measured: 1.8 against 32 nats per example); both estimate the same
    number."""
    path = DDPMPath(1000)
    spec = Toy2D("8gaussians").mixture()
    oracle = GaussianMixtureOracle(path, spec)
    g = torch.Generator().manual_seed(0)
    x, _ = spec.sample(64, g)
    nll = -oracle.log_prob(x, 0.0)
    a, b = (
        variational_bound(oracle, path, x, num_levels=None, generator=g, all_steps=True).nats
        for _ in range(2)
    )
    one = variational_bound(
        oracle, path, x.repeat(16, 1), num_levels=None, generator=g, low_discrepancy=False
    ).nats.view(16, 64)
    for draw in (a, b):
        assert 0.3 < (draw - nll).mean().item() < 1.5
    assert (a - b).std() / math.sqrt(2) < 0.15 * one.std(0).mean()
    assert abs(a.mean() - one.mean()) < 3 * one.std() / math.sqrt(one.numel())
    with pytest.raises(ValueError, match="VPLinearPath is continuous: its diffusion loss is an"):
        variational_bound(oracle, VPLinearPath(), x, num_levels=None, all_steps=True)


def test_the_likelihood_commands_bound_holds_no_graph() -> None:
    """``likelihood --method bound`` sums T network calls per example: with autograd on, each
    call's graph stayed alive until the sum was done (24 GB for 100 digits over DDPM's 999
    steps, killed); the command evaluates without gradients."""
    model = VDM(_Affine(), (2,), path=DDPMPath(20)).eval()
    grad_on = []
    model.net.register_forward_hook(lambda *_: grad_on.append(torch.is_grad_enabled()))
    result = _bound(model, torch.randn(6, 2), None, 3, torch.Generator().manual_seed(0))
    assert len(grad_on) == 4 and not any(grad_on)  # 2 batches x (19 steps in one call + the end)
    assert result["steps"] == 19 and math.isfinite(result["bpd"])


# --- end to end through the CLI ------------------------------------------------------------


def test_toy2d_config_names_its_dataset() -> None:
    assert "name: 8gaussians" in (ROOT / "configs/toy2d/vdm.yaml").read_text()


@pytest.mark.slow
def test_fit_and_sample_toy2d_vdm(tmp_path: Path) -> None:
    ckpt = fit_config(
        ROOT / "configs/toy2d/vdm.yaml",
        tmp_path,
        *"--trainer.max_steps 6 --trainer.check_val_every_n_epoch 1 --trainer.limit_val_batches 1"
        " --data.global_batch_size 64 --data.source.init_args.num_train 256"
        " --data.source.init_args.num_val 64 --model.init_args.net.init_args.hidden 32"
        " --model.init_args.sampler.init_args.steps 5"
        " --model.init_args.path diffusion_pl.paths.DDPMPath".split(),
    )
    out = tmp_path / "s.npz"
    main(f"sample --ckpt_path {ckpt} --num_samples 33 --seed 1 --output {out} --steps 4".split())
    samples = np.load(out)["samples"]
    assert samples.shape == (33, 2) and np.isfinite(samples).all()
    record = tmp_path / "bound.json"  # DDPM's 999 steps, each summed
    main(f"likelihood --ckpt_path {ckpt} --method bound --num_samples 8 --output {record}".split())
    bound = json.loads(record.read_text())
    assert bound["sampler"] == "bound" and bound["steps"] == 999 and bound["nfe"] == 1000
    assert math.isfinite(bound["bpd"]) and bound["bpd_stderr"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("source", ["toy", "digits"])
def test_validation_logs_the_bound_in_bits_per_dim(source: str) -> None:
    if source == "toy":
        data = DiffusionDataModule(
            Toy2D("8gaussians", num_train=256, num_val=256), global_batch_size=128
        )
        net = MLP(dim=2, hidden=32, depth=1)
    else:
        data = DiffusionDataModule(Digits(), global_batch_size=64)
        net = UNet(
            1,
            image_size=8,
            base_channels=32,
            channel_mult=(1,),
            num_res_blocks=1,
            attn_resolutions=(),
        )
    model = VDM(net, data.data_shape, path=DDPMPath(100), num_levels=data.num_levels)
    trainer = Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, limit_val_batches=2
    )
    (metrics,) = trainer.validate(model, datamodule=data, verbose=False)
    assert set(metrics) == {"val/loss", "val/bpd"}
    assert math.isfinite(metrics["val/bpd"])
    if source == "digits":  # a bound on a discrete NLL is positive
        assert metrics["val/bpd"] > 0
