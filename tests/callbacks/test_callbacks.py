"""EMA, FID and sample grids inside real fits: TensorBoard images, 2 DDP processes, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_runs import write_config

from diffusion_pl.checkpoints import load_module, read_checkpoint
from diffusion_pl.cli import fid, main

HELPERS = Path(__file__).resolve().parents[1] / "helpers"


@pytest.mark.slow
def test_sample_grids_every_n_steps_land_in_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = write_config(
        "configs/toy2d/rectified_flow.yaml", tmp_path / "toy.yaml",
        {"max_steps": 4, "default_root_dir": str(tmp_path), "accelerator": "cpu",
         "enable_progress_bar": False, "limit_val_batches": 0},
        [{"class_path": "diffusion_pl.callbacks.EMA", "init_args": {"halflife_samples": 1000}},
         {"class_path": "diffusion_pl.callbacks.SampleGrid",
          "init_args": {"num_samples": 50, "every_n_steps": 2, "weights": ["ema", "raw"]}}],
    )  # fmt: skip
    main(["fit", "--config", str(config)])
    (log_dir,) = tmp_path.glob("lightning_logs/version_0")
    pictures = sorted(p.name for p in (log_dir / "samples").glob("*.png"))
    assert pictures == ["final.png", "final_raw.png", "step_0000002.png", "step_0000002_raw.png",
                        "step_0000004.png", "step_0000004_raw.png"]  # fmt: skip
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0}).Reload()
    assert {"samples", "samples_raw"} <= set(events.Tags()["images"])
    assert [e.step for e in events.Images("samples")] == [2, 4, 4]


@pytest.mark.slow
def test_sample_grid_draws_once_per_optimizer_step_under_gradient_accumulation(
    tmp_path: Path,
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = write_config(
        "configs/toy2d/rectified_flow.yaml", tmp_path / "toy.yaml",
        {"max_steps": 4, "default_root_dir": str(tmp_path),
         "accelerator": "cpu", "enable_progress_bar": False, "limit_val_batches": 0},
        [{"class_path": "diffusion_pl.callbacks.SampleGrid",
          "init_args": {"num_samples": 20, "every_n_steps": 2}}],
    )  # fmt: skip
    main(["fit", "--config", str(config), "--data.max_device_batch", "128"])  # 2 x 128 a step
    (log_dir,) = tmp_path.glob("lightning_logs/version_0")
    pictures = sorted(p.name for p in (log_dir / "samples").glob("*.png"))
    assert pictures == ["final.png", "step_0000002.png", "step_0000004.png"]
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("samples")] == [2, 4, 4]  # steps 2, 4 and the end


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Digits RF, 6 steps on 2 gloo processes with EMA, FID (drives the checkpoint) and dumps."""
    root = tmp_path_factory.mktemp("ddp")
    config = write_config(
        "configs/digits/rectified_flow.yaml", root / "digits.yaml",
        {"max_steps": 6, "default_root_dir": str(root), "accelerator": "cpu", "devices": 2,
         "strategy": "ddp", "check_val_every_n_epoch": 1, "limit_val_batches": 1,
         "enable_progress_bar": False},
        [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
          "init_args": {"save_last": True, "monitor": "val/fid", "mode": "min"}},
         {"class_path": "diffusion_pl.callbacks.EMA", "init_args": {"halflife_samples": 2000}},
         {"class_path": "diffusion_pl.callbacks.FID",
          "init_args": {"num_samples": 64, "batch_size": 32, "cache_dir": str(root / "cache")}},
         {"class_path": "rank_dump.DumpWeights", "init_args": {"out_dir": str(root / "dump")}}],
        sampler={"class_path": "diffusion_pl.samplers.EulerSampler", "init_args": {"steps": 4}},
    )  # fmt: skip
    path = os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])  # keep this checkout
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "diffusion_pl", "fit", "--config", str(config),
                    "--data.global_batch_size", "256"],  # 5 steps an epoch: validation at 5
                   check=True, env=env, cwd=root, capture_output=True)  # fmt: skip
    return root


@pytest.mark.slow
def test_ddp_ranks_hold_identical_raw_and_averaged_weights(ddp_run: Path) -> None:
    rank0, rank1 = (torch.load(ddp_run / "dump" / f"rank{r}.pt") for r in (0, 1))
    for which in ("raw", "ema"):
        for name, value in rank0[which].items():
            assert torch.equal(value, rank1[which][name]), (which, name)
    moved = [not torch.equal(rank0["raw"][k], rank0["ema"][k]) for k in rank0["raw"]]
    assert any(moved)  # the average is not the raw weights


@pytest.mark.slow
def test_val_fid_drives_model_checkpoint_under_ddp(ddp_run: Path) -> None:
    (last,) = ddp_run.rglob("last.ckpt")
    checkpoint = read_checkpoint(last)
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert state["monitor"] == "val/fid"
    assert 0 < float(state["best_model_score"]) < 1000
    assert Path(state["best_model_path"]).is_file()
    assert len(list((ddp_run / "cache").glob("*.npz"))) == 1
    # `sample` and friends load the average by default; the raw weights on request.
    ema, raw = load_module(last), load_module(last, weights="raw")
    dumped = torch.load(ddp_run / "dump" / "rank0.pt")
    for name, value in ema.state_dict().items():
        assert torch.equal(value, dumped["ema"][name])
        assert torch.equal(raw.state_dict()[name], dumped["raw"][name])


@pytest.mark.slow
def test_fid_command_gives_the_same_score_on_one_or_two_processes(ddp_run: Path) -> None:
    (last,) = ddp_run.rglob("last.ckpt")
    options = ["--ckpt_path", str(last), "--feature", "digits", "--num_samples", "96",
               "--batch_size", "32", "--cache_dir", str(ddp_run / "cache")]  # fmt: skip
    out = ddp_run / "fid_2proc.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                    "-m", "diffusion_pl", "fid", *options, "--output", str(out)],
                   check=True, env=env, capture_output=True)  # fmt: skip
    two = json.loads(out.read_text())
    one = fid(str(last), feature="digits", num_samples=96, batch_size=32,
              cache_dir=str(ddp_run / "cache"))  # fmt: skip
    assert two["fid"] == pytest.approx(one["fid"], rel=1e-6)
    assert two["checkpoint"] == str(last) and two["num_samples"] == 96 and two["nfe"] > 0
    assert two["feature"] == "digits" and two["split"] == "val" and two["seed"] == 0
    assert two.keys() >= {"sampler", "steps"}  # what was measured, as likelihood records it
