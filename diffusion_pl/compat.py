"""Every use of another package's private API, each in one small wrapper.

The rest of the package calls these wrappers, never a private name of Lightning, jsonargparse
or numpy. Each wrapper says the versions it was checked on; ``tests/core/test_compat.py`` checks
that each private name still exists and still means what the wrapper assumes, so a release
that renames or changes one fails that test, by name, instead of a training run.

Ranges: lightning 2.5–2.6 and jsonargparse 4.x (as pyproject.toml allows), numpy 1.26–2.x;
tested on lightning 2.6.6, jsonargparse 4.53.0 and numpy 2.4.6.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.cli import LightningCLI
from torch.optim.swa_utils import AveragedModel

__all__ = [
    "LAZY_PREFIX",
    "NUMPY_PICKLE_GLOBALS",
    "LightningCLIHooks",
    "PublicWeightAveraging",
    "attached_trainer",
    "class_name",
    "lazy_class",
    "set_sigterm_received",
    "within_accumulation",
]


# --- Lightning 2.5–2.6 ----------------------------------------------------------------------
class LightningCLIHooks(LightningCLI):
    """``LightningCLI`` with its two private steps turned into what a subclass can rely on.

    Lightning 2.5–2.6: ``LightningCLI.__init__`` calls ``_parse_ckpt_path()`` after parsing
    (it reads the checkpoint's hparams over the given config, which dropped overrides such as
    a new sampler without a word) and ``_run_subcommand(name)`` to run a subcommand.
    Here the first does nothing (the config runs as given) and the second calls
    :meth:`run_subcommand`, the public hook to override.
    """

    def _parse_ckpt_path(self) -> None:
        """Nothing: the config runs as given."""

    def _run_subcommand(self, subcommand: str) -> None:
        self.run_subcommand(subcommand)

    def run_subcommand(self, subcommand: str) -> None:
        """Run ``subcommand`` (fit, validate, test) as Lightning does."""
        super()._run_subcommand(subcommand)


def attached_trainer(module: LightningModule) -> Trainer | None:
    """The trainer ``module`` is attached to, or None (``module.trainer`` raises then).

    Lightning 2.5–2.6 keeps it in ``LightningModule._trainer``.
    """
    return module._trainer


def set_sigterm_received(trainer: Trainer, received: bool) -> None:
    """Set Lightning's SIGTERM flag (public read-only as ``trainer.received_sigterm``): False
    holds a SIGTERM, True stops the run at the end of the batch.

    Lightning 2.5–2.6: ``trainer._signal_connector.received_sigterm``.
    """
    trainer._signal_connector.received_sigterm = received


def within_accumulation(trainer: Trainer) -> bool:
    """Whether the current micro-batch is not the last of its optimizer step.

    Lightning 2.5–2.6: ``trainer.fit_loop._should_accumulate()``.
    """
    return bool(trainer.fit_loop._should_accumulate())


class PublicWeightAveraging(WeightAveraging):
    """``WeightAveraging`` with its ``AveragedModel`` as :attr:`averaged_model`.

    Lightning 2.5–2.6: the parent updates, saves and restores ``self._average_model``; a
    subclass that builds its own average sets it there.
    """

    @property
    def averaged_model(self) -> AveragedModel | None:
        """The average the parent updates, saves and restores (None before fitting)."""
        return self._average_model

    @averaged_model.setter
    def averaged_model(self, average: AveragedModel) -> None:
        self._average_model = average


# --- jsonargparse 4.x -----------------------------------------------------------------------
LAZY_PREFIX = "LazyInstance_"
"""jsonargparse 4.x: ``lazy_instance(C)`` is an instance of a subclass named ``LazyInstance_C``."""


def class_name(obj: object) -> str:
    """``obj``'s class name, also for a jsonargparse lazy default (``LazyInstance_VEPath``)."""
    return type(obj).__name__.removeprefix(LAZY_PREFIX)


def lazy_class(obj: object) -> type:
    """The class ``obj`` stands for: its own, or the one a jsonargparse lazy default wraps.

    jsonargparse 4.x: a lazy instance keeps the wrapped class in ``_lazy_class_type``.
    """
    return getattr(obj, "_lazy_class_type", type(obj))


# --- numpy 1.26–2.x -------------------------------------------------------------------------
def _multiarray() -> Any:
    """numpy's ``multiarray`` module: ``numpy._core`` in numpy 2, ``numpy.core`` in numpy 1."""
    return np._core.multiarray if hasattr(np, "_core") else np.core.multiarray


NUMPY_PICKLE_GLOBALS = [_multiarray()._reconstruct, np.ndarray, np.dtype,
                        np.dtypes.Float32DType, np.dtypes.Float64DType]  # fmt: skip
"""What pickled numpy float arrays need from numpy (torch-fidelity's statistics files), for
``torch.serialization.safe_globals``."""
