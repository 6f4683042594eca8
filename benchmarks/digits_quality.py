"""FID vs NFE of the formulations on the digits at one training budget, and bits/dim.

    python benchmarks/digits_quality.py [--formulations rectified_flow vdm ncsn score_sde edm]
        [--max_steps 2000] [--base_channels 16] [--batch_size 128] [--num_samples 2000]
        [--nfe 5 10 20 50 100] [--few_nfe 5 10 20] [--few_grid gits] [--skip_fit]
        [--out benchmarks/results/digits_quality.json]

Over an hour on 2 CPU cores with the defaults: ~5–8 minutes of training per formulation and
~0.5–0.8 s per network evaluation of 2,000 samples, summed over every sampler and NFE (the four
formulations of issue 6 without the few-step solvers took 51 minutes). ``--nfe`` 250
adds about half an hour, 1000 about two hours; time scales about with ``--base_channels``².

Each formulation's configs/digits/<name>.yaml is fitted with the same UNet, steps, batch, EMA
and seed (keeping its own path, loss, learning rate and gradient clipping), without the FID and
sample-grid callbacks and without validation, so every fit costs the same. Then, with the EMA
weights: FID of ``--num_samples`` samples against the held-out val split (the shipped digits
feature network) for each of the formulation's samplers (``SWEEPS``) at each NFE of ``--nfe``.
The few-step solvers (DPM-Solver++ 2M/3M, UniPC, iPNDM, EDM's sampler, each on its paper's
grid, or all on ``--few_grid``: a fixed grid, or ``gits``, the grid tuned to each model,
deterministic solver and NFE as ``diffusion-pl tune-grid`` tunes it) run at each NFE of
``--few_nfe``. A sampler's steps follow from the NFE budget, which includes the final
denoising step where σ(t_min) > 0 (Heun and PC spend 2 network evaluations per step, annealed
Langevin one per level per Langevin step); the NFE reported is the number of network calls per
sample, counted. The report ends with each formulation's best FID at ≤ 10 NFE
against its best at any NFE. Also reported:

* the real-data floor: FID of the whole train split (1,437 images) against val, same evaluator;
* bits/dim of the val split, ± its standard error over the images: VDM's variational bound on
  its first ``--bound_samples`` images (``diffusion-pl likelihood --method bound``: on the
  discrete DDPM path the diffusion term summed over all T steps, no draw of t) and score-SDE's
  PF-ODE likelihood of its first ``--likelihood_samples`` images (``diffusion-pl likelihood``:
  RK45, Hutchinson trace, uniform dequantization). Both bound the NLL of the 17-level digits (at
  most log2 17 = 4.09 bits/dim for a uniform model).

Writes JSON and a Markdown report (``.md`` beside it, also printed) after each formulation, so
a stopped run keeps what it measured, and at the end an FID-vs-NFE plot (``.png``).
``--skip_fit`` re-evaluates the newest ``last.ckpt`` under ``--workdir/<formulation>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest.mock import patch

import torch
import yaml
from _common import ROOT, markdown_table, report_header, run_record, write_results
from matplotlib.figure import Figure

from diffusion_pl.checkpoints import load_datamodule, load_module
from diffusion_pl.cli import likelihood
from diffusion_pl.cli import main as cli_main
from diffusion_pl.data import DiffusionDataModule
from diffusion_pl.formulations import DiffusionModule
from diffusion_pl.generate import counting_calls
from diffusion_pl.metrics import FIDEvaluator
from diffusion_pl.paths import NoisePath
from diffusion_pl.samplers import GRIDS, SAMPLERS, CustomGrid, Grid, Sampler
from diffusion_pl.samplers.gits import default_candidates
from diffusion_pl.samplers.tuning import tune_grid
from diffusion_pl.teleport import moments_of_data

CONFIGS = ROOT / "configs/digits"


@dataclass(frozen=True)
class Sweep:
    """One sampler of a formulation, run at each NFE of the sweep.

    Args:
        name: the sampler's short name in ``diffusion_pl.samplers.SAMPLERS``.
        settings: fixed init arguments. The formulation's default sampler also keeps its
            config's settings (PC's snr, DDIM's clipping, NCSN's levels and step size).
        evals_per_step: network evaluations per unit of ``knob``; for annealed Langevin
            (``knob="steps_per_level"``) the number of levels multiplies it.
        knob: the init argument the NFE sets.
        label: how rows and the plot name it; default ``name``.
        few_step: run at the NFEs of ``--few_nfe`` instead of ``--nfe``.
    """

    name: str
    settings: dict = field(default_factory=dict)
    evals_per_step: int = 1
    knob: str = "steps"
    label: str = ""
    few_step: bool = False

    @property
    def title(self) -> str:
        """The sweep's name in rows and the plot."""
        return self.label or self.name

    def sampler(
        self, default: Sampler, nfe: int, path: NoisePath, denoise_final: bool = True
    ) -> Sampler:
        """This sampler with about ``nfe`` network evaluations per sample, the final denoising
        step included (at least one step); without it (``denoise_final=False``, for a sampler
        that has the setting) every evaluation is a step."""
        cls = SAMPLERS[self.name]
        settings = {**(default.arguments() if isinstance(default, cls) else {}), **self.settings}
        if not denoise_final and "denoise_final" in cls().arguments():
            settings["denoise_final"] = False
        levels = (settings["steps"] or path.num_steps) if self.knob == "steps_per_level" else 1
        budget = nfe - cls(**{**settings, self.knob: 1}).denoises_at_end(path)
        return cls(
            **{**settings, self.knob: max(1, round(budget / (self.evals_per_step * levels)))}
        )


FEW_STEP = (
    Sweep("dpmpp_2m", few_step=True),
    Sweep("dpmpp_3m", few_step=True),
    Sweep("unipc", few_step=True),
    Sweep("ipndm", few_step=True),
)
"""The few-step solvers, each on its paper's grid, for every net continuous in t."""

STOCHASTIC = (Sweep("dpmpp_2m_sde", few_step=True), Sweep("er_sde", few_step=True))
"""DPM-Solver++(2M) SDE (η = 1) and ER-SDE-Solver-3 (η = 1, "ER SDE 5"): the reverse SDE's
quality at a few-step solver's calls, for the nets whose best figure comes from a stochastic
sampler (score-SDE, EDM)."""


SWEEPS: dict[str, tuple[Sweep, ...]] = {
    "rectified_flow": (Sweep("euler"), Sweep("heun", evals_per_step=2), *FEW_STEP),
    "vdm": (  # x̂_0 clipped as in Ho et al.'s code
        Sweep("ddpm", {"clip_x0": 1.0}),
        Sweep("ddim"),
        *FEW_STEP,
    ),
    "ncsn": (  # at the 20 trained levels; the config's ε = 2e-5 is sized for 50 steps a level
        Sweep("annealed_langevin", knob="steps_per_level"),
        Sweep(
            "annealed_langevin",
            {"step_lr": 1e-4},
            knob="steps_per_level",
            label="annealed_langevin eps=1e-4",
        ),  # ε = σ_L²: α_L = σ_L², for few steps
    ),
    "score_sde": (
        Sweep("pc", evals_per_step=2),
        Sweep("euler_maruyama"),
        Sweep("euler"),  # probability-flow ODE
        Sweep("heun", evals_per_step=2),
        *FEW_STEP,
        *STOCHASTIC,
    ),
    "edm": (
        Sweep("edm_sde", evals_per_step=2),  # Alg. 1 (deterministic Heun; no churn by default)
        *FEW_STEP,
        *STOCHASTIC,
    ),
}
"""Each formulation's samplers: its own family, plus the PF-ODE solvers where the net is
continuous in t (NCSN's is conditioned on its 20 discrete levels only)."""


def benchmark_config(name: str, root: Path, args: argparse.Namespace) -> Path:
    """configs/digits/<name>.yaml with the shared budget, written to ``root/config.yaml``."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    config["seed_everything"] = args.seed
    config["trainer"].update(
        accelerator="gpu" if args.device.startswith("cuda") else "cpu",
        max_steps=args.max_steps,
        default_root_dir=str(root),
        limit_val_batches=0,
        enable_progress_bar=False,
        callbacks=[
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"save_last": True, "every_n_train_steps": args.max_steps}},
            {"class_path": "diffusion_pl.callbacks.EMA",
             "init_args": {"halflife_samples": args.ema_halflife, "rampup_ratio": 0.05}},
        ],
    )  # fmt: skip
    config["model"]["init_args"]["net"] = {
        "class_path": "diffusion_pl.nets.UNet",
        "init_args": {"in_channels": 1, "image_size": 8, "base_channels": args.base_channels,
                      "channel_mult": [1, 2], "num_res_blocks": 2, "attn_resolutions": [4],
                      "dropout": 0.1},
    }  # fmt: skip
    config["data"]["global_batch_size"] = args.batch_size
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def timed_fit(config: Path) -> float:
    """Run ``diffusion-pl fit --config config`` in this process; its wall time in seconds."""
    start = time.perf_counter()
    with patch.object(sys, "argv", sys.argv[:1]):  # LightningCLI reads only its args
        cli_main(["fit", "--config", str(config)])
    return round(time.perf_counter() - start, 1)


def real_data_floor(evaluator: FIDEvaluator, ckpt: Path) -> float:
    """FID of the train split against the evaluator's reference (prepared here from ``ckpt``'s
    data): the best a model of that data can score."""
    datamodule = load_datamodule(ckpt)
    evaluator.prepare_reference(datamodule)
    train = datamodule.real_samples("train", len(datamodule.dataset("train")))
    return round(evaluator.score_images(train)["fid"], 3)


def newest_checkpoint(root: Path) -> Path:
    """The newest ``last.ckpt`` under ``root``."""
    found = list(root.rglob("last.ckpt"))
    if not found:
        raise FileNotFoundError(f"no last.ckpt under {root}: run without --skip_fit first")
    return max(found, key=lambda p: p.stat().st_mtime)


def fid_sweep(
    module: DiffusionModule,
    datamodule: DiffusionDataModule,
    evaluator: FIDEvaluator,
    sweeps: tuple[Sweep, ...],
    nfes: list[int],
    few_nfes: list[int],
    few_grid: Callable[[Sampler], Grid] | None = None,
    few_denoise_final: bool = True,
) -> Iterator[dict]:
    """FID of each sampler of ``sweeps`` at each NFE; NFEs that give the same sampler run once.
    ``few_grid`` gives the few-step solvers' grid (default: each one's paper's);
    ``few_denoise_final=False`` spends their final denoising call on a step."""
    for sweep in sweeps:
        seen = set()
        for nfe in few_nfes if sweep.few_step else nfes:
            final = few_denoise_final or not sweep.few_step
            sampler = sweep.sampler(module.sampler, nfe, module.path, final)
            if sweep.few_step and few_grid is not None:
                sampler = sampler.with_grid(few_grid(sampler))
            if repr(sampler) in seen:
                continue
            seen.add(repr(sampler))
            yield {"sampler": sweep.title, **scored(module, datamodule, evaluator, sampler)}


def scored(
    module: DiffusionModule,
    datamodule: DiffusionDataModule,
    evaluator: FIDEvaluator,
    sampler: Sampler,
) -> dict:
    """The FID of ``sampler``'s samples, its counted NFE per sample and the seconds it took."""
    chunks = len(list(evaluator.chunks()))  # one module.sample call per chunk
    with counting_calls(module.net) as calls:
        start = time.perf_counter()
        fid = evaluator.evaluate(module, datamodule, sampler)["fid"]
        seconds = time.perf_counter() - start
    return {"settings": repr(sampler), "nfe": calls[0] // chunks, "fid": round(fid, 3),
            "seconds": round(seconds, 1)}  # fmt: skip


def bits_per_dim(name: str, ckpt: Path, num_val: int, args: argparse.Namespace) -> dict | None:
    """Bits/dim of the val split (``num_val`` images) by ``diffusion-pl likelihood``: VDM's
    bound, score-SDE's PF-ODE likelihood; else None."""
    start = time.perf_counter()
    if name == "vdm":
        n = min(args.bound_samples, num_val)
        scores = likelihood(str(ckpt), "val", n, method="bound", device=args.device)
        steps = scores["steps"]
        exact = f"summed over all {steps} steps" if steps else "one draw of (t, ε)"
        result = {"bpd": round(scores["bpd"], 4), "stderr": round(scores["bpd_stderr"], 4),
                  "method": f"variational bound, {exact} per image", "examples": n}  # fmt: skip
    elif name == "score_sde":
        tol, n = args.likelihood_tol, min(args.likelihood_samples, num_val)
        scores = likelihood(str(ckpt), "val", n, rtol=tol, atol=tol, device=args.device)
        result = {"bpd": round(scores["bpd"], 4), "stderr": round(scores["bpd_stderr"], 4),
                  "method": f"PF-ODE from t_eps={scores['t_eps']:g}, RK45 rtol=atol={tol:g}, "
                            "Hutchinson, dequantized",
                  "examples": n}  # fmt: skip
    else:
        return None
    return {**result, "seconds": round(time.perf_counter() - start, 1)}


def evaluate(
    name: str, ckpt: Path, evaluator: FIDEvaluator, args: argparse.Namespace
) -> tuple[dict, list[dict]]:
    """Bits/dim and the FID sweep of one checkpoint: (summary, rows)."""
    module = load_module(ckpt, map_location=args.device).eval()
    datamodule = load_datamodule(ckpt)
    summary = {
        "checkpoint": str(ckpt),
        "parameters": sum(p.numel() for p in module.net.parameters()),
        "lr": module.optimizer_factory(module.parameters()).defaults["lr"],
        "bits_per_dim": bits_per_dim(name, ckpt, len(datamodule.dataset("val")), args),
    }
    rows = []
    few_grid = few_step_grid(module, datamodule, args)
    sweep = fid_sweep(module, datamodule, evaluator, SWEEPS[name], args.nfe, args.few_nfe, few_grid,
                      not args.few_no_denoise)  # fmt: skip
    for row in sweep:
        rows.append({"formulation": name, **row})
        print(json.dumps(rows[-1]), flush=True)
    return summary, rows


def few_step_grid(
    module: DiffusionModule, datamodule: DiffusionDataModule, args: argparse.Namespace
) -> Callable[[Sampler], Grid] | None:
    """The few-step solvers' grid of ``--few_grid``: a fixed one of ``GRIDS``, or ``gits``, the
    grid tuned to this model and each sampler and step count (``diffusion-pl tune-grid``'s
    method: ``--gits_samples`` prior draws of seed 0, ``--gits_reference_steps`` Heun steps,
    ``--gits_candidates`` candidates, with ``--teleport`` its Gaussian teleport); None: each
    solver's own."""
    if args.few_grid is None:
        return None
    if args.few_grid != "gits":
        return lambda sampler: GRIDS[args.few_grid]()

    # getattr: the settings of a run from before --teleport (fresh_seeds.py reads them)
    moments = moments_of_data(datamodule) if getattr(args, "teleport", False) else None

    def tuned(sampler: Sampler) -> Grid:
        x = module.path.prior_sample(
            (args.gits_samples, *module.data_shape), generator=torch.Generator().manual_seed(0),
            device=module.device, dtype=module.dtype,
        )  # fmt: skip
        if not sampler.is_deterministic():  # EDM's churn: its own grid
            return sampler.arguments().get("grid") or sampler.default_grid
        reference = args.gits_reference_steps
        candidates = args.gits_candidates or default_candidates(sampler, reference)
        found = tune_grid(sampler, module.denoiser(), module.path, x, sampler.steps,
                          reference_steps=reference, candidates=candidates,
                          teleport=moments)  # fmt: skip
        return CustomGrid(found.times, found.teleport)

    return tuned


def plot(rows: list[dict], floor: float, path: Path) -> None:
    """FID against NFE, log-log: one line per (formulation, sampler), the real-data floor."""
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    lines = {(r["formulation"], r["sampler"]): None for r in rows}  # ordered, unique
    for formulation, sampler in lines:
        points = [(r["nfe"], r["fid"]) for r in rows
                  if (r["formulation"], r["sampler"]) == (formulation, sampler)]  # fmt: skip
        samplers = [s.title for s in SWEEPS[formulation]]
        ax.plot(*zip(*points, strict=True), markersize=3,
                color=f"C{list(SWEEPS).index(formulation)}",
                linestyle=["-", "--", "-.", ":"][samplers.index(sampler) % 4],
                marker="os^vD<>"[samplers.index(sampler) % 7],
                label=f"{formulation} · {sampler}")  # fmt: skip
    ax.axhline(floor, color="gray", linewidth=1, linestyle=":", label="real data (train vs val)")
    ax.set(xscale="log", yscale="log", xlabel="network evaluations per sample (NFE)",
           ylabel="FID (digits features, vs val)", title="Digits: FID vs NFE")  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(path, dpi=150, bbox_inches="tight")


def report(results: dict) -> str:
    """The Markdown report: settings, training and bits/dim per formulation, the FID sweep."""
    s = results["settings"]
    lines = report_header(
        "Digits: FID vs NFE of the formulations",
        results,
        f"Every formulation: the same UNet (base {s['base_channels']}), {s['max_steps']} steps × "
        f"batch {s['batch_size']}, EMA half-life {s['ema_halflife']:,} samples, seed {s['seed']}. "
        f"FID of {s['num_samples']:,} samples (EMA weights) against the val split, digits "
        f"features. Real-data floor (train split vs val): **{results['real_data_floor']:.2f}**.",
    )
    rows = []
    for name, f in results["formulations"].items():
        bpd = f["bits_per_dim"]
        cell = "—" if bpd is None else f"{bpd['bpd']:.3f} ± {bpd['stderr']:.3f} ({bpd['method']})"
        rows.append([name, f"{f['parameters']:,}", f["lr"], f["fit_seconds"], cell])
    lines += [markdown_table(["formulation", "parameters", "LR", "fit s", "bits/dim (val)"], rows)]
    rows = [[r["formulation"], r["sampler"], r["nfe"], f"{r['fid']:.2f}", r["seconds"]]
            for r in results["fid"]]  # fmt: skip
    lines += ["", markdown_table(["formulation", "sampler", "NFE", "FID", "sampling s"], rows)]
    header = ["formulation", "best FID, NFE ≤ 5", "best FID, NFE ≤ 10", "best FID, any NFE",
              "ratios ≤ 5 / ≤ 10 (targets 1.5 / 1.2)"]  # fmt: skip
    lines += ["", markdown_table(header, few_step_rows(results["fid"]))]
    return "\n".join(lines)


NFE_RANGES = {"≤ 5": (0, 5), "≤ 10": (0, 10), "≥ 50": (50, None), "any": (0, None)}
"""Ranges of NFE (low, high or None) in which a formulation's best row is reported."""


def best_rows(rows: list[dict]) -> dict[str, dict]:
    """One formulation's best row (least FID) in each range of :data:`NFE_RANGES` that has
    rows: at ≤ 5 NFE, at ≤ 10, at ≥ 50 (a full solve) and at any NFE."""
    best = {}
    for label, (low, high) in NFE_RANGES.items():
        fitting = [r for r in rows if low <= r["nfe"] and (high is None or r["nfe"] <= high)]
        if fitting:
            best[label] = min(fitting, key=lambda r: r["fid"])
    return best


def few_step_rows(rows: list[dict]) -> list[list]:
    """Per formulation: its best FID at ≤ 5 and ≤ 10 NFE (and by what), its best at any NFE,
    and their ratios to it."""

    def cell(row: dict | None) -> str:
        return "—" if row is None else f"{row['fid']:.2f} ({row['sampler']}, {row['nfe']})"

    table = []
    for name in dict.fromkeys(r["formulation"] for r in rows):
        best = best_rows([r for r in rows if r["formulation"] == name])
        five, ten, top = best.get("≤ 5"), best.get("≤ 10"), best["any"]
        if ten is None:
            continue
        ratios = " / ".join(
            "—" if r is None else f"{r['fid'] / top['fid']:.2f}" for r in (five, ten)
        )
        table.append([name, cell(five), cell(ten), cell(top), ratios])
    return table


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """The shared digits budget that :func:`benchmark_config` and the FID evaluators read:
    the UNet's width, batch, EMA, seed, and the samples per FID (every digits benchmark)."""
    parser.add_argument("--base_channels", type=int, default=16, help="UNet width (0.25M)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--ema_halflife", type=int, default=10_000, help="in training samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_samples", type=int, default=2000, help="generated images per FID")
    parser.add_argument("--sample_batch", type=int, default=500, help="images per sampling batch")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--formulations", nargs="+", choices=list(SWEEPS), default=list(SWEEPS))
    parser.add_argument("--max_steps", type=int, default=2000)
    add_budget_arguments(parser)
    parser.add_argument("--nfe", type=int, nargs="*", default=[5, 10, 20, 50, 100],
                        help="NFEs of each formulation's own samplers (none: only the few-step "
                        "solvers)")  # fmt: skip
    parser.add_argument("--few_nfe", type=int, nargs="+", default=[5, 10, 20],
                        help="NFEs of the few-step solvers")  # fmt: skip
    parser.add_argument("--few_grid", choices=[*GRIDS, "gits"], default=None,
                        help="the few-step solvers' time grid (default: each one's paper's); "
                        "gits: tuned to each model, sampler and NFE (tune-grid)")  # fmt: skip
    parser.add_argument("--gits_samples", type=int, default=64, help="gits: prior draws")
    parser.add_argument("--teleport", action="store_true",
                        help="gits: let the grid start by the Gaussian teleport (tune-grid "
                        "--teleport)")  # fmt: skip
    parser.add_argument(
        "--few_no_denoise",
        action="store_true",
        help="the few-step solvers spend their final denoising call on a step",
    )
    parser.add_argument("--gits_reference_steps", type=int, default=200,
                        help="gits: Heun steps of the reference trajectory")  # fmt: skip
    parser.add_argument("--gits_candidates", type=int, default=None,
                        help="gits: candidate times (default: tune-grid's)")  # fmt: skip
    parser.add_argument("--bound_samples", type=int, default=360, help="VDM bound: val images")
    parser.add_argument("--likelihood_samples", type=int, default=360, help="score-SDE: val images")
    parser.add_argument("--likelihood_tol", type=float, default=1e-5, help="score-SDE: RK45 tol")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip_fit", action="store_true", help="evaluate existing checkpoints")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/benchmarks/digits_quality")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/digits_quality.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; return what it wrote to ``--out``."""
    args = parse_args(argv)
    evaluator = FIDEvaluator("digits", "val", args.num_samples, args.sample_batch, progress=False)
    results = {
        **run_record("digits_quality.py", argv, args),
        "real_data_floor": None,
        "formulations": {},
        "fid": [],
    }
    for name in args.formulations:
        root = args.workdir / name
        fit_seconds = None
        if not args.skip_fit:
            fit_seconds = timed_fit(benchmark_config(name, root, args))
        ckpt = newest_checkpoint(root)
        if results["real_data_floor"] is None:
            results["real_data_floor"] = real_data_floor(evaluator, ckpt)
        summary, rows = evaluate(name, ckpt, evaluator, args)
        results["formulations"][name] = {"fit_seconds": fit_seconds, **summary}
        results["fid"] += rows
        write_results(args.out, results, report(results))  # after each: a stopped run keeps it
    plot(results["fid"], results["real_data_floor"], args.out.with_suffix(".png"))
    print(report(results), flush=True)
    return results


if __name__ == "__main__":
    main()
