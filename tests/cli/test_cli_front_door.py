"""What a user meets at the command line: one-line errors and exit code 2, the commands on
offer, what ``--steps`` does, the files ``sample`` writes, the t_eps ``likelihood`` used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from cli_runs import cli_error

from diffusion_pl.cli import main, output_paths, pick_sampler
from diffusion_pl.cli.commands import sample as sample_command
from diffusion_pl.errors import TRACEBACK_ENV, bad_input
from diffusion_pl.metrics import InceptionFeatures
from diffusion_pl.samplers import SAMPLERS, EulerSampler
from diffusion_pl.visualize import save_scatter

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ("reflow --num_pairs 10 --output o.pt --steps 0", r"^error: --steps must be > 0, got 0$"),
        ("likelihood --batch_size 0", r"^error: --batch_size must be > 0, got 0$"),
        ("likelihood --rtol 0", r"^error: --rtol must be > 0, got 0.0$"),
        ("fid --batch_size -2", r"^error: --batch_size must be > 0, got -2$"),
        ("fid --sampler nope", r"^error: unknown --sampler 'nope'; choose one of \['annealed_"),
        ("sample --num_samples 1 --output o --device gpu", r"--device 'gpu' is not a torch device"),
    ],
)  # fmt: skip
def test_a_bad_option_is_one_error_line_and_the_help_tip(
    args: str, match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    command = args.split()[0]
    with cli_error(capsys, match) as stderr:
        main([*args.split(), "--ckpt_path", "never-read.ckpt"])
    assert stderr[0].startswith("error: ")  # no usage: it stays behind --help
    assert stderr[1:] in ([], [f"tip: `diffusion-pl {command} --help` lists every option"])


def test_cuda_without_a_cuda_device_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    expected = r"--device cuda: this machine has no CUDA device .*use --device cpu$"
    with cli_error(capsys, expected):
        main("sample --ckpt_path never-read.ckpt --num_samples 1 --output o --device cuda".split())


@pytest.mark.slow
def test_the_traceback_switch_and_bugs_keep_their_traceback(
    toy_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digits = ["fit", "--config", str(ROOT / "configs/digits/rectified_flow.yaml"),
              "--data.source.init_args.size", "7"]  # fmt: skip
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(ValueError, match="Does not validate against any of the Union") as raised:
        main(digits)  # jsonargparse's wrapper, raised as it is
    assert str(bad_input(raised.value)).startswith("the data are 7x7 images, but this UNet")
    monkeypatch.delenv(TRACEBACK_ENV)

    def torch_like_bug(*args: object, **kwargs: object) -> None:
        raise ValueError("not raised by diffusion_pl: a bug, not bad input")

    monkeypatch.setattr(sample_command, "generate", torch_like_bug)
    with pytest.raises(ValueError, match="a bug, not bad input"):
        main(f"sample --ckpt_path {toy_ckpt} --num_samples 2 --output {tmp_path}/o".split())


@pytest.mark.parametrize(
    ("typed", "match"),
    [("sampel", r"unknown command 'sampel': did you mean 'sample'\? the commands are fit, "
                r"validate, test, sample, reflow, likelihood, fid, tune-grid, phema, encode, "
                r"lora, autoencoder$"),
     ("predict", r"unknown command 'predict': the commands are fit, validate, test, sample")],
)  # fmt: skip
def test_a_mistyped_command_lists_every_command(
    typed: str, match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with cli_error(capsys, match) as stderr:
        main([typed, "--config", "x.yaml"])
    commands = (
        "fit,validate,test,sample,reflow,likelihood,fid,tune-grid,phema,encode,lora,autoencoder"
    )
    assert stderr[0] == f"usage: diffusion-pl {{{commands}}} ..."


def test_predict_is_not_offered(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "{fit,validate,test}" in printed and "predict" not in printed
    assert "DIFFUSION_PL_TRACEBACK=1" in printed


def test_sample_help_names_every_sampler_and_what_steps_mean(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    printed = " ".join(capsys.readouterr().out.split())  # help lines rewrapped
    assert "one of SAMPLERS" not in printed
    for name in SAMPLERS:
        assert f" {name}," in printed or f" {name};" in printed, name
    assert "for annealed_langevin the number of noise levels, each of 100 Langevin steps" in printed
    assert "rk45 picks its own steps and ignores it with a note" in printed


@pytest.mark.slow
def test_steps_notes_and_the_counted_network_evaluations(
    toy_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """rk45 ignores ``--steps`` (the very sampler without it), Euler's ``--steps 4`` is 4
    network evaluations on the linear path (σ(t_min) = 0: no final denoising call), and the
    annealed-Langevin note multiplies the levels by ``steps_per_level``."""
    ignored = pick_sampler(EulerSampler(), "rk45", 10, None)
    assert repr(ignored) == repr(pick_sampler(EulerSampler(), "rk45", None, None))
    assert ("note: RK45Sampler picks its own steps (adaptive, set by rtol and atol): --steps 10 "
            "is ignored") in capsys.readouterr().err  # fmt: skip

    chosen = pick_sampler(EulerSampler(), "annealed_langevin", 10, None)
    assert chosen.arguments()["steps"] == 10
    assert ("note: for AnnealedLangevinSampler --steps 10 is the number of noise levels, each of "
            "steps_per_level=100 Langevin steps: 1000 network evaluations per sample"
            ) in capsys.readouterr().err  # fmt: skip

    main(f"sample --ckpt_path {toy_ckpt} --num_samples 5 --batch_size 2 --steps 4 "
         f"--output {tmp_path}/euler".split())  # fmt: skip
    out = capsys.readouterr().out
    assert "EulerSampler(steps=4, grid=None, denoise_final=True): 4 network evaluations" in out


@pytest.mark.slow
def test_the_output_rule_and_the_report_of_what_was_written(
    toy_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = {"out/s.npz": "out/s", "out/s": "out/s", "pic.png": "pic", "run.v2": "run.v2",
             "a.PNG": "a"}  # fmt: skip
    for given, stem in cases.items():
        assert output_paths(given) == (Path(f"{stem}.npz"), Path(f"{stem}.png")), given
    for given, stem in [("pic.png", "pic"), ("out/noext", "out/noext")]:
        main(f"sample --ckpt_path {toy_ckpt} --num_samples 3 --steps 2 "
             f"--output {tmp_path / given}".split())  # fmt: skip
        npz, png = tmp_path / f"{stem}.npz", tmp_path / f"{stem}.png"
        assert np.load(npz)["samples"].shape == (3, 2) and png.is_file()
        assert f"wrote {npz} (samples: (3, 2)) and {png}\n" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.rglob("*.*")) == [
        "noext.npz", "noext.png", "pic.npz", "pic.png"]  # fmt: skip


@pytest.mark.slow
def test_fid_refuses_points_and_names_the_weights_flag(
    toy_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with cli_error(capsys, r"FID compares images, but .* data of shape \(2,\), not images"):
        main(f"fid --ckpt_path {toy_ckpt} --num_samples 10 --feature digits".split())
    missing = tmp_path / "inception.pth"
    with cli_error(capsys, rf"not found at '{missing}'.*and pass --feature_weights PATH\)"):
        main(f"fid --ckpt_path {toy_ckpt} --feature_weights {missing}".split())
    with pytest.raises(FileNotFoundError, match=r"set weights_path: PATH in the init_args of "):
        InceptionFeatures(str(missing))  # from YAML: its key


@pytest.mark.slow
def test_likelihood_records_the_t_eps_it_used(
    toy_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rectified flow's paper reports no likelihood: the linear path's t_min = 0 is used; a
    given ``--t_eps`` is used as given, and one outside the path is refused."""
    common = f"likelihood --ckpt_path {toy_ckpt} --num_samples 2 --divergence exact --rtol 1e-2 "
    results = {}
    for name, extra in [("default", ""), ("given", " --t_eps 0.25")]:
        out = tmp_path / f"{name}.json"
        main(f"{common}--atol 1e-2 --output {out}{extra}".split())
        results[name] = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "t_eps=0, the path's t_min)" in printed and "t_eps=0.25, --t_eps)" in printed
    assert results["default"]["t_eps"] == 0.0 and results["given"]["t_eps"] == 0.25
    assert results["given"]["num_samples"] == 2 and results["given"]["split"] == "val"
    assert results["given"]["checkpoint"] == str(toy_ckpt) and results["given"]["seed"] == 0
    assert results["given"]["sampler"] == "rk45" and results["given"]["nfe"] > 0
    assert results["given"].keys() >= {"steps", "feature"}  # as fid --output records them
    # p_0.25 is the data blurred by σ = 0.25: another density, another number
    assert abs(results["given"]["bpd"] - results["default"]["bpd"]) > 1e-3
    with cli_error(capsys, r"^error: t_eps=1.0 is outside \[0, t_max=1.0\) of LinearPath"):
        main(f"{common}--t_eps 1.0".split())


def test_the_scatter_title_is_not_clipped(tmp_path: Path) -> None:
    """A 141-character sampler title: every dark (text) pixel lies inside the picture, away
    from its edges (the unwrapped title ran off both sides)."""
    title = ("PCSampler(steps=1000, predictor=diffusion_pl.samplers.sde.reverse_diffusion_step, "
             "corrector_steps=1, snr=0.16, grid=None, denoise_final=True)")  # fmt: skip
    path = save_scatter(torch.zeros(4, 2), tmp_path / "t.png", title=title)
    image = matplotlib.image.imread(path)[..., :3].mean(-1)
    band = image[: image.shape[0] // 6]  # the title's rows, above the axes
    dark = np.nonzero(band < 0.5)
    assert dark[1].size > 0  # the title is there
    assert dark[1].min() > 4 and dark[1].max() < image.shape[1] - 5 and dark[0].min() > 0


@pytest.mark.slow
def test_exit_code_of_bad_input_end_to_end() -> None:
    """The installed command exits with 2 and prints one error line and the --help tip, no
    usage, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "diffusion_pl", "sample", "--ckpt_path", "x.ckpt",
         "--num_samples", "0", "--output", "o.npz"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "error: --num_samples must be > 0, got 0",
        "tip: `diffusion-pl sample --help` lists every option",
    ]
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.slow
def test_likelihood_names_num_samples_beyond_the_split(
    toy_ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with cli_error(capsys, r"^error: --num_samples must be in \[1, \d+\] for the val split, got 9"):
        main(f"likelihood --ckpt_path {toy_ckpt} --num_samples 99999".split())
