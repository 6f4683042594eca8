"""The command line's parser errors: one line and a ``--help`` tip, never the usage.

:class:`ShortErrors` reports a bad option through :func:`~diffusion_pl.config_errors.shorten`
(the key, the reason, "did you mean"); config files are read before jsonargparse sees them
(:func:`check_config_files`), so a YAML syntax error names its file and line.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import NoReturn

import yaml
from jsonargparse import ArgumentParser

from diffusion_pl.config_errors import shorten
from diffusion_pl.errors import show_tracebacks

__all__ = ["ShortErrors", "check_config_files"]


class ShortErrors(ArgumentParser):
    """An ArgumentParser whose errors are one line (:func:`shorten`) and a ``--help`` tip, exit
    code 2; ``DIFFUSION_PL_TRACEBACK=1`` keeps jsonargparse's whole message."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or show_tracebacks():
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        keys = parser.get_defaults().keys()
        prog = parser.prog.replace(" [options]", "")
        print(f"error: {self.explain(shorten(message, keys))}", file=sys.stderr)
        print(f"tip: `{prog} --help` lists every option", file=sys.stderr, flush=True)
        raise SystemExit(2)

    def explain(self, line: str) -> str:
        """What the error line should say beyond :func:`shorten`'s (a subclass adds to it)."""
        return line


def check_config_files(args: list[str]) -> None:
    """Read every ``--config FILE`` of ``args`` as YAML first, so that a syntax error names the
    file and its line (jsonargparse's says ``"<unicode string>", line 10``).

    Raises:
        ValueError: a config file is not valid YAML (file, line, column and the problem).
    """
    files = [b for a, b in itertools.pairwise(args) if a == "--config"]
    files += [a.removeprefix("--config=") for a in args if a.startswith("--config=")]
    for file in files:
        path = Path(file)
        if not path.is_file():
            continue  # jsonargparse reports a missing file (or takes a YAML string)
        try:
            yaml.safe_load(path.read_text())
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark
            place = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ValueError(f"--config {file}{place}: {err.problem}; fix the YAML") from None
