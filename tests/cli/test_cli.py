"""End to end through the real CLI: every shipped YAML parses; fit, sample, determinism."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import cli_error, fit_config
from lightning import LightningModule

from diffusion_pl.cli import DiffusionCLI, main
from diffusion_pl.data import DiffusionDataModule

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_shipped_config_parses_against_the_real_signatures(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    model = "autoencoders" if config.stem == "autoencoder" else "formulations"  # the first stage
    assert f"class_path: diffusion_pl.{model}." in printed
    assert "optimizer:" in printed


def built(config: str, *overrides: str) -> DiffusionCLI:
    """The model, data and trainer a shipped config builds, through the CLI, without running."""
    args = ["--config", str(ROOT / config), "--trainer.logger", "false", *overrides]
    return DiffusionCLI(LightningModule, DiffusionDataModule, subclass_mode_model=True, run=False,
                        args=args)  # fmt: skip


@pytest.mark.slow
def test_vdm_num_levels_is_linked_from_the_data_and_recorded() -> None:
    cli = built("configs/digits/vdm.yaml", "--model.init_args.num_levels", "null")
    assert cli.model.num_levels == 17  # the digits' levels, not the default None
    hparams = cli.model.hparams
    assert hparams["num_levels"] == 17 and hparams["data_shape"] == (1, 8, 8)
    assert hparams["_class_path"] == "diffusion_pl.formulations.VDM"
    assert hparams["net"]["class_path"] == "diffusion_pl.nets.UNet"
    assert cli.datamodule.hparams["source"]["class_path"] == "diffusion_pl.data.Digits"
    with pytest.raises(ValueError, match="num_levels=256 but the data have 17 quantization"):
        built("configs/digits/vdm.yaml", "--model.init_args.num_levels", "256")
    assert built("configs/toy2d/vdm.yaml").model.num_levels is None  # continuous data
    ncsn = built("configs/digits/ncsn.yaml", "--model.init_args.num_levels", "12")
    assert ncsn.model.hparams["num_levels"] == 12  # NCSN's noise levels are not the data's


def test_toy2d_config_names_its_dataset() -> None:
    assert "name: 8gaussians" in (ROOT / "configs/toy2d/rectified_flow.yaml").read_text()


@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rectified flow fitted for 30 steps on 8gaussians through the real CLI."""
    tmp_path = tmp_path_factory.mktemp("toy")
    ckpt = fit_config(
        ROOT / "configs/toy2d/rectified_flow.yaml",
        tmp_path,
        "--trainer.max_steps",
        "30",
        "--data.source.init_args.num_train",
        "2048",
    )
    assert (ckpt.parent.parent / "samples" / "final.png").is_file()
    return ckpt


@pytest.mark.slow
def test_sample_toy2d_is_deterministic(toy_ckpt: Path, tmp_path: Path) -> None:
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.npz"
        main(f"sample --ckpt_path {toy_ckpt} --num_samples 37 --seed 5 --output {out} --steps 4 "
             "--batch_size 16".split())  # fmt: skip
        outs.append(np.load(out)["samples"])
        assert out.with_suffix(".png").is_file()
    assert outs[0].shape == (37, 2) and np.isfinite(outs[0]).all()
    np.testing.assert_array_equal(outs[0], outs[1])
    more = tmp_path / "more.npz"  # sample k depends on (seed, k) only, not on N or batch size
    main(f"sample --ckpt_path {toy_ckpt} --num_samples 40 --seed 5 --output {more} --steps 4 "
         "--batch_size 7".split())  # fmt: skip
    np.testing.assert_allclose(np.load(more)["samples"][:37], outs[0], rtol=1e-6, atol=1e-6)
    other = tmp_path / "c.npz"
    main(f"sample --ckpt_path {toy_ckpt} --num_samples 37 --seed 6 --output {other} --steps 4 "
         "--batch_size 16 --sampler heun".split())  # fmt: skip
    assert not np.allclose(np.load(other)["samples"], outs[0])


@pytest.mark.slow
def test_likelihood_command_on_toy(toy_ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(f"likelihood --ckpt_path {toy_ckpt} --num_samples 16 --batch_size 8 --divergence exact "
         "--rtol 1e-3 --atol 1e-3".split())  # fmt: skip
    printed = capsys.readouterr().out
    bpd = float(printed.split("val: ")[1].split(" ")[0])
    # An (untrained-ish) flow on 8gaussians: finite, and worse than the data's own entropy
    # (≈ 1.5 bits/dim for 8 modes of std 0.5) but not absurd.
    assert 1.0 < bpd < 20.0


@pytest.mark.slow
def test_reflow_command_and_config(toy_ckpt: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.pt"
    main(f"reflow --ckpt_path {toy_ckpt} --num_pairs 600 --steps 3 --output {pairs}".split())
    data = torch.load(pairs, weights_only=True)
    assert data["noise"].shape == data["samples"].shape == (600, 2)
    ckpt = fit_config(
        ROOT / "configs/toy2d/reflow.yaml",
        tmp_path / "run",
        "--trainer.max_steps",
        "2",
        "--data.global_batch_size",
        "64",
        "--model.init_args.init_from",
        str(toy_ckpt),
        "--data.source.init_args.path",
        str(pairs),
    )
    assert ckpt.is_file()


@pytest.mark.slow
def test_fit_and_sample_digits_through_the_console_script(tmp_path: Path) -> None:
    ckpt = fit_config(
        ROOT / "configs/digits/rectified_flow.yaml",
        tmp_path,
        "--trainer.max_steps",
        "3",
        "--model.init_args.net.init_args.base_channels",
        "16",
    )
    out = tmp_path / "digits.npz"
    script = Path(sys.executable).with_name("diffusion-pl")
    args = f"sample --ckpt_path {ckpt} --num_samples 10 --seed 0 --output {out} --steps 2"
    result = subprocess.run(
        [str(script), *args.split()],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    samples = np.load(out)["samples"]
    assert samples.shape == (10, 1, 8, 8)
    assert samples.min() >= -1 and samples.max() <= 1
    assert out.with_suffix(".png").is_file()


@pytest.mark.slow
def test_module_entry_point_documents_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "diffusion_pl", "fit", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "--trainer.max_steps" in result.stdout and "--data.global_batch_size" in result.stdout


def test_sample_rejects_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with cli_error(capsys, "num_samples must be > 0"):
        main("sample --ckpt_path x.ckpt --num_samples 0 --output o.npz".split())
    with cli_error(capsys, "unknown --sampler 'nope'"):
        main("sample --ckpt_path x.ckpt --num_samples 1 --output o.npz --sampler nope".split())
    with cli_error(capsys, r"missing\.ckpt' does not exist$") as stderr:
        main(f"sample --ckpt_path {tmp_path}/missing.ckpt --num_samples 1 --output o.npz".split())
    assert stderr[0].startswith("error: ")  # found after parsing: no usage line
