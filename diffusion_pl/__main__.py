"""``python -m diffusion_pl`` is the ``diffusion-pl`` command."""

from diffusion_pl.cli import main

if __name__ == "__main__":
    main()
