"""Objectives without a Trainer: each loss on fixed seeds against its formula written out, the
curriculum read from the step handed in, the registry of formulations, and sampling's modes."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from diffusion_pl.formulations import (
    FORMULATIONS,
    ConsistencyModel,
    DiffusionModule,
    MeanFlow,
    RectifiedFlow,
)
from diffusion_pl.formulations import __all__ as exported
from diffusion_pl.nets import MLP
from diffusion_pl.objectives import DenoisingRegression, MeanFlowLoss, Objective
from diffusion_pl.objectives.consistency import (
    L2,
    InverseGap,
    LognormalIntervals,
    UniformIntervals,
    Unweighted,
    karras_levels,
)
from diffusion_pl.paths import LinearPath
from diffusion_pl.time_sampling import Uniform
from diffusion_pl.weighting import Constant

X0 = torch.tensor([[1.0, -2.0], [0.5, 0.0], [-3.0, 4.0], [2.0, 2.0]])


def small_net(**kwargs: int) -> MLP:
    torch.manual_seed(0)
    return MLP(dim=2, hidden=16, depth=2, **kwargs)


def test_the_regression_is_its_formula_without_a_trainer() -> None:
    """Rectified flow's objective called directly: w = 2, t ~ U(0, 1) then ε from one
    generator; loss = 2 · mean((F(x_t, t) − (ε − x_0))²)."""
    model = RectifiedFlow(small_net(), (2,))
    objective = DenoisingRegression(Constant(2.0), Uniform(low_discrepancy=False))
    assert isinstance(objective, Objective)
    loss = objective(model, X0, None, torch.Generator().manual_seed(3), step=0)
    g = torch.Generator().manual_seed(3)
    t = torch.rand(4, generator=g)
    eps = torch.randn(4, 2, generator=g)
    x_t = (1 - t[:, None]) * X0 + t[:, None] * eps
    want = 2.0 * (model.net(x_t, t, None) - (eps - X0)).pow(2).mean(1)
    torch.testing.assert_close(loss, want)


def test_consistency_training_is_its_formula() -> None:
    """CT with uniform intervals of N = 3 levels, L2 and λ = 1: the interval index from one
    uniform draw, z from the next; loss = ‖f(x_0 + σ_hi z, σ_hi) − f(x_0 + σ_lo z, σ_lo)‖²."""
    model = ConsistencyModel(small_net(), (2,), levels=UniformIntervals(num_scales=3),
                             distance=L2(), loss_weighting=Unweighted())  # fmt: skip
    loss = model.objective(model, X0, None, torch.Generator().manual_seed(5), step=7)
    g = torch.Generator().manual_seed(5)
    sigmas = karras_levels(0.002, 80.0, 3)
    i = (torch.rand(4, generator=g, dtype=torch.float64) * 2).floor().long()
    z = torch.randn(4, 2, generator=g)
    lo, hi = sigmas[i], sigmas[i + 1]
    f = model.objective.consistency_fn(model, model.net, None)
    with torch.no_grad():
        aim = f(X0 + lo[:, None].float() * z, lo)
    want = (f(X0 + hi[:, None].float() * z, hi) - aim).pow(2).sum(1)
    torch.testing.assert_close(loss, want)
    ict = ConsistencyModel(small_net(), (2,), levels=UniformIntervals(num_scales=3),
                           distance=L2(), loss_weighting=InverseGap())  # fmt: skip
    weighted = ict.objective(ict, X0, None, torch.Generator().manual_seed(5), step=7)
    torch.testing.assert_close(weighted, want / (hi - lo).float())


def test_the_curriculum_reads_the_step_and_the_length_handed_in() -> None:
    """iCT's N(k) follows the step argument; K comes from the level sampling's total_steps or,
    without one, from the module's setup (the trainer's max_steps); neither: a clear error."""
    fixed = ConsistencyModel(small_net(), (2,), levels=LognormalIntervals(total_steps=80))
    assert fixed.objective.metrics(0) == {"train/num_scales": 11.0}
    assert fixed.objective.metrics(10) == {"train/num_scales": 21.0}
    assert fixed.objective.metrics(79) == {"train/num_scales": 1281.0}
    model = ConsistencyModel(small_net(), (2,))
    with pytest.raises(ValueError, match="need the training length K"):
        model.objective(model, X0, None, torch.Generator().manual_seed(0), step=0)
    model.objective.set_training_length(80)
    assert model.objective.metrics(10) == {"train/num_scales": 21.0}
    loss = model.objective(model, X0, None, torch.Generator().manual_seed(0), step=79)
    assert loss.shape == (4,) and torch.isfinite(loss).all()


def test_meanflow_loss_at_r_equal_t_is_flow_matching() -> None:
    """interval_ratio = 0 and p = 0: ‖u(z_t, t, t) − (ε − x)‖² summed, draws t, t', u, ε."""
    model = MeanFlow(small_net(num_noise_labels=2), (2,))
    objective = MeanFlowLoss(Uniform(low_discrepancy=False), interval_ratio=0.0, adaptive_p=0.0)
    loss = objective(model, X0, None, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    t = torch.maximum(torch.rand(4, generator=g), torch.rand(4, generator=g))
    torch.rand(4, generator=g)  # which rows keep r < t: none here
    eps = torch.randn(4, 2, generator=g)
    z = (1 - t[:, None]) * X0 + t[:, None] * eps
    labels = torch.stack([t, torch.zeros_like(t)], 1)
    want = (model.net(z, labels, None) - (eps - X0)).pow(2).sum(1)
    torch.testing.assert_close(loss, want)


def test_the_registry_names_every_formulation_once() -> None:
    """FORMULATIONS holds each exported preset of DiffusionModule, and nothing else."""
    presets = {
        name
        for name in exported
        if isinstance(cls := getattr(__import__("diffusion_pl.formulations").formulations, name),
                      type) and issubclass(cls, DiffusionModule) and cls is not DiffusionModule
    }  # fmt: skip
    assert {cls.__name__ for cls in FORMULATIONS.values()} == presets
    assert len(set(FORMULATIONS.values())) == len(FORMULATIONS)


class _Failing:
    """A sampler that fails mid-way."""

    def check(self, path: LinearPath) -> None:
        return None

    def __call__(self, *args: object, **kwargs: object) -> Tensor:
        raise RuntimeError("sampler failed")


def test_sample_restores_training_mode_when_the_sampler_fails() -> None:
    model = RectifiedFlow(small_net(), (2,)).train()
    with pytest.raises(RuntimeError, match="sampler failed"):
        model.sample(2, sampler=_Failing())
    assert model.training and model.net.training
