"""The ``allam`` command line, a module per job family (see ``cli/main.py``)."""

from allam_jax.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
