"""LoRA end to end through the CLI: a toy fit with ``lora:`` from a tiny base → adapters file →
``sample --lora`` → ``lora merge`` → the merged checkpoint samples as the adapters do; a wrong
base is one error line; a resumed LoRA run is the uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import cli_error
from run_helpers import toy_overrides

from diffusion_pl.callbacks import SampleGrid
from diffusion_pl.checkpoints import load_module, read_checkpoint
from diffusion_pl.cli import main
from diffusion_pl.cli.argv import gather_repeated
from diffusion_pl.cli.options import parse_lora
from diffusion_pl.errors import UsageError
from diffusion_pl.generate import generate
from diffusion_pl.lora import read_adapters, weights_sha256

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 4


def lora_overrides(root: Path, base: Path, steps: int, *extra: str) -> list[str]:
    """A toy LoRA run of the tiny base (rank 4, EMA, a large learning rate so the adapters move
    visibly in a few steps; the LR schedule spans ``STEPS`` whatever ``steps``)."""
    return toy_overrides(
        root, steps, "--model.init_args.lora", "{rank: 4, alpha: 8}",
        "--model.init_args.base_ckpt", "diffusion_pl.checkpoints.Checkpoint",
        "--model.init_args.base_ckpt.init_args.path", str(base),
        "--model.init_args.optimizer.init_args.lr", "0.02",
        "--model.init_args.lr_scheduler.init_args.T_max", str(STEPS),
        "--trainer.callbacks+=diffusion_pl.callbacks.EMA",
        "--trainer.callbacks.init_args.halflife_samples", "500", *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def lora_run(toy_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of a LoRA fit of ``toy_ckpt``, ``STEPS`` steps, with a checkpoint of
    every second step in ``ROOT/every2``."""
    root = tmp_path_factory.mktemp("lora")
    every2 = ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
              "--trainer.callbacks.init_args.every_n_train_steps", "2",
              "--trainer.callbacks.init_args.save_top_k", "-1",
              "--trainer.callbacks.init_args.dirpath", str(root / "every2")]  # fmt: skip
    main(["fit", *lora_overrides(root, toy_ckpt, STEPS, *every2)])
    return root


def _sample(ckpt: Path, out: Path, *lora: str) -> np.ndarray:
    args = ["sample", "--ckpt_path", str(ckpt), "--num_samples", "32", "--seed", "3",
            "--output", str(out)]  # fmt: skip
    for value in lora:
        args += ["--lora", value]
    main(args)
    return np.load(out.with_suffix(".npz"))["samples"]


@pytest.mark.slow
def test_lora_fit_sample_and_merge(
    toy_ckpt: Path, lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (adapters,) = lora_run.rglob("adapters.pt")
    (last,) = lora_run.rglob("last.ckpt")
    read = read_adapters(adapters)
    base = load_module(toy_ckpt)
    # The file: the base's path and hash, the adapters only (the setting's rank), at the last step.
    assert read.base_ckpt == str(toy_ckpt) and read.step == STEPS
    assert read.base_sha256 == weights_sha256(base.net.state_dict())
    assert (read.lora.rank, read.lora.scaling) == (4, 2.0)
    assert all(".lora_A." in k or ".lora_B." in k for k in read.state)
    assert read.parameters() < sum(p.numel() for p in base.net.parameters())
    # The run's checkpoint holds the same base, frozen through training, and the same adapters
    # (its state_dict: the EMA average, which the file holds too).
    state = read_checkpoint(last)["state_dict"]
    for key, value in base.net.state_dict().items():
        layer, _, leaf = key.rpartition(".")
        assert torch.equal(state.get(f"net.{key}", state.get(f"net.{layer}.base_layer.{leaf}")),
                           value), key  # fmt: skip
    for key, value in read.state.items():
        assert torch.equal(state[f"net.{key.replace('.weight', '.default.weight')}"], value)

    plain = _sample(toy_ckpt, tmp_path / "base")
    with_lora = _sample(toy_ckpt, tmp_path / "lora", str(adapters))
    assert np.abs(with_lora - plain).max() > 1e-2  # the adapters changed the samples
    np.testing.assert_allclose(_sample(last, tmp_path / "run"), with_lora, rtol=0, atol=1e-6)
    # Two adapters act together: λ = 0.5 and 1.5 of the same adapter is λ = 2 of it.
    twice = _sample(toy_ckpt, tmp_path / "twice", f"{adapters}:2")
    np.testing.assert_allclose(
        _sample(toy_ckpt, tmp_path / "sum", f"{adapters}:0.5", f"{adapters}:1.5"), twice,
        rtol=0, atol=1e-5,
    )  # fmt: skip
    assert np.abs(twice - with_lora).max() > 1e-2

    merged = tmp_path / "merged.ckpt"
    main(["lora", "merge", "--ckpt_path", str(toy_ckpt), "--lora", str(adapters), "--output",
          str(merged)])  # fmt: skip
    assert f"wrote {merged}" in capsys.readouterr().out
    checkpoint = read_checkpoint(merged)
    assert checkpoint["hyper_parameters"]["lora"] is None
    assert checkpoint["lora_merged"] == [
        {"path": str(adapters), "scale": 1.0, "base_sha256": read.base_sha256}
    ]
    assert not any("lora_" in k or "base_layer" in k for k in checkpoint["state_dict"])
    np.testing.assert_allclose(_sample(merged, tmp_path / "merged"), with_lora, rtol=0, atol=1e-5)

    # The sampling callbacks add adapters to a copy of the model's net while they sample.
    grid = SampleGrid(lora=[f"{adapters}:2"])
    base.eval()
    with grid.adapters.applied(base):
        drawn = generate(base, 32, seed=3, batch_size=32).numpy()
    np.testing.assert_allclose(drawn, twice, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(generate(base, 32, seed=3, batch_size=32).numpy(), plain)
    with pytest.raises(ValueError, match=r"SampleGrid: the model being trained has other weights"):
        grid.adapters.check(load_module(merged))

    # Adapters on a base of other weights (here the merged one): one error line with the hashes.
    with cli_error(capsys, rf"the adapters {adapters} were trained on {toy_ckpt} \(base weights "
                   rf"sha256 {read.base_sha256[:16]}…\), but --ckpt_path {merged} has other "
                   "weights"):  # fmt: skip
        main(["sample", "--ckpt_path", str(merged), "--num_samples", "4", "--output",
              str(tmp_path / "wrong"), "--lora", str(adapters)])  # fmt: skip
    with cli_error(capsys, r"--lora .*:x: the SCALE after the last ':' must be a finite number"):
        main(["lora", "merge", "--ckpt_path", str(toy_ckpt), "--lora", f"{adapters}:x",
              "--output", str(tmp_path / "bad.ckpt")])  # fmt: skip
    assert not (tmp_path / "bad.ckpt").exists()


@pytest.mark.slow
def test_a_resumed_lora_run_is_the_uninterrupted_one(
    toy_ckpt: Path, lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Resumed from the uninterrupted run's checkpoint at step 2 (a periodic one, as a SIGTERM
    checkpoint is written at a batch's end), the run ends with the same weights, bit for bit."""
    (middle,) = (lora_run / "every2").glob("*step=2.ckpt")
    main(["fit", *lora_overrides(tmp_path, toy_ckpt, STEPS), "--ckpt_path", str(middle)])
    run = tmp_path / "lightning_logs/version_0"
    assert f"adapters:    {run / 'adapters.pt'} (LoRA adapters alone" in capsys.readouterr().out
    whole = read_checkpoint(lora_run / "lightning_logs/version_0/checkpoints/last.ckpt")
    resumed = read_checkpoint(run / "checkpoints/last.ckpt")
    assert whole["global_step"] == resumed["global_step"] == STEPS
    for key in ("state_dict", "current_model_state"):  # EMA average and raw weights
        assert whole[key].keys() == resumed[key].keys()
        for name, value in whole[key].items():
            assert torch.equal(resumed[key][name], value), (key, name)
    adapters = read_adapters(run / "adapters.pt").state
    for name, value in read_adapters(next(lora_run.rglob("adapters.pt"))).state.items():
        assert torch.equal(adapters[name], value), name


def test_lora_options_are_parsed_and_gathered(tmp_path: Path) -> None:
    file = tmp_path / "a.pt"
    file.write_bytes(b"")
    assert parse_lora([str(file), f"{file}:0.5", f"{file}:-1e-1"]) == [
        (str(file), 1.0), (str(file), 0.5), (str(file), -0.1)
    ]  # fmt: skip
    missing = str(tmp_path / "b.pt")
    for bad, match in [(f"{file}:x", "must be a finite number"), (f"{file}:inf", "finite"),
                       (missing, "no file .*b.pt; give an adapters file")]:  # fmt: skip
        with pytest.raises(UsageError, match=match):
            parse_lora([bad])
    args = ["--ckpt_path", "c", "--lora", "a.pt", "--seed", "1", "--lora=b,c.pt:0.5"]
    assert gather_repeated(args, "--lora") == [
        "--ckpt_path", "c", "--lora", '["a.pt", "b,c.pt:0.5"]', "--seed", "1"
    ]  # fmt: skip
    assert gather_repeated(["--lora", "[a.pt]"], "--lora") == ["--lora", "[a.pt]"]
    assert gather_repeated(["--seed", "1"], "--lora") == ["--seed", "1"]
