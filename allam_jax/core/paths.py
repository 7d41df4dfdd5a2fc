"""One path type for every user-given file or folder: ``etils.epath`` (what Orbax uses), so ``gs://`` works
wherever a local path does. Local paths are made absolute (a run's record names where it wrote); remote ones
are kept as given. ``pathlib`` stays for the repository's own files (gin_configs/)."""

from __future__ import annotations

import contextlib
import os
from typing import IO, Iterator, Union

from etils import epath

PathLike = Union[str, os.PathLike]


def is_remote(path: PathLike) -> bool:
    """``gs://``, ``s3://`` and friends: object stores, where a 'folder' is a name prefix."""
    return "://" in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
    """The epath of a user-given path; local ones absolute."""
    p = epath.Path(path)
    return p if is_remote(path) else epath.Path(os.path.abspath(os.fspath(path)))


def write_bytes_atomically(path: PathLike, data: bytes) -> None:
    """A whole file or none (see :func:`open_atomically`)."""
    with open_atomically(path, binary=True) as f:
        f.write(data)


def write_text_atomically(path: PathLike, text: str) -> None:
    write_bytes_atomically(path, text.encode("utf-8"))


@contextlib.contextmanager
def open_atomically(path: PathLike, binary: bool = False) -> Iterator[IO]:
    """A file (UTF-8 text, or bytes) written as a stream, whole or not at all: locally beside the target then
    renamed (nothing renamed if the writer raises); on an object store straight to the object (an upload appears
    only when it is closed; a rename there is a copy and a delete)."""
    p = as_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    mode, encoding = ("wb", None) if binary else ("w", "utf-8")
    if is_remote(path):
        with p.open(mode, encoding=encoding) as f:
            yield f
        return
    tmp = p.parent / f".{p.name}.tmp{os.getpid()}"
    try:
        with tmp.open(mode, encoding=encoding) as f:
            yield f
        tmp.replace(p)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def staged_dir(out: PathLike) -> Iterator[epath.Path]:
    """The folder to write an output directory into, all or nothing: locally a sibling renamed to ``out`` on
    success and removed on failure; on an object store (no directory rename) ``out`` itself, so the caller
    writes its completion marker last."""
    out_path = as_path(out)
    target = out_path if is_remote(out) else out_path.parent / f"{out_path.name}.tmp{os.getpid()}"
    target.mkdir(parents=True, exist_ok=True)
    try:
        yield target
        if target != out_path:
            target.rename(out_path)
    except BaseException:
        if target != out_path and target.exists():
            target.rmtree()
        raise


def glob(pattern: str) -> list[str]:
    """The files a pattern matches (``*``, ``?``, ``[...]``, ``**``), local or ``gs://``, sorted; a pattern
    without wildcards is itself when it exists. Matching nothing gives ``[]`` (callers name the pattern)."""
    first = min((i for i, c in enumerate(pattern) if c in "*?["), default=-1)
    if first < 0:
        return [pattern] if as_path(pattern).exists() else []
    cut = pattern.rfind("/", 0, first)
    base, rest = (pattern[:cut] or "/", pattern[cut + 1:]) if cut >= 0 else (".", pattern)
    if not as_path(base).is_dir():
        return []
    found = sorted(str(p) for p in as_path(base).glob(rest) if p.is_file())
    return found if is_remote(pattern) or os.path.isabs(pattern) else [os.path.relpath(p) for p in found]
