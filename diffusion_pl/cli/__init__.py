"""The ``diffusion-pl`` command: Lightning's fit/validate/test, and sample, reflow, likelihood,
fid, tune-grid, phema, encode, lora.

diffusion-pl fit --config configs/toy2d/rectified_flow.yaml [--trainer.max_steps 200 ...]
diffusion-pl sample --ckpt_path RUN.ckpt --num_samples N --seed S --output FILE.npz
diffusion-pl fid --ckpt_path RUN.ckpt --feature digits --num_samples 2000  (torchrun: any ranks)
diffusion-pl tune-grid --ckpt_path RUN.ckpt --sampler ddim --steps 5 --output grid.json
diffusion-pl phema --run RUN_DIR --sigma_rel 0.05 0.08 0.12 --output DIR [--sweep true]
diffusion-pl encode --config CFG --autoencoder stabilityai/sd-vae-ft-mse --output DIR  (latents)
diffusion-pl lora merge --ckpt_path BASE.ckpt --lora A.pt --lora B.pt:0.5 --output merged.ckpt

Bad input ends the command with one ``error:`` line and exit code 2 (:mod:`diffusion_pl.errors`;
``DIFFUSION_PL_TRACEBACK=1`` shows the traceback).

The LightningCLI is in :mod:`.lightning_cli`, each other command in :mod:`.commands`, and the
loading every sampling command shares (options → model → guide → sampler) in :mod:`.loading`.
"""

from __future__ import annotations

import difflib
import sys
from typing import NoReturn

from jsonargparse import CLI, auto_parser
from lightning import LightningModule

from diffusion_pl.callbacks import (
    FinalCheckpoint,
    SaveAdapters,
    SigtermCheckpoint,
    StepSeed,
    StopOnNonFinite,
    Throughput,
)
from diffusion_pl.cli.argv import command_args
from diffusion_pl.cli.commands.autoencoder import AUTOENCODER_COMMANDS
from diffusion_pl.cli.commands.encode import encode
from diffusion_pl.cli.commands.fid import fid, fid_sweep
from diffusion_pl.cli.commands.likelihood import likelihood
from diffusion_pl.cli.commands.lora import LORA_COMMANDS
from diffusion_pl.cli.commands.phema import phema
from diffusion_pl.cli.commands.reflow import reflow
from diffusion_pl.cli.commands.sample import output_paths, sample
from diffusion_pl.cli.commands.tune_grid import tune_grid_command
from diffusion_pl.cli.lightning_cli import DiffusionCLI, Parser, check_labels
from diffusion_pl.cli.loading import SamplingOptions, load_for_sampling, pick_sampler
from diffusion_pl.cli.parse_errors import ShortErrors, check_config_files
from diffusion_pl.data import DiffusionDataModule
from diffusion_pl.errors import UsageError, bad_input, show_tracebacks
from diffusion_pl.signals import Preempted, preempted_exit, sigterm_rule

__all__ = [
    "COMMANDS",
    "DiffusionCLI",
    "SamplingOptions",
    "check_labels",
    "encode",
    "fid",
    "fid_sweep",
    "likelihood",
    "load_for_sampling",
    "main",
    "output_paths",
    "phema",
    "pick_sampler",
    "reflow",
    "sample",
    "tune_grid_command",
]

COMMANDS = {
    "sample": sample,
    "reflow": reflow,
    "likelihood": likelihood,
    "fid": fid,
    "tune-grid": tune_grid_command,
    "phema": phema,
    "encode": encode,
    "lora": LORA_COMMANDS,
    "autoencoder": AUTOENCODER_COMMANDS,
}
"""Commands beside LightningCLI's fit/validate/test, each a typed function (``lora`` and
``autoencoder``: tables of subcommands, ``diffusion-pl lora merge``, ``diffusion-pl autoencoder
export``)."""


def main(args: list[str] | None = None) -> None:
    """Entry point of ``diffusion-pl`` and ``python -m diffusion_pl``.

    Bad input (:func:`~diffusion_pl.errors.bad_input`) ends the command with one ``error:``
    line on stderr, after the command's usage for a bad option of a command of
    :data:`COMMANDS` (:class:`~diffusion_pl.errors.UsageError`), and exit code 2;
    ``DIFFUSION_PL_TRACEBACK=1`` raises it with its traceback instead. Other exceptions keep
    their tracebacks. SIGTERM ends any command with exit code 75 (:mod:`diffusion_pl.signals`;
    ``fit`` first prints its outputs and state).
    """
    argv = sys.argv[1:] if args is None else list(args)
    try:
        with sigterm_rule():
            _run(argv, args)
    except Preempted:
        what = f"`diffusion-pl {argv[0]}`" if argv else "diffusion-pl"
        raise preempted_exit(f"during {what}: nothing was written") from None
    except Exception as raised:
        error = bad_input(raised)
        if error is None or show_tracebacks():
            raise
        if isinstance(error, UsageError) and argv[0] in COMMANDS:
            auto_parser(COMMANDS[argv[0]], **_command_options(argv[0])).error(str(error))
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _command_options(name: str) -> dict[str, object]:
    """jsonargparse options of the command ``name`` of :data:`COMMANDS`."""
    return {"prog": f"diffusion-pl {name}", "as_positional": False, "parser_class": ShortErrors}


def _run(argv: list[str], args: list[str] | None) -> None:
    """Run the command of ``argv``: one of :data:`COMMANDS`, or LightningCLI's."""
    check_config_files(argv)
    if argv[:1] and argv[0] in COMMANDS:
        rest = command_args(argv[0], argv[1:])
        CLI(COMMANDS[argv[0]], args=rest, **_command_options(argv[0]))
        return
    if argv[:1] and not argv[0].startswith("-") and argv[0] not in DiffusionCLI.subcommands():
        _unknown_command(argv[0])
    DiffusionCLI(
        LightningModule,  # a formulation, or the NoisyClassifier of classifier guidance
        DiffusionDataModule,
        subclass_mode_model=True,
        parser_class=Parser,
        args=args,  # None: LightningCLI reads sys.argv itself
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "prog": "diffusion-pl",
            "description": f"Train diffusion models. Also: {', '.join(COMMANDS)}. test, like "
            "validate, reports the loss on the val split (the data have no other held-out "
            "split). Bad input ends with one error line (exit code 2); DIFFUSION_PL_TRACEBACK=1 "
            "shows its traceback.",
        },
        # Persistent callbacks, added to every run's own: survive preemption and divergence,
        # report progress in kimg, write a LoRA run's adapters file.
        trainer_defaults={
            "callbacks": [
                SigtermCheckpoint(),
                StepSeed(),
                StopOnNonFinite(),
                FinalCheckpoint(),
                Throughput(),
                SaveAdapters(),
            ]
        },
    )


def _unknown_command(name: str) -> NoReturn:
    """Exit 2 naming every command, and the closest to ``name``."""
    commands = [*DiffusionCLI.subcommands(), *COMMANDS]
    close = difflib.get_close_matches(name, commands, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    print(f"usage: diffusion-pl {{{','.join(commands)}}} ...", file=sys.stderr)
    print(f"error: unknown command {name!r}: {hint}the commands are {', '.join(commands)}",
          file=sys.stderr, flush=True)  # fmt: skip
    raise SystemExit(2)
