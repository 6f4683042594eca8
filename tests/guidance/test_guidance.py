"""Classifier-free and classifier guidance proven on the exact class-conditional mixture.

The test mixture (mixture_checks: weights 0.8 / 0.2 at (∓4, 0), std 0.5) read with the
component as class label is the exact class-conditional model: p_t(x | y = k) is component k on
the path and p_t(y | x) the posterior responsibility. Fed as the "network", it separates the
guidance code from training: at scale 1 guidance must sample component y, at scale 0 the whole
mixture, on every sampler, since all of them read the guided (x̂_0, ε̂) pair.

Tolerances (N = 4000 samples, 2000 per class): a class's mean within ±0.05 (≈ 4.5 standard
errors of 0.5/√2000), its std within ±0.05, all samples in the requested mode (±1 point); the
unconditional mixture as in mixture_checks (weights ±0.02, means and stds ±0.05).
"""

from __future__ import annotations

import copy

import pytest
import torch
from mixture_checks import (
    MEANS,
    MIXTURE,
    PAIR_IDS,
    PAIRS,
    STDS,
    N,
    OracleNet,
    check_mixture,
    mixture_oracle,
    seeded,
)
from torch import Tensor

from diffusion_pl.denoiser import Denoiser
from diffusion_pl.formulations import VDM, NoisyClassifier
from diffusion_pl.guidance import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    check_class_labels,
    check_same_path,
    classifier_gradient,
)
from diffusion_pl.learned_schedule import LearnedVPPath
from diffusion_pl.nets import MLP, MLPClassifier
from diffusion_pl.oracle import GaussianMixtureOracle
from diffusion_pl.parameterization import (
    EpsilonPrediction,
    Parameterization,
    ScorePrediction,
    VelocityPrediction,
)
from diffusion_pl.paths import LinearPath, NoisePath, VEPath, VPLinearPath
from diffusion_pl.samplers import DDIMSampler, EulerSampler, PCSampler, Sampler
from diffusion_pl.weighting import ELBO

pytestmark = pytest.mark.usefixtures("one_thread")


def _labels(n: int) -> Tensor:
    """Classes 0, 1, 0, 1, …"""
    return torch.arange(n) % 2


def test_fast_conditional_oracle_matches_general_oracle(path: NoisePath) -> None:
    fast, exact = mixture_oracle(path), GaussianMixtureOracle(path, MIXTURE)
    x = 3 * torch.randn(64, 2, dtype=torch.float64, generator=seeded(0))
    labels = torch.arange(64) % 3  # 2 = ∅
    for t in (path.t_min, 0.5, path.t_max):
        a, b = fast(x, t, labels), exact(x, t, labels)
        torch.testing.assert_close(a.x0, b.x0, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(a.eps, b.eps, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(fast.class_logits(x, t), exact.class_logits(x, t))
        uncond = exact(x, t)
        torch.testing.assert_close(b.eps[2::3], uncond.eps[2::3], rtol=0, atol=0)


def test_exact_classifier_gradient_is_bayes_rule(path: NoisePath) -> None:
    """∇ log p_t(y | x) by autograd = ∇ log p_t(x | y) − ∇ log p_t(x), in float64."""
    oracle = GaussianMixtureOracle(path, MIXTURE)
    x = 3 * torch.randn(32, 2, dtype=torch.float64, generator=seeded(1))
    y = _labels(32)
    for t in torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64):
        t_batch = t.expand(32)
        grad = classifier_gradient(oracle.class_logits, x, t_batch, y)
        expected = oracle.score(x, t_batch, y) - oracle.score(x, t_batch)
        torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("param", "path"), PAIRS, ids=PAIR_IDS)
def test_cfg_mixes_the_pair_in_one_forward_call(param: Parameterization, path: NoisePath) -> None:
    """The guided pair is ∅ + w (y − ∅) for x̂_0 and ε̂, still explains x, and costs one call
    on the doubled batch [x; x] with labels [y; ∅]."""
    net = OracleNet(mixture_oracle(path), param)
    x = 3 * torch.randn(16, 2, dtype=torch.float64, generator=seeded(2))
    y, w = _labels(16), 2.5
    guided = ClassifierFreeGuidance(net, path, param, y, w)
    for t in torch.tensor([0.2, 0.7], dtype=torch.float64):
        pred = guided(x, t)
        cond, uncond = net.oracle(x, t, y), net.oracle(x, t)
        torch.testing.assert_close(pred.eps, uncond.eps + w * (cond.eps - uncond.eps))
        torch.testing.assert_close(pred.x0, uncond.x0 + w * (cond.x0 - uncond.x0))
        c = path.coefficients(t.expand(16), 2)
        torch.testing.assert_close(c.alpha * pred.x0 + c.sigma * pred.eps, x)
    assert net.batches == [32, 32] and guided.nfe == 2


def test_classifier_guidance_at_scale_one_is_the_conditional_pair(path: NoisePath) -> None:
    oracle = mixture_oracle(path)
    x = 3 * torch.randn(16, 2, dtype=torch.float64, generator=seeded(3))
    y = _labels(16)
    guided = ClassifierGuidance(oracle, oracle.class_logits, path, y, scale=1.0)
    for t in torch.tensor([0.2, 0.7], dtype=torch.float64):
        pred, cond = guided(x, t), oracle(x, t, y)
        torch.testing.assert_close(pred.eps, cond.eps, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(pred.x0, cond.x0, rtol=1e-9, atol=1e-9)


def _cfg(path: NoisePath, param: Parameterization, y: Tensor, scale: float) -> Denoiser:
    net = OracleNet(mixture_oracle(path), param)
    return ClassifierFreeGuidance(net, path, param, y, scale)


def _classifier(path: NoisePath, param: Parameterization, y: Tensor, scale: float):
    oracle = mixture_oracle(path)
    unconditional = Denoiser(OracleNet(oracle, param), path, param)
    return ClassifierGuidance(unconditional, oracle.class_logits, path, y, scale)


SAMPLING = [
    (EulerSampler(steps=100), VelocityPrediction(), LinearPath()),
    (DDIMSampler(steps=100), EpsilonPrediction(), VPLinearPath()),
    (PCSampler(steps=200, snr=0.16), ScorePrediction(), VEPath()),
]


@pytest.mark.slow
@pytest.mark.parametrize("guide", [_cfg, _classifier], ids=["cfg", "classifier"])
@pytest.mark.parametrize(
    ("sampler", "param", "path"),
    SAMPLING,
    ids=[f"{type(s).__name__}-{type(q).__name__}" for s, _, q in SAMPLING],
)
def test_guidance_scale_one_samples_each_class_and_zero_the_mixture(
    guide, sampler: Sampler, param: Parameterization, path: NoisePath
) -> None:
    oracle = mixture_oracle(path)
    y = _labels(N)
    x = sampler(guide(path, param, y, 1.0), path, (N, 2), generator=seeded(0))
    modes = oracle.mixture.assign(x)
    for k in range(2):
        xk = x[y == k].double()
        assert float((modes[y == k] == k).double().mean()) >= 0.99
        torch.testing.assert_close(xk.mean(0), MEANS[k], atol=0.05, rtol=0)
        torch.testing.assert_close(xk.std(0), STDS[k].expand(2), atol=0.05, rtol=0)
    x = sampler(guide(path, param, y, 0.0), path, (N, 2), generator=seeded(0))
    check_mixture(oracle, x)


def test_check_class_labels_names_the_bad_labels() -> None:
    torch.testing.assert_close(check_class_labels([0, 2], 2, 3), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"labels \[3, 7\] are out of range.*3 classes"):
        check_class_labels(torch.tensor([3, 7, 0]), 3, 3)
    with pytest.raises(ValueError, match="5 samples, 2 labels"):
        check_class_labels([0, 1], 5, 3)
    with pytest.raises(ValueError, match="integers"):
        check_class_labels(torch.tensor([0.5]), 1, 3)


def test_classifier_on_another_path_is_refused() -> None:
    check_same_path(VPLinearPath(), VPLinearPath())
    with pytest.raises(ValueError, match=r"trained on LinearPath.*samples on VPLinearPath"):
        check_same_path(VPLinearPath(), LinearPath())


class _RecordingPath(LearnedVPPath):
    """A learned schedule that records the dtype and device of every time it is asked about."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: list[tuple[torch.dtype, torch.device]] = []

    def gamma_and_slope(self, t: Tensor) -> tuple[Tensor, Tensor]:
        self.seen.append((t.dtype, t.device))
        return super().gamma_and_slope(t)


class _RecordingClassifier(NoisyClassifier):
    """A noisy classifier that records the dtype of every time it is queried at."""

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        self.seen.append(torch.as_tensor(t).dtype)
        return super().forward(x, t)


def test_guided_sampling_in_float64_with_a_learned_schedule() -> None:
    """A float64 model on a learned path is probed, guided and denoised in float64 only.

    Covers both guidances and the final denoising step at ``path.t_min`` (a Python float).
    """
    torch.manual_seed(0)
    path = _RecordingPath(hidden=8, t_min=1e-3)
    net = MLP(hidden=16, depth=1, num_classes=2)
    model = VDM(net, (2,), path=path, weighting=ELBO(), sampler=DDIMSampler(steps=3)).double()
    classifier = _RecordingClassifier(MLPClassifier(hidden=16, depth=1), (2,), copy.deepcopy(path))
    classifier.seen = []
    classifier.double().eval()
    labels = torch.tensor([0, 1, 1])
    denoiser = model.guided_denoiser(3, labels, 2.0, classifier, 1.5)
    path.seen = []
    x0 = model.sampler(denoiser, path, (3, 2), generator=seeded(1), dtype=torch.float64)
    assert x0.dtype == torch.float64 and torch.isfinite(x0).all()
    assert classifier.seen and set(classifier.seen) == {torch.float64}
    assert path.seen and set(path.seen) == {(torch.float64, torch.device("cpu"))}


def test_check_same_path_probes_on_the_given_device_and_dtype() -> None:
    torch.manual_seed(0)
    path = _RecordingPath(hidden=4)
    check_same_path(path, copy.deepcopy(path), device="cpu", dtype=torch.float32)
    assert path.seen == [(torch.float32, torch.device("cpu"))] * 2  # α and σ
