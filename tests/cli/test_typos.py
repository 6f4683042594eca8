"""Typos of keys and class names (issue 28, item 6): one ``error:`` line with "did you mean",
the ``--help`` tip and nothing else (no usage), exit code 2; a YAML syntax error names its file
and line. Every case fails at parsing, before any model is built."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runs import cli_error
from run_helpers import TOY

from diffusion_pl.cli import main
from diffusion_pl.config_errors import shorten

FIT = ["fit", "--config", str(TOY), "--trainer.max_steps", "1"]


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("--model.init_args.net.init_args.hiden 3",
         r"^error: --model\.init_args\.net\.init_args\.hiden: diffusion_pl\.nets\.MLP has no "
         r"option 'hiden'; did you mean 'hidden'\?$"),
        ("--model.init_args.optimiser.init_args.lr 1",  # an argument of a base class
         r"RectifiedFlow has no option 'optimiser'; did you mean 'optimizer'\?$"),
        ("--data.global_batch_sze 3",
         r"^error: unrecognized option --data\.global_batch_sze; did you mean "
         r"'--data\.global_batch_size'\?$"),
        ("--model.class_path diffusion_pl.formulations.RectifiedFlw",
         r"^error: --model: there is no class diffusion_pl\.formulations\.RectifiedFlw; did you "
         r"mean 'diffusion_pl\.formulations\.RectifiedFlow'\?$"),
        ("--model.init_args.sampler.class_path diffusion_pl.samplers.EulerSamplr",
         r"did you mean 'diffusion_pl\.samplers\.EulerSampler'\?$"),
    ],
    ids=["net-key", "base-class-key", "data-key", "formulation", "sampler-class"],
)  # fmt: skip
def test_a_typo_is_one_line_with_did_you_mean(
    override: str, match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with cli_error(capsys, match) as stderr:
        main([*FIT, *override.split()])
    assert stderr == [stderr[0], "tip: `diffusion-pl fit --help` lists every option"]


def test_a_class_typo_in_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text(TOY.read_text().replace("diffusion_pl.nets.MLP", "diffusion_pl.nets.MLPX"))
    with cli_error(
        capsys, r"no class diffusion_pl\.nets\.MLPX; did you mean 'diffusion_pl\.nets\.MLP'"
    ):
        main(["fit", "--config", str(config)])


def test_a_yaml_syntax_error_names_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("model:\n  class_path: x\n   bad: [\n")
    expected = rf"^error: --config {config}, line 3, column 7: mapping values are not allowed"
    with cli_error(capsys, expected) as stderr:
        main(["fit", "--config", str(config)])
    assert len(stderr) == 1


def test_a_bad_number_of_a_command_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with cli_error(capsys, r"^error: --guidance_scale nan: expected float or null$") as stderr:
        main("sample --ckpt_path x.ckpt --output s.npz --guidance_scale nan".split())
    assert len(stderr) == 2


def test_an_unknown_message_keeps_its_first_failure() -> None:
    message = "Parser key \"data\":\n  Problem with given class_path 'a.B':\n    it broke\n"
    message += "  Given value: {}"
    assert shorten(message) == "--data.init_args: it broke"
