"""``diffusion-pl phema``: rebuild the EMA of any width from a run's post-hoc EMA snapshots
(Karras et al. 2024, EDM2, Sec. 3): find and read the snapshot files, then hand their tensors
to the math of :mod:`diffusion_pl.phema`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from torch import Tensor

from diffusion_pl.checkpoints import AtomicCheckpointIO, read_checkpoint
from diffusion_pl.cli.commands.fid import fid_sweep
from diffusion_pl.cli.options import (
    check_device,
    check_feature,
    check_positive,
    check_sampler_options,
    lists_samplers,
)
from diffusion_pl.cli.outputs import check_writable
from diffusion_pl.errors import UsageError
from diffusion_pl.metrics.fid import require_images
from diffusion_pl.phema import (
    SNAPSHOT_FOLDER,
    Snapshot,
    averaged_checkpoint,
    check_sigma_rel,
    reconstruct,
    select_run,
)

__all__ = ["find_snapshots", "find_template", "phema", "read_averages"]


@lists_samplers
def phema(
    run: str,
    sigma_rel: list[float],
    output: str,
    at_step: int | None = None,
    run_id: str | None = None,
    ckpt_path: str | None = None,
    sweep: bool = False,
    feature: str = "inception",
    feature_weights: str | None = None,
    num_samples: int = 50_000,
    split: Literal["train", "val"] = "val",
    sampler: str | None = None,
    steps: int | None = None,
    batch_size: int = 250,
    cache_dir: str | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> list[Path]:
    """Rebuild the EMA of any width σ_rel from a run's post-hoc EMA snapshots (EDM2, Sec. 3).

    The run must have trained with ``diffusion_pl.callbacks.PostHocEMA``. Each σ_rel becomes
    ``OUTPUT/phema-sigma_rel<σ_rel>-step<N>.ckpt``, which ``sample``, ``fid`` and ``likelihood``
    take as they take a checkpoint of ``fit``: a least-squares combination of the snapshots up
    to step N (:mod:`diffusion_pl.phema`), with the model and data config of the run's latest
    checkpoint. With ``--sweep true`` each is also scored by FID (as ``diffusion-pl fid``, one
    process) into ``OUTPUT/fid_vs_sigma_rel.json`` and ``.png``.

    Args:
        run: the run's folder (its ``trainer.default_root_dir`` or a log dir under it); every
            ``phema/`` folder below it is read, so a resumed run's version folders count too.
        sigma_rel: widths to rebuild, each in (0, 0.3003): ``0.05 0.08 0.12`` or
            ``[0.05,0.08,0.12]``.
        output: folder for the checkpoints (and the sweep's results); checked before any work.
        at_step: rebuild the averages as of this step (a snapshot's); default: the last one.
        run_id: which run, where ``--run`` holds snapshots of several (the error lists them).
        ckpt_path: checkpoint whose model and data config (and buffers) the outputs take;
            default: the run's checkpoint of the latest step.
        sweep: score every σ_rel by FID and write FID against σ_rel.
        feature: FID features (``--sweep``): ``inception`` or ``digits`` (offline).
        feature_weights: weights file of the extractor (default: its usual place).
        num_samples: generated images per σ_rel (``--sweep``).
        split: split of the reference statistics, ``train`` or ``val``.
        sampler: sampler name for the sweep, one of SAMPLER_NAMES; default: the run's.
        steps: sampler steps for the sweep; default: the sampler's.
        batch_size: images per sampling batch.
        cache_dir: reference statistics cache; default ``~/.cache/diffusion-pl/fid``.
        seed: seed of the sampling generators (the same samples' noise for every σ_rel).
        device: torch device of the sweep, e.g. ``cpu`` or ``cuda``.
    """
    if not sigma_rel or len({f"{s:g}" for s in sigma_rel}) != len(sigma_rel):
        raise UsageError(
            f"--sigma_rel must list distinct widths, e.g. [0.05,0.08], got {sigma_rel}"
        )
    for value in sigma_rel:
        check_sigma_rel(value, "--sigma_rel")
    if at_step is not None:
        check_positive(at_step=at_step)
    if sweep:
        check_sampler_options(sampler, steps)
        check_positive(num_samples=num_samples, batch_size=batch_size)
        check_device(device)
        check_feature(feature, feature_weights)
    if not Path(run).is_dir():
        raise FileNotFoundError(f"--run {run}: no such folder; pass the run's folder (its "
                                "trainer.default_root_dir or a log dir under it)")  # fmt: skip
    check_writable("output", output, folder=True)
    snapshots = select_run(find_snapshots(run), run, run_id)
    taken = [s.step for s in snapshots]
    step = taken[-1] if at_step is None else at_step
    if step not in taken:
        shown = ", ".join(map(str, taken[:20])) + (", ..." if len(taken) > 20 else "")
        raise ValueError(f"--at_step {at_step}: the run has no snapshot at that step; its "
                         f"snapshots are at steps {shown}: pass one of them")  # fmt: skip
    template_path = Path(ckpt_path) if ckpt_path else find_template(run, snapshots[0].run_id)
    template = read_checkpoint(template_path)
    if sweep:
        require_images(template.get("hyper_parameters", {}).get("data_shape", ()), template_path)
    averages, errors = reconstruct(snapshots, read_averages(snapshots, step), sigma_rel, step)
    used = [s for s in snapshots if s.step <= step]
    tracked = ", ".join(f"{s:g}" for s in used[-1].sigma_rels)
    paths = []
    for value, params, error in zip(sigma_rel, averages, errors, strict=True):
        path = Path(output) / f"phema-sigma_rel{value:g}-step{step}.ckpt"
        info = {"sigma_rel": value, "step": step, "run_id": used[-1].run_id,
                "snapshots": len(used), "profile_error": error}  # fmt: skip
        AtomicCheckpointIO().save_checkpoint(averaged_checkpoint(template, params, info), path)
        paths.append(path)
        print(f"sigma_rel {value:g} at step {step}: wrote {path} (from {len(used)} snapshots of "
              f"sigma_rel {tracked}; profile error {error:.2%})", flush=True)  # fmt: skip
        if error > PROFILE_ERROR_WARNING:
            print(f"warning: sigma_rel {value:g}: the profile fit error {error:.0%} is over "
                  f"{PROFILE_ERROR_WARNING:.0%}, so this average is far from the one asked for; "
                  f"ask for widths near the tracked ones ({tracked}) or keep denser snapshots",
                  flush=True)  # fmt: skip
    if sweep:
        fid_sweep(paths, sigma_rel, Path(output), feature, feature_weights, num_samples, split,
                  sampler, steps, batch_size, cache_dir, seed, device)  # fmt: skip
    return paths


PROFILE_ERROR_WARNING = 0.10
"""A rebuilt average whose relative profile error is over this is warned about: at 10 % its
weighting of the steps is visibly another width's (the fits of the tracked range are < 1 %)."""


def find_snapshots(run: str | Path) -> list[Snapshot]:
    """Every snapshot in ``run`` and below it (a resumed run logs to a new version folder).

    Sorted by step, then by write time.
    """
    found = []
    for path in sorted(Path(run).glob(f"**/{SNAPSHOT_FOLDER}/phema-*.pt")):
        data = read_checkpoint(path, mmap=True)
        found.append(Snapshot(path, int(data["step"]), str(data["run_id"]),
                              tuple(data["sigma_rels"]), tuple(data["gammas"])))  # fmt: skip
    return sorted(found, key=lambda s: (s.step, s.path.stat().st_mtime))


def read_averages(snapshots: Sequence[Snapshot], step: int) -> Iterator[list[dict[str, Tensor]]]:
    """The tracked averages of each snapshot up to ``step``, each file read when asked for."""
    for snapshot in snapshots:
        if snapshot.step <= step:
            yield read_checkpoint(snapshot.path)["averages"]


def find_template(run: str | Path, run_id: str) -> Path:
    """The checkpoint of run ``run_id`` under ``run`` at the latest step (the newest on ties).

    A checkpoint belongs to the run when its PostHocEMA state carries the run's id; its model
    and data config, and the tensors that are not parameters (buffers), go into the rebuilt
    checkpoints.
    """
    best: tuple[int, float, Path] | None = None
    for path in Path(run).glob("**/*.ckpt"):
        checkpoint = read_checkpoint(path, mmap=True)
        states = checkpoint.get("callbacks", {}).values()
        if any(isinstance(state, dict) and state.get("run_id") == run_id for state in states):
            key = (int(checkpoint.get("global_step", 0)), path.stat().st_mtime, path)
            best = key if best is None or key[:2] > best[:2] else best
    if best is None:
        raise ValueError(
            f"--run {run}: no checkpoint (*.ckpt) of run {run_id} below it, whose model config "
            "the rebuilt checkpoints need: pass --ckpt_path with a checkpoint of that run"
        )
    return best[2]
