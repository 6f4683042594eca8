"""Data sources and the DataModule: sample statistics, splits, value ranges, loaders, errors."""

from __future__ import annotations

import ast
import math
import time
from pathlib import Path
from typing import Any

import datasets as hf
import lightning as L
import numpy as np
import PIL.Image
import pytest
import torch
from jsonargparse import ArgumentParser

from diffusion_pl.data import (
    DiffusionDataModule,
    Digits,
    GaussianMixture,
    GaussianMixtureSpec,
    HFImages,
    Source,
    Toy2D,
)

DATA_PACKAGE = Path(__file__).resolve().parents[2] / "diffusion_pl" / "data"
TOY_NAMES = ["8gaussians", "2gaussians-unequal", "moons", "checkerboard", "swissroll"]


def _points(source: Source, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    return source.load(split).tensors  # type: ignore[attr-defined, arg-type]


def _nearest(x: torch.Tensor, spec: GaussianMixtureSpec) -> torch.Tensor:
    return torch.cdist(x.double(), spec.means).argmin(dim=1)


# --- toy and mixture sources -------------------------------------------------------------------


def test_eight_gaussians_match_their_mixture() -> None:
    source = Toy2D("8gaussians", num_train=20_000, num_val=10)
    spec = source.mixture()
    assert spec is not None
    angle = torch.arange(8, dtype=torch.float64) * math.pi / 4
    torch.testing.assert_close(spec.means, 4 * torch.stack([angle.cos(), angle.sin()], dim=-1))
    x, y = _points(source)
    k = _nearest(x, spec)
    assert (k == y).float().mean() > 0.995  # labels are the components (3σ boundaries)
    for j in range(8):
        xj = x[k == j].double()
        assert torch.allclose(xj.mean(0), spec.means[j], atol=0.05)
        assert abs(xj.std(0).mean().item() - 0.5) < 0.03
        assert abs(len(xj) / len(x) - 1 / 8) < 0.01


def test_two_gaussians_unequal_weights() -> None:
    source = Toy2D("2gaussians-unequal", num_train=20_000, num_val=10)
    spec = source.mixture()
    assert spec is not None
    torch.testing.assert_close(spec.weights, torch.tensor([0.8, 0.2], dtype=torch.float64))
    k = _nearest(_points(source)[0], spec)
    assert abs((k == 0).float().mean().item() - 0.8) < 0.01
    assert source.num_classes == 2


@pytest.mark.parametrize("name", TOY_NAMES)
def test_toys_are_seeded_split_and_scaled(name: str) -> None:
    source = Toy2D(name, num_train=2_000, num_val=500, seed=3)
    x_train, y_train = _points(source)
    x_val, _ = _points(source, "val")
    assert x_train.shape == (2_000, 2) and x_val.shape == (500, 2)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert torch.equal(x_train, _points(Toy2D(name, num_train=2_000, num_val=500, seed=3))[0])
    assert not torch.equal(x_train[:500], x_val)
    assert not torch.equal(x_train, _points(Toy2D(name, num_train=2_000, num_val=500, seed=4))[0])
    assert 3.0 < x_train.abs().max() < 6.5  # about [−4, 4]
    assert source.shape == (2,) and source.num_levels is None


@pytest.mark.parametrize("name", ["moons", "checkerboard", "swissroll"])
def test_shapes_have_no_labels(name: str) -> None:
    source = Toy2D(name, num_train=100, num_val=0)
    assert source.mixture() is None and source.num_classes is None
    assert (_points(source)[1] == -1).all()


def test_checkerboard_fills_only_dark_squares() -> None:
    x, _ = _points(Toy2D("checkerboard", num_train=5_000, num_val=0))
    cell = torch.floor((x + 4) / 2).long()
    assert ((cell >= 0) & (cell < 4)).all()
    assert (cell.sum(dim=1) % 2 == 0).all()
    assert len(torch.unique(cell, dim=0)) == 8


def test_gaussian_mixture_source_in_three_dimensions() -> None:
    source = GaussianMixture(
        means=[[0.0, 0.0, 0.0], [3.0, 3.0, 3.0]], std=[0.5, 1.0], weights=[0.3, 0.7]
    )
    spec = source.mixture()
    assert source.shape == (3,) and source.num_classes == 2
    assert spec.stds.dtype == torch.float64
    x, y = _points(source)
    assert abs((y == 0).float().mean().item() - 0.3) < 0.01
    assert abs(x[y == 1].double().std(0).mean().item() - 1.0) < 0.02


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weights": [0.5, 0.4]}, r"sum to 1 \(within 1e-6\).*0\.5, 0\.4"),
        ({"weights": [1.5, -0.5]}, r"weights must be positive.*-0\.5"),
        ({"weights": [0.2, 0.3, 0.5]}, r"weights needs one entry per mean \(2\)"),
        ({"means": [[0.0, 0.0], [1.0]]}, r"same dimension.*\[2, 1\]"),
        ({"std": 0.0}, r"std must be > 0.*0\.0"),
        ({"std": [0.5, 0.5, 0.5]}, r"std needs one entry per mean"),
        ({"means": []}, r"means must be a non-empty"),
        ({"num_train": 0}, r"num_train must be > 0"),
    ],
)
def test_gaussian_mixture_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**{"means": [[-1.0, 0.0], [1.0, 0.0]], **kwargs})


def test_toy2d_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="name must be one of"):
        Toy2D("spiral")  # type: ignore[arg-type]


def import_cycle(package: Path) -> list[str] | None:
    """A chain of modules of ``package`` that import each other in a circle, or None.

    Every ``import`` counts, those under ``if TYPE_CHECKING:`` too.
    """
    prefix = "diffusion_pl." + package.name
    graph: dict[str, set[str]] = {}
    for file in package.glob("*.py"):
        name = prefix if file.stem == "__init__" else f"{prefix}.{file.stem}"
        graph[name] = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                graph[name].add(node.module)
            elif isinstance(node, ast.Import):
                graph[name].update(alias.name for alias in node.names)
    done: set[str] = set()

    def visit(name: str, chain: list[str]) -> list[str] | None:
        if name in chain:
            return [*chain[chain.index(name) :], name]
        if name in done or name not in graph:
            return None
        for target in sorted(graph[name]):
            if cycle := visit(target, [*chain, name]):
                return cycle
        done.add(name)
        return None

    return next(filter(None, (visit(name, []) for name in sorted(graph))), None)


def test_data_modules_import_no_circle() -> None:
    assert import_cycle(DATA_PACKAGE) is None


# --- digits ------------------------------------------------------------------------------------


def test_digits_split_and_values() -> None:
    source = Digits()
    x_train, y_train = _points(source)
    x_val, y_val = _points(source, "val")
    assert (len(x_train), len(x_val)) == (1_437, 360)
    assert x_train.shape[1:] == source.shape == (1, 8, 8)
    x = torch.cat([x_train, x_val])
    assert x.min() == -1 and x.max() == 1
    torch.testing.assert_close((x + 1) / 2 * 16, ((x + 1) / 2 * 16).round())  # 17 levels
    assert source.num_levels == 17 and source.num_classes == 10
    assert set(y_val.tolist()) == set(range(10))
    assert (
        torch.bincount(y_val) - 0.2 * torch.bincount(torch.cat([y_train, y_val]))
    ).abs().max() < 1
    assert torch.equal(x_val, _points(Digits(), "val")[0])
    assert not torch.equal(x_val, _points(Digits(seed=1), "val")[0])


@pytest.mark.parametrize("size", [16, 4])
def test_digits_resize_keeps_range_and_levels(size: int) -> None:
    x, _ = _points(Digits(size=size))
    assert x.shape[1:] == (1, size, size)
    assert x.min() == -1 and x.max() <= 1
    torch.testing.assert_close((x + 1) / 2 * 16, ((x + 1) / 2 * 16).round())


# --- Hugging Face images (offline, tiny data written here) ------------------------------------


@pytest.fixture(autouse=True)
def _private_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _image(width: int, height: int, seed: int) -> PIL.Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Six RGB PNGs of assorted shapes in two class folders."""
    root = tmp_path / "images"
    for label, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(3):
            _image(10 + 2 * i, 7 + i, seed=3 * label + i).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def saved_dataset(tmp_path: Path) -> Path:
    """A ``DatasetDict`` with train / test splits written by ``save_to_disk``."""
    features = hf.Features({"img": hf.Image(), "label": hf.ClassLabel(names=["a", "b", "c"])})
    splits = {
        split: hf.Dataset.from_dict(
            {"img": [_image(6, 6, i) for i in range(n)], "label": [i % 3 for i in range(n)]},
            features=features,
        )
        for split, n in (("train", 5), ("test", 3))
    }
    folder = tmp_path / "saved"
    hf.DatasetDict(splits).save_to_disk(str(folder))
    return folder


@pytest.mark.parametrize("builder", ["imagefolder", None])
def test_image_folder_loads_to_unit_range(image_folder: Path, builder: str | None) -> None:
    source = HFImages(
        str(image_folder),
        builder=builder,
        image_column="image",
        split_val=None,
        val_fraction=0.34,
        image_size=8,
    )
    train, val = source.load("train"), source.load("val")
    assert (len(train), len(val)) == (4, 2)
    x = torch.stack([train[i][0] for i in range(4)])
    labels = {int(val[i][1]) for i in range(2)} | {int(train[i][1]) for i in range(4)}
    assert x.shape == (4, *source.shape) == (4, 3, 8, 8) and x.dtype == torch.float32
    assert -1 <= x.min() < -0.5 and 0.5 < x.max() <= 1
    assert labels == {0, 1}


def test_images_are_cropped_resized_and_scaled(tmp_path: Path) -> None:
    pixels = np.zeros((6, 12, 3), dtype=np.uint8)  # black | colour | black, in thirds of 4 px
    pixels[:, 3:9] = (255, 0, 51)
    root = tmp_path / "one"
    root.mkdir()
    PIL.Image.fromarray(pixels).save(root / "a.png")
    kwargs = {"builder": "imagefolder", "image_column": "image", "label_column": None}
    x, y = HFImages(str(root), split_val=None, val_fraction=0.5, image_size=6, **kwargs).load(
        "val"
    )[0]  # the one image is held out
    expected = torch.tensor([1.0, -1.0, 51 / 127.5 - 1]).reshape(3, 1, 1).expand(3, 6, 6)
    torch.testing.assert_close(x, expected)
    assert y.dtype == torch.int64 and y == -1
    grey = HFImages(str(root), split_val=None, val_fraction=0.5, image_size=3, channels=1, **kwargs)
    assert grey.load("val")[0][0].shape == (1, 3, 3)


def test_saved_dataset_loads_both_splits(saved_dataset: Path) -> None:
    source = HFImages(str(saved_dataset), from_disk=True, image_size=4, channels=1)
    train, val = source.load("train"), source.load("val")
    assert (len(train), len(val)) == (5, 3)
    x, y = val[2]
    assert x.shape == (1, 4, 4) and x.min() >= -1 and x.max() <= 1
    assert y.dtype == torch.int64 and int(y) == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_column": "image"}, r"image_column='image'.*available columns: \['img', 'label'\]"),
        ({"label_column": "class"}, r"label_column='class'.*\['img', 'label'\].*or to null"),
        ({"split_val": "validation"}, r"split_val='validation'.*\['train', 'test'\]"),
    ],
)
def test_missing_column_or_split_names_the_key(
    saved_dataset: Path, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        HFImages(str(saved_dataset), from_disk=True, **kwargs).prepare()


@pytest.mark.parametrize(("offline", "streaming"), [(False, False), (True, False), (True, True)])
def test_unreachable_hub_fails_fast_with_hint(
    monkeypatch: pytest.MonkeyPatch, offline: bool, streaming: bool
) -> None:
    monkeypatch.setattr(hf.config, "HF_HUB_OFFLINE", offline)
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match=r"some-user/does-not-exist.*local copy"):
        HFImages("some-user/does-not-exist", streaming=streaming).prepare()
    assert time.perf_counter() - start < 30


@pytest.mark.parametrize("kwargs", [{}, {"from_disk": True}, {"builder": "imagefolder"}])
def test_missing_local_path(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        HFImages(missing, **kwargs).prepare()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channels": 2}, "channels must be 1"),
        ({"image_size": 0}, "image_size must be > 0"),
        ({"streaming": True, "split_val": None}, "streaming: true needs a separate validation"),
        ({"streaming": True, "from_disk": True}, "from_disk .* needs no streaming"),
        ({"streaming": True, "shuffle_buffer": 0}, "shuffle_buffer must be > 0"),
        ({"streaming": True, "num_train": 0}, "num_train must be > 0"),
        ({"num_val": 10}, "num_val=10 applies to streaming"),
    ],
)
def test_hf_images_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HFImages("unused", **kwargs)


# --- the DataModule ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "shape"),
    [(Toy2D(num_train=300, num_val=50), (2,)), (Digits(size=16), (1, 16, 16))],
)
def test_datamodule_batches(source: Source, shape: tuple[int, ...]) -> None:
    dm = DiffusionDataModule(source, global_batch_size=64)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.data_shape == shape and dm.num_classes == source.num_classes
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, *shape) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64
    val_sizes = [len(xb) for xb, _ in dm.val_dataloader()]
    assert sum(val_sizes) == len(dm.dataset("val"))  # the last, smaller batch is kept
    first = next(iter(dm.val_dataloader()))[0]
    torch.testing.assert_close(first[:5], dm.real_samples("val", 5))


def test_training_order_follows_the_global_seed() -> None:
    dm = DiffusionDataModule(Toy2D(num_train=256, num_val=8), global_batch_size=32)

    def first_batch(seed: int) -> torch.Tensor:
        L.seed_everything(seed, verbose=False)
        return next(iter(dm.train_dataloader()))[0]

    assert torch.equal(first_batch(1), first_batch(1))
    assert not torch.equal(first_batch(1), first_batch(2))
    loader = dm.train_dataloader()
    assert not torch.equal(next(iter(loader))[0], next(iter(loader))[0])  # new order each epoch


def test_hflip_mirrors_some_training_images(image_folder: Path) -> None:
    source = HFImages(
        str(image_folder),
        builder="imagefolder",
        image_column="image",
        split_val=None,
        val_fraction=0.2,
        image_size=4,
    )
    dm = DiffusionDataModule(source, global_batch_size=5, hflip=True)
    originals = dm.real_samples("train", 5)
    L.seed_everything(0, verbose=False)
    loader, flipped = dm.train_dataloader(), 0
    for _ in range(6):  # six epochs: the flips are drawn anew from (seed, epoch)
        for x in next(iter(loader))[0]:
            same = (originals == x).flatten(1).all(1)
            mirrored = (originals.flip(-1) == x).flatten(1).all(1)
            assert same.any() or mirrored.any()
            flipped += int(mirrored.any() and not same.any())
    assert 0 < flipped < 30


@pytest.mark.parametrize(
    ("source", "match"),
    [(Toy2D(), r"Toy2D.*shape \(2,\) have no horizontal axis"), (Digits(), "mirrored digit")],
)
def test_hflip_refused_where_mirroring_is_wrong(source: Source, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DiffusionDataModule(source, hflip=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"global_batch_size": 0}, "global_batch_size must be > 0"),
        ({"num_workers": -1}, "num_workers must"),
        ({"prefetch_factor": 4}, r"prefetch_factor=4 needs num_workers > 0 \(got 0\)"),
    ],
)
def test_datamodule_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DiffusionDataModule(Toy2D(), **kwargs)


def test_batch_larger_than_train_split_is_an_error() -> None:
    dm = DiffusionDataModule(Toy2D(num_train=10, num_val=10), global_batch_size=16)
    with pytest.raises(ValueError, match="fewer than global_batch_size=16"):
        dm.train_dataloader()


@pytest.mark.parametrize(
    ("source", "shape"),
    [
        ({"class_path": "diffusion_pl.data.Toy2D", "init_args": {"name": "moons"}}, (2,)),
        (
            {
                "class_path": "diffusion_pl.data.GaussianMixture",
                "init_args": {"means": [[0, 0, 0]], "std": 1.0},
            },
            (3,),
        ),
        ({"class_path": "diffusion_pl.data.Digits", "init_args": {"size": 16}}, (1, 16, 16)),
        (
            {
                "class_path": "diffusion_pl.data.HFImages",
                "init_args": {"path": "uoft-cs/cifar10", "data_files": {"train": ["a.parquet"]}},
            },
            (3, 32, 32),
        ),
    ],
)
def test_sources_parse_from_yaml_config(source: dict[str, Any], shape: tuple[int, ...]) -> None:
    parser = ArgumentParser()
    parser.add_class_arguments(DiffusionDataModule, "data")
    config = parser.parse_object({"data": {"source": source, "global_batch_size": 8}})
    dm = parser.instantiate_classes(config).data
    assert isinstance(dm, DiffusionDataModule) and dm.data_shape == shape
