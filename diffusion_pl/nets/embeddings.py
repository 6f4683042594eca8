"""Embeddings of the noise label (t, log σ, …) and of class labels, shared by every net."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["FourierEmbedding", "NoiseEmbedding", "NoiseFeatures", "PositionalEmbedding"]

NoiseFeatures = Callable[[int], nn.Module]
"""A class (or factory) that builds the noise-label features of a given even width:
:class:`PositionalEmbedding` or :class:`FourierEmbedding`, chosen in YAML by ``class_path`` with
its own ``init_args`` (the net supplies the width)."""


def _check_even(dim: int, name: str) -> None:
    if dim < 2 or dim % 2:
        raise ValueError(
            f"{name}: dim must be a positive even number (sin and cos halves), got {dim}"
        )


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding ``[sin(s·n·f_i), cos(s·n·f_i)]`` of a noise label n.

    The frequencies are ``f_i = max_period^(-i / (dim/2))``, ``i = 0 … dim/2 − 1``. With
    ``label_scale = 1000`` a continuous ``t ∈ [0, 1]`` is embedded like DDPM's integer step
    ``1000 t``.

    Args:
        dim: output width (even).
        max_period: longest period of the sinusoids (in units of ``label_scale · n``).
        label_scale: factor s applied to the noise label before embedding. (Not named ``scale``:
            jsonargparse carries init_args of the same name over when YAML switches the class,
            and Fourier's ``scale`` means something else.)

    Reference: Vaswani et al. (2017), Sec. 3.5; Ho et al. (2020), Appendix B.
    """

    def __init__(self, dim: int, max_period: float = 10000.0, label_scale: float = 1000.0) -> None:
        super().__init__()
        _check_even(dim, "PositionalEmbedding")
        self.dim = dim
        self.label_scale = label_scale
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, noise_labels: Tensor) -> Tensor:
        """Embed noise labels.

        Args:
            noise_labels: ``[B]`` float noise labels.

        Returns:
            ``[B, dim]`` float32 embedding, sines first then cosines.
        """
        args = torch.outer(self.label_scale * noise_labels.float(), self.freqs)
        return torch.cat([args.sin(), args.cos()], dim=1)


class FourierEmbedding(nn.Module):
    """Gaussian random Fourier features ``[sin(2π n w_i), cos(2π n w_i)]``, ``w_i ~ N(0, scale²)``.

    The frequencies are a fixed buffer (saved in the state dict, never trained), drawn with
    ``torch.randn`` at construction, so they follow ``torch.manual_seed``.

    Args:
        dim: output width (even).
        scale: standard deviation of the frequencies.

    Reference: Tancik et al. (2020); Song et al. (2021), NCSN++ (``GaussianFourierProjection``).
    """

    def __init__(self, dim: int, scale: float = 16.0) -> None:
        super().__init__()
        _check_even(dim, "FourierEmbedding")
        self.dim = dim
        self.register_buffer("freqs", torch.randn(dim // 2) * scale)

    def forward(self, noise_labels: Tensor) -> Tensor:
        """Embed noise labels.

        Args:
            noise_labels: ``[B]`` float noise labels (``t``, or ``log σ``, any real number).

        Returns:
            ``[B, dim]`` float32 embedding, sines first then cosines.
        """
        args = torch.outer(noise_labels.float(), 2 * math.pi * self.freqs.float())
        return torch.cat([args.sin(), args.cos()], dim=1)


class NoiseEmbedding(nn.Module):
    """Noise-label features → Linear → SiLU → Linear, plus an optional learned class embedding.

    The output is pre-activation: each block applies its own ``SiLU`` and ``Linear`` to it, as in
    DDPM. With ``num_classes = K`` the class table has ``K + 1`` rows; row ``K`` is the learned
    "no label" embedding used for unconditional samples and classifier-free guidance.

    With ``num_noise_labels = L > 1`` the net is conditioned on L noise labels per example
    (``noise_labels [B, L]``): each label has its own features → Linear → SiLU → Linear, and the
    L embeddings are summed (MeanFlow's (t, t − r): Geng et al., 2025, Sec. 4.3 and Table 1).
    The first label keeps the modules of a one-label embedding, so L = 1 adds nothing to the
    state dict and older checkpoints load unchanged.

    Args:
        features: builds the noise-label features given their width, e.g.
            :class:`PositionalEmbedding` or :class:`FourierEmbedding` (or a partial of either).
        features_dim: width of the sinusoidal features.
        out_dim: width of the returned embedding.
        num_classes: number of classes K, or ``None`` for an unconditional net.
        num_noise_labels: number of noise labels L per example (1: one ``[B]`` label).

    Reference: Ho et al. (2020), Appendix B; Ho & Salimans (2022), classifier-free guidance;
    Geng et al. (2025), "Mean Flows for One-step Generative Modeling", Sec. 4.3.
    """

    def __init__(
        self,
        features: NoiseFeatures,
        features_dim: int,
        out_dim: int,
        num_classes: int | None = None,
        num_noise_labels: int = 1,
    ) -> None:
        super().__init__()
        if not callable(features):
            raise ValueError(
                f"embedding must be a class such as diffusion_pl.nets.PositionalEmbedding or "
                f"diffusion_pl.nets.FourierEmbedding (class_path in YAML), got {features!r}"
            )
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes}")
        if num_noise_labels < 1:
            raise ValueError(
                f"num_noise_labels must be >= 1 (2 for MeanFlow's (t, t - r)), "
                f"got {num_noise_labels}"
            )
        self.features = features(features_dim)
        self.fc1 = nn.Linear(features_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)
        self.num_classes = num_classes
        self.num_noise_labels = num_noise_labels
        self.class_embed = None if num_classes is None else nn.Embedding(num_classes + 1, out_dim)
        self.more_labels = None
        if num_noise_labels > 1:
            self.more_labels = nn.ModuleList(
                NoiseEmbedding(features, features_dim, out_dim) for _ in range(num_noise_labels - 1)
            )

    def zero_extra_labels(self) -> None:
        """Zero the last layer (weights and bias) of every label after the first, so that those
        labels add exactly 0 to the embedding until training moves them: a net given a new
        input this way (LCM's guidance scale ω) computes, bit for bit, what the net without it
        computes, for any value of the input.

        Reference: Luo et al. (2023), "Latent Consistency Models", Sec. 4.2 (ω as an input of
        the student through an embedding added to the time embedding).
        """
        if self.more_labels is None:
            raise ValueError(
                "this embedding has one noise label: there is no second label to zero "
                "(set the net's num_noise_labels: 2)"
            )
        with torch.no_grad():
            for extra in self.more_labels:
                extra.fc2.weight.zero_()
                extra.fc2.bias.zero_()

    def forward(
        self, noise_labels: Tensor | float, class_labels: Tensor | None, batch_size: int
    ) -> Tensor:
        """Embed a batch of noise labels and class labels.

        Args:
            noise_labels: ``[B]`` float, or a 0-dim / one-element tensor (or float) shared by
                the batch; ``[B, L]`` (or ``[L]``, shared) with ``num_noise_labels = L > 1``.
            class_labels: ``[B]`` int64 in ``[0, num_classes]`` (``num_classes`` = no label), or
                ``None`` (all unconditional). Must be ``None`` when ``num_classes`` is ``None``.
            batch_size: B.

        Returns:
            ``[B, out_dim]`` embedding in the dtype of the linear layers.
        """
        if self.more_labels is not None:
            labels = torch.as_tensor(noise_labels, device=self.fc1.weight.device)
            if labels.shape[-1:] != (self.num_noise_labels,) or labels.ndim > 2:
                raise ValueError(
                    f"this net takes {self.num_noise_labels} noise labels per example, shaped "
                    f"[B, {self.num_noise_labels}]; got shape {list(labels.shape)}"
                )
            labels = labels.reshape(-1, self.num_noise_labels)
            emb = self._embed(labels[:, 0], class_labels, batch_size)
            for i, extra in enumerate(self.more_labels, start=1):
                emb = emb + extra(labels[:, i], None, batch_size)
            return emb
        return self._embed(noise_labels, class_labels, batch_size)

    def _embed(
        self, noise_labels: Tensor | float, class_labels: Tensor | None, batch_size: int
    ) -> Tensor:
        """One noise label per example (plus the class embedding): :meth:`forward`'s L = 1."""
        weight = self.fc1.weight
        noise_labels = torch.as_tensor(noise_labels, device=weight.device).reshape(-1)
        if noise_labels.numel() == 1:
            noise_labels = noise_labels.expand(batch_size)
        elif noise_labels.numel() != batch_size:
            raise ValueError(
                f"noise_labels has {noise_labels.numel()} entries; expected batch size "
                f"{batch_size} (shape [B]) or a single value"
            )
        emb = self.fc2(nn.functional.silu(self.fc1(self.features(noise_labels).to(weight.dtype))))
        if self.class_embed is None:
            if class_labels is not None:
                raise ValueError(
                    "class_labels were given but this net is unconditional (num_classes=None); "
                    "set num_classes to train a class-conditional net"
                )
            return emb
        if class_labels is None:
            class_labels = torch.full((batch_size,), self.num_classes, device=weight.device)
        return emb + self.class_embed(class_labels.reshape(batch_size))
