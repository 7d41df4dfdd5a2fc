"""What every command shares: exit codes, the gin flags, the SIGTERM-at-start-up exception."""

from __future__ import annotations

import argparse

EXIT_OK, EXIT_RUNTIME, EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 130, 143


class Terminated(Exception):
    """SIGTERM outside a training loop (which saves and exits on its own): stop, saying so."""


def raise_terminated(signum, frame) -> None:
    raise Terminated()


def add_gin_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--gin_file", action="append", default=[], required=required, metavar="FILE",
        help="gin config file; repeatable, later files override earlier ones. Relative paths are also looked "
        "up under the repository's gin_configs/ (e.g. runs/tiny_cpu.gin)",
    )
    p.add_argument(
        "--gin_bindings", action="append", default=[], metavar="BINDING",
        help="one gin binding such as 'TrainerConfig.num_steps = 50'; repeatable, applied after the files",
    )


def add_checkpoint_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint dir (newest step used), step dir or its state dir")
