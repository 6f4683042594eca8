"""Starting and resuming ``diffusion-pl fit`` runs (how they end: :mod:`.run_summary`).

**Where a run's checkpoints are.** :func:`checkpoint_folders` reads them off the config, as
Lightning places them: ``<save_dir>/<name>/<version>/checkpoints`` of the first logger
(``<default_root_dir>/lightning_logs/version_N/checkpoints`` by default),
``<default_root_dir>/checkpoints`` without a logger, a ModelCheckpoint's ``dirpath``, and
``<default_root_dir>`` itself for SLURM's ``hpc_ckpt_N.ckpt``. ``--ckpt_path last`` looks there
and nowhere else (never through the whole working directory), and a new run first deletes
what interrupted checkpoint writes left there (:func:`~.checkpoints.remove_stale_temporaries`).

**What a resume may change.** A checkpoint records the YAML config of its model and data
(:func:`~.hparams.record_config`). Resuming continues the trained state, so the model and data
that the config gives must be the checkpoint's, except for settings that do not change what is
trained and that the resumed run can honour:

* every ``trainer`` setting (``max_steps``, callbacks, precision, gradient clipping, devices…);
* the model's ``sampler`` and ``guidance_scale`` (:data:`RESUMABLE_MODEL_KEYS`): they choose how
  the model samples, not what it learns;
* the data's ``num_workers``, ``pin_memory``, ``prefetch_factor`` and ``max_device_batch``
  (:data:`RESUMABLE_DATA_KEYS`): how batches are loaded, not which (the per-device batch and
  accumulation follow from the global batch and the devices, which may change too). A streamed
  dataset (``HFImages(streaming: true)``) is the exception: its loader refuses a resume with
  another number of workers, or of ranks, since its shards would be dealt out anew.

Any other difference is an error naming each key with both values: the net, path,
parameterization, weighting, time sampling and p_uncond define what is trained; the optimizer
and LR schedule are restored from the checkpoint (Lightning loads their state, learning rate
and ``T_max`` included, over the config's); the data source and global batch size decide which
batches come next. The model's ``data_shape`` and VDM's ``num_levels`` are linked from the data
and compared through it. Honoured differences are printed, and the new run's config.yaml
records them, as it records what runs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml
from lightning import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from diffusion_pl.checkpoints import (
    check_checkpoint_fits,
    find_last_checkpoint,
    read_checkpoint,
    remove_stale_temporaries,
)
from diffusion_pl.config_diff import differences
from diffusion_pl.signals import EXIT_PREEMPTED

__all__ = [
    "EXIT_PREEMPTED",
    "RESUMABLE_DATA_KEYS",
    "RESUMABLE_MODEL_KEYS",
    "RunComplete",
    "check_fit",
    "checkpoint_folders",
    "prepare_checkpoint",
]

RESUMABLE_MODEL_KEYS = ("sampler", "guidance_scale")
"""Model init args a resume may change: they choose how the model samples, not what it learns."""

RESUMABLE_DATA_KEYS = ("num_workers", "pin_memory", "prefetch_factor", "max_device_batch")
"""Data init args a resume may change: how batches are loaded, not which."""

# Linked from the data, and so compared through it.
_LINKED_MODEL_KEYS = ("data_shape", "num_levels", "clip_samples")


class RunComplete(Exception):
    """``fit --ckpt_path`` names a checkpoint at or past ``max_steps``: nothing to train, and
    the command stops before it creates anything (no new log version, no redrawn grid)."""


def checkpoint_folders(trainer: dict[str, Any]) -> list[Path]:
    """The folders where a run with this ``trainer`` config writes its checkpoints.

    Args:
        trainer: the YAML ``trainer`` section (``default_root_dir``, ``logger``, ``callbacks``).

    Returns:
        The root (``hpc_ckpt_N.ckpt``), each ModelCheckpoint's ``dirpath``, and the existing
        ``checkpoints`` folders of the logger's versions (``<root>/checkpoints`` without one).
    """
    root = Path(trainer.get("default_root_dir") or os.getcwd())
    folders = [root]
    for callback in trainer.get("callbacks") or []:
        dirpath = isinstance(callback, dict) and (callback.get("init_args") or {}).get("dirpath")
        if dirpath:
            folders.append(Path(dirpath))
    logger = trainer.get("logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else False
    if logger is False:
        return [*folders, root / "checkpoints"]
    args = (logger.get("init_args") or {}) if isinstance(logger, dict) else {}
    logs = Path(args.get("save_dir") or root)
    name, version = args.get("name", "lightning_logs"), args.get("version")
    pattern = f"{'*' if name is None else name}/"
    pattern += (
        "*" if version is None else (version if isinstance(version, str) else f"version_{version}")
    )
    return [*folders, *sorted(p / "checkpoints" for p in logs.glob(pattern) if p.is_dir())]


@rank_zero_only
def _say(message: str) -> None:
    print(message, flush=True)


def prepare_checkpoint(given: dict[str, Any], subcommand: str) -> str | None:
    """Resolve ``ckpt_path`` (``last``: this run directory's newest) and check it fits the config.

    For ``fit``, first delete stale temporary files of interrupted checkpoint writes in the run's
    checkpoint folders. A checkpoint passes when its formulation is the config's and its model
    and data differ from the config's only in keys a resume may change (module docstring);
    those differences are printed.

    Args:
        given: the subcommand's YAML config (``trainer``, ``model``, ``data``, ``ckpt_path``).
        subcommand: ``fit``, ``validate`` or ``test``.

    Returns:
        The checkpoint to restore, or None (``last`` found nothing: a new run starts).

    Raises:
        ValueError: the checkpoint is another run's (the message names each key and the fix).
        RunComplete: a ``fit`` from a checkpoint at or past ``max_steps``.
    """
    folders = checkpoint_folders(given["trainer"])
    if subcommand == "fit":
        removed, other_hosts = remove_stale_temporaries(*folders)
        for path in removed:
            _say(f"removed {path}: a checkpoint write interrupted when its process died")
        for path in other_hosts:
            _say(f"left {path}: written by another host, whose processes this one cannot see")
    path = given.get("ckpt_path")
    found_by_last = path == "last"
    if found_by_last:
        path = find_last_checkpoint(*folders)
        if path is None:
            _say(
                "--ckpt_path last: no last*.ckpt or hpc_ckpt_*.ckpt in "
                f"{', '.join(map(str, folders))}: starting a new run from step 0"
            )
            return None
    if path is None or path in ("best", "hpc") or "://" in str(path):
        return path
    check_checkpoint_fits(path, given["model"]["class_path"])
    _compare(Path(path), given, subcommand, found_by_last)
    return str(path)


def _compare(path: Path, given: dict[str, Any], subcommand: str, found_by_last: bool) -> None:
    """Refuse a checkpoint whose model or data differ beyond what a resume may change."""
    checkpoint = read_checkpoint(path, mmap=True)
    step = checkpoint.get("global_step", 0)
    model, data = (
        {k: v for k, v in checkpoint.get(key, {}).items() if not k.startswith("_")}
        for key in ("hyper_parameters", "datamodule_hyper_parameters")
    )
    if not model or not data:
        _say(f"{path} does not record its model and data config; they were not compared")
        return
    given_model = {
        k: v for k, v in given["model"]["init_args"].items() if k not in _LINKED_MODEL_KEYS
    }
    found = [
        *differences(model, given_model, "model.init_args"),
        *differences(data, given["data"], "data"),
    ]
    honoured = [d for d in found if _resumable(d.key)]
    refused = [d for d in found if not _resumable(d.key)]
    config = path.parent.parent / "config.yaml"
    if refused:
        what = f"--ckpt_path last found {path} (step {step})" if found_by_last else (
            f"{path} (step {step})"
        )  # fmt: skip
        that_run = f" (that run's config: {config})" if config.is_file() else ""
        raise ValueError(
            f"{what}, but this config's model or data differ from that run's, and a resumed "
            "run keeps the trained model and its data (checkpoint -> this config):\n  "
            + "\n  ".join(f"{d}  ({_why(d.key)})" for d in refused)
            + "\nA resume may change only trainer settings, the model's "
            f"{' and '.join(RESUMABLE_MODEL_KEYS)} and the data's "
            f"{' and '.join(RESUMABLE_DATA_KEYS)}. Drop these overrides to resume that run"
            f"{that_run}, or start a new run in another trainer.default_root_dir."
        )
    if config.is_file():  # the run's trainer settings: honoured, shown for the record
        previous = yaml.safe_load(config.read_text()) or {}
        for key in ("seed_everything", "trainer"):
            honoured += differences(previous.get(key), given.get(key), key)
    lines = [f"resuming from {path} (step {step})"]
    if honoured:
        lines[0] += ", with these changes from that run (checkpoint -> this config):"
        lines += [f"  {d}" for d in honoured]
    _say("\n".join(lines))
    max_steps = given["trainer"].get("max_steps")
    if subcommand == "fit" and max_steps is not None and 0 < max_steps <= step:
        raise RunComplete(
            f"the run is complete: {path} is at step {step} and trainer.max_steps is "
            f"{max_steps}, so nothing was done; raise --trainer.max_steps to train on"
        )


def _why(key: str) -> str:
    """Why a resume cannot change the config key ``key``."""
    if key.startswith("data."):
        return "the data decide which batches come next"
    if key.split(".")[2] in ("optimizer", "lr_scheduler"):
        return "their state is restored from the checkpoint"
    return "it defines what the model learns"


def _resumable(key: str) -> bool:
    """Whether a resume may change the config key ``key`` (module docstring)."""
    parts = key.split(".")
    if parts[0] == "model":
        return parts[2] in RESUMABLE_MODEL_KEYS
    return parts[0] == "data" and parts[1] in RESUMABLE_DATA_KEYS


def check_fit(trainer: Trainer, module: LightningModule) -> None:
    """Refuse a fit that would train nothing, and bad optimizer arguments, before it starts.

    The optimizer and LR schedule are built once from the module's config, so torch's checks
    (a negative learning rate, betas outside [0, 1)…) fail here, naming the config key; an LR
    schedule whose length is not ``max_steps`` is a one-line warning.
    """
    for key in ("max_steps", "max_epochs"):
        if getattr(trainer, key) == 0:
            raise ValueError(
                f"trainer.{key} is 0: this fit would train nothing. Give a positive "
                f"trainer.{key}, or -1 (no limit, the other one stops the run)"
            )
    optimizer = module.hparams.get("optimizer")
    args = optimizer.get("init_args", {}) if isinstance(optimizer, dict) else {}
    lr = args.get("lr")
    if isinstance(lr, (int, float)) and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"model.init_args.optimizer.init_args.lr must be > 0, got {lr}")
    try:
        built = module.configure_optimizers()
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"model.init_args.optimizer or lr_scheduler: {err}. Fix their init_args in the config"
        ) from err
    if isinstance(built, dict) and trainer.max_steps > 0:
        _check_horizon(built["lr_scheduler"]["scheduler"], trainer.max_steps)


_HORIZONS = ("T_max", "total_steps")
"""Scheduler attributes (and init args) that are the schedule's length in steps."""


def _check_horizon(scheduler: object, max_steps: int) -> None:
    """Warn in one line when the LR schedule's length (a cosine's ``T_max``, one-cycle's
    ``total_steps``) is not the run's ``max_steps``: shorter, the cosine climbs back up; longer,
    the learning rate stays near its start (e.g. ``--trainer.max_steps 200`` on a config made
    for 3,000 steps)."""
    for arg in _HORIZONS:
        horizon = getattr(scheduler, arg, None)
        if isinstance(horizon, int) and horizon != max_steps:
            name = type(scheduler).__name__
            _say(
                f"warning: the {name} schedule is {horizon} steps long ({arg}) but "
                f"trainer.max_steps is {max_steps}; to anneal over this run set "
                f"--model.init_args.lr_scheduler.init_args.{arg} {max_steps}"
            )
