"""Noise-conditional classifiers ``net(x_t, noise_labels) -> logits [B, K]`` for guidance.

Both reuse the denoisers' parts: the noise embedding and residual blocks of :class:`~.mlp.MLP`
(2-D toys) and the encoder half of :class:`~.unet.UNet`, :func:`~.blocks.encoder_levels` (images).
"""

from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_pl.nets.blocks import encoder_levels, group_norm, res_attn_block
from diffusion_pl.nets.embeddings import NoiseEmbedding, NoiseFeatures, PositionalEmbedding
from diffusion_pl.nets.mlp import ResidualMLP

__all__ = ["MLPClassifier", "UNetEncoderClassifier"]


def _check_num_classes(num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes}")


class MLPClassifier(ResidualMLP):
    """Residual MLP ``(x [B, D], noise_labels [B]) -> logits [B, K]`` for low-dimensional data.

    Args:
        dim: data dimension D.
        num_classes: number of classes K.
        hidden: width of the hidden layers.
        depth: number of residual blocks.
        embedding: noise-label features, a class taking the width
            (:class:`~.embeddings.PositionalEmbedding`, :class:`~.embeddings.FourierEmbedding`).
        embedding_dim: width of the sinusoidal features.

    Reference: Dhariwal & Nichol (2021), Sec. 4.1 (a classifier of noisy x_t, conditioned on t).
    """

    def __init__(
        self,
        dim: int = 2,
        num_classes: int = 2,
        hidden: int = 128,
        depth: int = 2,
        embedding: NoiseFeatures = PositionalEmbedding,
        embedding_dim: int = 64,
    ) -> None:
        _check_num_classes(num_classes)
        super().__init__(dim, num_classes, hidden, depth, embedding, embedding_dim, None)
        self.num_classes = num_classes

    def forward(self, x: Tensor, noise_labels: Tensor | float) -> Tensor:  # type: ignore[override]
        """Logits ``[B, K]`` of noisy points ``x`` ``[B, D]`` at noise labels ``[B]``."""
        return super().forward(x, noise_labels)


class UNetEncoderClassifier(nn.Module):
    """The UNet's encoder, then GroupNorm → SiLU → global average pool → Linear to K logits.

    Levels of ``num_res_blocks`` residual blocks (attention at ``attn_resolutions``) separated
    by strided-conv downsampling, each block conditioned on the noise embedding, as the UNet.

    Args:
        in_channels: image channels C.
        image_size: height and width (square images).
        num_classes: number of classes K.
        base_channels: channels at the first level.
        channel_mult: per-level channel multipliers.
        num_res_blocks: residual blocks per level.
        attn_resolutions: resolutions (pixels) with self-attention.
        dropout: dropout inside the residual blocks.
        embedding: noise-label features, a class taking the width
            (:class:`~.embeddings.PositionalEmbedding`, :class:`~.embeddings.FourierEmbedding`).
        num_groups: largest GroupNorm group count.

    Reference: Dhariwal & Nichol (2021), "Diffusion Models Beat GANs on Image Synthesis",
    Sec. 4.1 (the downsampling trunk of the UNet as the noisy classifier; mean pooling here
    instead of their attention pooling).
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        num_classes: int = 10,
        base_channels: int = 32,
        channel_mult: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 1,
        attn_resolutions: tuple[int, ...] = (),
        dropout: float = 0.0,
        embedding: NoiseFeatures = PositionalEmbedding,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        self.in_channels, self.num_classes = in_channels, num_classes
        emb_dim = 4 * base_channels
        self.embed = NoiseEmbedding(embedding, base_channels, emb_dim)
        block = partial(
            res_attn_block,
            emb_dim=emb_dim,
            dropout=dropout,
            num_heads=1,
            num_groups=num_groups,
            skip_rescale=True,
        )
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        resolutions = [image_size // 2**level for level in range(len(channel_mult))]
        self.levels, skip_channels = encoder_levels(
            block, base_channels, channel_mult, num_res_blocks, resolutions, attn_resolutions, True
        )
        ch = skip_channels[-1]
        self.norm_out = group_norm(ch, num_groups)
        self.fc_out = nn.Linear(ch, num_classes)

    def forward(self, x: Tensor, noise_labels: Tensor | float) -> Tensor:
        """Logits ``[B, K]`` of noisy images ``[B, C, H, W]`` at noise labels ``[B]``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNetEncoderClassifier expects x of shape [B, {self.in_channels}, H, W], "
                f"got {list(x.shape)}"
            )
        emb = self.embed(noise_labels, None, x.shape[0])
        h = self.conv_in(x)
        for level in self.levels:
            h = level.encode(h, emb, skips=[])  # no decoder: the skips are not kept
        return self.fc_out(F.silu(self.norm_out(h)).mean((2, 3)))
