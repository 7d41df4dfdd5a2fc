"""``allam sweep``: run gin variants of one experiment one after another, or print their commands.

A variants file has one section per variant, each holding gin bindings applied after the base files::

    [arabic_only]
    SeqioData.rates = {'ar_pretrain': 1.0}

    [no_translated]
    SeqioData.rates = {'en_pretrain': 0.5, 'ar_pretrain': 0.5}

Variant ``NAME`` trains in ``ROOT/NAME`` (so a re-run resumes or skips what finished). With
``--print_only`` the commands are printed instead, for local shells or, with ``--launcher``, as
``tpu_scripts/launch.sh`` calls on a TPU VM.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from typing import Callable, Optional, Sequence

from allam_jax.core.errors import ConfigError
from allam_jax.core.paths import as_path, write_text_atomically
from allam_jax.train.metrics import read_metrics

_SECTION = re.compile(r"^\[([A-Za-z0-9_.-]+)\]$")


def _depth(text: str) -> int:
    """Brackets still open at the end of ``text`` (quotes respected): a gin value continues on the next line."""
    depth, quote, escaped, comment = 0, None, False, False
    for ch in text:
        if comment:
            comment = ch != "\n"
        elif quote:
            escaped, quote = (not escaped and ch == "\\"), (None if ch == quote and not escaped else quote)
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            comment = True
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
    return depth


def read_variants(path: str) -> dict[str, list[str]]:
    """``{name: [binding, ...]}`` in file order; a binding may span lines while a bracket is open or a line ends
    in a backslash (gin's own continuation rules)."""
    p = as_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"variants file not found: {path}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start}); save the variants file as UTF-8") from None
    variants: dict[str, list[str]] = {}
    current: Optional[str] = None
    pending, pending_line = "", 0
    for line_no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if pending:  # the rest of a binding that spans lines
            pending += "\n" + raw
            if _depth(pending) <= 0 and not raw.rstrip().endswith("\\"):
                variants[current].append(pending)
                pending = ""
            continue
        if not line or line.startswith("#"):
            continue
        m = _SECTION.match(line)
        if m:
            current = m.group(1)
            if set(current) == {"."}:  # its workdir would be ROOT/.. or ROOT itself, outside the sweep's folders
                raise ConfigError(f"{path}:{line_no}: [{current}] cannot name a variant: a name becomes the "
                                  "folder ROOT/NAME; use letters, digits, '_', '-' or '.' with something else")
            if current in variants:
                raise ConfigError(f"{path}:{line_no}: variant [{current}] appears twice")
            variants[current] = []
        elif line.startswith("[") and line.endswith("]"):
            raise ConfigError(f"{path}:{line_no}: {line} cannot name a variant: a name becomes the folder ROOT/NAME; "
                              "use only letters, digits, '_', '-' and '.' (no spaces)")
        elif current is None:
            raise ConfigError(f"{path}:{line_no}: a binding before the first [variant] header")
        elif _depth(line) > 0 or line.endswith("\\"):
            pending, pending_line = line, line_no
        else:
            variants[current].append(line)
    if pending:
        raise ConfigError(f"{path}:{pending_line}: the binding that starts here never closes its brackets")
    if not variants:
        raise ConfigError(f"{path}: no [variant] sections")
    return variants


def train_command(gin_files: Sequence[str], bindings: Sequence[str], workdir: str) -> list[str]:
    return ([sys.executable, "-m", "allam_jax", "train"] + [f"--gin_file={f}" for f in gin_files]
            + [f"--workdir={workdir}"] + [f"--gin_bindings={b}" for b in bindings])


def launcher_command(launcher: str, gin_files: Sequence[str], bindings: Sequence[str], workdir: str) -> list[str]:
    if len(gin_files) != 1:
        raise ConfigError("--launcher takes exactly one --gin_file (tpu_scripts/launch.sh passes one)")
    try:
        cmd = shlex.split(launcher)
    except ValueError as e:  # an unbalanced quote
        raise ConfigError(f"--launcher {launcher!r} cannot be split into words: {e}") from None
    cmd += ["--gin_file", gin_files[0], "--workdir", workdir]
    for b in bindings:
        cmd += ["--gin_bindings", b]
    return cmd


def last_metrics(workdir: str) -> dict:
    try:  # a run that logged nothing yet has no metrics (on a bucket a live run has only metrics.parts/)
        rows = read_metrics(str(workdir))
    except FileNotFoundError:
        rows = []
    return rows[-1] if rows else {}


Runner = Callable[[Sequence[str], Sequence[str], str], int]


def subprocess_runner(gin_files: Sequence[str], bindings: Sequence[str], workdir: str) -> int:
    """Each variant in its own ``allam train`` process (the default: a crash loses one variant only)."""
    return subprocess.run(train_command(gin_files, bindings, workdir)).returncode


def run_sweep(gin_files: Sequence[str], variants: dict[str, list[str]], root: str, common: Sequence[str] = (),
              print_only: bool = False, launcher: Optional[str] = None, only: Sequence[str] = (),
              runner: Runner = subprocess_runner) -> list[dict]:
    """Runs (or prints) each variant; returns ``{variant, workdir, returncode, metrics}`` rows.

    ``runner(gin_files, bindings, workdir) -> exit code`` trains one variant (``allam recipe`` passes an
    in-process runner, which saves the start-up of a process per variant)."""
    unknown = [v for v in only if v not in variants]
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; the file defines {list(variants)}")
    rows = []
    for name, bindings in variants.items():
        if only and name not in only:
            continue
        workdir = f"{root.rstrip('/')}/{name}"
        all_bindings = list(common) + bindings
        if launcher:
            cmd = launcher_command(launcher, gin_files, all_bindings, workdir)
        else:
            cmd = train_command(gin_files, all_bindings, workdir)
        if print_only or launcher:
            print(shlex.join(cmd))
            rows.append({"variant": name, "workdir": workdir, "command": cmd})
            continue
        print(f"== variant {name}: {workdir}", flush=True)
        code = runner(gin_files, all_bindings, workdir)
        rows.append({"variant": name, "workdir": workdir, "returncode": code,
                     "metrics": last_metrics(workdir)})
        if code != 0:
            print(f"variant {name} failed with exit code {code}; going on with the next", file=sys.stderr)
    return rows


def summary_table(rows: list[dict]) -> str:
    keys = ["loss", "loss/en", "loss/ar", "loss/translated"]
    lines = ["| variant | exit | step | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for r in rows:
        m = r.get("metrics", {})
        vals = [f"{m[k]:.4f}" if isinstance(m.get(k), (int, float)) else "-" for k in keys]
        lines.append(f"| {r['variant']} | {r.get('returncode', '-')} | {m.get('step', '-')} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def write_summary(rows: list[dict], root: str) -> None:
    write_text_atomically(as_path(root) / "sweep.json", json.dumps(rows, indent=2) + "\n")
    write_text_atomically(as_path(root) / "sweep.md", summary_table(rows) + "\n")
