"""Checks of the commands' options, before anything is loaded: each refuses a bad value with a
:class:`~diffusion_pl.errors.UsageError` naming the option and the fix."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

import torch

from diffusion_pl.errors import UsageError
from diffusion_pl.lora import parse_adapters
from diffusion_pl.metrics.features import default_inception_weights, inception_weights_missing
from diffusion_pl.samplers import SAMPLERS

__all__ = [
    "check_device",
    "check_feature",
    "check_positive",
    "check_sampler_options",
    "lists_samplers",
    "parse_lora",
]

P = ParamSpec("P")
R = TypeVar("R")


def check_positive(**values: float) -> None:
    """Refuse a command-line option that must be > 0, e.g. ``check_positive(batch_size=0)``."""
    for name, value in values.items():
        if not value > 0:
            raise UsageError(f"--{name} must be > 0, got {value}")


def check_device(device: str) -> None:
    """Refuse a ``--device`` that is not a torch device, or a CUDA device this machine lacks."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UsageError(
            f"--device {device!r} is not a torch device: use cpu, cuda or cuda:N"
        ) from None
    if parsed.type != "cuda":
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise UsageError(
            f"--device {device}: this machine has no CUDA device (torch.cuda.is_available() is "
            "False); use --device cpu"
        )
    if parsed.index is not None and parsed.index >= count:
        raise UsageError(
            f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to "
            f"cuda:{count - 1}"
        )


def check_feature(feature: str, feature_weights: str | None) -> None:
    """Refuse ``--feature inception`` without its weights file (``fid`` and ``phema --sweep``)."""
    if feature == "inception":
        weights_file = Path(feature_weights) if feature_weights else default_inception_weights()
        if not weights_file.is_file():
            raise inception_weights_missing(weights_file, "pass --feature_weights PATH")


def check_sampler_options(sampler: str | None, steps: int | None) -> None:
    """Refuse an unknown ``--sampler`` or ``--steps`` <= 0 (``sample`` and ``fid``)."""
    if steps is not None and steps <= 0:
        raise UsageError(f"--steps must be > 0, got {steps}; omit it for the sampler's default")
    if sampler is not None and sampler not in SAMPLERS:
        raise UsageError(f"unknown --sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")


def lists_samplers(command: Callable[P, R]) -> Callable[P, R]:
    """Write the names of :data:`~diffusion_pl.samplers.SAMPLERS` where ``command``'s docstring
    (its ``--help``) says ``SAMPLER_NAMES``, so the help lists every registered sampler."""
    command.__doc__ = (command.__doc__ or "").replace("SAMPLER_NAMES", ", ".join(SAMPLERS))
    return command


def parse_lora(values: Sequence[str]) -> list[tuple[str, float]]:
    """``--lora PATH[:SCALE]`` values as ``(path, λ)`` pairs (:func:`~diffusion_pl.lora.
    parse_adapters`); a bad SCALE or a missing file is a :class:`UsageError` naming the value."""
    try:
        return parse_adapters(values, "--lora")
    except ValueError as err:
        raise UsageError(str(err)) from None
