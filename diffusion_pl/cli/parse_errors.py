"""Parser errors in one line: jsonargparse's nested message reduced to the key, the reason and a
"did you mean".

jsonargparse explains a bad option as a tree (``Parser key "model": Does not validate against any
of the Union subtypes … Problem with given class_path '…': Parser key "net": … Option 'hiden' is
not accepted … Given value: NestedArg(…)``) printed after the whole usage: 60 lines for one
typo. :func:`shorten` walks that tree down its first branch (the class that was tried) to the
leaf that failed and writes ``--model.init_args.net.init_args.hiden: diffusion_pl.nets.MLP has no
option 'hiden'; did you mean 'hidden'?``; the candidates for "did you mean" are the class's
constructor arguments, the module's classes, or the parser's own keys. A message it does not
recognise is kept, less its ``Given value`` dump. :class:`ShortErrors` prints that line and a
``--help`` tip, never the usage, and exits 2.

Config files are read before jsonargparse sees them (:func:`check_config_files`), so a YAML
syntax error names its file and line.
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

import yaml
from jsonargparse import ArgumentParser
from jsonargparse.typing import import_object

from diffusion_pl.errors import show_tracebacks

__all__ = ["ShortErrors", "check_config_files", "shorten"]

_KEY = re.compile(r'^(?:- )?Parser key "([^"]+)":')
_CLASS = re.compile(r"^(?:- )?Problem with given class_path '([^']+)':")
_STRUCTURE = ("Does not validate against", "Subtypes:", "Errors:", "Given value")
_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (?:--)?([^\s=]+)")
_NO_ATTRIBUTE = re.compile(r"module '([\w.]+)' has no attribute '(\w+)'")
_EXPECTED = re.compile(r"Expected a <class '(\w+)'>")
_GIVEN = re.compile(r"^\s*Given value: (.*)$", re.MULTILINE)


def _hint(name: str, candidates: Iterable[str]) -> str:
    """``; did you mean 'x'?`` for the candidate closest to ``name``, or nothing."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _init_args(class_path: str) -> list[str]:
    """The constructor arguments of the class ``class_path``, with those its ``**kwargs`` pass
    on to its base classes (none if it does not import)."""
    try:
        cls = import_object(class_path)
    except (ImportError, AttributeError, ValueError):
        return []
    names: list[str] = []
    for base in cls.__mro__ if isinstance(cls, type) else ():
        if "__init__" not in vars(base):
            continue
        parameters = inspect.signature(base.__init__).parameters.values()
        names += [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return [n for n in names if n != "self"]


def _classes(module: str) -> list[str]:
    """The public classes that ``module`` holds (none if it does not import)."""
    try:
        found = import_object(module)
    except (ImportError, AttributeError, ValueError):
        return []
    return [n for n, v in vars(found).items() if isinstance(v, type) and not n.startswith("_")]


def _leaf(message: str) -> tuple[list[str], str | None, str]:
    """The dotted key path, the innermost class tried and the first failure of ``message``."""
    path: list[str] = []
    class_path = None
    expected: list[str] = []
    for line in message.splitlines():
        text = line.strip()
        if match := _KEY.match(text):
            path.append(match.group(1))
        elif match := _CLASS.match(text):
            class_path = match.group(1)
            path.append("init_args")
        elif match := _EXPECTED.search(text):
            expected.append("null" if match.group(1) == "NoneType" else match.group(1))
        elif text and not text.startswith(_STRUCTURE):
            return path, class_path, text
    return path, class_path, " or ".join(expected)


def shorten(message: str, keys: Iterable[str] = ()) -> str:
    """One line for a jsonargparse error ``message`` (module docstring).

    Args:
        message: the parser's message.
        keys: the parser's own keys (``a.b`` for ``--a.b``), for "did you mean" at the top.
    """
    path, class_path, leaf = _leaf(message)
    given = _GIVEN.findall(message)
    where = "--" + ".".join(path) if path else ""
    if match := _NOT_ACCEPTED.search(leaf):
        name = match.group(1)
        hint = _hint(name, _init_args(class_path or ""))
        return f"{where}.{name}: {class_path} has no option {name!r}{hint}"
    if match := _UNRECOGNIZED.search(leaf):
        name = match.group(1)
        if class_path is None:
            return f"unrecognized option --{name}{_hint(f'--{name}', [f'--{k}' for k in keys])}"
        first = name.split(".", 1)[0]
        hint = _hint(first, _init_args(class_path))
        return f"{where}.{name}: {class_path} has no option {first!r}{hint}"
    if match := _NO_ATTRIBUTE.search(leaf):
        module, name = match.groups()
        hint = _hint(name, _classes(module)).replace("mean '", f"mean '{module}.")
        return f"{where.removesuffix('.init_args')}: there is no class {module}.{name}{hint}"
    if not _EXPECTED.search(message) or _CLASS.search(message):
        return f"{where}: {leaf}" if where else leaf
    value = given[-1] if given else "?"
    return f"{where} {value}: expected {leaf}"


class ShortErrors(ArgumentParser):
    """An ArgumentParser whose errors are one line (:func:`shorten`) and a ``--help`` tip, exit
    code 2; ``DIFFUSION_PL_TRACEBACK=1`` keeps jsonargparse's whole message."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or show_tracebacks():
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        keys = parser.get_defaults().keys()
        prog = parser.prog.replace(" [options]", "")
        print(f"error: {self.explain(shorten(message, keys))}", file=sys.stderr)
        print(f"tip: `{prog} --help` lists every option", file=sys.stderr, flush=True)
        raise SystemExit(2)

    def explain(self, line: str) -> str:
        """What the error line should say beyond :func:`shorten`'s (a subclass adds to it)."""
        return line


def check_config_files(args: list[str]) -> None:
    """Read every ``--config FILE`` of ``args`` as YAML first, so that a syntax error names the
    file and its line (jsonargparse's says ``"<unicode string>", line 10``).

    Raises:
        ValueError: a config file is not valid YAML (file, line, column and the problem).
    """
    files = [b for a, b in itertools.pairwise(args) if a == "--config"]
    files += [a.removeprefix("--config=") for a in args if a.startswith("--config=")]
    for file in files:
        path = Path(file)
        if not path.is_file():
            continue  # jsonargparse reports a missing file (or takes a YAML string)
        try:
            yaml.safe_load(path.read_text())
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark
            place = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ValueError(f"--config {file}{place}: {err.problem}; fix the YAML") from None
