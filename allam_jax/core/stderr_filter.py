"""Drop known meaningless lines that C++ libraries write straight to file descriptor 2.

TF-Text links its own SentencePiece, which logs ``normalizer.cc(51) LOG(INFO) precompiled_charsmap is empty. use
identity normalization.`` each time a tokenize op is built for a model without a normalization table (Llama-2's
and every tokenizer this project trains for it): twenty lines in the quick recipe, in the middle of progress bars.
Its log level is not reachable from Python, so the ``allam`` command runs its fd 2 through a filter: C++ writes go
into a pipe read by a small child process that forwards every line but the dropped ones to the real stderr, while
Python's ``sys.stderr`` (logging, tqdm's ``\\r`` updates, error lines) writes to the real stderr directly, unbuffered.
The filter is a process, not a thread, so a crash message written just before an abort still reaches the terminal
(the child forwards what is in the pipe, then sees end-of-file). ``ALLAM_VERBOSE_STARTUP=1`` turns it off.
"""

from __future__ import annotations

import atexit
import io
import os
import subprocess
import sys
from typing import Sequence

DROPPED = (b") LOG(INFO) precompiled_charsmap is empty",)
_python_fd: list[int] = []  # the real stderr's descriptor, which Python's sys.stderr writes to, once installed

# Runs with -S (no site-packages: ~10 ms); ignores the terminal's signals so Ctrl-C reaches the command, which
# still has its lines to write; exits when every writer of the pipe has closed it.
_CHILD = r"""
import os, signal, sys
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
drop = [os.fsencode(p) for p in sys.argv[1:]]
def emit(data):
    while data:
        data = data[os.write(1, data):]
rest = b""
while True:
    chunk = os.read(0, 1 << 16)
    if not chunk:
        break
    *lines, rest = (rest + chunk).split(b"\n")
    try:
        emit(b"".join(line + b"\n" for line in lines if not any(p in line for p in drop)))
    except OSError:
        pass
try:
    emit(rest)
except OSError:
    pass
"""


def stderr_fds() -> tuple[int, ...]:
    """Every descriptor this process's error output goes to: 2, and the real stderr's own once the filter runs.
    Code that captures stderr for a while (a noisy library's start-up, Beam's workers) redirects them all."""
    return (2, *_python_fd)


def install(dropped: Sequence[bytes] = DROPPED) -> bool:
    """Route fd 2 through the filter for the rest of this process; False if opted out or it could not start."""
    if os.environ.get("ALLAM_VERBOSE_STARTUP", "") not in ("", "0"):
        return False
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    try:
        child = subprocess.Popen([sys.executable, "-S", "-c", _CHILD, *(os.fsdecode(p) for p in dropped)],
                                 stdin=read_end, stdout=real, stderr=subprocess.DEVNULL, close_fds=True)
    except OSError:
        os.close(read_end), os.close(write_end), os.close(real)
        return False
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    encoding, errors = sys.stderr.encoding, sys.stderr.errors
    sys.stderr = io.TextIOWrapper(io.FileIO(real, "w", closefd=False), encoding=encoding, errors=errors,
                                  line_buffering=True, write_through=True)
    _python_fd.append(real)

    def drain() -> None:
        """Hand fd 2 back to the real stderr and let the child forward what is left before this process ends."""
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(real, 2)
        try:
            child.wait(timeout=2)  # a child process of ours that still holds the pipe keeps it open: do not wait
        except subprocess.TimeoutExpired:
            pass

    atexit.register(drain)
    return True
