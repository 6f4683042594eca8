"""``diffusion-pl tune-grid``: the N-step time grid of least one-step error for a model and
sampler (GITS), written as JSON for ``--grid file:PATH``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Literal

import torch

from diffusion_pl.callbacks import Weights
from diffusion_pl.checkpoints import load_datamodule
from diffusion_pl.cli.loading import load_diffusion_module
from diffusion_pl.cli.options import check_device, check_positive, check_sampler_options
from diffusion_pl.cli.outputs import check_writable, json_writer, save_results
from diffusion_pl.errors import UsageError
from diffusion_pl.generate import choose_sampler, counting_calls
from diffusion_pl.samplers import SAMPLERS, Sampler, UniformGrid
from diffusion_pl.samplers.gits import candidate_indices, default_candidates
from diffusion_pl.samplers.tuning import tune_grid
from diffusion_pl.teleport import moments_of_data

__all__ = ["deterministic_samplers", "tune_grid_command"]


def deterministic_samplers() -> list[str]:
    """Names of the samplers that take a grid and draw no noise beyond the prior (defaults)."""
    return [
        name
        for name, cls in SAMPLERS.items()
        if "grid" in (s := cls()).arguments() and s.is_deterministic() and name != "meanflow"
    ]


def _check_tunable(sampler: Sampler) -> None:
    """Refuse a sampler without a grid, a stochastic one, and meanflow (its jumps are no steps
    of the ODE that the reference trajectory solves)."""
    if (
        "grid" not in sampler.arguments()
        or not sampler.is_deterministic()
        or sampler.name == "meanflow"
    ):
        raise UsageError(
            f"tune-grid tunes deterministic ODE samplers; {sampler.name} with {sampler.settings()}"
            f" is not one: use one of "
            f"{', '.join(deterministic_samplers())} (ddim and er_sde with eta=0, edm_sde with "
            "s_churn=0)"
        )


def tune_grid_command(
    ckpt_path: str,
    steps: int,
    output: str,
    sampler: str | None = None,
    method: Literal["gits"] = "gits",
    num_samples: int = 64,
    reference_steps: int = 200,
    candidates: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    weights: Weights = "ema",
    teleport: bool = False,
) -> dict[str, object]:
    """Find the ``--steps``-step time grid for a checkpoint and sampler; write it as JSON.

    GITS (Chen et al. 2024): draw ``--num_samples`` prior samples, solve the model's ODE
    finely (Heun, ``--reference_steps`` steps, on Karras et al.'s ρ = 7 grid; trained steps on
    a DDPM path), take ``--candidates`` + 1 of those times, score every step t_i → t_j by
    the mean distance of one sampler step from the reference state to the reference state,
    and pick the N-step path of least total cost by dynamic programming. A multistep solver
    (dpmpp_2m, ipndm, unipc) is scored by its first, first-order step (GITS's choice: its
    later steps depend on the path taken). The unconditional model is tuned.

    Sample with the grid: ``diffusion-pl sample --grid file:OUTPUT --sampler S`` (``fid``
    too), or in YAML ``grid: {class_path: diffusion_pl.samplers.CustomGrid, init_args:
    {times: [...]}}`` with the JSON's times.

    Args:
        ckpt_path: checkpoint written by ``diffusion-pl fit``.
        steps: N, the steps of the grid (> 0).
        output: the JSON to write: times, sampler, steps, method, cost (the tuned grid's
            total one-step cost), uniform_cost and default_cost (the uniform and the
            sampler's default grid's), endpoint_error (of the whole N-step run from the
            batch against the reference ODE's endpoint, per grid: what the costs stand in
            for; a note says when a baseline does better), checkpoint, num_samples, seed.
            Checked first.
        sampler: a deterministic sampler with a grid (ddim at eta=0, euler, heun, dpmpp_2m,
            dpmpp_3m, ipndm, unipc, edm_sde at s_churn=0, er_sde at eta=0); default: the
            checkpoint's.
        method: ``gits`` (the only one).
        num_samples: prior samples of the reference trajectory (the batch).
        reference_steps: Heun steps of the reference trajectory (2 network batches each).
        candidates: M; the grid's times are chosen among M + 1 reference times. The cost
            matrix takes M + 1 network batches (one per row), and one more per pair i < j
            for heun and edm_sde (their corrector), M (M + 1) / 2 more. Default: 100, and
            10 for heun and edm_sde.
        seed: seed of the prior samples.
        device: torch device, e.g. ``cpu`` or ``cuda``.
        weights: ``ema`` or ``raw`` weights.
        teleport: let the grid start below t_max, reached by the Gaussian teleport
            (:mod:`diffusion_pl.teleport`: the exact flow of a Gaussian with the training
            data's mean and covariance, no network call); the dynamic programming chooses the
            start with the steps, scoring the teleport by its distance from the reference.
            The JSON then says ``"teleport": true`` when the start is below t_max.
    """
    check_positive(steps=steps, num_samples=num_samples, reference_steps=reference_steps)
    if candidates is not None:
        check_positive(candidates=candidates)
    check_sampler_options(sampler, steps)
    check_device(device)
    if sampler is not None:
        _check_tunable(SAMPLERS[sampler]())
    out = Path(output)
    check_writable("output", out)
    module = load_diffusion_module(ckpt_path, device, weights)
    chosen = choose_sampler(module.sampler, sampler, steps)
    _check_tunable(chosen)
    if candidates is None:
        candidates = default_candidates(chosen, reference_steps)
    try:
        candidate_indices(reference_steps, candidates)
    except ValueError as err:
        raise UsageError(f"--candidates: {err}") from None
    if steps > candidates:
        raise UsageError(f"--steps {steps} needs at least as many --candidates, got {candidates}")
    path = module.path
    x = path.prior_sample(
        (num_samples, *module.data_shape),
        generator=torch.Generator().manual_seed(seed),
        device=module.device,
        dtype=module.dtype,
    )
    baselines = {"uniform": UniformGrid(), "default": chosen.default_grid}
    for name, grid in list(baselines.items()):
        try:
            grid(path, steps)
        except ValueError as err:
            print(f"note: no {name} grid to compare with: {err}", file=sys.stderr, flush=True)
            del baselines[name]
    moments = None
    if teleport:
        moments = moments_of_data(load_datamodule(ckpt_path))
    start = time.perf_counter()
    with counting_calls(module.net) as calls:
        tuned = tune_grid(chosen, module.denoiser(), path, x, steps,
                          reference_steps=reference_steps, candidates=candidates,
                          baselines=baselines, teleport=moments, progress=True)  # fmt: skip
    seconds = time.perf_counter() - start
    result: dict[str, object] = {
        "times": tuned.times,
        "teleport": tuned.teleport,
        "sampler": chosen.name,
        "steps": steps,
        "method": method,
        "cost": tuned.cost,
        "uniform_cost": tuned.baseline_costs.get("uniform"),
        "default_cost": tuned.baseline_costs.get("default"),
        "endpoint_error": tuned.endpoint_errors,
        "checkpoint": ckpt_path,
        "num_samples": num_samples,
        "seed": seed,
        "reference_steps": reference_steps,
        "candidates": candidates,
    }
    costs = ", ".join(f"{k} grid {v:.4g}" for k, v in tuned.baseline_costs.items())
    shown = ", ".join(f"{t:.4g}" for t in tuned.times)
    if tuned.teleport:
        shown = f"teleport {path.t_max:.4g} → {shown}"
    print(f"{chosen.name}, {steps} steps: times [{shown}]; total one-step cost {tuned.cost:.4g} "
          f"({costs}); {calls[0]} network batches of {num_samples}, {seconds:.1f} s",
          flush=True)  # fmt: skip
    errors = ", ".join(f"{k} {v:.4g}" for k, v in tuned.endpoint_errors.items())
    print(f"endpoint error of {steps} steps against the reference ODE, on the tuning batch: "
          f"{errors}", flush=True)  # fmt: skip
    beaten = [k for k, v in tuned.endpoint_errors.items() if v < tuned.endpoint_errors["tuned"]]
    if beaten:
        print(f"note: the {' and '.join(beaten)} grid ends closer to the reference ODE than the "
              "tuned one (the one-step costs are a proxy); prefer it", file=sys.stderr,
              flush=True)  # fmt: skip
    save_results("output", {out: json_writer(result)})
    print(f"wrote {out}; sample with --grid file:{out}", flush=True)
    return result
