"""A DDPM++/NCSN++-style UNet denoiser for ``[B, C, H, W]`` images."""

from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_pl.nets.blocks import (
    UNetLevel,
    Upsample,
    encoder_levels,
    group_norm,
    res_attn_block,
    zero_init,
)
from diffusion_pl.nets.embeddings import NoiseEmbedding, NoiseFeatures, PositionalEmbedding

__all__ = ["UNet"]


class UNet(nn.Module):
    """DDPM++/NCSN++-style UNet ``(x, noise_labels, class_labels) → output of shape [B, C', H, W]``.

    Encoder levels of ``num_res_blocks`` residual blocks (attention where the resolution is in
    ``attn_resolutions``) separated by downsampling; a res → attn → res middle; decoder levels of
    ``num_res_blocks + 1`` blocks, each consuming one encoder skip by concatenation. Every residual
    branch and the output conv start at zero. The defaults are the DDPM CIFAR-10 model (35.7M
    parameters).

    Args:
        in_channels: image channels C.
        out_channels: output channels; ``None`` means ``in_channels``.
        image_size: height and width (square images).
        base_channels: channels at the first level.
        channel_mult: per-level channel multipliers; ``len(channel_mult) − 1`` downsamplings.
        num_res_blocks: residual blocks per encoder level.
        attn_resolutions: resolutions (pixels) at which self-attention is applied.
        dropout: dropout probability inside the residual blocks.
        num_heads: attention heads.
        embedding: noise-label features, a class taking the width (``base_channels``):
            :class:`~.embeddings.PositionalEmbedding` or :class:`~.embeddings.FourierEmbedding`.
        num_classes: number of classes K for a class-conditional net; label K means "no label".
        num_noise_labels: noise labels per example, each embedded, the embeddings summed: 1,
            or 2 for MeanFlow's (t, t − r) (:class:`~diffusion_pl.formulations.MeanFlow`).
        resample_with_conv: strided conv / nearest + conv resampling, else avg-pool / nearest.
        skip_rescale: divide residual sums by √2 (NCSN++).
        num_groups: largest GroupNorm group count (fewer when a layer has < 4·num_groups
            channels).

    Reference: Ho et al. (2020), Appendix B; Song et al. (2021), DDPM++ / NCSN++.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        image_size: int = 32,
        base_channels: int = 128,
        channel_mult: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (16,),
        dropout: float = 0.1,
        num_heads: int = 1,
        embedding: NoiseFeatures = PositionalEmbedding,
        num_classes: int | None = None,
        resample_with_conv: bool = True,
        skip_rescale: bool = True,
        num_groups: int = 32,
        num_noise_labels: int = 1,
    ) -> None:
        super().__init__()
        factor = 2 ** (len(channel_mult) - 1)
        if image_size < factor or image_size % factor:
            raise ValueError(
                f"image_size={image_size} is not divisible by 2**(len(channel_mult)-1)={factor}; "
                f"use an image_size that is a multiple of {factor}, or a shorter channel_mult"
            )
        resolutions = [image_size // 2**i for i in range(len(channel_mult))]
        unknown = sorted(set(attn_resolutions) - set(resolutions))
        if unknown:
            raise ValueError(
                f"attn_resolutions {unknown} are not resolutions this UNet visits; "
                f"it visits {resolutions}"
            )
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.image_size = image_size
        self.num_classes = num_classes
        self.num_noise_labels = num_noise_labels
        emb_dim = 4 * base_channels
        self.embed = NoiseEmbedding(
            embedding, base_channels, emb_dim, num_classes, num_noise_labels
        )
        block = partial(
            res_attn_block,
            emb_dim=emb_dim,
            dropout=dropout,
            num_heads=num_heads,
            num_groups=num_groups,
            skip_rescale=skip_rescale,
        )
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down, skip_channels = encoder_levels(
            block,
            base_channels,
            channel_mult,
            num_res_blocks,
            resolutions,
            attn_resolutions,
            resample_with_conv,
        )
        ch = skip_channels[-1]

        self.mid = nn.ModuleList([block(ch, ch, attn=True), block(ch, ch, attn=False)])

        self.up = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                cout = base_channels * channel_mult[level]
                attn = resolutions[level] in attn_resolutions
                blocks.append(block(ch + skip_channels.pop(), cout, attn))
                ch = cout
            resample = None if level == 0 else Upsample(ch, resample_with_conv)
            self.up.append(UNetLevel(blocks, resample))

        self.norm_out = group_norm(ch, num_groups)
        self.conv_out = zero_init(nn.Conv2d(ch, self.out_channels, 3, padding=1))
        self.downsampling = factor

    def check_data_shape(self, data_shape: tuple[int, ...]) -> None:
        """Raise a ValueError, naming the setting to change, unless examples fit this UNet.

        Args:
            data_shape: one example's shape, ``(C, H, W)``.
        """
        key = "model.init_args.net.init_args"
        if len(data_shape) != 3:
            raise ValueError(
                f"the UNet takes images (C, H, W) but the data are shaped {tuple(data_shape)}: "
                "use diffusion_pl.nets.MLP for vectors"
            )
        channels, height, width = data_shape
        if height != width or height % self.downsampling:
            raise ValueError(
                f"the data are {height}x{width} images, but this UNet halves the resolution "
                f"{len(self.down) - 1} times, so it needs square images whose side is a multiple "
                f"of {self.downsampling}: resize the data (data.source.init_args.image_size, or "
                f"size for Digits) or use a shorter channel_mult ({key}.channel_mult)"
            )
        if channels != self.in_channels:
            raise ValueError(
                f"the data have {channels} channels but the UNet has in_channels="
                f"{self.in_channels}: set {key}.in_channels: {channels}"
            )
        if height != self.image_size:
            raise ValueError(
                f"the data are {height}x{width} images but the UNet has image_size="
                f"{self.image_size}: set {key}.image_size: {height}"
            )

    def forward(
        self, x: Tensor, noise_labels: Tensor | float, class_labels: Tensor | None = None
    ) -> Tensor:
        """Evaluate the network.

        Args:
            x: ``[B, in_channels, image_size, image_size]`` noisy images.
            noise_labels: ``[B]`` float noise conditioning (``t``, ``log σ``, …), or one value;
                ``[B, num_noise_labels]`` when there are several.
            class_labels: ``[B]`` int64 in ``[0, num_classes]``, or ``None`` (unconditional).

        Returns:
            ``[B, out_channels, image_size, image_size]`` raw network output.
        """
        if x.ndim != 4:
            raise ValueError(f"UNet expects x of shape [B, C, H, W], got {list(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"x has {x.shape[1]} channels but the UNet was built with "
                f"in_channels={self.in_channels}"
            )
        if x.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"x is {x.shape[2]}x{x.shape[3]} but the UNet was built with "
                f"image_size={self.image_size}"
            )
        emb = self.embed(noise_labels, class_labels, x.shape[0])
        h = self.conv_in(x)
        skips = [h]
        for level in self.down:
            h = level.encode(h, emb, skips)
        for block in self.mid:
            h = block(h, emb)
        for level in self.up:
            h = level.decode(h, emb, skips)
        return self.conv_out(F.silu(self.norm_out(h)))
