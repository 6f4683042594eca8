"""Latent space: encode with a tiny random AutoencoderKL, fit and sample on the codes, decode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import cli_error, fit_config
from lightning import LightningModule

from diffusion_pl.checkpoints import load_datamodule, load_module, read_checkpoint
from diffusion_pl.cli import DiffusionCLI, main
from diffusion_pl.data import DiffusionDataModule, Digits, Latents
from diffusion_pl.data.autoencoder_kl import Autoencoder
from diffusion_pl.metrics import FIDEvaluator

diffusers = pytest.importorskip("diffusers")  # in the dev and latent extras
pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "configs/digits/rectified_flow_32.yaml"
LATENT = ROOT / "configs/digits/latent_rectified_flow.yaml"


def _tiny_autoencoder(folder: Path, channels: int) -> Path:
    """A randomly initialised AutoencoderKL: 32×32 images → 4×16×16 codes (one halving)."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=channels, out_channels=channels, latent_channels=4, sample_size=32,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4,
        scaling_factor=0.5, shift_factor=0.25,
    )  # fmt: skip
    vae.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``encode`` the 32×32 digits with the tiny autoencoder, then ``fit`` 2 steps on the codes."""
    root = tmp_path_factory.mktemp("latent")
    autoencoder = _tiny_autoencoder(root / "ae", channels=1)
    main(["encode", "--config", str(IMAGES), "--autoencoder", str(autoencoder),
          "--output", str(root / "codes"), "--batch_size", "512"])  # fmt: skip
    ckpt = fit_config(
        LATENT, root / "run", "--data.source.init_args.path", str(root / "codes"),
        "--data.global_batch_size", "16", "--trainer.max_steps", "2",
        "--trainer.limit_val_batches", "0",
        "--model.init_args.net.init_args.image_size", "16",
        "--model.init_args.net.init_args.base_channels", "16",
        "--model.init_args.net.init_args.attn_resolutions", "[]",
        "--model.init_args.sampler.init_args.steps", "2",
    )  # fmt: skip
    return {"autoencoder": autoencoder, "codes": root / "codes", "ckpt": ckpt, "root": root}


@pytest.mark.slow
def test_encode_writes_the_scaled_codes_of_both_splits(run: dict[str, Path]) -> None:
    metadata = json.loads((run["codes"] / "latents.json").read_text())
    assert metadata["latent_shape"] == [4, 16, 16] and metadata["image_shape"] == [1, 32, 32]
    assert metadata["examples"] == {"train": 1437, "val": 360}
    assert (metadata["scaling_factor"], metadata["shift_factor"]) == (0.5, 0.25)
    source = Latents(str(run["codes"]))
    assert source.shape == (4, 16, 16) and source.num_classes == 10 and not source.clip_samples
    val = source.load("val")
    codes, labels = zip(*[val[i] for i in range(5)], strict=True)
    images = Digits(size=32).load("val")
    x = torch.stack([images[i][0] for i in range(5)])
    vae = diffusers.AutoencoderKL.from_pretrained(run["autoencoder"])
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean  # z = s (E(x) − b) with s = 0.5, b = 0.25
        expected = vae.decode(mean).sample.clamp(-1, 1)
    torch.testing.assert_close(torch.stack(codes), 0.5 * (mean - 0.25), atol=1e-5, rtol=1e-4)
    assert [int(y) for y in labels] == [int(images[i][1]) for i in range(5)]
    decoded = source.decode(torch.stack(codes))  # x = D(z / s + b)
    torch.testing.assert_close(decoded, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_fit_links_clip_samples_and_sample_decodes_through_the_autoencoder(
    run: dict[str, Path], tmp_path: Path
) -> None:
    checkpoint = read_checkpoint(run["ckpt"])
    assert checkpoint["hyper_parameters"]["clip_samples"] is False  # codes are not clipped
    assert len(list((run["root"] / "run").rglob("final.png"))) == 1  # the decoded sample grid
    out = tmp_path / "s"
    main(["sample", "--ckpt_path", str(run["ckpt"]), "--num_samples", "6", "--output", str(out)])
    saved = np.load(tmp_path / "s.npz")
    samples, codes = torch.from_numpy(saved["samples"]), torch.from_numpy(saved["latents"])
    assert samples.shape == (6, 1, 32, 32) and codes.shape == (6, 4, 16, 16)
    assert samples.abs().max() <= 1 and codes.abs().max() > 1  # codes left unclipped
    torch.testing.assert_close(samples, Latents(str(run["codes"])).decode(codes))


@pytest.mark.slow
def test_fid_decodes_samples_and_compares_with_the_original_images(
    run: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[tuple[int, ...]] = []
    decode = Latents.decode
    monkeypatch.setattr(Latents, "decode", lambda s, z: decoded.append(z.shape) or decode(s, z))
    module, datamodule = load_module(run["ckpt"]), load_datamodule(run["ckpt"])
    assert datamodule.images("val")[0][0].shape == (1, 32, 32)  # the reference: images
    evaluator = FIDEvaluator("digits", num_samples=8, batch_size=8, cache_dir=str(tmp_path))
    scores = evaluator.evaluate(module, datamodule)
    assert decoded == [(8, 4, 16, 16)] and np.isfinite(scores["fid"]) and scores["fid"] > 0
    assert evaluator.cache_path(datamodule).name.startswith("latents-val-4x16x16-")


@pytest.mark.slow
def test_codes_whose_shape_disagrees_with_the_net_fail_early_naming_both(
    run: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with cli_error(capsys, r"the data are 16x16 images but the UNet has image_size=8"):
        fit_config(LATENT, tmp_path, "--data.source.init_args.path", str(run["codes"]))


def test_rgb_autoencoder_takes_grey_images_and_missing_weights_are_named(tmp_path: Path) -> None:
    model = Autoencoder(str(_tiny_autoencoder(tmp_path / "rgb", channels=3)))
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    z = model.encode(x)
    assert z.shape == (2, 4, 16, 16) == (2, *model.latent_shape((1, 32, 32)))
    torch.testing.assert_close(z, model.encode(x.expand(-1, 3, -1, -1)))  # grey as RGB
    assert model.decode(z, channels=1).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match=r"shape \(1, 31, 31\) do not fit.*divisible by 2"):
        model.latent_shape((1, 31, 31))
    with pytest.raises(FileNotFoundError, match=r"AutoencoderKL .*nowhere.* no such folder"):
        Autoencoder(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="written by `diffusion-pl encode"):
        Latents(str(tmp_path))


FORMULATIONS = ["rectified_flow", "vdm", "ncsn", "score_sde", "edm", "meanflow"]
FORMULATIONS += ["consistency_train"]
EXTRA = {
    "consistency_train": ["--model.init_args.levels.init_args.total_steps", "10"],
    "ncsn": ["--model.init_args.sampler.init_args.steps_per_level", "1"],
    # The corrector's step, 2 (snr ‖z‖ / ‖score‖)², is unbounded for an untrained score.
    "score_sde": ["--model.init_args.sampler.init_args.corrector_steps", "0"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", FORMULATIONS)
def test_every_formulation_trains_and_samples_on_codes_unchanged(
    run: dict[str, Path], name: str
) -> None:
    """Each digits config on the codes: a finite loss, and 2 finite samples (few steps)."""
    args = ["--config", str(ROOT / f"configs/digits/{name}.yaml"), "--trainer.logger", "false",
            "--data.source", "diffusion_pl.data.Latents",
            "--data.source.init_args.path", str(run["codes"]),
            "--model.init_args.net.init_args.in_channels", "4",
            "--model.init_args.net.init_args.image_size", "16",
            "--model.init_args.net.init_args.base_channels", "16",
            "--model.init_args.net.init_args.attn_resolutions", "[]",
            *EXTRA.get(name, [])]  # fmt: skip
    cli = DiffusionCLI(LightningModule, DiffusionDataModule, subclass_mode_model=True, run=False,
                       args=args)  # fmt: skip
    module = cli.model
    assert module.clip_samples is False and module.data_shape == (4, 16, 16)
    x, y = next(iter(torch.utils.data.DataLoader(cli.datamodule.dataset("train"), batch_size=4)))
    assert torch.isfinite(module.batch_loss((x, y), torch.Generator().manual_seed(0))).all()
    sampler = module.sampler
    if "steps" in sampler.arguments() and name != "ncsn":  # NCSN's steps are its levels
        sampler = sampler.with_steps(2)
    z = module.sample(2, sampler=sampler, generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 4, 16, 16) and torch.isfinite(z).all()
