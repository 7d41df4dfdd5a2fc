"""The ``allam`` program's entry point (``python -m allam_jax`` too): restart with huge-page malloc first, then load
the command line. The restart (``core/hugepages.py``) replaces the process, so whatever was imported before it is
imported twice: ``import allam_jax`` loads no JAX, and the commands load after it (~2 s saved per command)."""

from __future__ import annotations

from allam_jax.core.hugepages import reexec_with_hugepages


def main() -> int:
    reexec_with_hugepages()
    from allam_jax.cli.main import main as run_command_line  # after the restart, once

    return run_command_line()
