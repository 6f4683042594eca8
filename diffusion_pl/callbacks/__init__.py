"""Cross-cutting training work: weight averaging (EMA, post-hoc EMA), sample pictures, FID,
fault tolerance, throughput, a LoRA run's adapters file."""

from diffusion_pl.callbacks.compile import CompileNet
from diffusion_pl.callbacks.divergence import StopOnLossSpike, StopOnNonFinite, TrainingDiverged
from diffusion_pl.callbacks.ema import EMA, Weights, find_ema, weights_in_use
from diffusion_pl.callbacks.fault_tolerance import FinalCheckpoint, SigtermCheckpoint, StepSeed
from diffusion_pl.callbacks.fid import FID
from diffusion_pl.callbacks.guide import EarlierSelf
from diffusion_pl.callbacks.lora import SaveAdapters
from diffusion_pl.callbacks.phema import PostHocEMA
from diffusion_pl.callbacks.run_paths import last_checkpoint_path, run_dir
from diffusion_pl.callbacks.sample_grid import SampleGrid
from diffusion_pl.callbacks.throughput import Throughput

__all__ = [
    "EMA",
    "FID",
    "CompileNet",
    "EarlierSelf",
    "FinalCheckpoint",
    "PostHocEMA",
    "SampleGrid",
    "SaveAdapters",
    "SigtermCheckpoint",
    "StepSeed",
    "StopOnLossSpike",
    "StopOnNonFinite",
    "Throughput",
    "TrainingDiverged",
    "Weights",
    "find_ema",
    "last_checkpoint_path",
    "run_dir",
    "weights_in_use",
]
