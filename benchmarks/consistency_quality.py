"""One- and two-step FID of consistency distillation and training on the digits, and teachers'.

    python benchmarks/consistency_quality.py [--vdm_teacher VDM.ckpt] [--rf_teacher RF.ckpt]
        [--edm_teacher EDM.ckpt] [--runs cd_vdm cd_rf ct cd_edm ect ect_rf] [--max_steps 2000]
        [--ct_steps 2000] [--num_samples 2000] [--midpoints 0.5 1 ...] [--rescore]
        [--out benchmarks/results/consistency_quality.json]

The teachers are the checkpoints ``benchmarks/digits_quality.py`` trains (VDM on the DDPM path,
rectified flow on the linear path, EDM on the VE path, the same UNet): by default the newest
``last.ckpt`` under its workdir, ``runs/benchmarks/digits_quality/{vdm,rectified_flow,edm}``.
Each run fits a config of configs/digits/ with digits_quality's budget (batch, EMA, seed, no
validation; see its ``benchmark_config``):

* ``cd_vdm``, ``cd_rf``: consistency_distill.yaml from that teacher, the student started from
  the teacher's net on the teacher's path and parameterization (``init_from_teacher``; so it
  starts as the teacher's denoiser, as Song et al.'s from their EDM teacher), ``--max_steps``
  steps. The VDM teacher's DDPM path reaches σ/α = 0.01 only, so its student's σ_min is 0.01
  (the rectified flow's, 0.002): ``sigma_min`` is the larger of 0.002 and the teacher's lowest
  σ/α.
* ``ct``: consistency_train.yaml (iCT) from scratch with digits_quality's UNet, ``--ct_steps``.
* ``cd_edm``: Song et al.'s own recipe: distillation from the EDM teacher with the student
  started from the teacher's weights (``init_from_teacher``: the same preconditioning, so the
  start is the teacher's denoiser), ``--max_steps``.
* ``ect``: consistency_tune.yaml (ECT) started from the EDM checkpoint (``init``), no
  teacher ODE, ``--ct_steps``.
* ``ect_rf``: the same from the rectified-flow checkpoint, on its path and parameterization.

Runs already in ``--out`` and not named by ``--runs`` are kept (so runs may be added later);
``--rescore`` fits nothing and scores the named runs again from the checkpoints ``--out``
records.

Then, with the EMA weights: FID of ``--num_samples`` samples against the val split (the shipped
digits feature network, as digits_quality) at 1 and 2 steps of multistep consistency sampling
(ρ-spaced midpoint; with ``--midpoints``, also 2 steps through each of those intermediate
levels, the search Song et al. and iCT do for their 2-step numbers), the training time, and
each teacher's FID at 10 and 100 NFE (the best of its samplers in digits_quality's sweep at
that NFE). Targets of issue 14: CD at 2 steps within 1.5x its teacher's best FID, CT at 2
steps (iCT, and ECT: no teacher ODE) within 2x the best teacher's; the report gives both the
ρ-spaced midpoint's FID and the best searched one's (chosen on the same FID, so optimistic).

About 50–70 minutes on 2 CPU cores with the defaults: each CD step costs about 2.5 teacher-sized
network passes (two teacher evaluations of Heun, the student with gradients, the target), CT
about 1.5, plus ~5 minutes of teacher FIDs. Writes JSON and a Markdown report (``.md`` beside
it, also printed) after each run.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import yaml
from _common import ROOT, markdown_table, report_header, run_record, write_results
from digits_quality import (
    SWEEPS,
    add_budget_arguments,
    benchmark_config,
    fid_sweep,
    newest_checkpoint,
    real_data_floor,
    scored,
    timed_fit,
)

from diffusion_pl.checkpoints import load_datamodule, load_module, read_checkpoint
from diffusion_pl.formulations import DiffusionModule
from diffusion_pl.metrics import FIDEvaluator
from diffusion_pl.samplers import ConsistencySampler

RUNS = ("cd_vdm", "cd_rf", "ct", "cd_edm", "ect", "ect_rf")
DIGITS_RUNS = ROOT / "runs/benchmarks/digits_quality"
"""digits_quality's default workdir, where the teachers are found by default."""
TEACHERS = {"cd_vdm": "vdm", "cd_rf": "rectified_flow", "cd_edm": "edm", "ect": "edm",
            "ect_rf": "rectified_flow"}  # fmt: skip
"""Each run's teacher (for ECT the model it starts from), by its digits_quality name."""
FLAGS = {"cd_vdm": "vdm_teacher", "cd_rf": "rf_teacher", "cd_edm": "edm_teacher",
         "ect": "edm_teacher", "ect_rf": "rf_teacher"}  # fmt: skip
"""Each run's argument naming that checkpoint."""
CONFIGS = {"ct": "consistency_train", "ect": "consistency_tune", "ect_rf": "consistency_tune"}
"""Each run's config of configs/digits/ (the others: consistency_distill)."""


def lowest_level(teacher: DiffusionModule) -> float:
    """The smallest σ/α the teacher's path reaches, at its t_min."""
    path = teacher.path
    t_min = path.as_time(path.t_min)
    return float(torch.exp(-0.5 * path.log_snr(t_min)))


def teacher_reading(teacher: DiffusionModule, hparams: dict) -> dict:
    """The teacher's ``path`` and ``parameterization`` as config, for a student started from its
    net: its recorded config (``hparams``), or the class of a formulation that fixes them
    (rectified flow)."""
    return {key: hparams.get(key, f"{type(obj).__module__}.{type(obj).__name__}")
            for key, obj in (("path", teacher.path),
                             ("parameterization", teacher.parameterization))}  # fmt: skip


def run_config(run: str, root: Path, args: argparse.Namespace) -> tuple[Path, float]:
    """Write the run's config under ``root`` (digits_quality's budget); return it and σ_min."""
    name = CONFIGS.get(run, "consistency_distill")
    budget = argparse.Namespace(**{**vars(args), "max_steps": args.ct_steps if run in CONFIGS
                                   else args.max_steps})  # fmt: skip
    path = benchmark_config(name, root, budget)
    config = yaml.safe_load(path.read_text())
    model = config["model"]["init_args"]
    sigma_min = 0.002
    if run in TEACHERS:
        ckpt = getattr(args, FLAGS[run])
        teacher, hparams = load_module(ckpt), read_checkpoint(ckpt, mmap=True)["hyper_parameters"]
        tuned = CONFIGS.get(run) == "consistency_tune"
        model["init" if tuned else "teacher"] = {
            "class_path": "diffusion_pl.checkpoints.Checkpoint",
            "init_args": {"path": str(ckpt)},
        }
        model["init_from_teacher"] = not tuned
        model["net"] = hparams["net"]
        if TEACHERS[run] != "edm":  # the student reads the net as its teacher does
            model |= teacher_reading(teacher, hparams)
        sigma_min = max(sigma_min, math.ceil(lowest_level(teacher) * 1e6) / 1e6)
    model["sigma_min"] = sigma_min
    model["sampler"] = {"class_path": "diffusion_pl.samplers.ConsistencySampler",
                        "init_args": {"steps": 1, "sigma_min": sigma_min}}  # fmt: skip
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, sigma_min


def teacher_fids(
    name: str, ckpt: Path, evaluator: FIDEvaluator, args: argparse.Namespace
) -> list[dict]:
    """The teacher's FID with each of its digits_quality samplers at each ``--teacher_nfe``
    (the few-step solvers at those from 3 to 20, as digits_quality's ``--few_nfe``)."""
    module = load_module(ckpt, map_location=args.device).eval()
    datamodule = load_datamodule(ckpt)
    few = [n for n in args.teacher_nfe if 3 <= n <= 20]
    rows = fid_sweep(module, datamodule, evaluator, SWEEPS[name], args.teacher_nfe, few)
    return [{"teacher": name, **row} for row in rows]


def student_fids(
    ckpt: Path, sigma_min: float, evaluator: FIDEvaluator, args: argparse.Namespace
) -> list[dict]:
    """The consistency model's FID at each number of steps of ``--steps`` (ρ-spaced levels),
    then at 2 steps with each intermediate level σ̃ of ``--midpoints``."""
    module = load_module(ckpt, map_location=args.device).eval()
    datamodule = load_datamodule(ckpt)
    samplers = [ConsistencySampler(steps=steps, sigma_min=sigma_min) for steps in args.steps]
    samplers += [ConsistencySampler(steps=2, sigmas=[sigma], sigma_min=sigma_min)
                 for sigma in args.midpoints]  # fmt: skip
    return [{"steps": sampler.steps, "levels": [round(sigma, 4) for sigma in sampler.levels()],
             **scored(module, datamodule, evaluator, sampler)} for sampler in samplers]  # fmt: skip


def best(rows: list[dict], nfe: int) -> float | None:
    """The lowest FID among ``rows`` at ``nfe`` (± 1: a sampler's counted NFE may include its
    final denoising call, as EDM's stochastic sampler's 101 at 100)."""
    fids = [r["fid"] for r in rows if abs(r["nfe"] - nfe) <= 1]
    return min(fids) if fids else None


def report(results: dict) -> str:
    """The Markdown report: student FIDs beside their teachers', and the issue's targets."""
    s = results["settings"]
    kept = results.get("earlier_commands", [])
    earlier = "".join(f"Earlier runs kept from `{c}`. " for c in kept)
    lines = report_header(
        "Consistency models on the digits: FID at 1 and 2 steps", results, earlier +
        f"{s['num_samples']} samples vs val (digits features); CD {s['max_steps']} steps, CT "
        f"{s['ct_steps']} steps, batch {s['batch_size']}; real-data floor "
        f"{results['real_data_floor']}.",
    )  # fmt: skip
    teachers = results["teachers"]
    best_teacher = {n: min(r["fid"] for r in rows) for n, rows in teachers.items() if rows}
    rows = []
    for run, info in results["runs"].items():
        teacher = TEACHERS.get(run, "—") + (" (its start)" if run in CONFIGS else "")
        for r in info["fid"]:
            levels = ", ".join(f"{x:g}" for x in r.get("levels", [])) or "—"
            rows.append([run, teacher, r["steps"], levels, r["fid"], info["fit_seconds"],
                         info["sigma_min"]])  # fmt: skip
    lines.append(markdown_table(
        ["run", "teacher", "steps", "intermediate σ̃", "FID", "train s", "sigma_min"], rows
    ))  # fmt: skip
    nfes = s["teacher_nfe"]
    lines += ["", markdown_table(
        ["teacher", *[f"FID @ {n} NFE" for n in nfes], "best"],
        [[n, *[best(r, k) for k in nfes], best_teacher.get(n)] for n, r in teachers.items()],
    )]  # fmt: skip
    targets = []
    for run, info in results["runs"].items():
        twos = [r["fid"] for r in info["fid"] if r["steps"] == 2]
        if not twos or not best_teacher:
            continue
        two, searched = twos[0], min(twos)  # the ρ-spaced level; the best of --midpoints too
        if run not in CONFIGS:  # distillation: 1.5x its teacher
            if TEACHERS[run] not in best_teacher:
                continue  # its teacher is not scored yet
            ref, factor = best_teacher[TEACHERS[run]], 1.5
        else:  # consistency training (iCT, and ECT with no teacher ODE): 2x the best teacher
            ref, factor = min(best_teacher.values()), 2.0
        targets.append([run, two, "met" if two <= factor * ref else "missed", searched,
                        "met" if searched <= factor * ref else "missed",
                        f"≤ {factor}× {ref} = {factor * ref:.3f}"])  # fmt: skip
    if targets:
        headers = ["run", "FID at 2 steps", "", "best σ̃ (searched on this FID)", "", "target"]
        lines += ["", markdown_table(headers, targets)]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vdm_teacher", type=Path, help="default: digits_quality's VDM run")
    parser.add_argument("--rf_teacher", type=Path, help="default: its rectified flow run")
    parser.add_argument("--edm_teacher", type=Path, help="default: its EDM run (cd_edm, ect)")
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    parser.add_argument("--max_steps", type=int, default=2000, help="distillation steps")
    parser.add_argument("--ct_steps", type=int, default=2000, help="consistency training steps")
    add_budget_arguments(parser)  # --base_channels: CT's width (CD takes its teacher's net)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2], help="sampling steps")
    parser.add_argument("--teacher_nfe", type=int, nargs="+", default=[10, 100])
    parser.add_argument(
        "--midpoints",
        type=float,
        nargs="*",
        default=[],
        help="also score 2 steps with each of these intermediate levels σ̃",
    )
    parser.add_argument("--rescore", action="store_true",
                        help="no fitting: score the --runs already in --out from their "
                        "recorded checkpoints again (e.g. with --midpoints)")  # fmt: skip
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/benchmarks/consistency")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks/results/consistency_quality.json")  # fmt: skip
    args = parser.parse_args(argv)
    for run in set(args.runs) & set(FLAGS):
        if getattr(args, FLAGS[run]) is None:
            setattr(args, FLAGS[run], newest_checkpoint(DIGITS_RUNS / TEACHERS[run]))
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; return what it wrote to ``--out``."""
    args = parse_args(argv)
    evaluator = FIDEvaluator("digits", "val", args.num_samples, args.sample_batch, progress=False)
    results = {
        **run_record("consistency_quality.py", argv, args),
        "real_data_floor": None,
        "teachers": {},
        "runs": {},
    }
    earlier_runs = {}
    if args.out.is_file():  # keep the earlier runs that this call does not repeat
        earlier = json.loads(args.out.read_text())
        earlier_runs = earlier.get("runs", {})
        results["real_data_floor"] = earlier.get("real_data_floor")
        results["teachers"] = earlier.get("teachers", {})
        results["runs"] = {k: v for k, v in earlier.get("runs", {}).items() if k not in args.runs}
        results["earlier_commands"] = [*earlier.get("earlier_commands", []), earlier["command"]]
    for run in args.runs:
        if args.rescore:
            if run not in earlier_runs:
                raise SystemExit(f"--rescore: {args.out} has no run {run!r} to score again")
            info = earlier_runs[run]
            ckpt, sigma_min = Path(info["checkpoint"]), info["sigma_min"]
            fit_seconds = info["fit_seconds"]
        else:
            root = args.workdir / run
            config, sigma_min = run_config(run, root, args)
            fit_seconds = timed_fit(config)
            ckpt = newest_checkpoint(root)
        if results["real_data_floor"] is None:
            results["real_data_floor"] = real_data_floor(evaluator, ckpt)
        rows = student_fids(ckpt, sigma_min, evaluator, args)
        results["runs"][run] = {"fit_seconds": fit_seconds, "sigma_min": sigma_min,
                                "checkpoint": str(ckpt), "fid": rows}  # fmt: skip
        print(json.dumps({run: results["runs"][run]}), flush=True)
        write_results(args.out, results, report(results))  # a failure below keeps this run
        teacher = TEACHERS.get(run)
        if teacher is not None and teacher not in results["teachers"]:
            results["teachers"][teacher] = teacher_fids(
                teacher, getattr(args, FLAGS[run]), evaluator, args
            )
        write_results(args.out, results, report(results))  # after each: a stopped run keeps it
    print(report(results), flush=True)
    return results


if __name__ == "__main__":
    main()
