"""Every error class the project raises on bad input or a failed run, in one place that imports nothing.

The CLI maps them to exit codes: a ``ConfigError`` (and its kinds) is bad input (2), ``CheckpointError`` a
runtime failure (1), ``NonFiniteLossError`` a diverged run (3), ``RetentionError`` a run stopped by its held-out
guard (4). Each message names the file, field or value.
"""



EXIT_PREEMPTED = 143  # the exit status of a run stopped by SIGTERM after saving (128 + 15), as shells report it
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT, 128 + 2): a one-process training run saves first

class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and the value."""


class DataError(ConfigError):
    """Bad input data; the message names the file and line."""


class TokenizerError(ConfigError):
    """A tokenizer file is missing, not a SentencePiece model, or inconsistent with another."""


class ChatError(ConfigError):
    """A conversation that cannot be trained on (no assistant turn, bad roles, empty content, too long)."""


class BenchmarkFileError(ConfigError):
    """A benchmark file with the wrong columns or a bad answer key; names the file, row and field."""


class ConversionError(ConfigError):
    """A checkpoint that cannot be converted; the message names the file, tensor or field."""


class WorkdirLocked(ConfigError):
    """Another live trainer holds the workdir."""


class WorkdirFileError(ConfigError):
    """A file a run keeps in its workdir (run.json, heldout_start.json, the lock, a data position) is damaged,
    outdated or another run's; the message names the file and the field."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or written; the message names the path."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; no checkpoint of that state was written."""


class RetentionError(RuntimeError):
    """A held-out language got worse than ``HeldoutWatch.max_rise`` allows (``action = 'stop'``); the state that
    shows it was saved first."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (libraries' errors run to pages), or its type's name. A message
    that is only an object's repr (tensorstore's errors can read ``<bound method pybind11_...>``) says nothing:
    the exception it came from (its cause or context) is asked instead."""
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip()
        if text and not (text.startswith("<") and (text.endswith(">") or text.startswith("<bound method"))):
            return text.splitlines()[0][:limit]
        current = current.__cause__ or current.__context__
    return type(e).__name__
