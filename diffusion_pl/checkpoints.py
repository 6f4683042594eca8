"""Checkpoint files: atomic writes, clear errors, finding the last one, rebuilding what they hold.

A checkpoint of ``diffusion-pl fit`` records the YAML config of its model (``hyper_parameters``:
``_class_path`` and the init args) and of its data (``datamodule_hyper_parameters``), so
:func:`load_module` and :func:`load_datamodule` rebuild both without the config file.

Lightning's own ``TorchCheckpointIO`` stages a checkpoint in the system temp folder and moves it
into place; when that folder is on another file system (node-local ``/tmp``, checkpoints on a
shared one, as on most clusters) the move is a copy, and a job killed during it leaves a
truncated checkpoint under the final name. :class:`AtomicCheckpointIO` writes beside the target
and renames, which POSIX makes atomic, so a checkpoint is either the old file or the new one.
"""

from __future__ import annotations

import os
import pickle
import re
import socket
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from jsonargparse.typing import import_object
from lightning import LightningModule
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.cli import instantiate_module
from lightning.pytorch.plugins.io import TorchCheckpointIO

from diffusion_pl.data import DiffusionDataModule
from diffusion_pl.formulations import DiffusionModule
from diffusion_pl.guidance import check_guide
from diffusion_pl.objectives import Teacher

if TYPE_CHECKING:  # not at run time: the callbacks package (PostHocEMA) imports this module
    from diffusion_pl.callbacks.ema import Weights

__all__ = [
    "AtomicCheckpointIO",
    "Checkpoint",
    "check_checkpoint_fits",
    "find_last_checkpoint",
    "load_datamodule",
    "load_guide",
    "load_module",
    "read_checkpoint",
    "remove_stale_temporaries",
]


def _is_unreadable(err: BaseException) -> bool:
    """Whether ``torch.load`` failed because the file is truncated or not a checkpoint."""
    if isinstance(err, RuntimeError):  # torch's zip reader; other RuntimeErrors (OOM) pass
        return "PytorchStreamReader" in str(err)
    return isinstance(err, (pickle.UnpicklingError, EOFError, zipfile.BadZipFile))


def _unreadable(path: str | Path, err: BaseException) -> ValueError:
    """The error for a file that is not a readable checkpoint."""
    return ValueError(
        f"checkpoint {str(path)!r} is corrupt or not a PyTorch checkpoint "
        f"({type(err).__name__}: {err}); it may be truncated by an interrupted copy. Pass an "
        "intact checkpoint, e.g. an earlier one from the same checkpoints/ folder."
    )


def _check_zip(path: str | Path) -> None:
    """Fail fast unless ``path`` ends like a zip archive, as every ``torch.save`` file does."""
    if not zipfile.is_zipfile(path):
        raise _unreadable(path, zipfile.BadZipFile("no zip archive at the end of the file"))


def read_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """Load a checkpoint file (tensors and plain values only), failing with a clear message.

    Args:
        path: the ``.ckpt`` file.
        map_location: device to load tensors onto.
        mmap: map the file instead of reading it (cheap when only the metadata is needed).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is corrupt or not a checkpoint (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    _check_zip(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:
        if _is_unreadable(err):
            raise _unreadable(path, err) from err
        raise


def find_last_checkpoint(*folders: str | Path) -> Path | None:
    """The most recently written resumable checkpoint in any of ``folders`` (not below them).

    Candidates are ``last*.ckpt`` (ModelCheckpoint, SIGTERM, divergence stops) and
    ``hpc_ckpt_*.ckpt`` (written by Lightning on SLURM's requeue signal).
    """
    found = [
        p
        for folder in folders
        if Path(folder).is_dir()
        for pattern in ("last*.ckpt", "hpc_ckpt_*.ckpt")
        for p in Path(folder).glob(pattern)
        if p.is_file()
    ]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.tmp-(?:(?P<host>.+)-)?(?P<pid>\d+)$")
"""``.NAME.tmp-HOST-PID``: :class:`AtomicCheckpointIO`'s staging file (``.NAME.tmp-PID`` before
the host was added)."""


def _temporary_name(path: Path) -> Path:
    """Where :class:`AtomicCheckpointIO` stages ``path``: beside it, named by host and process."""
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def _running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (signal 0 probes without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(*folders: str | Path) -> tuple[list[Path], list[Path]]:
    """Delete the staging files of checkpoint writes whose writer is gone; return what was seen.

    :class:`AtomicCheckpointIO` stages ``NAME`` as ``.NAME.tmp-HOST-PID`` beside it; a process
    killed while writing (``kill -9``, out of memory, a lost node) leaves that file behind, as
    large as a checkpoint. A file of this host (or without a host) is removed when no process
    ``PID`` runs here; a live process's file is never touched. A file of another host is kept,
    since its writer may be alive there.

    Returns:
        ``(removed, other_hosts)``: the files deleted, and the other hosts' files left.
    """
    host = socket.gethostname()
    removed, other_hosts = [], []
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for path in sorted(Path(folder).glob(".*.tmp-*")):
            match = _TEMPORARY.match(path.name)
            if match is None or not path.is_file():
                continue
            if match["host"] not in (None, host):
                other_hosts.append(path)
            elif not _running(int(match["pid"])):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed, other_hosts


def check_checkpoint_fits(path: str | Path, class_path: str) -> None:
    """Fail early unless ``path`` is a readable checkpoint of the formulation ``class_path``.

    Compares the class recorded by ``diffusion-pl fit`` (``hyper_parameters._class_path``) with
    the run's ``model.class_path``; checkpoints without one (written outside the CLI) pass.

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
    module = instantiate_module(import_object(class_path), hparams)
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

    def __init__(self, path: str, weights: Literal["ema", "raw"] = "ema") -> None:
        self.path, self.weights = path, weights

    def load(self, map_location: str | torch.device = "cpu") -> LightningModule:
        module = load_module(self.path, map_location=map_location, weights=self.weights)
        return module.eval().requires_grad_(False)

    def __str__(self) -> str:
        return self.path


def load_guide(
    guide_ckpt: str | Path,
    model: DiffusionModule,
    *,
    model_name: str = "the model",
    map_location: str | torch.device = "cpu",
    weights: Weights = "ema",
) -> DiffusionModule:
    """The guide of autoguidance from ``guide_ckpt``, checked against ``model``, frozen in eval
    mode (:func:`~diffusion_pl.guidance.check_guide`: same data shape, path, conditioning).

    Args:
        guide_ckpt: checkpoint of a diffusion model written by ``diffusion-pl fit``.
        model: the diffusion model it will guide.
        model_name: how errors name ``model``, e.g. ``"the model RUN.ckpt"``.
        map_location: device to load onto.
        weights: ``ema`` or ``raw`` weights of the guide (as :func:`load_module`).
    """
    guide = load_module(guide_ckpt, map_location=map_location, weights=weights)
    if not isinstance(guide, DiffusionModule):
        raise ValueError(
            f"the guide {guide_ckpt} holds a {type(guide).__name__}, not a diffusion model: "
            "autoguidance needs a weaker diffusion model of the same data and path (an earlier "
            "checkpoint of the same run, or a smaller net)"
        )
    check_guide(model, guide, model=model_name, other=f"the guide {guide_ckpt}")
    return guide.eval().requires_grad_(False)


def load_datamodule(ckpt_path: str | Path) -> DiffusionDataModule:
    """Rebuild the data module a checkpoint was trained on (from its saved YAML config)."""
    hparams = dict(read_checkpoint(ckpt_path, mmap=True).get("datamodule_hyper_parameters", {}))
    hparams.pop("_instantiator", None)
    if "source" not in hparams:
        raise ValueError(f"{ckpt_path} does not record its data; it was not written by `fit`")
    if "batch_size" in hparams:
        # Written before `global_batch_size` existed, when the batch was per device and the
        # last incomplete batch was optional. Reading a checkpoint only evaluates, so its
        # loaders need a batch size, not the training one.
        hparams["global_batch_size"] = hparams.pop("batch_size")
        hparams.pop("drop_last", None)
    return instantiate_module(DiffusionDataModule, hparams)


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes atomically and names the file when it cannot read one.

    A local checkpoint is written to a temporary file in the target's own folder
    (``.NAME.tmp-HOST-PID``), flushed to disk, and renamed over the target (``os.replace``),
    and the rename is flushed too; remote paths (``s3://`` …) keep Lightning's behaviour. A
    writer killed mid-write leaves the temporary file, which :func:`remove_stale_temporaries`
    deletes when the next run starts.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path``: a reader sees the old file or the whole new one."""
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temporary_name(path)
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_folder(path.parent)  # the rename itself survives a crash
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path: str | Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Load as Lightning does; a corrupt file raises a ValueError that names it."""
        if not get_filesystem(path).exists(path):
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        if "://" not in str(path):
            _check_zip(path)
        try:
            return super().load_checkpoint(path, *args, **kwargs)
        except Exception as err:
            if _is_unreadable(err):
                raise _unreadable(path, err) from err
            raise
