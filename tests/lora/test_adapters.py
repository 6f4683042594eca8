"""LoRA adapters through peft: zero-initialised adapters change nothing, combined adapters add
their updates by hand's formula, merged = unmerged, the adapters' share of the digits UNet, the
adapters file and its base hash."""

from __future__ import annotations

import builtins
import copy
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from diffusion_pl.errors import MissingDependency
from diffusion_pl.formulations import VDM
from diffusion_pl.lora import (
    Adapters,
    LoRA,
    activate,
    add_adapter,
    apply_adapters,
    base_state,
    load_adapter_state,
    merge_adapters,
    peft_lora,
    read_adapters,
    target_names,
    weights_sha256,
)
from diffusion_pl.nets import UNet
from diffusion_pl.objectives import Teacher

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]


def digits_unet() -> UNet:
    """The UNet of configs/digits/vdm_cond.yaml (the LoRA configs' base), weights perturbed so
    that no output is zero by construction (its residual branches start at zero)."""
    config = yaml.safe_load((ROOT / "configs/digits/vdm_cond.yaml").read_text())
    net = UNet(**config["model"]["init_args"]["net"]["init_args"])
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


class InMemory(Teacher):
    """A base handed in without a file."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def load(self, map_location: str | torch.device = "cpu") -> nn.Module:
        return self.module

    def __str__(self) -> str:
        return "in-memory base"


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 1, 8, 8, generator=g)
    t = torch.rand(6, generator=g)
    return x, t, torch.tensor([0, 3, 9, 10, 5, 10])  # 10: the null label


def randomize_adapters(net: nn.Module, name: str, seed: int) -> None:
    """Give adapter ``name`` nonzero B (and new A) weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in net.named_parameters():
            if f".{name}." in key:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def test_zero_initialised_adapters_leave_the_base_bit_identical() -> None:
    torch.manual_seed(0)
    base = VDM(digits_unet(), (1, 8, 8)).eval()
    tuned = VDM(digits_unet(), (1, 8, 8), lora=LoRA(), base_ckpt=InMemory(base))
    tuned.setup("fit")
    x, t, y = inputs()
    tuned.eval()
    with torch.no_grad():
        assert torch.equal(tuned.net(x, t, y), base.net(x, t, y))
        assert torch.equal(tuned.loss(x, y, torch.Generator().manual_seed(1)),
                           base.loss(x, y, torch.Generator().manual_seed(1)))  # fmt: skip
    tuned.train(), base.train()  # the net's dropout draws the same masks from the same seed
    outputs = []
    for module in (tuned, base):
        torch.manual_seed(2)
        outputs.append(module.net(x, t, y))
    assert torch.equal(*outputs)
    # Only the adapters train, and the optimizer sees only them.
    trainable = {n for n, p in tuned.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A.default." in n or ".lora_B.default." in n for n in trainable)
    optimized = tuned.configure_optimizers().param_groups[0]["params"]
    assert {id(p) for p in optimized} == {id(p) for p in tuned.parameters() if p.requires_grad}


def test_adapters_are_under_10_percent_of_the_digits_unet_at_the_default_rank() -> None:
    net = digits_unet()
    total = sum(p.numel() for p in net.parameters())
    # LoRA's size by hand: r (in + out) per Linear, r (in k_h k_w + out) per Conv2d (A is a
    # convolution with W's kernel to r channels, B a 1x1 one back), on every one of them.
    rank = LoRA().rank
    expected = sum(
        rank * (m.in_features + m.out_features) if isinstance(m, nn.Linear)
        else rank * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
        for m in net.modules() if type(m) in (nn.Linear, nn.Conv2d)
    )  # fmt: skip
    add_adapter(net, LoRA(), "default")
    adapters = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert adapters == expected
    assert adapters / total == pytest.approx(0.0864, abs=5e-4)  # 345,168 of 3,992,833
    assert adapters / total <= 0.10


def test_combined_adapters_add_their_updates_as_written_by_hand() -> None:
    """h = W x + b + Σ_i λ_i (α_i / r_i) B_i A_i x on a Linear layer, in float64."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4)).double()
    base_w, base_b = net[0].weight.detach().clone(), net[0].bias.detach().clone()
    settings = {"a": LoRA(rank=2, alpha=3.0), "b": LoRA(rank=3)}
    for seed, (name, lora) in enumerate(settings.items()):
        add_adapter(net, lora, name)
        randomize_adapters(net, name, seed)
    activate(net, {"a": 0.7, "b": -0.4})
    x = torch.randn(7, 5, dtype=torch.float64)
    layer = net[0]
    update = sum(
        scale * settings[n].scaling * layer.lora_B[n].weight @ layer.lora_A[n].weight
        for n, scale in (("a", 0.7), ("b", -0.4))
    )
    expected = x @ (base_w + update).T + base_b
    torch.testing.assert_close(net(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_merged_adapters_equal_unmerged_ones(dtype: torch.dtype, atol: float) -> None:
    """Within 1e-6 in float64 with a margin (1e-10: the algebra); in float32 the rounding of
    W + ΔW through the UNet's 30 layers leaves ~1e-6 of outputs of size ~3 (1e-5 allowed)."""
    torch.manual_seed(0)
    net = digits_unet().eval().to(dtype)
    plain_keys = set(net.state_dict())
    for seed, name in enumerate(("style", "lcm")):
        add_adapter(net, LoRA(rank=4 + 4 * seed), name)
        randomize_adapters(net, name, seed)
    activate(net, {"style": 0.8, "lcm": 1.3})
    x, t, y = inputs()
    with torch.no_grad():
        unmerged = net(x.to(dtype), t.to(dtype), y)
        merged = merge_adapters(net)(x.to(dtype), t.to(dtype), y)
    assert (unmerged - net(x.to(dtype), t.to(dtype), torch.full_like(y, 10))).abs().max() > 0.1
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=atol)
    assert set(net.state_dict()) == plain_keys  # a plain net again
    assert not any(isinstance(m, peft_lora().tuners.lora.LoraLayer) for m in net.modules())


def test_adapters_file_loads_on_its_base_and_refuses_another(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = digits_unet().eval()
    trained = copy.deepcopy(base)
    add_adapter(trained, LoRA(rank=4, alpha=2.0, target_modules=("qkv", "proj")), "default")
    randomize_adapters(trained, "default", 0)
    assert weights_sha256(base_state(trained)) == weights_sha256(base.state_dict())
    setting = LoRA(rank=4, alpha=2.0, target_modules=("qkv", "proj"))
    adapters = Adapters.of(trained, "default", setting, base_ckpt="base.ckpt", trained_with="VDM",
                           step=3)  # fmt: skip
    file = adapters.save(tmp_path / "a.pt")
    read = read_adapters(file)
    assert read.targets == ["down.1.blocks.0.attn.proj", "down.1.blocks.0.attn.qkv",
                            "down.1.blocks.1.attn.proj", "down.1.blocks.1.attn.qkv",
                            "mid.0.attn.proj", "mid.0.attn.qkv", "up.0.blocks.0.attn.proj",
                            "up.0.blocks.0.attn.qkv", "up.0.blocks.1.attn.proj",
                            "up.0.blocks.1.attn.qkv", "up.0.blocks.2.attn.proj",
                            "up.0.blocks.2.attn.qkv"]  # fmt: skip
    assert (read.step, read.base_ckpt, read.lora.scaling) == (3, "base.ckpt", 0.5)
    assert read.parameters() == sum(p.numel() for p in trained.parameters() if p.requires_grad)

    fresh = copy.deepcopy(base)
    assert apply_adapters(fresh, [(str(file), 1.0)], "the base") == {"lora0": 1.0}
    trained.requires_grad_(False)  # as `fresh`: torch's CPU convolutions pick their kernel by it
    x, t, y = inputs()
    with torch.no_grad():
        assert torch.equal(fresh(x, t, y), trained(x, t, y))

    other = digits_unet()  # other weights, the same layers
    with pytest.raises(ValueError) as refused:
        apply_adapters(other, [(str(file), 1.0)], "--ckpt_path other.ckpt")
    message = str(refused.value)
    assert "\n" not in message
    assert f"were trained on base.ckpt (base weights sha256 {read.base_sha256[:16]}…)" in message
    other_hash = weights_sha256(other.state_dict())[:16]
    assert f"--ckpt_path other.ckpt has other weights (sha256 {other_hash}…)" in message


def test_adapter_weights_must_fit_the_layers() -> None:
    net = digits_unet()
    add_adapter(net, LoRA(rank=2, target_modules=("qkv",)), "a")
    with pytest.raises(ValueError, match="do not fit the net's layers"):
        load_adapter_state(net, {"conv_in.lora_A.weight": torch.zeros(2, 1, 3, 3)}, "a")


def test_settings_and_targets_are_checked() -> None:
    net = digits_unet()
    assert target_names(net, ("mid.0.attn.qkv",)) == ["mid.0.attn.qkv"]
    assert len(target_names(net, ("conv1",))) == 4 + 2 + 6  # each residual block's first conv
    with pytest.raises(ValueError, match=r"'attn' names no nn.Linear or nn.Conv2d of the UNet; "
                       r"its layers end in conv, conv1, conv2, conv_in, conv_out, emb_proj, fc1, "
                       r"fc2, op, proj, qkv, skip$"):  # fmt: skip
        target_names(net, ("attn",))
    for bad, match in [({"rank": 0}, "rank must be a positive integer"),
                       ({"alpha": 0.0}, "alpha must be > 0 or null"),
                       ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
                       ({"target_modules": ()}, "target_modules is empty")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            LoRA(**bad)
    base = InMemory(VDM(digits_unet(), (1, 8, 8)))
    with pytest.raises(ValueError, match="lora is set but base_ckpt is not"):
        VDM(digits_unet(), (1, 8, 8), lora=LoRA())
    with pytest.raises(ValueError, match="base_ckpt is set but lora is not"):
        VDM(digits_unet(), (1, 8, 8), base_ckpt=base)
    narrow = UNet(in_channels=1, image_size=8, base_channels=32, channel_mult=(1, 2),
                  attn_resolutions=(4,), num_classes=10)  # fmt: skip
    tuned = VDM(narrow, (1, 8, 8), lora=LoRA(), base_ckpt=base)
    with pytest.raises(ValueError, match="base_ckpt in-memory base holds a net whose layers or "
                       "shapes differ from this model's UNet"):  # fmt: skip
        tuned.setup("fit")
    lora_run = VDM(digits_unet(), (1, 8, 8), lora=LoRA(), base_ckpt=base)
    tuned = VDM(digits_unet(), (1, 8, 8), lora=LoRA(), base_ckpt=InMemory(lora_run))
    with pytest.raises(ValueError, match="is a LoRA run's checkpoint .*: merge them into a plain "
                       r"checkpoint first \(diffusion-pl lora merge\)"):  # fmt: skip
        tuned.setup("fit")


def test_missing_peft_is_one_line_with_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_peft(name: str, *args, **kwargs):
        if name == "peft" or name.startswith("peft."):
            raise ImportError("No module named 'peft'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    with pytest.raises(MissingDependency, match=r"need peft, which is not installed: "
                       r"pip install 'diffusion-pl\[lora\]' \(or: pip install peft\)"):  # fmt: skip
        add_adapter(nn.Linear(2, 2), LoRA(), "default")
