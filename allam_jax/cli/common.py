"""What every command shares: exit codes, the gin flags, the SIGTERM-at-start-up exception."""

from __future__ import annotations

import argparse
import math
from typing import Callable

from allam_jax.core.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED

EXIT_OK, EXIT_RUNTIME, EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_TERMINATED = 0, 1, 2, 3, EXIT_PREEMPTED
EXIT_RETENTION = 4  # a run stopped by HeldoutWatch's guard (after saving)


class Terminated(Exception):
    """SIGTERM outside a training loop (which saves and exits on its own): stop, saying so."""


def raise_terminated(signum, frame) -> None:
    raise Terminated()


def _int_in(low: int, high: int, name: str, doc: str) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high) (argparse names ``name`` when the text is not an integer)."""
    def convert(text: str) -> int:
        value = int(text)
        if not low <= value < high:
            raise argparse.ArgumentTypeError(f"must be an integer in [{low}, 2**{high.bit_length() - 1}), got {text}")
        return value

    convert.__name__, convert.__doc__ = name, doc
    return convert


positive_int = _int_in(1, 2**31, "positive_int", "a count (a batch size); the device counts in int32")
non_negative_int = _int_in(0, 2**31, "non_negative_int", "a count that may be 0")
seed_int = _int_in(0, 2**32, "seed_int", "a random seed (what JAX's and NumPy's generators take)")


def fraction(text: str) -> float:
    """argparse type: a share in [0, 1)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def mesh_shape(text: str) -> str:
    """argparse type: a mesh shape '(data, fsdp, tensor)' of counts >= 1 (or -1: the rest), as gin writes it."""
    parts = text.strip().strip("()[]").split(",")
    try:
        dims = [int(p) for p in parts if p.strip()]
    except ValueError:
        dims = []
    if len(dims) != 3 or any(d == 0 or d < -1 for d in dims):
        raise argparse.ArgumentTypeError(f"must be a mesh shape like (1,8,1) (counts >= 1, -1 for the rest), "
                                         f"got {text!r}")
    return "(" + ", ".join(map(str, dims)) + ")"


def probability(text: str) -> float:
    """argparse type: a number in (0, 1] (nucleus sampling mass)."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


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
