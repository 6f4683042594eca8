"""LoRA adapters through peft: the ``lora:`` setting of any fit, the adapters file, combining
adapters at sampling and merging them (:mod:`.adapters`, :mod:`.files`).

peft is an optional dependency (``pip install 'diffusion-pl[lora]'``), imported only when
adapters are used; this package imports without it.
"""

from diffusion_pl.lora.adapters import (
    LoRA,
    activate,
    adapter_names,
    adapter_state,
    add_adapter,
    base_state,
    load_adapter_state,
    load_base_state,
    merge_adapters,
    peft_lora,
    target_names,
)
from diffusion_pl.lora.files import (
    FORMAT,
    MERGED_LCM,
    Adapters,
    apply_adapters,
    lcm_reading,
    merged_lcm_reading,
    parse_adapters,
    read_adapters,
    weights_sha256,
)

__all__ = [
    "FORMAT",
    "MERGED_LCM",
    "Adapters",
    "LoRA",
    "activate",
    "adapter_names",
    "adapter_state",
    "add_adapter",
    "apply_adapters",
    "base_state",
    "lcm_reading",
    "load_adapter_state",
    "load_base_state",
    "merge_adapters",
    "merged_lcm_reading",
    "parse_adapters",
    "peft_lora",
    "read_adapters",
    "target_names",
    "weights_sha256",
]
