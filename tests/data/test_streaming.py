"""Streamed training data from local parquet shards: each example once per epoch, exact resume."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import datasets as hf
import numpy as np
import PIL.Image
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from diffusion_pl.checkpoints import read_checkpoint
from diffusion_pl.cli import main
from diffusion_pl.data import DiffusionDataModule, HFImages
from diffusion_pl.data.streaming import StreamingLoader, StreamingSplit

pytestmark = pytest.mark.usefixtures("one_thread")

SHARDS, PER_SHARD, BATCH = 4, 24, 8
NUM = SHARDS * PER_SHARD  # 96 examples, 12 batches of 8 per epoch on one rank


@pytest.fixture(autouse=True)
def _private_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _write_shards(root: Path) -> Path:
    """Four train parquet shards of 24 greyscale 8×8 PNGs, and one test shard of 8.

    Train image i (0–95) has the grey level i in its top-left pixel, so a batch names its
    examples; the label is i mod 10.
    """
    features = hf.Features({"image": hf.Image(), "label": hf.Value("int64")})
    rng = np.random.default_rng(0)

    def image(i: int) -> PIL.Image.Image:
        pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
        pixels[0, 0] = i
        return PIL.Image.fromarray(pixels)

    root.mkdir(parents=True, exist_ok=True)
    for shard in range(SHARDS):
        ids = range(shard * PER_SHARD, (shard + 1) * PER_SHARD)
        rows = {"image": [image(i) for i in ids], "label": [i % 10 for i in ids]}
        hf.Dataset.from_dict(rows, features=features).to_parquet(root / f"train-{shard}.parquet")
    rows = {"image": [image(200 + i) for i in range(8)], "label": list(range(8))}
    hf.Dataset.from_dict(rows, features=features).to_parquet(root / "test-0.parquet")
    return root


def _source(root: Path, **kwargs: Any) -> HFImages:
    return HFImages(
        str(root), builder="parquet", image_column="image", image_size=8, channels=1,
        data_files={"train": "train-*.parquet", "test": "test-*.parquet"},
        streaming=True, shuffle_buffer=16, **kwargs,
    )  # fmt: skip


def _ids(x: torch.Tensor) -> list[int]:
    """The example indices of a batch, read off the top-left pixels."""
    return torch.round((x[:, 0, 0, 0] + 1) * 127.5).long().tolist()


def _take(loader: StreamingLoader, batches: int) -> list[list[int]]:
    """The ids of the next ``batches`` batches, passing from epoch to epoch as Lightning does."""
    taken: list[list[int]] = []
    while len(taken) < batches:
        for x, _ in loader:
            taken.append(_ids(x))
            if len(taken) == batches:
                break
    return taken


def _flat(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_shards(tmp_path_factory.mktemp("shards"))


def test_stream_metadata_and_val_split(shards: Path) -> None:
    source = _source(shards, num_val=5)
    train, val = source.load("train"), source.load("val")
    assert isinstance(train, StreamingSplit)
    assert (train.num_examples, train.num_shards) == (NUM, SHARDS)  # from the parquet footers
    assert len(val) == 5 and _ids(torch.stack([val[i][0] for i in range(5)])) == [
        200, 201, 202, 203, 204
    ]  # fmt: skip
    assert _source(shards, num_train=50).load("train").num_examples == 50
    dm = DiffusionDataModule(source, global_batch_size=BATCH)
    with pytest.raises(ValueError, match="the train split is streamed"):
        dm.real_samples("train", 4)
    with pytest.raises(ValueError, match="num_workers=5, but the stream has 4 shard"):
        DiffusionDataModule(source, global_batch_size=BATCH, num_workers=5).train_dataloader()


@pytest.mark.parametrize(("workers", "stop"), [(0, 5), (0, 12), (2, 17)])
def test_stream_serves_each_example_once_and_resumes_exactly(
    shards: Path, workers: int, stop: int
) -> None:
    """Two epochs: each a permutation of all 96 examples, mixed across shards, a new order each
    epoch; a loader restored from a state taken after ``stop`` batches serves what follows."""

    def loader() -> StreamingLoader:
        torch.manual_seed(7)
        dm = DiffusionDataModule(_source(shards), global_batch_size=BATCH, num_workers=workers)
        return dm.train_dataloader()

    whole = loader()
    assert len(whole) == NUM // BATCH
    order = _take(whole, 2 * len(whole))
    epochs = [_flat(order[: len(whole)]), _flat(order[len(whole) :])]
    for ids in epochs:
        assert sorted(ids) == list(range(NUM))
        assert ids != sorted(ids)
    assert epochs[0] != epochs[1]
    assert epochs[0][:BATCH] != sorted(epochs[0][:BATCH])  # a shuffled window, not rows in order
    interrupted = loader()
    served = _take(interrupted, stop)
    state = json.loads(json.dumps(interrupted.state_dict()))  # plain data, as in a checkpoint
    resumed = loader()
    resumed.load_state_dict(state)
    rest = _take(resumed, 2 * len(whole) - stop)
    assert served + rest == order


def test_resume_refuses_other_workers_or_ranks(shards: Path) -> None:
    dm = DiffusionDataModule(_source(shards), global_batch_size=BATCH, num_workers=2)
    saved = dm.train_dataloader()
    _take(saved, 3)
    state = saved.state_dict()
    other = DiffusionDataModule(_source(shards), global_batch_size=BATCH).train_dataloader()
    with pytest.raises(ValueError, match=r"for 2 reader.*but this run has 1 .*num_workers"):
        other.load_state_dict(state)
    two_ranks = {"ranks": state["ranks"] * 2}
    with pytest.raises(ValueError, match=r"for 2 rank.*but this run has 1"):
        other.load_state_dict(two_ranks)


def _rank(rank: int, root: str, port: int) -> None:
    """One of two gloo ranks: a whole epoch, then 3 batches, a saved state and the rest."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    data = _source(Path(root)).load("train")

    def loader() -> StreamingLoader:
        return StreamingLoader(data, BATCH, rank, 2, seed=3)

    whole = _take(loader(), 6)
    first = loader()
    served = _take(first, 3)  # 24 rows: into the second window of 16
    state = first.state_dict()  # a collective: both ranks' positions
    again = loader()
    again.load_state_dict(state)
    rest = _take(again, 3)
    Path(root, f"rank{rank}.json").write_text(
        json.dumps({"whole": whole, "resumed": served + rest})
    )
    dist.destroy_process_group()


def test_two_ranks_share_the_epoch_and_resume_exactly(tmp_path: Path) -> None:
    root = _write_shards(tmp_path / "shards")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(str(root), port), nprocs=2, start_method="fork")
    reports = [json.loads((root / f"rank{r}.json").read_text()) for r in (0, 1)]
    epoch = [_flat(r["whole"]) for r in reports]
    assert all(len(e) == NUM // 2 for e in epoch)  # 6 batches of 8 on each rank
    assert sorted(epoch[0] + epoch[1]) == list(range(NUM))  # every example exactly once
    for report in reports:
        assert report["resumed"] == report["whole"]


@pytest.mark.slow
def test_fit_resumed_mid_epoch_from_its_checkpoint_trains_like_an_uninterrupted_fit(
    shards: Path, tmp_path: Path
) -> None:
    """Through the CLI: 5 steps, then a resume from last.ckpt to step 14 (past the end of the
    12-batch epoch), gives the weights of 14 uninterrupted steps: the stream's position is in
    the checkpoint, and Lightning does not read ahead of it."""
    data = {"data": {"global_batch_size": BATCH, "source": {
        "class_path": "diffusion_pl.data.HFImages",
        "init_args": {"path": str(shards), "builder": "parquet", "image_column": "image",
                      "image_size": 8, "channels": 1, "streaming": True, "shuffle_buffer": 16,
                      "data_files": {"train": "train-*.parquet", "test": "test-*.parquet"}},
    }}}  # fmt: skip
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data))
    config = Path(__file__).resolve().parents[2] / "configs/digits/rectified_flow.yaml"

    def fit(root: Path, steps: int, *extra: str) -> Path:
        """Fit under ``root``; its newest last.ckpt (a resume logs to a new version folder)."""
        main(["fit", "--config", str(config), "--config", str(tmp_path / "data.yaml"),
              "--trainer.default_root_dir", str(root), "--trainer.accelerator", "cpu",
              "--trainer.enable_progress_bar", "false", "--trainer.max_steps", str(steps),
              "--trainer.limit_val_batches", "0",
              "--model.init_args.net.init_args.base_channels", "16",
              "--model.init_args.sampler.init_args.steps", "2", *extra])  # fmt: skip
        return max(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)

    whole = read_checkpoint(fit(tmp_path / "whole", 14))
    fit(tmp_path / "parts", 5)
    resumed = read_checkpoint(fit(tmp_path / "parts", 14, "--ckpt_path", "last"))
    assert resumed["global_step"] == whole["global_step"] == 14
    assert resumed["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["ranks"][0][
        "epoch"
    ] == 1  # fmt: skip
    for name, value in whole["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), name
