"""LCM-LoRA (Luo et al. 2023b): the LCM objective with LoRA adapters on the frozen teacher, ω
fixed. The student starts as the teacher's consistency function bit for bit, its target network
holds the teacher's weights too, only the adapters are optimised, and the adapters file says how
to read the adapted teacher (so that the teacher's checkpoint with them samples as the student)."""

from __future__ import annotations

import pytest
import torch
from guided_mixture import VP, InMemory

from diffusion_pl.formulations import VDM, LatentConsistencyModel
from diffusion_pl.lcm import LCMReading
from diffusion_pl.lora import LoRA, adapter_names, base_state
from diffusion_pl.nets import MLP
from diffusion_pl.samplers import LCMSampler

pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")

OMEGA = 2.0


def mlp(seed: int, labels: int = 1) -> MLP:
    torch.manual_seed(seed)
    return MLP(dim=2, hidden=16, depth=2, num_classes=2, num_noise_labels=labels)


def teacher() -> VDM:
    """A class-conditional ε-prediction VDM on the VP path (random weights: any teacher)."""
    return VDM(mlp(0), (2,), path=VP, p_uncond=0.1).eval()


def lcm_lora(base: VDM, target_ema: float = 0.0, **kwargs: object) -> LatentConsistencyModel:
    """An LCM-LoRA student of ``base`` (rank 2, ω fixed at 2), its net of other random weights
    until ``setup`` loads the base."""
    return LatentConsistencyModel(
        mlp(1), (2,), path=VP, omega_min=OMEGA, omega_max=OMEGA, teacher=InMemory(base),
        lora=LoRA(rank=2), target_ema=target_ema, **kwargs,
    )  # fmt: skip


def consistency_x0(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    y = torch.tensor([0, 1] * (x.shape[0] // 2))
    with torch.no_grad():
        return model.denoiser(y)(x, t).x0


@pytest.mark.parametrize("target_ema", [0.0, 0.9])
def test_zero_adapters_start_as_the_teachers_consistency_function(target_ema: float) -> None:
    """After setup, the student is the teacher's net with zero adapters: its consistency function
    equals LCM's reading of the bare teacher bit for bit (at every t, the boundary included), and
    so does the EMA target's (whose base the setup loads too)."""
    base = teacher()
    student = lcm_lora(base, target_ema)
    student.setup("fit")
    reading = LatentConsistencyModel.reading_of(base, student.reading, LCMSampler())
    x, t = torch.randn(8, 2), torch.tensor([0.001, 0.002, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    expected = consistency_x0(reading, x, t)
    assert torch.equal(consistency_x0(student, x, t), expected)
    if target_ema:
        assert student.target_net is not None
        mine, target = student.net.state_dict(), student.target_net.state_dict()
        assert mine.keys() == target.keys()
        assert all(torch.equal(mine[k], target[k]) for k in mine)
        assert all(torch.equal(v, base.net.state_dict()[k])
                   for k, v in base_state(student.target_net).items())  # fmt: skip
    # The boundary: f(x, t_min) = x whatever the weights.
    assert torch.equal(expected[:1], x[:1])
    assert student.reading == LCMReading(0.5, 10.0, None, OMEGA)


def test_only_the_adapters_are_optimised_and_written() -> None:
    base = teacher()
    student = lcm_lora(base, 0.9)
    student.setup("fit")
    optimizer = student.configure_optimizers()  # no lr_scheduler: the optimizer alone
    params = [p for group in optimizer.param_groups for p in group["params"]]
    adapters = student.adapters(0)
    assert sum(p.numel() for p in params) == adapters.parameters() > 0
    assert all(p.requires_grad for p in params)
    assert adapters.lcm == student.reading and adapter_names(student.net) == ["default"]


def test_what_lcm_lora_cannot_do_is_refused_naming_the_fix() -> None:
    base = teacher()
    with pytest.raises(ValueError, match="set the net's num_noise_labels: 1 and omega_min"):
        LatentConsistencyModel(mlp(1, labels=2), (2,), path=VP, teacher=InMemory(base),
                               lora=LoRA(rank=2))  # fmt: skip
    with pytest.raises(ValueError, match=r"init_from_teacher and base_ckpt .* keep one"):
        lcm_lora(base, base_ckpt=InMemory(base))
    with pytest.raises(ValueError, match="drop init and set base_ckpt to that checkpoint"):
        lcm_lora(base, init=InMemory(base), init_from_teacher=False)
    student = lcm_lora(base)
    with pytest.raises(ValueError, match="a latent consistency model already"):
        LatentConsistencyModel.reading_of(student, student.reading, LCMSampler())
