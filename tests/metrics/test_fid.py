"""FID / KID with the shipped digits feature network: zeros, real-data floors, noise, cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from diffusion_pl.data import DiffusionDataModule, Digits, GaussianMixture, ReflowPairs, Toy2D
from diffusion_pl.metrics import DigitsClassifier, DigitsFeatures, FIDEvaluator, InceptionFeatures
from diffusion_pl.metrics.features import DIGITS_WEIGHTS, extractor_id, resolve_extractor
from diffusion_pl.metrics.reference_stats import reference_key, source_config


@pytest.fixture(scope="module")
def digits() -> DiffusionDataModule:
    return DiffusionDataModule(Digits(), global_batch_size=64)


@pytest.fixture(scope="module")
def train_images(digits: DiffusionDataModule) -> Tensor:
    return digits.real_samples("train", len(digits.dataset("train")))


def evaluator(cache: Path, digits: DiffusionDataModule, **kwargs) -> FIDEvaluator:
    fid = FIDEvaluator("digits", split="val", cache_dir=str(cache), progress=False, **kwargs)
    fid.prepare_reference(digits)
    return fid


def test_shipped_digits_classifier_is_small_and_accurate(digits: DiffusionDataModule) -> None:
    assert DIGITS_WEIGHTS.stat().st_size < 1_000_000
    record = torch.load(DIGITS_WEIGHTS, weights_only=True)
    net = DigitsClassifier()
    net.load_state_dict(record["state_dict"])
    x, y = digits.dataset("val").tensors
    with torch.no_grad():
        accuracy = float((net.eval()(x).argmax(1) == y).float().mean())
    assert accuracy == pytest.approx(record["val_accuracy"], abs=1e-6)
    assert accuracy >= 0.98  # held-out split, never trained on


def test_fid_of_a_set_against_itself_is_zero(tmp_path: Path, digits: DiffusionDataModule) -> None:
    fid = evaluator(tmp_path, digits)
    assert abs(fid.score_images(digits.real_samples("val", 360))["fid"]) < 1e-6


@pytest.mark.slow
def test_disjoint_halves_of_real_digits_give_a_small_stable_fid(train_images: Tensor) -> None:
    """Four random half/half splits of the 1,437 train digits (measured 6.8 – 12.2)."""
    scores = []
    for seed in range(4):
        order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(seed))
        metric = FrechetInceptionDistance(DigitsFeatures())
        metric.update(train_images[order[:718]], real=True)
        metric.update(train_images[order[718:1436]], real=False)
        scores.append(float(metric.compute()))
    scores = torch.tensor(scores)
    assert scores.max() < 20 and scores.min() > 1, scores
    assert scores.std() / scores.mean() < 0.4, scores


@pytest.mark.slow
def test_gaussian_noise_gives_a_large_fid_and_kid(
    tmp_path: Path, digits: DiffusionDataModule, train_images: Tensor
) -> None:
    fid = evaluator(tmp_path, digits, kid=True, kid_subset_size=300)
    real = fid.score_images(train_images)
    noise = torch.randn(1000, 1, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    fake = fid.score_images(noise)
    assert real["fid"] < 10 < 200 < fake["fid"], (real, fake)
    assert fake["kid"] > 10 * max(abs(real["kid"]), real["kid_std"]), (real, fake)


def test_reference_statistics_are_cached_once_per_key(
    tmp_path: Path, digits: DiffusionDataModule, train_images: Tensor
) -> None:
    first = evaluator(tmp_path, digits)
    assert first.cache_hit is False
    (path,) = tmp_path.glob("*.npz")
    assert path.name.startswith("digits-val-1x8x8-digitsfeatures-")
    stats = np.load(path)
    assert stats["mu"].shape == (128,) and stats["sigma"].shape == (128, 128)
    assert int(stats["num_samples"]) == 360
    second = evaluator(tmp_path, digits)
    assert second.cache_hit is True
    assert second.score_images(train_images)["fid"] == pytest.approx(
        first.score_images(train_images)["fid"], rel=1e-9
    )
    FIDEvaluator("digits", split="train", cache_dir=str(tmp_path), progress=False)\
        .prepare_reference(digits)  # fmt: skip
    assert len(list(tmp_path.glob("*.npz"))) == 2  # another split, another key


@pytest.mark.slow
def test_torch_fidelity_statistics_drop_in_as_reference(
    tmp_path: Path, digits: DiffusionDataModule, train_images: Tensor
) -> None:
    """A torch-fidelity stat cache (torch.save of numpy mu/sigma) scores like our own .npz."""
    from torch_fidelity.utils_torch import torch_atomic_save

    ours = evaluator(tmp_path / "cache", digits)
    (npz,) = (tmp_path / "cache").glob("*.npz")
    stats = np.load(npz)
    pt = tmp_path / "digits-val-digitsfeatures-stat-fid-128.pt"
    torch_atomic_save({"mu": stats["mu"], "sigma": stats["sigma"]}, str(pt))
    theirs = evaluator(tmp_path / "unused", digits, reference=str(pt))
    assert theirs.cache_hit is True
    assert theirs.score_images(train_images)["fid"] == pytest.approx(
        ours.score_images(train_images)["fid"], rel=1e-6
    )
    torch.save({"mean": stats["mu"]}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match=r"lack \['mu', 'sigma'\]"):
        evaluator(tmp_path, digits, reference=str(tmp_path / "wrong.pt"))
    (tmp_path / "text.pt").write_text("not a pickle")
    with pytest.raises(ValueError, match=r"neither an \.npz nor torch-fidelity statistics"):
        evaluator(tmp_path, digits, reference=str(tmp_path / "text.pt"))


def test_inception_offline_without_weights_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        InceptionFeatures()
    message = str(error.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message


def test_any_module_with_num_features_is_an_extractor(
    tmp_path: Path, digits: DiffusionDataModule
) -> None:
    class MeanPool(nn.Module):
        num_features = 4

        def forward(self, x: Tensor) -> Tensor:
            return nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)

    fid = FIDEvaluator(MeanPool(), cache_dir=str(tmp_path), progress=False)
    fid.prepare_reference(digits)
    assert abs(fid.score_images(digits.real_samples("val", 360))["fid"]) < 1e-6
    with pytest.raises(ValueError, match="needs an int attribute `num_features`"):
        resolve_extractor(nn.Identity())
    with pytest.raises(ValueError, match="unknown feature extractor 'resnet'"):
        resolve_extractor("resnet")


def test_short_name_and_class_path_share_the_reference_cache() -> None:
    """``--feature digits`` and YAML's ``class_path: …DigitsFeatures`` key the same statistics."""
    parser = ArgumentParser()
    parser.add_argument("--feature", type=str | nn.Module)
    yaml = {"feature": {"class_path": "diffusion_pl.metrics.DigitsFeatures"}}
    from_yaml = parser.instantiate(parser.parse_object(yaml)).feature
    assert isinstance(from_yaml, DigitsFeatures)
    assert extractor_id(resolve_extractor(from_yaml)) == extractor_id(resolve_extractor("digits"))


def test_reference_key_is_the_configuration_not_the_loaded_state(tmp_path: Path) -> None:
    """A source that loads its data (ReflowPairs reads its shape) keeps its cache key."""
    pairs = tmp_path / "pairs.pt"
    torch.save({"samples": torch.zeros(20, 1, 8, 8), "noise": torch.ones(20, 1, 8, 8)}, pairs)
    data = DiffusionDataModule(ReflowPairs(str(pairs)), global_batch_size=4)
    extractor = resolve_extractor("digits")
    before = reference_key(data, "val", extractor)
    data.dataset("val")
    assert reference_key(data, "val", extractor) == before
    assert before.startswith("reflowpairs-val-1x8x8-digitsfeatures-")
    other = DiffusionDataModule(ReflowPairs(str(pairs), val_fraction=0.5), global_batch_size=4)
    assert reference_key(other, "val", extractor) != before  # another configuration
    assert source_config(data.source) == {
        "class": "ReflowPairs", "path": str(pairs), "val_fraction": 0.05
    }  # fmt: skip


def test_every_source_keeps_its_configuration_for_the_key() -> None:
    """Each shipped source (GaussianMixture too) keeps the constructor arguments it was given."""
    mixture = GaussianMixture([[0.0, 1.0], [2.0, 3.0]], std=0.25, weights=[0.3, 0.7])
    assert source_config(mixture) == {
        "class": "GaussianMixture", "means": [[0.0, 1.0], [2.0, 3.0]], "std": 0.25,
        "weights": [0.3, 0.7], "num_train": 100_000, "num_val": 5_000, "seed": 0,
    }  # fmt: skip
    assert source_config(Toy2D("moons"))["name"] == "moons"
    assert source_config(Digits())["class"] == "Digits"
