"""Test-only pieces that runs load by ``class_path``; tests/helpers is on PYTHONPATH for them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from torch import Tensor

from diffusion_pl.callbacks import PostHocEMA
from diffusion_pl.formulations import NoisyClassifier
from diffusion_pl.nets import MLP, MLPClassifier
from diffusion_pl.paths import LinearPath
from diffusion_pl.phema import gamma_of_sigma_rel, power_beta

__all__ = ["TOY", "NaNAfterMLP", "Pace", "PhemaReport", "PowerEMA", "RankReport", "SigtermAt",
           "Snapshot", "launch", "toy_overrides"]  # fmt: skip

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "configs/toy2d/rectified_flow.yaml"


def toy_overrides(root: Path, max_steps: int, *extra: str) -> list[str]:
    """CLI arguments for a tiny, fast toy rectified flow run under ``root`` on the CPU.

    8 batches of 256 per epoch, an MLP of width 32, per-step CSV logs, no validation.
    """
    return [
        "--config", str(TOY), "--trainer.default_root_dir", str(root),
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.max_steps", str(max_steps),
        "--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "0",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.init_args.save_dir", str(root),
        "--data.source.init_args.num_train", "2048", "--data.source.init_args.num_val", "64",
        "--model.init_args.net.init_args.hidden", "32",
        "--model.init_args.net.init_args.depth", "2",
        "--model.init_args.sampler.init_args.steps", "2",
        "--model.init_args.lr_scheduler.init_args.T_max", str(max_steps),
        "--trainer.callbacks.init_args.num_samples", "16",  # the last callback: SampleGrid
        *extra,
    ]  # fmt: skip


def launch(
    args: list[str], *, timeout: float = 300, env: dict[str, str] | None = None, wait: bool = True
) -> subprocess.CompletedProcess | subprocess.Popen:
    """Run ``python ARGS`` with tests/helpers importable and one thread per process.

    With ``wait=False`` return the running ``Popen`` (stdout and stderr piped together).
    """
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "tests" / "helpers"), os.environ.get("PYTHONPATH", "")]
        ),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        **(env or {}),
    }
    command = [sys.executable, *args]
    if not wait:
        return subprocess.Popen(
            command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=timeout)


class Pace(Callback):
    """Write the global step to ``marker`` after every batch and sleep, so a test can interrupt."""

    def __init__(self, marker: str, seconds: float = 0.1) -> None:
        self.marker, self.seconds = Path(marker), seconds

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        # Atomically: a reader polling the marker never sees it truncated (empty).
        tmp = self.marker.with_suffix(".tmp")
        tmp.write_text(str(trainer.global_step))
        os.replace(tmp, self.marker)
        time.sleep(self.seconds)


class RankReport(Callback):
    """Each rank saves its final weights, how many checkpoint files it wrote and the global RNG
    state after its first training batch (which reflects the t and ε it drew) to ``out``."""

    def __init__(self, out: str) -> None:
        self.out, self.writes = Path(out), 0
        self.rng_after_first_batch: Tensor | None = None

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if self.rng_after_first_batch is None:
            self.rng_after_first_batch = torch.get_rng_state()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        io = trainer.strategy.checkpoint_io
        save = io.save_checkpoint

        def counted(*args: Any, **kwargs: Any) -> None:
            self.writes += 1
            save(*args, **kwargs)

        io.save_checkpoint = counted

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        report = {
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "writes": self.writes,
            "rng_after_first_batch": self.rng_after_first_batch,
            "state_dict": {k: v.detach().cpu() for k, v in pl_module.state_dict().items()},
        }
        torch.save(report, self.out / f"rank{trainer.global_rank}.pt")


class NaNAfterMLP(MLP):
    """An MLP that turns NaN from its ``nan_from``-th training call (0-based) on: its output
    (``where="output"``: a NaN loss), or only the gradient flowing back through the output
    (``where="gradient"``: a finite loss with NaN gradients)."""

    def __init__(self, nan_from: int, where: str = "output", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nan_from, self.where, self.calls = nan_from, where, 0

    def forward(self, x: Tensor, noise_labels: Tensor | float, class_labels: Tensor | None = None):
        out = super().forward(x, noise_labels, class_labels)
        if self.training:
            self.calls += 1
            if self.calls > self.nan_from and self.where == "output":
                return out * float("nan")
            if self.calls > self.nan_from:
                out.register_hook(lambda grad: torch.full_like(grad, float("nan")))
        return out


class SigtermAt(Callback):
    """Send this process SIGTERM at the end of its ``batch``-th training batch (0-based, counted
    over epochs), as a preemption that lands there would."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.fit_loop.total_batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)


class Snapshot(Callback):
    """Save the module's weights at the start of every training step to ``folder/step{N}.pt``."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        torch.save(weights, self.folder / f"step{trainer.global_step}.pt")


class PowerEMA(Callback):
    """A power-function average of width ``sigma_rel`` tracked directly, step by step (the
    reference the post-hoc reconstruction must meet), saved to ``out`` when training ends."""

    def __init__(self, sigma_rel: float, out: str) -> None:
        self.gamma, self.out = gamma_of_sigma_rel(sigma_rel), Path(out)
        self.step, self.average = 0, {}

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if trainer.global_step == self.step:
            return
        self.step = trainer.global_step
        beta = power_beta(self.gamma, self.step)
        for name, p in pl_module.named_parameters():
            new = (1 - beta) * p.detach().double()
            self.average[name] = new + beta * self.average[name] if name in self.average else new

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        torch.save({k: v.float() for k, v in self.average.items()}, self.out)


class PhemaReport(Callback):
    """Each rank saves its PostHocEMA state and how many snapshots it wrote to ``out``."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        (phema,) = [c for c in trainer.callbacks if isinstance(c, PostHocEMA)]
        self.out.mkdir(parents=True, exist_ok=True)
        averages = [{k: v.cpu() for k, v in a.items()} for a in phema.averages]
        report = {"run_id": phema.run_id, "averages": averages, "written": len(phema.written)}
        torch.save(report, self.out / f"rank{trainer.global_rank}.pt")


def toy_classifier_checkpoint(path: Path) -> Path:
    """An untrained 2-D noisy classifier on the linear path, saved as ``fit`` would save it."""
    classifier = NoisyClassifier(MLPClassifier(hidden=8, depth=1), (2,), LinearPath())
    net = {"class_path": "diffusion_pl.nets.MLPClassifier", "init_args": {"hidden": 8, "depth": 1}}
    hparams = {
        "_class_path": "diffusion_pl.formulations.NoisyClassifier",
        "net": net,
        "data_shape": [2],
        "path": {"class_path": "diffusion_pl.paths.LinearPath"},
    }
    torch.save({"hyper_parameters": hparams, "state_dict": classifier.state_dict()}, path)
    return path
