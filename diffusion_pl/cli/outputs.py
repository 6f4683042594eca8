"""Where a command writes its results: checked before any work, written atomically, and kept
when writing fails after the work.

Every command that writes (``sample``, ``reflow``, ``fid``, ``likelihood``, ``phema``,
``encode``) calls :func:`check_writable` on its ``--output`` before it loads anything, so a
path under a file, a folder that cannot be created or a read-only one is one ``error:`` line
naming the option and the path, not a traceback after minutes of sampling. The results go
through :func:`save_results`: each file is written atomically
(:func:`~diffusion_pl.checkpoint_io.write_atomic`), and a file that still cannot be written
(the disk filled, the folder went away) is written to a rescue file in the system's temporary
folder, which the one error line names.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from diffusion_pl.checkpoint_io import write_atomic

__all__ = ["Writer", "check_writable", "json_writer", "measurement", "save_results"]

Writer = Callable[[IO[bytes]], object]
"""Writes one result file's content to the binary file it is given."""


def check_writable(option: str, path: str | Path, folder: bool = False) -> Path:
    """Refuse ``--option path`` unless its results can be written there; create its folder.

    Args:
        option: the option's name, without dashes (``output``).
        path: the file to write, or with ``folder`` the folder to write into.
        folder: whether ``path`` is a folder (``phema``, ``encode``) rather than a file.

    Returns:
        The folder the results go to (created).

    Raises:
        ValueError: ``path`` is under a file, is a folder where a file is wanted (or the other
            way round), or its folder cannot be created or written.
    """
    target = Path(path)
    home = target if folder else target.parent
    blocker = next((p for p in (home, *home.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        reason = f"{blocker} is a file, not a folder"
    elif not folder and target.is_dir():
        reason = "it is a folder; give a file name"
    else:
        try:
            home.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=home):
                pass
            return home
        except OSError as err:
            reason = f"cannot write in {home} ({err.strerror})"
    raise ValueError(f"--{option} {path}: {reason}; choose another --{option}")


def measurement(
    checkpoint: str,
    *,
    split: str,
    num_samples: int,
    seed: int,
    sampler: str,
    steps: int | None,
    nfe: float,
    feature: str | None,
    **results: object,
) -> dict[str, object]:
    """What ``fid --output`` and ``likelihood --output`` record: the numbers and how they were
    measured (checkpoint, split, examples, seed, sampler or solver, its steps — None where it
    picks its own —, network evaluations per sample, features — None without)."""
    return {"checkpoint": checkpoint, "split": split, "num_samples": num_samples, "seed": seed,
            "sampler": sampler, "steps": steps, "nfe": nfe, "feature": feature,
            **results}  # fmt: skip


def json_writer(record: Mapping[str, object]) -> Writer:
    """A :data:`Writer` of ``record`` as indented JSON."""
    return lambda f: f.write((json.dumps(record, indent=2) + "\n").encode())


def save_results(option: str, files: Mapping[Path, Writer]) -> list[Path]:
    """Write each file atomically; keep any that cannot be written in a rescue file.

    Args:
        option: the option that named the paths (``output``), for the error.
        files: each path and the :data:`Writer` of its content.

    Returns:
        The paths written.

    Raises:
        ValueError: a file could not be written (after :func:`check_writable` passed); every
            such file was written to ``diffusion-pl-rescued-PID-NAME`` in the temporary folder,
            and the message names where the results are.
    """
    rescued, failure = [], ""
    for path, write in files.items():
        try:
            write_atomic(path, write)
        except OSError as err:
            failure = failure or f"could not write {path} ({err.strerror})"
            name = f"diffusion-pl-rescued-{os.getpid()}-{path.name}"
            rescued.append(write_atomic(Path(tempfile.gettempdir()) / name, write))
    if rescued:
        kept = ", ".join(map(str, rescued))
        raise ValueError(f"--{option}: {failure}; the results are kept in {kept}")
    return list(files)
