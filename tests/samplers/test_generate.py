"""generate(): sample k depends on (seed, k) only; labels cycle by index; choosing a sampler."""

from __future__ import annotations

import pytest
import torch

from diffusion_pl.formulations import RectifiedFlow
from diffusion_pl.generate import choose_sampler, cycle_labels, every_class, generate
from diffusion_pl.nets import MLP
from diffusion_pl.paths import VPLinearPath
from diffusion_pl.samplers import (
    DDIMSampler,
    EDMGrid,
    EulerSampler,
    HeunSampler,
    LogSNRGrid,
    RK45Sampler,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def flow(num_classes: int | None = None) -> RectifiedFlow:
    """An untrained rectified flow on 2-D points with a deterministic 3-step Euler sampler."""
    torch.manual_seed(0)
    net = MLP(hidden=16, depth=2, embedding_dim=8, num_classes=num_classes)
    return RectifiedFlow(net, (2,), sampler=EulerSampler(steps=3)).eval()


def test_n_200_extends_n_100_and_batch_size_does_not_change_a_sample() -> None:
    """Needs the prior and every sampler to draw through ``randomness.randn`` (branch samplers)."""
    module = flow()
    whole = generate(module, 200, seed=7, batch_size=64)
    assert whole.shape == (200, 2) and whole.device.type == "cpu"
    first = generate(module, 100, seed=7, batch_size=100)
    rest = generate(module, 100, seed=7, batch_size=33, start=100)
    # The same noise per sample; only the batch a row shares a matmul with differs.
    torch.testing.assert_close(first, whole[:100], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rest, whole[100:], rtol=1e-6, atol=1e-6)
    other = generate(module, 100, seed=8, batch_size=64)
    assert (other - first).abs().min() > 0  # another seed: every sample differs


def test_class_labels_cycle_by_sample_index(monkeypatch: pytest.MonkeyPatch) -> None:
    module = flow(num_classes=3)
    seen = []
    sample = module.sample

    def spy(n, **kwargs):
        seen.append((len(kwargs["generator"]), kwargs["class_labels"].tolist()))
        return sample(n, **kwargs)

    monkeypatch.setattr(module, "sample", spy)
    generate(module, 5, seed=0, batch_size=2, start=4, class_labels=every_class(module))
    assert seen == [(2, [1, 2]), (2, [0, 1]), (1, [2])]  # samples 4…8 get k mod 3
    assert cycle_labels([3, 5], 3, 4).tolist() == [5, 3, 5, 3]
    assert every_class(flow()) is None
    with pytest.raises(ValueError, match="class_labels is empty"):
        cycle_labels([], 0, 2)


def test_bad_counts_fail_early() -> None:
    with pytest.raises(ValueError, match="number of samples must be > 0, got 0"):
        generate(flow(), 0, seed=0, batch_size=4)
    with pytest.raises(ValueError, match="batch_size must be > 0, got 0"):
        generate(flow(), 4, seed=0, batch_size=0)


def test_choose_sampler_keeps_the_default_settings_of_its_own_class() -> None:
    default = DDIMSampler(steps=50, eta=0.5)
    assert choose_sampler(default) is default
    assert vars(choose_sampler(default, steps=10)) == {**vars(default), "steps": 10}
    assert vars(choose_sampler(default, "ddim")) == vars(default)
    assert vars(choose_sampler(default, "heun", 4)) == vars(HeunSampler(steps=4))
    assert isinstance(choose_sampler(default, "rk45"), RK45Sampler)
    with pytest.raises(ValueError, match="chooses its own steps"):
        choose_sampler(default, "rk45", 3)
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        choose_sampler(default, "nope")
    with pytest.raises(ValueError, match="steps must be > 0, got 0"):
        choose_sampler(default, steps=0)


def test_choose_sampler_puts_the_sampler_on_a_named_grid() -> None:
    """``--grid NAME`` swaps the grid and keeps every other setting; the times are the grid's."""
    default = DDIMSampler(steps=8, eta=0.5)
    on_edm = choose_sampler(default, grid="edm")
    assert isinstance(on_edm.grid, EDMGrid) and (on_edm.steps, on_edm.eta) == (8, 0.5)
    path = VPLinearPath()
    torch.testing.assert_close(on_edm.time_grid(path, "cpu"), EDMGrid()(path, 8), rtol=0, atol=0)
    assert isinstance(choose_sampler(default, "dpmpp_2m", 5, "logsnr").grid, LogSNRGrid)
    with pytest.raises(ValueError, match="unknown grid 'karras'"):
        choose_sampler(default, grid="karras")
    with pytest.raises(ValueError, match="no grid setting"):
        choose_sampler(default, "rk45", grid="edm")
