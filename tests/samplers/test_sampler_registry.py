"""The sampler table is the one source: configs derived from their functions, the README's
table generated from it, and YAML parsing through jsonargparse as before."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from jsonargparse import ArgumentParser, lazy_instance

import diffusion_pl.samplers as samplers
from diffusion_pl.samplers import SAMPLERS, HeunSampler, Sampler
from diffusion_pl.samplers.signature import args_section, solver_settings
from diffusion_pl.samplers.table import sampler_table

README = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())
README = README / "README.md"


def _parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--sampler", type=Sampler, default=lazy_instance(HeunSampler, steps=7))
    return parser


def test_the_table_holds_every_exported_sampler_under_its_declared_name() -> None:
    exported = {v for v in vars(samplers).values()
                if isinstance(v, type) and issubclass(v, Sampler) and v is not Sampler}  # fmt: skip
    assert exported <= set(SAMPLERS.values())  # a new module's sampler needs no export
    assert all(cls.name == name for name, cls in SAMPLERS.items())


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_the_config_takes_its_functions_settings_typed_and_documented(name: str) -> None:
    cls = SAMPLERS[name]
    functions = [f for f in (cls.schedule, cls.solver) if f is not None]
    params = inspect.signature(cls).parameters
    settings = [p for p in params.values() if p.kind is p.KEYWORD_ONLY]
    fixed = {"grid", "denoise_final"}
    expected = list(dict.fromkeys(n for f in functions for n in solver_settings(f)))
    assert [p.name for p in settings if p.name not in fixed] == expected
    docs, seen = args_section(cls.__init__.__doc__), set()
    for function in functions:  # a setting two functions take: the first one's
        found = inspect.signature(function).parameters
        for key, text in args_section(function.__doc__).items():
            if key in expected and key not in seen:
                seen.add(key)
                assert docs[key] == text
                if key not in cls.layout.defaults:
                    assert params[key].default == found[key].default
    assert seen == set(expected) and set(docs) == set(params)
    # The class documents at most the arguments no function takes (one docstring per setting).
    assert set(args_section(cls.__doc__)) <= {"steps", "grid", "denoise_final"}


def test_a_changed_default_is_declared_once() -> None:
    assert inspect.signature(SAMPLERS["dpmpp_3m"]).parameters["order"].default == 3
    assert inspect.signature(SAMPLERS["dpmpp_2m"]).parameters["order"].default == 2


def test_settings_are_keywords_after_steps() -> None:
    with pytest.raises(TypeError):
        SAMPLERS["ddim"](10, 0.5)
    with pytest.raises(TypeError, match="stepz"):
        HeunSampler(stepz=3)
    assert SAMPLERS["ddim"](10, eta=0.5).arguments() == {
        "steps": 10, "eta": 0.5, "clip_x0": None, "grid": None, "denoise_final": True
    }  # fmt: skip


def test_jsonargparse_parses_a_class_path_and_refuses_a_typo() -> None:
    parser = _parser()
    given = {"class_path": "diffusion_pl.samplers.HeunSampler", "init_args": {"steps": 5}}
    config = parser.parse_object({"sampler": given})
    sampler = parser.instantiate_classes(config).sampler
    assert type(sampler) is HeunSampler and repr(sampler) == (
        "HeunSampler(steps=5, grid=None, denoise_final=True)"
    )
    typo = {"class_path": "diffusion_pl.samplers.HeunSampler", "init_args": {"stepz": 5}}
    with pytest.raises(Exception, match="stepz"):
        parser.parse_object({"sampler": typo})
    default = parser.dump(parser.parse_args([]))
    assert "class_path: diffusion_pl.samplers.HeunSampler" in default and "steps: 7" in default


def test_jsonargparse_help_shows_the_functions_args(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--sampler.help", "DDIMSampler"])
    shown = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "the share of the posterior std injected as fresh noise" in shown
    assert "TrainedStepsGrid(spacing=LeadingGrid())" in shown


def test_the_readme_table_is_the_generated_one() -> None:
    """Regenerate with ``python -m diffusion_pl.samplers`` (the rows between the markers)."""
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- samplers:begin -->\n(.*?)<!-- samplers:end -->", text, re.S)
    assert found, f"{README.name} has no <!-- samplers:begin --> … <!-- samplers:end --> block"
    assert found.group(1) == sampler_table(SAMPLERS)
