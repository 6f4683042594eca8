"""Loading for the commands that sample (``sample``, ``fid``, ``phema --sweep``): one path from
the options to a model, its guide and its sampler.

Validate the options (:meth:`SamplingOptions.check`) → load the checkpoint → check that it
holds a diffusion model → add its LoRA adapters → load the guide of autoguidance → choose the
sampler (:func:`load_for_sampling`); ``--sampler lcm`` on a model with LCM-LoRA adapters reads
it as the LCM-LoRA student (:func:`lcm_lora_student`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from diffusion_pl.callbacks import Weights
from diffusion_pl.callbacks.guide import load_guide
from diffusion_pl.checkpoints import Checkpoint, load_datamodule, load_module
from diffusion_pl.cli.options import check_device, check_sampler_options, parse_lora
from diffusion_pl.formulations import DiffusionModule, LatentConsistencyModel
from diffusion_pl.generate import choose_sampler
from diffusion_pl.lora import apply_adapters, lcm_reading, merged_lcm_reading
from diffusion_pl.samplers import LCMSampler, Sampler, parse_grid
from diffusion_pl.teleport import attach_data_moments

__all__ = [
    "ForSampling",
    "SamplingOptions",
    "lcm_lora_student",
    "load_diffusion_module",
    "load_for_sampling",
    "pick_sampler",
]


@dataclass(frozen=True)
class SamplingOptions:
    """How a command samples a checkpoint: its options ``--sampler``, ``--steps``, ``--grid``,
    ``--weights``, ``--guide_ckpt``, ``--guidance_scale`` and ``--lora`` (see ``diffusion-pl
    sample``).

    Attributes:
        sampler: a key of :data:`~diffusion_pl.samplers.SAMPLERS`; None: the checkpoint's.
        steps: the sampler's steps; None: the sampler's own.
        grid: a key of :data:`~diffusion_pl.samplers.GRIDS`, or ``file:PATH`` of a JSON file
            of times (``tune-grid``'s output); None: the sampler's own.
        weights: ``ema`` or ``raw`` weights of the model (and of the guide).
        guide_ckpt: checkpoint of the guide of autoguidance; None: no guide.
        guidance_scale: classifier-free guidance's w, or autoguidance's with ``guide_ckpt``.
        lora: ``PATH[:SCALE]`` of each LoRA adapters file added to the model (not the guide).
    """

    sampler: str | None = None
    steps: int | None = None
    grid: str | None = None
    weights: Weights = "ema"
    guide_ckpt: str | None = None
    guidance_scale: float | None = None
    lora: tuple[str, ...] = ()

    def check(self, device: str) -> None:
        """Refuse bad options (and ``--device``) before anything is loaded.

        The rules of guidance (autoguidance needs its w, one guidance at a time, classifier-free
        guidance needs a class-conditional model) are the model's own
        (:meth:`~diffusion_pl.formulations.DiffusionModule.guided_denoiser`), checked when it
        samples; the command reports its error as one line.
        """
        check_sampler_options(self.sampler, self.steps)
        if self.grid is not None:
            parse_grid(self.grid)  # an unknown name or a bad grid file, before loading
        check_device(device)
        parse_lora(self.lora)


@dataclass(frozen=True)
class ForSampling:
    """What :func:`load_for_sampling` loads: the model, its guide (or None), the sampler."""

    module: DiffusionModule
    guide: DiffusionModule | None
    sampler: Sampler


def load_diffusion_module(
    ckpt_path: str, device: str | torch.device = "cpu", weights: Weights = "ema"
) -> DiffusionModule:
    """The diffusion model of ``ckpt_path`` in eval mode; a checkpoint of anything else (a
    noisy classifier) is refused, naming what it holds."""
    module = load_module(ckpt_path, map_location=device, weights=weights)
    if not isinstance(module, DiffusionModule):
        raise ValueError(f"{ckpt_path} holds a {type(module).__name__}, not a diffusion model")
    return module.eval()


def load_for_sampling(
    ckpt_path: str, options: SamplingOptions, device: str | torch.device = "cpu"
) -> ForSampling:
    """Load ``ckpt_path``'s diffusion model with the LoRA adapters of ``options`` (each checked
    against its base weights, :func:`~diffusion_pl.lora.apply_adapters`), the guide of
    ``options`` checked against it, and the sampler ``options`` choose (options checked first by
    :meth:`SamplingOptions.check`); for a grid that teleports, the model gets its training
    data's moments (:func:`~diffusion_pl.teleport.attach_data_moments`).
    """
    module = load_diffusion_module(ckpt_path, device, options.weights)
    if options.lora:
        chosen = parse_lora(options.lora)
        apply_adapters(module.net, chosen, f"--ckpt_path {ckpt_path}")
        added = " + ".join(f"{scale:g} × {path}" for path, scale in chosen)
        print(f"LoRA adapters: {added}", file=sys.stderr, flush=True)
    guide = None
    if options.guide_ckpt is not None:
        guide = load_guide(Checkpoint(options.guide_ckpt, options.weights), module,
                           model_name=f"the model {ckpt_path}", map_location=device)  # fmt: skip
    chosen = pick_sampler(module.sampler, options.sampler, options.steps, options.grid)
    if chosen.teleports():
        attach_data_moments(module, chosen, load_datamodule(ckpt_path))
    if isinstance(chosen, LCMSampler) and not isinstance(module, LatentConsistencyModel):
        module = lcm_lora_student(module, parse_lora(options.lora), ckpt_path, chosen)
    return ForSampling(module, guide, chosen)


def lcm_lora_student(
    module: DiffusionModule, chosen: list[tuple[str, float]], ckpt_path: str, sampler: LCMSampler
) -> LatentConsistencyModel:
    """``--sampler lcm`` on a diffusion model that is no LCM: the model with its LCM-LoRA
    adapters (already added, or merged into ``ckpt_path`` by ``lora merge``) read as the
    LCM-LoRA student, by the reading that their file (or the merged checkpoint) records
    (:meth:`LatentConsistencyModel.reading_of`).

    Raises:
        ValueError: no adapters of ``chosen`` are LCM-LoRA's, or two record other readings
            (:func:`~diffusion_pl.lora.lcm_reading`).
    """
    readings = {r for r in (lcm_reading(chosen), merged_lcm_reading(ckpt_path)) if r is not None}
    if not readings:
        raise ValueError(
            f"--sampler lcm samples a latent consistency model, but {ckpt_path} holds a "
            f"{type(module).__name__} and no --lora adapters of an LCM-LoRA run: add them "
            "(--lora lcm_lora/adapters.pt), or choose another --sampler"
        )
    if len(readings) > 1:
        raise ValueError(
            f"--lora: the LCM-LoRA adapters and the one merged into {ckpt_path} were distilled "
            "with other settings: combine one LCM-LoRA with other adapters"
        )
    reading = readings.pop()
    print(f"--sampler lcm: read as the LCM-LoRA student ({reading})", file=sys.stderr, flush=True)
    return LatentConsistencyModel.reading_of(module, reading, sampler)


def pick_sampler(
    default: Sampler, name: str | None, steps: int | None, grid: str | None
) -> Sampler:
    """:func:`~diffusion_pl.generate.choose_sampler` for ``sample`` and ``fid``, saying (on
    stderr) what ``--steps`` does where it is not the number of network evaluations.

    A sampler that picks its own steps (``rk45``, adaptive) ignores ``--steps`` with a note;
    for ``annealed_langevin`` ``--steps`` is the number of noise levels L, each of
    ``steps_per_level`` Langevin steps, and the note gives the product. A grid file
    (``--grid file:PATH``) sets the steps; ``--steps`` may only repeat them.
    """
    if grid is not None and grid.startswith("file:"):  # the file's steps, or --steps if equal
        return choose_sampler(default, name, steps, grid)
    chosen = choose_sampler(default, name, None, grid)
    if steps is None:
        return chosen
    if "steps" not in chosen.arguments():
        print(f"note: {type(chosen).__name__} picks its own steps (adaptive, set by rtol and "
              f"atol): --steps {steps} is ignored", file=sys.stderr, flush=True)  # fmt: skip
        return chosen
    chosen = chosen.with_steps(steps)
    per_level = chosen.arguments().get("steps_per_level")
    if per_level is not None:
        print(f"note: for {type(chosen).__name__} --steps {steps} is the number of noise levels, "
              f"each of steps_per_level={per_level} Langevin steps: {steps * per_level} network "
              "evaluations per sample", file=sys.stderr, flush=True)  # fmt: skip
    return chosen
