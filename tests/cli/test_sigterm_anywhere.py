"""One SIGTERM rule for the whole process (issue 28, item 2): a signal outside Lightning's
training loop — while the run draws its final sample grid, while it builds its data, while the
command is still importing, or in another command — ends with exit code 75 and the state, and
loses nothing finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from run_helpers import toy_overrides

from diffusion_pl.callbacks import SampleGrid
from diffusion_pl.cli import main
from diffusion_pl.data import DiffusionDataModule
from diffusion_pl.signals import EXIT_PREEMPTED, Preempted, sigterm_rule

pytestmark = [pytest.mark.usefixtures("one_thread")]


def _sigterm(*args: object, **kwargs: object) -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(1)  # the handler runs here, in the main thread


def test_outside_a_trainer_sigterm_raises_and_the_old_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted), sigterm_rule():
        _sigterm()
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_sigterm_during_the_final_grid_exits_75_with_the_final_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    draw = SampleGrid.draw

    def final_draw(self, trainer, module, name: str) -> None:
        (_sigterm if name == "final" else draw)(self, trainer, module, name)

    monkeypatch.setattr(SampleGrid, "draw", final_draw)
    with pytest.raises(SystemExit) as stopped:
        main(["fit", *toy_overrides(tmp_path, 3)])
    assert stopped.value.code == EXIT_PREEMPTED
    out = capsys.readouterr().out
    assert "state:       stopped by SIGTERM after training finished at step 3 (exit code 75)" in out
    (last,) = tmp_path.rglob("last.ckpt")
    assert f"checkpoint:  {last}" in out
    assert torch.load(last, weights_only=True)["global_step"] == 3  # the final state is kept


@pytest.mark.slow
def test_sigterm_while_the_data_are_built_exits_75_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DiffusionDataModule, "setup", _sigterm)
    with pytest.raises(SystemExit) as stopped:
        main(["fit", *toy_overrides(tmp_path, 3)])
    assert stopped.value.code == EXIT_PREEMPTED
    assert "stopped by SIGTERM before training, at step 0 (exit code 75)" in capsys.readouterr().out


def test_sigterm_in_another_command_exits_75(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("diffusion_pl.cli.commands.sample.load_for_sampling", _sigterm)
    with pytest.raises(SystemExit) as stopped:
        main(f"sample --ckpt_path x.ckpt --num_samples 2 --output {tmp_path / 's.npz'}".split())
    assert stopped.value.code == EXIT_PREEMPTED
    expected = "stopped by SIGTERM during `diffusion-pl sample`: nothing was written"
    assert capsys.readouterr().err.startswith(expected)


@pytest.mark.slow
def test_sigterm_while_the_command_imports_exits_75() -> None:
    command = [sys.executable, "-m", "diffusion_pl", "fit", "--help"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # importing lightning takes seconds
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == EXIT_PREEMPTED, err
    assert err.strip().endswith("stopped by SIGTERM while starting: nothing was done (exit code "
                                "75); run the same command again")  # fmt: skip
