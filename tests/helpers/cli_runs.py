"""Running the real CLI in-process: fitting a shipped config, and expecting bad input."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from diffusion_pl.cli import main

__all__ = ["ROOT", "cli_error", "fit_config", "write_config"]

ROOT = Path(__file__).resolve().parents[2]


def write_config(source: str, out: Path, trainer: dict, callbacks: list[dict], **model) -> Path:
    """A shipped config with trainer keys, the callback list and model init args replaced."""
    config = yaml.safe_load((ROOT / source).read_text())
    config["trainer"].update(trainer, callbacks=callbacks)
    config["model"]["init_args"].update(model)
    out.write_text(yaml.safe_dump(config))
    return out


def fit_config(config: Path, root: Path, *overrides: str) -> Path:
    """``diffusion-pl fit --config config`` on CPU under ``root``; return its last.ckpt."""
    main(["fit", "--config", str(config), "--trainer.default_root_dir", str(root),
          "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
          *overrides])  # fmt: skip
    (ckpt,) = root.rglob("last.ckpt")
    return ckpt


@contextmanager
def cli_error(capsys: pytest.CaptureFixture[str], match: str) -> Iterator[list[str]]:
    """The CLI call in the block must fail as bad input does: exit code 2, no traceback, and
    exactly one ``error: …`` line on stderr, which ``match`` (a regex) must find.

    Yields a list that holds stderr's lines once the block has exited.
    """
    lines: list[str] = []
    with pytest.raises(SystemExit) as exit_info:
        yield lines
    err = capsys.readouterr().err
    lines += err.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert exit_info.value.code == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert re.search(match, errors[0]), errors[0]
