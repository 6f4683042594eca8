"""After training, on one digits rectified-flow run: post-hoc EMA (FID vs σ_rel) and autoguidance
(FID vs w with an early checkpoint of the same run as the guide).

    python benchmarks/phema_autoguidance.py [--max_steps 2000] [--snapshot_every 100]
        [--sigma_rel 0.02 0.04 0.06 0.08 0.10 0.13 0.16 0.20] [--guide_step 500]
        [--scales 1 1.25 1.5 2 2.5 3] [--sampler heun --steps 10] [--num_samples 2000]
        [--out benchmarks/results/phema_autoguidance.json]

The run is configs/digits/rectified_flow.yaml with digits_quality's budget (its UNet, batch,
seed, ``--max_steps``, the fixed half-life EMA of ``--ema_halflife`` training samples, no
validation) plus a ``PostHocEMA`` callback (σ_rel 0.05 and 0.10, snapshots every
``--snapshot_every`` steps) and a checkpoint every ``--guide_step`` steps. Then, all with the
same evaluator (``--num_samples`` samples against the val split, the shipped digits features,
the same noise) and sampler:

* FID of the final raw weights and of the fixed half-life EMA (the checkpoint's average);
* ``diffusion-pl phema --sweep`` over ``--sigma_rel``: the average of each width, rebuilt from
  the snapshots, and its FID;
* autoguidance: the final EMA model guided by the run's EMA at ``--guide_step`` (an earlier,
  weaker version of itself), FID at each scale w of ``--scales`` (w = 1 is the model alone).

About 20 minutes on 2 CPU cores with the defaults (a 7-minute fit, ~30 s per FID of a
10-step Heun sampler, twice that with a guide). Writes JSON, a Markdown report (``.md``, also
printed) and a plot of both curves (``.png``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from _common import ROOT, markdown_table, report_header, run_record, write_results
from digits_quality import (
    add_budget_arguments,
    benchmark_config,
    newest_checkpoint,
    real_data_floor,
    timed_fit,
)
from matplotlib.figure import Figure

from diffusion_pl.callbacks.guide import load_guide
from diffusion_pl.checkpoints import Checkpoint, load_datamodule, load_module
from diffusion_pl.cli import phema, pick_sampler
from diffusion_pl.metrics import FIDEvaluator


def run_config(root: Path, args: argparse.Namespace) -> Path:
    """digits_quality's rectified-flow config plus PostHocEMA and the periodic checkpoints."""
    path = benchmark_config("rectified_flow", root, args)
    config = yaml.safe_load(path.read_text())
    callbacks = config["trainer"]["callbacks"]
    callbacks[0]["init_args"].update(every_n_train_steps=args.guide_step, save_top_k=-1)
    callbacks.append({"class_path": "diffusion_pl.callbacks.PostHocEMA",
                      "init_args": {"sigma_rels": [0.05, 0.10],
                                    "snapshot_every": args.snapshot_every}})  # fmt: skip
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def checkpoint_at(root: Path, step: int) -> Path:
    """The run's checkpoint of ``step`` (ModelCheckpoint's ``epoch=E-step=S.ckpt``)."""
    found = sorted(root.rglob(f"*-step={step}.ckpt"))
    if not found:
        raise FileNotFoundError(f"no checkpoint of step {step} under {root}")
    return found[-1]


def plot(results: dict, path: Path) -> None:
    """FID vs σ_rel (post-hoc EMA, the fixed EMA as a line) and FID vs w (autoguidance)."""
    fig = Figure(figsize=(10, 3.8), dpi=100)
    left, right = fig.subplots(1, 2)
    sweep = results["phema"]
    left.plot([r["sigma_rel"] for r in sweep], [r["fid"] for r in sweep], marker="o",
              label="post-hoc EMA")  # fmt: skip
    left.axhline(
        results["fixed_ema_fid"],
        color="gray",
        ls="--",
        label=f"fixed EMA (half-life {results['settings']['ema_halflife']} samples)",
    )
    left.set(xlabel="σ_rel", ylabel="FID (digits features)", title="post-hoc EMA")
    left.legend(fontsize=8)
    guided = results["autoguidance"]
    right.plot([r["w"] for r in guided], [r["fid"] for r in guided], marker="o")
    right.set(
        xlabel="w",
        ylabel="FID (digits features)",
        title=f"autoguidance (guide: step {results['settings']['guide_step']})",
    )
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def report(results: dict) -> str:
    """The Markdown report: both sweeps beside the fixed EMA and the unguided model."""
    s = results["settings"]
    lines = report_header(
        "After training on the digits: post-hoc EMA and autoguidance", results,
        f"Digits rectified flow, {s['max_steps']} steps × batch {s['batch_size']} (fit "
        f"{results['fit_seconds']} s), {s['num_samples']} samples vs val (digits features), "
        f"sampler {results['sampler']}; real-data floor {results['real_data_floor']}.",
    )  # fmt: skip
    lines.append(markdown_table(
        ["weights", "FID"],
        [["raw (final step)", results["raw_fid"]],
         [f"fixed EMA, half-life {s['ema_halflife']} samples", results["fixed_ema_fid"]],
         *[[f"post-hoc EMA σ_rel {r['sigma_rel']:g}", round(r["fid"], 3)]
           for r in results["phema"]]],
    ))  # fmt: skip
    lines += ["", markdown_table(
        ["w", "FID"], [[r["w"], round(r["fid"], 3)] for r in results["autoguidance"]],
    )]  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max_steps", type=int, default=2000)
    parser.add_argument("--snapshot_every", type=int, default=100)
    parser.add_argument("--sigma_rel", type=float, nargs="+",
                        default=[0.02, 0.04, 0.06, 0.08, 0.10, 0.13, 0.16, 0.20])  # fmt: skip
    parser.add_argument("--guide_step", type=int, default=500, help="the guide's step")
    parser.add_argument("--scales", type=float, nargs="+", default=[1, 1.25, 1.5, 2, 2.5, 3])
    parser.add_argument("--sampler", default="heun")
    parser.add_argument("--steps", type=int, default=10)
    add_budget_arguments(parser)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/benchmarks/phema_autoguidance")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks/results/phema_autoguidance.json")  # fmt: skip
    args = parser.parse_args(argv)
    if args.max_steps % args.guide_step or args.max_steps % args.snapshot_every:
        parser.error("--max_steps must be a multiple of --guide_step and of --snapshot_every")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; return what it wrote to ``--out``."""
    args = parse_args(argv)
    root = args.workdir / "run"
    fit_seconds = timed_fit(run_config(root, args))
    final = newest_checkpoint(root)
    evaluator = FIDEvaluator("digits", "val", args.num_samples, args.sample_batch, seed=args.seed,
                             progress=False)  # fmt: skip
    datamodule = load_datamodule(final)
    models = {w: load_module(final, map_location=args.device, weights=w).eval()
              for w in ("raw", "ema")}  # fmt: skip
    main_model = models["ema"]
    sampler = pick_sampler(main_model.sampler, args.sampler, args.steps, None)
    scores = {w: round(evaluator.evaluate(m, datamodule, sampler)["fid"], 3)
              for w, m in models.items()}  # fmt: skip
    sweep = phema(str(root), args.sigma_rel, str(args.workdir / "phema"), sweep=True,
                  feature="digits", num_samples=args.num_samples, sampler=args.sampler,
                  steps=args.steps, batch_size=args.sample_batch, seed=args.seed,
                  device=args.device)  # fmt: skip
    phema_rows = json.loads((args.workdir / "phema/fid_vs_sigma_rel.json").read_text())["results"]
    assert len(sweep) == len(phema_rows)
    guide = load_guide(Checkpoint(str(checkpoint_at(root, args.guide_step))), main_model,
                       map_location=args.device)  # fmt: skip
    guided = []
    for w in args.scales:
        fid = evaluator.evaluate(main_model, datamodule, sampler, guide=guide, guidance_scale=w)
        guided.append({"w": w, "fid": fid["fid"]})
        print(f"autoguidance w={w:g}: FID {fid['fid']:.3f}", flush=True)
    results = {
        **run_record("phema_autoguidance.py", argv, args),
        "fit_seconds": fit_seconds,
        "sampler": str(sampler),
        "real_data_floor": real_data_floor(evaluator, final),
        "raw_fid": scores["raw"],
        "fixed_ema_fid": scores["ema"],
        "phema": [{"sigma_rel": r["sigma_rel"], "fid": r["fid"]} for r in phema_rows],
        "autoguidance": guided,
    }
    write_results(args.out, results, report(results))
    plot(results, args.out.with_suffix(".png"))
    print(report(results), flush=True)
    return results


if __name__ == "__main__":
    main()
