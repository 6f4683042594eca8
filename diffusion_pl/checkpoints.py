"""Rebuilding what a checkpoint holds: its model (any formulation, or a noisy classifier), its
data module, a teacher (:class:`Checkpoint`).

A checkpoint of ``diffusion-pl fit`` records the YAML config of its model (``hyper_parameters``:
``_class_path`` and the init args) and of its data (``datamodule_hyper_parameters``), so
:func:`load_module` and :func:`load_datamodule` rebuild both without the config file.

Reading and writing the files is :mod:`diffusion_pl.checkpoint_io`'s (its names are
re-exported here).
"""

from __future__ import annotations

from argparse import ArgumentError
from pathlib import Path
from typing import Any

import torch
from jsonargparse.typing import import_object
from lightning import LightningModule
from lightning.pytorch.cli import instantiate_module

from diffusion_pl.checkpoint_io import (
    VERSION_KEY,
    AtomicCheckpointIO,
    Weights,
    find_last_checkpoint,
    package_version,
    read_checkpoint,
    remove_stale_temporaries,
)
from diffusion_pl.config_errors import shorten
from diffusion_pl.data import DiffusionDataModule
from diffusion_pl.objectives import Teacher

__all__ = [
    "AtomicCheckpointIO",
    "Checkpoint",
    "check_checkpoint_fits",
    "find_last_checkpoint",
    "load_datamodule",
    "load_module",
    "read_checkpoint",
    "remove_stale_temporaries",
]


def check_checkpoint_fits(path: str | Path, class_path: str) -> None:
    """Fail early unless ``path`` is a readable checkpoint of the formulation ``class_path``.

    Compares the class recorded by ``diffusion-pl fit`` (``_class_path`` in the checkpoint's
    ``hyper_parameters``) with the run's ``model.class_path``; checkpoints without one (written
    outside the CLI) pass.

    Raises:
        FileNotFoundError, ValueError: as :func:`read_checkpoint`; ValueError for another class.
    """
    hparams = read_checkpoint(path, mmap=True).get("hyper_parameters", {})
    saved = hparams.get("_class_path")
    name = class_path.rsplit(".", 1)[-1]
    if saved is None or saved.rsplit(".", 1)[-1] == name:
        return
    config = Path(path).parent.parent / "config.yaml"
    hint = f" (that run's config: {config})" if config.is_file() else ""
    raise ValueError(
        f"checkpoint {str(path)!r} holds a {saved} but this run's model.class_path is "
        f"{class_path}: pass a {name} checkpoint, or run with the config the checkpoint was "
        f"trained with{hint}"
    )


def load_module(
    ckpt_path: str | Path,
    map_location: str | torch.device = "cpu",
    weights: Weights = "ema",
) -> LightningModule:
    """Restore a formulation (or a noisy classifier) from a checkpoint of ``diffusion-pl fit``.

    The checkpoint's hparams hold the YAML config of the model (``_class_path`` and its init
    args), which rebuilds net, path and sampler; then the weights are loaded.

    Args:
        ckpt_path: the checkpoint file.
        map_location: device to load onto.
        weights: ``ema`` loads the moving average (a run with the EMA callback stores it as the
            checkpoint's ``state_dict``; without EMA that is the raw weights); ``raw`` the
            optimizer's weights.
    """
    checkpoint = read_checkpoint(ckpt_path, map_location)
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    class_path = hparams.pop("_class_path", None)
    hparams.pop("_instantiator", None)
    if class_path is None:
        raise ValueError(
            f"{ckpt_path} has no model class_path in its hyper_parameters: "
            "use a checkpoint written by `diffusion-pl fit`"
        )
    module = _rebuild(ckpt_path, checkpoint, "hyper_parameters", class_path, hparams)
    key = "current_model_state" if weights == "raw" else "state_dict"
    module.load_state_dict(checkpoint.get(key, checkpoint["state_dict"]))
    return module.to(map_location)


class Checkpoint(Teacher):
    """A model that ``diffusion-pl fit`` wrote, read from its checkpoint (:func:`load_module`).

    In YAML: ``{class_path: diffusion_pl.checkpoints.Checkpoint, init_args: {path: RUN.ckpt}}``.

    Args:
        path: the checkpoint file.
        weights: ``ema`` (the checkpoint's ``state_dict``: the moving average when the run kept
            one) or ``raw`` (the optimizer's weights).
    """

    def __init__(self, path: str, weights: Weights = "ema") -> None:
        self.path, self.weights = path, weights

    def load(self, map_location: str | torch.device = "cpu") -> LightningModule:
        module = load_module(self.path, map_location=map_location, weights=self.weights)
        return module.eval().requires_grad_(False)

    def __str__(self) -> str:
        return self.path


def load_datamodule(ckpt_path: str | Path) -> DiffusionDataModule:
    """Rebuild the data module a checkpoint was trained on (from its saved YAML config)."""
    checkpoint = read_checkpoint(ckpt_path, mmap=True)
    hparams = dict(checkpoint.get("datamodule_hyper_parameters", {}))
    hparams.pop("_instantiator", None)
    if "source" not in hparams:
        raise ValueError(f"{ckpt_path} does not record its data; it was not written by `fit`")
    if "batch_size" in hparams:
        # Written before `global_batch_size` existed, when the batch was per device and the
        # last incomplete batch was optional. Reading a checkpoint only evaluates, so its
        # loaders need a batch size, not the training one.
        hparams["global_batch_size"] = hparams.pop("batch_size")
        hparams.pop("drop_last", None)
    return _rebuild(ckpt_path, checkpoint, "datamodule_hyper_parameters", None, hparams)


def _rebuild(
    path: str | Path,
    checkpoint: dict[str, Any],
    section: str,
    class_path: str | None,
    config: dict[str, Any],
) -> Any:
    """The module (``class_path``, or the DataModule when None) that ``config``, the saved
    ``section`` of the checkpoint at ``path``, describes.

    Raises:
        ValueError: the saved config does not fit this version's classes (a renamed class, an
            argument added or dropped since): one line naming the file, the key, the version
            that wrote the checkpoint and this one.
    """
    try:
        cls = DiffusionDataModule if class_path is None else import_object(class_path)
        return instantiate_module(cls, config)
    except (ArgumentError, ImportError, AttributeError) as err:
        if isinstance(err, ArgumentError):
            reason = f"{section}." + shorten(str(err)).replace("--module.", "").removeprefix("--")
        else:
            reason = f"{section}: its class {class_path} is not found ({err})"
        written = checkpoint.get(VERSION_KEY)
        written = f"diffusion-pl {written}" if written else "an unknown version"
        raise ValueError(
            f"checkpoint {str(path)!r} (written by {written}) does not load in diffusion-pl "
            f"{package_version()}: {reason}; load it with the version that wrote it, or fix "
            "that key in the checkpoint"
        ) from None
