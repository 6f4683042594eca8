"""Guided few-step digits: LCM distilled from the class-conditional DDPM, against its teacher.

    python benchmarks/lcm_quality.py [--runs cond uncond] [--teacher VDM_COND.ckpt]
        [--uncond_teacher VDM.ckpt] [--teacher_steps 4000] [--max_steps 2000]
        [--student LCM.ckpt] [--omega_range 1 4] [--lcm_steps 1 2 4] [--teleport_to 659 …]
        [--omegas 1 1.5 2 3] [--teacher_nfe 10 50] [--num_samples 2000] [--fid_seed 0]
        [--per_class 100] [--base_channels N]
        [--out benchmarks/results/lcm_quality.json]

1. The teacher: ``--teacher``, or configs/digits/vdm_cond.yaml fitted ``--teacher_steps``
   steps (ε-prediction on the DDPM path, p_uncond 0.1).
2. The student: ``--student`` (one run only), or configs/digits/lcm.yaml from that teacher,
   ``--max_steps`` steps (ω ~ U[1, 4], or ``--omega_range``; k = 20, DDIM teacher step, EMA
   target 0.95, started from the teacher).
3. Scores, with the EMA weights, all ten digits equally often: the FID of ``--num_samples``
   samples (drawn from ``--fid_seed``) against the val split (the shipped digits features) and
   the share of ``--per_class`` samples per digit that the shipped digits classifier reads as
   the requested digit, for the teacher guided at each ω of ``--omegas`` with DDIM and
   DPM-Solver++(2M) at each of ``--teacher_nfe`` steps (classifier-free guidance: two net
   passes a step, on one doubled batch), and for the student at each ω and each of
   ``--lcm_steps`` (one pass a step), from τ = 999 and from each ``--teleport_to`` level (the
   Gaussian teleport's start, ``LCMSampler(teleport_to=τ)``).

``uncond`` (in ``--runs``) does the same for the unconditional DDPM of configs/digits/vdm.yaml
(``--uncond_teacher``, or fitted ``--teacher_steps``): plain LCD, ω fixed at 1, the student the
teacher's own UNet, unconditional FIDs only.

Issue 25's targets: with F_T the teacher's best FID over ω and samplers, LCM at 4 steps
≤ 1.3 F_T and ≥ 98 % read as the requested digit, at 2 steps ≤ 1.5 F_T; the unconditional run
at 2 steps ≤ 1.5× its teacher's best (consistency distillation from it: 66.5 against 14.7,
benchmarks/RESULTS.md). The fits use ``diffusion-pl fit`` in this process
(``--base_channels`` narrows every UNet for a smoke run). Writes JSON and a Markdown report
(``.md`` beside it, also printed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from unittest.mock import patch

import torch
import yaml
from _common import ROOT, markdown_table, report_header, run_record, shown, write_results

from diffusion_pl.checkpoints import load_datamodule, load_module
from diffusion_pl.cli import main as cli_main
from diffusion_pl.formulations import DiffusionModule
from diffusion_pl.metrics import FIDEvaluator
from diffusion_pl.metrics.features import DigitsFeatures
from diffusion_pl.samplers import DDIMSampler, DPMSolverSampler, LCMSampler, Sampler

CONFIGS = ROOT / "configs/digits"


def write_config(
    name: str, root: Path, args: argparse.Namespace, steps: int | None = None, **model: object
) -> Path:
    """configs/digits/<name>.yaml with this benchmark's budget (``steps``; default
    ``--max_steps`` for lcm, ``--teacher_steps`` for the teachers), written to ``root``."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    if steps is None:
        steps = args.max_steps if name == "lcm" else args.teacher_steps
    config["seed_everything"] = args.seed
    config["trainer"].update(
        accelerator="gpu" if args.device.startswith("cuda") else "cpu",
        max_steps=steps,
        default_root_dir=str(root),
        limit_val_batches=0,
        enable_progress_bar=False,
        callbacks=[
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"save_last": True, "every_n_train_steps": steps}},
            {"class_path": "diffusion_pl.callbacks.EMA",
             "init_args": {"halflife_samples": 10_000, "rampup_ratio": 0.05}},
        ],
    )  # fmt: skip
    init_args = config["model"]["init_args"]
    if args.base_channels is not None:
        init_args["net"]["init_args"]["base_channels"] = args.base_channels
    init_args.update(model)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fit(config: Path) -> tuple[Path, float]:
    """``diffusion-pl fit --config config`` in this process: its last.ckpt and wall seconds."""
    start = time.perf_counter()
    with patch.object(sys, "argv", sys.argv[:1]):  # LightningCLI reads only its args
        cli_main(["fit", "--config", str(config)])
    seconds = round(time.perf_counter() - start, 1)
    return max(config.parent.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime), seconds


@torch.no_grad()
def requested_digit_rate(
    module: DiffusionModule, judge: torch.nn.Module, sampler: Sampler, omega: float, n: int
) -> float:
    """The share of ``n`` samples of each digit that ``judge`` reads as the requested digit."""
    labels = torch.arange(10).repeat(n)
    x = module.sample(len(labels), sampler=sampler, class_labels=labels.to(module.device),
                      guidance_scale=omega,
                      generator=torch.Generator(device=module.device).manual_seed(1))  # fmt: skip
    return round(float((judge(x).argmax(1).cpu() == labels).float().mean()), 4)


def score(
    ckpt: Path, samplers: list[Sampler], args: argparse.Namespace, evaluator: FIDEvaluator
) -> list[dict]:
    """FID and requested-digit rate of ``ckpt`` with each sampler at each ω of ``--omegas``."""
    module = load_module(ckpt, map_location=args.device).eval()
    datamodule, judge = load_datamodule(ckpt), DigitsFeatures().classifier.to(args.device).eval()
    conditional = module.num_classes is not None
    rows = []
    for sampler in samplers:
        for omega in args.omegas if conditional else [None]:
            fid = evaluator.evaluate(module, datamodule, sampler, guidance_scale=omega)["fid"]
            rate = None
            if conditional:
                rate = requested_digit_rate(module, judge, sampler, omega, args.per_class)
            rows.append({"sampler": sampler.name, "steps": sampler.steps,
                         "teleport_to": getattr(sampler, "teleport_to", None), "omega": omega,
                         "fid": round(fid, 3), "requested_digit": rate})  # fmt: skip
            print(rows[-1], flush=True)
    return rows


FACTORS = {"cond": ((4, 1.3), (2, 1.5), (1, None)), "uncond": ((2, 1.5), (1, None), (4, None))}
"""Each run's targets: (LCM steps, FID bound as a multiple of the teacher's best; None: report)."""


def report(results: dict) -> str:
    """The Markdown report: every score, then the targets against each teacher's best FID."""
    s = results["settings"]
    student = f"LCM {s['max_steps']} steps" if s.get("student") is None else s["student"]
    lines = report_header(
        "LCM on the digits: guided few-step sampling against its teacher", results,
        f"{s['num_samples']} samples vs val (digits features), {s['per_class']} per digit "
        f"classified; {student}.",
    )  # fmt: skip
    rows, targets = [], []
    for run, info in results["runs"].items():
        for who in ("teacher", "lcm"):
            rows += [[run, who, r["sampler"], r["steps"], shown(r.get("teleport_to")),
                      shown(r["omega"]), r["fid"], shown(r["requested_digit"]),
                      shown(info[who]["fit_seconds"])]
                     for r in info[who]["scores"]]  # fmt: skip
        best = min(r["fid"] for r in info["teacher"]["scores"])
        for steps, factor in FACTORS[run]:
            mine = [r for r in info["lcm"]["scores"] if r["steps"] == steps]
            if not mine:
                continue
            top = min(mine, key=lambda r: r["fid"])
            bound = "report" if factor is None else f"≤ {factor}× {best} = {factor * best:.3f}"
            met = "" if factor is None else ("met" if top["fid"] <= factor * best else "missed")
            targets.append([run, steps, shown(top.get("teleport_to")), shown(top["omega"]),
                            top["fid"], shown(top["requested_digit"]), bound, met])  # fmt: skip
    headers = ["run", "model", "sampler", "steps", "teleport to", "ω", "FID", "read as asked",
               "fit s"]  # fmt: skip
    lines.append(markdown_table(headers, rows))
    headers = ["run", "LCM steps", "teleport to", "best ω", "FID", "read as asked", "target",
               ""]  # fmt: skip
    lines += ["", markdown_table(headers, targets)]
    return "\n".join(lines)


def distil_and_score(run: str, args: argparse.Namespace, evaluator: FIDEvaluator) -> dict:
    """Fit (or take) the run's teacher, distil it with configs/digits/lcm.yaml, score both."""
    conditional = run == "cond"
    name, given = ("vdm_cond", args.teacher) if conditional else ("vdm", args.uncond_teacher)
    teacher, teacher_seconds = given, None
    if teacher is None:
        teacher, teacher_seconds = fit(write_config(name, args.workdir / run / "teacher", args))
    model: dict = {"teacher": {"class_path": "diffusion_pl.checkpoints.Checkpoint",
                               "init_args": {"path": str(teacher)}}}  # fmt: skip
    if not conditional:  # plain LCD: the teacher's own UNet, ω fixed at 1, no labels
        net = yaml.safe_load((CONFIGS / "vdm.yaml").read_text())["model"]["init_args"]["net"]
        if args.base_channels is not None:
            net["init_args"]["base_channels"] = args.base_channels
        model |= {"net": net, "omega_min": 1.0, "omega_max": 1.0, "guidance_scale": None,
                  "p_uncond": 0.0}  # fmt: skip
    elif args.omega_range is not None:  # ω ~ U[lo, hi] instead of the config's [1, 4]
        lo, hi = args.omega_range
        model |= {"omega_min": lo, "omega_max": hi, "guidance_scale": lo}
    student, student_seconds = args.student, None
    if student is None:
        config = write_config("lcm", args.workdir / run / "lcm", args, **model)
        student, student_seconds = fit(config)
    teacher_samplers = [cls(steps=n) for n in args.teacher_nfe
                        for cls in (DDIMSampler, DPMSolverSampler)]  # fmt: skip
    lcm_samplers = [LCMSampler(steps=n, teleport_to=tau) for tau in [None, *args.teleport_to]
                    for n in args.lcm_steps]  # fmt: skip
    return {
        "teacher": {"checkpoint": str(teacher), "fit_seconds": teacher_seconds,
                    "scores": score(teacher, teacher_samplers, args, evaluator)},
        "lcm": {"checkpoint": str(student), "fit_seconds": student_seconds,
                "scores": score(student, lcm_samplers, args, evaluator)},
    }  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", choices=list(FACTORS), default=["cond"])
    parser.add_argument("--teacher", type=Path, help="a vdm_cond checkpoint (default: fit one)")
    parser.add_argument("--uncond_teacher", type=Path, help="a vdm checkpoint (default: fit one)")
    parser.add_argument("--teacher_steps", type=int, default=4000)
    parser.add_argument("--student", type=Path, help="the run's LCM checkpoint (default: distil)")
    parser.add_argument("--max_steps", type=int, default=2000, help="LCM distillation steps")
    parser.add_argument("--omega_range", type=float, nargs=2, metavar=("LO", "HI"),
                        help="the student's ω ~ U[LO, HI] (default: the config's)")  # fmt: skip
    parser.add_argument("--lcm_steps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--teleport_to", type=int, nargs="+", default=[], metavar="TAU",
                        help="also start LCM at these skipping-grid levels")  # fmt: skip
    parser.add_argument("--omegas", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--teacher_nfe", type=int, nargs="+", default=[10, 50],
                        help="DDIM and DPM-Solver++(2M) steps of the teacher")  # fmt: skip
    parser.add_argument("--num_samples", type=int, default=2000, help="generated images per FID")
    parser.add_argument("--fid_seed", type=int, default=0, help="sampling seed of every FID")
    parser.add_argument("--sample_batch", type=int, default=500)
    parser.add_argument("--per_class", type=int, default=100, help="samples per digit classified")
    parser.add_argument("--base_channels", type=int, default=None, help="narrow both UNets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/benchmarks/lcm")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/lcm_quality.json")
    args = parser.parse_args(argv)
    if args.student is not None and len(args.runs) != 1:
        parser.error("--student is one run's LCM checkpoint: give one of --runs")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; return what it wrote to ``--out``."""
    args = parse_args(argv)
    evaluator = FIDEvaluator("digits", "val", args.num_samples, args.sample_batch,
                             seed=args.fid_seed, progress=False)  # fmt: skip
    results = {**run_record("lcm_quality.py", argv, args), "runs": {}}
    for run in args.runs:
        results["runs"][run] = distil_and_score(run, args, evaluator)
        write_results(args.out, results, report(results))
    markdown = report(results)
    write_results(args.out, results, markdown)
    print(markdown)
    return results


if __name__ == "__main__":
    main()
