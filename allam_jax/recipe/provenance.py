"""What made a recipe workdir: the code (a hash of the package's sources and gin files), the recipe's settings,
the bundled data it read (a hash per file) and the library versions. ``WORKDIR/provenance.json`` lists one entry
per ``allam recipe`` call that ran a stage, with the stages it ran, so a report can be traced to what produced
it, and a run can be recognised as made by the same code, settings and data (the tests reuse CI's own quick
run that way instead of repeating it)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any, Optional, Sequence

from allam_jax.core.paths import write_text_atomically
from allam_jax.data.corpora import sha256_of
from allam_jax.recipe.config import RecipeConfig

FILE = "provenance.json"
PACKAGE = Path(__file__).resolve().parents[1]
GIN_DIR = PACKAGE.parent / "gin_configs"
VERSIONS = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "seqio", "sentencepiece", "tokenizers",
            "tensorflow", "numpy")


def _digest(files: Sequence[Path], root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def code_hash() -> str:
    """sha256 of every Python file of the package and every gin file (paths and bytes)."""
    files = [*PACKAGE.rglob("*.py"), *(GIN_DIR.rglob("*") if GIN_DIR.is_dir() else ())]
    return _digest([f for f in files if f.is_file() and "__pycache__" not in f.parts], PACKAGE.parent)


INPUTS = ("en.txt", "ar.txt", "parallel.jsonl")  # what the data stage reads from the bundled directory


def data_hashes(bundled_dir: str) -> dict[str, Optional[str]]:
    """sha256 of each bundled file the recipe reads (None: missing)."""
    files = {name: Path(bundled_dir) / name for name in INPUTS}
    return {name: sha256_of(f) if f.is_file() else None for name, f in files.items()}


def _versions() -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {}
    for name in VERSIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def describe(cfg: RecipeConfig) -> dict[str, Any]:
    """This process's code, settings (where the bundle lies is left out: its contents count), data and versions."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "bundled_dir"}
    return {"code": code_hash(), "config": json.loads(json.dumps(settings, default=str)),
            "data": data_hashes(cfg.bundled_dir), "versions": _versions()}


def read(workdir: Path) -> list[dict]:
    path = Path(workdir) / FILE
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["runs"]
    except (ValueError, KeyError, TypeError):
        return []
    return entries if isinstance(entries, list) else []


def record(workdir: Path, cfg: RecipeConfig, stages: Sequence[str]) -> None:
    """Adds this call's entry (the stages it ran) to ``WORKDIR/provenance.json``."""
    entries = read(workdir) + [dict(describe(cfg), stages=list(stages))]
    write_text_atomically(Path(workdir) / FILE, json.dumps({"runs": entries}, indent=2) + "\n")


def made_by(workdir: Path, cfg: RecipeConfig, stages: Sequence[str]) -> bool:
    """Whether one call with this code, settings, data and versions ran every one of ``stages`` in ``workdir``."""
    entries = read(workdir)
    return len(entries) == 1 and entries[0].pop("stages", None) == list(stages) and entries[0] == describe(cfg)
