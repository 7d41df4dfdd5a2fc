"""``allam compile --search``: compile a config's variants (remat policy x micro-batches x logits chunk x mesh x
attention backward kernel) for a slice and rank those that fit, by the estimated step time.

MaxText's estimator searches remat x batch for *fit*; what a user wants is the *fastest* config that fits with
room to spare, so each variant is compiled for real (memory from the compiler, time from ``aot.step_time``).
For each remat policy, logits chunk and mesh, micro-batch counts are tried from fewest up and the first that
fits ends that line: with FSDP more micro-batches gather the weights more often for the same FLOPs, so they are
not faster.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from typing import Callable, Optional, Sequence

from allam_jax import gin_setup
from allam_jax.aot.dry_run import compile_step
from allam_jax.aot.table import mfu_text, seconds_text
from allam_jax.aot.topology import GIB, Topology
from allam_jax.core.errors import ConfigError

DEFAULT_REMAT = ("none", "dots_no_batch", "dots", "full")
DEFAULT_GRAD_ACCUM = (1, 2, 4, 8)
DEFAULT_LOGITS_CHUNK = (0, 1024)
DEFAULT_ATTENTION_BACKWARD = ("fused", "separate")  # splash's backward: one kernel or two (pallas attention only)


@dataclasses.dataclass
class Candidate:
    bindings: tuple[str, ...]
    report: Optional[object] = None  # dry_run.CompileReport
    error: Optional[str] = None  # the config is invalid (a batch that does not split, say)
    within_budget: bool = False

    @property
    def step_seconds(self) -> Optional[float]:
        if self.report is None or not self.report.estimate:
            return None
        return self.report.estimate["step_seconds"]


def variants(remat: Sequence[str], grad_accum: Sequence[int], logits_chunk: Sequence[int],
             meshes: Sequence[str], backward: Sequence[str] = ("fused",)) -> list[list[tuple[str, ...]]]:
    """Lines of bindings, one line per (remat, chunk, mesh, backward kernel), micro-batch counts ascending along
    each line."""
    lines = []
    for policy, chunk, mesh, bwd in itertools.product(remat, logits_chunk, meshes or (None,), backward or (None,)):
        fixed = (f"ModelConfig.remat_policy = '{policy}'", f"StepConfig.logits_chunk_size = {chunk}")
        if mesh is not None:
            fixed += (f"PartitioningConfig.mesh_shape = {mesh}",)
        if bwd is not None:
            fixed += (f"ModelConfig.attention_backward = '{bwd}'",)
        lines.append([fixed + (f"TrainerConfig.grad_accum_steps = {g}",) for g in sorted(grad_accum)])
    return lines


def search(gin_files: Sequence[str], gin_bindings: Sequence[str], topology: Topology, *,
           remat: Sequence[str] = DEFAULT_REMAT, grad_accum: Sequence[int] = DEFAULT_GRAD_ACCUM,
           logits_chunk: Sequence[int] = DEFAULT_LOGITS_CHUNK, meshes: Sequence[str] = (), headroom: float = 0.1,
           backward: Sequence[str] = DEFAULT_ATTENTION_BACKWARD,
           log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> list[Candidate]:
    """Every variant compiled (see the module docstring), ranked: within budget by estimated step time, then the
    rest by memory. ``headroom`` is the share of the chip's memory left free (0.1: use at most 90%). The backward
    kernels are varied only when the config runs pallas attention (no other implementation has them)."""
    if not 0 <= headroom < 1:
        raise ConfigError(f"--headroom must be in [0, 1), got {headroom}")
    gin_setup.parse(gin_files, list(gin_bindings))
    if gin_setup.model_config().attention_impl != "pallas":
        backward = ()
    lines = variants(remat, grad_accum, logits_chunk, meshes, backward)
    total = sum(len(line) for line in lines)
    done, found = 0, []
    start = time.perf_counter()
    for line in lines:
        for bindings in line:
            done += 1
            cand = Candidate(bindings)
            found.append(cand)
            try:
                gin_setup.parse(gin_files, list(gin_bindings) + list(bindings))
                cand.report = compile_step(gin_setup.build_experiment(), topology)
            except ConfigError as e:
                cand.error = str(e).splitlines()[0]
            if cand.report is not None:
                r = cand.report
                budget = (1 - headroom) * r.hbm_bytes
                cand.within_budget = bool(r.fits and r.required_bytes is not None and r.required_bytes <= budget)
            log(f"[{done}/{total} {time.perf_counter() - start:.0f}s] {_short(bindings)}: {_verdict(cand)}")
            if cand.within_budget:
                break
    return rank(found)


def rank(found: list[Candidate]) -> list[Candidate]:
    fitting = sorted((c for c in found if c.within_budget),
                     key=lambda c: (c.step_seconds is None, c.step_seconds or 0.0, c.report.required_bytes))
    rest = sorted((c for c in found if not c.within_budget),
                  key=lambda c: (c.report is None, (c.report.required_bytes or float("inf")) if c.report else 0))
    return fitting + rest


def _short(bindings: Sequence[str]) -> str:
    return ", ".join(b.split(".", 1)[1].replace(" ", "") for b in bindings)


def _verdict(c: Candidate) -> str:
    if c.error:
        return f"invalid ({c.error})"
    r = c.report
    mem = "?" if r.required_bytes is None else f"{r.required_bytes / GIB:.2f} GiB"
    if not c.within_budget:
        return f"{mem}: " + ("over the headroom" if r.fits else "does not fit")
    t = c.step_seconds
    return f"{mem}, " + (f"{seconds_text(t)} (est.), {mfu_text(r.estimated_mfu, r.estimated_mfu_causal)}" if t
                         else "no time estimate (not a TPU)")


def format_search(found: list[Candidate], headroom: float) -> str:
    rows = [("rank", "variant", "memory/chip", "step (est.)", "MFU PaLM/causal (est.)", "verdict")]
    for i, c in enumerate(found, 1):
        r = c.report
        mem = "-" if r is None or r.required_bytes is None else f"{r.required_bytes / GIB:.2f} GiB"
        t = c.step_seconds
        rows.append((str(i) if c.within_budget else "-", _short(c.bindings), mem,
                     seconds_text(t) if t else "-",
                     f"{r.estimated_mfu:.1%} / {r.estimated_mfu_causal:.1%}" if t else "-",
                     "fits" if c.within_budget else ("invalid: " + c.error if c.error else
                                                     "over the headroom" if r.fits else "does not fit")))
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    text = "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)
    best = next((c for c in found if c.within_budget), None)
    unpriced = max([(c.report.estimate or {}).get("unpriced_kernels", 0) for c in found if c.report], default=0)
    if unpriced:
        text = (f"WARNING: variants have up to {unpriced} kernel calls per step without a FLOP count: their estimated "
                "step times are too short\n" + text)
    notes = {c.report.calibration_note for c in found if c.report and c.report.calibration_note}
    if notes:
        text += "\n\nStep times and MFU are estimates from the compiled HLO: " + "; ".join(sorted(notes)) + "."
    if best is None:
        return text + f"\n\nNothing fits in {1 - headroom:.0%} of the chip's memory: try more micro-batches " \
                      "(--search_grad_accum), a larger slice or more tensor parallelism (--search_mesh)."
    flags = " ".join(f'--gin_bindings="{b}"' for b in best.bindings)
    return (text + f"\n\nFastest within {1 - headroom:.0%} of the chip's memory: {_short(best.bindings)}\n"
            "Its gin bindings:\n" + "\n".join(f"  {b}" for b in best.bindings) + f"\nOn the command line: {flags}")
