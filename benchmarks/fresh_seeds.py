"""Fresh sampling seeds for the headline rows of a ``digits_quality.py`` run.

    python benchmarks/fresh_seeds.py --results benchmarks/results/digits_few_step_tuned.json
        [--seeds 0 1 2 3] [--out benchmarks/results/digits_few_step_tuned_seeds.json]

A digits_quality run picks each formulation's best sampler at ≤ 5 NFE, at ≤ 10 NFE and at any
NFE on one draw of sampling noise (seed 0), so its ratios favour whichever row that draw
flattered. This script scores those rows again on the same checkpoints with other seeds of
the sampling generators (``FIDEvaluator(seed=...)``; the samples depend on the seed alone,
FID of ``--num_samples`` as in the run). Each sampler is rebuilt from the row's settings; a
grid tuned by ``--few_grid gits`` is tuned again with the run's settings (the same prior draws
and reference, so the same times: the rebuilt sampler must print as the row did). Seed 0
reproduces the run's figure (the report shows both) and checks the whole rebuild.

The report gives, per formulation and row (best at ≤ 5, ≤ 10, ≥ 50 and any NFE), the FID per
seed, the mean and standard deviation over the seeds other than 0, and the ratios of the ≤ 5
and ≤ 10 NFE means to the any-NFE row's (issue 27's targets: ≤ 1.5 and ≤ 1.2) and to the
≥ 50 NFE row's, the model's full solve.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits_quality
from _common import markdown_table, report_header, run_record, write_results

from diffusion_pl.checkpoints import load_datamodule, load_module
from diffusion_pl.metrics import FIDEvaluator
from diffusion_pl.samplers import GRIDS, SAMPLERS, Grid, Sampler

_CUSTOM_GRID = re.compile(r", grid=CustomGrid\(times=\[[^\]]*\](, teleport=True)?\)")


def rebuild(settings: str, tuned: Callable[[Sampler], Grid] | None) -> Sampler:
    """The sampler a row printed as ``settings``: its class and arguments read back from the
    repr (sampler and grid classes only, no builtins), a tuned grid tuned again."""
    custom = _CUSTOM_GRID.search(settings)
    plain = _CUSTOM_GRID.sub("", settings)
    names = {cls.__name__: cls for cls in (*SAMPLERS.values(), *GRIDS.values())}
    names["inf"] = math.inf  # EDM's s_tmax
    sampler = eval(plain, {"__builtins__": {}}, names)  # our own JSON; sampler and grid classes
    if custom:
        if tuned is None:
            raise ValueError(f"row {settings!r} has a tuned grid, but the run had no --few_grid")
        sampler = sampler.with_grid(tuned(sampler))
    if repr(sampler) != settings:
        raise ValueError(f"rebuilt {sampler!r}, but the row says {settings}")
    return sampler


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, required=True, help="a digits_quality JSON")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="default: <results>_seeds.json")
    args = parser.parse_args(argv)
    out = args.out or args.results.with_name(args.results.stem + "_seeds.json")
    run = json.loads(args.results.read_text())
    settings = argparse.Namespace(**{**run["settings"], "device": args.device})
    results = {**run_record("fresh_seeds.py", argv, args), "run": str(args.results), "rows": []}
    evaluators = {seed: FIDEvaluator("digits", "val", settings.num_samples, settings.sample_batch,
                                     seed=seed, progress=False) for seed in args.seeds}  # fmt: skip
    for name, formulation in run["formulations"].items():
        ckpt = Path(formulation["checkpoint"])
        module = load_module(ckpt, map_location=args.device).eval()
        datamodule = load_datamodule(ckpt)
        tuned = digits_quality.few_step_grid(module, datamodule, settings)
        mine = [r for r in run["fid"] if r["formulation"] == name]
        scores: dict[str, dict[int, float]] = {}  # by settings: a row may head two columns
        for label, row in digits_quality.best_rows(mine).items():
            sampler = rebuild(row["settings"], tuned)
            fids = scores.setdefault(row["settings"], {})
            for seed in [s for s in args.seeds if s not in fids]:
                fids[seed] = round(evaluators[seed].evaluate(module, datamodule, sampler)["fid"], 3)
            results["rows"].append({"formulation": name, "nfe_limit": label,
                                    "sampler": row["sampler"], "nfe": row["nfe"],
                                    "run_fid": row["fid"], "fid": dict(fids)})  # fmt: skip
            print(json.dumps(results["rows"][-1]), flush=True)
            write_results(out, results, report(results))
    print(report(results), flush=True)
    return results


def fresh_stats(row: dict) -> tuple[float, float | None]:
    """Mean and standard deviation of a row's FIDs over its seeds other than 0 (if any)."""
    values = [v for s, v in row["fid"].items() if int(s) != 0] or list(row["fid"].values())
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def report(results: dict) -> str:
    """The Markdown report: a row per (formulation, NFE limit), then the ratios of the means."""
    seeds = list(results["rows"][0]["fid"]) if results["rows"] else []
    lines = report_header(
        "Fresh sampling seeds for the headline rows", results,
        f"Run: {results['run']}. Mean ± std over the seeds other than 0.",
    )  # fmt: skip
    rows, ratios = [], {}
    for r in results["rows"]:
        mean, std = fresh_stats(r)
        ratios.setdefault(r["formulation"], {})[r["nfe_limit"]] = mean
        spread = "" if std is None else f" ± {std:.2f}"
        rows.append([r["formulation"], r["nfe_limit"], f"{r['sampler']}, {r['nfe']}",
                     f"{r['run_fid']:.2f}", *(f"{r['fid'][s]:.2f}" for s in seeds),
                     f"{mean:.2f}{spread}"])  # fmt: skip
    header = ["formulation", "NFE", "sampler, NFE", "run", *(f"seed {s}" for s in seeds), "mean"]
    lines += [markdown_table(header, rows), ""]
    table = []
    for name, means in ratios.items():
        cells = [
            f"{means[k] / means[base]:.2f}" if k in means and base in means else "—"
            for base in ("any", "≥ 50")
            for k in ("≤ 5", "≤ 10")
        ]
        table.append([name, *cells])
    lines += [markdown_table(["formulation", "≤ 5 NFE ÷ any (≤ 1.5)", "≤ 10 ÷ any (≤ 1.2)",
                              "≤ 5 ÷ ≥ 50", "≤ 10 ÷ ≥ 50"], table)]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
