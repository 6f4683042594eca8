"""Where two YAML configs differ: the leaves as dotted keys with both values, shown on one
line each (what a resume compares, :mod:`diffusion_pl.runs`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

__all__ = ["Difference", "differences"]


@dataclass(frozen=True)
class Difference:
    """One config key whose value in a checkpoint's run differs from the given config's."""

    key: str
    saved: Any
    given: Any

    def __str__(self) -> str:
        return f"{self.key}: {_show(self.saved)} -> {_show(self.given)}"


def _show(value: Any, width: int = 100) -> str:
    """A one-line, shortened YAML view of a config value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    return text if len(text) <= width else text[: width - 3] + "..."


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (checkpoints keep tuples, YAML dumps give lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def differences(saved: Any, given: Any, key: str) -> list[Difference]:
    """The leaves where two YAML configs differ, as dotted keys under ``key``.

    A changed ``class_path`` is one difference (the init args of different classes are not
    compared); dicts are compared key by key, lists of equal length item by item. A key that
    only one side has is skipped: it comes from a version of a library that added or dropped
    an argument, and its value is that version's default.
    """
    saved, given = _plain(saved), _plain(given)
    if isinstance(saved, dict) and isinstance(given, dict):
        if saved.get("class_path") != given.get("class_path"):
            return [
                Difference(f"{key}.class_path", saved.get("class_path"), given.get("class_path"))
            ]
        return [
            d for k in saved if k in given for d in differences(saved[k], given[k], f"{key}.{k}")
        ]
    if isinstance(saved, list) and isinstance(given, list) and len(saved) == len(given):
        return [
            d
            for i, (a, b) in enumerate(zip(saved, given, strict=True))
            for d in differences(a, b, f"{key}.{i}")
        ]
    return [] if saved == given else [Difference(key, saved, given)]
