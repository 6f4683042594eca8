"""FID (and KID) of a model's samples against cached reference statistics, split across ranks.

FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to features of real
and generated images, ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^½); KID (Bińkowski et al.
2018) is the unbiased MMD² with the cubic polynomial kernel, averaged over random subsets.
Both are computed by torchmetrics over features this module extracts once per image, so the
extractor runs once for both, and torchmetrics sums the statistics over DDP ranks.

Reference statistics are computed once per (dataset, split, resolution, extractor) and cached
(:mod:`~diffusion_pl.metrics.reference_stats`, which also reads published reference files).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from tqdm.auto import tqdm

from diffusion_pl.data import DiffusionDataModule
from diffusion_pl.data.sources import Split
from diffusion_pl.data.streaming import StreamingSplit
from diffusion_pl.generate import cycle_labels, every_class, generate
from diffusion_pl.metrics.features import resolve_extractor
from diffusion_pl.metrics.reference_stats import (
    default_cache_dir,
    read_statistics,
    reference_key,
)
from diffusion_pl.samplers import Sampler
from diffusion_pl.teleport import attach_data_moments

__all__ = ["FIDEvaluator", "require_images"]


class _Features(nn.Module):
    """Identity 'extractor' so torchmetrics consumes features computed once for FID and KID."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def require_images(data_shape: tuple[int, ...], source: object) -> None:
    """Refuse FID on data that are not images ``[C, H, W]`` (2-D toys: points ``(2,)``)."""
    if len(data_shape) != 3:
        raise ValueError(
            f"FID compares images, but {source} was trained on data of shape "
            f"{tuple(data_shape)}, not images [C, H, W]: for 2-D toys look at the scatter plot "
            "of `diffusion-pl sample` or run benchmarks/toy_quality.py (mode coverage)"
        )


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class FIDEvaluator(nn.Module):
    """Generate ``num_samples`` images with a model and score them against a data split.

    Sample k is drawn by :func:`~diffusion_pl.generate.generate` from (seed, k) alone, in chunks
    of ``batch_size``; rank r draws chunks r, r + world_size, …, so the sample set — and the
    FID — does not depend on the number of processes. A class-conditional model draws class
    k mod K for sample k. Reference statistics are cached on disk. A model of autoencoder codes
    (``Latents`` data) is scored on its samples decoded to images, against the statistics of
    the original images the codes encode (``datamodule.images``), not of their reconstructions.

    Args:
        feature: ``"digits"`` (offline, 8×8 digits), ``"inception"`` (torch-fidelity's
            InceptionV3, paper numbers) or any ``nn.Module`` with ``num_features``.
        split: data split of the reference statistics.
        num_samples: generated images per evaluation.
        batch_size: images per sampling / feature batch.
        kid: also compute KID (keeps the reference features; cheap for small extractors).
        kid_subset_size: KID subset size (capped by the number of real and fake images).
        cache_dir: where reference statistics live; default :func:`default_cache_dir`.
        reference: ready statistics to use instead of the cache: an ``.npz`` with ``mu`` and
            ``sigma`` (pytorch-fid, EDM) or torch-fidelity's ``.pt`` (:func:`read_statistics`).
        seed: seed of the sampling generators.
        progress: show progress bars (rank 0).
    """

    def __init__(
        self,
        feature: str | nn.Module = "digits",
        split: Split = "val",
        num_samples: int = 2000,
        batch_size: int = 250,
        kid: bool = False,
        kid_subset_size: int = 1000,
        cache_dir: str | None = None,
        reference: str | None = None,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        super().__init__()
        if num_samples < 2:
            raise ValueError(f"num_samples must be >= 2 for a covariance, got {num_samples}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.extractor = resolve_extractor(feature)
        dim = self.extractor.num_features
        self.fid = FrechetInceptionDistance(_Features(dim), reset_real_features=False)
        self.kid = None
        if kid:
            self.kid = KernelInceptionDistance(
                _Features(dim), subset_size=kid_subset_size, reset_real_features=False
            )
        self.split, self.num_samples, self.batch_size = split, num_samples, batch_size
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.reference = Path(reference) if reference else None
        self.seed, self.progress = seed, progress
        self.loaded_key: str | None = None
        self.cache_hit: bool | None = None

    # --- reference statistics ------------------------------------------------------------
    def cache_path(self, datamodule: DiffusionDataModule) -> Path:
        """The ``.npz`` holding the reference statistics of ``datamodule``'s split."""
        return self.cache_dir / f"{reference_key(datamodule, self.split, self.extractor)}.npz"

    def prepare_reference(self, datamodule: DiffusionDataModule) -> None:
        """Load the reference statistics into the metrics, computing and caching them once."""
        path = self.reference or self.cache_path(datamodule)
        if self.loaded_key == str(path):
            return
        rank, _ = _rank_and_world()
        self.fid.reset_real_features = True
        self.fid.reset()
        if self.kid is not None:
            self.kid.reset_real_features = True
            self.kid.reset()
        stats = read_statistics(path) if path.is_file() else {}
        self.cache_hit = bool(stats) and (self.kid is None or "features" in stats)
        if self.reference is not None and not self.cache_hit:
            raise FileNotFoundError(
                f"reference statistics {str(path)!r} not found"
                + ("" if self.kid is None else " or without the `features` KID needs")
            )
        if self.cache_hit:
            self._load(stats, rank)
        else:
            self._compute_real(datamodule)
            self._save(path, rank)
        self.fid.reset_real_features = False
        if self.kid is not None:
            self.kid.reset_real_features = False
        self.loaded_key = str(path)

    def _compute_real(self, datamodule: DiffusionDataModule) -> None:
        """Features of the whole split, each rank taking every ``world``-th batch."""
        rank, world = _rank_and_world()
        data = datamodule.images(self.split)
        if isinstance(data, StreamingSplit):
            raise ValueError(
                f"the {self.split} split is streamed, and FID's reference reads a whole split: "
                "use split: val"
            )
        starts = range(rank * self.batch_size, len(data), world * self.batch_size)
        index = [i for s in starts for i in range(s, min(s + self.batch_size, len(data)))]
        loader = DataLoader(Subset(data, index), batch_size=self.batch_size)
        bar = tqdm(loader, desc=f"FID reference ({self.split})", unit="batch",
                   disable=not self.progress or rank != 0)  # fmt: skip
        for x, _ in bar:
            self._update(self._features(x), real=True)

    def _save(self, path: Path, rank: int) -> None:
        """Write the synced reference statistics from rank 0 (atomically)."""
        with self.fid.sync_context(should_unsync=True):
            n = int(self.fid.real_features_num_samples)
            mu = self.fid.real_features_sum / n
            sigma = (self.fid.real_features_cov_sum - n * torch.outer(mu, mu)) / (n - 1)
            arrays = {"mu": mu.cpu().numpy(), "sigma": sigma.cpu().numpy(), "num_samples": n}
            if self.kid is not None:
                with self.kid.sync_context(should_unsync=True):
                    arrays["features"] = torch.cat(self.kid.real_features).cpu().numpy()
            if rank == 0:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
                np.savez(tmp, **arrays)
                os.replace(tmp, path)

    def _load(self, stats: dict[str, np.ndarray], rank: int) -> None:
        """Statistics into rank 0's states (the others stay zero: DDP sums them)."""
        mu = torch.as_tensor(stats["mu"], dtype=torch.float64)
        sigma = torch.as_tensor(stats["sigma"], dtype=torch.float64)
        # Published files (pytorch-fid, EDM) lack the count; any n > 1 gives back the same Σ.
        n = int(stats["num_samples"]) if "num_samples" in stats else 50_000
        if rank == 0:
            device = self.fid.real_features_sum.device
            self.fid.real_features_sum = (n * mu).to(device)
            self.fid.real_features_cov_sum = ((n - 1) * sigma + n * torch.outer(mu, mu)).to(device)
            self.fid.real_features_num_samples = torch.tensor(n, device=device)
        if self.kid is not None:  # each rank keeps a share; DDP concatenates them
            _, world = _rank_and_world()
            features = torch.as_tensor(stats["features"][rank::world])
            self.kid.real_features = [features.to(self.fid.real_features_sum.device)]

    # --- generated images ---------------------------------------------------------------
    def chunks(self) -> Iterator[tuple[int, int]]:
        """``(index of the first sample, size)`` of each chunk of this rank's share."""
        rank, world = _rank_and_world()
        for start in range(rank * self.batch_size, self.num_samples, world * self.batch_size):
            yield start, min(self.batch_size, self.num_samples - start)

    @torch.no_grad()
    def evaluate(
        self,
        module: nn.Module,
        datamodule: DiffusionDataModule,
        sampler: Sampler | None = None,
        *,
        guide: nn.Module | None = None,
        guidance_scale: float | None = None,
    ) -> dict[str, float]:
        """FID (and KID) of ``module.sample`` against the reference split.

        Args:
            module: a formulation; a class-conditional one draws all classes equally often.
            datamodule: the data the reference statistics come from.
            sampler: overrides the module's default sampler.
            guide: a weaker model of the same task for autoguidance.
            guidance_scale: autoguidance's w with a ``guide``; else classifier-free guidance's
                (default: the module's).

        Returns:
            ``{"fid": float}``, plus ``"kid"`` and ``"kid_std"`` when KID is on.
        """
        require_images(module.data_shape, type(module).__name__)
        labels = every_class(module)
        module.guided_denoiser(  # the model's guidance rules, before the reference statistics
            1, None if labels is None else cycle_labels(labels, 0, 1), guidance_scale, None, 1.0,
            guide,
        )  # fmt: skip
        attach_data_moments(module, module.sampler if sampler is None else sampler, datamodule)
        self.to(module.device)
        self.prepare_reference(datamodule)
        rank, _ = _rank_and_world()
        chunks = list(self.chunks())
        bar = tqdm(total=sum(n for _, n in chunks), desc="FID samples", unit="img",
                   disable=not self.progress or rank != 0)  # fmt: skip
        for start, n in chunks:
            x = generate(module, n, seed=self.seed, batch_size=n, start=start, sampler=sampler,
                         class_labels=every_class(module), guidance_scale=guidance_scale,
                         guide=guide)  # fmt: skip
            x = datamodule.decode(x.to(module.device))
            self._update(self._features(x), real=False)
            bar.update(n)
        bar.close()
        return self.compute()

    def compute(self) -> dict[str, float]:
        """Scores of the generated features so far, then forget them (not the reference)."""
        result = {"fid": float(self.fid.compute())}
        self.fid.reset()
        if self.kid is not None:
            n_real = sum(len(f) for f in self.kid.real_features)
            n_fake = sum(len(f) for f in self.kid.fake_features)
            self.kid.subset_size = min(self.kid.subset_size, n_real, n_fake)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)  # KID draws random subsets
                kid_mean, kid_std = self.kid.compute()
            result |= {"kid": float(kid_mean), "kid_std": float(kid_std)}
            self.kid.reset()
        return result

    def score_images(self, images: Tensor) -> dict[str, float]:
        """FID (and KID) of given images ``[N, C, H, W]`` in [−1, 1] against the reference.

        For real-vs-real floors and tests; :meth:`prepare_reference` must have run.
        """
        for x in images.split(self.batch_size):
            self._update(self._features(x), real=False)
        return self.compute()

    def _features(self, x: Tensor) -> Tensor:
        return self.extractor(x.to(self.fid.real_features_sum.device)).double()

    def _update(self, features: Tensor, real: bool) -> None:
        self.fid.update(features, real=real)
        if self.kid is not None:
            self.kid.update(features.float(), real=real)
