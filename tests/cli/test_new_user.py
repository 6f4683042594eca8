"""What a new user trips on, end to end (issue 28, items 1, 3, 4, 5 and 8): every mistake is at
most 3 lines on stderr, exit code 2, no traceback, and no finished work is thrown away; ``test``
reports the model's loss."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from cli_runs import ROOT, cli_error
from run_helpers import toy_overrides

from diffusion_pl.checkpoint_io import VERSION_KEY, package_version
from diffusion_pl.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@contextmanager
def short_error(capsys: pytest.CaptureFixture[str], match: str) -> Iterator[None]:
    """The CLI call in the block fails as bad input does (:func:`cli_error`), and what it
    writes to stderr after the work it did is at most 3 lines."""
    capsys.readouterr()  # what came before the call
    with cli_error(capsys, match) as stderr:
        yield
    assert len(stderr) <= 3, stderr


def test_a_bad_output_path_is_refused_before_sampling(
    toy_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "rf.npz").write_text("an earlier result")
    output = tmp_path / "out" / "rf.npz" / "sub" / "s"
    with short_error(capsys, rf"--output {output}\.npz: .*rf\.npz is a file, not a folder"):
        main(f"sample --ckpt_path {toy_ckpt} --num_samples 2000 --output {output}".split())
    assert "network evaluations" not in capsys.readouterr().out  # nothing was sampled
    with short_error(capsys, r"--output /proc/no/pairs\.pt: cannot write in /proc/no"):
        main(f"reflow --ckpt_path {toy_ckpt} --num_pairs 2000 --output /proc/no/pairs.pt".split())


def test_the_test_command_reports_the_loss(
    toy_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    main(["test", *toy_overrides(tmp_path, 3), "--ckpt_path", str(toy_ckpt)])
    assert "test/loss" in capsys.readouterr().out


def test_small_mistakes_are_one_line_naming_the_option(
    toy_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with short_error(capsys, r"^error: --num_samples must be in \[1, 64\] for the val split"):
        main(f"likelihood --ckpt_path {toy_ckpt} --num_samples 99999".split())
    with short_error(capsys, rf"^error: --run {tmp_path / 'nope'}: no such folder"):
        main(f"phema --run {tmp_path / 'nope'} --sigma_rel 0.05 --output {tmp_path}".split())


def test_a_missing_teacher_names_its_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "teacher.ckpt"
    expected = rf"^error: teacher \(model\.init_args\.teacher\): checkpoint '{missing}' does not"
    with cli_error(capsys, expected):
        main(["fit", "--config", str(ROOT / "configs/toy2d/consistency_distill.yaml"),
              "--trainer.default_root_dir", str(tmp_path), "--trainer.accelerator", "cpu",
              "--trainer.max_steps", "1", "--model.init_args.teacher.init_args.path",
              str(missing)])  # fmt: skip


def test_a_missing_optional_dependency_is_the_install_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)
    config = ROOT / "configs/digits/rectified_flow.yaml"
    with short_error(capsys, r"needs diffusers, which is not installed: pip install 'diffusion"):
        main(f"encode --config {config} --autoencoder x --output {tmp_path / 'z'}".split())


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda h: h["net"]["init_args"].update(width=3),
         r"hyper_parameters\.net\.init_args\.width: diffusion_pl\.nets\.MLP has no option 'width'"),
        (lambda h: h["sampler"].update(class_path="diffusion_pl.samplers.EulerSolver"),
         r"hyper_parameters\.sampler: there is no class diffusion_pl\.samplers\.EulerSolver; did "
         r"you mean 'diffusion_pl\.samplers\.EulerSampler'"),
    ],
    ids=["new-net-argument", "renamed-sampler"],
)  # fmt: skip
def test_a_checkpoint_of_another_version_is_one_line(
    edit, match: str, toy_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = torch.load(toy_ckpt, weights_only=True)
    assert checkpoint[VERSION_KEY] == package_version()  # the CLI's checkpoints record it
    checkpoint[VERSION_KEY] = "0.0.9"
    edit(checkpoint["hyper_parameters"])
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    expected = (
        rf"^error: checkpoint '{old}' \(written by diffusion-pl 0\.0\.9\) does not load in "
        rf"diffusion-pl {package_version()}: {match}.*; load it with the version that wrote it"
    )
    with short_error(capsys, expected):
        main(f"sample --ckpt_path {old} --num_samples 2 --output {tmp_path / 's.npz'}".split())


def test_resuming_a_finished_run_does_nothing_and_creates_nothing(
    toy_ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = toy_ckpt.parents[3]
    before = sorted(root.rglob("*"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["fit", *toy_overrides(root, 3), "--ckpt_path", "last"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert f"the run is complete: {toy_ckpt} is at step 3 and trainer.max_steps is 3" in out
    assert sorted(root.rglob("*")) == before  # no new version folder, grid or config


def test_a_schedule_longer_than_the_run_is_said_and_a_scatter_shows_every_point(
    toy_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    T_max = "--model.init_args.lr_scheduler.init_args.T_max"
    main(["fit", *toy_overrides(tmp_path, 1), T_max, "3000"])
    expected = (
        "warning: the CosineAnnealingLR schedule is 3000 steps long (T_max) but "
        f"trainer.max_steps is 1; to anneal over this run set {T_max} 1"
    )
    assert expected in capsys.readouterr().out
    main(f"sample --ckpt_path {toy_ckpt} --num_samples 300 --output {tmp_path / 's'}".split())
    assert "the first" not in capsys.readouterr().out  # a scatter plot shows every point
