"""A sampler config's constructor, derived from its sampling function's signature.

A sampler's settings are the keyword parameters of its function (``sample_ddim(..., *, eta,
clip_x0, generator, progress)``): their names, types, defaults and the ``Args:`` lines that
document them. :func:`derived_init` builds the config class's ``__init__`` from them, so no
class re-lists them: ``(self, steps=…, *, <settings>, grid=None, denoise_final=True)`` with a
real ``__signature__``, ``__annotations__`` and docstring, which is what jsonargparse reads for
``class_path``/``init_args``, ``--print_config`` and help.
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from diffusion_pl.samplers.grids import Grid

__all__ = ["Layout", "args_section", "derived_init", "solver_settings"]

SHARED = ("generator", "progress")
"""Keyword parameters every sampling function takes from the call, not from the config."""

FIXED_DOCS = {
    "steps": "number of steps (what a step costs: the sampler's summary and NFE per step).",
    "grid": "the time grid; None: the sampler's ``default_grid``, its paper's.",
    "denoise_final": "return x̂_0 at ``path.t_min`` (one more network evaluation where "
    "σ(t_min) > 0).",
}
"""How the constructor arguments that no sampling function takes are documented by default."""

_NO_STEPS = object()


@dataclass(frozen=True)
class Layout:
    """The arguments of a sampler config that are not settings of its function.

    Args:
        steps: the default number of steps; absent for a sampler that chooses its own times.
        grid: whether the config takes a ``grid`` (the time grid of a fixed-step sampler).
        denoise_final: whether the config takes ``denoise_final``.
        defaults: new defaults for the function's settings, e.g. ``{"order": 3}``.
    """

    steps: Any = _NO_STEPS
    grid: bool = True
    denoise_final: bool = True
    defaults: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def declare(cls, parent: Layout | None, **declared: Any) -> Layout:
        """``parent``'s layout (or the default one) with the class keywords ``declared``:
        ``steps``, ``grid``, ``denoise_final``, and any other name as a new default."""
        fixed = {k: declared.pop(k) for k in ("steps", "grid", "denoise_final") if k in declared}
        base = parent or cls()
        return replace(base, **fixed, defaults={**base.defaults, **declared})

    @property
    def has_steps(self) -> bool:
        """Whether the config takes ``steps``."""
        return self.steps is not _NO_STEPS


@functools.cache
def solver_settings(function: Callable[..., Any]) -> tuple[str, ...]:
    """The names of ``function``'s keyword-only settings (all but ``generator``, ``progress``)."""
    params = inspect.signature(function).parameters.values()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in SHARED)


def args_section(doc: str | None) -> dict[str, str]:
    """The entries ``name: text`` of a Google-style docstring's ``Args:`` section, each text
    on one line (its continuation lines joined)."""
    lines = inspect.cleandoc(doc or "").splitlines()
    entries: dict[str, str] = {}
    inside, name = False, None
    for line in lines:
        if line.strip() == "Args:":
            inside = True
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):
            break
        entry = re.match(r"^ {4}([\w*]+): ?(.*)$", line)
        if entry:
            name = entry.group(1)
            entries[name] = entry.group(2).strip()
        elif line.startswith(" " * 5) and name is not None:
            entries[name] = f"{entries[name]} {line.strip()}"
    return entries


def _settings(cls: type, layout: Layout) -> tuple[list[inspect.Parameter], dict[str, str]]:
    """The keyword settings of ``cls.schedule`` (if any) then ``cls.solver``, typed, with
    ``layout``'s defaults, and their documentation from the functions' ``Args:``."""
    functions = [f for f in (cls.schedule, cls.solver) if f is not None]
    params: dict[str, inspect.Parameter] = {}
    docs: dict[str, str] = {}
    for function in functions:
        hints = typing.get_type_hints(function)
        found = inspect.signature(function).parameters
        for name in solver_settings(function):
            if name not in params:
                default = layout.defaults.get(name, found[name].default)
                kind = inspect.Parameter.KEYWORD_ONLY
                params[name] = inspect.Parameter(
                    name, kind, default=default, annotation=hints[name]
                )
        docs = {**args_section(function.__doc__), **docs}
    unknown = sorted(set(layout.defaults) - set(params))
    if unknown:
        raise TypeError(f"{cls.__name__}: {unknown} are not settings of {cls.solver.__name__}")
    return list(params.values()), {name: docs.get(name, "") for name in params}


def _fixed(cls: type, layout: Layout) -> tuple[list[inspect.Parameter], dict[str, str]]:
    """``steps`` (before the settings) and ``grid``, ``denoise_final`` (after), as ``layout``
    has them; documented by the class's own ``Args:`` where it has one, else by default."""
    own = args_section(cls.__doc__)
    docs = {name: own.get(name, text) for name, text in FIXED_DOCS.items()}
    docs["grid"] = docs["grid"].replace("``default_grid``", f"``{cls.default_grid!r}``")
    keyword, positional = inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = []
    if layout.has_steps:
        steps_type = int if layout.steps is not None else int | None
        steps = inspect.Parameter("steps", positional, default=layout.steps, annotation=steps_type)
        params.append(steps)
    if layout.grid:
        params.append(inspect.Parameter("grid", keyword, default=None, annotation=Grid | None))
    if layout.denoise_final:
        params.append(inspect.Parameter("denoise_final", keyword, default=True, annotation=bool))
    return params, docs


def derived_init(cls: type, layout: Layout) -> Callable[..., None]:
    """``cls.__init__(self, steps=…, *, <settings>, grid=None, denoise_final=True)``: the
    settings of ``cls.solver`` (and ``cls.schedule``), with ``layout``'s fixed arguments, kept
    in this order by ``cls._setup``. Its docstring's ``Args:`` are the functions'."""
    settings, setting_docs = _settings(cls, layout)
    fixed, fixed_docs = _fixed(cls, layout)
    steps = [p for p in fixed if p.name == "steps"]
    after = [p for p in fixed if p.name != "steps"]
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    signature = inspect.Signature([self_param, *steps, *settings, *after])

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        self._setup({k: v for k, v in bound.arguments.items() if k != "self"})

    docs = {**fixed_docs, **setting_docs}
    lines = [
        f"    {p.name}: {docs[p.name]}" for p in signature.parameters.values() if p.name != "self"
    ]
    sources = " and ".join(f":func:`{f.__name__}`" for f in (cls.schedule, cls.solver) if f)
    __init__.__doc__ = "\n".join([f"The settings of {sources}.", "", "Args:", *lines])
    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__annotations__ = {p.name: p.annotation for p in [*steps, *settings, *after]}
    __init__.__annotations__["return"] = None
    __init__.__module__ = cls.__module__
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    return __init__
