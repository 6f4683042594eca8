"""The commands beside LightningCLI's fit/validate/test, one module each: ``sample``, ``fid``,
``likelihood``, ``reflow``, ``phema``, ``encode`` (each a typed function; jsonargparse builds
its options from the signature and its ``--help`` from the docstring)."""
