"""The adapters file: a LoRA run's adapters alone, with what they apply to.

A fit with ``lora:`` writes ``adapters.pt`` at its end (beside its logs). It holds only the
adapters' weights, the LoRA setting, the base checkpoint's path and a SHA-256 of the base
net's weights, so it is small and loads on its own onto the base: ``diffusion-pl sample
--ckpt_path BASE --lora adapters.pt[:SCALE]`` (:func:`apply_adapters`), which refuses a base
of other weights with one line naming both hashes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from diffusion_pl.checkpoint_io import read_checkpoint, write_atomic
from diffusion_pl.lcm import LCMReading
from diffusion_pl.lora.adapters import (
    LoRA,
    activate,
    adapter_names,
    adapter_state,
    add_adapter,
    base_state,
    load_adapter_state,
)

__all__ = [
    "FORMAT",
    "Adapters",
    "apply_adapters",
    "lcm_reading",
    "merged_lcm_reading",
    "parse_adapters",
    "read_adapters",
    "weights_sha256",
]

FORMAT = "diffusion-pl LoRA adapters 1"
"""The ``format`` entry of an adapters file."""

MERGED_LCM = "lcm_reading"
"""The entry of a checkpoint that ``diffusion-pl lora merge`` wrote with LCM-LoRA adapters
merged in: their :class:`~diffusion_pl.lcm.LCMReading`, as a dict."""


def weights_sha256(state: Mapping[str, Tensor]) -> str:
    """SHA-256 of a ``state_dict``: every key, dtype, shape and the tensor's bytes, in key order.

    The same weights give the same hash on any device (bytes are read on the CPU).
    """
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Adapters:
    """What an adapters file holds.

    Attributes:
        state: the adapter's weights, keyed without its name (``…conv1.lora_A.weight``).
        lora: the LoRA setting it was trained with.
        targets: the full names of the layers it adapts.
        base_ckpt: the base checkpoint it was trained on (as the run named it).
        base_sha256: :func:`weights_sha256` of that base net's weights.
        trained_with: the class path of the formulation that trained it.
        step: the optimizer step it was written at.
        lcm: how the adapted net is read when the adapters are LCM-LoRA's (LCM's consistency
            function at a fixed ω); None for any other run.
    """

    state: dict[str, Tensor]
    lora: LoRA
    targets: list[str]
    base_ckpt: str
    base_sha256: str
    trained_with: str
    step: int
    lcm: LCMReading | None = None

    @classmethod
    def of(cls, net: nn.Module, name: str, lora: LoRA, **about: object) -> Adapters:
        """Adapter ``name`` of ``net`` (its base hashed as it is now); ``about`` gives
        ``base_ckpt``, ``trained_with``, ``step`` and optionally ``lcm``."""
        state = adapter_state(net, name)
        targets = sorted({k.split(".lora_")[0] for k in state})
        return cls(state, lora, targets, base_sha256=weights_sha256(base_state(net)), **about)

    def save(self, path: str | Path) -> Path:
        """Write the file atomically (:func:`~diffusion_pl.checkpoint_io.write_atomic`)."""
        content = {"format": FORMAT, "adapters": self.state, "lora": self.lora.as_dict(),
                   "targets": self.targets, "base_ckpt": self.base_ckpt,
                   "base_sha256": self.base_sha256, "trained_with": self.trained_with,
                   "step": self.step,
                   "lcm": None if self.lcm is None else self.lcm.as_dict()}  # fmt: skip
        return write_atomic(path, lambda f: torch.save(content, f))

    def parameters(self) -> int:
        """The number of adapter weights."""
        return sum(v.numel() for v in self.state.values())


def read_adapters(path: str | Path) -> Adapters:
    """Read an adapters file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is corrupt, or not an adapters file.
    """
    content = read_checkpoint(path)
    if content.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a LoRA adapters file (a fit with lora: writes adapters.pt beside its "
            "logs); pass that file"
        )
    lora = content["lora"]
    targets = lora["target_modules"]
    setting = LoRA(**{**lora, "target_modules": None if targets is None else tuple(targets)})
    lcm = content.get("lcm")
    return Adapters(
        content["adapters"], setting, list(content["targets"]), content["base_ckpt"],
        content["base_sha256"], content["trained_with"], int(content["step"]),
        None if lcm is None else LCMReading(**lcm),
    )  # fmt: skip


def apply_adapters(
    net: nn.Module, chosen: Sequence[tuple[str, float]], model_name: str
) -> dict[str, float]:
    """Add the adapters of each file in ``chosen`` to ``net`` with its weight λ, all acting at
    once: h = W x + Σ_i λ_i ΔW_i x (adapters the net already holds keep weight 1).

    Args:
        net: the base net (or a net with adapters of the same base).
        chosen: ``(adapters file, λ)`` pairs.
        model_name: how errors name the model, e.g. ``the checkpoint RUN.ckpt``.

    Returns:
        The active adapters' names and weights.

    Raises:
        ValueError: an adapters file was trained on a base of other weights (its hash and the
            model's differ).
    """
    scales = dict.fromkeys(adapter_names(net), 1.0)
    own = weights_sha256(base_state(net))
    for path, scale in chosen:
        adapters = read_adapters(path)
        if adapters.base_sha256 != own:
            raise ValueError(
                f"the adapters {path} were trained on {adapters.base_ckpt} (base weights sha256 "
                f"{adapters.base_sha256[:16]}…), but {model_name} has other weights (sha256 "
                f"{own[:16]}…): pass the base they were trained on, with the same --weights"
            )
        name = next(f"lora{i}" for i in range(len(scales) + 1) if f"lora{i}" not in scales)
        add_adapter(net, adapters.lora, name, adapters.targets)
        load_adapter_state(net, adapters.state, name)
        scales[name] = scale
    activate(net, scales)
    return scales


def lcm_reading(chosen: Sequence[tuple[str, float]]) -> LCMReading | None:
    """How the LCM-LoRA adapters among ``chosen`` (``(adapters file, λ)`` pairs) read the net
    they adapt (:class:`~diffusion_pl.lcm.LCMReading`); None when none is an LCM-LoRA's.

    Raises:
        ValueError: two LCM-LoRA adapters record different readings.
    """
    readings = {r for r in (read_adapters(path).lcm for path, _ in chosen) if r is not None}
    if len(readings) > 1:
        raise ValueError(
            f"{len(readings)} LCM-LoRA adapters distilled with other settings "
            f"({sorted(map(str, readings))}): combine one LCM-LoRA with other adapters"
        )
    return readings.pop() if readings else None


def merged_lcm_reading(ckpt_path: str | Path) -> LCMReading | None:
    """The reading of the LCM-LoRA adapters merged into a checkpoint by ``diffusion-pl lora
    merge`` (its ``lcm_reading`` entry); None for any other checkpoint."""
    reading = read_checkpoint(ckpt_path, mmap=True).get(MERGED_LCM)
    return None if reading is None else LCMReading(**reading)


def parse_adapters(values: Sequence[str], option: str) -> list[tuple[str, float]]:
    """``PATH[:SCALE]`` values (``--lora``, a callback's ``lora``) as ``(path, λ)`` pairs, λ = 1
    without SCALE.

    Raises:
        ValueError: a SCALE that is not a finite number, or no file at PATH (``option`` and the
            value named).
    """
    chosen = []
    for value in values:
        path, sep, tail = value.rpartition(":")
        if not sep or Path(value).is_file():
            path, scale = value, 1.0
        else:
            try:
                scale = float(tail)
            except ValueError:
                scale = math.nan
            if not math.isfinite(scale):
                raise ValueError(
                    f"{option} {value}: the SCALE after the last ':' must be a finite number, "
                    f"e.g. {path}:0.5"
                )
        if not Path(path).is_file():
            raise ValueError(
                f"{option} {value}: no file {path}; give an adapters file (a fit with lora: "
                "writes adapters.pt beside its logs), optionally with :SCALE"
            )
        chosen.append((path, scale))
    return chosen
