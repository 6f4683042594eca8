"""What the CLI tests share: one tiny run to read, sample and score."""

from __future__ import annotations

from pathlib import Path

import pytest
from run_helpers import toy_overrides

from diffusion_pl.cli import main


@pytest.fixture(scope="package")
def toy_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny rectified flow (MLP of width 32) fitted for 3 steps through the real CLI, once
    for every CLI test file that reads one (test_cli.py fits its own, longer run)."""
    root = tmp_path_factory.mktemp("toy")
    main(["fit", *toy_overrides(root, 3)])
    (ckpt,) = root.rglob("last.ckpt")
    return ckpt
