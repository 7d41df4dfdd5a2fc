"""Held-out bits per byte per language while training, and a guard against forgetting one of them.

Teaching a model Arabic risks its English; a run should see that as it happens, not after. Every ``every``
steps (and once before the first) the trainer scores a small held-out text per language with the current
parameters and logs ``heldout/en``, ``heldout/ar``, ... in bits per UTF-8 byte (comparable across tokenizers).
With ``max_rise`` set, the guarded language's value is compared with the run's starting value (kept in
``WORKDIR/heldout_start.json``, so a resumed run compares with the same start): past it, the run warns, or
saves and stops (``action = 'stop'``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from typing import Callable, Mapping, Optional

from allam_jax.checkpoint import workdir_files
from allam_jax.checkpoint.workdir import Workdir
from allam_jax.core.errors import ConfigError, RetentionError
from allam_jax.core.paths import write_text_atomically
from allam_jax.data.normalize import normalize_text
from allam_jax.data.text_files import first_bytes, read_documents
from allam_jax.eval.scorer import perplexity

log = logging.getLogger(__name__)

ACTIONS = ("warn", "stop")


@dataclasses.dataclass(frozen=True)
class HeldoutWatch:
    """gin: ``HeldoutWatch.paths = {'en': 'heldout/en.txt', 'ar': 'heldout/ar.txt'}``, ``HeldoutWatch.every = 50``;
    the guard: ``HeldoutWatch.max_rise = 0.05`` (5% above the start) and ``HeldoutWatch.action = 'stop'``."""

    paths: Mapping[str, str] = dataclasses.field(default_factory=dict)  # language -> .txt lines or .jsonl 'text'
    every: int = 0  # steps between evaluations (0: off)
    max_bytes: int = 16_000  # of each language's text, cut at a word
    guard: str = "en"  # the language whose rise is watched
    max_rise: float = 0.0  # relative rise over the starting value that trips the guard (0: no guard)
    action: str = "warn"

    def __post_init__(self):
        if not isinstance(self.paths, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                           for k, v in self.paths.items()):
            raise ConfigError(f"HeldoutWatch.paths must map a language to a file path, got {self.paths!r}")
        for name in ("every", "max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (name == "max_bytes" and not value):
                raise ConfigError(f"HeldoutWatch.{name} must be a {'non-negative' if name == 'every' else 'positive'} "
                                  f"integer, got {value!r}")
        if (isinstance(self.max_rise, bool) or not isinstance(self.max_rise, (int, float))
                or not math.isfinite(self.max_rise) or self.max_rise < 0):
            raise ConfigError(f"HeldoutWatch.max_rise must be a non-negative fraction (0.05 = 5%), got {self.max_rise!r}")
        if self.action not in ACTIONS:
            raise ConfigError(f"HeldoutWatch.action must be one of {ACTIONS}, got {self.action!r}")
        if self.max_rise and not self.every:
            raise ConfigError(f"HeldoutWatch.max_rise = {self.max_rise:g} but HeldoutWatch.every = 0: the guard would "
                              "never run; set HeldoutWatch.every (steps between held-out evaluations)")
        if self.action == "stop" and not self.max_rise:
            raise ConfigError("HeldoutWatch.action = 'stop' but HeldoutWatch.max_rise = 0: nothing would stop the run; "
                              "set max_rise (0.05 = 5% above the start)")
        if self.every and not self.paths:
            raise ConfigError("HeldoutWatch.every is set but HeldoutWatch.paths names no held-out file")
        if self.max_rise and self.guard not in self.paths:
            raise ConfigError(f"HeldoutWatch.guard = {self.guard!r} has no held-out file in HeldoutWatch.paths "
                              f"({sorted(self.paths)})")

    @property
    def enabled(self) -> bool:
        return bool(self.every)


def read_heldout(path: str, max_bytes: int) -> list[str]:
    """The file's documents, normalised as training text is, up to ``max_bytes`` UTF-8 bytes (the last cut at a
    word); a missing, empty or malformed file is one line naming it."""
    return first_bytes((normalize_text(text) for text, _ in read_documents(path)), max_bytes)


class Watcher:
    """Scores the held-out texts with a :class:`~allam_jax.eval.scorer.LoglikelihoodScorer` whose parameters the
    trainer swaps in (one extra compile, the scoring step) and applies the guard."""

    def __init__(self, cfg: HeldoutWatch, scorer, workdir: Workdir, is_main: bool):
        self.cfg, self.scorer, self.workdir, self.is_main = cfg, scorer, workdir, is_main
        self.documents = {lang: read_heldout(path, cfg.max_bytes) for lang, path in cfg.paths.items()}
        self.start: Optional[dict[str, float]] = workdir_files.read_heldout_start(workdir.root)

    def due(self, step: int) -> bool:
        return step % self.cfg.every == 0

    def evaluate(self, params) -> dict[str, float]:
        self.scorer.params = params
        try:
            return {lang: perplexity(self.scorer, docs)["bits_per_byte"] for lang, docs in self.documents.items()}
        finally:
            self.scorer.params = None  # the trainer donates these buffers to the next step

    def at_start(self, params, step: int) -> None:
        """The run's starting values (once per workdir: a resumed run keeps the first start). A language added
        to ``paths`` on a resume starts at the resumed step (said in a warning)."""
        missing = sorted(set(self.documents) - set(self.start or {}))
        if not missing:
            return
        values = self.evaluate(params)
        if self.start is None:
            self.start = values
            log.info("held-out bits/byte at step %d: %s", step, _fmt(self.start))
        else:
            added = {lang: values[lang] for lang in missing}
            log.warning("%s has no starting value for %s (added to HeldoutWatch.paths since the run began): their "
                        "start is step %d's, %s", self.workdir.heldout_start, ", ".join(missing), step, _fmt(added))
            self.start = {**self.start, **added}
        if self.is_main:
            write_text_atomically(self.workdir.heldout_start,
                                  json.dumps({"step": step, "bits_per_byte": self.start}) + "\n")

    def check(self, values: dict[str, float], step: int, stop: Callable[[], None]) -> None:
        """Warns, or calls ``stop`` (which saves) and raises :class:`RetentionError`, when the guarded language has
        risen more than ``max_rise`` over the start."""
        cfg = self.cfg
        if not cfg.max_rise or self.start is None or cfg.guard not in values:
            return
        before, now = self.start[cfg.guard], values[cfg.guard]
        rise = (now - before) / before
        if rise <= cfg.max_rise:
            return
        line = (f"{cfg.guard} held-out bits/byte rose {rise:.1%} above the run's start ({before:.4f} -> {now:.4f} at "
                f"step {step}), more than HeldoutWatch.max_rise = {cfg.max_rise:g}")
        if cfg.action == "warn":
            log.warning("%s", line)
            return
        stop()
        raise RetentionError(f"{line}; saved step {step} and stopped (HeldoutWatch.action = 'stop')")


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in values.items())


def metrics(values: dict[str, float]) -> dict[str, float]:
    return {f"heldout/{lang}": v for lang, v in values.items()}


__all__ = ["ACTIONS", "HeldoutWatch", "Watcher", "metrics", "read_heldout"]
