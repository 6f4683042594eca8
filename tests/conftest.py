"""Shared fixtures: every noise path, built once per test."""

from __future__ import annotations

import pytest
import torch
from mixture_checks import ALL_PATHS

from diffusion_pl.paths import NoisePath


@pytest.fixture(params=sorted(ALL_PATHS))
def path(request: pytest.FixtureRequest) -> NoisePath:
    """Each noise path of docs/math.md with its paper defaults."""
    return ALL_PATHS[request.param]()


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one CPU thread: its tensors are too small to split across threads, and on
    a shared 2-core machine spare threads only spin (5-10x slower). Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
