"""Checkpoint files: atomic writes (of any result, :func:`write_atomic`), clear errors on
unreadable files, finding the last one.

Lightning's own ``TorchCheckpointIO`` stages a checkpoint in the system temp folder and moves it
into place; when that folder is on another file system (node-local ``/tmp``, checkpoints on a
shared one, as on most clusters) the move is a copy, and a job killed during it leaves a
truncated checkpoint under the final name. :class:`AtomicCheckpointIO` writes beside the target
and renames, which POSIX makes atomic, so a checkpoint is either the old file or the new one.

This module reads and writes files only; rebuilding the model a checkpoint holds is
:mod:`diffusion_pl.checkpoints`' work (above every formulation and callback).
"""

from __future__ import annotations

import os
import pickle
import re
import socket
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Literal

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = [
    "VERSION_KEY",
    "AtomicCheckpointIO",
    "Weights",
    "find_last_checkpoint",
    "package_version",
    "read_checkpoint",
    "remove_stale_temporaries",
    "write_atomic",
]

VERSION_KEY = "diffusion_pl_version"
"""The checkpoint entry that records the version of diffusion-pl that wrote it."""


def package_version() -> str:
    """This installation's version of diffusion-pl (``unknown`` when it is not installed)."""
    try:
        return metadata.version("diffusion-pl")
    except metadata.PackageNotFoundError:
        return "unknown"


Weights = Literal["ema", "raw"]
"""Which weights of a checkpoint or a run: ``ema`` (the moving average when the run had the EMA
callback, else the raw weights) or ``raw`` (the optimizer's)."""


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


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write a file atomically: a reader sees the old file or the whole new one, never a part.

    ``write`` writes the content to the binary file it is given: a temporary file beside
    ``path`` (``.NAME.tmp-HOST-PID``, which :func:`remove_stale_temporaries` deletes when its
    writer was killed), flushed to disk and renamed over ``path`` (``os.replace``); the rename
    is flushed too. The folder must exist. Returns ``path``.
    """
    path = Path(path)
    tmp = _temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)  # the rename itself survives a crash
    finally:
        tmp.unlink(missing_ok=True)
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes atomically and names the file when it cannot read one.

    A local checkpoint is written to a temporary file in the target's own folder
    (``.NAME.tmp-HOST-PID``), flushed to disk, and renamed over the target (``os.replace``),
    and the rename is flushed too; remote paths (``s3://`` …) keep Lightning's behaviour. A
    writer killed mid-write leaves the temporary file, which :func:`remove_stale_temporaries`
    deletes when the next run starts. Every checkpoint records the version of diffusion-pl that
    wrote it (:data:`VERSION_KEY`), which errors about its config name.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path``: a reader sees the old file or the whole new one."""
        checkpoint = {**checkpoint, VERSION_KEY: package_version()}
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f: torch.save(checkpoint, f))

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
