"""A DDPM++/NCSN++-style UNet denoiser for ``[B, C, H, W]`` images."""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_pl.nets.embeddings import EmbeddingKind, NoiseEmbedding
from diffusion_pl.tensors import append_dims

__all__ = ["UNet"]


def group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    """GroupNorm with ``min(num_groups, channels // 4)`` groups (at least 4 channels a group).

    Args:
        channels: number of channels to normalise.
        num_groups: the largest number of groups to use.

    Reference: Wu & He (2018), Group Normalization.
    """
    groups = min(num_groups, channels // 4)
    if groups < 1 or channels % groups:
        raise ValueError(
            f"GroupNorm: {groups} groups do not divide {channels} channels; choose base_channels "
            f"and channel_mult so every channel count is a multiple of {num_groups} (or of 4 "
            f"below {4 * num_groups} channels), or change num_groups"
        )
    return nn.GroupNorm(groups, channels, eps=1e-6)


Layer = TypeVar("Layer", nn.Conv2d, nn.Linear)


def zero_init(module: Layer) -> Layer:
    """Zero a layer's weight and bias so the branch it ends starts as the identity/zero."""
    nn.init.zeros_(module.weight)
    nn.init.zeros_(module.bias)
    return module


class ResBlock(nn.Module):
    """GN → SiLU → Conv3×3 → +Linear(emb) → GN → SiLU → Dropout → Conv3×3, plus a skip path.

    Args:
        in_channels: input channels.
        out_channels: output channels (a 1×1 conv on the skip path when they differ).
        emb_dim: width of the noise/class embedding.
        dropout: dropout probability before the second convolution.
        num_groups: largest GroupNorm group count.
        skip_rescale: divide the residual sum by √2 (NCSN++).

    Reference: Ho et al. (2020), Appendix B; Song et al. (2021), NCSN++ ``ResnetBlockDDPM``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        dropout: float,
        num_groups: int,
        skip_rescale: bool,
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, num_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_channels)
        self.norm2 = group_norm(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        same = in_channels == out_channels
        self.skip = nn.Identity() if same else nn.Conv2d(in_channels, out_channels, 1)
        self.out_scale = 2**-0.5 if skip_rescale else 1.0

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """Apply the block.

        Args:
            x: ``[B, in_channels, H, W]``.
            emb: ``[B, emb_dim]`` embedding (pre-activation).

        Returns:
            ``[B, out_channels, H, W]``.
        """
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + append_dims(self.emb_proj(F.silu(emb)), h.ndim)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.skip(x) + h) * self.out_scale


class AttnBlock(nn.Module):
    """Multi-head self-attention over all pixels: GN → qkv linear → fused attention → linear.

    The pixels are treated as tokens ``[B, H·W, C]``, so q, k and v come out of one matmul with
    each head's channels contiguous — the layout ``scaled_dot_product_attention`` needs for its
    fused (flash) kernels on the CPU and the GPU; q, k, v cut from a 1×1 convolution's
    ``[B, C, H·W]`` output have stride H·W there and fall back to the unfused math kernel, which
    stores the whole H·W × H·W attention matrix (measured in benchmarks/RESULTS.md). The output
    projection is zero-initialized, so the block starts as the identity.

    Args:
        channels: channels of the feature map.
        num_heads: attention heads (must divide ``channels``).
        num_groups: largest GroupNorm group count.
        skip_rescale: divide the residual sum by √2 (NCSN++).

    Reference: Vaswani et al. (2017); Ho et al. (2020), Appendix B.
    """

    def __init__(self, channels: int, num_heads: int, num_groups: int, skip_rescale: bool) -> None:
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the {channels} attention channels")
        self.num_heads = num_heads
        self.norm = group_norm(channels, num_groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_init(nn.Linear(channels, channels))
        self.out_scale = 2**-0.5 if skip_rescale else 1.0

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` of shape ``[B, C, H, W]``; returns the same shape."""
        b, c, height, width = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, H·W, C]
        qkv = self.qkv(tokens).view(b, height * width, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, H·W, C / heads]
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, c)
        h = self.proj(h).transpose(1, 2).reshape(b, c, height, width)
        return (x + h) * self.out_scale


class ResAttnBlock(nn.Module):
    """A :class:`ResBlock` optionally followed by an :class:`AttnBlock`.

    Args:
        res: the residual block.
        attn: the attention block, or ``None``.

    Reference: Ho et al. (2020), Appendix B.
    """

    def __init__(self, res: ResBlock, attn: AttnBlock | None) -> None:
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """Apply both blocks; ``x`` is ``[B, C, H, W]``, ``emb`` is ``[B, emb_dim]``."""
        h = self.res(x, emb)
        return h if self.attn is None else self.attn(h)


class Downsample(nn.Module):
    """Halve the resolution: Conv3×3 stride 2, or 2×2 average pooling.

    Args:
        channels: channels of the feature map (unchanged).
        with_conv: use the strided convolution.

    Reference: Ho et al. (2020), Appendix B.
    """

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.op = conv if with_conv else nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        """Downsample ``[B, C, H, W]`` to ``[B, C, H/2, W/2]``."""
        return self.op(x)


class Upsample(nn.Module):
    """Double the resolution: nearest neighbour, optionally followed by a Conv3×3.

    Args:
        channels: channels of the feature map (unchanged).
        with_conv: apply the convolution after upsampling.

    Reference: Ho et al. (2020), Appendix B.
    """

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Upsample ``[B, C, H, W]`` to ``[B, C, 2H, 2W]``."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNetLevel(nn.Module):
    """One resolution of the UNet: its blocks and the resampling that follows them.

    Args:
        blocks: the level's :class:`ResAttnBlock` s.
        resample: :class:`Downsample` (encoder), :class:`Upsample` (decoder) or ``None``.

    Reference: Ho et al. (2020), Appendix B.
    """

    def __init__(self, blocks: nn.ModuleList, resample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = blocks
        self.resample = resample

    def encode(self, h: Tensor, emb: Tensor, skips: list[Tensor]) -> Tensor:
        """Run the encoder level, pushing each block output (and the downsampled map) to skips."""
        for block in self.blocks:
            h = block(h, emb)
            skips.append(h)
        if self.resample is not None:
            h = self.resample(h)
            skips.append(h)
        return h

    def decode(self, h: Tensor, emb: Tensor, skips: list[Tensor]) -> Tensor:
        """Run the decoder level, concatenating one popped skip before every block."""
        for block in self.blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        if self.resample is not None:
            h = self.resample(h)
        return h


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
        embedding: noise-label features, ``"positional"`` or ``"fourier"``.
        embedding_scale: the embedding's ``scale``; ``None`` keeps its default (1000 positional,
            16 Fourier).
        num_classes: number of classes K for a class-conditional net; label K means "no label".
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
        embedding: EmbeddingKind = "positional",
        embedding_scale: float | None = None,
        num_classes: int | None = None,
        resample_with_conv: bool = True,
        skip_rescale: bool = True,
        num_groups: int = 32,
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
        emb_dim = 4 * base_channels
        self.embed = NoiseEmbedding(embedding, base_channels, emb_dim, embedding_scale, num_classes)

        def block(cin: int, cout: int, attn: bool) -> ResAttnBlock:
            resblock = ResBlock(cin, cout, emb_dim, dropout, num_groups, skip_rescale)
            attnblock = AttnBlock(cout, num_heads, num_groups, skip_rescale) if attn else None
            return ResAttnBlock(resblock, attnblock)

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        skip_channels, ch = [base_channels], base_channels
        self.down = nn.ModuleList()
        for level, (mult, res) in enumerate(zip(channel_mult, resolutions, strict=True)):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(block(ch, base_channels * mult, res in attn_resolutions))
                ch = base_channels * mult
                skip_channels.append(ch)
            resample = None
            if level < len(channel_mult) - 1:
                resample = Downsample(ch, resample_with_conv)
                skip_channels.append(ch)
            self.down.append(UNetLevel(blocks, resample))

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
            noise_labels: ``[B]`` float noise conditioning (``t``, ``log σ``, …), or one value.
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
