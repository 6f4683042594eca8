"""Bad input fails before any training, with a message naming the value and the fix."""

from __future__ import annotations

import sys
from pathlib import Path

import datasets as hf
import numpy as np
import pytest
from cli_runs import cli_error
from run_helpers import ROOT, TOY, toy_classifier_checkpoint, toy_overrides

from diffusion_pl.cli import main
from diffusion_pl.data import HFImages

DIGITS = ["fit", "--config", str(ROOT / "configs/digits/rectified_flow.yaml"),
          "--trainer.accelerator", "cpu"]  # fmt: skip


def test_missing_dataset_path_names_it_and_the_setting() -> None:
    match = r"'/no/such/dir'.*set data\.source\.init_args\.path"
    with pytest.raises(FileNotFoundError, match=match):
        HFImages("/no/such/dir", builder="imagefolder").prepare()


def test_missing_dataset_column_lists_the_columns(tmp_path: Path) -> None:
    images = [np.zeros((4, 4, 3), dtype=np.uint8)] * 2
    hf.Dataset.from_dict({"image": images, "label": [0, 1]}).save_to_disk(str(tmp_path))
    match = r"image_column='img'.*\['image', 'label'\].*Set image_column"
    with pytest.raises(ValueError, match=match):
        HFImages(str(tmp_path), from_disk=True, split_val=None, image_column="img").prepare()


@pytest.mark.parametrize(
    ("override", "match"),
    [
        (["--data.source.init_args.size", "7"],
         r"7x7 images.*multiple of 2: resize the data.*or use a shorter channel_mult"),
        (["--data.source.init_args.size", "6"], r"image_size=8: set .*image_size: 6"),
        (["--model.init_args.net.init_args.in_channels", "3"],
         r"1 channels but the UNet has in_channels=3: set .*in_channels: 1"),
        (["--model.init_args.sampler.init_args.steps", "0"], r"steps must be >= 1, got 0"),
    ],
    ids=["size-not-divisible", "size-mismatch", "channels", "yaml-steps"],
)  # fmt: skip
def test_data_that_do_not_fit_the_net_fail_at_startup(
    override: list[str], match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with cli_error(capsys, match):
        main([*DIGITS, *override])


def test_unknown_formulation_lists_the_formulations(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(TOY), "--model.class_path", "diffusion_pl.formulations.Nope"])
    err = capsys.readouterr().err
    assert "there is no class diffusion_pl.formulations.Nope" in err
    assert "Set model.class_path to one of: " in err and "formulations.RectifiedFlow" in err


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ("--num_samples 0", r"--num_samples must be > 0, got 0"),
        ("--num_samples 2 --steps 0", r"--steps must be > 0, got 0; omit it"),
        ("--num_samples 2 --steps -3", r"--steps must be > 0, got -3"),
        ("--num_samples 2 --sampler nope", r"unknown --sampler 'nope'; choose one of \[.*'euler'"),
    ],
)
def test_sample_rejects_bad_values_before_loading(
    args: str, match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with cli_error(capsys, match) as stderr:
        main(f"sample --ckpt_path unused.ckpt --output o.npz {args}".split())
    assert len(stderr) <= 2  # the error and the --help tip, no usage


@pytest.mark.slow
def test_checkpoints_of_another_formulation_or_corrupt_ones_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["fit", *toy_overrides(tmp_path / "rf", 2)])
    (ckpt,) = (tmp_path / "rf").rglob("last.ckpt")
    vdm = ["fit", "--config", str(ROOT / "configs/toy2d/vdm.yaml"), "--trainer.max_steps", "1"]
    with cli_error(capsys, r"holds a .*RectifiedFlow but this run's model\.class_pa"):
        main([*vdm, "--trainer.default_root_dir", str(tmp_path / "vdm"), "--ckpt_path", str(ckpt)])

    truncated, garbage = tmp_path / "truncated.ckpt", tmp_path / "garbage.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    garbage.write_text("not a checkpoint")
    fit = ["fit", *toy_overrides(tmp_path / "again", 2)]
    for bad in (truncated, garbage):
        expected = rf"'{bad}' is corrupt or not a PyTorch checkpoint.*intact checkpoint"
        with cli_error(capsys, expected):
            main([*fit, "--ckpt_path", str(bad)])
        with cli_error(capsys, expected):
            main(f"sample --ckpt_path {bad} --num_samples 2 --output {tmp_path}/o.npz".split())


def test_fid_of_a_classifier_checkpoint_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``fid`` loads through the commands' one loader, which refuses what is not a diffusion
    model (a noisy classifier reached ``module.sampler`` with a traceback)."""
    ckpt = toy_classifier_checkpoint(tmp_path / "classifier.ckpt")
    with cli_error(capsys, r"classifier\.ckpt holds a NoisyClassifier, not a diffusion model"):
        main(f"fid --ckpt_path {ckpt} --feature digits --num_samples 10".split())


def test_phema_of_a_missing_run_says_it_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-run"
    with cli_error(capsys, rf"^error: --run {missing}: no such folder; pass the run's folder"):
        main(f"phema --run {missing} --sigma_rel 0.05 --output {tmp_path / 'out'}".split())
    assert not (tmp_path / "out").exists()


def test_encode_without_diffusers_is_one_line_with_the_install_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers: ImportError
    config = ROOT / "configs/digits/rectified_flow.yaml"
    expected = (r"^error: the autoencoder 'stabilityai/sd-vae-ft-mse' needs diffusers, which is "
                r"not installed: pip install 'diffusion-pl\[latent\]'$")  # fmt: skip
    with cli_error(capsys, expected) as stderr:
        main(f"encode --config {config} --autoencoder stabilityai/sd-vae-ft-mse "
             f"--output {tmp_path / 'codes'}".split())  # fmt: skip
    assert len(stderr) == 1 and not (tmp_path / "codes").exists()  # before any work
