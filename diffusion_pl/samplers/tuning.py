"""GITS's search for one model (:mod:`diffusion_pl.samplers.gits`): the N-step grid of least
one-step cost against a fine reference trajectory, and its start by the Gaussian teleport.

With the data's moments (``teleport``), the grid may start at any candidate t_i below t_max,
reached by the Gaussian teleport (:mod:`diffusion_pl.teleport`): for each start the dynamic
programming finds the best N steps from there, and the start whose whole run ends closest to
the reference endpoint is kept (:func:`teleported_start`).

Reference: Chen et al. (2024), "On the Trajectory Regularity of ODE-based Diffusion Sampling"
(GITS), Sec. 4 and Algorithm 1; Wang & Vastola (2023), "The Hidden Linear Structure in
Score-Based Models", Sec. 5 (the teleport).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffusion_pl.parameterization import DenoiserFn
from diffusion_pl.paths import NoisePath
from diffusion_pl.samplers.base import Sampler
from diffusion_pl.samplers.gits import (
    candidate_indices,
    cost_matrix,
    fine_grid,
    least_cost_path,
    mean_distance,
    reference_trajectory,
    solve_on,
    step_costs,
)
from diffusion_pl.samplers.grids import Grid
from diffusion_pl.teleport import DataMoments

__all__ = ["TunedGrid", "teleported_start", "tune_grid"]


def teleported_start(
    sampler: Sampler,
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    target: Tensor,
    cost: Tensor,
    ts: Tensor,
    steps: int,
    moments: DataMoments,
) -> tuple[list[int], float]:
    """The start of a teleporting grid, and its path and cost: for each candidate start t_i
    (t_0 = t_max: no teleport), the least-cost N-step path from there
    (:func:`least_cost_path`), run whole from ``x`` (teleported to t_i, then the sampler on the
    path's times); the start whose run ends closest to the reference endpoint ``target`` wins.

    The one-step costs do not price the teleport: it moves each sample onto another
    trajectory of nearly the same distribution, which the path-wise distance counts in full, and
    the first steps it saves are the costliest. Whole runs compare the two honestly. One
    dynamic programming and one N-step run of the batch per candidate.
    """
    best: tuple[float, list[int], float] | None = None
    for i in range(len(ts) - steps):
        start = torch.full((len(ts),), torch.inf, dtype=torch.float64)
        start[i] = 0.0
        chosen, total = least_cost_path(cost, steps, start)
        error = mean_distance(_run(sampler, denoiser, path, x, ts[chosen], moments), target)
        if best is None or error < best[0]:
            best = (error, chosen, total)
    assert best is not None  # ts has more than `steps` times
    return best[1], best[2]


def _run(
    sampler: Sampler,
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    ts: Tensor,
    moments: DataMoments | None,
) -> Tensor:
    """The whole sampler run on ``ts`` from x at t_max: teleported to ``ts[0]`` first where
    it lies below t_max (with ``moments``)."""
    if moments is not None and float(ts[0]) < path.t_max:
        x = moments.carry(x, path, path.t_max, float(ts[0]))
    return solve_on(sampler, denoiser, path, x, ts)


@dataclass(frozen=True)
class TunedGrid:
    """What :func:`tune_grid` finds.

    Attributes:
        times: the N + 1 tuned times, t_max → t_min.
        cost: its total one-step cost Σ C (the dynamic programming's minimum).
        baseline_costs: the same total for each baseline grid, by name.
        endpoint_errors: mean_b ‖x_N − x_ref(t_min)‖₂ of the whole N-step sampler run from the
            batch's x_T on each grid (``tuned`` and the baselines): the error that matters,
            of which the one-step costs are GITS's proxy.
        teleport: whether the tuned grid starts by the Gaussian teleport (its first time below
            t_max).
    """

    times: list[float]
    cost: float
    baseline_costs: dict[str, float]
    endpoint_errors: dict[str, float]
    teleport: bool = False


@torch.no_grad()
def tune_grid(
    sampler: Sampler,
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    steps: int,
    *,
    reference_steps: int = 200,
    candidates: int = 100,
    baselines: dict[str, Grid] | None = None,
    teleport: DataMoments | None = None,
    progress: bool = False,
) -> TunedGrid:
    """GITS: the ``steps``-step grid of least total one-step cost of ``sampler`` against the
    fine reference trajectory of the prior draws ``x`` (module docstring).

    Args:
        sampler: a deterministic sampler with a ``grid`` setting (its settings are kept).
        denoiser: the model, ``(x, t) -> Prediction``.
        path: the model's noise path.
        x: prior samples at ``path.t_max``, ``[B, ...]``.
        steps: N, the steps of the tuned grid.
        reference_steps: Heun steps of the reference trajectory on :func:`fine_grid`.
        candidates: M, candidate times are M + 1 of the fine times, evenly spread.
        baselines: grids (by name) whose N-step total cost and endpoint error are reported
            too; their times join the reference trajectory's and the candidates, so the
            tuned grid's total cost is at most theirs.
        teleport: the data's moments: the grid may then start at any candidate time, reached
            from t_max by the Gaussian teleport (no network call), the start chosen by
            :func:`teleported_start`, and its N steps run from there.
    """
    if not sampler.is_deterministic() or "grid" not in sampler.arguments():
        raise ValueError(
            f"GITS tunes the grid of a deterministic sampler with a grid, not {sampler!r}: use "
            "ddim (eta=0), euler, heun, dpmpp_2m, dpmpp_3m, ipndm, unipc, er_sde (eta=0) or "
            "edm_sde (s_churn=0)"
        )
    index = candidate_indices(reference_steps, candidates)
    if not 1 <= steps <= candidates:
        raise ValueError(f"steps must be in [1, candidates = {candidates}], got {steps}")
    fine = fine_grid(path)(path, reference_steps)
    others = {name: grid(path, steps) for name, grid in (baselines or {}).items()}
    all_ts = torch.cat([fine, *others.values()]).unique().flip(0)  # decreasing, merged
    states = reference_trajectory(denoiser, path, x, all_ts.to(x.device), progress)
    at = {float(t): k for k, t in enumerate(all_ts)}

    def states_at(ts: Tensor) -> Tensor:
        return states[[at[float(t)] for t in ts]]

    # the baselines' times join the candidates: the tuned grid costs no more than any of them
    cand_ts = torch.cat([fine[index], *others.values()]).unique().flip(0)
    cost = cost_matrix(sampler, denoiser, path, states_at(cand_ts), cand_ts.to(x.device), progress)
    if teleport is None:
        chosen, total = least_cost_path(cost, steps)
    else:
        chosen, total = teleported_start(sampler, denoiser, path, x, states[-1], cost,
                                         cand_ts.to(x.device), steps, teleport)  # fmt: skip
    baseline_costs = {
        name: sum(step_costs(sampler, denoiser, path, states_at(ts), ts.to(x.device)))
        for name, ts in others.items()
    }
    endpoint_errors = {
        name: mean_distance(_run(sampler, denoiser, path, x, ts.to(x.device), teleport), states[-1])
        for name, ts in {"tuned": cand_ts[chosen], **others}.items()
    }
    times = cand_ts[chosen].tolist()
    return TunedGrid(times, total, baseline_costs, endpoint_errors, times[0] < path.t_max)
