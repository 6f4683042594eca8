"""Saving constructor arguments so a checkpoint can rebuild its model and data."""

from __future__ import annotations

import inspect

from lightning.pytorch.core.mixins import HyperparametersMixin
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

__all__ = ["save_config"]

_PLAIN = (bool, int, float, str, tuple, list, type(None))


def save_config(obj: HyperparametersMixin) -> None:
    """Save the caller's constructor arguments as ``obj.hparams``; call at the end of ``__init__``.

    Under LightningCLI the hparams are the YAML config (``class_path`` dicts), which lets a
    checkpoint rebuild the injected net, sampler, optimizer or data source. Built directly in
    Python, only plain values are kept: injected objects may not pickle (jsonargparse's lazy
    defaults don't), so pass them again when loading.
    """
    frame = inspect.currentframe().f_back
    if _given_hyperparameters.get() is not None:
        obj.save_hyperparameters(frame=frame)
        return
    objects = [k for k, v in frame.f_locals.items() if not isinstance(v, _PLAIN)]
    obj.save_hyperparameters(ignore=objects, frame=frame)
