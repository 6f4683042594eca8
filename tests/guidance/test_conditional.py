"""Class-conditional training, label dropout, guided sampling from every formulation, the noisy
classifier, and the conditional digits configs through the real CLI."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from cli_runs import cli_error, fit_config
from mixture_checks import mixture_oracle
from torch import Tensor, nn

from diffusion_pl.cli import main
from diffusion_pl.data import DiffusionDataModule, Toy2D
from diffusion_pl.formulations import NCSN, VDM, NoisyClassifier, RectifiedFlow, ScoreSDE
from diffusion_pl.guidance import ClassifierGuidance
from diffusion_pl.nets import MLP, MLPClassifier
from diffusion_pl.paths import VPLinearPath
from diffusion_pl.samplers import DDIMSampler, EulerSampler, PCSampler
from diffusion_pl.samplers.langevin import AnnealedLangevinSampler
from diffusion_pl.weighting import ELBO

ROOT = Path(__file__).resolve().parents[2]


class Recorder(nn.Module):
    """An MLP that records the batch size and class labels of every call.

    Its output layer is random, not zero, so the PC corrector sees a nonzero score.
    """

    def __init__(self, num_classes: int | None = 2) -> None:
        super().__init__()
        self.mlp = MLP(hidden=16, depth=1, num_classes=num_classes)
        nn.init.normal_(self.mlp.fc_out.weight, std=0.1)
        self.num_classes = num_classes
        self.calls: list[tuple[int, Tensor | None]] = []

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None) -> Tensor:
        self.calls.append((x.shape[0], class_labels))
        return self.mlp(x, noise_labels, class_labels)

    def check_data_shape(self, data_shape: tuple[int, ...]) -> None:
        self.mlp.check_data_shape(data_shape)


def test_label_dropout_replaces_labels_by_null_at_rate_p_uncond() -> None:
    net = Recorder(num_classes=3)
    module = RectifiedFlow(net, (2,), p_uncond=0.3)
    x0, y = torch.randn(4000, 2), torch.ones(4000, dtype=torch.long)
    module.loss(x0, y, torch.Generator().manual_seed(0))
    labels = net.calls[-1][1]
    assert set(labels.tolist()) == {1, 3}  # kept, or ∅ = 3
    assert float((labels == 3).double().mean()) == pytest.approx(0.3, abs=0.03)  # ≈ 4 s.e.
    RectifiedFlow(net, (2,)).loss(x0, y)
    assert torch.equal(net.calls[-1][1], y)


FORMULATIONS = {
    "rectified_flow": lambda net, **kw: RectifiedFlow(net, (2,), **kw),
    "vdm": lambda net, **kw: VDM(net, (2,), sampler=DDIMSampler(steps=3), **kw),
    "vdm_elbo": lambda net, **kw: VDM(
        net, (2,), path=VPLinearPath(), weighting=ELBO(), sampler=DDIMSampler(steps=3), **kw
    ),
    "ncsn": lambda net, **kw: NCSN(
        net, (2,), num_levels=3, sampler=AnnealedLangevinSampler(steps_per_level=2), **kw
    ),
    "score_sde": lambda net, **kw: ScoreSDE(net, (2,), sampler=PCSampler(steps=3), **kw),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FORMULATIONS))
def test_every_formulation_trains_on_labels_and_samples_guided(name: str) -> None:
    net = Recorder()
    module = FORMULATIONS[name](net, p_uncond=0.5, guidance_scale=3.0)
    y = torch.arange(64) % 2
    loss = module.loss(torch.randn(64, 2), y, torch.Generator().manual_seed(0)).mean()
    loss.backward()
    assert torch.isfinite(loss)
    seen = net.calls[-1][1]
    assert set(seen.tolist()) == {0, 1, 2} and torch.equal(seen[seen < 2], y[seen < 2])
    net.calls.clear()
    labels = torch.tensor([1, 0, 1])
    x = module.sample(3, class_labels=labels, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 2) and torch.isfinite(x).all()
    # Every evaluation is one call on [x; x] with labels [y; ∅].
    assert all(b == 6 and torch.equal(c, torch.tensor([1, 0, 1, 2, 2, 2])) for b, c in net.calls)
    net.calls.clear()
    module.sample(3, class_labels=labels, guidance_scale=1.0)  # w = 1: the conditional net alone
    assert all(b == 3 and torch.equal(c, labels) for b, c in net.calls)
    net.calls.clear()
    module.sample(3, class_labels=labels, guidance_scale=0.0)  # w = 0: the null label alone
    assert net.calls and all(b == 3 and torch.equal(c, torch.full((3,), 2)) for b, c in net.calls)


def test_sample_refuses_bad_guidance_requests() -> None:
    conditional = RectifiedFlow(Recorder(), (2,), sampler=EulerSampler(steps=2))
    with pytest.raises(ValueError, match=r"labels \[2\] are out of range.*2 classes"):
        conditional.sample(2, class_labels=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="pass class_labels too"):
        conditional.sample(2, guidance_scale=2.0)
    unconditional = RectifiedFlow(Recorder(num_classes=None), (2,))
    with pytest.raises(ValueError, match=r"unconditional.*class-conditional net.*classifier"):
        unconditional.sample(2, class_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"p_uncond=0.1 drops class labels.*num_classes"):
        RectifiedFlow(Recorder(num_classes=None), (2,), p_uncond=0.1)
    with pytest.raises(ValueError, match="p_uncond must be in"):
        RectifiedFlow(Recorder(), (2,), p_uncond=1.5)
    with pytest.raises(ValueError, match="guidance_scale must be a finite"):
        RectifiedFlow(Recorder(), (2,), guidance_scale=float("nan"))


@pytest.fixture(scope="module")
def toy_classifier(tmp_path_factory: pytest.TempPathFactory) -> NoisyClassifier:
    """A noisy classifier of the 0.8 / 0.2 mixture's components on the VP path, 300 steps."""
    torch.manual_seed(0)
    module = NoisyClassifier(MLPClassifier(hidden=64, depth=2), (2,), VPLinearPath())
    data = DiffusionDataModule(Toy2D("2gaussians-unequal", num_train=4096, num_val=256), 256)
    trainer = L.Trainer(
        max_steps=300,
        accelerator="cpu",
        default_root_dir=tmp_path_factory.mktemp("classifier"),
        enable_progress_bar=False,
        enable_checkpointing=False,
        logger=False,
        check_val_every_n_epoch=100,
    )
    trainer.fit(module, data)
    return module.eval()


@pytest.mark.slow
def test_noisy_classifier_learns_the_exact_posterior(toy_classifier: NoisyClassifier) -> None:
    """p_φ(y = 1 | x_t) within 0.03 (mean absolute error) of the exact responsibility.

    A classifier that ignores x (p = 0.2) is off by 0.32, 0.32 and 0.24 at these times; the
    trained one by about 0.0001, 0.002 and 0.015 (two seeds).
    """
    path = VPLinearPath()
    oracle = mixture_oracle(path)
    g = torch.Generator().manual_seed(1)
    x0, _ = oracle.mixture.sample(2000, generator=g)
    for t in (0.1, 0.3, 0.5):
        t_batch = torch.full((2000,), t, dtype=torch.float64)
        x_t = path.marginal(x0, t_batch, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        with torch.no_grad():
            learned = toy_classifier(x_t.float(), t_batch.float()).softmax(1)[:, 1]
        exact = oracle.class_logits(x_t, t_batch).softmax(1)[:, 1]
        assert float((learned.double() - exact).abs().mean()) < 0.03, t


@pytest.mark.slow
def test_trained_classifier_guides_the_exact_model(toy_classifier: NoisyClassifier) -> None:
    """The learned classifier at λ = 1 on the exact unconditional denoiser: class 1 (weight
    0.2 unguided) takes ≥ 97% of the samples asked for it."""
    path = VPLinearPath()
    oracle = mixture_oracle(path)
    y = torch.ones(1000, dtype=torch.long)
    guided = ClassifierGuidance(oracle, toy_classifier, path, y, scale=1.0)
    x = DDIMSampler(steps=50)(guided, path, (1000, 2), generator=torch.Generator().manual_seed(0))
    assert float((oracle.mixture.assign(x) == 1).double().mean()) >= 0.97


@pytest.mark.slow
def test_conditional_digits_fit_and_guided_sampling_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = ("--trainer.max_steps", "2", "--model.init_args.net.init_args.base_channels", "16")
    model = fit_config(ROOT / "configs/digits/vdm_cond.yaml", tmp_path / "vdm", *small)
    classifier = fit_config(ROOT / "configs/digits/classifier.yaml", tmp_path / "clf", *small)
    out = tmp_path / "cfg.npz"
    main(f"sample --ckpt_path {model} --num_samples 5 --output {out} --steps 2 "
         "--class_labels [3,7] --guidance_scale 3.0".split())  # fmt: skip
    data = np.load(out)
    assert data["samples"].shape == (5, 1, 8, 8) and np.isfinite(data["samples"]).all()
    np.testing.assert_array_equal(data["labels"], [3, 7, 3, 7, 3])
    main(f"sample --ckpt_path {model} --num_samples 4 --output {out} --steps 2 --class_labels [1] "
         f"--classifier_ckpt {classifier} --classifier_scale 2.0".split())  # fmt: skip
    assert np.isfinite(np.load(out)["samples"]).all()
    with cli_error(capsys, r"labels \[12\] are out of range"):
        main(f"sample --ckpt_path {model} --num_samples 2 --output {out} --steps 2 "
             "--class_labels [12]".split())  # fmt: skip
    with cli_error(capsys, "holds a NoisyClassifier, not a diffusion model"):
        main(f"sample --ckpt_path {classifier} --num_samples 2 --output {out}".split())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        (
            "digits/rectified_flow_cond.yaml",
            ["--model.init_args.net.init_args.num_classes", "5"],
            "num_classes=5 but the data .Digits. have 10 classes",
        ),
        (
            "toy2d/rectified_flow.yaml",
            [
                "--data.source.init_args.name",
                "moons",
                "--model.init_args.net.init_args.num_classes",
                "8",
            ],
            r"class-conditional \(num_classes=8\) but the data \(Toy2D\) have no labels",
        ),
    ],
    ids=["wrong_num_classes", "unlabelled_data"],
)
def test_fit_refuses_labels_that_do_not_fit_the_net(
    config: str,
    overrides: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with cli_error(capsys, message):
        fit_config(ROOT / "configs" / config, tmp_path, *overrides)
