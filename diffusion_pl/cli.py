"""The ``diffusion-pl`` command: LightningCLI's fit/validate/test plus ``sample``.

diffusion-pl fit --config configs/toy2d/rectified_flow.yaml [--trainer.max_steps 200 ...]
diffusion-pl sample --ckpt_path RUN.ckpt --num_samples N --seed S --output FILE.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from jsonargparse import CLI
from jsonargparse.typing import import_object
from lightning.pytorch.cli import LightningCLI, instantiate_module
from tqdm.auto import tqdm

from diffusion_pl.callbacks import SampleGrid, run_dir
from diffusion_pl.data import DiffusionDataModule
from diffusion_pl.formulations import DiffusionModule
from diffusion_pl.samplers import SAMPLERS, Sampler
from diffusion_pl.visualize import save_samples_figure

__all__ = ["DiffusionCLI", "load_module", "main", "sample"]


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


def load_module(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> DiffusionModule:
    """Restore any formulation from a checkpoint written by ``diffusion-pl fit``.

    The checkpoint's hparams hold the YAML config of the model (``_class_path`` and its init
    args), which rebuilds net, path and sampler; then the weights are loaded.
    """
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint {str(ckpt_path)!r} does not exist")
    checkpoint = torch.load(ckpt_path, map_location=map_location, weights_only=True)
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    class_path = hparams.pop("_class_path", None)
    hparams.pop("_instantiator", None)
    if class_path is None:
        raise ValueError(
            f"{ckpt_path} has no model class_path in its hyper_parameters: "
            "use a checkpoint written by `diffusion-pl fit`"
        )
    cls = import_object(class_path)
    module = instantiate_module(cls, hparams)
    module.load_state_dict(checkpoint["state_dict"])
    return module.to(map_location)


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


def _configure_sampler(default: Sampler, name: str | None, steps: int | None) -> Sampler:
    """The sampler to use: ``name`` (or the default's class), with ``steps`` if given."""
    cls = type(default) if name is None else SAMPLERS[name]
    kwargs = vars(default) if cls is type(default) else {}
    if steps is not None:
        kwargs = {**kwargs, "steps": steps}
    return cls(**kwargs)


def main(args: list[str] | None = None) -> None:
    """Entry point of ``diffusion-pl`` and ``python -m diffusion_pl``."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["sample"]:
        CLI(sample, args=argv[1:], prog="diffusion-pl sample", as_positional=False)
        return
    DiffusionCLI(
        DiffusionModule,
        DiffusionDataModule,
        subclass_mode_model=True,
        args=argv,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": "Train diffusion models. Also: diffusion-pl sample --help"},
    )
