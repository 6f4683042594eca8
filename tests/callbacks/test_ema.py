"""EMA callback: the update rule by hand, fp32 averages, exact swaps and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from diffusion_pl.callbacks import EMA

BATCH = 8


class TinyRegression(LightningModule):
    """A linear least-squares model: deterministic, fast, and its weights move every step."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(3, 1)
        self.seen_in_validation: list[Tensor] = []

    def training_step(self, batch: tuple[Tensor, Tensor], idx: int) -> Tensor:
        x, y = batch
        return ((self.layer(x).squeeze(-1).float() - y) ** 2).mean()

    def validation_step(self, batch: tuple[Tensor, Tensor], idx: int) -> None:
        self.seen_in_validation.append(self.flat().clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def flat(self) -> Tensor:
        return torch.cat([p.detach().float().flatten() for p in self.parameters()])


def loader(batches: int = 3) -> DataLoader:
    """The same 8 examples in every batch, so a resumed run sees the same data in any order."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, generator=g).repeat(batches, 1)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


class RecordRaw(Callback):
    """The raw weights after every optimizer step (EMA never changes them during training)."""

    def __init__(self) -> None:
        self.raw: list[Tensor] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        self.raw.append(pl_module.flat().clone())


def fit(ema: EMA, steps: int, **trainer_kwargs) -> tuple[TinyRegression, RecordRaw, Trainer]:
    model, record = TinyRegression(), RecordRaw()
    trainer = Trainer(
        max_steps=steps, callbacks=[ema, record], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
        num_sanity_val_steps=0, limit_val_batches=0, **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(model, loader())
    return model, record, trainer


def hand_ema(raw: list[Tensor], betas: list[float]) -> Tensor:
    """ema_1 = θ_1; ema_k = β_k ema_{k−1} + (1 − β_k) θ_k."""
    ema = raw[0].double()
    for theta, beta in zip(raw[1:], betas[1:], strict=True):
        ema = beta * ema + (1 - beta) * theta.double()
    return ema


def test_halflife_with_rampup_matches_hand_computation() -> None:
    ema = EMA(halflife_samples=40, rampup_ratio=1.0)
    model, record, _ = fit(ema, 6)
    # β_k = 0.5^(B / min(h, r · n_k)), n_k = samples before step k = (k − 1) · B.
    betas = [0.5 ** (BATCH / max(min(40, 1.0 * k * BATCH), 1e-8)) for k in range(6)]
    assert betas[0] == 0.0  # the first update copies
    expected = hand_ema(record.raw, betas)
    torch.testing.assert_close(model.flat().double(), expected, rtol=0, atol=1e-6)
    assert ema.samples_seen == 6 * BATCH
    with ema.using(model, "raw"):  # training ends with the average in the module, raw at hand
        torch.testing.assert_close(model.flat(), record.raw[-1], rtol=0, atol=0)
    torch.testing.assert_close(model.flat().double(), expected, rtol=0, atol=1e-6)


def test_fixed_decay_with_warmup_matches_hand_computation() -> None:
    ema = EMA(halflife_samples=None, decay=0.5)
    model, record, _ = fit(ema, 5)
    betas = [0.0] + [min(0.5, (1 + n) / (10 + n)) for n in range(1, 5)]
    torch.testing.assert_close(
        model.flat().double(), hand_ema(record.raw, betas), atol=1e-6, rtol=0
    )


@pytest.mark.slow
def test_validation_sees_the_average_and_the_raw_weights_come_back_bit_exact() -> None:
    ema = EMA(halflife_samples=16, rampup_ratio=None)
    model, record = TinyRegression(), RecordRaw()
    trainer = Trainer(
        max_steps=4, val_check_interval=4, check_val_every_n_epoch=None, callbacks=[ema, record],
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=2,
        limit_val_batches=1, precision="bf16-true",
    )  # fmt: skip
    raw_after_validation: list[Tensor] = []

    class AfterValidation(Callback):
        def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
            raw_after_validation.append(pl_module.flat().clone())

    trainer.callbacks.append(AfterValidation())
    trainer.fit(model, loader(), loader(1))
    # Sanity check before any update: the (untrained) raw weights, not a stale copy (#21724).
    initial = TinyRegression().flat().to(torch.bfloat16).float()
    torch.testing.assert_close(model.seen_in_validation[0], initial, rtol=0, atol=0)
    # Validation after step 4 (the run's end) sees the fp32 average, rounded into the bf16 module.
    average = ema.average
    assert all(p.dtype == torch.float32 for p in average.parameters())
    averaged = torch.cat([p.detach().flatten() for p in average.parameters()])
    torch.testing.assert_close(model.seen_in_validation[-1], averaged.bfloat16().float())
    # ... and the bf16 raw weights are restored bit for bit afterwards.
    torch.testing.assert_close(raw_after_validation[-1], record.raw[-1], rtol=0, atol=0)


def test_bad_settings_fail_early_with_the_fix() -> None:
    with pytest.raises(ValueError, match="exactly one of halflife_samples"):
        EMA(halflife_samples=100, decay=0.99)
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\), got 1.5"):
        EMA(halflife_samples=None, decay=1.5)
    with pytest.raises(ValueError, match="halflife_samples must be > 0, got -1"):
        EMA(halflife_samples=-1)


@pytest.mark.slow
def test_resume_restores_the_average_exactly(tmp_path: Path) -> None:
    whole, _, _ = fit(EMA(halflife_samples=24), 6)
    ckpt = tmp_path / "half.ckpt"
    _, _, trainer = fit(EMA(halflife_samples=24), 3)
    trainer.save_checkpoint(ckpt)
    ema = EMA(halflife_samples=24)
    resumed, record = TinyRegression(), RecordRaw()
    Trainer(
        max_steps=6, callbacks=[ema, record], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
        num_sanity_val_steps=0, limit_val_batches=0,
    ).fit(resumed, loader(), ckpt_path=ckpt)  # fmt: skip
    assert ema.samples_seen == 6 * BATCH
    torch.testing.assert_close(resumed.flat(), whole.flat(), rtol=0, atol=1e-7)
