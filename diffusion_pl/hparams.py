"""Constructor arguments and YAML configs as hparams, so a checkpoint can rebuild its model."""

from __future__ import annotations

import inspect
from typing import Any

from lightning.pytorch.core.mixins import HyperparametersMixin

__all__ = ["record_config", "save_config"]

_PLAIN = (bool, int, float, str, tuple, list, type(None))


def save_config(obj: HyperparametersMixin) -> None:
    """Save the plain constructor arguments as ``obj.hparams``; call at the end of ``__init__``.

    Injected objects (net, path, sampler, optimizer, data source) are left out: they may not
    pickle (jsonargparse's lazy defaults don't), and a checkpoint must load with
    ``weights_only=True``. Built directly in Python, pass them again when loading;
    ``diffusion-pl fit`` records their YAML config afterwards (:func:`record_config`).
    """
    frame = inspect.currentframe().f_back  # the caller's __init__, for Lightning's `frame`
    given = {**frame.f_locals, **frame.f_locals.get("kwargs", {})}  # **kwargs passed on, too
    objects = [k for k, v in given.items() if not isinstance(v, _PLAIN)]
    obj.save_hyperparameters(ignore=objects, frame=frame)


def record_config(obj: HyperparametersMixin, config: dict[str, Any]) -> None:
    """Record the YAML config ``obj`` was built from as its hparams, for checkpoints to rebuild it.

    Args:
        obj: the instantiated LightningModule or LightningDataModule.
        config: ``{"class_path": …, "init_args": {…}}`` (a subclass) or the init args alone,
            with linked values filled in. Stored as LightningCLI stores it: the init args, plus
            ``_class_path`` and ``_instantiator`` (so ``load_from_checkpoint`` works too).
    """
    hparams = {"_instantiator": "lightning.pytorch.cli.instantiate_module"}
    if "class_path" in config:
        hparams |= {"_class_path": config["class_path"], **config.get("init_args", {})}
    else:
        hparams |= config
    obj.save_hyperparameters(hparams)
