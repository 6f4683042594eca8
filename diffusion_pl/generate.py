"""Drawing many samples from a model: seeded per sample, so N, batch size and ranks don't matter.

``diffusion-pl sample``, the ``fid`` command, the FID callback and sample grids all draw through
:func:`generate`. Sample k gets its own generator seeded from (seed, k)
(:func:`~diffusion_pl.randomness.sample_generators`), so N = 200 extends N = 100, and neither
the batch size nor the share of the indices a process draws changes a sample.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffusion_pl.randomness import sample_generators
from diffusion_pl.samplers import SAMPLERS, CustomGrid, Sampler, parse_grid

if TYPE_CHECKING:
    from diffusion_pl.formulations import DiffusionModule, NoisyClassifier

__all__ = ["choose_sampler", "counting_calls", "cycle_labels", "every_class", "generate"]


def cycle_labels(class_labels: Sequence[int], start: int, n: int) -> Tensor:
    """Labels of samples ``start … start + n − 1``: sample k gets ``class_labels[k mod len]``.

    Args:
        class_labels: the classes to cycle over, e.g. ``[3]`` or ``range(10)``.
        start: index of the first sample.
        n: number of samples.

    Returns:
        ``[n]`` int64 labels.
    """
    if len(class_labels) == 0:
        raise ValueError("class_labels is empty; give at least one class, e.g. [0]")
    labels = torch.as_tensor(list(class_labels), dtype=torch.int64)
    return labels[torch.arange(start, start + n) % len(labels)]


def every_class(module: DiffusionModule) -> list[int] | None:
    """``[0, …, K − 1]`` for a class-conditional model, None for an unconditional one.

    Sample grids and FID pass it to :func:`generate` so every class is drawn equally often.
    """
    return None if module.num_classes is None else list(range(module.num_classes))


def choose_sampler(
    default: Sampler, name: str | None = None, steps: int | None = None, grid: str | None = None
) -> Sampler:
    """The sampler a command uses: ``default``, or the sampler called ``name``; with ``steps``
    and the time grid called ``grid``.

    A ``name`` of the default's own class keeps the default's settings; another name gets that
    sampler's defaults (:data:`~diffusion_pl.samplers.SAMPLERS`). A grid file's
    :class:`~diffusion_pl.samplers.CustomGrid` sets the steps when ``steps`` is None.

    Args:
        default: the checkpoint's sampler.
        name: a key of ``SAMPLERS``, or None for the default.
        steps: number of steps (> 0), or None for the sampler's own (a grid file's N).
        grid: a key of :data:`~diffusion_pl.samplers.GRIDS` or ``file:PATH`` (a JSON file of
            times, :func:`~diffusion_pl.samplers.parse_grid`), or None for the sampler's own.
    """
    if name is not None and name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    if steps is not None and steps <= 0:
        raise ValueError(f"steps must be > 0, got {steps}; omit it for the sampler's default")
    chosen_grid = None if grid is None else parse_grid(grid)
    if isinstance(chosen_grid, CustomGrid):
        steps = grid_steps(chosen_grid, steps, grid)
    sampler = default if name is None or SAMPLERS[name] is type(default) else SAMPLERS[name]()
    sampler = sampler if steps is None else sampler.with_steps(steps)
    return sampler if chosen_grid is None else sampler.with_grid(chosen_grid)


def grid_steps(grid: CustomGrid, steps: int | None, name: str) -> int:
    """The steps of a sampler on ``grid`` (``--grid name``): its N, which ``steps`` (if set)
    must equal."""
    if steps is not None and steps != grid.steps:
        raise ValueError(
            f"--grid {name} has {grid.steps} steps, not --steps {steps}: drop --steps or tune a "
            f"{steps}-step grid"
        )
    return grid.steps


def generate(
    module: DiffusionModule,
    n: int,
    *,
    seed: int,
    batch_size: int,
    start: int = 0,
    sampler: Sampler | None = None,
    class_labels: Sequence[int] | None = None,
    guidance_scale: float | None = None,
    classifier: NoisyClassifier | None = None,
    classifier_scale: float = 1.0,
    guide: DiffusionModule | None = None,
    progress: bool = False,
) -> Tensor:
    """Samples ``start … start + n − 1`` of the run seeded ``seed``, on the CPU.

    Sample k is drawn with a generator seeded from (seed, k) alone, whatever the batch it
    falls in; with ``class_labels`` it gets the class ``class_labels[k mod len]``.

    Args:
        module: the formulation to sample (its ``sample`` method).
        n: number of samples (> 0).
        seed: seed of the run.
        batch_size: samples per ``module.sample`` call (> 0); does not change the samples.
        start: index of the first sample (a process's share, a later chunk).
        sampler: overrides the module's default sampler.
        class_labels: classes cycled over the sample indices (see :func:`cycle_labels`).
        guidance_scale: classifier-free guidance scale w (default: the module's); with a
            ``guide``, autoguidance's w (required).
        classifier: a noisy classifier (eval mode) for classifier guidance.
        classifier_scale: λ, the scale of the classifier's gradient.
        guide: a weaker model of the same task for autoguidance (see
            :meth:`~diffusion_pl.formulations.DiffusionModule.sample`).
        progress: show a progress bar over the samples.

    Returns:
        ``[n, *module.data_shape]`` samples in data space, on the CPU.
    """
    if n <= 0:
        raise ValueError(f"number of samples must be > 0, got {n}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    batches = []
    chosen = module.sampler if sampler is None else sampler
    with tqdm(total=n, desc=f"sampling ({chosen})", unit="sample", disable=not progress) as bar:
        for first in range(start, start + n, batch_size):
            size = min(batch_size, start + n - first)
            labels = None if class_labels is None else cycle_labels(class_labels, first, size)
            x = module.sample(
                size,
                sampler=sampler,
                generator=sample_generators(seed, first, size, module.device),
                class_labels=labels,
                guidance_scale=guidance_scale,
                classifier=classifier,
                classifier_scale=classifier_scale,
                guide=guide,
            )
            batches.append(x.cpu())
            bar.update(size)
    return torch.cat(batches)


@contextmanager
def counting_calls(net: nn.Module) -> Iterator[list[int]]:
    """Count ``net``'s forward calls inside the block, in ``calls[0]``: the network evaluations
    (NFE) a sampler really made, whatever its ``steps`` mean."""
    calls = [0]

    def hook(*_) -> None:
        calls[0] += 1

    handle = net.register_forward_pre_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()
