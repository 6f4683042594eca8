"""Checks of :class:`~diffusion_pl.data.images.HFImages`' settings, each error naming the key
and the fix: the streaming settings (before anything is read) and the configured split and
column names (once the dataset is open)."""

from __future__ import annotations

__all__ = ["check_streaming", "require_name"]


def check_streaming(
    streaming: bool,
    from_disk: bool,
    split_val: str | None,
    shuffle_buffer: int,
    num_train: int | None,
    num_val: int | None,
) -> None:
    """Refuse streaming settings that cannot work, naming the key and the fix."""
    if shuffle_buffer <= 0:
        raise ValueError(f"shuffle_buffer must be > 0 (1: no shuffling), got {shuffle_buffer}")
    for key, value in (("num_train", num_train), ("num_val", num_val)):
        if value is not None and value <= 0:
            raise ValueError(f"{key} must be > 0 or null, got {value}")
        if value is not None and not streaming:
            raise ValueError(f"{key}={value} applies to streaming: set streaming: true or drop it")
    if not streaming:
        return
    if from_disk:
        raise ValueError(
            "from_disk reads a saved dataset, which is memory-mapped and needs no streaming: "
            "set streaming: false, or point path at the dataset's parquet or image files"
        )
    if split_val is None:
        raise ValueError(
            "streaming: true needs a separate validation split (a stream cannot hold out "
            "val_fraction of train): set split_val to one of the dataset's splits"
        )


def require_name(
    kind: str, key: str, value: str, available: list[str], dataset: str, hint: str = ""
) -> None:
    """Raise a ValueError naming the config ``key`` unless ``value`` is among ``available``.

    Args:
        kind: ``"split"`` or ``"column"``.
        key: the HFImages argument that holds ``value``.
        value: the configured name.
        available: the names the dataset has.
        dataset: the dataset's path, for the message.
        hint: another way out, appended to the message.
    """
    if value not in available:
        raise ValueError(
            f"{key}={value!r} is not a {kind} of {dataset!r}; available {kind}s: {available}. "
            f"Set {key} to one of them{', ' + hint if hint else ''}."
        )
