"""The private APIs wrapped in diffusion_pl.compat still exist and still mean what it assumes.

A release of Lightning, jsonargparse or numpy that renames or changes one fails here, by name.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch
from jsonargparse import lazy_instance
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.cli import LightningCLI
from torch.optim.swa_utils import AveragedModel

from diffusion_pl.compat import (
    LAZY_PREFIX,
    NUMPY_PICKLE_GLOBALS,
    LightningCLIHooks,
    PublicWeightAveraging,
    attached_trainer,
    class_name,
    lazy_class,
    set_sigterm_received,
    within_accumulation,
)
from diffusion_pl.paths import VEPath


def test_lightning_cli_still_calls_the_two_private_steps_it_overrides() -> None:
    """LightningCLIHooks replaces ``_parse_ckpt_path`` and ``_run_subcommand``: both must still
    be LightningCLI's methods, called by its constructor, or the overrides do nothing."""
    init = inspect.getsource(LightningCLI.__init__)
    for name in ("_parse_ckpt_path", "_run_subcommand"):
        assert callable(getattr(LightningCLI, name, None)), name
        assert f"self.{name}(" in init, name
        assert name in vars(LightningCLIHooks), name
    assert inspect.signature(LightningCLI._run_subcommand).parameters.keys() == {
        "self",
        "subcommand",
    }
    assert "hyper_parameters" in inspect.getsource(LightningCLI._parse_ckpt_path)


def test_lightning_sigterm_flag_and_accumulation_are_where_compat_reads_them() -> None:
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, accumulate_grad_batches=2)  # fmt: skip
    assert trainer.received_sigterm is False
    set_sigterm_received(trainer, True)
    assert trainer.received_sigterm is True  # the public property reads the private flag
    set_sigterm_received(trainer, False)
    assert trainer.received_sigterm is False
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    progress.ready = 1  # the first of two micro-batches: the step is not done
    assert within_accumulation(trainer) is True
    progress.ready = 2  # its last: the optimizer steps
    assert within_accumulation(trainer) is False


def test_lightning_weight_averaging_still_keeps_its_average_in_average_model() -> None:
    """EMA sets WeightAveraging's private ``_average_model`` (no public handle exists); a
    Lightning release that renames it must fail here, not silently average nothing."""
    assert vars(WeightAveraging()).get("_average_model", "missing") is None
    for hook in (WeightAveraging.on_train_batch_end, WeightAveraging.on_save_checkpoint,
                 WeightAveraging.on_load_checkpoint):  # fmt: skip
        assert "self._average_model" in inspect.getsource(hook), hook.__name__
    averaging = PublicWeightAveraging()
    average = AveragedModel(torch.nn.Linear(1, 1))
    averaging.averaged_model = average
    assert averaging._average_model is average and averaging.averaged_model is average


def test_jsonargparse_lazy_instance_is_a_prefixed_subclass_that_names_its_class() -> None:
    lazy = lazy_instance(VEPath, sigma_max=10.0)
    assert type(lazy).__name__ == LAZY_PREFIX + "VEPath"
    assert lazy_class(lazy) is VEPath and class_name(lazy) == "VEPath"
    assert lazy_class(VEPath()) is VEPath and class_name(VEPath()) == "VEPath"


def test_numpy_arrays_load_under_the_allowed_globals(tmp_path: Path) -> None:
    """torch-fidelity's statistics files: pickled float32/float64 numpy arrays."""
    stats = {"mu": np.arange(3, dtype=np.float64), "sigma": np.eye(2, dtype=np.float32)}
    torch.save(stats, tmp_path / "stats.pt")
    with torch.serialization.safe_globals(NUMPY_PICKLE_GLOBALS):
        loaded = torch.load(tmp_path / "stats.pt", weights_only=True)
    np.testing.assert_array_equal(loaded["mu"], stats["mu"])
    np.testing.assert_array_equal(loaded["sigma"], stats["sigma"])


def test_lightning_module_keeps_its_trainer_where_compat_reads_it() -> None:
    module = LightningModule()
    assert attached_trainer(module) is None
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    module.trainer = trainer
    assert attached_trainer(module) is trainer
