"""Starting and resuming runs through the CLI: which checkpoint ``last`` means, what a resume may
change, stale temporary files, and fits that would train nothing."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from cli_runs import cli_error
from run_helpers import ROOT, toy_overrides

from diffusion_pl.checkpoints import read_checkpoint, remove_stale_temporaries
from diffusion_pl.cli import main
from diffusion_pl.config_diff import differences


def _reaped() -> int:
    """The id of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.slow
def test_last_resumes_only_the_named_run_and_only_with_what_a_resume_may_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    # A stranger's checkpoint in the working directory (the shipped configs' runs/… layout).
    stranger = tmp_path / "runs/stranger/lightning_logs/version_0/checkpoints/last.ckpt"
    stranger.parent.mkdir(parents=True)
    stranger.write_text("another run's checkpoint")
    # default_root_dir unset: `last` looks in this run's own folders, never through the cwd.
    run = tmp_path / "mine"
    fit = ["fit", *toy_overrides(run, 2), "--trainer.default_root_dir", "null"]
    main([*fit, "--ckpt_path", "last"])
    out = capsys.readouterr().out
    assert "--ckpt_path last: no last*.ckpt or hpc_ckpt_*.ckpt in" in out
    assert "starting a new run from step 0" in out
    (first,) = run.rglob("last.ckpt")
    assert read_checkpoint(first)["global_step"] == 2

    # Another formulation's settings or other data: refused, naming the keys, before training.
    other = ["--model.init_args.time_sampling", "diffusion_pl.time_sampling.LogitNormal",
             "--data.source.init_args.name", "moons"]  # fmt: skip
    with cli_error(
        capsys, f"^error: --ckpt_path last found {re.escape(str(first))} \\(step 2\\)"
    ) as err:
        main([*fit, *other, "--ckpt_path", "last"])
    message = "\n".join(err)
    assert "but this config's" in message
    assert (
        "model.init_args.time_sampling.class_path: diffusion_pl.time_sampling.Uniform -> "
        "diffusion_pl.time_sampling.LogitNormal  (it defines what the model learns)"
    ) in message
    assert "data.source.init_args.name: 8gaussians -> moons" in message
    assert f"that run's config: {first.parent.parent / 'config.yaml'}" in message
    assert len(list(run.rglob("last.ckpt"))) == 1  # nothing trained

    # A write killed mid-way left a temporary file; the next run deletes it (its writer is gone).
    stale = first.parent / f".last.ckpt.tmp-{socket.gethostname()}-{_reaped()}"
    stale.write_bytes(b"half a checkpoint")
    # Honoured: trainer settings and the sampler; printed, run, and recorded in config.yaml.
    honoured = ["--trainer.max_steps", "3", "--model.init_args.lr_scheduler.init_args.T_max", "2",
                "--model.init_args.sampler.init_args.steps", "7"]  # fmt: skip
    main([*fit, *honoured, "--ckpt_path", "last"])
    out = capsys.readouterr().out
    assert f"removed {stale}: a checkpoint write interrupted when its process died" in out
    assert not stale.exists()
    assert f"resuming from {first} (step 2), with these changes from that run" in out
    assert "  model.init_args.sampler.init_args.steps: 2 -> 7\n" in out
    assert "  trainer.max_steps: 2 -> 3\n" in out
    (resumed,) = run.glob("lightning_logs/version_1/checkpoints/last.ckpt")
    checkpoint = read_checkpoint(resumed)
    assert checkpoint["global_step"] == 3
    assert checkpoint["hyper_parameters"]["sampler"]["init_args"]["steps"] == 7
    config = yaml.safe_load((resumed.parent.parent / "config.yaml").read_text())
    assert config["model"]["init_args"]["sampler"]["init_args"]["steps"] == 7
    assert config["trainer"]["max_steps"] == 3


def test_differences_name_each_leaf_and_a_changed_class_once() -> None:
    saved = {"net": {"class_path": "MLP", "init_args": {"hidden": 32, "dims": (2, 3)}},
             "path": {"class_path": "VP", "init_args": {"beta": 1}}, "old_arg": 1}  # fmt: skip
    given = {"net": {"class_path": "MLP", "init_args": {"hidden": 64, "dims": [2, 3]}},
             "path": {"class_path": "VE", "init_args": {"sigma": 2}}}  # fmt: skip
    found = [str(d) for d in differences(saved, given, "model.init_args")]
    assert found == ["model.init_args.net.init_args.hidden: 32 -> 64",
                     "model.init_args.path.class_path: VP -> VE"]  # fmt: skip


def test_only_dead_local_writers_temporaries_are_removed(tmp_path: Path) -> None:
    host, dead, alive = socket.gethostname(), _reaped(), os.getpid()
    names = {
        "dead": f".last.ckpt.tmp-{host}-{dead}",
        "dead_without_host": f".epoch=0-step=4.ckpt.tmp-{dead}",  # before hosts were recorded
        "alive": f".last.ckpt.tmp-{host}-{alive}",
        "other_host": f".last.ckpt.tmp-elsewhere-{dead}",
        "not_ours": ".notes.tmp-x",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    removed, other_hosts = remove_stale_temporaries(tmp_path, tmp_path / "missing")
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["dead_without_host"]])
    assert [p.name for p in other_hosts] == [names["other_host"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [names["alive"], names["other_host"], names["not_ours"]]
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "match"),
    [
        (["--trainer.max_steps", "0"], r"trainer\.max_steps is 0: this fit would train nothing"),
        (["--model.init_args.optimizer.init_args.lr", "-0.001"],
         r"model\.init_args\.optimizer\.init_args\.lr must be > 0, got -0\.001"),
        (["--model.init_args.optimizer.init_args.betas", "[0.9, 1.5]"],
         r"model\.init_args\.optimizer or lr_scheduler: Invalid beta parameter at index 1: 1\.5"),
    ],
    ids=["max-steps-0", "negative-lr", "bad-betas"],
)  # fmt: skip
def test_fits_that_would_train_nothing_or_fail_in_torch_are_refused_first(
    tmp_path: Path, override: list[str], match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with cli_error(capsys, match):
        main(["fit", *toy_overrides(tmp_path, 2), *override])
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("code", [75, 0, 1])
def test_the_slurm_script_requeues_exactly_a_preempted_fit(tmp_path: Path, code: int) -> None:
    """configs/slurm/train.sbatch with stand-ins for srun (exits ``code``) and scontrol."""
    calls = tmp_path / "calls"
    for name, body in (("srun", f'echo "srun $*" >> {calls}; exit {code}'),
                       ("scontrol", f'echo "scontrol $*" >> {calls}')):  # fmt: skip
        (tmp_path / name).write_text(f"#!/bin/bash\n{body}\n")
        (tmp_path / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_ID": "42",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "4"}  # fmt: skip
    script = ROOT / "configs/slurm/train.sbatch"
    done = subprocess.run(["bash", str(script), "cfg.yaml", "--x", "1"], env=env, text=True,
                          capture_output=True, check=False)  # fmt: skip
    assert done.returncode == code, done.stderr
    lines = calls.read_text().splitlines()
    assert lines[0].startswith("srun python -m diffusion_pl fit --config cfg.yaml ")
    assert lines[0].endswith("--ckpt_path last --x 1")
    assert lines[1:] == (["scontrol requeue 42"] if code == 75 else [])
