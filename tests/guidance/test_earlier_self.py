"""The run as its own guide (``EarlierSelf``): written at its step, exactly the run at that step,
once per run, unguided before and guided after, read back on resume.

A toy rectified flow trains 6 steps with an EMA and two sample grids that both name the run at
step 3 as their guide (w = 2). The guide file must hold the same weights, bit for bit, as the
``last.ckpt`` of the same config trained 3 steps; the grids must draw unguided at step 2 and
guided from step 4 on; the file must be written once although two callbacks name it; a resumed
run past step 3 (and a run resumed from that one, in a third log folder) must read it and not
write it again.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_runs import fit_config, write_config
from lightning import Trainer

import diffusion_pl.callbacks.sample_grid as sample_grid
from diffusion_pl.callbacks import EarlierSelf
from diffusion_pl.cli import main

NET = {"class_path": "diffusion_pl.nets.MLP", "init_args": {"hidden": 16, "depth": 1}}
CHECKPOINT = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
              "init_args": {"save_last": True}}  # fmt: skip
EMA = {"class_path": "diffusion_pl.callbacks.EMA", "init_args": {"halflife_samples": 500}}
TRAINER = {"accelerator": "cpu", "enable_progress_bar": False, "limit_val_batches": 0}
GRID = {
    "class_path": "diffusion_pl.callbacks.SampleGrid",
    "init_args": {
        "num_samples": 32,
        "every_n_steps": 2,
        "guide": {"class_path": "diffusion_pl.callbacks.EarlierSelf", "init_args": {"step": 3}},
        "guidance_scale": 2.0,
    },
}


def toy_fit(root: Path, steps: int, callbacks: list[dict], *overrides: str) -> Path:
    """The toy rectified-flow config, ``steps`` steps on 1,024 points, under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    config = write_config("configs/toy2d/rectified_flow.yaml", root / "toy.yaml",
                          {**TRAINER, "max_steps": steps}, callbacks, net=NET)  # fmt: skip
    return fit_config(config, root, "--data.source.init_args.num_train", "1024", *overrides)


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow
def test_the_run_guides_itself_from_the_step_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    guided: list[bool] = []
    draw = sample_grid.generate

    def recording(*args, **kwargs):
        guided.append(kwargs.get("guide") is not None)
        return draw(*args, **kwargs)

    saved: list[str] = []
    save = Trainer.save_checkpoint

    def counting(self: Trainer, path, *args, **kwargs) -> None:
        saved.append(Path(path).name)
        save(self, path, *args, **kwargs)

    monkeypatch.setattr(sample_grid, "generate", recording)
    monkeypatch.setattr(Trainer, "save_checkpoint", counting)
    last = toy_fit(tmp_path / "run", 6, [CHECKPOINT, EMA, GRID, GRID])
    guide = last.parent / "guide-step=3.ckpt"
    assert guide.is_file()
    out = capsys.readouterr().out  # the run's closing lines name the guide once
    assert out.count(f"guide:       {guide} (autoguidance: `diffusion-pl sample` or `fid` with "
                     "--guide_ckpt PATH --guidance_scale 2.0)") == 1  # fmt: skip
    # two grids each draw at steps 2, 4, 6 and at the end: unguided only before step 3
    assert guided == [False] * 2 + [True] * 6
    assert saved.count(guide.name) == 1
    state = torch.load(guide, map_location="cpu", weights_only=False)
    assert state["global_step"] == 3
    reference = weights(toy_fit(tmp_path / "three", 3, [CHECKPOINT, EMA]))
    for name, tensor in weights(guide).items():  # the EMA weights of the run at step 3
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0, msg=name)

    guided.clear()
    written = guide.stat().st_mtime_ns
    config = tmp_path / "run" / "toy.yaml"
    main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "run"),
          "--data.source.init_args.num_train", "1024", "--trainer.max_steps", "8",
          "--ckpt_path", str(last)])  # fmt: skip
    assert guided == [True] * 4  # step 8 and the end, two grids, guided from the file
    assert guide.stat().st_mtime_ns == written and saved.count(guide.name) == 1
    # resumed again, from the resumed run's checkpoint (a third folder): the file is found
    # through the path the checkpoints record, not beside the new run's last.ckpt
    guided.clear()
    (again,) = (tmp_path / "run").rglob("version_1/checkpoints/last.ckpt")
    main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "run"),
          "--data.source.init_args.num_train", "1024", "--trainer.max_steps", "10",
          "--ckpt_path", str(again)])  # fmt: skip
    assert guided == [True] * 4 and saved.count(guide.name) == 1


def test_earlier_self_names_its_step_and_refuses_a_step_that_is_not_one() -> None:
    assert str(EarlierSelf(250)) == "this run at step 250"
    with pytest.raises(ValueError, match=r"step must be > 0 \(a training step\), got 0"):
        EarlierSelf(0)
