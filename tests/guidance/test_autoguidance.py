"""Autoguidance proven on exact mixture models, its refusals, and the CLI and YAML around it.

Main model: the exact model of the test mixture (weights 0.8 / 0.2 at (∓4, 0), std s = 0.5);
guide: the exact model of the same means and weights with std g = 1 (a "worse", broader model).
Fed as networks (``OracleNet``), they separate the guidance code from training:

- the guided pair must equal D_g + w (D_m − D_g) computed here by hand from the mixture formulas
  (float64, 1e-8);
- at w = 1 the sampler must return the main model's samples, at w = 0 the guide's, on every
  sampler kind (ODE, SDE, ancestral, Langevin, multistep, consistency), 1e-6;
- at w > 1 the probability-flow ODE of one Gaussian N(μ, s²) guided by N(μ, g²) is linear and
  sends the prior sample x_1 to μ + s^w g^{1−w} x_1 (docs/math.md, Sec. 8): checked per sample
  (Heun, 50 steps, 2e-3); on the two-mode mixture the module's samples must follow the closed-form
  guided ODE solved by tight RK45 (99 % of samples within 0.01), and each mode's spread shrinks
  to about s^w g^{1−w} while the mode weights stay 0.8 / 0.2 (tolerances at the test).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import cli_error, fit_config, write_config
from mixture_checks import (
    MEANS,
    MIXTURE,
    PAIR_IDS,
    PAIRS,
    WEIGHTS,
    IsotropicMixtureOracle,
    OracleNet,
    mode_weights,
    seeded,
)
from run_helpers import toy_classifier_checkpoint
from torch import Tensor

from diffusion_pl.callbacks import FID, SampleGrid
from diffusion_pl.checkpoints import Checkpoint
from diffusion_pl.cli import main
from diffusion_pl.data import DiffusionDataModule, Digits
from diffusion_pl.denoiser import Denoiser
from diffusion_pl.formulations import (
    EDM,
    NCSN,
    VDM,
    ConsistencyModel,
    DiffusionModule,
    MeanFlow,
    NoisyClassifier,
    RectifiedFlow,
    ScoreSDE,
    check_guide,
)
from diffusion_pl.guidance import Autoguidance
from diffusion_pl.metrics import FIDEvaluator
from diffusion_pl.mixture import GaussianMixtureSpec
from diffusion_pl.nets import MLP, MLPClassifier, UNet
from diffusion_pl.parameterization import Parameterization, Prediction
from diffusion_pl.paths import LinearPath, NoisePath
from diffusion_pl.samplers import (
    ConsistencySampler,
    DDPMSampler,
    DPMSolverSampler,
    EDMSampler,
    EulerSampler,
    HeunSampler,
    PCSampler,
    RK45Sampler,
)
from diffusion_pl.samplers.langevin import AnnealedLangevinSampler

pytestmark = pytest.mark.usefixtures("one_thread")

S, G = 0.5, 1.0  # the main model's and the guide's component std
BROAD = GaussianMixtureSpec.isotropic(MEANS.tolist(), G, WEIGHTS.tolist())


def closed_form_pair(
    x: Tensor, t: float, path: NoisePath, mixture: GaussianMixtureSpec, labels: Tensor | None
) -> Prediction:
    """E[x_0 | x_t] and E[ε | x_t] of an isotropic mixture Σ π_k N(μ_k, s_k² I), by hand.

    With c_k = α² s_k² + σ², r_k ∝ π_k N(x; α μ_k, c_k I) (one-hot at a label y < K),
    x̂_0 = Σ_k r_k (μ_k + α s_k² / c_k (x − α μ_k)) and ε̂ = −σ ∇ log p_t = σ Σ_k r_k (x − α μ_k)
    / c_k (finite at σ = 0, unlike (x − α x̂_0) / σ).
    """
    tt = torch.full((len(x),), t, dtype=torch.float64)
    alpha, sigma = path.alpha(tt)[:, None], path.sigma(tt)[:, None]
    stds, means, k = mixture.stds, mixture.means, mixture.num_components
    var = alpha**2 * stds**2 + sigma**2  # [B, K]
    diff = x[:, None, :] - alpha[:, :, None] * means  # [B, K, D]
    log_r = torch.log(mixture.weights) - 0.5 * (diff**2).sum(-1) / var - torch.log(var)  # D = 2
    r = torch.softmax(log_r, dim=1)
    if labels is not None:
        labelled = labels < k
        r[labelled] = torch.nn.functional.one_hot(labels[labelled], k).double()
    x0 = (r[..., None] * (means + (alpha * stds**2 / var)[..., None] * diff)).sum(1)
    eps = sigma * (r[..., None] * diff / var[..., None]).sum(1)
    return Prediction(x0=x0, eps=eps)


@pytest.mark.parametrize(("param", "path"), PAIRS, ids=PAIR_IDS)
def test_autoguided_pair_is_the_closed_form_mix(param: Parameterization, path: NoisePath) -> None:
    """D_g + w (D_m − D_g) for x̂_0 and ε̂, each model with its label (2 = ∅), at w = 2.5."""

    def denoiser(mixture: GaussianMixtureSpec, labels: Tensor) -> Denoiser:
        return Denoiser(
            OracleNet(IsotropicMixtureOracle(path, mixture), param), path, param, labels
        )

    x = 3 * torch.randn(24, 2, dtype=torch.float64, generator=seeded(0))
    labels, w = torch.arange(24) % 3, 2.5
    guided = Autoguidance(denoiser(MIXTURE, labels), denoiser(BROAD, labels), w)
    for t in (0.2, 0.7):
        pred = guided(x, t)
        main, guide = (
            closed_form_pair(x, t, path, MIXTURE, labels),
            closed_form_pair(x, t, path, BROAD, labels),
        )
        for name in ("x0", "eps"):
            expected = getattr(guide, name) + w * (getattr(main, name) - getattr(guide, name))
            torch.testing.assert_close(getattr(pred, name), expected, rtol=1e-8, atol=1e-8)
        c = path.coefficients(torch.full((24,), t, dtype=torch.float64), 2)
        torch.testing.assert_close(c.alpha * pred.x0 + c.sigma * pred.eps, x)


def exact_model(
    build: Callable[..., DiffusionModule], mixture: GaussianMixtureSpec
) -> DiffusionModule:
    """The formulation ``build(net)`` with the exact model of ``mixture`` as its net, float64."""
    probe = build(MLP(hidden=4, depth=1))  # its path and parameterization
    oracle = IsotropicMixtureOracle(probe.path, mixture)
    return build(OracleNet(oracle, probe.parameterization)).double()


SAMPLING = {
    "rectified_flow-euler": lambda net: RectifiedFlow(net, (2,), sampler=EulerSampler(steps=20)),
    "rectified_flow-edm_churn": lambda net: RectifiedFlow(
        net, (2,), sampler=EDMSampler(steps=10, s_churn=20.0)
    ),
    "rectified_flow-consistency": lambda net: RectifiedFlow(
        net, (2,), sampler=ConsistencySampler(steps=3)
    ),
    "score_sde-pc": lambda net: ScoreSDE(net, (2,), sampler=PCSampler(steps=20)),
    "score_sde-dpmpp_2m": lambda net: ScoreSDE(net, (2,), sampler=DPMSolverSampler(steps=10)),
    "vdm-ddpm": lambda net: VDM(net, (2,), sampler=DDPMSampler(steps=20)),
    "ncsn-langevin": lambda net: NCSN(
        net, (2,), sigma_max=10.0, num_levels=5, sampler=AnnealedLangevinSampler(steps_per_level=4)
    ),
}


@pytest.mark.parametrize("name", sorted(SAMPLING))
def test_scale_one_samples_the_main_model_and_zero_the_guide(name: str) -> None:
    """w = 1 gives the main model's samples and w = 0 the guide's (same seeds, 1e-6), without
    labels and with labels (each model sees them)."""
    main, guide = exact_model(SAMPLING[name], MIXTURE), exact_model(SAMPLING[name], BROAD)
    for labels in (None, torch.arange(200) % 2):
        plain = {"class_labels": labels, "guidance_scale": None if labels is None else 1.0}
        for w, alone in ((1.0, main), (0.0, guide)):
            expected = alone.sample(200, generator=seeded(3), **plain)
            x = main.sample(
                200, generator=seeded(3), class_labels=labels, guidance_scale=w, guide=guide
            )
            torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)


GAUSSIAN_MEAN = [[1.0, -1.0]]


@pytest.mark.parametrize("w", [2.0, 3.0])
def test_guided_flow_scales_a_gaussian_by_s_to_the_w_times_g_to_the_one_minus_w(w: float) -> None:
    """One component, main N(μ, 0.5²), guide N(μ, 1): x_0 = μ + s^w g^{1−w} x_1 per sample."""

    def build(net):
        return RectifiedFlow(net, (2,), sampler=HeunSampler(steps=50))

    main = exact_model(build, GaussianMixtureSpec.isotropic(GAUSSIAN_MEAN, S))
    guide = exact_model(build, GaussianMixtureSpec.isotropic(GAUSSIAN_MEAN, G))
    x = main.sample(500, generator=seeded(4), guide=guide, guidance_scale=w)
    x1 = main.path.prior_sample((500, 2), generator=seeded(4), dtype=torch.float64)
    expected = torch.tensor(GAUSSIAN_MEAN, dtype=torch.float64) + S**w * G ** (1 - w) * x1
    torch.testing.assert_close(x, expected, rtol=0, atol=2e-3)


def test_guided_mixture_follows_the_closed_form_ode_and_tightens_each_mode() -> None:
    """Two modes at w = 2: module samples (Heun, 50 steps) = tight RK45 on the closed-form
    guided pair, per sample (99 % within 0.01); each mode's std ≈ s^w g^{1−w} = 0.25 (±0.03,
    about 5 standard errors of the small mode's; unguided it is 0.5, and the tilted density
    p_main^w p_guide^{1−w} would give 0.378), mode weights 0.8 / 0.2 (±0.02, 3 s.e.)."""
    w, n = 2.0, 4000

    def build(net):
        return RectifiedFlow(net, (2,), sampler=HeunSampler(steps=50))

    main, guide = exact_model(build, MIXTURE), exact_model(build, BROAD)
    x = main.sample(n, generator=seeded(5), guide=guide, guidance_scale=w)

    def closed_form(z: Tensor, t: Tensor | float) -> Prediction:
        t = float(torch.as_tensor(t).reshape(-1)[0])
        a, b = (closed_form_pair(z, t, main.path, m, None) for m in (MIXTURE, BROAD))
        return Prediction(x0=b.x0 + w * (a.x0 - b.x0), eps=b.eps + w * (a.eps - b.eps))

    reference = RK45Sampler(rtol=1e-8, atol=1e-8)(
        closed_form, main.path, (n, 2), generator=seeded(5), dtype=torch.float64
    )
    # A few trajectories start near the ridge between the modes, where the guided flow splits
    # them and any two solvers part: 22 of 4000 samples differ by more than 0.01 (none lands
    # in another mode); the median difference is 2.5e-4.
    error = (x - reference).abs().amax(1)
    assert float((error < 1e-2).double().mean()) >= 0.99, error.quantile(0.99)
    modes = MIXTURE.assign(reference)
    assert float((MIXTURE.assign(x) == modes).double().mean()) >= 0.998
    torch.testing.assert_close(mode_weights(IsotropicMixtureOracle(main.path, MIXTURE), reference),
                               WEIGHTS, rtol=0, atol=0.02)  # fmt: skip
    predicted = torch.full((2,), S**w * G ** (1 - w), dtype=torch.float64)
    for k in range(2):
        xk = reference[modes == k]
        torch.testing.assert_close(xk.mean(0), MEANS[k], rtol=0, atol=0.03)
        torch.testing.assert_close(xk.std(0), predicted, rtol=0, atol=0.03)


# --- refusals ----------------------------------------------------------------------------------
def _rf(**net) -> RectifiedFlow:
    return RectifiedFlow(MLP(hidden=8, depth=1, **net), (net.get("dim", 2),))


def test_check_guide_refuses_another_shape_path_conditioning_or_kind() -> None:
    check_guide(_rf(), _rf())
    with pytest.raises(ValueError, match=r"the guide was trained on data of shape \(3,\) but the "
                       r"model on \(2,\)"):  # fmt: skip
        check_guide(_rf(), _rf(dim=3))
    score_sde = ScoreSDE(MLP(hidden=8, depth=1), (2,))
    with pytest.raises(ValueError, match=r"the guide was trained on VPLinearPath but the model "
                       r"samples on LinearPath \(alpha_t differs\)"):  # fmt: skip
        check_guide(_rf(), score_sde)
    with pytest.raises(
        ValueError, match="guide is unconditional but the model is conditional on 2"
    ):
        check_guide(_rf(num_classes=2), _rf())
    with pytest.raises(
        ValueError, match="conditional on 3 classes but the model is conditional on 2"
    ):
        check_guide(_rf(num_classes=2), _rf(num_classes=3))
    edm, cm = EDM(MLP(hidden=8, depth=1), (2,)), ConsistencyModel(MLP(hidden=8, depth=1), (2,))
    with pytest.raises(ValueError, match=r"the model \(ConsistencyModel\) is a consistency model.*"
                       r"the guide \(EDM\) predicts the posterior mean"):  # fmt: skip
        check_guide(cm, edm)


def test_sample_refuses_a_bad_guide_request_before_any_network_call() -> None:
    main, guide = _rf(), _rf()
    calls = []
    guide.net.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(ValueError, match="autoguidance needs its scale w: pass guidance_scale"):
        main.sample(2, guide=guide)
    classifier = NoisyClassifier(MLPClassifier(hidden=8, depth=1), (2,), LinearPath())
    with pytest.raises(ValueError, match=r"autoguidance .* and classifier guidance .* cannot be"):
        main.sample(2, guide=guide, guidance_scale=2.0, class_labels=torch.tensor([0, 1]),
                    classifier=classifier)  # fmt: skip
    with pytest.raises(ValueError, match="trained on VPLinearPath"):
        main.sample(2, guide=ScoreSDE(MLP(hidden=8, depth=1), (2,)), guidance_scale=2.0)
    with pytest.raises(ValueError, match=r"unconditional.*class labels need a class-conditional"):
        main.sample(2, guide=guide, guidance_scale=2.0, class_labels=torch.tensor([0, 1]))
    assert not calls


def test_meanflow_jumps_refuse_a_guide_and_its_velocity_is_guided_by_ode_samplers() -> None:
    meanflow = MeanFlow(MLP(hidden=8, depth=1, num_noise_labels=2), (2,))
    with pytest.raises(ValueError, match=r"average velocity.*autoguidance mix instantaneous"):
        meanflow.sample(3, guide=_rf(), guidance_scale=2.0)
    x = meanflow.sample(3, guide=_rf(), guidance_scale=2.0, sampler=EulerSampler(steps=2))
    assert x.shape == (3, 2) and torch.isfinite(x).all()
    cm = ConsistencyModel(MLP(hidden=8, depth=1), (2,))
    other = ConsistencyModel(MLP(hidden=4, depth=1), (2,))
    assert torch.isfinite(cm.sample(3, guide=other, guidance_scale=2.0)).all()


# --- the CLI and YAML ------------------------------------------------------------------------
SMALL_NET = {"class_path": "diffusion_pl.nets.MLP", "init_args": {"hidden": 16, "depth": 1}}
CHECKPOINT = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
              "init_args": {"save_last": True}}  # fmt: skip
TRAINER = {"accelerator": "cpu", "enable_progress_bar": False, "limit_val_batches": 0}


def _toy_fit(root: Path, steps: int, callbacks: list[dict], **model) -> Path:
    """The toy rectified flow config, ``steps`` steps on 2,048 points, under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    config = write_config("configs/toy2d/rectified_flow.yaml", root / "toy.yaml",
                          {**TRAINER, "max_steps": steps}, [CHECKPOINT, *callbacks],
                          **model)  # fmt: skip
    return fit_config(config, root, "--data.source.init_args.num_train", "2048")


def checkpoint(path: Path) -> dict[str, object]:
    """The YAML of a teacher read from the checkpoint ``path``."""
    return {"class_path": "diffusion_pl.checkpoints.Checkpoint", "init_args": {"path": str(path)}}


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A guide (16-unit net, 5 steps), a main run (64 units, 20 steps) whose sample grid is
    autoguided by it from YAML, and a score-SDE run on another path (1 step)."""
    root = tmp_path_factory.mktemp("autoguide")
    guide = _toy_fit(root / "guide", 5, [], net=SMALL_NET)
    grid = {
        "class_path": "diffusion_pl.callbacks.SampleGrid",
        "init_args": {"num_samples": 200, "guide": checkpoint(guide), "guidance_scale": 2.0},
    }
    main_net = {**SMALL_NET, "init_args": {"hidden": 64, "depth": 2}}
    model = _toy_fit(root / "main", 20, [grid], net=main_net)  # fmt: skip
    other = write_config("configs/toy2d/score_sde.yaml", root / "sde.yaml",
                         {**TRAINER, "max_steps": 1}, [CHECKPOINT], net=SMALL_NET)  # fmt: skip
    sde = fit_config(other, root / "sde", "--data.source.init_args.num_train", "2048")
    return {"guide": guide, "main": model, "sde": sde, "root": root}


@pytest.mark.slow
def test_sample_command_autoguides_and_refuses_what_cannot_guide(
    toy_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert list((toy_runs["root"] / "main").rglob("samples/final.png"))  # the guided grid
    common = f"sample --ckpt_path {toy_runs['main']} --num_samples 64 --steps 8 --seed 1"
    main(f"{common} --output {tmp_path / 'plain'}".split())
    capsys.readouterr()
    main(f"{common} --output {tmp_path / 'w2'} --guide_ckpt {toy_runs['guide']} "
         "--guidance_scale 2".split())  # fmt: skip
    assert "16 network evaluations per sample (8 of them the guide's)" in capsys.readouterr().out
    main(f"{common} --output {tmp_path / 'w1'} --guide_ckpt {toy_runs['guide']} "
         "--guidance_scale 1".split())  # fmt: skip
    plain, w1, w2 = (np.load(tmp_path / f"{n}.npz")["samples"] for n in ("plain", "w1", "w2"))
    np.testing.assert_allclose(w1, plain, rtol=0, atol=1e-5)  # w = 1: the model alone
    assert np.isfinite(w2).all() and np.abs(w2 - plain).max() > 0.01
    with cli_error(capsys, r"the guide .*sde.* was trained on VPLinearPath but the model .*main.* "
                   r"samples on LinearPath"):  # fmt: skip
        main(f"{common} --output {tmp_path / 'x'} --guide_ckpt {toy_runs['sde']} "
             "--guidance_scale 2".split())  # fmt: skip
    with cli_error(capsys, "autoguidance needs its scale w: pass guidance_scale"):
        main(f"{common} --output {tmp_path / 'x'} --guide_ckpt {toy_runs['guide']}".split())
    classifier = toy_classifier_checkpoint(tmp_path / "classifier.ckpt")
    with cli_error(capsys, "autoguidance .a guide. and classifier guidance .a classifier. cannot"):
        main(f"{common} --output {tmp_path / 'x'} --guide_ckpt {toy_runs['guide']} "
             f"--guidance_scale 2 --classifier_ckpt {classifier}".split())  # fmt: skip
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.slow
def test_yaml_guide_on_another_path_stops_the_fit_before_its_first_step(
    toy_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = {"class_path": "diffusion_pl.callbacks.SampleGrid",
            "init_args": {"guide": checkpoint(toy_runs["sde"]), "guidance_scale": 2.0}}  # fmt: skip
    with cli_error(capsys, r"the guide .*sde.* was trained on VPLinearPath but the model being "
                   "trained samples on LinearPath"):  # fmt: skip
        _toy_fit(tmp_path, 5, [grid], net=SMALL_NET)
    assert not list(tmp_path.rglob("*.ckpt"))
    with pytest.raises(ValueError, match="FID: guide and guidance_scale go together"):
        FID(guidance_scale=2.0)
    with pytest.raises(ValueError, match="SampleGrid: guide and guidance_scale go together"):
        SampleGrid(guide=Checkpoint(str(toy_runs["guide"])))


def test_fid_evaluator_scores_the_autoguided_samples(tmp_path: Path) -> None:
    """Same samples, same FID: w = 1 scores as the model alone; w = 3 scores other samples.
    (Two random nets: the output convs drawn, not zero, so that the two differ.)"""

    def unet(seed: int) -> RectifiedFlow:
        torch.manual_seed(seed)
        net = UNet(in_channels=1, image_size=8, base_channels=8, channel_mult=(1,),
                   num_res_blocks=1, attn_resolutions=())  # fmt: skip
        torch.nn.init.normal_(net.conv_out.weight, std=0.1)
        return RectifiedFlow(net, (1, 8, 8), sampler=EulerSampler(steps=2)).eval()

    model, guide = unet(0), unet(1)
    digits = DiffusionDataModule(Digits(), global_batch_size=64)
    fid = FIDEvaluator("digits", num_samples=32, batch_size=16, cache_dir=str(tmp_path),
                       progress=False)  # fmt: skip
    alone = fid.evaluate(model, digits)["fid"]
    assert fid.evaluate(model, digits, guide=guide, guidance_scale=1.0)["fid"] == pytest.approx(
        alone, rel=1e-4
    )
    guided = fid.evaluate(model, digits, guide=guide, guidance_scale=3.0)["fid"]
    assert math.isfinite(guided) and abs(guided - alone) > 1e-3 * alone
