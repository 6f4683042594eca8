"""Training LoRA adapters instead of the full net, on any formulation (``lora:`` and
``base_ckpt:``).

A mixin of :class:`~diffusion_pl.formulations.DiffusionModule`, so every formulation (and any
objective: LCM-LoRA is the LCM objective with ``lora:`` set) trains adapters the same way:

* when the module is built, the adapter ``default`` is added to its net
  (:func:`~diffusion_pl.lora.add_adapter`: zero-initialised, so the module starts as its base)
  and every other weight of the module is frozen; a checkpoint of the run therefore rebuilds
  the same layers, and resumes and samples as any other;
* when fitting (or validating) starts, the base net's weights are loaded from ``base_ckpt``
  (a :class:`~diffusion_pl.objectives.Teacher`: a checkpoint of any formulation whose net has
  the same layers); a resumed run then restores its own weights over them (the same base);
* the optimizer sees the adapters only, and EMA averages them (the frozen base is averaged
  too, and stays exactly itself: a lerp of equal numbers);
* at the end of the fit the ``SaveAdapters`` callback (added to every ``diffusion-pl fit``)
  writes :meth:`adapters` — the checkpoint's weights, the average when EMA is on — to
  ``adapters.pt`` (:class:`~diffusion_pl.lora.Adapters`).
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from diffusion_pl.lora import (
    Adapters,
    LoRA,
    adapter_names,
    add_adapter,
    base_state,
    load_base_state,
)
from diffusion_pl.objectives import Teacher

__all__ = ["ADAPTER", "LoRATraining"]

ADAPTER = "default"
"""The name of the adapter a LoRA run trains."""


class LoRATraining:
    """The LoRA part of a DiffusionModule (module docstring); ``lora`` None: no part at all."""

    net: nn.Module
    lora: LoRA | None
    base_ckpt: Teacher | None

    def init_lora(self, lora: LoRA | None, base_ckpt: Teacher | None) -> None:
        """Add the adapter to ``self.net`` and freeze the rest (call once the net is set)."""
        if (lora is None) != (base_ckpt is None):
            given, missing = ("lora", "base_ckpt") if base_ckpt is None else ("base_ckpt", "lora")
            raise ValueError(
                f"{given} is set but {missing} is not: LoRA trains adapters (lora:) on a frozen "
                f"base (base_ckpt:, the checkpoint of the base); set both, or neither"
            )
        self.lora, self.base_ckpt = lora, base_ckpt
        if lora is None:
            return
        others = [n for n, p in self.named_parameters() if not n.startswith("net.")]
        if others:
            raise ValueError(
                f"lora: the model has weights outside its net ({', '.join(others[:3])}), which "
                "the base's net does not carry; train it without lora:"
            )
        add_adapter(self.net, lora, ADAPTER)
        self.requires_grad_(False)
        for name, p in self.net.named_parameters():
            p.requires_grad_(f".{ADAPTER}." in name and ".lora_" in name)

    def load_lora_base(self) -> None:
        """Load the base net's weights from ``base_ckpt`` into the net (adapters untouched)."""
        if self.base_ckpt is None:
            return
        try:
            base = self.base_ckpt.load()
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"base_ckpt (model.init_args.base_ckpt): {err}: set its path to the checkpoint "
                "of the base that `diffusion-pl fit` wrote"
            ) from err
        net = base.net if isinstance(getattr(base, "net", None), nn.Module) else None
        if net is None:
            raise ValueError(
                f"base_ckpt {self.base_ckpt} holds a {type(base).__name__}, which has no net to "
                "adapt: pass a diffusion model's checkpoint"
            )
        if adapter_names(net):
            raise ValueError(
                f"base_ckpt {self.base_ckpt} is a LoRA run's checkpoint (its net holds adapters): "
                "merge them into a plain checkpoint first (diffusion-pl lora merge) and make "
                "that the base"
            )
        load_base_state(self.net, base_state(net), f"base_ckpt {self.base_ckpt}")

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the optimizer updates: the adapters' with ``lora``, else all."""
        return (p for p in self.parameters() if self.lora is None or p.requires_grad)

    def adapters(self, step: int, **about: object) -> Adapters:
        """The trained adapters as an adapters file holds them (weights as the net has them
        now), with the base's path and hash; ``about``: more of :class:`Adapters`'s fields
        (LCM-LoRA's ``lcm``)."""
        if self.lora is None:
            raise ValueError("this model trains no LoRA adapters (lora: is not set)")
        trained_with = f"{type(self).__module__}.{type(self).__name__}"
        return Adapters.of(self.net, ADAPTER, self.lora, base_ckpt=str(self.base_ckpt),
                           trained_with=trained_with, step=step, **about)  # fmt: skip
