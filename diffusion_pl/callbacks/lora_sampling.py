"""LoRA adapters that the sampling callbacks (FID, sample grids) add to the model they sample."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

from lightning import LightningModule

from diffusion_pl.formulations import LatentConsistencyModel
from diffusion_pl.lora import apply_adapters, lcm_reading, parse_adapters
from diffusion_pl.samplers import LCMSampler, Sampler

__all__ = ["CallbackAdapters"]


class CallbackAdapters:
    """LoRA adapters that a sampling callback adds to the model it samples, e.g. an LCM-LoRA
    on a style fine-tune being trained (LCM-LoRA's acceleration vector, λ₁ τ_style + λ₂ τ_LCM).

    The model being trained is left alone: a copy of its net (with the weights in use, the
    average under EMA) gets the adapters, and samples in its place for the block
    (:meth:`applied`). Each adapters file must have been trained on the same base weights as
    the model's net (a LoRA run on that base, or the base itself); that is checked when
    training starts (:meth:`check`), so a wrong base fails before the first step. Sampled with
    an ``LCMSampler``, a model that is no LCM is read as the LCM-LoRA student of the LCM-LoRA
    adapters among them (as ``sample --sampler lcm`` does).

    Args:
        lora: ``PATH[:SCALE]`` of each adapters file, as ``diffusion-pl sample --lora``;
            None or empty: none.
        owner: the callback's name, for errors.
    """

    def __init__(self, lora: list[str] | None, owner: str) -> None:
        self.owner = owner
        self.chosen = parse_adapters(lora or (), f"{owner}: lora")
        self.reading = lcm_reading(self.chosen)

    def check(self, pl_module: LightningModule) -> None:
        """Refuse adapters trained on other base weights than ``pl_module``'s net's."""
        with self.applied(pl_module):
            pass

    @contextmanager
    def applied(
        self, pl_module: LightningModule, sampler: Sampler | None = None
    ) -> Iterator[LightningModule]:
        """``pl_module`` samples with the adapters in the block (nothing changes without);
        yields the model to sample: ``pl_module``, or with an ``LCMSampler`` and LCM-LoRA
        adapters, its LCM-LoRA student (:meth:`LatentConsistencyModel.reading_of`)."""
        if not self.chosen:
            yield pl_module
            return
        net = copy.deepcopy(pl_module.net)
        apply_adapters(net, self.chosen, f"{self.owner}: the model being trained")
        original, pl_module.net = pl_module.net, net
        try:
            if (self.reading is None or not isinstance(sampler, LCMSampler)
                    or isinstance(pl_module, LatentConsistencyModel)):  # fmt: skip
                yield pl_module
            else:
                yield LatentConsistencyModel.reading_of(pl_module, self.reading, sampler)
        finally:
            pl_module.net = original
