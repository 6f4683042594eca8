"""The global batch: its split over devices and micro-batches changes neither data nor noise."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from run_helpers import launch, toy_overrides
from torch import Tensor

from diffusion_pl.checkpoints import load_datamodule, read_checkpoint
from diffusion_pl.cli import main
from diffusion_pl.data import DiffusionDataModule, Toy2D
from diffusion_pl.data.loading import split_global_batch
from diffusion_pl.formulations import (
    EDM,
    NCSN,
    VDM,
    ConsistencyModel,
    MeanFlow,
    NoisyClassifier,
    RectifiedFlow,
    ScoreSDE,
)
from diffusion_pl.nets import MLP, MLPClassifier
from diffusion_pl.objectives.consistency import LognormalIntervals
from diffusion_pl.paths import VPLinearPath
from diffusion_pl.randomness import ExampleNoise, rand, randn
from diffusion_pl.weighting import ELBO

STEPS, GLOBAL = 20, 64
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo"}


def test_split_global_batch_and_its_errors() -> None:
    assert split_global_batch(512, 8, 128) == (64, 1)  # EDM's CIFAR-10 batch on 8 GPUs
    assert split_global_batch(512, 1, 128) == (128, 4)  # ... on one
    assert split_global_batch(128, 1, 48) == (32, 4)  # the largest divisor under the cap
    assert split_global_batch(96, 2) == (48, 1)
    with pytest.raises(ValueError, match=r"global_batch_size=100 is not divisible by the 3 "
                       r"processes .* \(e\.g\. 99 or 102\)"):  # fmt: skip
        split_global_batch(100, 3)
    dm = DiffusionDataModule(Toy2D(num_train=64, num_val=8), global_batch_size=16)
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0, accumulate_grad_batches=3)
    with pytest.raises(ValueError, match=r"trainer.accumulate_grad_batches=3, but .* set "
                       r"data.max_device_batch"):  # fmt: skip
        dm.setup("fit")
    with pytest.raises(ValueError, match="max_device_batch must be > 0"):
        DiffusionDataModule(Toy2D(), max_device_batch=0)


def test_a_checkpoint_from_before_the_global_batch_still_loads_its_data(tmp_path: Path) -> None:
    """Checkpoints written when ``data.batch_size`` was per device keep evaluating."""
    source = {"class_path": "diffusion_pl.data.Toy2D", "init_args": {"num_train": 64}}
    hparams = {"source": source, "batch_size": 24, "drop_last": True}
    torch.save({"datamodule_hyper_parameters": hparams}, tmp_path / "old.ckpt")
    dm = load_datamodule(tmp_path / "old.ckpt")
    assert dm.global_batch_size == 24 and isinstance(dm.source, Toy2D)


def _global_batches(world: int, cap: int | None) -> list[Tensor]:
    """Each step's global batch as ``world`` ranks with micro-batches of at most ``cap`` see it."""
    ranks = []
    for rank in range(world):
        dm = DiffusionDataModule(Toy2D(num_train=100, num_val=8), 16, max_device_batch=cap)
        dm.trainer = SimpleNamespace(world_size=world, global_rank=rank, accumulate_grad_batches=1)
        dm.setup("fit")
        torch.manual_seed(5)
        loader = dm.train_dataloader()
        ranks.append([x for _ in range(2) for x, _ in loader])  # two epochs
    micro = len(ranks[0]) // 12  # 6 steps of 16 per epoch (4 of 100 examples dropped)
    return [
        torch.cat([ranks[r][s * micro + m] for r in range(world) for m in range(micro)])
        for s in range(12)
    ]


def test_global_batches_hold_the_same_examples_on_any_split() -> None:
    whole = _global_batches(1, None)
    for world, cap in [(2, None), (1, 8), (2, 4)]:
        for got, want in zip(_global_batches(world, cap), whole, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.equal(whole[0], whole[6])  # a new order each epoch


def _split(parts: int, fn, total: int = 40) -> Tensor:
    """``fn(noise, rows)`` over ``parts`` equal micro-batches of a global batch, concatenated."""
    n = total // parts
    return torch.cat([fn(ExampleNoise(3, 7, p * n, total), slice(p * n, (p + 1) * n))
                      for p in range(parts)])  # fmt: skip


def test_example_noise_rows_do_not_depend_on_the_split() -> None:
    def draws(noise: ExampleNoise, rows: slice) -> Tensor:
        n = rows.stop - rows.start
        u = noise.low_discrepancy(n, "cpu")[:, None]
        return torch.cat([rand((n, 3), noise), randn((n, 2), noise), u], 1)

    whole = _split(1, draws)
    for parts in (2, 4, 5):  # micro-batches of 20, 10, 8: block boundaries fall inside them
        torch.testing.assert_close(_split(parts, draws), whole, rtol=0, atol=0)
    u = whole[:, -1].sort().values  # low discrepancy over the global batch: one per 1/40
    assert torch.all((u[1:] - u[:-1] - 1 / 40).abs() < 1e-12)
    next_step = rand((40, 3), ExampleNoise(3, 8, 0, 40))
    assert not torch.equal(next_step, whole[:, :3])  # another step, other draws


def _formulations() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    net = {"hidden": 16, "depth": 1, "embedding_dim": 8}
    return {
        "vdm": VDM(MLP(**net), (2,)),  # low-discrepancy times on the DDPM grid
        "vdm_elbo": VDM(MLP(**net), (2,), path=VPLinearPath(), weighting=ELBO()),
        "ncsn": NCSN(MLP(**net), (2,)),
        "score_sde": ScoreSDE(MLP(**net, num_classes=3), (2,), p_uncond=0.5),
        "rectified_flow": RectifiedFlow(MLP(**net), (2,)),
        "edm": EDM(MLP(**net), (2,)),
        "consistency": ConsistencyModel(MLP(**net), (2,), levels=LognormalIntervals(num_scales=18)),
        "meanflow": MeanFlow(MLP(**net, num_noise_labels=2), (2,)),
    }


@pytest.mark.parametrize("name", list(_formulations()))
def test_every_formulation_draws_its_loss_noise_per_example(name: str) -> None:
    module = _formulations()[name]
    x0 = torch.randn(40, 2, generator=torch.Generator().manual_seed(1))
    y = torch.arange(40) % 3
    whole = _split(1, lambda noise, rows: module.loss(x0[rows], y[rows], noise))
    torch.testing.assert_close(
        _split(2, lambda noise, rows: module.loss(x0[rows], y[rows], noise)), whole
    )


def test_the_noisy_classifier_draws_per_example() -> None:
    module = NoisyClassifier(MLPClassifier(num_classes=3, hidden=16), (2,), VPLinearPath())
    x0 = torch.randn(40, 2, generator=torch.Generator().manual_seed(1))
    whole = _split(1, lambda noise, rows: torch.cat(module.noisy(x0[rows], noise)[:1], 1))
    torch.testing.assert_close(
        _split(4, lambda noise, rows: torch.cat(module.noisy(x0[rows], noise)[:1], 1)), whole
    )


def _args(root: Path, *extra: str) -> list[str]:
    """The toy rectified flow: 512 points, global batch 64 (8 steps an epoch), 20 steps, fp32."""
    return [*toy_overrides(root, STEPS), "--data.source.init_args.num_train", "512",
            "--data.global_batch_size", str(GLOBAL),
            "--model.init_args.optimizer.init_args.lr", "0.01", *extra]  # fmt: skip


def _weights(root: Path) -> dict[str, Tensor]:
    newest = max(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    checkpoint = read_checkpoint(newest)
    assert checkpoint["global_step"] == STEPS
    return checkpoint["state_dict"]


def _logged(root: Path, key: str) -> dict[int, float]:
    rows = [row for path in root.rglob("metrics.csv") for row in csv.DictReader(path.open())]
    return {int(row["step"]): float(row[key]) for row in rows if row.get(key)}


DDP = ("--trainer.devices", "2", "--trainer.strategy", "ddp")


@pytest.mark.slow
def test_one_device_accumulating_two_devices_and_the_whole_batch_train_the_same_model(
    tmp_path: Path,
) -> None:
    """20 steps over 2.5 epochs: 1 process with the whole batch (the reference), 1 process
    accumulating 2 micro-batches, 2 gloo processes, and 1 process accumulating 2 that is
    stopped by SIGTERM within step 6 and resumed on 2 processes."""
    whole, accumulated, ddp, resumed = (tmp_path / n for n in ("whole", "acc", "ddp", "resumed"))
    main(["fit", *_args(whole)])
    main(["fit", *_args(accumulated, "--data.max_device_batch", "32")])
    run = launch(["-m", "diffusion_pl", "fit", *_args(ddp, *DDP)], env=LOOPBACK)
    assert run.returncode == 0, run.stdout + run.stderr

    kill = [
        "--trainer.callbacks+=run_helpers.SigtermAt",
        "--trainer.callbacks.init_args.batch",
        "12",
    ]
    with pytest.raises(SystemExit) as stopped:  # micro-batch 12 is the first half of step 6
        main(["fit", *_args(resumed, "--data.max_device_batch", "32", *kill)])
    assert stopped.value.code == 75
    (ckpt,) = resumed.rglob("last.ckpt")
    assert read_checkpoint(ckpt)["global_step"] == 7  # held to the end of the step
    run = launch(["-m", "diffusion_pl", "fit", *_args(resumed, *DDP), "--ckpt_path", "last"],
                 env=LOOPBACK)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "data.max_device_batch: 32 -> null" in run.stdout  # an honoured change

    reference = _weights(whole)
    for root in (accumulated, ddp, resumed):
        for name, value in _weights(root).items():
            torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-6, msg=name)
    for root in (whole, ddp):
        kimg = _logged(root, "train/kimg")
        assert kimg[STEPS - 1] == pytest.approx(STEPS * GLOBAL / 1000)
        assert all(v > 0 for v in _logged(root, "train/images_per_sec").values())
