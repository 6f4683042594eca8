"""LoRA adapters that the sampling callbacks (FID, sample grids) add to the model they sample."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

from lightning import LightningModule

from diffusion_pl.lora import apply_adapters, parse_adapters

__all__ = ["CallbackAdapters"]


class CallbackAdapters:
    """LoRA adapters that a sampling callback adds to the model it samples, e.g. an LCM-LoRA
    on a style fine-tune being trained (LCM-LoRA's acceleration vector, λ₁ τ_style + λ₂ τ_LCM).

    The model being trained is left alone: a copy of its net (with the weights in use, the
    average under EMA) gets the adapters, and samples in its place for the block
    (:meth:`applied`). Each adapters file must have been trained on the same base weights as
    the model's net (a LoRA run on that base, or the base itself); that is checked when
    training starts (:meth:`check`), so a wrong base fails before the first step.

    Args:
        lora: ``PATH[:SCALE]`` of each adapters file, as ``diffusion-pl sample --lora``;
            None or empty: none.
        owner: the callback's name, for errors.
    """

    def __init__(self, lora: list[str] | None, owner: str) -> None:
        self.owner = owner
        self.chosen = parse_adapters(lora or (), f"{owner}: lora")

    def check(self, pl_module: LightningModule) -> None:
        """Refuse adapters trained on other base weights than ``pl_module``'s net's."""
        with self.applied(pl_module):
            pass

    @contextmanager
    def applied(self, pl_module: LightningModule) -> Iterator[None]:
        """``pl_module`` samples with the adapters in the block (nothing changes without)."""
        if not self.chosen:
            yield
            return
        net = copy.deepcopy(pl_module.net)
        apply_adapters(net, self.chosen, f"{self.owner}: the model being trained")
        original, pl_module.net = pl_module.net, net
        try:
            yield
        finally:
            pl_module.net = original
