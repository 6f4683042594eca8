"""LCM-LoRA end to end through the CLI: a toy class-conditional VDM → an LCM-LoRA fit on it →
adapters.pt → ``sample --ckpt_path TEACHER --lora adapters.pt --sampler lcm`` samples what the
LCM-LoRA run's own checkpoint samples; a style LoRA of the same teacher and the LCM-LoRA combine
(the acceleration vector, ``--lora style.pt:λ₁ --lora lcm.pt:λ₂``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_runs import ROOT, cli_error, fit_config

from diffusion_pl.callbacks.lora_sampling import CallbackAdapters
from diffusion_pl.checkpoints import load_module
from diffusion_pl.cli import SamplingOptions, load_for_sampling, main
from diffusion_pl.formulations import LatentConsistencyModel
from diffusion_pl.lcm import LCMReading
from diffusion_pl.lora import read_adapters
from diffusion_pl.samplers import DDIMSampler, LCMSampler

pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")

OMEGA = 2.0
TOY_VDM = ["--trainer.max_steps", "3", "--data.global_batch_size", "32",
           "--data.source.init_args.num_train", "64", "--data.source.init_args.num_val", "32",
           "--model.init_args.net.init_args.hidden", "32",
           "--model.init_args.net.init_args.depth", "2",
           "--model.init_args.net.init_args.num_classes", "8",
           "--model.init_args.p_uncond", "0.2"]  # fmt: skip


def lcm_lora_config(teacher: Path, out: Path) -> Path:
    """LCM-LoRA of the toy VDM ``teacher``: its MLP with rank-4 adapters, ω fixed at 2,
    stop-gradient target (target_ema 0, as LCM-LoRA's code), 2-step LCM sampling."""
    config = {
        "seed_everything": 0,
        "trainer": {"max_steps": 4, "logger": False, "enable_model_summary": False,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"save_last": True}}]},
        "model": {"class_path": "diffusion_pl.formulations.LatentConsistencyModel", "init_args": {
            "net": {"class_path": "diffusion_pl.nets.MLP",
                    "init_args": {"dim": 2, "hidden": 32, "depth": 2, "num_classes": 8}},
            "path": {"class_path": "diffusion_pl.paths.VPLinearPath"},
            "omega_min": OMEGA, "omega_max": OMEGA, "target_ema": 0.0,
            "lora": {"rank": 4, "alpha": 8},
            "teacher": {"class_path": "diffusion_pl.checkpoints.Checkpoint",
                        "init_args": {"path": str(teacher)}},
            "sampler": {"class_path": "diffusion_pl.samplers.LCMSampler",
                        "init_args": {"steps": 2}},
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.02}},
        }},
        "data": {"source": {"class_path": "diffusion_pl.data.Toy2D",
                            "init_args": {"name": "8gaussians", "num_train": 64, "num_val": 32}},
                 "global_batch_size": 32},
    }  # fmt: skip
    out.write_text(yaml.safe_dump(config))
    return out


def sample(ckpt: Path, out: Path, *extra: str) -> np.ndarray:
    main(["sample", "--ckpt_path", str(ckpt), "--num_samples", "8", "--seed", "3",
          "--class_labels", "[0,5]", "--steps", "2", "--output", str(out), *extra])  # fmt: skip
    return np.load(out)["samples"]


@pytest.mark.slow
def test_lcm_lora_adapters_on_the_teacher_sample_as_the_lcm_lora_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher = fit_config(ROOT / "configs/toy2d/vdm.yaml", tmp_path / "teacher", *TOY_VDM)
    run = tmp_path / "lcm_lora"
    ckpt = fit_config(lcm_lora_config(teacher, tmp_path / "lcm_lora.yaml"), run)
    (adapters,) = run.rglob("adapters.pt")
    read = read_adapters(adapters)
    assert read.base_ckpt == str(teacher) and read.lcm == LCMReading(0.5, 10.0, None, OMEGA)
    assert max(float(v.abs().max()) for k, v in read.state.items() if "lora_B" in k) > 0
    own = sample(ckpt, tmp_path / "own.npz", "--sampler", "lcm")
    lcm = ["--lora", str(adapters), "--sampler", "lcm"]
    adapted = sample(teacher, tmp_path / "adapted.npz", *lcm)
    np.testing.assert_allclose(adapted, own, rtol=0, atol=1e-5)
    # Merged into a plain checkpoint of the teacher, it keeps its reading (float32 rounding).
    merged = tmp_path / "merged.ckpt"
    main(["lora", "merge", "--ckpt_path", str(teacher), "--lora", str(adapters),
          "--output", str(merged)])  # fmt: skip
    np.testing.assert_allclose(sample(merged, tmp_path / "m.npz", "--sampler", "lcm"), own,
                               rtol=0, atol=1e-4)  # fmt: skip
    # The sampling callbacks' `lora:` read the same student with an LCM sampler (FID's).
    loaded = load_for_sampling(str(teacher), SamplingOptions(sampler="lcm", lora=(str(adapters),)))
    x, t, y = torch.randn(4, 2), torch.tensor([0.02, 0.3, 0.6, 1.0]), torch.tensor([0, 5, 1, 7])
    expected = loaded.module.denoiser(y)(x, t).x0
    callback, bare = CallbackAdapters([str(adapters)], "FID"), load_module(teacher).eval()
    with callback.applied(bare, LCMSampler(steps=2)) as model, torch.no_grad():
        assert isinstance(model, LatentConsistencyModel)
        assert torch.equal(model.denoiser(y)(x, t).x0, expected)
    with callback.applied(bare, DDIMSampler()) as model:
        assert model is bare
    # The teacher alone, with its own (DDPM) sampler, samples something else.
    assert np.abs(sample(teacher, tmp_path / "teacher.npz") - own).max() > 1e-2
    # A style LoRA of the same teacher combines with it: λ₁ = 0 is the LCM-LoRA alone, λ₁ = 1
    # moves the samples.
    style_run = tmp_path / "style"
    fit_config(ROOT / "configs/toy2d/vdm.yaml", style_run, *TOY_VDM,
               "--model.init_args.lora", "{rank: 4, alpha: 8}",
               "--model.init_args.base_ckpt", "diffusion_pl.checkpoints.Checkpoint",
               "--model.init_args.base_ckpt.init_args.path", str(teacher),
               "--model.init_args.optimizer.init_args.lr", "0.05")  # fmt: skip
    (style,) = style_run.rglob("adapters.pt")
    assert read_adapters(style).lcm is None
    off = sample(teacher, tmp_path / "off.npz", "--lora", f"{style}:0", *lcm)
    np.testing.assert_allclose(off, own, rtol=0, atol=1e-5)
    both = sample(teacher, tmp_path / "both.npz", "--lora", f"{style}:1", *lcm)
    assert np.isfinite(both).all() and np.abs(both - own).max() > 1e-3
    # The style run's own checkpoint (its data's, for `fid`) holds the same base: the LCM-LoRA
    # adds to it and samples the same combination.
    (style_ckpt,) = style_run.rglob("last.ckpt")
    np.testing.assert_allclose(sample(style_ckpt, tmp_path / "run.npz", *lcm), both, atol=1e-5)
    # --sampler lcm on the teacher without LCM-LoRA adapters: one error line naming the fix.
    with cli_error(capsys, r"no --lora adapters of an LCM-LoRA run: add them"):
        sample(teacher, tmp_path / "bad.npz", "--lora", str(style), "--sampler", "lcm")
