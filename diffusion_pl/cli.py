"""The ``diffusion-pl`` command: Lightning's fit/validate/test, and sample, reflow, likelihood, fid.

diffusion-pl fit --config configs/toy2d/rectified_flow.yaml [--trainer.max_steps 200 ...]
diffusion-pl sample --ckpt_path RUN.ckpt --num_samples N --seed S --output FILE.npz
diffusion-pl fid --ckpt_path RUN.ckpt --feature digits --num_samples 2000  (torchrun: any ranks)
diffusion-pl encode --config CFG --autoencoder stabilityai/sd-vae-ft-mse --output DIR  (latents)

Bad input ends the command with one ``error:`` line and exit code 2 (:mod:`diffusion_pl.errors`;
``DIFFUSION_PL_TRACEBACK=1`` shows the traceback).
"""

from __future__ import annotations

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
    TrainingDiverged,
    Weights,
)
from diffusion_pl.checkpoints import AtomicCheckpointIO, load_datamodule, load_module
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
from diffusion_pl.reflow import flow_pairs
from diffusion_pl.runs import (
    EXIT_PREEMPTED,
    check_fit,
    prepare_checkpoint,
    print_outputs,
    resume_hint,
)
from diffusion_pl.samplers import SAMPLERS, Sampler
from diffusion_pl.visualize import save_samples_figure

__all__ = [
    "COMMANDS",
    "DiffusionCLI",
    "check_labels",
    "encode",
    "fid",
    "likelihood",
    "main",
    "output_paths",
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
            > 1 sharper); default: the checkpoint's ``guidance_scale``.
        classifier_ckpt: checkpoint of a ``NoisyClassifier`` trained on the model's path, for
            classifier guidance.
        classifier_scale: λ, the scale of the classifier's gradient (default 1).
    """
    check_positive(num_samples=num_samples, batch_size=batch_size)
    check_sampler_options(sampler, steps)
    if class_labels is not None and not class_labels:
        raise UsageError("--class_labels is empty; give at least one class, e.g. [0]")
    if classifier_scale is not None and classifier_ckpt is None:
        raise UsageError("--classifier_scale scales a classifier's gradient: add --classifier_ckpt")
    check_device(device)
    module = load_module(ckpt_path, map_location=device, weights=weights)
    if not isinstance(module, DiffusionModule):
        raise ValueError(f"{ckpt_path} holds a {type(module).__name__}, not a diffusion model")
    classifier = None
    if classifier_ckpt is not None:
        classifier = load_module(classifier_ckpt, map_location=device).eval()
        if not isinstance(classifier, NoisyClassifier):
            raise ValueError(
                f"--classifier_ckpt {classifier_ckpt} holds a {type(classifier).__name__}; "
                "it needs a NoisyClassifier checkpoint (configs/digits/classifier.yaml)"
            )
    chosen = pick_sampler(module.sampler, sampler, steps, grid)
    with counting_calls(module.net) as calls:
        samples = generate(
            module, num_samples, seed=seed, batch_size=batch_size, sampler=chosen,
            class_labels=class_labels, guidance_scale=guidance_scale, classifier=classifier,
            classifier_scale=1.0 if classifier_scale is None else classifier_scale, progress=True,
        )  # fmt: skip
    nfe = calls[0] / math.ceil(num_samples / batch_size)  # one module.sample call per batch
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
    print(f"{chosen}: {nfe:g} network evaluations per sample", flush=True)
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
    """
    check_sampler_options(sampler, steps)
    check_positive(batch_size=batch_size)
    check_device(device)
    if feature == "inception":
        weights_file = Path(feature_weights) if feature_weights else default_inception_weights()
        if not weights_file.is_file():
            raise inception_weights_missing(weights_file, "pass --feature_weights PATH")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        if device.startswith("cuda"):
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank_zero = not distributed or dist.get_rank() == 0
    module = load_module(ckpt_path, map_location=device, weights=weights).eval()
    require_images(module.data_shape, ckpt_path)
    chosen = pick_sampler(module.sampler, sampler, steps, grid)
    extractor = resolve_extractor(feature, feature_weights)
    evaluator = FIDEvaluator(
        extractor, split, num_samples, batch_size, kid=kid, cache_dir=cache_dir,
        reference=reference, seed=seed, progress=rank_zero,
    )  # fmt: skip
    scores = evaluator.evaluate(module, load_datamodule(ckpt_path), chosen)
    if distributed:
        dist.destroy_process_group()
    if rank_zero:
        print(f"{split} ({num_samples} samples, {chosen}, {feature} features): "
              + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()), flush=True)  # fmt: skip
        if output is not None:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            Path(output).write_text(json.dumps(scores, indent=2) + "\n")
    return scores


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
    "encode": encode,
}
"""Commands beside LightningCLI's fit/validate/test, each a typed function."""


def main(args: list[str] | None = None) -> None:
    """Entry point of ``diffusion-pl`` and ``python -m diffusion_pl``.

    Bad input (:func:`~diffusion_pl.errors.bad_input`) ends the command with one ``error:``
    line on stderr, after the command's usage for a bad option of ``sample``, ``reflow``,
    ``likelihood`` or ``fid`` (:class:`~diffusion_pl.errors.UsageError`), and exit code 2;
    ``DIFFUSION_PL_TRACEBACK=1`` raises it with its traceback instead. Other exceptions keep
    their tracebacks.
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


def _run(argv: list[str], args: list[str] | None) -> None:
    """Run the command of ``argv``: one of :data:`COMMANDS`, or LightningCLI's."""
    if argv[:1] and argv[0] in COMMANDS:
        args = argv[1:]
        if argv[0] == "encode":  # its --config is the fit config to encode, not its own options
            args = [_encode_option(a) for a in args]
        CLI(COMMANDS[argv[0]], args=args, **_command_options(argv[0]))
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
        # Persistent callbacks, added to every run's own: survive preemption and divergence.
        trainer_defaults={
            "callbacks": [
                SigtermCheckpoint(),
                StepSeed(),
                StopOnNonFinite(),
                FinalCheckpoint(),
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
