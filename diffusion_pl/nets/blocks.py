"""The UNet's building blocks, shared by the denoiser UNet and the noisy encoder classifier."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_pl.tensors import append_dims

__all__ = [
    "AttnBlock",
    "Downsample",
    "ResAttnBlock",
    "ResBlock",
    "UNetLevel",
    "Upsample",
    "encoder_levels",
    "group_norm",
    "res_attn_block",
    "zero_init",
]


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


def res_attn_block(
    cin: int,
    cout: int,
    attn: bool,
    *,
    emb_dim: int,
    dropout: float,
    num_heads: int,
    num_groups: int,
    skip_rescale: bool,
) -> ResAttnBlock:
    """A :class:`ResBlock` from ``cin`` to ``cout`` channels, then attention if ``attn``."""
    resblock = ResBlock(cin, cout, emb_dim, dropout, num_groups, skip_rescale)
    attnblock = AttnBlock(cout, num_heads, num_groups, skip_rescale) if attn else None
    return ResAttnBlock(resblock, attnblock)


def encoder_levels(
    block: Callable[[int, int, bool], ResAttnBlock],
    base_channels: int,
    channel_mult: Sequence[int],
    num_res_blocks: int,
    resolutions: Sequence[int],
    attn_resolutions: Sequence[int],
    resample_with_conv: bool,
) -> tuple[nn.ModuleList, list[int]]:
    """The UNet's encoder (also the noisy classifier's trunk): one :class:`UNetLevel` per
    resolution, ``num_res_blocks`` blocks each, downsampling between levels.

    Args:
        block: ``block(cin, cout, attn)`` builds one block (:func:`res_attn_block`).
        base_channels: channels of the input feature map (after ``conv_in``).
        channel_mult: per-level channel multipliers.
        num_res_blocks: blocks per level.
        resolutions: the resolution of each level.
        attn_resolutions: resolutions whose blocks attend.
        resample_with_conv: strided-conv downsampling, else average pooling.

    Returns:
        The levels, and the channels of every skip they push (``conv_in``'s first).

    Reference: Ho et al. (2020), Appendix B.
    """
    skip_channels, ch = [base_channels], base_channels
    levels = nn.ModuleList()
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
        levels.append(UNetLevel(blocks, resample))
    return levels, skip_channels
