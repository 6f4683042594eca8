"""Post-hoc EMA: power-function averages, their snapshots, and any other average rebuilt later.

Karras et al. 2024 ("Analyzing and Improving the Training Dynamics of Diffusion Models", EDM2,
Sec. 3 and App. C). After optimizer step t (t = 1, 2, …) the average is updated by

    θ̂_t = β_t θ̂_{t−1} + (1 − β_t) θ_t,   β_t = (1 − 1/t)^{γ+1},

so β_1 = 0 (the first average is θ_1) and θ̂_t = Σ_{k ≤ t} w_k θ_k with the exact weights

    w_k = (k^{γ+1} − (k − 1)^{γ+1}) / t^{γ+1},

the integral over (k − 1, k] of the power-function *profile* p_{γ,t}(τ) = (γ + 1) τ^γ / t^{γ+1}
on [0, t]. Time counts optimizer steps here (the paper counts training images; for a constant
batch the two differ by a constant factor, which the relative width does not see). The width
of the profile relative to its length is

    σ_rel = std(τ) / t = √((γ + 1) / ((γ + 2)² (γ + 3))),

so σ_rel = 0.05 and 0.10, the paper's two tracked averages, are γ ≈ 16.97 and γ ≈ 6.94.

Profiles are square-integrable on [0, ∞), with inner products in closed form (for t_a ≤ t_b)

    ⟨p_{γa,ta}, p_{γb,tb}⟩ = (γa + 1)(γb + 1) / (γa + γb + 1) · (t_a/t_b)^{γb} / t_b.

Snapshots of a few averages at steps t_i span profiles p_i; the average of another width σ_rel
at step T is rebuilt as Σ_i x_i θ̂_i where x minimizes ‖Σ_i x_i p_i − p_{γ(σ_rel),T}‖₂ (Gram
matrix A_ij = ⟨p_i, p_j⟩, right-hand side b_i = ⟨p_i, p_target⟩) subject to Σ_i x_i = 1. Because
every average is linear in the trajectory θ_1, θ_2, …, the same x applied to the stored weights
gives the weights of the fitted profile. The constraint keeps the fitted profile's mass at 1
(EDM2's solve leaves it free): the weights are large next to how much they move, so a mass off
by 3·10⁻⁴ (what the free fit gives for σ_rel 0.08 from 11 snapshots) moved a rebuilt toy
average by 36 % of the gap between the 0.05 and 0.10 averages, and by 0.5 % with it.

:class:`~diffusion_pl.callbacks.PostHocEMA` writes the snapshots (``<run>/phema/``);
``diffusion-pl phema`` reads them (:mod:`diffusion_pl.cli.commands.phema`) and rebuilds averages
from their tensors (:func:`reconstruct`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

__all__ = [
    "SIGMA_REL_MAX",
    "SNAPSHOT_FOLDER",
    "Snapshot",
    "averaged_checkpoint",
    "check_sigma_rel",
    "gamma_of_sigma_rel",
    "posthoc_fit",
    "power_beta",
    "profile",
    "profile_inner_products",
    "reconstruct",
    "select_run",
    "sigma_rel_of_gamma",
    "snapshot_name",
    "step_weights",
]

SNAPSHOT_FOLDER = "phema"
"""Where a run's snapshots go, under its log dir."""

_GAMMA_AT_MAX = (math.sqrt(5) - 3) / 2
"""γ of the widest profile: σ_rel(γ) rises from 0 at γ = −1 to its maximum at γ + 1 = (√5 − 1)/2
(where d log σ_rel²/dγ = 0, i.e. (γ + 1)² + (γ + 1) − 1 = 0) and falls towards 0 after it."""


def sigma_rel_of_gamma(gamma: float) -> float:
    """σ_rel = √((γ + 1) / ((γ + 2)² (γ + 3))), the relative std of the profile (EDM2, Sec. 3)."""
    if not gamma > -1:
        raise ValueError(f"a power-function profile needs γ > −1, got {gamma}")
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


SIGMA_REL_MAX = sigma_rel_of_gamma(_GAMMA_AT_MAX)
"""The widest profile's σ_rel (≈ 0.3003); every σ_rel in (0, SIGMA_REL_MAX) has an average."""


def check_sigma_rel(sigma_rel: float, name: str = "sigma_rel") -> None:
    """Refuse a σ_rel that no power-function profile has, naming ``name`` and the valid range."""
    if not 0 < sigma_rel < SIGMA_REL_MAX:
        raise ValueError(
            f"{name} {sigma_rel} is not the relative width of any power-function average: give "
            f"0 < {name} < {SIGMA_REL_MAX:.4f} (EDM2 tracks 0.05 and 0.10)"
        )


def gamma_of_sigma_rel(sigma_rel: float) -> float:
    """The exponent γ of the average of width σ_rel (EDM2, App. C).

    σ_rel² (γ + 2)² (γ + 3) = γ + 1 is the cubic γ³ + 7γ² + (16 − σ_rel⁻²) γ + (12 − σ_rel⁻²)
    = 0; its largest real root is the one on the narrow side of the widest profile (γ ≥
    (√5 − 3)/2 ≈ −0.38), where σ_rel falls as γ grows.
    """
    check_sigma_rel(sigma_rel)
    inv = sigma_rel**-2
    roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
    gamma = float(max(r.real for r in roots if abs(r.imag) < 1e-9 * max(1.0, abs(r))))
    # One Newton step on f(γ) = σ_rel² (γ+2)²(γ+3) − (γ+1) polishes np.roots' accuracy.
    f = sigma_rel**2 * (gamma + 2) ** 2 * (gamma + 3) - (gamma + 1)
    df = sigma_rel**2 * (gamma + 2) * (3 * gamma + 8) - 1
    return gamma - f / df


def power_beta(gamma: float, step: int) -> float:
    """β_t = (1 − 1/t)^{γ+1}, the decay of the update after optimizer step t ≥ 1 (EDM2, Sec. 3)."""
    if step < 1:
        raise ValueError(f"power-function EMA steps count from 1, got step {step}")
    return (1.0 - 1.0 / step) ** (gamma + 1)


def step_weights(gamma: float, step: int) -> np.ndarray:
    """The weights w_1 … w_t of θ_1 … θ_t in the average after step t (module docstring)."""
    k = np.arange(step + 1, dtype=np.float64)
    cumulative = (k / step) ** (gamma + 1)
    return np.diff(cumulative)


def profile(gamma: float, t: float, tau: np.ndarray) -> np.ndarray:
    """The profile p_{γ,t}(τ) = (γ + 1) τ^γ / t^{γ+1} on [0, t], 0 after t; it integrates to 1."""
    tau = np.asarray(tau, dtype=np.float64)
    inside = (tau >= 0) & (tau <= t)
    return np.where(inside, (gamma + 1) * np.clip(tau / t, 0, 1) ** gamma / t, 0.0)


def profile_inner_products(
    gamma_a: np.ndarray | float,
    t_a: np.ndarray | float,
    gamma_b: np.ndarray | float,
    t_b: np.ndarray | float,
) -> np.ndarray:
    """⟨p_{γa,ta}, p_{γb,tb}⟩ = ∫₀^∞ p_a p_b dτ in closed form (module docstring), broadcast.

    Over [0, min(t_a, t_b)] the integrand is (γa+1)(γb+1) τ^{γa+γb} / (t_a^{γa+1} t_b^{γb+1});
    integrating gives the formula with the shorter profile's t in the ratio.
    """
    gamma_a, t_a, gamma_b, t_b = (
        np.asarray(v, dtype=np.float64) for v in (gamma_a, t_a, gamma_b, t_b)
    )
    a_first = t_a <= t_b
    ratio = np.where(a_first, t_a / t_b, t_b / t_a)
    exponent = np.where(a_first, gamma_b, gamma_a)
    t_max = np.maximum(t_a, t_b)
    return (gamma_a + 1) * (gamma_b + 1) / (gamma_a + gamma_b + 1) * ratio**exponent / t_max


def posthoc_fit(
    gammas: Sequence[float], steps: Sequence[int], gamma: float, step: int
) -> tuple[np.ndarray, float]:
    """Coefficients x of the snapshot profiles (γ_i, t_i) closest to the profile (γ, step).

    Solves the least-squares problem of the module docstring, min ‖Σ x_i p_i − p‖² subject to
    Σ x_i = 1, through its KKT system [[A, 1], [1ᵀ, 0]] [x; λ] = [b; 1] with an SVD-based
    solver (the Gram matrix of profiles of nearby times is nearly singular), in float64.

    Returns:
        ``(x, error)``: the coefficients, one per snapshot profile, and the relative L2 error
        ‖Σ x_i p_i − p‖ / ‖p‖ of the fitted profile.
    """
    g, t = np.asarray(gammas, dtype=np.float64), np.asarray(steps, dtype=np.float64)
    gram = profile_inner_products(g[:, None], t[:, None], g[None, :], t[None, :])
    target = profile_inner_products(g, t, gamma, step)
    n = len(g)
    kkt = np.block([[gram, np.ones((n, 1))], [np.ones((1, n)), np.zeros((1, 1))]])
    x = np.linalg.lstsq(kkt, np.append(target, 1.0), rcond=None)[0][:n]
    norm2 = float(profile_inner_products(gamma, step, gamma, step))
    residual2 = float(x @ gram @ x - 2 * x @ target + norm2)
    return x, math.sqrt(max(residual2, 0.0) / norm2)


def snapshot_name(step: int) -> str:
    """The file of the snapshot after optimizer step ``step``: ``phema-000001000.pt``."""
    return f"phema-{step:09d}.pt"


@dataclass(frozen=True)
class Snapshot:
    """What a snapshot file says about itself (its tensors stay on disk until needed).

    Attributes:
        path: the file.
        step: the optimizer step after which it was taken.
        run_id: the run that wrote it (kept across resumes).
        sigma_rels: the widths of its averages.
        gammas: their exponents.
    """

    path: Path
    step: int
    run_id: str
    sigma_rels: tuple[float, ...]
    gammas: tuple[float, ...]


def reconstruct(
    snapshots: Sequence[Snapshot],
    averages: Iterable[Sequence[dict[str, Tensor]]],
    sigma_rels: Sequence[float],
    step: int,
) -> tuple[list[dict[str, Tensor]], list[float]]:
    """The averages of widths ``sigma_rels`` after ``step``, from the snapshots up to ``step``.

    The weighted sums are accumulated in float64 (the coefficients of nearby profiles are large
    and of both signs) and returned in float32; ``averages`` is consumed one snapshot at a
    time, so a generator that reads each file when asked holds one snapshot in memory.

    Args:
        snapshots: one run's snapshots, one per step (:func:`select_run`).
        averages: the parameters of each snapshot up to ``step``, in the order of
            ``snapshots``: one dict (name → tensor) per tracked average.
        sigma_rels: the widths to rebuild, each in (0, :data:`SIGMA_REL_MAX`).
        step: the step to rebuild them at; a snapshot must exist there.

    Returns:
        The parameters of each average (name → tensor), and each fit's relative profile error
        (:func:`posthoc_fit`).
    """
    used = [s for s in snapshots if s.step <= step]
    gammas = [g for s in used for g in s.gammas]
    steps = [s.step for s in used for _ in s.gammas]
    fits = [posthoc_fit(gammas, steps, gamma_of_sigma_rel(sr), step) for sr in sigma_rels]
    sums: list[dict[str, Tensor]] = [{} for _ in sigma_rels]
    first = 0
    for snapshot_averages in averages:
        for i, average in enumerate(snapshot_averages):
            for out, (x, _) in zip(sums, fits, strict=True):
                for name, value in average.items():
                    term = float(x[first + i]) * value.double()
                    out[name] = out[name] + term if name in out else term
        first += len(snapshot_averages)
    return [{k: v.float() for k, v in out.items()} for out in sums], [e for _, e in fits]


def select_run(snapshots: Sequence[Snapshot], run: str, run_id: str | None) -> list[Snapshot]:
    """One run's snapshots, one per step (the newest file where a step was written twice).

    Args:
        snapshots: what :func:`~diffusion_pl.cli.commands.phema.find_snapshots` found under
            ``run``.
        run: the folder searched (for messages).
        run_id: the run to take; None: the only run there.

    Raises:
        ValueError: no snapshots, several runs and no ``run_id``, or an unknown ``run_id``.
    """
    if not snapshots:
        raise ValueError(
            f"--run {run}: no post-hoc EMA snapshots ({SNAPSHOT_FOLDER}/phema-*.pt) in it or "
            "below it. Train with the callback diffusion_pl.callbacks.PostHocEMA (see "
            "configs/digits/rectified_flow_phema.yaml) and pass that run's folder"
        )
    runs: dict[str, list[Snapshot]] = {}
    for s in snapshots:
        runs.setdefault(s.run_id, []).append(s)
    if run_id is None and len(runs) > 1:
        listing = "; ".join(
            f"{rid}: steps {group[0].step}-{group[-1].step} in "
            + ", ".join(sorted({str(s.path.parent) for s in group}))
            for rid, group in runs.items()
        )
        raise ValueError(f"--run {run} holds snapshots of {len(runs)} runs ({listing}): pass "
                         "--run_id with one of them, or --run one run's folder")  # fmt: skip
    if run_id is None:
        (run_id,) = runs
    if run_id not in runs:
        raise ValueError(f"--run_id {run_id}: no snapshots of that run under {run}; its runs "
                         f"are {', '.join(runs)}")  # fmt: skip
    by_step = {s.step: s for s in runs[run_id]}  # sorted by write time: the newest wins
    return [by_step[step] for step in sorted(by_step)]


def averaged_checkpoint(
    template: dict[str, Any], params: dict[str, Tensor], phema: dict[str, object]
) -> dict[str, object]:
    """A checkpoint that ``load_module`` (so ``sample``, ``fid``, ``likelihood``) takes.

    The template's model and data config and its buffers, with ``params`` as the parameters;
    no optimizer or loop state (it is for evaluation, not for resuming).

    Raises:
        ValueError: the parameters are not the template's (names or shapes).
    """
    state = template["state_dict"]
    wrong = [n for n, v in params.items() if n not in state or state[n].shape != v.shape]
    if wrong:
        raise ValueError(
            f"the snapshots' parameters do not match the checkpoint's (first: {wrong[0]}): "
            "pass --ckpt_path with a checkpoint of the run that wrote the snapshots"
        )
    keep = ("hyper_parameters", "datamodule_hyper_parameters", "pytorch-lightning_version")
    kept = {k: template[k] for k in keep if k in template}
    return {**kept, "global_step": phema["step"], "state_dict": {**state, **params}, "phema": phema}
