"""The ``diffusion-pl`` command: Lightning's fit/validate/test, and sample, reflow, likelihood,
fid, phema, encode.

diffusion-pl fit --config configs/toy2d/rectified_flow.yaml [--trainer.max_steps 200 ...]
diffusion-pl sample --ckpt_path RUN.ckpt --num_samples N --seed S --output FILE.npz
diffusion-pl fid --ckpt_path RUN.ckpt --feature digits --num_samples 2000  (torchrun: any ranks)
diffusion-pl phema --run RUN_DIR --sigma_rel 0.05 0.08 0.12 --output DIR [--sweep true]
diffusion-pl encode --config CFG --autoencoder stabilityai/sd-vae-ft-mse --output DIR  (latents)

Bad input ends the command with one ``error:`` line and exit code 2 (:mod:`diffusion_pl.errors`;
``DIFFUSION_PL_TRACEBACK=1`` shows the traceback).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import sys
from pathlib import Path
from typing import Literal, NoReturn

import numpy as np
import torch
import torch.distributed as dist
import yaml
from jsonargparse import CLI, Namespace, auto_parser
from jsonargparse.typing import import_object
from lightning import LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from tqdm.auto import tqdm

from diffusion_pl import formulations
from diffusion_pl.callbacks import (
    FinalCheckpoint,
    SigtermCheckpoint,
    StepSeed,
    StopOnNonFinite,
    Throughput,
    TrainingDiverged,
    Weights,
)
from diffusion_pl.checkpoints import (
    AtomicCheckpointIO,
    load_datamodule,
    load_guide,
    load_module,
    read_checkpoint,
)
from diffusion_pl.data import DiffusionDataModule
from diffusion_pl.data.latents import encode_dataset
from diffusion_pl.errors import UsageError, bad_input, show_tracebacks
from diffusion_pl.formulations import VDM, DiffusionModule, NoisyClassifier, RectifiedFlow
from diffusion_pl.generate import choose_sampler, counting_calls, cycle_labels, generate
from diffusion_pl.hparams import record_config
from diffusion_pl.likelihood import bits_per_dim, check_t_eps, dequantize, log_likelihood
from diffusion_pl.metrics import FIDEvaluator
from diffusion_pl.metrics.features import (
    default_inception_weights,
    inception_weights_missing,
    resolve_extractor,
)
from diffusion_pl.metrics.fid import require_images
from diffusion_pl.phema import (
    averaged_checkpoint,
    check_sigma_rel,
    find_snapshots,
    find_template,
    reconstruct,
    select_run,
)
from diffusion_pl.reflow import flow_pairs
from diffusion_pl.runs import (
    EXIT_PREEMPTED,
    check_fit,
    prepare_checkpoint,
    print_outputs,
    resume_hint,
)
from diffusion_pl.samplers import SAMPLERS, Sampler
from diffusion_pl.visualize import save_curve, save_samples_figure

__all__ = [
    "COMMANDS",
    "DiffusionCLI",
    "check_labels",
    "encode",
    "fid",
    "fid_sweep",
    "likelihood",
    "main",
    "output_paths",
    "phema",
    "reflow",
    "sample",
]


def _names_a_class(message: str) -> bool:
    """Whether the first ``class_path '…'`` of a jsonargparse error imports (the error is then
    about its init args, not the class)."""
    marker = "Problem with given class_path '"
    if marker not in message:
        return False
    class_path = message.split(marker, 1)[1].split("'", 1)[0]
    try:
        import_object(class_path)
    except (ImportError, AttributeError, ValueError):
        return False
    return True


class _Parser(LightningArgumentParser):
    """LightningCLI's parser; an error about the model's class lists the formulations to choose
    from (not one about the init args of a class that was found)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if 'key "model"' in message and not _names_a_class(message):
            classes = [getattr(formulations, n) for n in formulations.__all__]
            choices = ", ".join(
                f"diffusion_pl.formulations.{c.__name__}"
                for c in classes
                if isinstance(c, type) and c is not DiffusionModule
            )
            message += f"\nSet model.class_path to one of: {choices}"
        super().error(message, ex)


class DiffusionCLI(LightningCLI):
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
        temporary files. A checkpoint the config cannot resume is refused, naming the keys.
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand or "", None)
        if config is None or (config.get("ckpt_path") is None and subcommand != "fit"):
            return
        given = yaml.safe_load(parser.dump(self.config, skip_link_targets=False, skip_none=False))
        config.ckpt_path = prepare_checkpoint(given[subcommand], subcommand)

    def _parse_ckpt_path(self) -> None:
        """Nothing: the config runs as given (checked in :meth:`parse_arguments`).

        Recent Lightning releases parse the checkpoint's model config over the given one here,
        which dropped overrides (a new sampler) without a word.
        """

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; a run stopped by SIGTERM or divergence prints its outputs and how it ended.

        After SIGTERM (``last.ckpt`` is written by then) the process exits with
        :data:`~.runs.EXIT_PREEMPTED`, so a retry loop can tell preemption from completion.
        """
        try:
            super()._run_subcommand(subcommand)
        except SIGTERMException:
            if subcommand == "fit":
                state = f"stopped by SIGTERM at step {self.trainer.global_step}"
                state += f" (exit code {EXIT_PREEMPTED}); resume with: {resume_hint(self.trainer)}"
                print_outputs(self.trainer, state)
            raise SystemExit(EXIT_PREEMPTED) from None
        except TrainingDiverged:
            print_outputs(self.trainer, f"diverged at step {self.trainer.global_step} (below)")
            raise

    def before_fit(self) -> None:
        check_labels(self.model, self.datamodule)
        check_fit(self.trainer, self.model)

    def before_validate(self) -> None:
        check_labels(self.model, self.datamodule)

    def after_fit(self) -> None:
        """Say where the run's outputs are."""
        print_outputs(self.trainer, f"finished at step {self.trainer.global_step}")


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


def check_positive(**values: float) -> None:
    """Refuse a command-line option that must be > 0, e.g. ``check_positive(batch_size=0)``."""
    for name, value in values.items():
        if not value > 0:
            raise UsageError(f"--{name} must be > 0, got {value}")


def check_device(device: str) -> None:
    """Refuse a ``--device`` that is not a torch device, or a CUDA device this machine lacks."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UsageError(
            f"--device {device!r} is not a torch device: use cpu, cuda or cuda:N"
        ) from None
    if parsed.type != "cuda":
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise UsageError(
            f"--device {device}: this machine has no CUDA device (torch.cuda.is_available() is "
            "False); use --device cpu"
        )
    if parsed.index is not None and parsed.index >= count:
        raise UsageError(
            f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to "
            f"cuda:{count - 1}"
        )


def pick_sampler(
    default: Sampler, name: str | None, steps: int | None, grid: str | None
) -> Sampler:
    """:func:`~diffusion_pl.generate.choose_sampler` for ``sample`` and ``fid``, saying (on
    stderr) what ``--steps`` does where it is not the number of network evaluations.

    A sampler that picks its own steps (``rk45``, adaptive) ignores ``--steps`` with a note;
    for ``annealed_langevin`` ``--steps`` is the number of noise levels L, each of
    ``steps_per_level`` Langevin steps, and the note gives the product.
    """
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


def output_paths(output: str) -> tuple[Path, Path]:
    """The two files ``sample --output OUTPUT`` writes: the samples' ``.npz`` and the picture.

    A trailing ``.npz`` or ``.png`` is dropped, then ``.npz`` and ``.png`` are added:
    ``out/s.npz`` and ``out/s`` give ``out/s.npz`` and ``out/s.png``; ``pic.png`` gives
    ``pic.npz`` and ``pic.png``; ``run.v2`` gives ``run.v2.npz`` and ``run.v2.png``.
    """
    path = Path(output)
    if path.suffix.lower() in (".npz", ".png"):
        path = path.with_suffix("")
    return path.with_name(f"{path.name}.npz"), path.with_name(f"{path.name}.png")


def check_feature(feature: str, feature_weights: str | None) -> None:
    """Refuse ``--feature inception`` without its weights file (``fid`` and ``phema --sweep``)."""
    if feature == "inception":
        weights_file = Path(feature_weights) if feature_weights else default_inception_weights()
        if not weights_file.is_file():
            raise inception_weights_missing(weights_file, "pass --feature_weights PATH")


def check_guide_scale(guide_ckpt: str | None, guidance_scale: float | None) -> None:
    """Refuse ``--guide_ckpt`` without ``--guidance_scale``: autoguidance needs its w (the
    checkpoint's own ``guidance_scale`` is a classifier-free guidance scale, not a default)."""
    if guide_ckpt is not None and guidance_scale is None:
        raise UsageError(
            "--guide_ckpt needs --guidance_scale w, autoguidance's scale (1 is the model alone, "
            "> 1 guided; Karras et al. 2024 use about 2)"
        )


def check_sampler_options(sampler: str | None, steps: int | None) -> None:
    """Refuse an unknown ``--sampler`` or ``--steps`` <= 0 (``sample`` and ``fid``)."""
    if steps is not None and steps <= 0:
        raise UsageError(f"--steps must be > 0, got {steps}; omit it for the sampler's default")
    if sampler is not None and sampler not in SAMPLERS:
        raise UsageError(f"unknown --sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")


def sample(
    ckpt_path: str,
    num_samples: int,
    output: str,
    seed: int = 0,
    sampler: str | None = None,
    steps: int | None = None,
    grid: str | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    weights: Weights = "ema",
    class_labels: list[int] | None = None,
    guidance_scale: float | None = None,
    classifier_ckpt: str | None = None,
    classifier_scale: float | None = None,
    guide_ckpt: str | None = None,
) -> Path:
    """Draw samples from a checkpoint into an ``.npz`` (key ``samples``), plus a PNG beside it.

    Samples are in data space: images in [−1, 1], channels first; 2-D toys as coordinates. A
    model of autoencoder codes (``Latents`` data) has its samples decoded to images through the
    autoencoder its data name; the codes are saved too, under the key ``latents``.
    Sample k depends only on the seed and k: the same seed gives identical samples whatever
    the batch size, and N = 200 extends N = 100. With ``--class_labels`` the labels
    are cycled over the samples (``[3]``: all threes; ``[0,1,...,9]``: every digit in turn)
    and saved under the key ``labels``; a class-conditional model is guided by classifier-free
    guidance at ``--guidance_scale``, any model by a noisy classifier (``--classifier_ckpt``).
    With ``--guide_ckpt`` any model is autoguided instead: D_guide + w (D_model − D_guide),
    w = ``--guidance_scale`` (Karras et al. 2024), with or without class labels.

    Args:
        ckpt_path: checkpoint written by ``diffusion-pl fit``.
        num_samples: number of samples N (> 0); the array has shape (N, ...).
        output: where to write: the samples go to OUTPUT.npz and the picture to OUTPUT.png (a
            trailing .npz or .png of OUTPUT is dropped first); both paths are printed.
        seed: seed of the sampling generator.
        sampler: sampler name, one of euler, heun, rk45, euler_maruyama, pc, ddpm, ddim,
            annealed_langevin, dpmpp_2m, dpmpp_3m, unipc, ipndm, edm_sde, meanflow,
            consistency; default:
            the checkpoint's formulation's.
        steps: the sampler's steps (default: the sampler's own): time steps of the grid for
            every sampler but two, one network evaluation each (two for heun and edm_sde, a
            predictor and a corrector for pc); for annealed_langevin the number of noise
            levels, each of 100 Langevin steps (its steps_per_level); rk45 picks its own steps
            and ignores it with a note. The network evaluations per sample are printed.
        grid: time grid (one of GRIDS: uniform, edm, logsnr; leading, trailing, linspace on
            a discrete DDPM path); default: the sampler's (its paper's).
        batch_size: samples per network batch (does not change the samples).
        device: torch device to sample on, e.g. ``cpu``, ``cuda`` or ``cuda:1``.
        weights: ``ema`` (the moving average, when the run had the EMA callback) or ``raw``.
        class_labels: classes to sample, cycled over the samples, e.g. ``[0,1,2]``.
        guidance_scale: classifier-free guidance scale w (1 conditional, 0 unconditional,
            > 1 sharper); default: the checkpoint's ``guidance_scale``. With ``--guide_ckpt``:
            autoguidance's w (required; 1 the model alone, 0 the guide alone, > 1 guided,
            about 2 in Karras et al. 2024), and no classifier-free guidance.
        classifier_ckpt: checkpoint of a ``NoisyClassifier`` trained on the model's path, for
            classifier guidance.
        classifier_scale: λ, the scale of the classifier's gradient (default 1).
        guide_ckpt: checkpoint of a weaker model of the same data, path and conditioning for
            autoguidance: an earlier checkpoint of the same run, or a smaller net trained the
            same way (loaded with the same ``--weights``); both see the same class labels.
    """
    check_positive(num_samples=num_samples, batch_size=batch_size)
    check_sampler_options(sampler, steps)
    if class_labels is not None and not class_labels:
        raise UsageError("--class_labels is empty; give at least one class, e.g. [0]")
    if classifier_scale is not None and classifier_ckpt is None:
        raise UsageError("--classifier_scale scales a classifier's gradient: add --classifier_ckpt")
    if guide_ckpt is not None and classifier_ckpt is not None:
        raise UsageError(
            "--guide_ckpt (autoguidance) and --classifier_ckpt (classifier guidance) cannot be "
            "combined: pass one of them"
        )
    check_guide_scale(guide_ckpt, guidance_scale)
    check_device(device)
    module = load_module(ckpt_path, map_location=device, weights=weights)
    if not isinstance(module, DiffusionModule):
        raise ValueError(f"{ckpt_path} holds a {type(module).__name__}, not a diffusion model")
    guide = None
    if guide_ckpt is not None:
        guide = load_guide(guide_ckpt, module, model_name=f"the model {ckpt_path}",
                           map_location=device, weights=weights)  # fmt: skip
    classifier = None
    if classifier_ckpt is not None:
        classifier = load_module(classifier_ckpt, map_location=device).eval()
        if not isinstance(classifier, NoisyClassifier):
            raise ValueError(
                f"--classifier_ckpt {classifier_ckpt} holds a {type(classifier).__name__}; "
                "it needs a NoisyClassifier checkpoint (configs/digits/classifier.yaml)"
            )
    chosen = pick_sampler(module.sampler, sampler, steps, grid)
    nets = [module.net] if guide is None else [module.net, guide.net]
    with contextlib.ExitStack() as stack:
        calls = [stack.enter_context(counting_calls(net)) for net in nets]
        samples = generate(
            module, num_samples, seed=seed, batch_size=batch_size, sampler=chosen,
            class_labels=class_labels, guidance_scale=guidance_scale, classifier=classifier,
            classifier_scale=1.0 if classifier_scale is None else classifier_scale, guide=guide,
            progress=True,
        )  # fmt: skip
    batches = math.ceil(num_samples / batch_size)  # one module.sample call per batch
    nfe = sum(c[0] for c in calls) / batches
    guide_nfe = "" if guide is None else f" ({calls[1][0] / batches:g} of them the guide's)"
    labels = None if class_labels is None else cycle_labels(class_labels, 0, num_samples)
    extra = {} if labels is None else {"labels": labels.numpy()}
    if not module.clip_samples:  # codes: decode them to images
        extra["latents"] = samples.numpy()
        data = load_datamodule(ckpt_path)
        samples = torch.cat([data.decode(z.to(device)).cpu() for z in samples.split(batch_size)])
    out, picture = output_paths(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, samples=samples.numpy(), **extra)
    save_samples_figure(samples[:256], picture, title=str(chosen))
    print(f"{chosen}: {nfe:g} network evaluations per sample{guide_nfe}", flush=True)
    print(f"wrote {out} (samples: {tuple(samples.shape)}) and {picture}", flush=True)
    return out


def reflow(
    ckpt_path: str,
    num_pairs: int,
    output: str,
    steps: int = 100,
    seed: int = 0,
    batch_size: int = 1000,
    device: str = "cpu",
) -> Path:
    """Couple noise with samples of a trained flow: write ``{noise, samples}`` to a ``.pt`` file.

    Train the next (straighter) flow on the pairs with the ``Reflow`` formulation and the
    ``ReflowPairs`` data source (see configs/toy2d/reflow.yaml). Prints the straightness of the
    flow that generated them.

    Args:
        ckpt_path: checkpoint of a rectified flow written by ``diffusion-pl fit``.
        num_pairs: number of (noise, sample) pairs (> 0).
        output: path of the ``.pt`` file to write.
        steps: Euler steps of the flow ODE per pair.
        seed: seed of the noise.
        batch_size: pairs per network batch.
        device: torch device, e.g. ``cpu`` or ``cuda``.
    """
    check_positive(num_pairs=num_pairs, steps=steps, batch_size=batch_size)
    check_device(device)
    module = load_module(ckpt_path, map_location=device)
    if not isinstance(module, RectifiedFlow):
        raise ValueError(
            f"{ckpt_path} holds a {type(module).__name__}; reflow needs a RectifiedFlow checkpoint"
        )
    module.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    noise = module.path.prior_sample(
        (num_pairs, *module.data_shape), generator=generator, device=device
    )
    samples, straightness = [], []
    for chunk in tqdm(noise.split(batch_size), desc="reflow pairs", unit="batch"):
        x, s = flow_pairs(module.denoiser(), module.path, chunk, steps)
        samples.append(x.cpu())
        straightness.append(s * len(chunk))
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"noise": noise.cpu(), "samples": torch.cat(samples)}, out)
    print(f"wrote {out}: {num_pairs} pairs; straightness {sum(straightness) / num_pairs:.4f}")
    return out


def likelihood(
    ckpt_path: str,
    split: Literal["train", "val"] = "val",
    num_samples: int = 500,
    batch_size: int = 100,
    divergence: Literal["exact", "hutchinson"] = "hutchinson",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_eps: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    output: str | None = None,
) -> dict[str, float | int | str]:
    """PF-ODE negative log-likelihood of a data split under a checkpoint, in bits per dimension.

    Discrete data (images, digits) are uniformly dequantized and the result is a bound on the
    discrete NLL; continuous data (toys) report −log p / (D ln 2) of the density itself. The
    ODE runs from t_eps to the path's t_max, so the number is the likelihood of p_{t_eps}, the
    data blurred by σ(t_eps); the t_eps used is printed and returned.

    Args:
        ckpt_path: checkpoint written by ``diffusion-pl fit`` (its data config is reused).
        split: ``train`` or ``val``.
        num_samples: number of examples (the first ones of the split).
        batch_size: examples per ODE solve.
        divergence: ``exact`` trace (low dimension) or ``hutchinson`` estimate.
        rtol: RK45 relative tolerance.
        atol: RK45 absolute tolerance.
        t_eps: start time of the ODE; default: the formulation's paper's, 1e-5 for score-SDE
            (Song et al. 2021; their likelihood code's eps), else the path's t_min (0 on rectified
            flow's linear path; the others' papers report no PF-ODE likelihood).
        seed: seed of dequantization noise and Hutchinson probes.
        device: torch device, e.g. ``cpu`` or ``cuda``.
        output: optional JSON file for the result (bits/dim, t_eps, NFE, split, examples).
    """
    check_positive(num_samples=num_samples, batch_size=batch_size, rtol=rtol, atol=atol)
    check_device(device)
    module = load_module(ckpt_path, map_location=device).eval()
    if not isinstance(module, DiffusionModule):
        raise ValueError(f"{ckpt_path} holds a {type(module).__name__}, not a diffusion model")
    origin = "--t_eps"
    if t_eps is None:
        t_eps, origin = module.likelihood_t_eps, f"{type(module).__name__}'s paper"
    if t_eps is None:
        t_eps, origin = module.path.t_min, "the path's t_min"
    check_t_eps(module.path, t_eps)
    datamodule = load_datamodule(ckpt_path)
    data = datamodule.real_samples(split, num_samples).to(device)
    levels = datamodule.num_levels
    generator = torch.Generator(device=device).manual_seed(seed)
    bpd, nfe = [], 0
    for x in tqdm(data.split(batch_size), desc=f"likelihood ({split})", unit="batch"):
        if levels is not None:
            x = dequantize(x, levels, generator)
        logp, n = log_likelihood(
            module.denoiser(), module.path, x, divergence=divergence, rtol=rtol, atol=atol,
            t_eps=t_eps, generator=generator,
        )  # fmt: skip
        nfe += n
        if levels is None:
            bpd.append(-logp / (x[0].numel() * math.log(2)))
        else:
            bpd.append(bits_per_dim(logp, tuple(x.shape), levels))
    result = {"bpd": float(torch.cat(bpd).mean()), "nfe_per_batch": nfe / len(bpd),
              "t_eps": t_eps, "split": split, "num_samples": len(data)}  # fmt: skip
    print(f"{split}: {result['bpd']:.4f} bits/dim over {len(data)} examples "
          f"({result['nfe_per_batch']:.0f} network evaluations per batch; "
          f"t_eps={t_eps:g}, {origin})", flush=True)  # fmt: skip
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {output}", flush=True)
    return result


def fid(
    ckpt_path: str,
    num_samples: int = 50_000,
    feature: str = "inception",
    feature_weights: str | None = None,
    split: Literal["train", "val"] = "val",
    reference: str | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    grid: str | None = None,
    batch_size: int = 250,
    kid: bool = False,
    weights: Weights = "ema",
    cache_dir: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    output: str | None = None,
    guidance_scale: float | None = None,
    guide_ckpt: str | None = None,
) -> dict[str, float]:
    """FID (and KID) of a checkpoint's samples against a split of its training data.

    Run it under ``torchrun --nproc-per-node G`` to split the samples over G processes (NCCL
    on GPUs, one GPU each; gloo on CPU): the score does not depend on G.

    Args:
        ckpt_path: checkpoint written by ``diffusion-pl fit`` (its data config is reused).
        num_samples: generated images (50,000 for numbers comparable with papers).
        feature: ``inception`` (torch-fidelity's InceptionV3) or ``digits`` (offline).
        feature_weights: weights file of the extractor (default: its usual place).
        split: split of the reference statistics, ``train`` or ``val``.
        reference: ready ``mu``/``sigma``: ``.npz`` (pytorch-fid, EDM) or torch-fidelity ``.pt``.
        sampler: sampler name (as for ``diffusion-pl sample``: euler, heun, rk45, ddim, ...);
            default: the checkpoint's.
        steps: sampler steps (what they count depends on the sampler: see ``diffusion-pl
            sample --help``); default: the sampler's.
        grid: time grid (one of GRIDS); default: the sampler's.
        batch_size: images per sampling batch (per process).
        kid: also compute KID.
        weights: ``ema`` or ``raw`` weights of the checkpoint.
        cache_dir: reference statistics cache; default ``~/.cache/diffusion-pl/fid``.
        seed: seed of the sampling generators.
        device: ``cpu`` or ``cuda`` (under torchrun each process takes ``cuda:LOCAL_RANK``).
        output: optional JSON file for the scores.
        guidance_scale: classifier-free guidance scale w of a class-conditional model (default:
            the checkpoint's); with ``--guide_ckpt``, autoguidance's w (required).
        guide_ckpt: checkpoint of a weaker model of the same data, path and conditioning, for
            autoguidance (as for ``diffusion-pl sample``).
    """
    check_sampler_options(sampler, steps)
    check_guide_scale(guide_ckpt, guidance_scale)
    check_positive(batch_size=batch_size)
    check_device(device)
    check_feature(feature, feature_weights)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        if device.startswith("cuda"):
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank_zero = not distributed or dist.get_rank() == 0
    module = load_module(ckpt_path, map_location=device, weights=weights).eval()
    require_images(module.data_shape, ckpt_path)
    if guide_ckpt is None and guidance_scale is not None and module.num_classes is None:
        raise UsageError(
            f"--guidance_scale without --guide_ckpt is classifier-free guidance, which needs a "
            f"class-conditional model; {ckpt_path} is unconditional: add --guide_ckpt for "
            "autoguidance"
        )
    guide = None
    if guide_ckpt is not None:
        guide = load_guide(guide_ckpt, module, model_name=f"the model {ckpt_path}",
                           map_location=device, weights=weights)  # fmt: skip
    chosen = pick_sampler(module.sampler, sampler, steps, grid)
    extractor = resolve_extractor(feature, feature_weights)
    evaluator = FIDEvaluator(
        extractor, split, num_samples, batch_size, kid=kid, cache_dir=cache_dir,
        reference=reference, seed=seed, progress=rank_zero,
    )  # fmt: skip
    scores = evaluator.evaluate(module, load_datamodule(ckpt_path), chosen, guide=guide,
                                guidance_scale=guidance_scale)  # fmt: skip
    if distributed:
        dist.destroy_process_group()
    if rank_zero:
        guided = "" if guide is None else f", guided by {guide_ckpt} at w={guidance_scale:g}"
        print(f"{split} ({num_samples} samples, {chosen}{guided}, {feature} features): "
              + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()), flush=True)  # fmt: skip
        if output is not None:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            Path(output).write_text(json.dumps(scores, indent=2) + "\n")
    return scores


def phema(
    run: str,
    sigma_rel: list[float],
    output: str,
    at_step: int | None = None,
    run_id: str | None = None,
    ckpt_path: str | None = None,
    sweep: bool = False,
    feature: str = "inception",
    feature_weights: str | None = None,
    num_samples: int = 50_000,
    split: Literal["train", "val"] = "val",
    sampler: str | None = None,
    steps: int | None = None,
    batch_size: int = 250,
    cache_dir: str | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> list[Path]:
    """Rebuild the EMA of any width σ_rel from a run's post-hoc EMA snapshots (EDM2, Sec. 3).

    The run must have trained with ``diffusion_pl.callbacks.PostHocEMA``. Each σ_rel becomes
    ``OUTPUT/phema-sigma_rel<σ_rel>-step<N>.ckpt``, which ``sample``, ``fid`` and ``likelihood``
    take as they take a checkpoint of ``fit``: a least-squares combination of the snapshots up
    to step N (:mod:`diffusion_pl.phema`), with the model and data config of the run's latest
    checkpoint. With ``--sweep true`` each is also scored by FID (as ``diffusion-pl fid``, one
    process) into ``OUTPUT/fid_vs_sigma_rel.json`` and ``.png``.

    Args:
        run: the run's folder (its ``trainer.default_root_dir`` or a log dir under it); every
            ``phema/`` folder below it is read, so a resumed run's version folders count too.
        sigma_rel: widths to rebuild, each in (0, 0.3003): ``0.05 0.08 0.12`` or
            ``[0.05,0.08,0.12]``.
        output: folder for the checkpoints (and the sweep's results).
        at_step: rebuild the averages as of this step (a snapshot's); default: the last one.
        run_id: which run, where ``--run`` holds snapshots of several (the error lists them).
        ckpt_path: checkpoint whose model and data config (and buffers) the outputs take;
            default: the run's checkpoint of the latest step.
        sweep: score every σ_rel by FID and write FID against σ_rel.
        feature: FID features (``--sweep``): ``inception`` or ``digits`` (offline).
        feature_weights: weights file of the extractor (default: its usual place).
        num_samples: generated images per σ_rel (``--sweep``).
        split: split of the reference statistics, ``train`` or ``val``.
        sampler: sampler name for the sweep (as for ``diffusion-pl fid``); default: the run's.
        steps: sampler steps for the sweep; default: the sampler's.
        batch_size: images per sampling batch.
        cache_dir: reference statistics cache; default ``~/.cache/diffusion-pl/fid``.
        seed: seed of the sampling generators (the same samples' noise for every σ_rel).
        device: torch device of the sweep, e.g. ``cpu`` or ``cuda``.
    """
    if not sigma_rel or len({f"{s:g}" for s in sigma_rel}) != len(sigma_rel):
        raise UsageError(
            f"--sigma_rel must list distinct widths, e.g. [0.05,0.08], got {sigma_rel}"
        )
    for value in sigma_rel:
        check_sigma_rel(value, "--sigma_rel")
    if at_step is not None:
        check_positive(at_step=at_step)
    if sweep:
        check_sampler_options(sampler, steps)
        check_positive(num_samples=num_samples, batch_size=batch_size)
        check_device(device)
        check_feature(feature, feature_weights)
    snapshots = select_run(find_snapshots(run), run, run_id)
    taken = [s.step for s in snapshots]
    step = taken[-1] if at_step is None else at_step
    if step not in taken:
        shown = ", ".join(map(str, taken[:20])) + (", ..." if len(taken) > 20 else "")
        raise ValueError(f"--at_step {at_step}: the run has no snapshot at that step; its "
                         f"snapshots are at steps {shown}: pass one of them")  # fmt: skip
    template_path = Path(ckpt_path) if ckpt_path else find_template(run, snapshots[0].run_id)
    template = read_checkpoint(template_path)
    if sweep:
        require_images(template.get("hyper_parameters", {}).get("data_shape", ()), template_path)
    averages, errors = reconstruct(snapshots, sigma_rel, step)
    used = [s for s in snapshots if s.step <= step]
    tracked = ", ".join(f"{s:g}" for s in used[-1].sigma_rels)
    paths = []
    for value, params, error in zip(sigma_rel, averages, errors, strict=True):
        path = Path(output) / f"phema-sigma_rel{value:g}-step{step}.ckpt"
        info = {"sigma_rel": value, "step": step, "run_id": used[-1].run_id,
                "snapshots": len(used), "profile_error": error}  # fmt: skip
        AtomicCheckpointIO().save_checkpoint(averaged_checkpoint(template, params, info), path)
        paths.append(path)
        print(f"sigma_rel {value:g} at step {step}: wrote {path} (from {len(used)} snapshots of "
              f"sigma_rel {tracked}; profile error {error:.2%})", flush=True)  # fmt: skip
    if sweep:
        fid_sweep(paths, sigma_rel, Path(output), feature, feature_weights, num_samples, split,
                  sampler, steps, batch_size, cache_dir, seed, device)  # fmt: skip
    return paths


def fid_sweep(
    paths: list[Path],
    sigma_rel: list[float],
    output: Path,
    feature: str,
    feature_weights: str | None,
    num_samples: int,
    split: Literal["train", "val"],
    sampler: str | None,
    steps: int | None,
    batch_size: int,
    cache_dir: str | None,
    seed: int,
    device: str,
) -> dict[str, object]:
    """FID of each rebuilt checkpoint (``phema --sweep``): ``fid_vs_sigma_rel.json`` and ``.png``.

    One evaluator scores them all against the same reference with the same noise (seed), so
    the scores differ only by the averaged weights.
    """
    evaluator = FIDEvaluator(resolve_extractor(feature, feature_weights), split, num_samples,
                             batch_size, cache_dir=cache_dir, seed=seed)  # fmt: skip
    datamodule = load_datamodule(paths[0])
    rows = []
    for value, path in sorted(zip(sigma_rel, paths, strict=True)):
        module = load_module(path, map_location=device).eval()
        chosen = pick_sampler(module.sampler, sampler, steps, None)
        score = evaluator.evaluate(module, datamodule, chosen)["fid"]
        rows.append({"sigma_rel": value, "fid": score, "checkpoint": str(path)})
        print(f"sigma_rel {value:g}: FID {score:.4f} ({num_samples} samples, {chosen}, {feature} "
              "features)", flush=True)  # fmt: skip
    best = min(rows, key=lambda r: r["fid"])
    result = {"step": read_checkpoint(paths[0], mmap=True)["global_step"], "feature": feature,
              "split": split, "num_samples": num_samples, "sampler": str(chosen),
              "results": rows, "best": best}  # fmt: skip
    (output / "fid_vs_sigma_rel.json").write_text(json.dumps(result, indent=2) + "\n")
    picture = save_curve([r["sigma_rel"] for r in rows], [r["fid"] for r in rows],
                         output / "fid_vs_sigma_rel.png", "sigma_rel", f"FID ({feature})",
                         f"post-hoc EMA at step {result['step']}")  # fmt: skip
    print(f"best sigma_rel {best['sigma_rel']:g} (FID {best['fid']:.4f}); wrote "
          f"{output / 'fid_vs_sigma_rel.json'} and {picture}", flush=True)  # fmt: skip
    return result


def encode(
    data_config: str,
    autoencoder: str,
    output: str,
    subfolder: str | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    sample_posterior: bool = False,
    seed: int = 0,
) -> Path:
    """Encode a config's image data once with a pretrained autoencoder, to train in its latents.

    Reads the data source of the ``data`` section of ``--config`` (``--data_config``, the same
    option: jsonargparse keeps ``--config`` for a command's own options, so ``encode`` renames
    it), encodes its train and val splits with
    a ``diffusers`` AutoencoderKL (``pip install 'diffusion-pl[latent]'``) and writes them to
    OUTPUT, which ``data.source: diffusion_pl.data.Latents`` (``path: OUTPUT``) then serves to
    ``fit``; sample grids, ``sample`` and FID decode through the same autoencoder.

    Args:
        data_config: given as ``--config``: a YAML config whose ``data.source`` gives the
            images (e.g. a fit config).
        autoencoder: hub name (``stabilityai/sd-vae-ft-mse``) or local folder of an AutoencoderKL.
        output: the folder to write.
        subfolder: the autoencoder's folder inside a pipeline repository (e.g. ``vae``).
        batch_size: images per encoder call.
        device: torch device, e.g. ``cpu`` or ``cuda``.
        sample_posterior: store a draw from the encoder's posterior instead of its mean.
        seed: seed of those draws.
    """
    check_positive(batch_size=batch_size)
    check_device(device)
    path = Path(data_config)
    if not path.is_file():
        raise UsageError(f"--config {data_config}: no such file")
    source = ((yaml.safe_load(path.read_text()) or {}).get("data") or {}).get("source")
    if not isinstance(source, dict) or "class_path" not in source:
        raise UsageError(
            f"--config {data_config} has no data.source with a class_path: give a config whose "
            "data section names the images, e.g. configs/digits/rectified_flow_32.yaml"
        )
    folder = encode_dataset(
        source, autoencoder, output, subfolder=subfolder, batch_size=batch_size, device=device,
        sample_posterior=sample_posterior, seed=seed,
    )  # fmt: skip
    metadata = json.loads((folder / "latents.json").read_text())
    print(f"wrote {folder}: {metadata['examples']} codes of shape "
          f"{tuple(metadata['latent_shape'])} (images {tuple(metadata['image_shape'])}, "
          f"scaling factor {metadata['scaling_factor']:g}); train on them with data.source "
          f"diffusion_pl.data.Latents, path: {folder}", flush=True)  # fmt: skip
    return folder


COMMANDS = {
    "sample": sample,
    "reflow": reflow,
    "likelihood": likelihood,
    "fid": fid,
    "phema": phema,
    "encode": encode,
}
"""Commands beside LightningCLI's fit/validate/test, each a typed function."""


def main(args: list[str] | None = None) -> None:
    """Entry point of ``diffusion-pl`` and ``python -m diffusion_pl``.

    Bad input (:func:`~diffusion_pl.errors.bad_input`) ends the command with one ``error:``
    line on stderr, after the command's usage for a bad option of ``sample``, ``reflow``,
    ``likelihood``, ``fid`` or ``phema`` (:class:`~diffusion_pl.errors.UsageError`), and exit
    code 2; ``DIFFUSION_PL_TRACEBACK=1`` raises it with its traceback instead. Other exceptions
    keep their tracebacks.
    """
    argv = sys.argv[1:] if args is None else list(args)
    try:
        _run(argv, args)
    except Exception as raised:
        error = bad_input(raised)
        if error is None or show_tracebacks():
            raise
        if isinstance(error, UsageError) and argv[0] in COMMANDS:
            auto_parser(COMMANDS[argv[0]], **_command_options(argv[0])).error(str(error))
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _encode_option(arg: str) -> str:
    """``encode``'s ``--config X`` (or ``--config=X``) as ``--data_config``; others unchanged."""
    if arg == "--config" or arg.startswith("--config="):
        return "--data_config" + arg.removeprefix("--config")
    return arg


def _command_options(name: str) -> dict[str, object]:
    """jsonargparse options of the command ``name`` of :data:`COMMANDS`."""
    return {"prog": f"diffusion-pl {name}", "as_positional": False}


_SPACED_LISTS = {"phema": ("--sigma_rel",)}
"""List options that may also be given as space-separated values (``--sigma_rel 0.05 0.1``)."""


def _gather_list(args: list[str], option: str) -> list[str]:
    """``OPTION a b c`` as ``OPTION [a,b,c]``, the one list value jsonargparse parses.

    A value already in brackets (``[0.05,0.1]``) is left as it is.
    """
    if option not in args:
        return args
    start = end = args.index(option) + 1
    while end < len(args) and not args[end].startswith("--"):
        end += 1
    values = args[start:end]
    if not values or values[0].lstrip().startswith("["):
        return args
    return [*args[:start], f"[{','.join(values)}]", *args[end:]]


def _run(argv: list[str], args: list[str] | None) -> None:
    """Run the command of ``argv``: one of :data:`COMMANDS`, or LightningCLI's."""
    if argv[:1] and argv[0] in COMMANDS:
        rest = argv[1:]
        for option in _SPACED_LISTS.get(argv[0], ()):
            rest = _gather_list(rest, option)
        if argv[0] == "encode":  # its --config is the fit config to encode, not its own options
            rest = [_encode_option(a) for a in rest]
        CLI(COMMANDS[argv[0]], args=rest, **_command_options(argv[0]))
        return
    if argv[:1] and not argv[0].startswith("-") and argv[0] not in DiffusionCLI.subcommands():
        _unknown_command(argv[0])
    DiffusionCLI(
        LightningModule,  # a formulation, or the NoisyClassifier of classifier guidance
        DiffusionDataModule,
        subclass_mode_model=True,
        parser_class=_Parser,
        args=args,  # None: LightningCLI reads sys.argv itself
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "description": f"Train diffusion models. Also: {', '.join(COMMANDS)}. Bad input "
            "ends with one error line (exit code 2); DIFFUSION_PL_TRACEBACK=1 shows its traceback."
        },
        # Persistent callbacks, added to every run's own: survive preemption and divergence,
        # report progress in kimg.
        trainer_defaults={
            "callbacks": [
                SigtermCheckpoint(),
                StepSeed(),
                StopOnNonFinite(),
                FinalCheckpoint(),
                Throughput(),
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
