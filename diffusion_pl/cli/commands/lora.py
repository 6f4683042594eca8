"""``diffusion-pl lora merge``: a plain checkpoint with LoRA adapters merged into its weights."""

from __future__ import annotations

from pathlib import Path

import torch

from diffusion_pl.callbacks import Weights
from diffusion_pl.checkpoint_io import VERSION_KEY, package_version
from diffusion_pl.checkpoints import read_checkpoint
from diffusion_pl.cli.loading import load_diffusion_module
from diffusion_pl.cli.options import parse_lora
from diffusion_pl.cli.outputs import check_writable, save_results
from diffusion_pl.errors import UsageError
from diffusion_pl.lora import (
    MERGED_LCM,
    apply_adapters,
    lcm_reading,
    merge_adapters,
    merged_lcm_reading,
    read_adapters,
)

__all__ = ["LORA_COMMANDS", "merge"]

_KEPT = ("epoch", "global_step", "pytorch-lightning_version", "datamodule_hyper_parameters")
"""Entries of the base checkpoint a merged one keeps (its training state is not kept)."""


def merge(ckpt_path: str, lora: list[str], output: str, weights: Weights = "ema") -> Path:
    """Merge LoRA adapters into a checkpoint's weights: W ← W + Σ_i λ_i (α_i / r_i) B_i A_i.

    The result is a plain checkpoint of the base's formulation (no adapters, no ``lora:``) that
    every command loads (``sample``, ``fid``, ``likelihood``, a teacher or a base of another
    run) and that samples as ``--ckpt_path BASE --lora …`` does, to float32 rounding. It keeps
    the base's model and data configs, step and epoch, not its training state (optimizer,
    callbacks), so it does not resume; ``lora_merged`` in it lists the adapters and weights.
    Merged LCM-LoRA adapters leave their reading in it (``lcm_reading``), so ``sample
    --sampler lcm`` samples it as the LCM-LoRA student, as with ``--lora``.

    Args:
        ckpt_path: the base: a checkpoint written by ``diffusion-pl fit`` (or by this
            command), on whose weights the adapters were trained (checked by hash). A LoRA
            run's own checkpoint merges its adapters too.
        lora: the adapters, ``PATH[:SCALE]`` each (``--lora a.pt --lora b.pt:0.5``); λ = SCALE,
            default 1.
        output: the merged checkpoint's file (checked before any work, written atomically).
        weights: ``ema`` or ``raw`` weights of the base (the adapters were trained on one).
    """
    if not lora:
        raise UsageError("--lora is empty: give at least one adapters file, e.g. --lora a.pt")
    chosen = parse_lora(lora)
    out = Path(output)
    check_writable("output", out)
    module = load_diffusion_module(ckpt_path, "cpu", weights)
    scales = apply_adapters(module.net, chosen, f"--ckpt_path {ckpt_path}")
    merge_adapters(module)
    base = read_checkpoint(ckpt_path, mmap=True)
    hparams = dict(base.get("hyper_parameters", {}))
    for key in ("lora", "base_ckpt"):  # the adapters are in the weights now
        if key in hparams:
            hparams[key] = None
    merged = {key: base[key] for key in _KEPT if key in base}
    merged |= {
        "state_dict": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "hyper_parameters": hparams,
        VERSION_KEY: package_version(),  # as every checkpoint written by fit
        "lora_merged": [
            {"path": path, "scale": scale, "base_sha256": read_adapters(path).base_sha256}
            for path, scale in chosen
        ],
    }
    reading = lcm_reading(chosen) or merged_lcm_reading(ckpt_path)
    if reading is not None:  # an LCM-LoRA merged: `sample --sampler lcm` reads it as LCM-LoRA
        merged[MERGED_LCM] = reading.as_dict()
    save_results("output", {out: lambda f: torch.save(merged, f)})
    added = " + ".join(f"{scale:g} × {path}" for path, scale in chosen)
    own = " (and its own adapters)" if len(scales) > len(chosen) else ""
    print(f"merged {added} into {ckpt_path}{own}; wrote {out}", flush=True)
    return out


LORA_COMMANDS = {"merge": merge}
"""``diffusion-pl lora``'s subcommands."""
