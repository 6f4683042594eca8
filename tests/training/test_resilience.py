"""Surviving long runs: SIGTERM and exact resume, NaN stops, atomic checkpoints, bf16, compile."""

from __future__ import annotations

import csv
import os
import re
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from run_helpers import launch, toy_overrides
from torch import Tensor

from diffusion_pl.callbacks import StepSeed, StopOnNonFinite, TrainingDiverged
from diffusion_pl.checkpoints import AtomicCheckpointIO, read_checkpoint
from diffusion_pl.cli import main
from diffusion_pl.data import DiffusionDataModule, Toy2D
from diffusion_pl.runs import EXIT_PREEMPTED

EMA = ["--trainer.callbacks+=diffusion_pl.callbacks.EMA",
       "--trainer.callbacks.init_args.halflife_samples", "2000"]  # fmt: skip


def _last(root: Path) -> Path:
    """The newest last.ckpt under ``root``."""
    return max(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)


def _losses(root: Path) -> dict[int, float]:
    """``step -> train/loss`` from every CSV log under ``root``."""
    losses = {}
    for path in root.rglob("metrics.csv"):
        for row in csv.DictReader(path.open()):
            if row.get("train/loss"):
                losses[int(row["step"])] = float(row["train/loss"])
    return losses


@pytest.mark.slow
def test_sigterm_leaves_a_checkpoint_and_the_resumed_run_matches_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    steps = 28  # 8 batches per epoch: the interruption lands mid-epoch, the resumed run spans 3
    whole, split = tmp_path / "whole", tmp_path / "split"
    main(["fit", *toy_overrides(whole, steps, *EMA)])

    marker = tmp_path / "step"
    pace = ["--trainer.callbacks+=run_helpers.Pace", "--trainer.callbacks.init_args.marker",
            str(marker), "--trainer.callbacks.init_args.seconds", "0.2"]  # fmt: skip
    fit = ["-m", "diffusion_pl", "fit", *toy_overrides(split, steps, *EMA, *pace)]
    run = launch(fit, wait=False)
    deadline = time.monotonic() + 240
    while not (marker.is_file() and marker.read_text() and int(marker.read_text()) >= 10):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[0]
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    output = run.communicate(timeout=120)[0]
    assert run.returncode == EXIT_PREEMPTED == 75, output  # after last.ckpt is written
    interrupted = read_checkpoint(_last(split))
    assert 10 <= interrupted["global_step"] < steps, output
    step, config = interrupted["global_step"], _last(split).parent.parent / "config.yaml"
    assert (
        f"diffusion-pl outputs\nstate:       stopped by SIGTERM at step {step} (exit code 75); "
        f"resume with: diffusion-pl fit --config {config} --ckpt_path last\n"
    ) in output
    assert f"checkpoint:  {_last(split)}" in output

    main(["fit", *toy_overrides(split, steps, *EMA), "--ckpt_path", "last"])
    a, b = read_checkpoint(_last(whole)), read_checkpoint(_last(split))
    assert a["global_step"] == b["global_step"] == steps
    for key in ("state_dict", "current_model_state"):  # EMA average and raw weights
        for name, value in a[key].items():
            torch.testing.assert_close(b[key][name], value, rtol=1e-5, atol=1e-6, msg=name)
    opt_a, opt_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i, state in opt_a.items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(opt_b[i][name], state[name], rtol=1e-5, atol=1e-7)
    assert a["lr_schedulers"][0]["_last_lr"] == pytest.approx(b["lr_schedulers"][0]["_last_lr"])
    loss_a, loss_b = _losses(whole), _losses(split)
    resumed = [s for s in loss_a if s > interrupted["global_step"]]
    assert resumed and all(loss_b[s] == pytest.approx(loss_a[s], rel=1e-4) for s in resumed)


def test_step_seed_gives_each_rank_step_and_batch_its_own_draws() -> None:
    """Same (seed, rank, step, batch) → same draws; any one of them changed → different draws;
    the run seed travels in the callback's state, so a resumed run keeps it."""

    def draws(callback: StepSeed, rank: int, step: int, batch_idx: int) -> Tensor:
        trainer = SimpleNamespace(global_rank=rank, global_step=step)
        callback.on_train_batch_start(trainer, None, None, batch_idx)
        return torch.rand(4)

    seeded = StepSeed(seed=7)
    reference = draws(seeded, 0, 5, 3)
    torch.rand(100)  # whatever happened in between
    assert torch.equal(draws(seeded, 0, 5, 3), reference)
    for other in [(1, 5, 3), (0, 6, 3), (0, 5, 4)]:
        assert not torch.equal(draws(seeded, *other), reference), other
    assert not torch.equal(draws(StepSeed(seed=8), 0, 5, 3), reference)
    resumed = StepSeed()
    resumed.load_state_dict(seeded.state_dict())
    assert torch.equal(draws(resumed, 0, 5, 3), reference)


def test_training_loader_resumes_mid_epoch_and_across_epochs() -> None:
    dm = DiffusionDataModule(
        Toy2D(num_train=64, num_val=8), global_batch_size=16
    )  # 4 batches/epoch
    torch.manual_seed(3)
    whole = dm.train_dataloader()
    order = [x for _ in range(3) for x, _ in whole]
    torch.manual_seed(3)
    first = dm.train_dataloader()
    served = [x for _, (x, _) in zip(range(6), _epochs(first), strict=False)]
    state, epoch = first.state_dict(), first.sampler.epoch - 1  # stopped 2 batches into epoch 1
    assert state == {"steps_served": 2}
    torch.manual_seed(3)
    again = dm.train_dataloader()
    again.load_state_dict(state)
    again.sampler.set_epoch(epoch)  # as Lightning does before each epoch
    rest = [x for _ in range(2) for x, _ in again]
    for got, want in zip(served + rest, order, strict=True):
        torch.testing.assert_close(got, want)


def _epochs(loader):
    """Batches of ``loader`` over as many epochs as are consumed."""
    while True:
        yield from loader


def _stopped_run(tmp_path: Path, *overrides: str) -> tuple[str, dict, Path]:
    """Fit the toy until it diverges: the error message, the saved last.ckpt and the folder of
    the weights at the start of every step (``run_helpers.Snapshot``)."""
    snapshots = tmp_path / "snapshots"
    with pytest.raises(TrainingDiverged) as stopped:
        main(["fit", *toy_overrides(tmp_path, 20), *overrides,
              "--trainer.callbacks+=run_helpers.Snapshot",
              "--trainer.callbacks.init_args.folder", str(snapshots)])  # fmt: skip
    return str(stopped.value), read_checkpoint(_last(tmp_path)), snapshots


def _assert_weights_before_step(checkpoint: dict, snapshots: Path, step: int, key: str) -> None:
    """The checkpoint is at ``step`` and holds exactly the (finite) weights from before it."""
    assert checkpoint["global_step"] == step
    before = torch.load(snapshots / f"step{step}.pt")
    assert set(checkpoint[key]) == set(before)
    for name, value in before.items():
        assert torch.isfinite(checkpoint[key][name]).all(), name
        assert torch.equal(checkpoint[key][name], value), name


@pytest.mark.slow
@pytest.mark.parametrize("where", ["output", "gradient"])
def test_nonfinite_loss_or_gradient_stops_before_the_update_and_saves_the_last_good_state(
    tmp_path: Path, where: str
) -> None:
    net = ["--model.init_args.net", "run_helpers.NaNAfterMLP",
           "--model.init_args.net.init_args.nan_from", "3",
           "--model.init_args.net.init_args.where", where,
           "--model.init_args.net.init_args.hidden", "32", *EMA]  # fmt: skip
    message, checkpoint, snapshots = _stopped_run(tmp_path, *net)
    what = "training loss" if where == "output" else "gradient norm"
    assert re.match(rf"the {what} is nan at step 3 \(epoch 0\); stopped before that step's "
                    r"update, and the weights from before it are saved as .*last\.ckpt\. ",
                    message), message  # fmt: skip
    _assert_weights_before_step(checkpoint, snapshots, 3, "current_model_state")  # raw weights
    ema = checkpoint["state_dict"]  # the average, updated only after good steps
    assert all(torch.isfinite(v).all() for v in ema.values())
    assert any(not torch.equal(ema[k], v) for k, v in checkpoint["current_model_state"].items())


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["non-finite", "loss spike"])
def test_learning_rate_1e6_keeps_the_weights_from_before_the_step_that_diverged(
    tmp_path: Path, rule: str
) -> None:
    """The issue's run: lr 1e6 sends the loss from 9.2 to 1e14 at step 1 and to NaN at step 2.
    The default checks stop before step 2's update; the loss-spike rule before step 1's."""
    spike = ["--trainer.callbacks+=diffusion_pl.callbacks.StopOnLossSpike"]
    lr = [
        "--model.init_args.optimizer.init_args.lr",
        "1e6",
        *(spike if rule != "non-finite" else []),
    ]
    message, checkpoint, snapshots = _stopped_run(tmp_path, *lr)
    if rule == "non-finite":
        assert message.startswith("the training loss is nan at step 2 (epoch 0)"), message
    else:
        assert re.match(r"the training loss 1\.\d+e\+14 is over 10 x the median 9\.\d+ of the "
                        r"last 1 losses at step 1 ", message), message  # fmt: skip
    _assert_weights_before_step(
        checkpoint, snapshots, 2 if rule == "non-finite" else 1, "state_dict"
    )


def test_a_checkpoint_with_nonfinite_weights_is_refused() -> None:
    class Stub:
        global_step, checkpoint_callback = 7, None

    state = {"net.w": torch.tensor([1.0, float("inf")]), "steps": torch.tensor(3)}
    with pytest.raises(FloatingPointError, match=r"step 7: 1 weight tensors .*first: net.w"):
        StopOnNonFinite().on_save_checkpoint(Stub(), None, {"state_dict": state})


def test_the_gradient_check_leaves_inf_gradients_to_a_loss_scaler() -> None:
    """With 16-mixed, inf gradients are the GradScaler's to skip (it lowers the scale): no stop."""
    module = torch.nn.Linear(2, 1)
    module.weight.grad = torch.full_like(module.weight, float("inf"))
    trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=object()))
    StopOnNonFinite().on_before_optimizer_step(trainer, module, None)  # returns, no stop


def test_atomic_checkpoint_io_never_leaves_a_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "run" / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    replaced, real_replace = [], os.replace
    monkeypatch.setattr(
        os, "replace", lambda a, b: replaced.append(Path(a).parent) or real_replace(a, b)
    )
    io.save_checkpoint({"step": torch.tensor(2)}, path)
    assert replaced == [path.parent]  # staged beside the target, then renamed over it

    def crash(obj, f) -> None:
        f.write(b"half a checkpoint")
        raise SIGTERMException  # killed mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(SIGTERMException):
        io.save_checkpoint({"step": torch.tensor(3)}, path)
    assert io.load_checkpoint(path)["step"] == 2  # the old checkpoint, intact
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left
