"""Pictures people would rather look at than read: image grids and 2-D scatter plots.

Each is written to a path (its folder created; the format from its suffix) or to an open binary
file (as PNG), as :func:`~diffusion_pl.checkpoint_io.write_atomic` hands one.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import IO

import torch
from torch import Tensor

__all__ = ["Target", "save_curve", "save_image_grid", "save_samples_figure", "save_scatter"]

Target = str | Path | IO[bytes]
"""Where a picture goes: a path, or an open binary file (written as PNG)."""


def _prepare(target: Target) -> Path | IO[bytes]:
    """``target`` as a :class:`~pathlib.Path` with its folder created, or the open file."""
    if isinstance(target, (str, Path)):
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
    return target


def save_image_grid(x: Tensor, path: Target, nrow: int | None = None) -> Target:
    """Save images ``[N, C, H, W]`` in [−1, 1] as one PNG grid (about square by default)."""
    from torchvision.utils import save_image

    path = _prepare(path)
    nrow = nrow or max(1, math.ceil(math.sqrt(x.shape[0])))
    images = ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)
    # Tiny images (8×8 digits) are upscaled so the grid is legible.
    scale = max(1, 64 // x.shape[-1])
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    png = None if isinstance(path, Path) else "png"
    save_image(images, path, nrow=nrow, padding=2, pad_value=1.0, format=png)
    return path


_TITLE_CHARS = 50
"""Characters per title line of a scatter plot: 10-pt text on the 5-inch figure holds about 60."""


def save_scatter(
    x: Tensor, path: Target, reference: Tensor | None = None, title: str = ""
) -> Target:
    """Scatter-plot 2-D samples ``[N, 2]`` (blue) over optional reference data (grey).

    A long title (a sampler's settings) is wrapped onto lines that fit the figure's width.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = _prepare(path)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if reference is not None:
        ref = reference.detach().float().cpu()
        ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.7", alpha=0.5, label="data")
    pts = x.detach().float().cpu()
    ax.scatter(pts[:, 0], pts[:, 1], s=2, c="tab:blue", alpha=0.6, label="samples")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=4)
    ax.set_title(textwrap.fill(title, width=_TITLE_CHARS), fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def save_samples_figure(
    x: Tensor, path: Target, reference: Tensor | None = None, title: str = ""
) -> Target:
    """A grid for images ``[N, C, H, W]``, a scatter plot for 2-D points ``[N, 2]``."""
    if x.ndim == 4:
        return save_image_grid(x, path)
    if x.ndim == 2 and x.shape[1] == 2:
        return save_scatter(x, path, reference, title)
    raise ValueError(
        f"can only draw images [N, C, H, W] or 2-D points [N, 2], got {tuple(x.shape)}"
    )


def save_curve(
    x: list[float], y: list[float], path: Target, xlabel: str, ylabel: str, title: str = ""
) -> Target:
    """A line plot with markers of ``y`` against ``x`` (e.g. FID against the EMA width)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = _prepare(path)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.plot(x, y, marker="o")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(textwrap.fill(title, width=_TITLE_CHARS), fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
