"""``diffusion-pl fit/validate/test``: the LightningCLI over every formulation and the one
DataModule, with the links between the data and the model and the checks before a run."""

from __future__ import annotations

import yaml
from jsonargparse import Namespace
from jsonargparse.typing import import_object
from lightning import LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from diffusion_pl import formulations
from diffusion_pl.callbacks import TrainingDiverged
from diffusion_pl.checkpoints import AtomicCheckpointIO
from diffusion_pl.cli.parse_errors import ShortErrors
from diffusion_pl.compat import LightningCLIHooks
from diffusion_pl.data import DiffusionDataModule
from diffusion_pl.formulations import VDM, DiffusionModule
from diffusion_pl.hparams import record_config
from diffusion_pl.run_summary import print_outputs, resume_hint
from diffusion_pl.runs import EXIT_PREEMPTED, RunComplete, check_fit, prepare_checkpoint
from diffusion_pl.signals import Preempted

__all__ = ["DiffusionCLI", "Parser", "check_labels"]


class Parser(LightningArgumentParser, ShortErrors):
    """LightningCLI's parser with one-line errors (:class:`~.parse_errors.ShortErrors`); a
    model class that is not found lists the formulations to choose from."""

    def explain(self, line: str) -> str:
        if line.startswith("--model: there is no class") and "did you mean" not in line:
            classes = [getattr(formulations, n) for n in formulations.__all__]
            choices = ", ".join(
                f"diffusion_pl.formulations.{c.__name__}"
                for c in classes
                if isinstance(c, type) and c is not DiffusionModule
            )
            line += f". Set model.class_path to one of: {choices}"
        return line


class DiffusionCLI(LightningCLIHooks):
    """LightningCLI over every formulation and the noisy classifier (``model.class_path``) and
    the one DataModule.

    The data's example shape is linked to the model's ``data_shape``, whether samples are
    clipped to [−1, 1] (images, not autoencoder codes) to a formulation's ``clip_samples``, and,
    for VDM, the data's quantization levels to ``num_levels`` (the levels of its discretized
    decoder; NCSN's noise levels are not linked). The model's and data's YAML config, linked
    values included, become their hparams, from which a checkpoint rebuilds them
    (:func:`~.checkpoints.load_module`).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            "data.data_shape", "model.init_args.data_shape", apply_on="instantiate"
        )
        self._parsers = [*getattr(self, "_parsers", []), parser]  # one per subcommand

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands but ``predict``: a formulation has no ``forward`` to predict
        with (``diffusion-pl sample`` draws samples)."""
        return {k: v for k, v in LightningCLI.subcommands().items() if k != "predict"}

    def _run_config(self) -> Namespace:
        """The parsed config of the subcommand being run."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        """Link a formulation's ``clip_samples`` and VDM's ``num_levels`` from the data; a
        hand-set ``num_levels`` that differs fails."""
        model = self._run_config().model
        formulation = import_object(model.class_path)
        if issubclass(formulation, DiffusionModule):
            for parser in self._parsers:
                parser.link_arguments(
                    "data.clip_samples", "model.init_args.clip_samples", apply_on="instantiate"
                )
        if not issubclass(formulation, VDM):
            return
        given = model.init_args.get("num_levels")

        def data_levels(levels: int | None) -> int | None:
            if given is not None and given != levels:
                raise ValueError(
                    f"model.init_args.num_levels={given} but the data have {levels} quantization "
                    "levels: remove num_levels from the model's config, it is linked from the data"
                )
            return levels

        for parser in self._parsers:
            parser.link_arguments(
                "data.num_levels", "model.init_args.num_levels", data_levels, apply_on="instantiate"
            )

    def after_instantiate_classes(self) -> None:
        """Record the model's and the data's YAML config (linked values included) as hparams."""
        dumped = self.parser.dump(self.config, skip_link_targets=False, skip_none=False)
        dumped = yaml.safe_load(dumped)
        config = dumped[self.subcommand] if self.subcommand else dumped
        linked = {"data_shape": tuple(self.datamodule.data_shape)}
        if isinstance(self.model, DiffusionModule):
            linked["clip_samples"] = self.datamodule.clip_samples
        if isinstance(self.model, VDM):
            linked["num_levels"] = self.datamodule.num_levels
        model = config["model"]
        record_config(self.model, {**model, "init_args": {**model["init_args"], **linked}})
        record_config(self.datamodule, config["data"])

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The configured Trainer, writing checkpoints atomically (unless told otherwise)."""
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse; then resolve ``ckpt_path`` and check it against the config
        (:func:`~.runs.prepare_checkpoint`); a fit first clears its run directory of stale
        temporary files. A checkpoint the config cannot resume is refused, naming the keys; one
        of a finished run ends the command (exit code 0) before anything is created. The
        config then runs as given: the checkpoint's hparams are not read over it
        (:class:`~diffusion_pl.compat.LightningCLIHooks`).
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand or "", None)
        if config is None or (config.get("ckpt_path") is None and subcommand != "fit"):
            return
        given = yaml.safe_load(parser.dump(self.config, skip_link_targets=False, skip_none=False))
        try:
            config.ckpt_path = prepare_checkpoint(given[subcommand], subcommand)
        except RunComplete as complete:
            print(complete, flush=True)
            raise SystemExit(0) from None

    def run_subcommand(self, subcommand: str) -> None:
        """Run it; a run stopped by SIGTERM or divergence prints its outputs and how it ended.

        SIGTERM (:mod:`diffusion_pl.signals`) ends the command with
        :data:`~.runs.EXIT_PREEMPTED`, so a retry loop can tell preemption from completion: in
        the training loop after ``last.ckpt`` is written, before it with nothing trained, after
        it (the final grid or FID of ``on_fit_end``) with the final checkpoint written.
        """
        try:
            super().run_subcommand(subcommand)
        except (SIGTERMException, Preempted) as stopped:
            if subcommand == "fit":
                print_outputs(self.trainer, self._stopped(isinstance(stopped, Preempted)))
            raise SystemExit(EXIT_PREEMPTED) from None
        except TrainingDiverged:
            print_outputs(self.trainer, f"diverged at step {self.trainer.global_step} (below)")
            raise

    def _stopped(self, outside_the_loop: bool) -> str:
        """The state of a fit stopped by SIGTERM, and how to go on."""
        step, code = self.trainer.global_step, f"exit code {EXIT_PREEMPTED}"
        if not outside_the_loop:
            return f"stopped by SIGTERM at step {step} ({code}); resume with: " + resume_hint(
                self.trainer
            )
        if self.trainer.fit_loop.done:  # on_fit_end: the final grid or FID
            return (
                f"stopped by SIGTERM after training finished at step {step} ({code}), before "
                "its final samples; the final checkpoint is written"
            )
        return f"stopped by SIGTERM before training, at step {step} ({code}); run it again"

    def before_fit(self) -> None:
        check_labels(self.model, self.datamodule)
        check_fit(self.trainer, self.model)

    def before_validate(self) -> None:
        check_labels(self.model, self.datamodule)

    def after_fit(self) -> None:
        """Say where the run's outputs are; a SIGTERM that came while the loop was ending (so
        the run finished) still ends the command with exit code 75."""
        step = self.trainer.global_step
        if self.trainer.received_sigterm:
            print_outputs(self.trainer, f"finished at step {step}, then stopped by SIGTERM")
            raise SystemExit(EXIT_PREEMPTED)
        print_outputs(self.trainer, f"finished at step {step}")


def check_labels(model: LightningModule, datamodule: DiffusionDataModule) -> None:
    """Refuse a class-conditional model (or a classifier) on unlabelled data or other classes."""
    wanted = getattr(model, "num_classes", None)
    if wanted is None:
        return
    source = type(datamodule.source).__name__
    if datamodule.num_classes is None:
        raise ValueError(
            f"the model is class-conditional (num_classes={wanted}) but the data ({source}) "
            "have no labels: use labelled data, or set the net's num_classes: null"
        )
    if datamodule.num_classes != wanted:
        raise ValueError(
            f"the model has num_classes={wanted} but the data ({source}) have "
            f"{datamodule.num_classes} classes: set the net's num_classes: {datamodule.num_classes}"
        )
