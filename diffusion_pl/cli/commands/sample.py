"""``diffusion-pl sample``: draw samples from a checkpoint into an ``.npz`` and a picture."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch

from diffusion_pl.callbacks import Weights
from diffusion_pl.checkpoints import load_datamodule, load_module
from diffusion_pl.cli.loading import SamplingOptions, load_for_sampling
from diffusion_pl.cli.options import check_positive, lists_samplers
from diffusion_pl.cli.outputs import check_writable, save_results
from diffusion_pl.errors import UsageError
from diffusion_pl.formulations import NoisyClassifier
from diffusion_pl.generate import counting_calls, cycle_labels, generate
from diffusion_pl.visualize import save_samples_figure

__all__ = ["output_paths", "sample"]


@lists_samplers
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
    lora: list[str] | None = None,
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
            trailing .npz or .png of OUTPUT is dropped first); both paths are printed. Checked
            before sampling; a file that cannot be written after it is kept elsewhere (named).
        seed: seed of the sampling generator.
        sampler: sampler name, one of SAMPLER_NAMES; default: the checkpoint's formulation's.
        steps: the sampler's steps (default: the sampler's own): time steps of the grid for
            every sampler but two, one network evaluation each (two for heun and edm_sde, a
            predictor and a corrector for pc); for annealed_langevin the number of noise
            levels, each of 100 Langevin steps (its steps_per_level); rk45 picks its own steps
            and ignores it with a note. The network evaluations per sample are printed.
        grid: time grid (one of GRIDS: uniform, edm, logsnr; leading, trailing, linspace on
            a discrete DDPM path), or file:PATH, the times of a JSON file (``tune-grid``
            writes one), which set the steps; default: the sampler's (its paper's).
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
        lora: LoRA adapters added to the model, ``PATH[:SCALE]``, the option repeated for
            several (``--lora style.pt --lora lcm.pt:0.8``): each adapters file (a fit with
            ``lora:`` writes ``adapters.pt``) acts with its weight λ (default 1), together:
            W + Σ λ_i ΔW_i (LCM-LoRA's combination). Each must have been trained on this
            checkpoint's weights (checked by their hash). ``diffusion-pl lora merge`` writes
            the sum into a checkpoint.
    """
    check_positive(num_samples=num_samples, batch_size=batch_size)
    options = SamplingOptions(
        sampler, steps, grid, weights, guide_ckpt, guidance_scale, tuple(lora or ())
    )
    if class_labels is not None and not class_labels:
        raise UsageError("--class_labels is empty; give at least one class, e.g. [0]")
    if classifier_scale is not None and classifier_ckpt is None:
        raise UsageError("--classifier_scale scales a classifier's gradient: add --classifier_ckpt")
    options.check(device)
    out, picture = output_paths(output)
    check_writable("output", out)
    loaded = load_for_sampling(ckpt_path, options, device)
    module, guide, chosen = loaded.module, loaded.guide, loaded.sampler
    classifier = None
    if classifier_ckpt is not None:
        classifier = load_module(classifier_ckpt, map_location=device).eval()
        if not isinstance(classifier, NoisyClassifier):
            raise ValueError(
                f"--classifier_ckpt {classifier_ckpt} holds a {type(classifier).__name__}; "
                "it needs a NoisyClassifier checkpoint (configs/digits/classifier.yaml)"
            )
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
    print(f"{chosen}: {nfe:g} network evaluations per sample{guide_nfe}", flush=True)
    shown = len(samples) if samples.ndim == 2 else min(len(samples), GRID_IMAGES)  # points: all
    save_results("output", {
        out: lambda f: np.savez(f, samples=samples.numpy(), **extra),
        picture: lambda f: save_samples_figure(samples[:shown], f, title=str(chosen)),
    })  # fmt: skip
    drawn = "" if shown == len(samples) else f" (the first {shown} of {len(samples)})"
    print(f"wrote {out} (samples: {tuple(samples.shape)}) and {picture}{drawn}", flush=True)
    return out


GRID_IMAGES = 256
"""Images in ``sample``'s picture (a 16 × 16 grid); a scatter plot of points shows them all."""


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
