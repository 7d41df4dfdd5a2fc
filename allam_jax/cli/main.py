"""The ``allam`` command: one door in, a module per job family, one table of them (``COMMANDS``).

Exit codes: 0 done, 1 runtime failure (a checkpoint that cannot be read or saved), 2 bad input (gin binding,
value, missing file), 3 non-finite loss (``allam compile``: does not fit), 4 stopped by the held-out guard
(``HeldoutWatch.action = 'stop'``, after saving), 130 interrupted, 143 stopped by
SIGTERM (a training run saves first). Add a command: a module here with ``add_parsers(sub)`` that gives each
parser a ``handler``, and one line in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Optional, Sequence

from etils import epath

from allam_jax.cli import compile as compile_command
from allam_jax.cli import convert, data, dpo_reference
from allam_jax.cli import eval as eval_command
from allam_jax.cli import expand_checkpoint, generate, info, recipe, sweep, tokenizer, train
from allam_jax.cli.common import (EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_NONFINITE, EXIT_RETENTION, EXIT_RUNTIME,
                                  EXIT_TERMINATED, Terminated, raise_terminated)
from allam_jax.core import stderr_filter
from allam_jax.core.errors import CheckpointError, ConfigError, NonFiniteLossError, RetentionError, first_line
from allam_jax.core.hugepages import reexec_with_hugepages

# in the order `allam --help` lists them
COMMANDS = (recipe, sweep, train, info, compile_command, data, tokenizer, expand_checkpoint, dpo_reference, generate,
            eval_command, convert)


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors in one line (``allam: error: ...``, exit 2) pointing to ``--help``, like every
    other error of the command, instead of a usage block; sub-commands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"allam: error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="allam", description="allam-jax: Arabic-English LLM training the ALLaM way (JAX/Flax).",
        epilog="Environment: ALLAM_HUGEPAGES=0 stops the one-time restart with glibc's huge-page malloc "
        "(GLIBC_TUNABLES=glibc.malloc.hugetlb=1), which speeds up XLA on CPU; see docs/benchmarks.md.",
    )
    parser.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="Python logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parsers(sub)
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax", "fsspec", "gcsfs", "google", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_orbax = logging.getLogger().level > logging.DEBUG
    for handler in logging.getLogger().handlers:  # gin logs every search-path miss at ERROR level
        handler.addFilter(lambda record: "/gin/" not in record.pathname.replace("\\", "/"))
        # Apache Beam's import warns about Google Cloud client libraries no local pipeline uses
        handler.addFilter(lambda record: not str(record.msg).startswith("apitools not found"))
        # a failed save makes Orbax log pages of tracebacks from its threads; the trainer reports the failure in
        # one line (--log_level DEBUG shows them)
        handler.addFilter(lambda record: not (quiet_orbax and record.levelno < logging.CRITICAL and (
            "/orbax/" in record.pathname.replace("\\", "/")
            or (record.name == "asyncio" and "orbax" in record.getMessage()))))


def _quiet_closed_loop_callbacks() -> None:
    """When a checkpoint save fails, tensorstore's write callbacks still in flight land on Orbax's closed event
    loop, and Python prints each as an unraisable ``RuntimeError: Event loop is closed`` traceback (dozens of
    them around the one-line error). Those say nothing the error does not: drop them; anything else unraisable
    is printed as Python would."""
    default = sys.unraisablehook

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
            logging.getLogger(__name__).debug("dropped an unraisable %r", unraisable.exc_value)
            return
        default(unraisable)

    sys.unraisablehook = hook


def _os_error(e: OSError) -> str:
    """One line naming the path; a folder wanted where a file stands (a workdir given as a file's path) says so."""
    if isinstance(e, (FileExistsError, NotADirectoryError)) and e.filename:
        path = epath.Path(e.filename)
        blocking = next((p for p in (path, *path.parents) if p.is_file()), None)
        if blocking is not None:
            return f"{blocking} is a file, but a folder is needed there (for {e.filename}): give another path"
    text = (f"{e.strerror or type(e).__name__}: {e.filename or e}"
            + (f" -> {e.filename2}" if getattr(e, "filename2", None) else ""))
    return " ".join(text.split())  # TensorFlow's file system puts the path on a second line


def _library_error(e: BaseException) -> Optional[tuple[str, int]]:
    """One line and an exit code for the libraries' errors a user can meet without a bug: TensorFlow's file-system
    errors (``gs://`` through ``tf.io.gfile``: storage unreachable, no permission; not OSErrors) are bad input
    (2), like a missing file; the device running out of memory is a runtime failure (1). None otherwise."""
    names = {(c.__module__.split(".")[0], c.__name__) for c in type(e).__mro__}
    if ("tensorflow", "OpError") in names:
        return f"{type(e).__name__}: {' '.join(str(e).split())}", EXIT_BAD_INPUT
    runtime_errors = {("jaxlib", "XlaRuntimeError"), ("jax", "JaxRuntimeError"), ("jaxlib", "JaxRuntimeError")}
    if names & runtime_errors and "RESOURCE_EXHAUSTED" in str(e):
        return (f"out of memory: {first_line(e, 200)} (use fewer or smaller rows per step, more micro-batches or "
                "a larger mesh)"), EXIT_RUNTIME
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    if argv is None:  # a real command line (not a call from Python): huge-page malloc, C++ noise, SIGTERM message

        reexec_with_hugepages()
        stderr_filter.install()
        signal.signal(signal.SIGTERM, raise_terminated)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "beam_passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.beam_args = unknown  # `allam data cache` hands the options it does not know to Apache Beam
    _configure_logging(args.log_level)
    _quiet_closed_loop_callbacks()

    try:
        return args.handler(args)
    except (ConfigError, FileNotFoundError) as e:  # gin may append "In call to configurable ..." lines
        print(f"allam: error: {(str(e).splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CheckpointError as e:
        print(f"allam: error: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    except OSError as e:  # a workdir that is a file, a read-only folder, a full disk: the path is in the message
        print(f"allam: error: {_os_error(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except NonFiniteLossError as e:
        print(f"allam: error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except RetentionError as e:
        print(f"allam: error: {e}", file=sys.stderr)
        return EXIT_RETENTION
    except KeyboardInterrupt:
        print("allam: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        where = " before the first training step (nothing to save)" if args.command == "train" else ""
        print(f"allam: stopped by SIGTERM{where}", file=sys.stderr)
        return EXIT_TERMINATED
    except Exception as e:
        known = _library_error(e)
        if known is None:
            raise
        print(f"allam: error: {known[0]}", file=sys.stderr)
        return known[1]


if __name__ == "__main__":
    sys.exit(main())
