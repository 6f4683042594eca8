"""One SIGTERM rule for the whole ``diffusion-pl`` process: whenever the signal comes, nothing
finished is lost, the state is printed, and the exit code is 75.

* **In Lightning's training loop** (from the Trainer's start to its teardown) Lightning's own
  handler is in place: it stops the loop at the end of the batch, and
  :class:`~diffusion_pl.callbacks.SigtermCheckpoint` writes ``last.ckpt``. A signal that comes
  while the loop is ending (its last validation, the final checkpoint) lets the run finish; the
  command then exits 75 as well.
* **Anywhere else** (importing, building the model and data, the final sample grid or FID of
  ``on_fit_end``, or any other command) the handler :func:`sigterm_rule` installs raises
  :class:`Preempted` at once. A ``fit`` interrupted that way has either not trained yet (run the
  same command again) or finished training with its final ``last.ckpt`` written (resuming it
  does nothing: the run is complete); another command has written nothing (run it again).

The exceptions: a signal during a checkpoint write leaves the previous checkpoint (writes are
atomic); under DDP the scheduler signals every rank, and a rank that is outside the loop stops
on its own (the others follow through the collective they then miss, or their own signal).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["EXIT_PREEMPTED", "Preempted", "preempted_exit", "sigterm_rule"]

EXIT_PREEMPTED = 75
"""Exit status after SIGTERM: ``EX_TEMPFAIL`` of sysexits.h, "temporary failure, retry";
configs/slurm/train.sbatch requeues the job on it."""


class Preempted(BaseException):
    """SIGTERM outside Lightning's training loop. A ``BaseException``, like ``SystemExit``, so
    that no ``except Exception`` on the way swallows it."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Raise :class:`Preempted`, unless Lightning's handler is the one installed (it calls
    this one too, and stops its loop itself)."""
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        raise Preempted


@contextmanager
def sigterm_rule() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Preempted` outside Lightning's training loop.

    Only the main thread can install a handler; elsewhere the block runs without one.
    """
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def preempted_exit(what: str) -> SystemExit:
    """Say on stderr that SIGTERM stopped ``what`` and how to go on; the exit to raise."""
    print(
        f"stopped by SIGTERM {what} (exit code {EXIT_PREEMPTED}); run the same command again",
        file=sys.stderr,
        flush=True,
    )
    return SystemExit(EXIT_PREEMPTED)
