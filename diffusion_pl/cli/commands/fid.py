"""``diffusion-pl fid``: FID (and KID) of a checkpoint's samples; and the FID sweep of
``phema --sweep`` over rebuilt averages."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist

from diffusion_pl.callbacks import Weights
from diffusion_pl.checkpoints import load_datamodule, read_checkpoint
from diffusion_pl.cli.loading import SamplingOptions, load_for_sampling
from diffusion_pl.cli.options import check_feature, check_positive, lists_samplers
from diffusion_pl.cli.outputs import check_writable, json_writer, measurement, save_results
from diffusion_pl.generate import counting_calls
from diffusion_pl.metrics import FIDEvaluator
from diffusion_pl.metrics.features import resolve_extractor
from diffusion_pl.metrics.fid import require_images
from diffusion_pl.visualize import save_curve

__all__ = ["fid", "fid_sweep"]


@lists_samplers
def fid(
    ckpt_path: str,
    num_samples: int = 50_000,
    feature: str = "inception",
    feature_weights: str | None = None,
    split: Literal["train", "val"] = "val",
    reference: str | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    grid: str | None = None,
    batch_size: int = 250,
    kid: bool = False,
    weights: Weights = "ema",
    cache_dir: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    output: str | None = None,
    guidance_scale: float | None = None,
    guide_ckpt: str | None = None,
    lora: list[str] | None = None,
) -> dict[str, float]:
    """FID (and KID) of a checkpoint's samples against a split of its training data.

    Run it under ``torchrun --nproc-per-node G`` to split the samples over G processes (NCCL
    on GPUs, one GPU each; gloo on CPU): the score does not depend on G.

    Args:
        ckpt_path: checkpoint written by ``diffusion-pl fit`` (its data config is reused).
        num_samples: generated images (50,000 for numbers comparable with papers).
        feature: ``inception`` (torch-fidelity's InceptionV3) or ``digits`` (offline).
        feature_weights: weights file of the extractor (default: its usual place).
        split: split of the reference statistics, ``train`` or ``val``.
        reference: ready ``mu``/``sigma``: ``.npz`` (pytorch-fid, EDM) or torch-fidelity ``.pt``.
        sampler: sampler name, one of SAMPLER_NAMES; default: the checkpoint's.
        steps: sampler steps (what they count depends on the sampler: see ``diffusion-pl
            sample --help``); default: the sampler's.
        grid: time grid (one of GRIDS), or file:PATH of ``tune-grid``; default: the
            sampler's.
        batch_size: images per sampling batch (per process).
        kid: also compute KID.
        weights: ``ema`` or ``raw`` weights of the checkpoint.
        cache_dir: reference statistics cache; default ``~/.cache/diffusion-pl/fid``.
        seed: seed of the sampling generators.
        device: ``cpu`` or ``cuda`` (under torchrun each process takes ``cuda:LOCAL_RANK``).
        output: optional JSON file (checked before any work) for the scores and how they were
            measured: checkpoint, split, num_samples, seed, sampler, steps, nfe (network
            evaluations per sample), feature, weights, guide, LoRA adapters.
        guidance_scale: classifier-free guidance scale w of a class-conditional model (default:
            the checkpoint's); with ``--guide_ckpt``, autoguidance's w (required).
        guide_ckpt: checkpoint of a weaker model of the same data, path and conditioning, for
            autoguidance (as for ``diffusion-pl sample``).
        lora: LoRA adapters added to the model, ``PATH[:SCALE]``, the option repeated for
            several (``--lora style.pt --lora lcm.pt:0.8``), as for ``diffusion-pl sample``.
    """
    options = SamplingOptions(
        sampler, steps, grid, weights, guide_ckpt, guidance_scale, tuple(lora or ())
    )
    options.check(device)
    check_positive(batch_size=batch_size)
    check_feature(feature, feature_weights)
    if output is not None:
        check_writable("output", output)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        if device.startswith("cuda"):
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank_zero = not distributed or dist.get_rank() == 0
    loaded = load_for_sampling(ckpt_path, options, device)
    module, guide, chosen = loaded.module, loaded.guide, loaded.sampler
    require_images(module.data_shape, ckpt_path)
    extractor = resolve_extractor(feature, feature_weights)
    evaluator = FIDEvaluator(
        extractor, split, num_samples, batch_size, kid=kid, cache_dir=cache_dir,
        reference=reference, seed=seed, progress=rank_zero,
    )  # fmt: skip
    with counting_calls(module.net) as calls:
        scores = evaluator.evaluate(module, load_datamodule(ckpt_path), chosen, guide=guide,
                                    guidance_scale=guidance_scale)  # fmt: skip
    nfe = calls[0] / max(1, len(list(evaluator.chunks())))
    if distributed:
        dist.destroy_process_group()
    if rank_zero:
        guided = "" if guide is None else f", guided by {guide_ckpt} at w={guidance_scale:g}"
        print(f"{split} ({num_samples} samples, {chosen}{guided}, {feature} features): "
              + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()), flush=True)  # fmt: skip
        if output is not None:
            record = measurement(
                ckpt_path, split=split, num_samples=num_samples, seed=seed, sampler=str(chosen),
                steps=chosen.arguments().get("steps"), nfe=nfe, feature=feature,
                weights=weights, guide_ckpt=guide_ckpt, guidance_scale=guidance_scale,
                lora=list(lora or ()), **scores,
            )  # fmt: skip
            save_results("output", {Path(output): json_writer(record)})
            print(f"wrote {output}", flush=True)
    return scores


def fid_sweep(
    paths: list[Path],
    sigma_rel: list[float],
    output: Path,
    feature: str,
    feature_weights: str | None,
    num_samples: int,
    split: Literal["train", "val"],
    sampler: str | None,
    steps: int | None,
    batch_size: int,
    cache_dir: str | None,
    seed: int,
    device: str,
) -> dict[str, object]:
    """FID of each rebuilt checkpoint (``phema --sweep``): ``fid_vs_sigma_rel.json`` and ``.png``.

    One evaluator scores them all against the same reference with the same noise (seed), so
    the scores differ only by the averaged weights.
    """
    evaluator = FIDEvaluator(resolve_extractor(feature, feature_weights), split, num_samples,
                             batch_size, cache_dir=cache_dir, seed=seed)  # fmt: skip
    datamodule = load_datamodule(paths[0])
    rows = []
    for value, path in sorted(zip(sigma_rel, paths, strict=True)):
        loaded = load_for_sampling(str(path), SamplingOptions(sampler, steps), device)
        module, chosen = loaded.module, loaded.sampler
        score = evaluator.evaluate(module, datamodule, chosen)["fid"]
        rows.append({"sigma_rel": value, "fid": score, "checkpoint": str(path)})
        print(f"sigma_rel {value:g}: FID {score:.4f} ({num_samples} samples, {chosen}, {feature} "
              "features)", flush=True)  # fmt: skip
    best = min(rows, key=lambda r: r["fid"])
    result = {"step": read_checkpoint(paths[0], mmap=True)["global_step"], "feature": feature,
              "split": split, "num_samples": num_samples, "sampler": str(chosen),
              "results": rows, "best": best}  # fmt: skip
    table, picture = output / "fid_vs_sigma_rel.json", output / "fid_vs_sigma_rel.png"
    save_results("output", {
        table: json_writer(result),
        picture: lambda f: save_curve([r["sigma_rel"] for r in rows], [r["fid"] for r in rows],
                                      f, "sigma_rel", f"FID ({feature})",
                                      f"post-hoc EMA at step {result['step']}"),
    })  # fmt: skip
    print(f"best sigma_rel {best['sigma_rel']:g} (FID {best['fid']:.4f}); wrote {table} and "
          f"{picture}", flush=True)  # fmt: skip
    return result
