"""Time grids tuned to a model: GITS's dynamic programming against one fine reference trajectory.

Chen et al. (2024) observe that the probability-flow ODE's trajectories share one shape across
samples, so the N times where a few-step solver loses least can be found from a small batch:

1. draw B samples x_T of the prior and solve the model's ODE finely (Heun, ``reference_steps``
   steps) on a fine grid, keeping the states x_ref(t_k) at every fine time;
2. take M + 1 candidate times t_0 = t_max > … > t_M = t_min from the fine grid (and the
   times of the grids it is compared with, so it is never costlier than they are);
3. cost of one step i → j (i < j): C[i, j] = mean_b ‖step(x_ref(t_i), t_i → t_j) − x_ref(t_j)‖₂,
   where ``step`` is one step of the sampler (its function called on the two-point grid
   [t_i, t_j]);
4. dynamic programming for the N-step path 0 = i_0 < i_1 < … < i_N = M of least total cost
   Σ_n C[i_{n−1}, i_n] (:func:`least_cost_path`).

For a multistep solver (``dpmpp_2m``, ``ipndm``, ``unipc``) a step on a two-point grid is its
first, first-order step (DDIM's in x/α against σ/α for DPM-Solver++), so its cost is the
one-step first-order cost, as in GITS, which scores the Euler/DDIM step of every solver: a
multistep cost would depend on the history, i.e. on the path, which breaks the dynamic
programming's additivity. The first network call of every step from t_i is the same, so it is
made once per row i; a one-evaluation sampler costs M + 1 network batches for all of C, Heun
(a corrector at t_j) one more per pair.

:func:`~diffusion_pl.samplers.tuning.tune_grid` runs these steps for one model and sampler.

Reference: Chen et al. (2024), "On the Trajectory Regularity of ODE-based Diffusion Sampling"
(GITS), Sec. 4 and Algorithm 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_pl.parameterization import DenoiserFn, Prediction
from diffusion_pl.paths import DDPMPath, NoisePath
from diffusion_pl.samplers.ancestral import TrainedStepsGrid
from diffusion_pl.samplers.base import Sampler, progress_bar
from diffusion_pl.samplers.grids import EDMGrid, Grid, LinspaceGrid
from diffusion_pl.samplers.ode import sample_heun

__all__ = [
    "candidate_indices",
    "cost_matrix",
    "default_candidates",
    "fine_grid",
    "least_cost_path",
    "mean_distance",
    "reference_trajectory",
    "solve_on",
    "step_costs",
]


def least_cost_path(
    cost: Tensor, steps: int, start_costs: Tensor | None = None
) -> tuple[list[int], float]:
    """The path i_0 < … < i_N = M of exactly N = ``steps`` steps with the least
    S[i_0] + Σ_n C[i_{n−1}, i_n], and that sum.

    V_n(j) = min_{i < j} V_{n−1}(i) + C[i, j], V_0 = S (default: 0 at 0 and ∞ elsewhere, so
    i_0 = 0); the path is read back from the arg-mins. O(N M²).

    Args:
        cost: ``[M + 1, M + 1]``; only entries above the diagonal (i < j) are read.
        start_costs: S ``[M + 1]``, the cost of starting at each candidate; ∞ where no path
            may start (:func:`teleported_start` fixes one start this way).
    """
    m = cost.shape[0] - 1
    if not 1 <= steps <= m:
        raise ValueError(f"{steps} steps need 1 <= steps <= {m} (the candidates − 1)")
    upper = torch.ones_like(cost, dtype=torch.bool).triu(1)
    c = torch.where(upper, cost.double(), torch.inf)
    value = torch.full((m + 1,), torch.inf, dtype=torch.float64)
    value[0] = 0.0
    if start_costs is not None:
        value = start_costs.double().clone()
    choices = []
    for _ in range(steps):
        total = value[:, None] + c  # [from i, to j]
        value, best = total.min(0)
        choices.append(best)
    path = [m]
    for best in reversed(choices):
        path.append(int(best[path[-1]]))
    return path[::-1], float(value[m])


def fine_grid(path: NoisePath) -> Grid:
    """The grid of the reference trajectory: Karras et al.'s ρ = 7 spacing (dense at low
    noise, where trajectories bend) on continuous paths; on a ``DDPMPath`` an even spacing of
    its trained steps (the net knows no other times)."""
    return TrainedStepsGrid(LinspaceGrid()) if isinstance(path, DDPMPath) else EDMGrid()


def candidate_indices(reference_steps: int, candidates: int) -> Tensor:
    """``candidates + 1`` indices into the ``reference_steps + 1`` fine times, evenly spread,
    from 0 to ``reference_steps``."""
    if not 1 <= candidates <= reference_steps:
        raise ValueError(
            f"candidates must be in [1, reference_steps = {reference_steps}], got {candidates}: "
            "the candidate times are a subset of the reference grid"
        )
    return torch.round(torch.linspace(0, reference_steps, candidates + 1)).long()


def default_candidates(sampler: Sampler, reference_steps: int) -> int:
    """M by default: 100, and 10 for a sampler with a corrector (2 network evaluations a
    step: Heun, EDM), whose cost matrix takes a network call per pair; at most
    ``reference_steps``."""
    return min(reference_steps, 10 if sampler.nfe_per_step.startswith("2") else 100)


@torch.no_grad()
def reference_trajectory(
    denoiser: DenoiserFn, path: NoisePath, x: Tensor, ts: Tensor, progress: bool = False
) -> Tensor:
    """The states ``[len(ts), B, ...]`` of Heun's method (2nd order) on the model's ODE from
    ``x`` at ``ts[0]``, one step per interval of ``ts``."""
    states = [x]
    for k in progress_bar(range(len(ts) - 1), len(ts) - 1, progress, "reference ODE"):
        states.append(sample_heun(denoiser, path, states[-1], ts[k : k + 2]))
    return torch.stack(states)


class _FirstCallCache:
    """``denoiser`` that answers a repeated call at the same (x, t) from its last answer: every
    step from t_i starts with the same evaluation at (x_ref(t_i), t_i)."""

    def __init__(self, denoiser: DenoiserFn) -> None:
        self.denoiser = denoiser
        self.key: tuple[Tensor, Tensor] | None = None
        self.value: Prediction | None = None

    def __call__(self, x: Tensor, t: Tensor) -> Prediction:
        if self.key is not None and torch.equal(self.key[1], t) and torch.equal(self.key[0], x):
            return self.value  # type: ignore[return-value]
        self.key, self.value = (x.clone(), t.clone()), self.denoiser(x, t)
        return self.value


def solve_on(
    sampler: Sampler, denoiser: DenoiserFn, path: NoisePath, x: Tensor, ts: Tensor
) -> Tensor:
    """``sampler``'s function over ``ts`` (one step for two times), without its final
    denoising (the states compared are the ODE's)."""
    settings = sampler.settings()
    return sampler.solver(denoiser, path, x, ts, generator=None, progress=False, **settings)


def mean_distance(x: Tensor, target: Tensor) -> float:
    """mean_b ‖x_b − target_b‖₂ over the batch."""
    return float((x - target).flatten(1).double().norm(dim=1).mean())


@torch.no_grad()
def cost_matrix(
    sampler: Sampler,
    denoiser: DenoiserFn,
    path: NoisePath,
    states: Tensor,
    ts: Tensor,
    progress: bool = False,
) -> Tensor:
    """C[i, j] = mean_b ‖step(x_ref(t_i), t_i → t_j) − x_ref(t_j)‖₂ for i < j (∞ elsewhere),
    ``[M + 1, M + 1]`` float64, for the candidate ``states`` ``[M + 1, B, ...]`` at ``ts``."""
    m = len(ts) - 1
    cost = torch.full((m + 1, m + 1), torch.inf, dtype=torch.float64)
    for i in progress_bar(range(m), m, progress, "cost matrix"):
        cached = _FirstCallCache(denoiser)
        for j in range(i + 1, m + 1):
            x = solve_on(sampler, cached, path, states[i], ts[[i, j]])
            cost[i, j] = mean_distance(x, states[j])
    return cost


@torch.no_grad()
def step_costs(
    sampler: Sampler, denoiser: DenoiserFn, path: NoisePath, states: Tensor, ts: Tensor
) -> list[float]:
    """The cost of each step of the grid ``ts`` against the reference ``states`` at ``ts``."""
    return [
        mean_distance(solve_on(sampler, denoiser, path, states[k], ts[k : k + 2]), states[k + 1])
        for k in range(len(ts) - 1)
    ]
