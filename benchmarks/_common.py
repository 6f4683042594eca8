"""What the benchmark scripts share: the machine they ran on and their Markdown / JSON output."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from diffusion_pl.markdown import markdown_table

__all__ = ["ROOT", "command_line", "machine", "markdown_table", "report_header", "write_results"]

ROOT = Path(__file__).resolve().parents[1]


def command_line(script: str, argv: list[str] | None) -> str:
    """How to re-run ``benchmarks/<script>`` with ``argv`` (default: this process's arguments)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join([f"python benchmarks/{script}", *args])


def run_record(script: str, argv: list[str] | None, args: argparse.Namespace) -> dict:
    """The opening keys of a benchmark's results: its ``command``, the ``machine`` it ran on
    (``args.device``) and every parsed option as ``settings`` (paths as strings)."""
    return {
        "command": command_line(script, argv),
        "machine": machine(args.device),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }


def machine(device: str = "cpu") -> dict:
    """Where and with what a benchmark ran: date, CPU or GPU name, torch version and threads."""
    name = torch.cuda.get_device_name() if device.startswith("cuda") else _cpu_name()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def _cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def report_header(title: str, results: dict, details: str) -> list[str]:
    """A report's opening lines: the title, the command, then where it ran and ``details``."""
    m = results["machine"]
    return [
        f"## {title}",
        "",
        f"`{results['command']}`",
        "",
        f"{m['date']}, {m['device']}, torch {m['torch']}, torch threads: {m['threads']}. "
        + details,
        "",
    ]


def write_results(out: Path, results: dict, markdown: str) -> None:
    """Write ``out`` (JSON) and the Markdown report beside it (``.md``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown + "\n")


def shown(value: object, form: str = "{}") -> str:
    """A table cell: ``value`` in ``form``, or — where there is none."""
    return "—" if value is None else form.format(value)
