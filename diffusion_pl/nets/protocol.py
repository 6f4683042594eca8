"""What a formulation needs of its network, and what classifier guidance needs of a classifier.

Typed ``Protocol`` s instead of ``getattr`` probes: ``MLP`` and ``UNet`` are :class:`DenoiserNet`
s, ``MLPClassifier`` and ``UNetEncoderClassifier`` are :class:`ClassifierNet` s, and so is any
module with the same members (checked with ``isinstance`` when a formulation is built).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["ClassifierNet", "DenoiserNet", "MultiLabelDenoiserNet"]


@runtime_checkable
class DenoiserNet(Protocol):
    """``net(x [B, ...], noise_labels [B], class_labels [B] | None) -> Tensor`` shaped as x.

    Attributes:
        num_classes: K for a class-conditional net (label K is the null label ∅), None for an
            unconditional one.
    """

    num_classes: int | None

    def __call__(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None) -> Tensor:
        """The raw output F that the parameterization reads."""
        ...

    def check_data_shape(self, data_shape: tuple[int, ...]) -> None:
        """Raise ValueError, naming the setting to change, unless examples of this shape fit."""
        ...


@runtime_checkable
class MultiLabelDenoiserNet(DenoiserNet, Protocol):
    """A :class:`DenoiserNet` that may take several noise labels per example.

    With ``num_noise_labels = L > 1`` it is called with ``noise_labels [B, L]`` (MeanFlow's
    (t, t − r): L = 2); with L = 1 it is an ordinary :class:`DenoiserNet`.

    Attributes:
        num_noise_labels: L, the noise labels each example is conditioned on.
    """

    num_noise_labels: int


@runtime_checkable
class ClassifierNet(Protocol):
    """``net(x [B, ...], noise_labels [B]) -> logits [B, K]`` of a noisy classifier p(y | x_t).

    Attributes:
        num_classes: K.
    """

    num_classes: int

    def __call__(self, x: Tensor, noise_labels: Tensor) -> Tensor:
        """Logits ``[B, K]``."""
        ...
