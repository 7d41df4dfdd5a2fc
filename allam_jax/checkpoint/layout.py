"""The step-directory layout every checkpoint reader shares: ``DIR/<step>/state`` (ours) or ``.../default`` (an
emergency checkpoint's persistent step), the newest readable step first, and the one shape check."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, TypeVar

from etils import epath

from allam_jax.core.errors import CheckpointError, first_line
from allam_jax.core.paths import as_path
from allam_jax.core.trees import leaf_shapes

T, R = TypeVar("T"), TypeVar("R")

STATE_ITEMS = ("state", "default")  # a step's train state: ours, or an emergency checkpoint's persistent step


def state_item(step_dir: epath.Path) -> Optional[epath.Path]:
    return next((step_dir / name for name in STATE_ITEMS if (step_dir / name).is_dir()), None)


def state_dirs(path: str) -> list[epath.Path]:
    """The state directories ``path`` may mean, best first: itself (a step's ``state`` item), its ``state`` (a
    step directory; ``default`` in an emergency checkpoint's), or every complete step of a checkpoint directory,
    newest first."""
    p = as_path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if (p / "_METADATA").exists() or (p / "_sharding").exists() or (p / "manifest.ocdbt").exists():
        return [p]
    if state_item(p) is not None:
        return [state_item(p)]
    steps = sorted((int(c.name) for c in p.iterdir() if c.name.isdigit() and state_item(c) is not None),
                   reverse=True)
    if not steps:
        raise CheckpointError(f"no complete checkpoint step under {path}")
    return [state_item(p / str(step)) for step in steps]


def resolve_state_dir(path: str) -> epath.Path:
    """Accepts a checkpoint directory (newest step used), a step directory, or its ``state`` item."""
    return state_dirs(path)[0]


def newest_readable(candidates: Sequence[T], read: Callable[[T], R],
                    on_unreadable: Callable[[T, str], None] = lambda c, why: None) -> tuple[Optional[T], Optional[R],
                                                                                            list[str]]:
    """The one fallback of every checkpoint reader (resume, parameters, export): ``read`` each candidate step,
    newest first, and return the first that reads, with the failures before it. A step that cannot be read
    (a truncated file, a half-written step) is passed to ``on_unreadable`` and the next tried; a
    :class:`CheckpointError` (a step written under another config) is an error to report, not a reason to
    fall back, and propagates."""
    failures: list[str] = []
    for candidate in candidates:
        try:
            return candidate, read(candidate), failures
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many kinds; the first line says which file
            why = first_line(e, 200)
            failures.append(f"{candidate}: {why}")
            on_unreadable(candidate, why)
    return None, None, failures


def first_mismatch(on_disk: Any, abstract: Any) -> Optional[tuple[str, Any, Any]]:
    """``(leaf name, shape on disk, shape wanted)`` of the first leaf that differs (parameters first), else
    None: the one shape check of every checkpoint reader (resume, parameters, export)."""
    saved, wanted = leaf_shapes(on_disk), leaf_shapes(abstract)
    names = sorted(set(saved) | set(wanted), key=lambda n: (not n.startswith("['params']"), n))
    for name in names:
        if saved.get(name) != wanted.get(name):
            return name, saved.get(name, "missing"), wanted.get(name, "absent")
    return None
