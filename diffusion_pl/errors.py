"""How the ``diffusion-pl`` command reports bad input: one ``error:`` line, exit code 2.

The project raises ``ValueError`` (or ``FileNotFoundError`` for a missing file, or
:class:`MissingDependency` for an optional package that is not installed) with a message that
names the bad value and the fix, and never for its own bugs. The command turns such an
error into one line on stderr; jsonargparse wraps an error raised while it builds the model or
the data ("Does not validate against any of the Union subtypes …"), and the project's own
exception is found again in the ``raise … from`` chain. Every other exception (a bug, or an
error of torch or Lightning) keeps its traceback, and ``DIFFUSION_PL_TRACEBACK=1`` keeps the
traceback of bad input too.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["TRACEBACK_ENV", "MissingDependency", "UsageError", "bad_input", "show_tracebacks"]

TRACEBACK_ENV = "DIFFUSION_PL_TRACEBACK"
"""Environment variable: set to 1 to see the traceback of a bad-input error."""

_PACKAGE = Path(__file__).resolve().parent


class UsageError(ValueError):
    """A command-line option of ``sample``, ``reflow``, ``likelihood``, ``fid`` or ``phema`` has
    a bad value; reported after the command's usage line (unlike other bad input, found later)."""


class MissingDependency(ImportError):
    """An optional dependency a command needs is not installed; the message gives the
    ``pip install`` command that adds it."""


BadInput = ValueError | FileNotFoundError | MissingDependency
"""The errors the command reports in one line (when raised in diffusion_pl)."""


def _raised_by_project(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is in diffusion_pl's own code."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)


def bad_input(error: BaseException) -> BadInput | None:
    """The project's bad-input error behind ``error``, or None for anything else.

    ``error`` itself or the first exception of its ``raise … from`` chain (how jsonargparse and
    Lightning wrap an error of a constructor or a link) that is a ``ValueError``,
    ``FileNotFoundError`` or :class:`MissingDependency` raised in diffusion_pl.
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, BadInput) and _raised_by_project(seen):
            return seen
        seen = seen.__cause__
    return None


def show_tracebacks() -> bool:
    """Whether ``DIFFUSION_PL_TRACEBACK`` asks for tracebacks of bad input (any value but
    empty or 0)."""
    return os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
