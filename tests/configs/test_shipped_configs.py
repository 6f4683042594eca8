"""Every shipped YAML fits one step on the CPU, offline, through the real CLI in-process.

Each config runs as shipped except for what makes it one small offline step: CPU, fp32, one
device, a batch of 8, no sample grids and no FID (their features would download), no
validation, no logger. A config that trains from another run gets that run made first: its
teacher (or initial model) is the shipped config it names, fitted one step the same way; the
reflow pairs come from ``diffusion-pl reflow`` on that run; the latent codes from
``diffusion-pl encode`` with a tiny random autoencoder. CIFAR-10 is replaced by a 16-image
stand-in with its columns, saved to disk, and its UNets are cut to 16 channels and one block
per level (their layout, attention and embeddings unchanged); the digits autoencoder is cut to
8 channels per level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from cli_runs import fit_config, write_config

from diffusion_pl.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.relative_to(ROOT / "configs").as_posix() for p in ROOT.glob("configs/**/*.yaml"))

# Configs that load another run's checkpoint: config -> (model key, the config of that run).
# `checkpoint_value` writes what each key holds.
LOADS_A_RUN = {
    "cifar10/consistency_distill.yaml": ("teacher", "cifar10/edm.yaml"),
    "cifar10/lcm.yaml": ("teacher", "cifar10/vdm.yaml"),
    "digits/lcm.yaml": ("teacher", "digits/vdm_cond.yaml"),
    "digits/lcm_lora.yaml": ("teacher", "digits/vdm_cond.yaml"),
    "digits/latent_lcm.yaml": ("teacher", "digits/latent_vdm_cond.yaml"),
    "digits/consistency_distill.yaml": ("teacher", "digits/rectified_flow.yaml"),
    "toy2d/consistency_distill.yaml": ("teacher", "toy2d/rectified_flow.yaml"),
    "digits/consistency_tune.yaml": ("init", "digits/edm.yaml"),
    "digits/lora_finetune.yaml": ("base_ckpt", "digits/vdm_cond.yaml"),
    "toy2d/consistency_tune.yaml": ("init", "toy2d/edm.yaml"),
    "toy2d/reflow.yaml": ("init_from", "toy2d/rectified_flow.yaml"),
}


def checkpoint_value(key: str, ckpt: Path) -> Any:
    """What the ``LOADS_A_RUN`` key ``key`` holds to load the run saved in ``ckpt``: a
    consistency model's teacher or start and a LoRA run's base are ``Teacher`` objects,
    reflow's run a path."""
    if key == "init_from":
        return str(ckpt)
    return {"class_path": "diffusion_pl.checkpoints.Checkpoint", "init_args": {"path": str(ckpt)}}


# Callbacks left out: sample grids cost a sampling run, FID downloads or computes features.
SKIPPED_CALLBACKS = (
    "diffusion_pl.callbacks.SampleGrid", "diffusion_pl.callbacks.FID",
    "diffusion_pl.autoencoders.ReconstructionGrid", "diffusion_pl.autoencoders.ReconstructionFID",
)  # fmt: skip
ONE_STEP = {
    "accelerator": "cpu", "devices": 1, "strategy": "auto", "precision": "32-true",
    "max_steps": 1, "limit_val_batches": 0, "num_sanity_val_steps": 0, "logger": False,
    "enable_progress_bar": False, "enable_model_summary": False,
}  # fmt: skip


class Runs:
    """The one-step runs and inputs the configs need, each made once per session under ``root``.

    Args:
        root: folder of everything made.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: dict[str, Path] = {}

    def _once(self, name: str, make: Any) -> Path:
        if name not in self.made:
            self.made[name] = make(self.root / name.replace("/", "_").removesuffix(".yaml"))
        return self.made[name]

    def fit(self, config: str) -> Path:
        """The last.ckpt of ``config`` fitted one step (with what it needs made first)."""
        return self._once(config, lambda out: self._fit(config, out))

    def _fit(self, config: str, out: Path) -> Path:
        out.mkdir(parents=True)
        model = {}
        if config in LOADS_A_RUN:
            key, teacher = LOADS_A_RUN[config]
            model[key] = checkpoint_value(key, self.fit(teacher))
        source = f"configs/{config}"
        shipped = yaml.safe_load((ROOT / source).read_text())["trainer"]["callbacks"]
        callbacks = [c for c in shipped if c["class_path"] not in SKIPPED_CALLBACKS]
        one_step = write_config(source, out / "config.yaml", ONE_STEP, callbacks, **model)
        return fit_config(one_step, out / "run", *self._overrides(config))

    def _overrides(self, config: str) -> list[str]:
        """CLI overrides: a small batch, read in-process from local inputs; a narrow CIFAR UNet."""
        args = ["--data.global_batch_size", "8"]
        if config.startswith("cifar10/"):
            stand_in = self._once("cifar10", _cifar10_stand_in)
            args += ["--data.source.init_args.path", str(stand_in),
                     "--data.source.init_args.from_disk", "true",
                     "--data.num_workers", "0", "--data.pin_memory", "false",
                     "--model.init_args.net.init_args.base_channels", "16",
                     "--model.init_args.net.init_args.num_res_blocks", "1"]  # fmt: skip
        if config == "digits/autoencoder.yaml":  # narrow: the export encodes the train split
            args += ["--model.init_args.block_out_channels", "[8, 8, 8]",
                     "--model.init_args.norm_num_groups", "4"]  # fmt: skip
        if config.startswith("digits/latent_"):
            args += ["--data.source.init_args.path", str(self._once("codes", _latent_codes))]
        if config == "toy2d/reflow.yaml":
            args += ["--data.source.init_args.path", str(self._once("pairs", self._pairs))]
        return args

    def _pairs(self, out: Path) -> Path:
        """``diffusion-pl reflow``: 64 pairs from the toy rectified flow."""
        out.mkdir()
        ckpt = self.fit(LOADS_A_RUN["toy2d/reflow.yaml"][1])
        main(["reflow", "--ckpt_path", str(ckpt), "--num_pairs", "64", "--steps", "2",
              "--output", str(out / "pairs.pt")])  # fmt: skip
        return out / "pairs.pt"


def _cifar10_stand_in(out: Path) -> Path:
    """16 random 32×32 RGB images per split with CIFAR-10's columns, as ``save_to_disk`` writes."""
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)

    def split() -> Any:
        images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
        features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})
        return datasets.Dataset.from_dict(
            {"img": list(images), "label": list(range(10)) + list(range(6))}, features=features
        )

    datasets.DatasetDict({"train": split(), "test": split()}).save_to_disk(str(out))
    return out


def _latent_codes(out: Path) -> Path:
    """``encode`` the 32×32 digits with a tiny random AutoencoderKL into 4×8×8 codes (2 halvings),
    the shape the nets of configs/digits/latent_*.yaml expect."""
    diffusers = pytest.importorskip("diffusers")  # in the dev and latent extras
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=4, sample_size=32,
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=[8] * 3, layers_per_block=1, norm_num_groups=4,
    )  # fmt: skip
    vae.save_pretrained(out / "ae")
    main(["encode", "--config", str(ROOT / "configs/digits/rectified_flow_32.yaml"),
          "--autoencoder", str(out / "ae"), "--output", str(out / "codes"),
          "--batch_size", "512"])  # fmt: skip
    return out / "codes"


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """The session's one-step runs."""
    return Runs(tmp_path_factory.mktemp("shipped"))


@pytest.mark.parametrize("config", CONFIGS)
def test_shipped_config_fits_one_step(config: str, runs: Runs) -> None:
    ckpt = runs.fit(config)
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 1
