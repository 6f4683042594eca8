"""DDP for real on 2 CPU processes (gloo): one machine via Lightning, two nodes via torchrun."""

from __future__ import annotations

import csv
import socket
from pathlib import Path

import pytest
import torch
from run_helpers import launch, toy_overrides

from diffusion_pl.checkpoints import read_checkpoint

pytestmark = pytest.mark.slow

STEPS = 16
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo"}


def _fit_args(root: Path, *extra: str) -> list[str]:
    """A short DDP fit of the toy flow that makes every rank report its final state."""
    return ["-m", "diffusion_pl", "fit", *toy_overrides(root, STEPS),
            "--trainer.strategy", "ddp", "--model.init_args.optimizer.init_args.lr", "0.01",
            "--trainer.callbacks+=run_helpers.RankReport",
            "--trainer.callbacks.init_args.out", str(root / "ranks"), *extra]  # fmt: skip


def _check_ranks_agree(root: Path) -> None:
    """Both ranks trained STEPS steps to identical weights from their own noise draws; only
    rank 0 wrote checkpoints."""
    reports = [torch.load(root / "ranks" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert [r["global_step"] for r in reports] == [STEPS, STEPS]
    assert reports[0]["writes"] >= 1 and reports[1]["writes"] == 0  # one checkpoint writer
    rngs = [r["rng_after_first_batch"] for r in reports]
    assert not torch.equal(*rngs)  # StepSeed: each rank its own t and ε
    for name, value in reports[0]["state_dict"].items():
        assert torch.equal(reports[1]["state_dict"][name], value), name
    (ckpt,) = root.rglob("*.ckpt")
    assert read_checkpoint(ckpt)["global_step"] == STEPS
    (logs,) = root.rglob("metrics.csv")  # rank 0 logs, once
    losses = [float(row["train/loss"]) for row in csv.DictReader(logs.open())]
    assert len(losses) == STEPS
    assert sum(losses[-4:]) < 0.9 * sum(losses[:4]), losses  # the loss falls


def test_ddp_on_two_cpu_processes(tmp_path: Path) -> None:
    args = _fit_args(tmp_path, "--trainer.devices", "2")
    result = launch(args, env=LOOPBACK)
    assert result.returncode == 0, result.stdout + result.stderr
    _check_ranks_agree(tmp_path)
    assert result.stdout.count("diffusion-pl outputs") == 1  # rank 0 alone reports


def test_two_nodes_with_torchrun_on_loopback(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = ["-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                "--master-addr", "127.0.0.1", "--master-port", str(port)]  # fmt: skip
    fit = _fit_args(tmp_path, "--trainer.num_nodes", "2")
    nodes = [
        launch([*torchrun, "--node-rank", str(rank), *fit], env=LOOPBACK, wait=False)
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(outputs)
    _check_ranks_agree(tmp_path)
