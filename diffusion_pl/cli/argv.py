"""Rewriting a command line before jsonargparse reads it: what it cannot parse as typed."""

from __future__ import annotations

import json

__all__ = [
    "REPEATED",
    "SPACED_LISTS",
    "command_args",
    "encode_option",
    "gather_list",
    "gather_repeated",
]


def encode_option(arg: str) -> str:
    """``encode``'s ``--config X`` (or ``--config=X``) as ``--data_config``; others unchanged."""
    if arg == "--config" or arg.startswith("--config="):
        return "--data_config" + arg.removeprefix("--config")
    return arg


SPACED_LISTS = {"phema": ("--sigma_rel",)}
"""List options that may also be given as space-separated values (``--sigma_rel 0.05 0.1``)."""


def gather_list(args: list[str], option: str) -> list[str]:
    """``OPTION a b c`` as ``OPTION [a,b,c]``, the one list value jsonargparse parses.

    A value already in brackets (``[0.05,0.1]``) is left as it is.
    """
    if option not in args:
        return args
    start = end = args.index(option) + 1
    while end < len(args) and not args[end].startswith("--"):
        end += 1
    values = args[start:end]
    if not values or values[0].lstrip().startswith("["):
        return args
    return [*args[:start], f"[{','.join(values)}]", *args[end:]]


REPEATED = {"sample": ("--lora",), "fid": ("--lora",), "lora": ("--lora",)}
"""List options given once per value (``--lora a.pt --lora b.pt:0.5``)."""


def gather_repeated(args: list[str], option: str) -> list[str]:
    """Every ``OPTION value`` (or ``OPTION=value``) of ``args`` as one ``OPTION [v1,v2,…]`` where
    the first one was, each value a quoted string; a value in brackets is left a list as it is.
    """
    values, out, first = [], [], None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == option and i + 1 < len(args):
            values.append(args[i + 1])
            i += 2
        elif arg.startswith(f"{option}="):
            values.append(arg.split("=", 1)[1])
            i += 1
        else:
            out.append(arg)
            i += 1
            continue
        first = len(out) if first is None else first
    if first is None or any(v.lstrip().startswith("[") for v in values):
        return args
    return [*out[:first], option, json.dumps(values), *out[first:]]


def command_args(name: str, args: list[str]) -> list[str]:
    """The options ``args`` of the command ``name`` as jsonargparse parses them: spaced lists
    gathered (:data:`SPACED_LISTS`), repeated options joined (:data:`REPEATED`), and
    ``encode``'s ``--config`` renamed (it is the fit config to encode, not the command's own
    options)."""
    for option in SPACED_LISTS.get(name, ()):
        args = gather_list(args, option)
    for option in REPEATED.get(name, ()):
        args = gather_repeated(args, option)
    if name == "encode":
        args = [encode_option(a) for a in args]
    return args
