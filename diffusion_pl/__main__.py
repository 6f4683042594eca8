"""``python -m diffusion_pl`` and the ``diffusion-pl`` command.

The SIGTERM rule (:mod:`diffusion_pl.signals`) is in place before the command's imports (which
take seconds), so a signal at any moment after start ends with exit code 75.
"""

from diffusion_pl.signals import Preempted, preempted_exit, sigterm_rule


def main() -> None:
    """Install the SIGTERM rule, then import and run :func:`diffusion_pl.cli.main`."""
    with sigterm_rule():
        try:
            from diffusion_pl.cli import main as run
        except Preempted:
            raise preempted_exit("while starting: nothing was done") from None
        run()


if __name__ == "__main__":
    main()
