"""``diffusion-pl tune-grid`` and ``--grid file:PATH``: tuned grids through the real CLI."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from cli_runs import cli_error
from run_helpers import toy_overrides

from diffusion_pl.cli import main

TIMES = [1.0, 0.35, 0.0]
"""A 2-step grid of the toy rectified flow (t_max = 1, t_min = 0)."""


def _samples(ckpt: Path, out: Path, *extra: str) -> np.ndarray:
    main(["sample", "--ckpt_path", str(ckpt), "--num_samples", "16", "--output", str(out),
          *extra])  # fmt: skip
    return np.load(out.with_suffix(".npz"))["samples"]


def test_grid_file_samples_as_the_same_grid_in_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose YAML sampler has ``grid: CustomGrid(times)`` (through the real parser)
    samples exactly as with ``--grid file:grid.json`` of the same times, and differently from
    its sampler on ``--grid uniform``."""
    yaml_grid = json.dumps({"class_path": "diffusion_pl.samplers.CustomGrid",
                            "init_args": {"times": TIMES}})  # fmt: skip
    main(["fit", *toy_overrides(tmp_path / "yaml", 3, "--model.init_args.sampler.init_args.grid",
                                yaml_grid)])  # fmt: skip
    (yaml_ckpt,) = (tmp_path / "yaml").rglob("last.ckpt")
    grid_file = tmp_path / "grid.json"
    grid_file.write_text(json.dumps({"times": TIMES, "steps": 2}))
    from_yaml = _samples(yaml_ckpt, tmp_path / "a")
    from_file = _samples(yaml_ckpt, tmp_path / "b", "--grid", f"file:{grid_file}")
    uniform = _samples(yaml_ckpt, tmp_path / "c", "--grid", "uniform")
    assert "CustomGrid(times=[1, 0.35, 0])" in capsys.readouterr().out
    np.testing.assert_array_equal(from_file, from_yaml)
    # the 3-step net's flow is nearly straight: grids differ by ~4e-5, float32 noise is ~1e-7
    assert np.abs(from_file - uniform).max() > 1e-5


def test_grid_file_refuses_other_steps(
    toy_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid_file = tmp_path / "grid.json"
    grid_file.write_text(json.dumps({"times": TIMES}))
    with cli_error(capsys, rf"--grid file:{grid_file} has 2 steps, not --steps 3: drop --steps"):
        _samples(toy_ckpt, tmp_path / "s", "--grid", f"file:{grid_file}", "--steps", "3")


def test_bad_grid_file_is_refused_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none.json"
    with cli_error(capsys, rf"grid file {missing} does not exist; write one with tune-grid"):
        _samples(tmp_path / "never-read.ckpt", tmp_path / "s", "--grid", f"file:{missing}")


def test_stochastic_sampler_is_refused_naming_the_deterministic_ones(
    toy_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    match = r"tune-grid tunes deterministic ODE samplers; pc .* use one of ddim, dpmpp_2m"
    with cli_error(capsys, match):
        main(["tune-grid", "--ckpt_path", str(toy_ckpt), "--steps", "3", "--sampler", "pc",
              "--output", str(tmp_path / "g.json")])  # fmt: skip


@pytest.mark.slow
def test_tune_grid_end_to_end(
    toy_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tune-grid on the toy run writes the JSON (times from t_max = 1 to t_min = 0, the least
    total cost, no more than the uniform grid's), and ``sample --grid file:`` takes its steps
    from it: 3 network evaluations per sample."""
    out = tmp_path / "grid.json"
    main(["tune-grid", "--ckpt_path", str(toy_ckpt), "--sampler", "euler", "--steps", "3",
          "--num_samples", "16", "--reference_steps", "40", "--candidates", "20",
          "--output", str(out)])  # fmt: skip
    record = json.loads(out.read_text())
    assert set(record) >= {"times", "sampler", "steps", "method", "cost", "uniform_cost",
                           "checkpoint", "num_samples", "seed"}  # fmt: skip
    assert record["sampler"] == "euler" and record["steps"] == 3 and record["method"] == "gits"
    times = record["times"]
    assert len(times) == 4 and times[0] == 1.0 and times[-1] == 0.0
    assert all(a > b for a, b in itertools.pairwise(times))
    assert record["cost"] <= record["uniform_cost"] + 1e-12
    capsys.readouterr()
    _samples(toy_ckpt, tmp_path / "s", "--sampler", "euler", "--grid", f"file:{out}")
    assert "3 network evaluations per sample" in capsys.readouterr().out


def test_tune_grid_teleport_end_to_end(
    toy_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``tune-grid --teleport true`` on the toy run: the JSON says whether the grid starts by
    the Gaussian teleport; ``sample --grid file:`` of a grid that does measures the data's
    moments from the run's data and makes only the grid's 3 network evaluations."""
    out = tmp_path / "grid.json"
    main(["tune-grid", "--ckpt_path", str(toy_ckpt), "--sampler", "euler", "--steps", "3",
          "--num_samples", "16", "--reference_steps", "40", "--candidates", "20",
          "--teleport", "true", "--output", str(out)])  # fmt: skip
    record = json.loads(out.read_text())
    times = record["times"]
    assert record["teleport"] == (times[0] < 1.0) and len(times) == 4 and times[-1] == 0.0
    out.write_text(json.dumps({"times": [0.6, 0.3, 0.1, 0.0], "teleport": True}))
    capsys.readouterr()
    teleported = _samples(toy_ckpt, tmp_path / "s", "--sampler", "euler", "--grid", f"file:{out}")
    printed = capsys.readouterr().out
    assert "3 network evaluations per sample" in printed and "teleport=True" in printed
    out.write_text(json.dumps({"times": [1.0, 0.6, 0.3, 0.1, 0.0]}))
    plain = _samples(toy_ckpt, tmp_path / "p", "--sampler", "euler", "--grid", f"file:{out}")
    assert np.abs(teleported - plain).max() > 1e-3  # the teleport is no Euler step


def test_a_run_whose_sampler_teleports_draws_grids_and_samples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose YAML sampler teleports (``CustomGrid(..., teleport: true)``): its
    sample-grid callback measures the data's moments from the trainer's data and draws, and
    ``sample`` with the checkpoint's own sampler does so from the run's data config."""
    grid = json.dumps({"class_path": "diffusion_pl.samplers.CustomGrid",
                       "init_args": {"times": [0.6, 0.3, 0.0], "teleport": True}})  # fmt: skip
    main(["fit", *toy_overrides(tmp_path, 3, "--model.init_args.sampler.init_args.grid", grid)])
    assert list(tmp_path.rglob("samples/*.png"))
    (ckpt,) = tmp_path.rglob("last.ckpt")
    capsys.readouterr()
    samples = _samples(ckpt, tmp_path / "s")
    printed = capsys.readouterr().out
    assert "teleport=True" in printed and "2 network evaluations per sample" in printed
    assert np.isfinite(samples).all()
