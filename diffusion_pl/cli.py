"""The ``diffusion-pl`` command: LightningCLI's fit/validate/test plus ``sample``.

diffusion-pl fit --config configs/toy2d/rectified_flow.yaml [--trainer.max_steps 200 ...]
diffusion-pl sample --ckpt_path RUN.ckpt --num_samples N --seed S --output FILE.npz
"""

from __future__ import annotations

import inspect
import math
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jsonargparse import CLI
from jsonargparse.typing import import_object
from lightning.pytorch.cli import LightningCLI, instantiate_module
from tqdm.auto import tqdm

from diffusion_pl.callbacks import SampleGrid, run_dir
from diffusion_pl.data import DiffusionDataModule
from diffusion_pl.formulations import DiffusionModule, RectifiedFlow
from diffusion_pl.likelihood import bits_per_dim, dequantize, log_likelihood
from diffusion_pl.reflow import flow_pairs
from diffusion_pl.samplers import SAMPLERS, Sampler
from diffusion_pl.visualize import save_samples_figure

__all__ = [
    "COMMANDS",
    "DiffusionCLI",
    "likelihood",
    "load_datamodule",
    "load_module",
    "main",
    "read_checkpoint",
    "reflow",
    "sample",
]


class DiffusionCLI(LightningCLI):
    """LightningCLI over every formulation (``model.class_path``) and the one DataModule."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments(
            "data.data_shape", "model.init_args.data_shape", apply_on="instantiate"
        )

    def after_fit(self) -> None:
        """Say where the run's outputs are."""
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        lines = [f"logs:        {run_dir(trainer)}"]
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and (ckpt.last_model_path or ckpt.best_model_path):
            lines.append(f"checkpoint:  {ckpt.last_model_path or ckpt.best_model_path}")
        for callback in trainer.callbacks:
            if isinstance(callback, SampleGrid) and callback.last_path is not None:
                lines.append(f"samples:     {callback.last_path}")
        print("\n".join(["", "diffusion-pl outputs", *lines]), flush=True)


def read_checkpoint(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file (tensors and plain values only), failing with a clear message."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint {str(ckpt_path)!r} does not exist")
    return torch.load(ckpt_path, map_location=map_location, weights_only=True)


def load_module(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> DiffusionModule:
    """Restore any formulation from a checkpoint written by ``diffusion-pl fit``.

    The checkpoint's hparams hold the YAML config of the model (``_class_path`` and its init
    args), which rebuilds net, path and sampler; then the weights are loaded.
    """
    checkpoint = read_checkpoint(ckpt_path, map_location)
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    class_path = hparams.pop("_class_path", None)
    hparams.pop("_instantiator", None)
    if class_path is None:
        raise ValueError(
            f"{ckpt_path} has no model class_path in its hyper_parameters: "
            "use a checkpoint written by `diffusion-pl fit`"
        )
    module = instantiate_module(import_object(class_path), hparams)
    module.load_state_dict(checkpoint["state_dict"])
    return module.to(map_location)


def load_datamodule(ckpt_path: str | Path) -> DiffusionDataModule:
    """Rebuild the data module a checkpoint was trained on (from its saved YAML config)."""
    hparams = dict(read_checkpoint(ckpt_path).get("datamodule_hyper_parameters", {}))
    hparams.pop("_instantiator", None)
    if "source" not in hparams:
        raise ValueError(f"{ckpt_path} does not record its data; it was not written by `fit`")
    return instantiate_module(DiffusionDataModule, hparams)


def sample(
    ckpt_path: str,
    num_samples: int,
    output: str,
    seed: int = 0,
    sampler: str | None = None,
    steps: int | None = None,
    batch_size: int = 256,
    device: str = "cpu",
) -> Path:
    """Draw samples from a checkpoint into an ``.npz`` (key ``samples``), plus a PNG beside it.

    Samples are in data space: images in [−1, 1], channels first; 2-D toys as coordinates.
    The same seed (and batch size) gives identical samples.

    Args:
        ckpt_path: checkpoint written by ``diffusion-pl fit``.
        num_samples: number of samples N (> 0); the array has shape (N, ...).
        output: path of the ``.npz`` file to write.
        seed: seed of the sampling generator.
        sampler: sampler name (one of SAMPLERS); default: the checkpoint's formulation's.
        steps: number of sampler steps; default: the sampler's.
        batch_size: samples per network batch.
        device: torch device to sample on, e.g. ``cpu`` or ``cuda``.
    """
    if num_samples <= 0:
        raise ValueError(f"--num_samples must be > 0, got {num_samples}")
    if batch_size <= 0:
        raise ValueError(f"--batch_size must be > 0, got {batch_size}")
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"unknown --sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    module = load_module(ckpt_path, map_location=device)
    chosen = _configure_sampler(module.sampler, sampler, steps)
    generator = torch.Generator(device=device).manual_seed(seed)
    batches = []
    with tqdm(total=num_samples, desc=f"sampling ({chosen})", unit="sample") as bar:
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            batches.append(module.sample(n, sampler=chosen, generator=generator).cpu())
            bar.update(n)
    samples = torch.cat(batches)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, samples=samples.numpy())
    picture = save_samples_figure(samples[:256], out.with_suffix(".png"), title=str(chosen))
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
    if num_pairs <= 0:
        raise ValueError(f"--num_pairs must be > 0, got {num_pairs}")
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
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, float]:
    """PF-ODE negative log-likelihood of a data split under a checkpoint, in bits per dimension.

    Discrete data (images, digits) are uniformly dequantized and the result is a bound on the
    discrete NLL; continuous data (toys) report −log p / (D ln 2) of the density itself.

    Args:
        ckpt_path: checkpoint written by ``diffusion-pl fit`` (its data config is reused).
        split: ``train`` or ``val``.
        num_samples: number of examples (the first ones of the split).
        batch_size: examples per ODE solve.
        divergence: ``exact`` trace (low dimension) or ``hutchinson`` estimate.
        rtol: RK45 relative tolerance.
        atol: RK45 absolute tolerance.
        seed: seed of dequantization noise and Hutchinson probes.
        device: torch device, e.g. ``cpu`` or ``cuda``.
    """
    module = load_module(ckpt_path, map_location=device).eval()
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
            generator=generator,
        )  # fmt: skip
        nfe += n
        if levels is None:
            bpd.append(-logp / (x[0].numel() * math.log(2)))
        else:
            bpd.append(bits_per_dim(logp, tuple(x.shape), levels))
    result = {"bpd": float(torch.cat(bpd).mean()), "nfe_per_batch": nfe / len(bpd)}
    print(f"{split}: {result['bpd']:.4f} bits/dim over {len(data)} examples "
          f"({result['nfe_per_batch']:.0f} network evaluations per batch)")  # fmt: skip
    return result


def _configure_sampler(default: Sampler, name: str | None, steps: int | None) -> Sampler:
    """The sampler to use: ``name`` (or the default's class), with ``steps`` if given."""
    cls = type(default) if name is None else SAMPLERS[name]
    kwargs = vars(default) if cls is type(default) else {}
    if steps is not None:
        if "steps" not in inspect.signature(cls).parameters:
            raise ValueError(f"{cls.__name__} chooses its own steps; drop --steps")
        kwargs = {**kwargs, "steps": steps}
    return cls(**kwargs)


COMMANDS = {"sample": sample, "reflow": reflow, "likelihood": likelihood}
"""Commands beside LightningCLI's fit/validate/test, each a typed function."""


def main(args: list[str] | None = None) -> None:
    """Entry point of ``diffusion-pl`` and ``python -m diffusion_pl``."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] and argv[0] in COMMANDS:
        command = COMMANDS[argv[0]]
        CLI(command, args=argv[1:], prog=f"diffusion-pl {argv[0]}", as_positional=False)
        return
    DiffusionCLI(
        DiffusionModule,
        DiffusionDataModule,
        subclass_mode_model=True,
        args=args,  # None: LightningCLI reads sys.argv itself
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": f"Train diffusion models. Also: {', '.join(COMMANDS)}."},
    )
