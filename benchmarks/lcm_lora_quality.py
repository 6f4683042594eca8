"""LCM-LoRA on the digits and its acceleration vector: adapters that sample the teacher, and a
LoRA fine-tune of it on other data, in 4 steps.

    python benchmarks/lcm_lora_quality.py [--teacher VDM_COND.ckpt] [--teacher_steps 4000]
        [--max_steps 2000 | --lcm_lora ADAPTERS.pt] [--finetune_steps 1000]
        [--transform transposed|inverted|gamma] [--omega 1.0] [--teacher_nfe 50]
        [--lcm_steps 4] [--finetune_nfe 50 100] [--num_samples 2000] [--per_class 100]
        [--base_channels N] [--out benchmarks/results/lcm_lora_quality.json]

1. The teacher: ``--teacher``, or configs/digits/vdm_cond.yaml fitted ``--teacher_steps``.
2. LCM-LoRA: ``--lcm_lora``, or configs/digits/lcm_lora.yaml on it, ``--max_steps`` steps
   (rank-8 adapters on the frozen teacher, ω fixed at ``--omega``, stop-gradient target); it
   writes adapters.pt.
3. The fine-tune: configs/digits/lora_finetune.yaml on the same teacher, ``--finetune_steps``
   steps (≤ 1,000), on the digits under ``--transform`` (the config's: ``Transformed`` with
   ``Transpose``; ``inverted``: ``Invert``; ``gamma``: ``Gamma(0.5)``, bolder strokes, a change
   of style); it writes its own adapters.pt.
4. Scores (EMA weights; all ten digits equally often; FID of ``--num_samples`` samples with
   the shipped digits features, against the val split of each model's data): the teacher guided
   at ω with DDIM at ``--teacher_nfe`` (F_T) and LCM-LoRA at ``--lcm_steps`` on the digits,
   with the share read as the requested digit; on the fine-tune's data, the fine-tune with
   DDIM at ``--finetune_nfe`` steps (its best at ≥ 50 NFE: F_FT) and at the LCM steps, the
   LCM-LoRA alone, and the acceleration vector (the fine-tune's adapters + the LCM-LoRA's,
   λ = 1 each, LCM sampler), each sampled as ``diffusion-pl sample --ckpt_path TEACHER --lora
   FT.pt --lora LCM.pt --sampler lcm --steps 4`` does (:func:`load_for_sampling`); the adapters'
   file sizes and parameter shares.
5. The picture (``.png`` beside the JSON): two rows of digits 0–9 per model, same noise, top to
   bottom: the teacher (DDIM, first ``--teacher_nfe``), the full LCM student ``--lcm`` if
   given (first ``--lcm_steps``), LCM-LoRA, the fine-tune (DDIM, first ``--finetune_nfe``) and
   the acceleration vector (first ``--lcm_steps``).

Issue 25's targets: LCM-LoRA at 4 steps ≤ 1.5 F_T with adapters ≤ 10 % of the net's
parameters; the acceleration vector at 4 steps ≤ 1.5 F_FT. The fits use ``diffusion-pl fit``
in this process (``--base_channels`` narrows every UNet for a smoke run). Writes JSON and a
Markdown report (``.md`` beside it, also printed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from _common import ROOT, markdown_table, report_header, run_record, shown, write_results
from lcm_quality import fit, requested_digit_rate, write_config

from diffusion_pl.checkpoints import load_datamodule, load_module
from diffusion_pl.cli import SamplingOptions, load_for_sampling
from diffusion_pl.data import DiffusionDataModule
from diffusion_pl.formulations import DiffusionModule
from diffusion_pl.lora import read_adapters
from diffusion_pl.metrics import FIDEvaluator
from diffusion_pl.metrics.features import DigitsFeatures
from diffusion_pl.samplers import Sampler
from diffusion_pl.visualize import save_image_grid

BOUND = 1.5
"""Both targets: FID ≤ 1.5× the reference (F_T for LCM-LoRA, F_FT for the acceleration vector)."""


def checkpoint(path: Path) -> dict:
    """A model key that loads the run saved in ``path`` (a teacher, a LoRA base)."""
    return {"class_path": "diffusion_pl.checkpoints.Checkpoint", "init_args": {"path": str(path)}}


def newest(folder: Path, name: str) -> Path:
    """The newest file called ``name`` under ``folder`` (the last fit's)."""
    return max(folder.rglob(name), key=lambda p: p.stat().st_mtime)


def loaded(
    teacher: Path, args: argparse.Namespace, steps: int | None, *lora: Path, sampler: str = "ddim"
) -> tuple[DiffusionModule, Sampler]:
    """The teacher with ``lora``'s adapters (λ = 1 each) and ``sampler`` at ``steps``, as
    ``diffusion-pl sample --ckpt_path TEACHER --lora A --lora B --sampler S --steps N`` loads
    them (``--sampler lcm``: read as the LCM-LoRA student)."""
    options = SamplingOptions(sampler=sampler, steps=steps, lora=tuple(map(str, lora)))
    chosen = load_for_sampling(str(teacher), options, args.device)
    return chosen.module, chosen.sampler


def scored(
    who: str,
    data: str,
    model: tuple[DiffusionModule, Sampler],
    datamodule: DiffusionDataModule,
    args: argparse.Namespace,
    evaluator: FIDEvaluator,
    judge: torch.nn.Module | None = None,
) -> dict:
    """FID of ``model`` (module, sampler) at ω = ``--omega`` against ``datamodule``'s val split,
    and with ``judge`` the share read as the requested digit."""
    module, sampler = model
    fid = evaluator.evaluate(module, datamodule, sampler, guidance_scale=args.omega)["fid"]
    rate = None
    if judge is not None:
        rate = requested_digit_rate(module, judge, sampler, args.omega, args.per_class)
    row = {"model": who, "data": data, "sampler": sampler.name, "steps": sampler.steps,
           "fid": round(fid, 3), "requested_digit": rate}  # fmt: skip
    print(row, flush=True)
    return row


TRANSFORMS = {
    "transposed": {"class_path": "diffusion_pl.data.Transpose"},
    "inverted": {"class_path": "diffusion_pl.data.Invert"},
    "gamma": {"class_path": "diffusion_pl.data.Gamma", "init_args": {"gamma": 0.5}},
}
"""The fine-tune's other data (``--transform``): the digits transposed (the config's), inverted,
or drawn with bolder strokes (brightness^0.5, a change of style)."""


def finetune_config(root: Path, args: argparse.Namespace, teacher: Path) -> Path:
    """configs/digits/lora_finetune.yaml on ``teacher`` for ``--finetune_steps``, on the digits
    under ``--transform``."""
    path = write_config("lora_finetune", root, args, args.finetune_steps,
                        base_ckpt=checkpoint(teacher))  # fmt: skip
    config = yaml.safe_load(path.read_text())
    config["data"]["source"]["init_args"]["transform"] = TRANSFORMS[args.transform]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def adapters_size(path: Path, base: DiffusionModule) -> dict:
    """An adapters file's bytes, weights and share of the base net's parameters."""
    weights = read_adapters(path).parameters()
    total = sum(p.numel() for p in base.net.parameters())
    return {"file": str(path), "bytes": path.stat().st_size, "parameters": weights,
            "share": round(weights / total, 4)}  # fmt: skip


@torch.no_grad()
def picture(rows: list[tuple[DiffusionModule, Sampler]], args: argparse.Namespace) -> Path:
    """Two rows of digits 0–9 from each (module, sampler) at ω = ``--omega``, the same noise
    for every model, as one grid beside ``--out``."""
    labels = torch.arange(10).repeat(2).to(args.device)
    images = [module.sample(len(labels), sampler=sampler, class_labels=labels,
                            guidance_scale=args.omega,
                            generator=torch.Generator(device=args.device).manual_seed(7))
              for module, sampler in rows]  # fmt: skip
    return save_image_grid(torch.cat(images), args.out.with_suffix(".png"), nrow=10)


def run(args: argparse.Namespace, evaluator: FIDEvaluator) -> dict:
    """Fit (or take) the teacher, fit the LCM-LoRA and the fine-tune on it, score them all."""
    work, fits = args.workdir, {}
    teacher = args.teacher
    if teacher is None:
        teacher, fits["teacher"] = fit(write_config("vdm_cond", work / "teacher", args))
    lcm = args.lcm_lora
    if lcm is None:
        _, fits["lcm_lora"] = fit(write_config(
            "lcm_lora", work / "lcm_lora", args, args.max_steps, teacher=checkpoint(teacher),
            omega_min=args.omega, omega_max=args.omega))  # fmt: skip
        lcm = newest(work / "lcm_lora", "adapters.pt")
    ft_run, fits["finetune"] = fit(finetune_config(work / "finetune", args, teacher))
    ft = newest(work / "finetune", "adapters.pt")
    other = args.transform
    digits, others = load_datamodule(teacher), load_datamodule(ft_run)
    judge = DigitsFeatures().classifier.to(args.device).eval()
    rows = [scored("teacher", "digits", loaded(teacher, args, n), digits, args, evaluator, judge)
            for n in args.teacher_nfe]  # fmt: skip
    for n in args.lcm_steps:
        student = loaded(teacher, args, n, lcm, sampler="lcm")
        rows.append(scored("LCM-LoRA", "digits", student, digits, args, evaluator, judge))
    for n in sorted({*args.finetune_nfe, *args.lcm_steps}):
        rows.append(scored("fine-tune", other, loaded(teacher, args, n, ft), others,
                           args, evaluator))  # fmt: skip
    for n in args.lcm_steps:
        rows.append(scored("LCM-LoRA", other, loaded(teacher, args, n, lcm, sampler="lcm"),
                           others, args, evaluator))  # fmt: skip
        both = loaded(teacher, args, n, ft, lcm, sampler="lcm")
        rows.append(scored("fine-tune + LCM-LoRA", other, both, others, args,
                           evaluator))  # fmt: skip
    lcm_rows = (
        [] if args.lcm is None else [loaded(args.lcm, args, args.lcm_steps[0], sampler="lcm")]
    )
    shown = picture(
        [
            loaded(teacher, args, args.teacher_nfe[0]),
            *lcm_rows,
            loaded(teacher, args, args.lcm_steps[0], lcm, sampler="lcm"),
            loaded(teacher, args, args.finetune_nfe[0], ft),
            loaded(teacher, args, args.lcm_steps[0], ft, lcm, sampler="lcm"),
        ],
        args,
    )
    base = load_module(teacher)
    return {"picture": str(shown), "teacher": str(teacher), "fit_seconds": fits, "scores": rows,
            "adapters": {"lcm_lora": adapters_size(lcm, base),
                         "finetune": adapters_size(ft, base)}}  # fmt: skip


def report(results: dict) -> str:
    """The Markdown report: every score, the adapters, then the targets."""
    s, rows = results["settings"], results["scores"]
    lora = f"{s['max_steps']} steps" if s["lcm_lora"] is None else f"from {s['lcm_lora']}"
    lines = report_header(
        "LCM-LoRA on the digits and the acceleration vector", results,
        f"{s['num_samples']} samples vs val of each model's data (digits features), ω = "
        f"{s['omega']}; LCM-LoRA {lora}, fine-tune {s['finetune_steps']} steps on the "
        f"{s['transform']} digits.",
    )  # fmt: skip
    table = [[r["model"], r["data"], r["sampler"], r["steps"], r["fid"],
              shown(r["requested_digit"])]
             for r in rows]  # fmt: skip
    lines.append(markdown_table(["model", "data", "sampler", "steps", "FID", "read as asked"],
                                table))  # fmt: skip
    sizes = [[name, a["bytes"], a["parameters"], f"{100 * a['share']:.1f} %"]
             for name, a in results["adapters"].items()]  # fmt: skip
    lines += ["", markdown_table(["adapters", "file bytes", "weights", "of the UNet"], sizes)]

    def best(model: str, data: str, steps: object = None) -> float:
        return min(r["fid"] for r in rows if r["model"] == model and r["data"] == data
                   and (steps is None or steps(r["steps"])))  # fmt: skip

    f_t = best("teacher", "digits")
    f_ft = best("fine-tune", s["transform"], lambda n: n >= 50)
    targets = []
    for n in s["lcm_steps"]:
        mine = best("LCM-LoRA", "digits", lambda k, n=n: k == n)
        both = best("fine-tune + LCM-LoRA", s["transform"], lambda k, n=n: k == n)
        targets += [
            [f"LCM-LoRA, {n} steps", mine, f"≤ {BOUND}× F_T {f_t} = {BOUND * f_t:.3f}",
             "met" if mine <= BOUND * f_t else "missed"],
            [f"acceleration vector, {n} steps", both,
             f"≤ {BOUND}× F_FT {f_ft} = {BOUND * f_ft:.3f}",
             "met" if both <= BOUND * f_ft else "missed"],
        ]  # fmt: skip
    share = results["adapters"]["lcm_lora"]["share"]
    targets.append(["LCM-LoRA adapters", f"{100 * share:.1f} %", "≤ 10 % of the UNet",
                    "met" if share <= 0.10 else "missed"])  # fmt: skip
    lines += ["", markdown_table(["target", "measured", "bound", ""], targets)]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", type=Path, help="a vdm_cond checkpoint (default: fit one)")
    parser.add_argument("--teacher_steps", type=int, default=4000)
    parser.add_argument("--lcm", type=Path, help="a full LCM student for the picture's 2nd row")
    parser.add_argument("--max_steps", type=int, default=2000, help="LCM-LoRA steps")
    parser.add_argument("--lcm_lora", type=Path,
                        help="LCM-LoRA adapters of the teacher (default: fit them)")  # fmt: skip
    parser.add_argument("--transform", choices=sorted(TRANSFORMS), default="transposed",
                        help="the fine-tune's data: the digits so transformed")  # fmt: skip
    parser.add_argument("--finetune_steps", type=int, default=1000, help="fine-tune steps")
    parser.add_argument("--omega", type=float, default=1.0, help="ω of LCM-LoRA and sampling")
    parser.add_argument("--teacher_nfe", type=int, nargs="+", default=[50],
                        help="DDIM steps of the teacher")  # fmt: skip
    parser.add_argument("--lcm_steps", type=int, nargs="+", default=[4])
    parser.add_argument("--finetune_nfe", type=int, nargs="+", default=[50, 100],
                        help="DDIM steps of the fine-tune (≥ 50 for its reference)")  # fmt: skip
    parser.add_argument("--num_samples", type=int, default=2000, help="generated images per FID")
    parser.add_argument("--sample_batch", type=int, default=500)
    parser.add_argument("--per_class", type=int, default=100, help="samples per digit classified")
    parser.add_argument("--base_channels", type=int, default=None, help="narrow every UNet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/benchmarks/lcm_lora")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/lcm_lora_quality.json"
    )
    args = parser.parse_args(argv)
    if args.finetune_steps > 1000 or min(args.finetune_nfe) < 50:
        parser.error("the fine-tune is ≤ 1,000 steps and its reference ≥ 50 NFE (issue 25)")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; return what it wrote to ``--out``."""
    args = parse_args(argv)
    evaluator = FIDEvaluator("digits", "val", args.num_samples, args.sample_batch, progress=False)
    results = {**run_record("lcm_lora_quality.py", argv, args), **run(args, evaluator)}
    markdown = report(results)
    write_results(args.out, results, markdown)
    print(markdown)
    return results


if __name__ == "__main__":
    main()
