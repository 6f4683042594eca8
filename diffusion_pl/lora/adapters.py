"""LoRA adapters on a net, through peft: the setting, adding, reading, combining and merging.

A LoRA adapter (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", Eq. 3)
adds a low-rank update to a frozen layer: h = W x + (α / r) B A x, with A ∈ R^{r×k} drawn at
random and B ∈ R^{d×r} zero at the start, so an adapter starts as no change at all. For a
convolution A is a convolution with W's kernel to r channels and B a 1×1 convolution back.
Several adapters combine by adding their updates, each with its own weight λ_i:
h = W x + Σ_i λ_i (α_i / r_i) B_i A_i x (LCM-LoRA, Luo et al. 2023b, Sec. 3.2: τ = λ₁ τ_style +
λ₂ τ_LCM); merging writes W + Σ_i λ_i (α_i / r_i) B_i A_i into the layer.

peft does the layers (``inject_adapter_in_model`` replaces each target ``nn.Linear`` /
``nn.Conv2d`` in place by a LoRA layer that keeps the original as ``base_layer``), their
scaling, several active adapters and merging. It is imported only when adapters are used
(:func:`peft_lora`). The net stays the same object of the same class, so everything that
reads a net (the formulations, the samplers, NFE counting) is unchanged; its ``state_dict``
keys gain ``.base_layer`` for the wrapped layers and ``.lora_A.NAME`` / ``.lora_B.NAME`` for
adapter ``NAME``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import Tensor, nn

from diffusion_pl.errors import MissingDependency

__all__ = [
    "LoRA",
    "activate",
    "adapter_names",
    "adapter_state",
    "add_adapter",
    "base_state",
    "load_adapter_state",
    "load_base_state",
    "merge_adapters",
    "peft_lora",
    "target_names",
]

INSTALL_HINT = "pip install 'diffusion-pl[lora]' (or: pip install peft)"
_ADAPTER_PARTS = ("lora_A", "lora_B")
_BASE_PART = "base_layer"


def peft_lora() -> ModuleType:
    """peft's ``peft`` module, imported on first use.

    Raises:
        MissingDependency: peft is not installed (the message gives the pip command).
    """
    try:
        import peft
        import peft.tuners.lora
    except ImportError as err:
        raise MissingDependency(
            f"LoRA adapters need peft, which is not installed: {INSTALL_HINT}"
        ) from err
    return peft


@dataclass(frozen=True)
class LoRA:
    """LoRA adapters instead of the full net: h = W x + (α / r) B A x on each target layer.

    In YAML: ``lora: {rank: 8, alpha: 8, target_modules: null, dropout: 0.0}`` (on any
    formulation), with ``base_ckpt:`` the frozen base.

    Args:
        rank: r, the rank of each update B A (> 0). At the default 8 the adapters of the digits
            UNet (configs/digits/vdm_cond.yaml) are 8.6 % of its parameters.
        alpha: α; the update is scaled by α / r. None: α = r (scale 1).
        target_modules: names of the layers to adapt, each a module name of the net or its
            last parts (``qkv`` adapts every attention block's ``…attn.qkv``); each must name
            at least one ``nn.Linear`` or ``nn.Conv2d``. None: every ``nn.Linear`` and
            ``nn.Conv2d`` of the net (the UNet's convolutions, linear layers, attention
            projections and embedding layers).
        dropout: dropout probability on the input of each adapter (peft's ``lora_dropout``).
    """

    rank: int = 8
    alpha: float | None = None
    target_modules: tuple[str, ...] | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be a positive integer, got {self.rank} (e.g. 8)")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"lora.alpha must be > 0 or null (= rank), got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("lora.target_modules is empty: name layers, or null for all of them")

    @property
    def scaling(self) -> float:
        """α / r, the factor of B A."""
        return (self.rank if self.alpha is None else self.alpha) / self.rank

    def as_dict(self) -> dict[str, object]:
        """The setting as plain values (for the adapters file)."""
        targets = None if self.target_modules is None else list(self.target_modules)
        return {"rank": self.rank, "alpha": self.alpha, "target_modules": targets,
                "dropout": self.dropout}  # fmt: skip


def target_names(net: nn.Module, targets: tuple[str, ...] | None) -> list[str]:
    """The full module names of the layers ``targets`` names (:class:`LoRA`'s
    ``target_modules``): every ``nn.Linear`` and ``nn.Conv2d`` when None.

    Raises:
        ValueError: a target names no ``nn.Linear`` or ``nn.Conv2d`` of the net.
    """
    layers = _layers(net)
    if targets is None:
        return layers
    chosen = []
    for target in targets:
        found = [n for n in layers if n == target or n.endswith(f".{target}")]
        if not found:
            last_parts = sorted({n.rsplit(".", 1)[-1] for n in layers})
            raise ValueError(
                f"lora.target_modules: {target!r} names no nn.Linear or nn.Conv2d of the "
                f"{type(net).__name__}; its layers end in {', '.join(last_parts)}"
            )
        chosen += [n for n in found if n not in chosen]
    return chosen


def _layers(net: nn.Module) -> list[str]:
    """The names of the net's ``nn.Linear`` and ``nn.Conv2d`` layers; a layer that already has
    adapters counts as the layer it wraps (its peft parts are not layers of the net)."""
    names = []
    for name, module in net.named_modules():
        inner = getattr(module, _BASE_PART, None)
        kind = type(inner) if isinstance(inner, nn.Module) else type(module)
        inside = {_BASE_PART, *_ADAPTER_PARTS} & set(name.split("."))
        if kind in (nn.Linear, nn.Conv2d) and not inside:
            names.append(name)
    return names


def add_adapter(net: nn.Module, lora: LoRA, name: str, targets: list[str] | None = None) -> None:
    """Add the zero-initialised adapter ``name`` to ``net`` in place, and freeze everything else.

    Args:
        net: the net (any ``nn.Module``); it stays the same object.
        lora: rank, α, target layers and dropout.
        name: the adapter's name (several adapters have several names).
        targets: full module names to adapt, overriding ``lora.target_modules`` (an adapters
            file records them as resolved when it was trained).
    """
    peft = peft_lora()
    config = peft.LoraConfig(
        r=lora.rank,
        lora_alpha=lora.rank if lora.alpha is None else lora.alpha,
        target_modules=targets if targets is not None else target_names(net, lora.target_modules),
        lora_dropout=lora.dropout,
        bias="none",
    )
    with warnings.catch_warnings():  # "already found a peft_config": a second adapter, wanted
        warnings.filterwarnings("ignore", message=".*peft_config.*")
        peft.inject_adapter_in_model(config, net, adapter_name=name)
    for key, p in net.named_parameters():
        p.requires_grad_(_adapter_of(key) == name)


def _lora_layers(net: nn.Module) -> list[nn.Module]:
    """The net's peft LoRA layers."""
    layer_class = peft_lora().tuners.lora.LoraLayer
    return [m for m in net.modules() if isinstance(m, layer_class)]


def _adapter_of(key: str) -> str | None:
    """The adapter a state-dict key belongs to (``…lora_A.NAME.weight`` → NAME), or None."""
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in _ADAPTER_PARTS:
            return parts[i + 1]
    return None


def adapter_names(net: nn.Module) -> list[str]:
    """The names of the adapters ``net`` holds, in the order they were added."""
    names: list[str] = []
    for key in net.state_dict():
        name = _adapter_of(key)
        if name is not None and name not in names:
            names.append(name)
    return names


def adapter_state(net: nn.Module, name: str) -> dict[str, Tensor]:
    """Adapter ``name``'s weights, keyed without the name (``…conv1.lora_A.weight``), on CPU."""
    state = {}
    for key, value in net.state_dict().items():
        if _adapter_of(key) == name:
            state[key.replace(f".{name}.", ".", 1)] = value.detach().cpu().clone()
    return state


def load_adapter_state(net: nn.Module, state: Mapping[str, Tensor], name: str) -> None:
    """Load weights saved by :func:`adapter_state` into the net's adapter ``name``.

    Raises:
        ValueError: the weights do not fit the adapter's layers (names or shapes).
    """
    wanted = {k for k in net.state_dict() if _adapter_of(k) == name}
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        i = next((j for j, part in enumerate(parts) if part in _ADAPTER_PARTS), None)
        if i is not None:
            key = ".".join([*parts[: i + 1], name, *parts[i + 1 :]])
        renamed[key] = value
    if set(renamed) != wanted:
        odd = sorted(set(renamed) ^ wanted)[:3]
        raise ValueError(f"the adapter's weights do not fit the net's layers (e.g. {odd})")
    own = net.state_dict()
    shapes = [k for k, v in renamed.items() if tuple(v.shape) != tuple(own[k].shape)]
    if shapes:
        raise ValueError(f"the adapter's weights do not fit the net's layers' shapes ({shapes[0]})")
    net.load_state_dict(renamed, strict=False)


def base_state(net: nn.Module) -> dict[str, Tensor]:
    """The net's own weights, without adapters and keyed as the net without them."""
    return {
        key.replace(f".{_BASE_PART}.", "."): value
        for key, value in net.state_dict().items()
        if _adapter_of(key) is None
    }


def load_base_state(net: nn.Module, state: Mapping[str, Tensor], who: str) -> None:
    """Load a plain net's ``state_dict`` into ``net``'s own weights (its adapters untouched).

    Raises:
        ValueError: ``state`` is not of a net of the same layers and shapes (``who`` names it).
    """
    own = [k for k in net.state_dict() if _adapter_of(k) is None]
    mine = {k.replace(f".{_BASE_PART}.", "."): k for k in own}
    shapes = {k: tuple(v.shape) for k, v in base_state(net).items()}
    if shapes != {k: tuple(v.shape) for k, v in state.items()}:
        raise ValueError(
            f"{who} holds a net whose layers or shapes differ from this model's "
            f"{type(net).__name__}: give the model the base's net config"
        )
    net.load_state_dict({mine[k]: v for k, v in state.items()}, strict=False)


def activate(net: nn.Module, scales: Mapping[str, float]) -> None:
    """Make the adapters ``scales`` names act together, adapter i with weight λ_i:
    h = W x + Σ_i λ_i (α_i / r_i) B_i A_i x (peft's ``set_adapter`` and ``set_scale``)."""
    for layer in _lora_layers(net):
        present = [n for n in scales if n in layer.lora_A]
        layer.set_adapter(present)
        for name in present:
            layer.set_scale(name, float(scales[name]))
        layer.requires_grad_(False)


@torch.no_grad()
def merge_adapters(net: nn.Module) -> nn.Module:
    """Merge the active adapters into the layers' weights (W ← W + Σ_i λ_i (α_i / r_i) B_i A_i)
    and put the plain layers back: ``net`` is then a net without adapters (returned)."""
    for layer in _lora_layers(net):
        layer.merge()
    for key, module in list(net.named_modules()):
        if isinstance(module, peft_lora().tuners.lora.LoraLayer):
            parent, _, child = key.rpartition(".")
            setattr(net.get_submodule(parent), child, module.get_base_layer())
    for module in net.modules():
        if "peft_config" in vars(module):
            del module.peft_config
    return net
