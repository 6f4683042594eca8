"""The patch discriminator of pix2pix (Isola et al. 2017), as LDM's first stage uses it."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["PatchDiscriminator"]


class PatchDiscriminator(nn.Module):
    """A PatchGAN: strided 4×4 convolutions, one real/fake logit per image patch.

    ``num_layers`` stride-2 convolutions (channels ``channels · 2^k``, capped at 8×), one
    stride-1 convolution, and a 1-channel output: each logit sees a patch (70×70 pixels at
    three layers, LDM's setting; the digits config uses two on 32×32 images). Batch norm as in
    pix2pix; weights N(0, 0.02) as there.

    Args:
        in_channels: the images' channels.
        channels: the first layer's channels.
        num_layers: stride-2 layers.
    """

    def __init__(self, in_channels: int = 1, channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        if in_channels <= 0 or channels <= 0 or num_layers < 1:
            raise ValueError(
                f"in_channels ({in_channels}) and channels ({channels}) must be > 0 and "
                f"num_layers ({num_layers}) >= 1"
            )
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)
        ]  # fmt: skip
        width = channels
        for k in range(1, num_layers + 1):
            out = channels * min(2**k, 8)
            stride = 2 if k < num_layers else 1
            layers += [nn.Conv2d(width, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out),
                       nn.LeakyReLU(0.2, True)]  # fmt: skip
            width = out
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.layers = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Patch logits ``[B, 1, h, w]`` of images ``[B, C, H, W]``."""
        return self.layers(x)
