"""``configure_optimizers``' answer, shared by every formulation and the noisy classifier."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

__all__ = ["optimizer_config"]


def optimizer_config(
    params: Iterable[torch.nn.Parameter],
    optimizer: OptimizerCallable,
    lr_scheduler: LRSchedulerCallable | None,
) -> torch.optim.Optimizer | dict:
    """The optimizer over ``params``, plus its scheduler stepped every optimizer step.

    Args:
        params: the parameters to optimize.
        optimizer: optimizer factory ``params -> Optimizer`` (YAML ``class_path``).
        lr_scheduler: optional scheduler factory ``Optimizer -> LRScheduler``.
    """
    built = optimizer(params)
    if lr_scheduler is None:
        return built
    return {
        "optimizer": built,
        "lr_scheduler": {"scheduler": lr_scheduler(built), "interval": "step"},
    }
