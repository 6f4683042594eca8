"""Markdown for the tables generated from the registries (README) and the benchmarks' reports."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence

__all__ = ["markdown_table", "summary_line"]


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub Markdown table; each cell is written with ``str``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_line(obj: object) -> str:
    """The summary line of ``obj``'s docstring as a table cell (``code`` → `code`, | escaped)."""
    line = inspect.cleandoc(obj.__doc__ or "").splitlines()[0]
    return line.replace("``", "`").replace("|", "\\|")
