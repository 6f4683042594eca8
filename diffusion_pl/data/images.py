"""Images from anything Hugging Face ``datasets`` can read: a hub name, a local folder or a
saved dataset (the bundled digits are in :mod:`diffusion_pl.data.digits`)."""

from __future__ import annotations

import itertools
from functools import partial
from pathlib import Path
from typing import Any

import datasets as hf
import torch
from huggingface_hub import HfApi
from torch.utils.data import Dataset

from diffusion_pl.data.image_rows import ImageRows, row_example
from diffusion_pl.data.image_settings import check_streaming, require_name
from diffusion_pl.data.sources import Example, Source, Split, check_fraction, check_split
from diffusion_pl.data.streaming import StreamingSplit, parquet_rows

__all__ = ["HFImages"]

HUB_TIMEOUT_S = 10.0
"""Seconds to wait for the Hugging Face hub before declaring it unreachable."""

_LOCAL_COPY_HINT = (
    "To use a local copy instead, set `path: /local/dir` with `builder: imagefolder` (a folder "
    "of images; class subfolders give labels) or `builder: parquet`, or `path: /local/dir` with "
    "`from_disk: true` for a folder written by `save_to_disk`; for a dataset already in the "
    "Hugging Face cache, set the environment variable HF_HUB_OFFLINE=1."
)


class HFImages(Source):
    """Images read with Hugging Face ``datasets``: a hub name, a local folder, or a saved dataset.

    Where the data come from, in order:

    - ``from_disk: true``: ``datasets.load_from_disk(path)``; a single saved ``Dataset`` (not a
      ``DatasetDict``) counts as the ``split_train`` split.
    - ``builder`` set: ``load_dataset(builder, data_dir=path, data_files=data_files)``, e.g.
      ``imagefolder`` (class subfolders give labels; its image column is ``image``) or
      ``parquet``.
    - ``path`` an existing local folder: ``load_dataset(path, data_files=data_files)``, letting
      ``datasets`` detect the format.
    - otherwise ``path`` is a hub name such as ``uoft-cs/cifar10``. The hub is probed first with a
      ``HUB_TIMEOUT_S`` timeout, so an offline machine fails at once (``load_dataset`` alone
      retries for about 25 s) with a hint on pointing at a local copy. With ``HF_HUB_OFFLINE=1``
      the probe is skipped and the cached copy is used.

    With ``streaming: true`` nothing is downloaded or loaded whole: the train split is read as a
    stream of shards (``load_dataset(..., streaming=True)``; see
    :mod:`diffusion_pl.data.streaming` for the order, the shuffle buffer and exact resumption),
    for hub datasets and local ``parquet`` / ``imagefolder`` shards alike. Its size, which sets
    the epoch's length, comes from ``num_train``, else the dataset's metadata (the hub's split
    sizes, local parquet footers). The val split (``split_val`` must be set) is read once into
    memory, its first ``num_val`` examples (all when None).

    Nothing is read in the constructor; the DataModule calls :meth:`prepare` and :meth:`load`.
    Images are converted to RGB or greyscale per ``channels``, centre-cropped to a square,
    resized (bicubic, antialiased) to ``image_size`` and scaled from 8-bit values to [−1, 1],
    channels first. When ``split_val`` is None a seeded ``val_fraction`` of the train split is
    held out instead.

    Args:
        path: hub name, or local folder (see above).
        split_train: name of the training split.
        split_val: name of the validation split; None to hold out ``val_fraction`` of train.
        image_column: column holding the images.
        label_column: column holding integer class labels; None for unlabelled data (y = −1).
        image_size: side of the square output images.
        channels: 3 for RGB, 1 for greyscale.
        num_classes: number of label classes, for class-conditional models; None otherwise.
        builder: ``datasets`` builder for a local folder, e.g. ``imagefolder`` or ``parquet``.
        data_files: files or glob patterns (or a split → files mapping) passed to
            ``load_dataset``.
        from_disk: read a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.
        val_fraction: fraction of train held out when ``split_val`` is None.
        seed: seed of that hold-out.
        streaming: stream the data instead of loading it (see above).
        shuffle_buffer: streaming: rows each reader shuffles at a time (1: shard order only).
        num_train: streaming: examples in the train split (None: from the metadata).
        num_val: streaming: examples kept from the start of the val split (None: all).
    """

    def __init__(
        self,
        path: str,
        split_train: str = "train",
        split_val: str | None = "test",
        image_column: str = "img",
        label_column: str | None = "label",
        image_size: int = 32,
        channels: int = 3,
        num_classes: int | None = None,
        builder: str | None = None,
        data_files: str | list[str] | dict[str, str | list[str]] | None = None,
        from_disk: bool = False,
        val_fraction: float = 0.01,
        seed: int = 0,
        streaming: bool = False,
        shuffle_buffer: int = 1000,
        num_train: int | None = None,
        num_val: int | None = None,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels}")
        if image_size <= 0:
            raise ValueError(f"image_size must be > 0, got {image_size}")
        if num_classes is not None and num_classes <= 0:
            raise ValueError(f"num_classes must be > 0 or None, got {num_classes}")
        if from_disk and builder is not None:
            raise ValueError(f"from_disk reads a saved dataset, which needs no builder={builder!r}")
        check_fraction(val_fraction)
        check_streaming(streaming, from_disk, split_val, shuffle_buffer, num_train, num_val)
        self.path = path
        self.split_train = split_train
        self.split_val = split_val
        self.image_column = image_column
        self.label_column = label_column
        self.image_size = image_size
        self.channels = channels
        self._num_classes = num_classes
        self.builder = builder
        self.data_files = data_files
        self.from_disk = from_disk
        self.val_fraction = val_fraction
        self.seed = seed
        self.streaming = streaming
        self.shuffle_buffer = shuffle_buffer
        self.num_train = num_train
        self.num_val = num_val
        self._splits: dict[Split, hf.Dataset] | None = None
        self._streams: dict[Split, Dataset[Example] | StreamingSplit] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """``(channels, image_size, image_size)``."""
        return (self.channels, self.image_size, self.image_size)

    @property
    def num_classes(self) -> int | None:
        """As configured; labels are passed through either way."""
        return self._num_classes

    @property
    def num_levels(self) -> int:
        """256: images are assumed to be 8-bit."""
        return 256

    @property
    def mirror_symmetric(self) -> bool:
        """Natural images stay natural when mirrored."""
        return True

    def prepare(self) -> None:
        """Download (or read) the dataset and check its splits and columns; when streaming,
        open the streams and read the val split."""
        if self.streaming:
            self._open_streams()
        else:
            self._load_splits()

    def load(self, split: Split) -> ImageRows | StreamingSplit:
        """Return one split, decoded into ``(x, y)`` examples on access (the streamed train
        split: a :class:`~diffusion_pl.data.streaming.StreamingSplit`)."""
        check_split(split)
        if self.streaming:
            return self._open_streams()[split]
        data = self._load_splits()[split]
        columns = [c for c in (self.image_column, self.label_column) if c is not None]
        return ImageRows(data.select_columns(columns), self._decoder())

    def _decoder(self) -> partial[Example]:
        """Row → ``(x, y)`` for this source's columns, size and channels (it pickles)."""
        return partial(
            row_example, image_column=self.image_column, label_column=self.label_column,
            size=self.image_size, mode="RGB" if self.channels == 3 else "L",
        )  # fmt: skip

    def _open_streams(self) -> dict[Split, ImageRows | StreamingSplit]:
        """Open the train stream and read the val split's first ``num_val`` rows, once."""
        if self._streams is None:
            loaded = self._open()
            self._pick_splits(loaded)
            train, val = (
                self._raw_images(loaded[name]) for name in (self.split_train, self.split_val)
            )
            rows = list(itertools.islice(val, self.num_val))
            decode = self._decoder()
            self._streams = {
                "train": StreamingSplit(train, decode, self._count_train(), self.shuffle_buffer),
                "val": ImageRows(rows, decode),
            }
        return self._streams

    def _raw_images(self, data: hf.IterableDataset) -> hf.IterableDataset:
        """The configured columns, the image column left undecoded (raw bytes)."""
        data = data.select_columns([c for c in (self.image_column, self.label_column) if c])
        if data.features is not None and isinstance(data.features[self.image_column], hf.Image):
            data = data.cast_column(self.image_column, hf.Image(decode=False))
        return data

    def _count_train(self) -> int:
        """Examples in the streamed train split: ``num_train``, else the dataset's metadata."""
        if self.num_train is not None:
            return self.num_train
        path, kwargs = self._load_args()
        builder = hf.load_dataset_builder(path, **kwargs)
        splits = builder.info.splits or {}
        if self.split_train in splits and splits[self.split_train].num_examples:
            return splits[self.split_train].num_examples
        files = (builder.config.data_files or {}).get(self.split_train)
        count = parquet_rows([str(f) for f in files or []])
        if count is None:
            raise ValueError(
                f"the size of the streamed split {self.split_train!r} of {self.path!r} is not in "
                "its metadata (hub split sizes or local parquet footers): set "
                "data.source.init_args.num_train to its number of examples"
            )
        return count

    def _load_splits(self) -> dict[Split, hf.Dataset]:
        """Open the dataset once and keep its checked train and val splits."""
        if self._splits is None:
            loaded = self._open()
            if isinstance(loaded, hf.Dataset):
                loaded = hf.DatasetDict({self.split_train: loaded})
            self._splits = self._pick_splits(loaded)
        return self._splits

    def _open(self) -> hf.Dataset | hf.DatasetDict:
        """Read from disk, a local folder, or the hub, as the docstring of the class says."""
        local = Path(self.path).expanduser()
        looks_local = self.path.startswith(("/", ".", "~")) or self.path.count("/") > 1
        if not (self.from_disk or self.builder or looks_local or local.exists()):
            return self._open_hub()
        if not local.exists():
            raise FileNotFoundError(
                f"HFImages path {self.path!r} does not exist: set data.source.init_args.path to "
                "an existing local folder, or to a Hugging Face hub name such as uoft-cs/cifar10"
            )
        if self.from_disk:
            return hf.load_from_disk(str(local))
        path, kwargs = self._load_args()
        return hf.load_dataset(path, **kwargs, streaming=self.streaming)

    def _load_args(self) -> tuple[str, dict[str, Any]]:
        """``load_dataset``'s path and keyword arguments for a local folder or a hub name."""
        if self.builder is not None:
            local = Path(self.path).expanduser()
            return self.builder, {"data_dir": str(local), "data_files": self.data_files}
        if Path(self.path).expanduser().exists():
            return str(Path(self.path).expanduser()), {"data_files": self.data_files}
        return self.path, {"data_files": self.data_files}

    def _open_hub(self) -> hf.DatasetDict | hf.IterableDatasetDict:
        """Load a hub dataset, failing fast with a hint when the hub cannot be reached."""
        if not hf.config.HF_HUB_OFFLINE:
            try:
                HfApi().dataset_info(self.path, timeout=HUB_TIMEOUT_S)
            except Exception as err:  # any failure means the hub copy is out of reach
                raise ConnectionError(self._unreachable(err)) from err
        try:
            return hf.load_dataset(self.path, data_files=self.data_files, streaming=self.streaming)
        except ConnectionError as err:  # offline mode and not in the cache
            raise ConnectionError(self._unreachable(err)) from err

    def _unreachable(self, err: Exception) -> str:
        """The message for a hub dataset out of reach, with the ways to a local copy."""
        return (
            f"Could not find or reach dataset {self.path!r} on the Hugging Face hub "
            f"({type(err).__name__}: {err}). {_LOCAL_COPY_HINT}"
        )

    def _pick_splits(
        self, loaded: hf.DatasetDict | hf.IterableDatasetDict
    ) -> dict[Split, hf.Dataset]:
        """Check that the configured splits and columns exist; hold out val if asked."""
        require_name("split", "split_train", self.split_train, list(loaded), self.path)
        if self.split_val is not None:
            hint = "or to null to hold out val_fraction of train"
            require_name("split", "split_val", self.split_val, list(loaded), self.path, hint)
        train = loaded[self.split_train]
        columns = train.column_names or []  # a stream may not know its columns before reading
        if columns:
            require_name("column", "image_column", self.image_column, columns, self.path)
        if self.label_column is not None and columns:
            hint = "or to null for unlabelled data"
            require_name("column", "label_column", self.label_column, columns, self.path, hint)
        if self.split_val is not None:
            return {"train": train, "val": loaded[self.split_val]}
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed))
        num_val = max(1, round(self.val_fraction * len(train)))
        return {
            "train": train.select(order[num_val:].tolist()),
            "val": train.select(order[:num_val].tolist()),
        }
