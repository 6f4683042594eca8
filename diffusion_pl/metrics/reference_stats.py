"""Reference statistics of FID: where they are cached, the key that names each, and reading
the files of pytorch-fid, EDM and torch-fidelity.

Statistics (μ, Σ and, for KID, the features) are computed once per (dataset, split,
resolution, extractor) and cached as ``.npz`` with the ``mu`` / ``sigma`` keys of pytorch-fid
and EDM, so published reference files drop in; torch-fidelity's own statistics caches
(``…-stat-fid-2048.pt``) are read too (:func:`read_statistics`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffusion_pl.compat import NUMPY_PICKLE_GLOBALS
from diffusion_pl.data import DiffusionDataModule
from diffusion_pl.data.sources import Source, Split
from diffusion_pl.metrics.features import extractor_id

__all__ = ["default_cache_dir", "read_statistics", "reference_key", "source_config"]


def default_cache_dir() -> Path:
    """``$DIFFUSION_PL_CACHE/fid`` if set, else ``~/.cache/diffusion-pl/fid``."""
    root = os.environ.get("DIFFUSION_PL_CACHE", Path.home() / ".cache" / "diffusion-pl")
    return Path(root) / "fid"


def source_config(source: Source) -> dict[str, object]:
    """The constructor arguments of a data source, as it holds them (``name`` or ``_name``).

    Only its configuration: what loading adds (downloaded splits, a file's shape) is left out,
    so the key of a source is the same before and after it loads its data. A source made of
    another (:class:`~diffusion_pl.data.Transformed`) holds that one's configuration.
    """
    held = vars(source)
    config = {"class": type(source).__qualname__}
    for name in inspect.signature(type(source)).parameters:
        if name not in held and f"_{name}" not in held:
            raise ValueError(
                f"{type(source).__name__} does not keep its constructor argument {name!r} as "
                f"self.{name} (or self._{name}), which the FID cache key is made of: keep it"
            )
        value = held[name] if name in held else held[f"_{name}"]
        config[name] = source_config(value) if isinstance(value, Source) else value
    return config


def reference_key(datamodule: DiffusionDataModule, split: Split, extractor: nn.Module) -> str:
    """``<source>-<split>-<C>x<H>x<W>-<extractor>-<config hash>``: one file per reference.

    The hash is of the source's configuration (:func:`source_config`), not of its state.
    """
    source = datamodule.source
    config = json.dumps(source_config(source), sort_keys=True, default=str)
    digest = hashlib.sha1(config.encode()).hexdigest()[:10]
    shape = "x".join(map(str, datamodule.data_shape))
    return f"{type(source).__name__.lower()}-{split}-{shape}-{extractor_id(extractor)}-{digest}"


def read_statistics(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a reference-statistics file: ``mu``, ``sigma`` and any ``num_samples``,
    ``features``.

    ``.npz`` files are pytorch-fid's, EDM's and this module's cache; any other suffix is read as
    torch-fidelity's cache, a ``torch.save``-d ``{"mu", "sigma"}`` dict of numpy arrays (e.g.
    ``~/.cache/torch/fidelity_cache/cifar10-train-inception-v3-compat-stat-fid-2048.pt``),
    loaded with ``weights_only=True`` and only numpy's array types allowed.
    """
    if path.suffix == ".npz":
        with np.load(path) as stats:
            arrays = {key: stats[key] for key in stats.files}
    else:
        with torch.serialization.safe_globals(NUMPY_PICKLE_GLOBALS):
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:
                raise ValueError(
                    f"{str(path)!r} is neither an .npz nor torch-fidelity statistics "
                    f"(a torch.save-d dict of numpy arrays): {error}"
                ) from error
        arrays = {k: np.asarray(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
    missing = {"mu", "sigma"} - set(arrays)
    if missing:
        raise ValueError(
            f"reference statistics {str(path)!r} lack {sorted(missing)}; expected the mu/sigma "
            "of pytorch-fid / EDM (.npz) or torch-fidelity (.pt)"
        )
    return arrays
