"""Config errors in one line: jsonargparse's nested message reduced to the key, the reason and a
"did you mean".

jsonargparse explains a bad config value as a tree (``Parser key "model": Does not validate
against any of the Union subtypes … Problem with given class_path '…': Parser key "net": …
Option 'hiden' is not accepted … Given value: NestedArg(…)``): 60 lines for one typo.
:func:`shorten` walks that tree down its first branch (the class that was tried) to the leaf
that failed and writes ``--model.init_args.net.init_args.hiden: diffusion_pl.nets.MLP has no
option 'hiden'; did you mean 'hidden'?``; the candidates for "did you mean" are the class's
constructor arguments, the module's classes, or the parser's own keys. A message it does not
recognise is kept, less its ``Given value`` dump. The command line's parser
(:mod:`diffusion_pl.cli.parse_errors`) and checkpoint loading (:mod:`diffusion_pl.checkpoints`)
both report through it.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Iterable

from jsonargparse.typing import import_object

__all__ = ["shorten"]

_KEY = re.compile(r'^(?:- )?Parser key "([^"]+)":')
_CLASS = re.compile(r"^(?:- )?Problem with given class_path '([^']+)':")
_STRUCTURE = ("Does not validate against", "Subtypes:", "Errors:", "Given value")
_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (?:--)?([^\s=]+)")
_GROUP = re.compile(r"does not accept option '([^']+)'")
_NO_ATTRIBUTE = re.compile(r"module '([\w.]+)' has no attribute '(\w+)'")
_EXPECTED = re.compile(r"Expected a <class '(\w+)'>")
_GIVEN = re.compile(r"^\s*Given value: (.*)$", re.MULTILINE)


def _hint(name: str, candidates: Iterable[str]) -> str:
    """``; did you mean 'x'?`` for the candidate closest to ``name``, or nothing."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.7)
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
    if match := _GROUP.search(leaf):
        name = match.group(1)
        return f"--{name}: no such option{_hint(f'--{name}', [f'--{k}' for k in keys])}"
    if match := _NO_ATTRIBUTE.search(leaf):
        module, name = match.groups()
        hint = _hint(name, _classes(module)).replace("mean '", f"mean '{module}.")
        return f"{where.removesuffix('.init_args')}: there is no class {module}.{name}{hint}"
    if not _EXPECTED.search(message) or _CLASS.search(message):
        return f"{where}: {leaf}" if where else leaf
    value = given[-1] if given else "?"
    return f"{where} {value}: expected {leaf}"
