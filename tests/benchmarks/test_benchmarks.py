"""Each benchmark script runs end to end on a tiny setting and writes what it promises.

Benchmarks are not tests: the numbers they print are measured by hand (benchmarks/RESULTS.md).
Here each script's ``main(argv)`` runs in-process (one Lightning import for all of them).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # every test runs a script end to end

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    """Import ``benchmarks/<name>.py`` as the scripts run: with ``benchmarks/`` on the path."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))

    def load_script(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(
            f"benchmark_{name}", BENCHMARKS / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module

    return load_script


TINY_UNET = ["--preset", "digits", "--base_channels", "8", "--batch", "4", "--steps", "1",
             "--warmup", "1", "--repeats", "1", "--sample_nfe", "2",
             "--matmul_size", "64"]  # fmt: skip


def test_unet_throughput_ours_only(load: Callable, tmp_path: Path) -> None:
    out = tmp_path / "unet.json"
    results = load("unet_throughput").main([*TINY_UNET, "--ours_only", "--out", str(out)])
    assert json.loads(out.read_text())["presets"][0]["nets"] == results["presets"][0]["nets"]
    assert results["matmul_peak_gflops"] > 0
    (preset,) = results["presets"]
    assert preset["layout"]["batch"] == 4 and preset["layout"]["base_channels"] == 8
    assert set(preset["nets"]) == {"ours"} and "ratio" not in preset
    ours = preset["nets"]["ours"]
    assert ours["parameters"] > 0 and ours["train_gflop_per_step"] > 0
    assert ours["train_images_per_s"] > 0 and ours["sample_per_s"] > 0
    before, peak = ours["train_memory_mib"]
    assert 0 < before <= peak
    assert "| digits (1×8×8, batch 4) | ours |" in out.with_suffix(".md").read_text()


def test_attention_layout(load: Callable, tmp_path: Path) -> None:
    out = tmp_path / "attention.json"
    results = load("attention_layout").main(
        ["--shapes", "2x16x4", "--iters", "1", "--repeats", "1", "--out", str(out)]
    )
    layouts = results["shapes"]["2x16x4"]
    assert json.loads(out.read_text())["shapes"]["2x16x4"] == layouts
    # The token layout reaches a fused kernel; the 1×1-conv layout falls back to the math one.
    assert layouts["tokens (current)"]["kernels"] != layouts["1×1 conv (first)"]["kernels"]
    assert any("math" in k for k in layouts["1×1 conv (first)"]["kernels"])
    assert not any("math" in k for k in layouts["tokens (current)"]["kernels"])
    assert all(r["train_ms"] > 0 and r["forward_ms"] > 0 for r in layouts.values())
    assert "| 2x16x4 | tokens (current) |" in out.with_suffix(".md").read_text()


def test_unet_throughput_against_diffusers(load: Callable, tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    results = load("unet_throughput").main([*TINY_UNET, "--out", str(tmp_path / "unet.json")])
    (preset,) = results["presets"]
    ours, theirs = preset["nets"]["ours"], preset["nets"]["diffusers"]
    # The same layout: parameters within 2 % (only the attention projections differ in shape).
    assert ours["parameters"] == pytest.approx(theirs["parameters"], rel=0.02)
    assert ours["train_gflop_per_step"] == pytest.approx(theirs["train_gflop_per_step"], rel=0.05)
    assert preset["ratio"]["train"] > 0 and preset["ratio"]["sample"] > 0


def test_digits_quality(load: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFUSION_PL_CACHE", str(tmp_path / "cache"))
    script = load("digits_quality")
    out = tmp_path / "quality.json"
    results = script.main([
        "--max_steps", "2", "--base_channels", "8", "--batch_size", "16", "--num_samples", "20",
        "--sample_batch", "10", "--nfe", "2", "4", "--few_nfe", "3", "4", "--bound_samples", "4",
        "--likelihood_samples", "10", "--likelihood_tol", "1e-2",
        "--workdir", str(tmp_path / "runs"), "--out", str(out),
    ])  # fmt: skip
    assert json.loads(out.read_text()) == results
    assert out.with_suffix(".png").stat().st_size > 0
    assert "| rectified_flow | euler | 2 |" in out.with_suffix(".md").read_text()
    # The whole train split against val, as measured in tests/metrics/test_fid.py and RESULTS.md.
    assert results["real_data_floor"] == pytest.approx(4.25, abs=0.01)
    # Every sampler of every formulation ran; NFE is counted, and NFEs that give the same
    # sampler ran once (annealed Langevin: at least one step at each of the 20 levels).
    nfe = {}
    for row in results["fid"]:
        nfe.setdefault((row["formulation"], row["sampler"]), []).append(row["nfe"])
        assert math.isfinite(row["fid"])
    assert {(f, s.title) for f, sweeps in script.SWEEPS.items() for s in sweeps} == set(nfe)
    assert nfe["rectified_flow", "euler"] == [2, 4]
    assert nfe["rectified_flow", "heun"] == [1, 3]  # the step to σ = 0 takes one evaluation
    assert nfe["vdm", "ddim"] == [2, 4]  # the final denoising step at t_min = 1/T included
    assert nfe["edm", "dpmpp_2m"] == nfe["vdm", "unipc"] == [3, 4]
    assert nfe["rectified_flow", "dpmpp_3m"] == [3, 4]  # σ(t_min = 0) = 0: no final step
    assert "best FID, NFE ≤ 10" in out.with_suffix(".md").read_text()
    assert nfe["ncsn", "annealed_langevin"] == nfe["ncsn", "annealed_langevin eps=1e-4"] == [21]
    ncsn = {r["sampler"]: r["settings"] for r in results["fid"] if r["formulation"] == "ncsn"}
    assert "step_lr=0.0001" in ncsn["annealed_langevin eps=1e-4"]
    assert "step_lr=2e-05" in ncsn["annealed_langevin"]  # the config's own
    assert nfe["score_sde", "pc"] == [3, 5]
    for name, formulation in results["formulations"].items():
        assert formulation["fit_seconds"] > 0 and formulation["parameters"] > 0
        bpd = formulation["bits_per_dim"]
        if name in ("vdm", "score_sde"):
            assert math.isfinite(bpd["bpd"]) and bpd["examples"] == (4 if name == "vdm" else 10)
            assert bpd["stderr"] > 0  # over the examples
        else:
            assert bpd is None
    # --skip_fit evaluates the checkpoints already there.
    again = script.main([
        "--formulations", "rectified_flow", "--skip_fit", "--num_samples", "20",
        "--sample_batch", "10", "--nfe", "2", "--workdir", str(tmp_path / "runs"),
        "--out", str(tmp_path / "again.json"),
    ])  # fmt: skip
    assert again["formulations"]["rectified_flow"]["fit_seconds"] is None
    first, same = results["fid"][0], again["fid"][0]
    assert (same["nfe"], same["fid"]) == (first["nfe"], first["fid"])


def test_digits_quality_few_step_solvers_on_tuned_grids(
    load: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--few_grid gits`` samples each few-step solver on the grid tune-grid finds for it."""
    monkeypatch.setenv("DIFFUSION_PL_CACHE", str(tmp_path / "cache"))
    script = load("digits_quality")
    results = script.main([
        "--formulations", "rectified_flow", "--max_steps", "2", "--base_channels", "8",
        "--batch_size", "16", "--num_samples", "20", "--sample_batch", "10", "--nfe", "2",
        "--few_nfe", "3", "--few_grid", "gits", "--gits_samples", "8",
        "--gits_reference_steps", "20", "--gits_candidates", "10",
        "--workdir", str(tmp_path / "runs"), "--out", str(tmp_path / "q.json"),
    ])  # fmt: skip
    few = [r for r in results["fid"] if r["sampler"] in ("dpmpp_2m", "dpmpp_3m", "unipc", "ipndm")]
    assert len(few) == 4
    for row in few:
        assert "grid=CustomGrid(times=[1, " in row["settings"] and row["nfe"] == 3
        assert math.isfinite(row["fid"])
    euler = next(r for r in results["fid"] if r["sampler"] == "euler")
    assert "grid=None" in euler["settings"]  # only the few-step solvers are tuned
    # fresh_seeds rebuilds the headline rows (tuning their grids again): seed 0 is the run's.
    seeds = load("fresh_seeds").main(["--results", str(tmp_path / "q.json"), "--seeds", "0", "1"])
    assert {r["nfe_limit"] for r in seeds["rows"]} == {"≤ 5", "≤ 10", "any"}  # no NFE ≥ 50
    for row in seeds["rows"]:
        assert row["fid"][0] == row["run_fid"] and row["fid"][1] != row["run_fid"]
    assert "≤ 5 NFE ÷ any" in (tmp_path / "q_seeds.md").read_text()


def test_quickstart_quality_scores_each_training_seed_with_each_sampling_seed(
    load: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two 2-step fits of the quick start's config (narrowed): each scored with two sampling
    seeds; different seeds give different scores, and the summary compares with the floor.
    Rescored without fitting, the same checkpoints and seeds give the same scores."""
    monkeypatch.setenv("DIFFUSION_PL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "quick.json"
    results = load("quickstart_quality").main([
        "--seeds", "0", "1", "--sampling_seeds", "0", "1", "--num_samples", "20",
        "--batch_size", "10", "--override", "trainer.max_steps", "2",
        "--override", "model.init_args.net.init_args.base_channels", "8",
        "--override", "data.global_batch_size", "16",
        "--workdir", str(tmp_path / "runs"), "--out", str(out),
    ])  # fmt: skip
    assert [r["seed"] for r in results["runs"]] == [0, 1]
    for run in results["runs"]:
        assert run["fit_seconds"] > 0 and run["val_fid"] is None  # no validation in 2 steps
        assert not run["guided"]  # the config's guide is the run at step 500
        assert set(run["fid"]) == {0, 1} and run["fid"][0] != run["fid"][1]
    assert results["runs"][0]["fid"][0] != results["runs"][1]["fid"][0]
    report = out.with_suffix(".md").read_text()
    assert "÷ floor (≤ 2)" in report and "trainer.max_steps" in report
    again = load("quickstart_quality").main([
        "--seeds", "0", "1", "--sampling_seeds", "0", "1", "--num_samples", "20",
        "--batch_size", "10", "--rescore", "--workdir", str(tmp_path / "runs"),
        "--out", str(tmp_path / "again.json"),
    ])  # fmt: skip
    assert [r["fid"] for r in again["runs"]] == [r["fid"] for r in results["runs"]]
    assert all(r["fit_seconds"] is None for r in again["runs"])


def test_phema_autoguidance(
    load: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 4-step run: two snapshots rebuild each width, and autoguidance at w = 1 scores what the
    model alone scores (its samples are the unguided ones)."""
    monkeypatch.setenv("DIFFUSION_PL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "after.json"
    results = load("phema_autoguidance").main([
        "--max_steps", "4", "--snapshot_every", "2", "--guide_step", "2", "--sigma_rel", "0.05",
        "0.1", "--scales", "1", "2", "--steps", "2", "--base_channels", "8", "--batch_size", "16",
        "--num_samples", "20", "--sample_batch", "10", "--workdir", str(tmp_path / "runs"),
        "--out", str(out),
    ])  # fmt: skip
    assert json.loads(out.read_text()) == results
    assert out.with_suffix(".png").stat().st_size > 0
    assert [r["sigma_rel"] for r in results["phema"]] == [0.05, 0.1]
    (alone, guided) = results["autoguidance"]
    assert alone["fid"] == pytest.approx(results["fixed_ema_fid"], abs=1e-3)
    assert guided["fid"] != pytest.approx(alone["fid"], abs=1e-3)


def test_scale_throughput_streams_and_runs_two_processes(load: Callable, tmp_path: Path) -> None:
    """3 steps of each digits case: in memory, parquet in memory, streamed on 1 and 2 processes,
    every one with a positive rate; the report sets each against the in-memory run."""
    out = tmp_path / "scale.json"
    results = load("scale_throughput").main([
        "--cases", "stream", "--digits_steps", "3", "--digits_batch", "16",
        "--workdir", str(tmp_path / "runs"), "--out", str(out),
    ])  # fmt: skip
    assert json.loads(out.read_text()) == results
    cases = {r["case"]: r for r in results["rows"]}
    assert list(cases) == ["digits_1proc", "parquet_in_memory_1proc", "parquet_streamed_1proc",
                           "parquet_streamed_2proc"]  # fmt: skip
    assert all(r["images_per_sec"] > 0 and r["steps"] == 3 for r in cases.values())
    assert cases["parquet_streamed_2proc"]["threads_per_process"] == 1
    report = out.with_suffix(".md").read_text()
    assert "| parquet_streamed_2proc | digits | 2 | 1 | 16 | 3 |" in report


def test_consistency_quality_scores_midpoints_and_rescores(
    load: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2-step iCT run scored at 1 and 2 steps and through a chosen midpoint, then scored again
    from its checkpoint with other midpoints and no fit."""
    monkeypatch.setenv("DIFFUSION_PL_CACHE", str(tmp_path / "cache"))
    script, out = load("consistency_quality"), tmp_path / "cm.json"
    tiny = ["--runs", "ct", "--ct_steps", "2", "--base_channels", "8", "--batch_size", "16",
            "--num_samples", "20", "--sample_batch", "10", "--workdir", str(tmp_path / "runs"),
            "--out", str(out)]  # fmt: skip
    first = script.main([*tiny, "--midpoints", "1.0"])
    rows = first["runs"]["ct"]["fid"]
    assert [(r["steps"], r["nfe"], r["levels"]) for r in rows] == [
        (1, 1, []), (2, 2, [2.5152]), (2, 2, [1.0])
    ]  # fmt: skip
    again = script.main([*tiny, "--rescore", "--midpoints", "0.5", "2.5152"])
    rescored = again["runs"]["ct"]["fid"]
    assert again["runs"]["ct"]["checkpoint"] == first["runs"]["ct"]["checkpoint"]
    assert [r["levels"] for r in rescored] == [[], [2.5152], [0.5], [2.5152]]
    # the same samples (an FID of ~1,000 rounded to 3 decimals: equal up to float rounding)
    assert rescored[1]["fid"] == pytest.approx(rows[1]["fid"], rel=1e-6)
    assert rescored[3]["fid"] == pytest.approx(rows[1]["fid"], rel=1e-6)
    assert "best σ̃ (searched on this FID)" not in out.with_suffix(".md").read_text()  # no teacher


@pytest.mark.usefixtures("one_thread")
def test_latent_quality_runs_the_autoencoder_both_flows_and_draws_the_picture(
    load: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    pytest.importorskip("diffusers")  # in the dev and latent extras
    out = tmp_path / "latent.json"
    results = load("latent_quality").main([
        "--ae_steps", "2", "--minutes", "0.02", "--num_samples", "4", "--ae_channels", "8", "8",
        "8", "--base_channels", "8", "--workdir", str(tmp_path / "runs"), "--out", str(out),
    ])  # fmt: skip
    ae = results["autoencoder"]
    assert (Path(ae["folder"]) / "config.json").is_file()
    assert math.isfinite(ae["rfid"]) and 0 < ae["floor"] < 10  # train vs val, digits features
    for name in ("latent", "pixel"):
        assert math.isfinite(results[name]["fid"]) and results[name]["img_per_s"] > 0
    assert out.with_suffix(".png").is_file() and "rFID" in out.with_suffix(".md").read_text()
    assert results["picture"] == "latent.png"  # named relative to the JSON beside it
    assert json.loads(out.read_text())["latent"]["steps"] >= 1


@pytest.mark.usefixtures("one_thread")
def test_lcm_quality_distils_scores_and_rescores_a_student_from_teleported_starts(
    load: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain LCD from a tiny unconditional teacher, scored from τ = 999 and teleported to 659;
    then the same student again with no fit (--student), and --student with two runs refused."""
    monkeypatch.setenv("DIFFUSION_PL_CACHE", str(tmp_path / "cache"))
    script, out = load("lcm_quality"), tmp_path / "lcm.json"
    tiny = ["--runs", "uncond", "--base_channels", "8", "--lcm_steps", "1", "2",
            "--teleport_to", "659", "--teacher_nfe", "2", "--num_samples", "10",
            "--sample_batch", "10", "--per_class", "1",
            "--workdir", str(tmp_path / "runs")]  # fmt: skip
    first = script.main([*tiny, "--teacher_steps", "2", "--max_steps", "2", "--out", str(out)])
    run = first["runs"]["uncond"]
    assert [(r["sampler"], r["steps"]) for r in run["teacher"]["scores"]] == [
        ("ddim", 2), ("dpmpp_2m", 2)]  # fmt: skip
    assert [(r["steps"], r["teleport_to"]) for r in run["lcm"]["scores"]] == [
        (1, None), (2, None), (1, 659), (2, 659)]  # fmt: skip
    assert all(math.isfinite(r["fid"]) and r["omega"] is None for r in run["lcm"]["scores"])
    assert "| uncond | 2 |" in out.with_suffix(".md").read_text()
    student, teacher = run["lcm"]["checkpoint"], run["teacher"]["checkpoint"]
    again = script.main([*tiny, "--uncond_teacher", teacher, "--student", student,
                         "--out", str(tmp_path / "again.json")])  # fmt: skip
    rescored = again["runs"]["uncond"]["lcm"]
    assert rescored["fit_seconds"] is None and rescored["checkpoint"] == student
    assert [r["fid"] for r in rescored["scores"]] == [r["fid"] for r in run["lcm"]["scores"]]
    other = script.main([*tiny, "--uncond_teacher", teacher, "--student", student, "--lcm_steps",
                         "2", "--teleport_to", "659", "--fid_seed", "1",
                         "--out", str(tmp_path / "seed1.json")])  # fmt: skip
    assert other["runs"]["uncond"]["lcm"]["scores"][1]["fid"] != run["lcm"]["scores"][3]["fid"]
    with pytest.raises(SystemExit):
        script.parse_args(["--runs", "cond", "uncond", "--student", student])


@pytest.mark.usefixtures("one_thread")
def test_lcm_lora_quality_scores_the_acceleration_vector(
    load: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny teacher, LCM-LoRA and transposed-digits fine-tune: every model scored on its own
    data, the combination loaded as `sample --lora FT --lora LCM --sampler lcm` does."""
    monkeypatch.setenv("DIFFUSION_PL_CACHE", str(tmp_path / "cache"))
    script, out = load("lcm_lora_quality"), tmp_path / "lcm_lora.json"
    results = script.main([
        "--base_channels", "8", "--teacher_steps", "2", "--max_steps", "2", "--finetune_steps",
        "2", "--num_samples", "10", "--sample_batch", "10", "--per_class", "1",
        "--finetune_nfe", "50", "--workdir", str(tmp_path / "runs"), "--out", str(out),
    ])  # fmt: skip
    assert json.loads(out.read_text()) == results
    rows = {(r["model"], r["data"], r["sampler"], r["steps"]): r for r in results["scores"]}
    assert set(rows) == {
        ("teacher", "digits", "ddim", 50), ("LCM-LoRA", "digits", "lcm", 4),
        ("fine-tune", "transposed", "ddim", 4), ("fine-tune", "transposed", "ddim", 50),
        ("LCM-LoRA", "transposed", "lcm", 4), ("fine-tune + LCM-LoRA", "transposed", "lcm", 4),
    }  # fmt: skip
    assert all(math.isfinite(r["fid"]) for r in rows.values())
    assert all((r["requested_digit"] is None) == (r["data"] == "transposed")
               for r in rows.values())  # fmt: skip
    # Rank-8 adapters on every layer of the 8-channel UNet: the same count for both runs, as a
    # share of the teacher's 64,545 weights, in float32 files.
    sizes = results["adapters"]
    assert sizes["lcm_lora"]["parameters"] == sizes["finetune"]["parameters"] == 43_216
    assert sizes["lcm_lora"]["share"] == round(43_216 / 64_545, 4)
    assert all(a["bytes"] > 4 * a["parameters"] for a in sizes.values())
    assert "| LCM-LoRA adapters | 67.0 % | ≤ 10 % of the UNet | missed |" in (
        out.with_suffix(".md").read_text())  # fmt: skip
    # The picture: two rows of ten digits per model (teacher, LCM-LoRA, fine-tune, both), each
    # 8x8 digit upscaled to 64 pixels with a 2-pixel border.
    assert results["picture"] == str(out.with_suffix(".png"))
    assert Image.open(results["picture"]).size == (10 * 66 + 2, 8 * 66 + 2)
    # Again on the same teacher and LCM-LoRA (no new fit of either), with a style fine-tune:
    # its rows are scored against the gamma-drawn digits.
    again = script.main([
        "--base_channels", "8", "--teacher", results["teacher"], "--lcm_lora",
        sizes["lcm_lora"]["file"], "--transform", "gamma", "--finetune_steps", "2",
        "--num_samples", "10", "--sample_batch", "10", "--per_class", "1", "--finetune_nfe",
        "50", "--workdir", str(tmp_path / "runs2"), "--out", str(tmp_path / "gamma.json"),
    ])  # fmt: skip
    assert set(again["fit_seconds"]) == {"finetune"}
    assert again["adapters"]["lcm_lora"]["file"] == sizes["lcm_lora"]["file"]
    assert {r["data"] for r in again["scores"]} == {"digits", "gamma"}
    assert "on the gamma digits" in (tmp_path / "gamma.md").read_text()


def test_gpu_check_runs_every_case_but_compile_on_the_cpu(load: Callable, tmp_path: Path) -> None:
    """The GPU check's smoke run on the CPU (fp32, gloo): the peak, a narrowed CIFAR-10 UNet's
    training rate and MFU, the FID callback's seconds, and a 1-process DDP fit that finishes."""
    out = tmp_path / "gpu.json"
    results = load("gpu_check").main([
        "--cases", "peak", "train", "fid", "ddp", "--device", "cpu", "--precision", "32-true",
        "--backend", "gloo", "--steps", "3", "--batch", "8", "--base_channels", "8",
        "--fid_samples", "50", "--matmul_size", "512", "--workdir", str(tmp_path / "runs"),
        "--out", str(out),
    ])  # fmt: skip
    assert json.loads(out.read_text()) == results
    rows = {r["case"]: r for r in results["rows"]}
    assert list(rows) == ["train", "fid", "no_fid", "ddp"]
    assert all(r["images_per_sec"] > 0 for r in rows.values())
    # MFU is the measured rate times the counted FLOPs over the measured peak, a share in (0, 1).
    train = rows["train"]
    achieved = train["images_per_sec"] * results["train_gflop_per_image"]
    assert train["mfu"] == round(achieved / results["peak_gflops"], 4)
    assert 0 < train["mfu"] < 1
    # Only the fid case scored samples; the DDP fit ran all its steps.
    assert "val/fid" in rows["fid"]["metrics"] and "val/fid" not in rows["no_fid"]["metrics"]
    assert rows["ddp"]["steps"] == 3 and rows["ddp"]["metrics"]["step"] == 2
    assert "| ddp | digits | 8 | 3 |" in out.with_suffix(".md").read_text()


def test_gpu_check_counts_the_unet_flops(load: Callable) -> None:
    """One image's training FLOPs grow with the width: about 4x for twice the channels (the
    convolutions' cost is quadratic in width)."""
    script = load("gpu_check")
    narrow, wide = (script.training_flops_per_image(script.cifar_model(c)["init_args"]["net"])
                    for c in (8, 16))  # fmt: skip
    assert 3.0 < wide / narrow < 4.5
