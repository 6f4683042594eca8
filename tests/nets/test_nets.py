"""Tests of the denoising networks: shapes, conditioning, errors, gradients and embeddings."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from jsonargparse import ArgumentParser
from torch import nn

from diffusion_pl.nets import (
    MLP,
    FourierEmbedding,
    MLPClassifier,
    NoiseEmbedding,
    NoiseFeatures,
    PositionalEmbedding,
    UNet,
    UNetEncoderClassifier,
)

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = {"base_channels": 16, "num_res_blocks": 1, "dropout": 0.0}


def tiny_unet(**kwargs: object) -> UNet:
    """A small UNet (16 channels, one block a level) built under a fixed seed."""
    torch.manual_seed(0)
    return UNet(
        **{"image_size": 8, "channel_mult": (1, 2), "attn_resolutions": (4,), **TINY, **kwargs}
    )


def perturb_output_layers(net: nn.Module) -> None:
    """Re-initialise every zero-initialised weight so conditioning can reach the output."""
    torch.manual_seed(1)
    for p in net.parameters():
        if p.dim() > 1 and not p.detach().any():
            nn.init.normal_(p, std=0.1)


@pytest.mark.parametrize("embedding", [PositionalEmbedding, FourierEmbedding])
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize(
    ("image_size", "channel_mult", "attn_resolutions"),
    [(8, (1, 2), ()), (8, (1, 2), (4,)), (16, (1, 2, 2), (8,)), (16, (1,), (16,))],
)
def test_unet_output_shape(
    embedding: NoiseFeatures,
    in_channels: int,
    image_size: int,
    channel_mult: tuple[int, ...],
    attn_resolutions: tuple[int, ...],
) -> None:
    net = tiny_unet(
        in_channels=in_channels,
        image_size=image_size,
        channel_mult=channel_mult,
        attn_resolutions=attn_resolutions,
        embedding=embedding,
    )
    x = torch.randn(3, in_channels, image_size, image_size)
    assert net(x, torch.rand(3)).shape == x.shape


def test_unet_out_channels_and_plain_resampling() -> None:
    net = tiny_unet(out_channels=2, resample_with_conv=False, skip_rescale=False)
    assert net(torch.randn(2, 3, 8, 8), torch.rand(2)).shape == (2, 2, 8, 8)


@pytest.mark.parametrize("embedding", [PositionalEmbedding, FourierEmbedding])
def test_mlp_output_shape(embedding: NoiseFeatures) -> None:
    torch.manual_seed(0)
    net = MLP(dim=3, hidden=32, depth=2, embedding=embedding)
    x = torch.randn(5, 3)
    assert net(x, torch.rand(5)).shape == x.shape


def test_default_unet_is_the_ddpm_cifar10_model() -> None:
    # 35,746,307 parameters with the defaults (DDPM paper, CIFAR-10: 35.7M).
    # Built on CPU: ~0.4 s here, while a first meta-device build costs ~2.5 s of one-time setup.
    n_params = sum(p.numel() for p in UNet().parameters())
    assert 34e6 <= n_params <= 37e6


@pytest.mark.parametrize(
    "make_net",
    [lambda: tiny_unet(), lambda: MLP(hidden=32, depth=2)],
    ids=["unet", "mlp"],
)
@pytest.mark.parametrize("labels", [(0.1, 0.9), (-3.0, 2.5)], ids=["t", "log_sigma"])
def test_noise_labels_change_output(make_net, labels: tuple[float, float]) -> None:
    net = make_net().eval()
    perturb_output_layers(net)
    x = torch.randn(2, *((3, 8, 8) if isinstance(net, UNet) else (2,)))
    a, b = (net(x, torch.full((2,), label)) for label in labels)
    assert not torch.allclose(a, b, atol=1e-4)
    # A 0-dim or one-element noise label is broadcast over the batch.
    assert torch.equal(net(x, torch.tensor(labels[0])), a)
    assert torch.equal(net(x, torch.tensor([labels[0]])), a)


@pytest.mark.parametrize(
    "make_net",
    [lambda: tiny_unet(num_classes=10), lambda: MLP(hidden=32, depth=2, num_classes=10)],
    ids=["unet", "mlp"],
)
def test_class_labels_change_output(make_net) -> None:
    net = make_net().eval()
    perturb_output_layers(net)
    assert net.num_classes == 10
    x = torch.randn(2, *((3, 8, 8) if isinstance(net, UNet) else (2,)))
    t = torch.full((2,), 0.5)
    out = {k: net(x, t, torch.full((2,), k)) for k in (0, 3, 10)}
    assert not torch.allclose(out[0], out[3], atol=1e-4)
    assert not torch.allclose(out[0], out[10], atol=1e-4)
    # None means "no label": the extra row at index num_classes.
    assert torch.equal(net(x, t), out[10])


def test_unconditional_net_rejects_labels() -> None:
    with pytest.raises(ValueError, match=r"num_classes=None"):
        tiny_unet()(torch.randn(2, 3, 8, 8), torch.rand(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"num_classes=None"):
        MLP()(torch.randn(2, 2), torch.rand(2), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 10, "channel_mult": (1, 2, 2)}, r"image_size=10 .* multiple of 4"),
        ({"image_size": 8, "attn_resolutions": (16,)}, r"\[16\] .* visits \[8, 4\]"),
        (
            {"base_channels": 24, "channel_mult": (1, 3), "num_groups": 32},
            r"32 groups do not divide 144 channels",
        ),
        ({"num_heads": 3}, r"num_heads=3 .* 32"),
        ({"embedding": "fourier"}, r"PositionalEmbedding or .*FourierEmbedding.*'fourier'"),
    ],
)
def test_unet_constructor_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_unet(**kwargs)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((2, 1, 8, 8), r"1 channels .* in_channels=3"),
        ((2, 3, 16, 16), r"16x16 .* image_size=8"),
        ((2, 3, 8), r"\[B, C, H, W\]"),
    ],
)
def test_unet_forward_errors(shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_unet()(torch.randn(shape), torch.rand(shape[0]))


def test_forward_errors_mlp_and_noise_labels() -> None:
    with pytest.raises(ValueError, match=r"\[B, 2\].*\[4, 3\]"):
        MLP()(torch.randn(4, 3), torch.rand(4))
    with pytest.raises(ValueError, match=r"noise_labels has 3 entries.*batch size 4"):
        MLP()(torch.randn(4, 2), torch.rand(3))


def test_gradients_reach_every_parameter() -> None:
    net = tiny_unet(num_classes=3)
    perturb_output_layers(net)
    x = torch.randn(2, 3, 8, 8)
    net(x, torch.rand(2), torch.tensor([0, 3])).square().sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_positional_embedding_formula() -> None:
    emb = PositionalEmbedding(dim=4, max_period=10000.0, label_scale=1000.0)
    t = torch.tensor([0.0, 0.25])
    # Frequencies 10000^(-i/2), i = 0, 1  →  1 and 0.01.
    expected = torch.tensor(
        [
            [0.0, 0.0, 1.0, 1.0],
            [math.sin(250.0), math.sin(2.5), math.cos(250.0), math.cos(2.5)],
        ]
    )
    torch.testing.assert_close(emb(t), expected)


def test_fourier_embedding_is_a_fixed_seeded_buffer() -> None:
    torch.manual_seed(0)
    emb = FourierEmbedding(dim=8, scale=16.0)
    assert list(emb.parameters()) == []
    assert "freqs" in emb.state_dict()
    torch.manual_seed(0)
    torch.testing.assert_close(FourierEmbedding(dim=8).freqs, emb.freqs)
    w = emb.freqs[0].item()
    out = emb(torch.tensor([0.3]))
    torch.testing.assert_close(out[0, 0], torch.tensor(math.sin(2 * math.pi * 0.3 * w)))
    torch.testing.assert_close(out[0, 4], torch.tensor(math.cos(2 * math.pi * 0.3 * w)))


def test_embedding_settings_come_with_its_class() -> None:
    emb = NoiseEmbedding(partial(PositionalEmbedding, label_scale=1.0), features_dim=8, out_dim=16)
    assert emb.features.label_scale == 1.0 and emb.features.dim == 8
    with pytest.raises(ValueError, match=r"even"):
        PositionalEmbedding(dim=7)


@pytest.mark.parametrize(
    ("embedding", "expected"),
    [
        ({}, PositionalEmbedding),
        ({"class_path": "diffusion_pl.nets.FourierEmbedding"}, FourierEmbedding),
        (
            {"class_path": "diffusion_pl.nets.FourierEmbedding", "init_args": {"scale": 4.0}},
            FourierEmbedding,
        ),
    ],
)
def test_yaml_chooses_the_embedding_by_class_path(embedding: dict, expected: type) -> None:
    """A class switched in YAML keeps its own defaults (Fourier's scale 16, not 1000)."""
    parser = ArgumentParser()
    parser.add_argument("--net", type=nn.Module)
    net = {"class_path": "diffusion_pl.nets.MLP", "init_args": {"dim": 2}}
    if embedding:
        net["init_args"]["embedding"] = embedding
    config = parser.parse_object({"net": net})
    torch.manual_seed(0)
    features = parser.instantiate(config).net.embed.features
    assert type(features) is expected
    if expected is PositionalEmbedding:
        assert features.label_scale == 1000.0
    else:  # the first draw of the net: its frequencies N(0, scale²)
        torch.manual_seed(0)
        scale = embedding.get("init_args", {}).get("scale", 16.0)
        torch.testing.assert_close(features.freqs, torch.randn(features.dim // 2) * scale)


def test_mlp_classifier_is_the_mlp_trunk_with_k_outputs() -> None:
    torch.manual_seed(0)
    classifier = MLPClassifier(dim=2, num_classes=3, hidden=16, depth=2, embedding_dim=8)
    torch.manual_seed(0)
    mlp = MLP(dim=2, hidden=16, depth=2, embedding_dim=8)
    trunk = {k: v for k, v in mlp.state_dict().items() if not k.startswith("fc_out")}
    for name, value in trunk.items():  # same layers, same order of initialisation
        torch.testing.assert_close(classifier.state_dict()[name], value, rtol=0, atol=0)
    assert classifier.fc_out.weight.shape == (3, 16)
    assert classifier(torch.randn(5, 2), torch.rand(5)).shape == (5, 3)
    with pytest.raises(ValueError, match=r"MLPClassifier expects x of shape \[B, 2\]"):
        classifier(torch.randn(5, 3), torch.rand(5))


def test_encoder_classifier_trunk_is_the_unet_encoder() -> None:
    settings = {"base_channels": 16, "channel_mult": (1, 2), "num_res_blocks": 1}
    unet = UNet(in_channels=1, image_size=8, attn_resolutions=(4,), **settings)
    classifier = UNetEncoderClassifier(
        in_channels=1, image_size=8, num_classes=10, attn_resolutions=(4,), **settings
    )
    encoder = {k: v.shape for k, v in unet.state_dict().items() if k.startswith("down.")}
    trunk = {
        "down." + k.removeprefix("levels."): v.shape
        for k, v in classifier.state_dict().items()
        if k.startswith("levels.")
    }
    assert trunk == encoder
