"""Numbers read from a compiled program's HLO text: collectives by kind and bytes per step.

A scanned layer stack is one ``while`` loop whose body holds each layer's collectives once; XLA writes the
loop's trip count (``known_trip_count``) on the ``while``, so every computation gets a multiplier (how many
times one step runs it) and the totals are per step, not per line of HLO.
"""

from __future__ import annotations

import collections
import math
import re
from typing import Optional, Sequence

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2,
          "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_CALLEES = re.compile(r"\b(body|condition|to_apply|calls|branch_computations|called_computations)=\{?([^}\s,]+(?:,\s*%[\w.\-]+)*)\}?")
_OP_NAME = re.compile(r'op_name="([^"]+)"')
_NEW_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def array_bytes(type_text: str) -> list[float]:
    """Bytes of each array named in an HLO type (``f32[4,8]``, or a tuple of them), in order."""
    out = []
    for dtype, dims in _ARRAY.findall(type_text):
        if dtype not in _BYTES:
            continue
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        out.append(n * _BYTES[dtype])
    return out


def computations(hlo: str) -> tuple[dict[str, list[str]], str]:
    """``({computation name: its instructions, one string each}, entry computation name)``."""
    comps: dict[str, list[str]] = {}
    entry, current = "", None
    for line in hlo.splitlines():
        m = _COMPUTATION.match(line.strip()) if current is None else None
        if m:
            current = m.group(2)
            comps[current] = []
            if m.group(1):
                entry = current
            continue
        if current is not None:
            if line.strip() == "}":
                current = None
            elif _NEW_INSTRUCTION.match(line) or not comps[current]:
                comps[current].append(line)
            else:  # a continuation: attributes (a kernel's metadata, say) may hold newlines
                comps[current][-1] += " " + line.strip()
    return comps, entry


def _trip_count(line: str, comps: dict[str, list[str]], caller: Sequence[str] = ()) -> int:
    """A ``while``'s trip count: XLA's ``known_trip_count`` (CPU, GPU), else from its condition ``counter <
    constant`` (what the TPU compiler leaves of a scan), the counter's step in the body (a windowed einsum's loop,
    unrolled twice, adds 2) and its start in the loop's initial tuple (``caller``'s lines); 1 for anything else."""
    if " while(" not in line:
        return 1
    known = _TRIP.search(line)
    if known:
        return int(known.group(1))
    cond = re.search(r"condition=%?([\w.\-]+)", line)
    cond_lines = comps.get(cond.group(1), []) if cond else []
    if not any("direction=LT" in ln for ln in cond_lines):
        return 1
    bounds = [int(c) for ln in cond_lines for c in re.findall(r"[su](?:32|64)\[\]\S*\s+constant\((\d+)\)", ln)]
    if len(bounds) != 1:
        return 1
    index = next((int(m.group(1)) for ln in cond_lines for m in [_GTE_INDEX.search(ln)] if m), None)
    body = re.search(r"body=%?([\w.\-]+)", line)
    step = _counter_step(comps.get(body.group(1), []) if body else [], index)
    start = _counter_start(line, caller, index)
    return max(0, math.ceil((bounds[0] - start) / step))


_GTE_INDEX = re.compile(r"get-tuple-element\([^)]*\),\s*index=(\d+)")
_ANY_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.+?\s([a-z][\w\-]*)\((.*)$")


def _definitions(lines: Sequence[str]) -> dict[str, tuple[str, list[str], str]]:
    """name -> (opcode, operand names, line) for a computation's instructions."""
    out = {}
    for ln in lines:
        m = _ANY_DEF.match(ln)
        if m:
            out[m.group(1)] = (m.group(2), re.findall(r"%([\w.\-]+)", m.group(3).split(")", 1)[0]), ln)
    return out


def _counter_step(body: Sequence[str], index: Optional[int]) -> int:
    """What the loop body adds to the counter at tuple ``index``: the constant of the ``add`` its ROOT tuple puts
    there (1 when that is not what it finds)."""
    if index is None:
        return 1
    defs = _definitions(body)
    root = next((ln for ln in body if ln.lstrip().startswith("ROOT") and " tuple(" in ln), None)
    if root is None:
        return 1
    operands = re.findall(r"%([\w.\-]+)", root.split(" tuple(", 1)[1].split(")", 1)[0])
    if index >= len(operands) or operands[index] not in defs:
        return 1
    opcode, args, _ = defs[operands[index]]
    if opcode != "add":
        return 1
    for a in args:
        if a in defs and defs[a][0] == "constant":
            value = re.search(r"constant\((\d+)\)", defs[a][2])
            if value and int(value.group(1)) > 0:
                return int(value.group(1))
    return 1


def _counter_start(line: str, caller: Sequence[str], index: Optional[int]) -> int:
    """The counter's initial value: a constant at ``index`` of the tuple the ``while`` starts from (else 0)."""
    init = re.search(r"\swhile\(%([\w.\-]+)", line)
    if index is None or not init or not caller:
        return 0
    defs = _definitions(caller)
    if init.group(1) not in defs or defs[init.group(1)][0] != "tuple":
        return 0
    operands = defs[init.group(1)][1]
    if index >= len(operands) or operands[index] not in defs or defs[operands[index]][0] != "constant":
        return 0
    value = re.search(r"constant\((\d+)\)", defs[operands[index]][2])
    return int(value.group(1)) if value else 0


def multipliers(comps: dict[str, list[str]], entry: str) -> dict[str, int]:
    """How many times one run of ``entry`` runs each computation (while bodies times their trip counts)."""
    callers: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    for name, lines in comps.items():
        for line in lines:
            trip = _trip_count(line, comps, lines)
            for kind, targets in _CALLEES.findall(line):
                for target in re.findall(r"%?([\w.\-]+)", targets):
                    if target in comps and target != name:
                        callers[target].append((name, trip if kind == "body" else 1))
    memo: dict[str, int] = {entry: 1}

    def mult(name: str, depth: int = 0) -> int:
        if name not in memo:
            memo[name] = 0  # guards against a cycle (HLO call graphs have none)
            memo[name] = sum(mult(c, depth + 1) * f for c, f in callers.get(name, ()))
        return memo[name]

    return {name: mult(name) for name in comps}


def collective_ops(hlo: str) -> list[dict]:
    """Every collective of the program, one dict each: ``kind``, ``times`` (how often one step runs it),
    ``shapes`` (its result arrays, e.g. ``bf16[4096,11008]``), ``bytes`` (result bytes per run per device; an
    async ``-start``/``-done`` pair counts once, by its largest operand), ``operands`` (the HLO text of its
    operand list) and ``source`` (the JAX operation that made it)."""
    comps, entry = computations(hlo)
    mult = multipliers(comps, entry) if entry else {name: 1 for name in comps}
    ops = []
    for name, lines in comps.items():
        times = mult.get(name, 0)
        if not times:
            continue
        for line in lines:
            m = _INSTRUCTION.search(line)
            if not m:
                continue
            type_text, kind, is_start = m.groups()
            sizes = array_bytes(type_text)
            shapes = [f"{d}[{dims}]" for d, dims in _ARRAY.findall(type_text) if d in _BYTES]
            if is_start:
                shapes = [shapes[sizes.index(max(sizes))]] if sizes else []
            operands = line[m.end():].split(")", 1)[0]
            source = _OP_NAME.search(line)
            ops.append({"kind": kind, "times": times, "shapes": shapes,
                        "bytes": max(sizes, default=0) if is_start else sum(sizes), "operands": operands,
                        "source": source.group(1) if source else ""})
    return ops


_MEGASCALE = re.compile(r'_xla_megascale_transfer_type="([A-Z_]+)"')
_RENDEZVOUS = re.compile(r'_xla_host_transfer_rendezvous="([^"]+)"')
_MEGASCALE_TARGET = re.compile(r'_xla_megascale_target=("\{[\d,]*\}x[^"]*"|\{\{[\d,]*\})')


def received_bytes(comps: dict[str, list[str]]) -> dict[str, float]:
    """Bytes of each host-transfer ``recv`` (its data, the first of its result tuple), by its rendezvous name
    (which its ``send`` shares)."""
    received: dict[str, float] = {}
    for lines in comps.values():
        for line in lines:
            if " recv(" in line and (rv := _RENDEZVOUS.search(line)):
                received[rv.group(1)] = (array_bytes(line.split("=", 1)[1].split(" recv(")[0]) or [0.0])[0]
    return received


def dcn_transfer(line: str, received: dict[str, float]) -> Optional[dict]:
    """``{"kind", "bytes", "slices"}`` of a ``send`` to the MegaScale runtime (see :func:`dcn_transfers`), else
    None."""
    kind = _MEGASCALE.search(line)
    if " send(" not in line or not kind:
        return None
    sent = (array_bytes(line.split("=", 1)[1].split(" send(")[0]) or [0.0])[0]  # (data, u32[], token[])
    rv = _RENDEZVOUS.search(line)
    target = _MEGASCALE_TARGET.search(line)
    slices = 1
    if target and target.group(1).startswith('"'):  # "{1,2,3,4}x{0:3}": these slices, every device of each
        slices = len(re.findall(r"\d+", target.group(1).split("x")[0]))
    elif target:  # {{100000,200000},...}: explicit groups, one device per slice
        slices = len(target.group(1).strip("{}").split(","))
    return {"kind": kind.group(1).lower().replace("_", "-"), "bytes": received.get(rv.group(1), sent) if rv else sent,
            "slices": slices}


def dcn_transfers(hlo: str) -> list[dict]:
    """The collectives between slices of a multislice program. The TPU compiler compiles one slice's program;
    what crosses the data-centre network leaves it as a host-transfer ``send`` (and comes back as a ``recv``)
    to the MegaScale runtime, tagged with the collective's kind and its slice group. One dict each: ``kind``
    (``all-reduce`` ...), ``times`` per step, ``bytes`` (the result, i.e. the ``recv``, per device) and
    ``slices`` (how many slices its group spans)."""
    comps, entry = computations(hlo)
    mult = multipliers(comps, entry) if entry else {name: 1 for name in comps}
    received = received_bytes(comps)
    out = []
    for name, lines in comps.items():
        for line in lines:
            transfer = dcn_transfer(line, received) if mult.get(name, 0) else None
            if transfer:
                out.append({**transfer, "times": mult[name]})
    return out


def collective_stats(hlo: str) -> dict[str, dict[str, float]]:
    """``{kind: {"count": ops run per step, "bytes": result bytes per step per device}}`` for each collective
    kind in the HLO (an async ``-start``/``-done`` pair counts once, by its largest operand)."""
    stats: dict[str, dict[str, float]] = {}
    for op in collective_ops(hlo):
        entry_stats = stats.setdefault(op["kind"], {"count": 0, "bytes": 0.0})
        entry_stats["count"] += op["times"]
        entry_stats["bytes"] += op["times"] * op["bytes"]
    return dict(sorted(stats.items()))


_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*([a-z]+\d*[a-z0-9]*\[[\d,]*\])(?:\{[^}]*\})?\s+([\w\-]+)\(")
_ALIASING_OPS = {"parameter", "bitcast", "get-tuple-element", "tuple", "copy-done", "all-gather-done", "all-reduce-done",
                 "collective-permute-done"}


def largest_buffers(hlo: str, top: int = 10) -> list[dict]:
    """The ``top`` largest arrays the program computes (per device), largest first: HLO name, shape, bytes and
    the JAX operation that made it. Arguments (reported apart) and ops that only alias another buffer
    (bitcast, tuple access) are skipped."""
    found = []
    for line in hlo.splitlines():
        m = _DEF.match(line)
        if not m or m.group(3) in _ALIASING_OPS:
            continue
        sizes = array_bytes(m.group(2))
        if not sizes:
            continue
        op = _OP_NAME.search(line)
        found.append({"name": m.group(1), "shape": m.group(2), "bytes": sizes[0], "op": m.group(3),
                      "source": op.group(1) if op else ""})
    found.sort(key=lambda b: -b["bytes"])
    unique, seen = [], set()
    for b in found:  # a fusion's copies of one array differ only in their HLO names
        key = (b["shape"].split("{")[0], b["source"] or b["op"])
        if key not in seen:
            seen.add(key)
            unique.append(b)
    return unique[:top]
