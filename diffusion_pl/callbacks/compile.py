"""``torch.compile`` for the formulation's network, as an opt-in callback."""

from __future__ import annotations

from typing import Literal

from lightning import Callback, LightningModule, Trainer
from torch import nn

__all__ = ["CompileNet"]


class CompileNet(Callback):
    """Compile ``pl_module.net`` with ``torch.compile`` when fitting starts.

    The net is compiled in place (``nn.Module.compile``), so parameter names and checkpoints
    are unchanged and an uncompiled model loads them. Off unless listed in
    ``trainer.callbacks``: on 2 CPU cores compiling took 26 s for the toy MLP (then 1.17× faster)
    and minutes for the digits UNet (then slower), see benchmarks/RESULTS.md; it is meant for
    long GPU runs. ``benchmarks/compile_speed.py`` measures the trade-off on your machine.

    Args:
        backend: ``torch.compile`` backend (``inductor``; ``aot_eager`` for a quick check).
        mode: ``default``, ``reduce-overhead`` (CUDA graphs) or ``max-autotune``.
        dynamic: compile for varying shapes (None: decide after a shape changes).
        fullgraph: fail on graph breaks instead of falling back to eager for those parts.
    """

    def __init__(
        self,
        backend: str = "inductor",
        mode: Literal["default", "reduce-overhead", "max-autotune"] = "default",
        dynamic: bool | None = None,
        fullgraph: bool = False,
    ) -> None:
        self.backend, self.mode, self.dynamic, self.fullgraph = backend, mode, dynamic, fullgraph

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        net = getattr(pl_module, "net", None)
        if not isinstance(net, nn.Module):
            raise TypeError(
                f"CompileNet compiles pl_module.net, but {type(pl_module).__name__} has no net "
                "module; remove CompileNet from trainer.callbacks"
            )
        mode = None if self.backend != "inductor" else self.mode  # only inductor has modes
        net.compile(backend=self.backend, mode=mode, dynamic=self.dynamic, fullgraph=self.fullgraph)
