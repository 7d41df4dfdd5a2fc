"""A recipe run's numbers in one comparable record, and how two records differ.

``allam recipe --record_numbers FILE`` writes :func:`summarise` of the workdir (every run's held-out bits/byte at
each evaluated step, its multiple-choice accuracies, the DPO held-out preference numbers and the claims'
verdicts, with the library versions and the bundle's hashes that made them). The committed copy for the quick
recipe, ``benchmarks/results/recipe_quick.json``, is what ``tests/test_recipe.py`` compares CI's own quick run
with (:func:`differences`): a pin, a numerics or a bundle change that moves a number past the tolerance fails
there, naming the number, instead of leaving the documentation wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from allam_jax.core.paths import write_text_atomically

# bits/byte: relative; accuracies on 24 items: absolute, two items (one flips with the last digits of a score)
BPB_REL_TOL = 0.02
ACC_ABS_TOL = 2 / 24 + 1e-9


def summarise(workdir: str) -> dict:
    """The comparable numbers of a finished recipe workdir (``eval/results.json``, ``claims.json``)."""
    root = Path(workdir)
    results = json.loads((root / "eval" / "results.json").read_text(encoding="utf-8"))
    claims = json.loads((root / "claims.json").read_text(encoding="utf-8"))
    made = json.loads((root / "provenance.json").read_text(encoding="utf-8"))["runs"][-1]
    return {
        "bpb": {run: {_step_key(p): {k: round(v, 4) for k, v in p["bpb"].items()} for p in r["points"]}
                for run, r in sorted(results["runs"].items())},
        "acc_norm": {run: {task: round(m["acc_norm"], 4) for task, m in sorted(r["mc"].items())}
                     for run, r in sorted(results["runs"].items())},
        "dpo_heldout": {k: round(v, 4) for k, v in sorted(results.get("dpo_heldout", {}).items())
                        if isinstance(v, (int, float))},
        "verdicts": {c["claim"]: c["verdict"] for c in claims},
        "made_with": {"versions": made["versions"], "bundle": made["data"], "config": made["config"]},
    }


def _step_key(point: dict) -> str:
    """``STEP``, or ``STEP@stageK`` in the progressive arm (the last point of a stage and the first of the next, its
    expanded start, share a step)."""
    return str(point["step"]) + (f"@stage{point['stage']}" if "stage" in point else "")


def record(workdir: str, out: str) -> dict:
    numbers = summarise(workdir)
    write_text_atomically(out, json.dumps(numbers, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    return numbers


def differences(measured: dict, committed: dict) -> list[str]:
    """One line per number outside its tolerance, per verdict that changed, per run or step only one side has."""
    return list(_bpb_differences(measured["bpb"], committed["bpb"])) + list(
        _acc_differences(measured["acc_norm"], committed["acc_norm"])) + [
        f"verdict of '{claim}': {measured['verdicts'].get(claim)} (committed: {verdict})"
        for claim, verdict in committed["verdicts"].items() if measured["verdicts"].get(claim) != verdict]


def _bpb_differences(measured: dict, committed: dict) -> Iterator[str]:
    for run, steps in committed.items():
        for step, bpb in steps.items():
            for key, want in bpb.items():
                got = measured.get(run, {}).get(step, {}).get(key)
                if got is None or abs(got - want) > BPB_REL_TOL * abs(want):
                    yield f"bpb {run} step {step} {key}: {got} (committed {want}, tolerance {BPB_REL_TOL:.0%})"
    for run in sorted(set(measured) - set(committed)):
        yield f"bpb {run}: a run the committed numbers do not have"


def _acc_differences(measured: dict, committed: dict) -> Iterator[str]:
    for run, tasks in committed.items():
        for task, want in tasks.items():
            got = measured.get(run, {}).get(task)
            if got is None or abs(got - want) > ACC_ABS_TOL:
                yield f"acc_norm {run} {task}: {got} (committed {want}, tolerance +-{ACC_ABS_TOL:.3f})"


__all__ = ["ACC_ABS_TOL", "BPB_REL_TOL", "differences", "record", "summarise"]
