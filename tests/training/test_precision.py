"""Mixed precision keeps the math in float32/64; bf16-mixed trains like fp32; torch.compile."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from run_helpers import toy_overrides

from diffusion_pl.checkpoints import load_module, read_checkpoint
from diffusion_pl.cli import main
from diffusion_pl.formulations import NCSN, VDM, RectifiedFlow, ScoreSDE
from diffusion_pl.learned_schedule import LearnedVPPath
from diffusion_pl.nets import MLP
from diffusion_pl.paths import DDPMPath, NoisePath, VEPath
from diffusion_pl.samplers import EulerSampler
from diffusion_pl.weighting import ELBO

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


def test_path_math_ignores_autocast(path: NoisePath) -> None:
    _check_ignores_autocast(path)


def test_learned_schedule_ignores_autocast() -> None:
    _check_ignores_autocast(LearnedVPPath(hidden=16))  # its γ is a network: matmuls


def _check_ignores_autocast(path: NoisePath) -> None:
    """α, σ, their derivatives and log-SNR are the same float32 numbers under bf16 autocast."""
    ends = [path.t_min, 1e-4, 0.5, 1 - 1e-4, path.t_max]  # log-SNR is steepest near the ends
    t = torch.tensor(ends, dtype=torch.float32).clamp(path.t_min, path.t_max)
    with torch.autocast(**BF16):
        c, log_snr = path.coefficients(t, 2), path.log_snr(t)
    exact_c, exact_log_snr = path.coefficients(t, 2), path.log_snr(t)
    pairs = zip(vars(c).values(), vars(exact_c).values(), strict=True)
    for got, want in [(log_snr, exact_log_snr), *pairs]:
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    if isinstance(path, DDPMPath):
        assert path.log_alpha_bar.dtype == torch.float64  # ᾱ products in float64


def _formulations() -> dict[str, object]:
    net = MLP(dim=2, hidden=16, depth=1)
    euler = EulerSampler(steps=2)
    return {
        "rectified_flow": RectifiedFlow(net, (2,), sampler=euler),
        "vdm_ddpm": VDM(net, (2,), path=DDPMPath(), sampler=euler),
        "vdm_learned_elbo": VDM(
            net, (2,), path=LearnedVPPath(hidden=16), weighting=ELBO(), sampler=euler
        ),
        "ncsn": NCSN(net, (2,), sampler=euler),
        "score_sde_ve": ScoreSDE(net, (2,), path=VEPath(), sampler=euler),
    }


@pytest.mark.parametrize("name", sorted(_formulations()))
def test_losses_are_float32_under_bf16_autocast(name: str) -> None:
    module = _formulations()[name]
    x0 = 3 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    batch = (x0, torch.full((64,), -1))
    with torch.autocast(**BF16):
        loss = module.batch_loss(batch, torch.Generator().manual_seed(1))
    exact = module.batch_loss(batch, torch.Generator().manual_seed(1))
    assert loss.dtype == torch.float32 and loss.shape == (64,)
    # Only the network runs in bf16 (8-bit mantissa): the loss moves by about 2^-8.
    torch.testing.assert_close(loss.mean(), exact.mean(), rtol=3e-2, atol=1e-3)


def _final_loss(root: Path) -> float:
    (logs,) = root.rglob("metrics.csv")
    losses = [float(row["train/loss"]) for row in csv.DictReader(logs.open())]
    return sum(losses[-5:]) / 5


@pytest.mark.slow
def test_bf16_mixed_trains_like_fp32(tmp_path: Path) -> None:
    fast = ["--model.init_args.optimizer.init_args.lr", "0.01"]
    for precision in ("32-true", "bf16-mixed"):
        main(["fit", *toy_overrides(tmp_path / precision, 40, *fast),
              "--trainer.precision", precision])  # fmt: skip
    fp32, bf16 = _final_loss(tmp_path / "32-true"), _final_loss(tmp_path / "bf16-mixed")
    assert fp32 < 8.0  # it learned something (the untrained loss is about 9)
    assert bf16 == pytest.approx(fp32, rel=0.05)


@pytest.mark.slow
def test_compile_net_trains_and_keeps_checkpoints_plain(tmp_path: Path) -> None:
    torch._dynamo.reset()
    compile_net = ["--trainer.callbacks+=diffusion_pl.callbacks.CompileNet",
                   "--trainer.callbacks.init_args.backend", "aot_eager"]  # fmt: skip
    main(["fit", *toy_overrides(tmp_path, 3, *compile_net)])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # something compiled
    (ckpt,) = tmp_path.rglob("last.ckpt")
    assert not any("_orig_mod" in k for k in read_checkpoint(ckpt)["state_dict"])
    assert isinstance(load_module(ckpt), RectifiedFlow)  # loads into an uncompiled net
