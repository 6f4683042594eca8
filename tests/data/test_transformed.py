"""Transformed image sources (the "other data" of a LoRA fine-tune): each example is the
source's, transformed, labels kept; FID's reference statistics follow the source they serve."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from diffusion_pl.data import DiffusionDataModule, Digits, Gamma, Invert, Transformed, Transpose
from diffusion_pl.metrics import FIDEvaluator
from diffusion_pl.metrics.features import DigitsFeatures
from diffusion_pl.metrics.reference_stats import reference_key, source_config

pytestmark = pytest.mark.usefixtures("one_thread")


def stack(data: torch.utils.data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(data[i] for i in range(len(data))), strict=True)
    return torch.stack(xs), torch.stack(ys)


def test_each_example_is_the_sources_transformed_with_its_label() -> None:
    x, y = stack(Digits().load("val"))
    for transform, expected in ((Invert(), -x), (Transpose(), x.transpose(-1, -2))):
        source = Transformed(Digits(), transform)
        tx, ty = stack(source.load("val"))
        assert torch.equal(tx, expected) and torch.equal(ty, y)
        assert source.shape == (1, 8, 8) and (source.num_classes, source.num_levels) == (10, 17)
    assert not torch.equal(x, x.transpose(-1, -2))
    assert Transpose().shape((3, 4, 6)) == (3, 6, 4)

    class Symmetric(Digits):
        mirror_symmetric = True

    assert Transformed(Symmetric(), Invert()).mirror_symmetric
    assert not Transformed(Symmetric(), Transpose()).mirror_symmetric
    assert not Transformed(Digits(), Invert()).mirror_symmetric


def test_gamma_redraws_the_strokes_and_keeps_the_shapes() -> None:
    """γ = 0.5: black stays black, white stays white, mid-grey 0 becomes 2·√0.5 − 1; every
    pixel keeps its rank; the levels are no longer evenly spaced, so the data count as
    continuous; γ ≤ 0 is refused."""
    x, _ = stack(Digits().load("val"))
    source = Transformed(Digits(), Gamma(0.5))
    tx, _ = stack(source.load("val"))
    assert torch.equal(tx[x == -1], x[x == -1]) and torch.allclose(tx[x == 1], x[x == 1])
    grey = Gamma(0.5)(torch.zeros(1, 1, 1))
    assert abs(float(grey) - (2 * 0.5**0.5 - 1)) < 1e-6
    assert torch.all((tx >= x - 1e-6) & (tx <= 1 + 1e-6)) and tx.mean() > x.mean() + 0.1
    assert source.num_levels is None and Transformed(Digits(), Gamma(1.0)).shape == (1, 8, 8)
    assert torch.allclose(Gamma(1.0)(x), x)
    with pytest.raises(ValueError, match="gamma > 0"):
        Gamma(0.0)


def test_fid_reference_statistics_follow_the_source(tmp_path: Path) -> None:
    """The inverted digits' reference: its own images score FID ≈ 0, the plain digits far from
    it; the cache keys of Digits, Invert and Transpose differ and are the same for equal
    configurations."""
    extractor = DigitsFeatures()
    modules = {name: DiffusionDataModule(source, global_batch_size=32) for name, source in (
        ("digits", Digits()), ("invert", Transformed(Digits(), Invert())),
        ("transpose", Transformed(Digits(), Transpose())))}  # fmt: skip
    keys = {name: reference_key(dm, "val", extractor) for name, dm in modules.items()}
    assert len(set(keys.values())) == 3 and keys["invert"].startswith("transformed-val-1x8x8-")
    again = DiffusionDataModule(Transformed(Digits(), Invert()), global_batch_size=32)
    assert reference_key(again, "val", extractor) == keys["invert"]
    assert source_config(modules["invert"].source)["source"] == source_config(Digits())
    evaluator = FIDEvaluator(extractor, "val", cache_dir=str(tmp_path), progress=False)
    evaluator.prepare_reference(modules["invert"])
    inverted, _ = stack(modules["invert"].source.load("val"))
    assert evaluator.score_images(inverted)["fid"] < 1e-3
    evaluator.fid.reset()
    plain, _ = stack(Digits().load("val"))
    assert evaluator.score_images(plain)["fid"] > 10.0
    assert (tmp_path / f"{keys['invert']}.npz").is_file()


def test_a_source_that_is_not_images_is_refused() -> None:
    class Codes(Digits):
        clip_samples = False

    with pytest.raises(ValueError, match="give an image source"):
        Transformed(Codes(), Invert())
    assert isinstance(Digits().load("val"), TensorDataset)
