"""Silence TensorFlow's start-up chatter on machines where it means nothing.

seqio pulls in TensorFlow, whose C++ start-up writes to the process's stderr before any logging is set up
(``oneDNN custom operations are on``, ``Could not find cuda drivers``, a CPU-feature notice, and at its first
device probe ``failed call to cuInit``), twice over with tensorflow-text. On a CPU machine none of it is
actionable, and it buries our own messages. The first ``import tensorflow`` therefore runs with file
descriptor 2 pointed at a temporary file, together with TensorFlow's device probe; if the import fails, the
captured text is written back to stderr before the error propagates, so nothing real is lost.
``ALLAM_VERBOSE_STARTUP=1`` turns this off.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
import tempfile
from typing import Iterator

from allam_jax.core.stderr_filter import stderr_fds


@contextlib.contextmanager
def _stderr_captured() -> Iterator[None]:
    """fd 2 (and the real stderr's descriptor, where the ``allam`` command's stderr filter runs) goes to a temporary
    file; on an exception its text is written back to stderr."""
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in stderr_fds()}
    with tempfile.TemporaryFile() as tmp:
        for fd in saved:
            os.dup2(tmp.fileno(), fd)

        def restore() -> None:
            for fd, copy in saved.items():
                os.dup2(copy, fd)

        try:
            yield
        except BaseException:
            restore()
            tmp.seek(0)
            os.write(2, tmp.read())
            raise
        finally:
            restore()
            for copy in saved.values():
                os.close(copy)


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader, on_load=lambda: None):
        self._loader, self._on_load = loader, on_load

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._on_load()
        with _stderr_captured():
            self._loader.exec_module(module)
            try:
                module.config.list_physical_devices("GPU")  # TensorFlow's CUDA probe speaks here
            except Exception:  # noqa: BLE001 - a probe failure is TensorFlow's to report later, loudly
                pass


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of ``tensorflow`` until it is imported. A lookup that does not import (a library asking
    ``importlib.util.find_spec('tensorflow')`` whether TensorFlow is installed) must not use the finder up: it
    stays on ``sys.meta_path`` until the module exists."""

    _busy = False

    def find_spec(self, name, path, target=None):
        if name != "tensorflow" or self._busy:
            return None
        if "tensorflow" in sys.modules:
            self._leave()
            return None
        self._busy = True
        try:
            spec = importlib.util.find_spec(name)  # the real spec, from the other finders
        finally:
            self._busy = False
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader, self._leave)
        return spec

    def _leave(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def install() -> None:
    """Quiet the first ``import tensorflow`` of this process (no-op if it already happened or is opted out)."""
    if "tensorflow" in sys.modules or os.environ.get("ALLAM_VERBOSE_STARTUP", "") not in ("", "0"):
        return
    if not any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())
