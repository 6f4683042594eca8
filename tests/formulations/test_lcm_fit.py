"""LCM through the command line and its refusals: a toy class-conditional VDM distilled by
``diffusion-pl fit``, sampled by ``diffusion-pl sample --sampler lcm``; what it cannot do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_runs import ROOT, fit_config
from guided_mixture import VP, InMemory

from diffusion_pl.checkpoints import load_module, read_checkpoint
from diffusion_pl.cli import main
from diffusion_pl.formulations import VDM, LatentConsistencyModel
from diffusion_pl.nets import MLP

pytestmark = pytest.mark.usefixtures("one_thread")


def lcm_config(teacher: Path, out: Path) -> Path:
    """A toy LCM config: the toy VDM's MLP (8 classes) with ω's input, distilled from
    ``teacher`` with ω ~ U[1, 3], 2-step LCM sampling."""
    config = {
        "seed_everything": 0,
        "trainer": {"max_steps": 4, "logger": False, "enable_model_summary": False,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"save_last": True}}]},
        "model": {"class_path": "diffusion_pl.formulations.LatentConsistencyModel", "init_args": {
            "net": {"class_path": "diffusion_pl.nets.MLP",
                    "init_args": {"dim": 2, "hidden": 32, "depth": 2, "num_classes": 8,
                                  "num_noise_labels": 2}},
            "path": {"class_path": "diffusion_pl.paths.VPLinearPath"},
            "omega_min": 1.0, "omega_max": 3.0, "p_uncond": 0.1,
            "teacher": {"class_path": "diffusion_pl.checkpoints.Checkpoint",
                        "init_args": {"path": str(teacher)}},
            "sampler": {"class_path": "diffusion_pl.samplers.LCMSampler",
                        "init_args": {"steps": 2}},
        }},
        "data": {"source": {"class_path": "diffusion_pl.data.Toy2D",
                            "init_args": {"name": "8gaussians", "num_train": 64, "num_val": 32}},
                 "global_batch_size": 32},
    }  # fmt: skip
    out.write_text(yaml.safe_dump(config))
    return out


@pytest.mark.slow
def test_a_toy_lcm_fits_through_the_cli_and_samples_one_call_per_step(tmp_path: Path) -> None:
    """A class-conditional toy VDM (8 classes, p_uncond 0.2) fitted a few steps is distilled by
    LCM through the CLI; `sample --sampler lcm` reads the checkpoint with class labels and ω;
    the model samples with one net call of the batch (not the doubled CFG batch) per step."""
    teacher = fit_config(ROOT / "configs/toy2d/vdm.yaml", tmp_path / "teacher",
                         "--trainer.max_steps", "3", "--data.global_batch_size", "32",
                         "--data.source.init_args.num_train", "64",
                         "--data.source.init_args.num_val", "32",
                         "--model.init_args.net.init_args.hidden", "32",
                         "--model.init_args.net.init_args.depth", "2",
                         "--model.init_args.net.init_args.num_classes", "8",
                         "--model.init_args.p_uncond", "0.2")  # fmt: skip
    ckpt = fit_config(lcm_config(teacher, tmp_path / "lcm.yaml"), tmp_path / "lcm")
    state = read_checkpoint(ckpt)
    assert all(k.startswith(("net.", "target_net.")) for k in state["state_dict"])
    out = tmp_path / "samples.npz"
    main(["sample", "--ckpt_path", str(ckpt), "--num_samples", "6", "--output", str(out),
          "--sampler", "lcm", "--steps", "3", "--class_labels", "[0,5]",
          "--guidance_scale", "2.5"])  # fmt: skip
    samples = np.load(out)["samples"]
    assert samples.shape == (6, 2) and np.isfinite(samples).all()
    model, batches = load_module(ckpt), []
    model.net.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    model.sample(6, class_labels=torch.tensor([0, 5] * 3), guidance_scale=2.5)
    assert batches == [6, 6]


def test_what_lcm_cannot_do_is_refused_naming_the_fix() -> None:
    def mlp(labels: int = 2, classes: int | None = 2) -> MLP:
        return MLP(dim=2, hidden=8, depth=1, num_classes=classes, num_noise_labels=labels)

    with pytest.raises(ValueError, match="set the net's num_noise_labels: 2"):
        LatentConsistencyModel(mlp(labels=1), (2,), omega_min=1.0, omega_max=3.0)
    with pytest.raises(ValueError, match="distils a teacher: set teacher"):
        LatentConsistencyModel(mlp(), (2,)).setup("fit")
    fixed = LatentConsistencyModel(mlp(labels=1), (2,), omega_min=2.0, omega_max=2.0)
    assert fixed.guidance_scale == 2.0
    with pytest.raises(ValueError, match=r"fixed guidance scale 2\.0"):
        fixed.sample(2, class_labels=torch.tensor([0, 1]), guidance_scale=3.0)
    with pytest.raises(ValueError, match="the student's net is unconditional: set its"):
        LatentConsistencyModel(mlp(classes=None), (2,), omega_max=3.0)
    unconditional = VDM(mlp(labels=1, classes=None), (2,), path=VP)
    student = LatentConsistencyModel(
        mlp(), (2,), path=VP, omega_max=3.0, teacher=InMemory(unconditional)
    )
    with pytest.raises(ValueError, match="unconditional, so there is no guidance to distil"):
        student.setup("fit")
    with pytest.raises(ValueError, match="discrete with 1000 steps, but num_timesteps=50"):
        LatentConsistencyModel(mlp(), (2,), num_timesteps=50)
