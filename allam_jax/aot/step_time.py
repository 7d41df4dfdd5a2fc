"""A step time read from the compiled program: a roofline per HLO op, loop trip counts applied, collectives priced
on the slice's torus.

Why not ``compiled.cost_analysis()``: on TPU it counts a ``scan`` body once, prices a Pallas kernel (splash
attention) at zero FLOPs and every collective as HBM traffic whatever its group. Here each op of the optimized HLO
that runs on the chip is priced on its own:

- **compute**: a matmul (``convolution``/``dot``, also inside fusions) by its FLOPs, counted as XLA's cost analysis
  counts them (only window positions that touch real input); every op takes ``max(FLOPs / peak, bytes / HBM
  bandwidth)`` with the bytes it reads and writes (a fused ``dynamic-slice`` of a stacked weight reads the slice,
  an in-place ``dynamic-update-slice`` writes the update);
- **attention**: a Pallas kernel by the cost estimate it carries, else (splash attention) from its own operands
  (any rank) and metadata: the pass's block sizes, the blocks a causal mask leaves, which pass it is (forward,
  dK/dV with or without dQ, dQ) and the bytes it streams and writes (:func:`kernel_cost`); a kernel without a FLOP
  count is counted in ``unpriced_kernels``;
- **communication**: each collective on the torus links its replica group spans: an all-gather of ``V`` bytes over
  ``p`` chips takes ``V (p-1)/p`` over the summed bandwidth of the rings it uses (both directions of a ring that
  closes, one of a line), an all-reduce twice that, an all-to-all a quarter-ring's distance, a hop ~1 us, groups
  that span slices add the data-centre network;
- **overlap**: collectives hide behind the compute of the computation that issues them (a loop body: layer i+1's
  weights gather while layer i computes), so a computation takes ``max(compute, communication)``; the sum (no
  overlap) is reported as the upper bound.

Everything ``StepTimeEstimate.leaves_out`` names is what the estimate cannot see.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Optional, Sequence

import numpy as np

from allam_jax.aot.hlo_stats import array_bytes, computations, dcn_transfer, multipliers, received_bytes

HOP_SECONDS = 1e-6  # per ring step of a collective (the scaling book's ICI latency)
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\(")
_OPERAND = re.compile(r"%([\w.\-]+(?:#\d+)?)")  # `%t#1`: newer HLO text names a tuple's element directly
_COLLECTIVE = re.compile(r"^(all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)(-start)?$")
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "conditional", "call",
         "after-all", "partition-id", "replica-id", "copy-start", "copy-done", "opt-barrier", "add-dependency",
         "all-gather-done", "all-reduce-done", "collective-permute-done", "reduce-scatter-done", "all-to-all-done",
         "async-done", "async-update", "send-done", "recv-done", "recv"}
_SLICING = {"dynamic-slice", "slice", "gather"}
_CONTROL_CALLEES = re.compile(r"\b(body|condition|branch_computations|to_apply)=\{?([^}\s,]+(?:,\s*%[\w.\-]+)*)\}?")


@dataclasses.dataclass
class Instruction:
    name: str
    type: str  # the result's HLO type text
    opcode: str
    operands: list[str]
    text: str


def _balanced(text: str, start: int) -> tuple[str, int]:
    """The text inside the parenthesis opening at ``start`` and the index after its close."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
    return text[start + 1:], len(text)


def parse_instruction(line: str) -> Optional[Instruction]:
    m = _INSTR.match(line)
    if not m:
        return None
    inside, _ = _balanced(line, m.end() - 1)
    return Instruction(m.group(1), m.group(2), m.group(3), _OPERAND.findall(inside), line)


def tuple_elements(type_text: str) -> list[str]:
    """The element types of a tuple type ``(a, b, ...)``, split at its top-level commas; [] for an array type."""
    text = type_text.strip()
    if not text.startswith("("):
        return []
    elements, depth, start = [], 0, 1
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0 and ch == ")":
                elements.append(text[start:i].strip())
                break
        elif ch == "," and depth == 1:
            elements.append(text[start:i].strip())
            start = i + 1
    return [e for e in elements if e]


def _shapes(instructions: list[Instruction]) -> dict[str, str]:
    """Result types by name, with each tuple's elements also under ``name#k`` (how operands may name them)."""
    shapes = {i.name: i.type for i in instructions}
    for i in instructions:
        for k, element in enumerate(tuple_elements(i.type)):
            shapes[f"{i.name}#{k}"] = element
    return shapes


def _dims(type_text: str) -> list[int]:
    m = re.search(r"\[([\d,]*)\]", type_text)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def _attr(text: str, key: str) -> Optional[str]:
    m = re.search(r"\b" + key + r"=(\{[^}]*\}|[^,\s]+)", text)
    return m.group(1).strip("{}") if m else None


# ---------------------------------------------------------------------------------------------------- matmul FLOPs
def _valid_positions(out: int, window: int, inp: int, stride: int, pad_lo: int, lhs_dil: int, rhs_dil: int) -> int:
    """(output position, window position) pairs of one spatial dimension that read real input, not padding."""
    k = np.arange(window, dtype=np.int64)
    if lhs_dil == 1:
        c = k * rhs_dil - pad_lo  # input position = o * stride + c, valid in [0, inp - 1]
        lo = np.maximum(0, -(c // stride))  # ceil(-c / stride)
        hi = np.minimum(out - 1, np.floor_divide(inp - 1 - c, stride))
        return int(np.maximum(0, hi - lo + 1).sum())
    o = np.arange(out, dtype=np.int64)[:, None]
    pos = o * stride - pad_lo + k[None, :] * rhs_dil
    return int(((pos >= 0) & (pos <= (inp - 1) * lhs_dil) & (pos % lhs_dil == 0)).sum())


def convolution_flops(out_type: str, lhs_type: str, rhs_type: str, attrs: str) -> float:
    """FLOPs of an HLO ``convolution`` (how the TPU compiler writes matmuls), as XLA's HloCostAnalysis counts
    them: 2 x input features per group x output features x batch per group x valid window positions."""
    out, lhs, rhs = _dims(out_type), _dims(lhs_type), _dims(rhs_type)
    labels = _attr(attrs, "dim_labels")
    if not labels:
        return 0.0
    lhs_l, rest = labels.split("_", 1)
    rhs_l, out_l = rest.split("->")
    spatial = sorted(ch for ch in lhs_l if ch.isdigit())
    window = _attr(attrs, "window") or ""

    def field(name: str, default: int) -> list[int]:
        m = re.search(r"\b" + name + r"=([\dx_\-]+)", window)
        if not m:
            return [default] * len(spatial)
        return [int(v.split("_")[0]) if name == "pad" else int(v) for v in m.group(1).split("x")]

    stride, pad, lhs_dil, rhs_dil = field("stride", 1), field("pad", 0), field("lhs_dilate", 1), field("rhs_dilate", 1)
    positions = 1
    for i, s in enumerate(spatial):
        positions *= _valid_positions(out[out_l.index(s)], rhs[rhs_l.index(s)], lhs[lhs_l.index(s)], stride[i],
                                      pad[i], lhs_dil[i], rhs_dil[i])
    fgc = int(_attr(attrs, "feature_group_count") or 1)
    bgc = int(_attr(attrs, "batch_group_count") or 1)
    in_features = lhs[lhs_l.index("f")] // fgc
    out_features = out[out_l.index("f")]
    batch = lhs[lhs_l.index("b")] // bgc
    return 2.0 * in_features * out_features * batch * positions


def dot_flops(out_type: str, lhs_type: str, attrs: str) -> float:
    contracting = _attr(attrs, "lhs_contracting_dims")
    lhs = _dims(lhs_type)
    k = math.prod(lhs[int(d)] for d in contracting.split(",") if d) if contracting else 1
    return 2.0 * math.prod(_dims(out_type)) * k


# ------------------------------------------------------------------------------------------------------- kernels
def _causal_fraction(q_len: int, kv_len: int, block_q: int, block_kv: int) -> float:
    """The share of (q block, kv block) pairs a causal mask leaves for a block-sparse kernel to compute."""
    n, m = math.ceil(q_len / block_q), math.ceil(kv_len / block_kv)
    live = sum(min(m, ((i + 1) * block_q - 1) // block_kv + 1) for i in range(n))
    return live / (n * m)


_SPLASH = re.compile(r"splash_m[hq]a_(fwd|dkv|dq)")
# each pass's (query block, key block) keys in the kernel's metadata, and how many T x T x D matmuls it runs: the
# forward QK^T and PV; dK/dV recomputes QK^T, then dV = P^T dO, dP = dO V^T, dK = dS^T Q (and dQ = dS K when
# fused); dQ recomputes QK^T, then dP and dQ
_PASSES = {"fwd": ("block_q", "block_kv"), "dkv": ("block_q_dkv", "block_kv_dkv"), "dq": ("block_q_dq", "block_kv_dq")}
_FLOAT = re.compile(r"(bf16|f32|f16)\[")


@dataclasses.dataclass(frozen=True)
class KernelCost:
    flops: float
    bytes: float  # read and written from HBM: operands once, the streamed side once per live block, results
    priced: bool  # False: no FLOP count (priced by its bytes only)
    dense: bool = False  # True: no block sizes in its metadata, priced as one T x T block


def splash_pass(ins: Instruction) -> Optional[str]:
    """``fwd``, ``dkv`` or ``dq`` for a splash attention kernel (by its name or op_name), else None."""
    m = _SPLASH.search(ins.name) or _SPLASH.search((re.search(r'op_name="([^"]+)"', ins.text) or [None, ""])[1])
    return m.group(1) if m else None


def _block_sizes(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r'\\?"(block_[a-z_]+)\\?":\s*(\d+)', text)}


def kernel_cost(ins: Instruction, shapes: dict[str, str]) -> KernelCost:
    """A Pallas custom call's cost: its own cost estimate when it carries one, else splash attention's from its own
    operands and metadata, else its bytes only (``priced`` False).

    Splash (a causal mask assumed): q ``[..., T, D]`` and k ``[..., S, D]`` of any rank (4-D vmapped rows, 3-D
    heads, 2-D for MQA's shared K/V), the pass's own block sizes, the share of (q block, kv block) pairs a causal
    mask leaves, and the matmuls of the pass (a dK/dV pass that also returns dQ partials, the fused backward, runs
    five; without them four, the dQ pass three). Bytes: every operand once, plus the side the pass streams re-read
    for each live block pair (K/V in the forward and dQ passes, Q/dO/LSE/dI in the dK/dV pass), plus its results
    (the fused pass's per-block dQ partials included)."""
    operands = [shapes.get(o, "") for o in ins.operands]
    moved = sum(sum(array_bytes(t)) for t in operands) + sum(array_bytes(ins.type))
    est = re.search(r'"cost_estimate":\s*(\{[^}]*\})', ins.text)
    if est:
        cost = json.loads(est.group(1))
        return KernelCost(float(cost.get("flops", 0)), float(cost.get("bytes_accessed", moved)), True)
    kind = splash_pass(ins)
    floats = [i for i, t in enumerate(operands) if _FLOAT.match(t) and len(_dims(t)) >= 2]
    if kind is None or len(floats) < 2:
        return KernelCost(0.0, moved, False)
    q, k = _dims(operands[floats[0]]), _dims(operands[floats[1]])
    q_len, head_dim, kv_len = q[-2], q[-1], k[-2]
    blocks = _block_sizes(ins.text)
    bq, bkv = (blocks.get(key) for key in _PASSES[kind])
    dense = bq is None or bkv is None
    bq, bkv = bq or q_len, bkv or kv_len
    frac = _causal_fraction(q_len, kv_len, bq, bkv)
    fused = kind == "dkv" and sum(1 for t in tuple_elements(ins.type) if _FLOAT.match(t)) >= 3
    matmuls = {"fwd": 2, "dkv": 5 if fused else 4, "dq": 3}[kind]
    flops = 2.0 * matmuls * math.prod(q[:-2]) * q_len * kv_len * head_dim * frac
    if kind == "dkv":  # kv blocks outer: everything but K and V streams once per kv block
        streamed = [i for i in floats if i not in floats[1:3]]
        outer = math.ceil(kv_len / bkv)
    else:  # q blocks outer: K and V stream once per q block
        streamed, outer = floats[1:3], math.ceil(q_len / bq)
    again = sum(sum(array_bytes(operands[i])) for i in streamed) * max(0.0, frac * outer - 1)
    return KernelCost(flops, moved + again, True, dense)


def model_flops_utilization(model_flops_per_device: float, step_seconds: float, peak_flops: float) -> float:
    """MFU: the model's FLOPs per chip over what the chip could do at peak in the step's time."""
    return model_flops_per_device / (step_seconds * peak_flops)


# --------------------------------------------------------------------------------------------------- collectives
@dataclasses.dataclass(frozen=True)
class Interconnect:
    """Where each device of the program sits: torus coordinates (by the program's device ids), which rings
    close, and the link bandwidths."""

    coords: Sequence[tuple[int, ...]]
    shape: tuple[int, ...]
    wrap: tuple[bool, ...]
    link_bandwidth: float  # one direction of one ICI link
    dcn_bandwidth: float = 6.25e9
    slices: Sequence[int] = ()

    @classmethod
    def from_coords(cls, coords: Sequence[Sequence[int]], wrap: Sequence[bool], chip,
                    slices: Sequence[int] = ()) -> "Interconnect":
        """From each device's torus coordinates (by device id) and slice index: the torus is their extent."""
        coords = [tuple(c) for c in coords]
        shape = tuple(max(c[k] for c in coords) + 1 for k in range(len(coords[0])))
        wrap = tuple(wrap) + (False,) * (len(shape) - len(wrap))
        return cls(coords, shape, wrap, chip.ici_link_bandwidth, chip.dcn_bandwidth, tuple(slices))

    @classmethod
    def from_devices(cls, devices: Sequence, wrap: Sequence[bool], chip) -> "Interconnect":
        """From JAX devices (compile-only TPU devices carry ``coords`` and ``slice_index``)."""
        return cls.from_coords([getattr(d, "coords", (i, 0, 0)) for i, d in enumerate(devices)], wrap, chip,
                               [getattr(d, "slice_index", 0) or 0 for d in devices])


_MESH_GROUPS = re.compile(r"replica_groups=mesh\[([^\]]*)\](?:<=\[([\d,]+)\](?:T\(([\d,]+)\))?)?\s*\{([^}]*)\}")
_MESH_AXIS = re.compile(r"'([^']+)'=(\d+)")
_GROUP_AXIS = re.compile(r"'([^']+)'(?::\((\d+)\)(\d+))?")


def _mesh_groups(m: re.Match) -> list[list[int]]:
    """Groups of the named-mesh form ``mesh['x'=4,'y'=2] {'y'}`` (newer XLA): the devices of the mesh (row-major
    logical ids, or the iota after ``<=``) that vary along the listed axes, in the listed order, the others fixed.
    An axis may be a sub-axis ``'x':(pre)size``: the ``size`` factor of ``x`` after the ``pre`` major to it."""
    axes = [(name, int(size)) for name, size in _MESH_AXIS.findall(m.group(1))]
    listed = [(name, int(pre) if pre else None, int(size) if size else None) for name, pre, size in
              _GROUP_AXIS.findall(m.group(4))]
    cuts = {name: {1, size} for name, size in axes}
    for name, pre, size in listed:
        if pre is not None:
            cuts[name] |= {pre, pre * size}
    dims, where = [], {}  # each axis split at its sub-axes' bounds, major first; (axis, bound) -> dim index
    for name, size in axes:
        bounds = sorted(cuts[name])
        for lo, hi in zip(bounds, bounds[1:]):
            where[(name, lo)] = len(dims)
            dims.append(hi // lo)
    n = math.prod(size for _, size in axes)
    ids = np.arange(n)
    if m.group(2):
        ids = ids.reshape([int(x) for x in m.group(2).split(",")])
        if m.group(3):
            ids = ids.transpose([int(x) for x in m.group(3).split(",")])
    ids = ids.reshape(dims)
    grouped = []
    for name, pre, size in listed:
        bounds = sorted(cuts[name])
        lo, hi = (1, dict(axes)[name]) if pre is None else (pre, pre * size)
        grouped += [where[(name, b)] for b in bounds if lo <= b < hi]
    rest = [d for d in range(len(dims)) if d not in grouped]
    return ids.transpose(rest + grouped).reshape(-1, math.prod(dims[d] for d in grouped) if grouped else 1).tolist()


def replica_groups(text: str, num_devices: int) -> list[list[int]]:
    """A collective's device groups from its ``replica_groups`` (explicit, iota or named-mesh form) or, for a
    permute, its ``source_target_pairs``; one group of every device when the attribute is empty."""
    mesh = _MESH_GROUPS.search(text)
    if mesh:
        return _mesh_groups(mesh)
    iota = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", text)
    if iota:
        out_shape = [int(x) for x in iota.group(1).split(",")]
        ids = np.arange(math.prod(int(x) for x in iota.group(2).split(","))).reshape(
            [int(x) for x in iota.group(2).split(",")])
        if iota.group(3):
            ids = ids.transpose([int(x) for x in iota.group(3).split(",")])
        return ids.reshape(out_shape[0], -1).tolist()
    m = re.search(r"(?:replica_groups|source_target_pairs)=\{((?:\{[\d,]*\},?)*)\}", text)
    if m and m.group(1):
        return [[int(x) for x in g.split(",") if x] for g in re.findall(r"\{([\d,]*)\}", m.group(1))]
    return [list(range(num_devices))]


def slices_spanned(group: Sequence[int], net: Interconnect) -> int:
    """How many slices a collective's device group reaches (more than one: it crosses the data-centre network)."""
    return len({net.slices[i] for i in group if i < len(net.slices)}) if net.slices else 1


def collective_parts(kind: str, result_bytes: float, group: Sequence[int], net: Interconnect) -> tuple[float, float]:
    """One collective's (ICI seconds, DCN seconds) on the torus and between slices (see the module's docstring)."""
    p = len(group)
    if p <= 1 or result_bytes <= 0:
        return 0.0, 0.0
    pts = [net.coords[i] for i in group if i < len(net.coords)]
    extents = [len({c[k] for c in pts}) for k in range(len(net.shape))]
    bandwidth, hops, longest = 0.0, 0, 1
    for k, n in enumerate(extents):
        if n <= 1:
            continue
        ring = n <= 2 or (net.wrap[k] and n == net.shape[k])
        bandwidth += net.link_bandwidth * (2 if ring else 1)
        hops += n - 1
        longest = max(longest, n)
    slices = slices_spanned(group, net)
    if kind == "collective-permute":
        if slices > 1:
            return 0.0, result_bytes / net.dcn_bandwidth
        return result_bytes / net.link_bandwidth + HOP_SECONDS, 0.0
    volume = {"all-gather": result_bytes, "reduce-scatter": result_bytes * p, "all-reduce": 2 * result_bytes,
              "all-to-all": result_bytes * longest / 4}[kind]
    ici = dcn = 0.0
    if bandwidth:
        ici = volume * (p - 1) / p / bandwidth + HOP_SECONDS * hops * (2 if kind == "all-reduce" else 1)
    if slices > 1:
        dcn = dcn_seconds(kind, result_bytes, slices, net)
    return ici, dcn


def collective_seconds(kind: str, result_bytes: float, group: Sequence[int], net: Interconnect) -> float:
    """One collective's time on the torus and between slices (see the module's docstring for the model)."""
    return sum(collective_parts(kind, result_bytes, group, net))


def dcn_seconds(kind: str, result_bytes: float, slices: int, net: Interconnect) -> float:
    """A collective between ``slices`` slices over the data-centre network, each chip at ``net.dcn_bandwidth``."""
    if slices <= 1:
        return 0.0
    volume = {"all-gather": result_bytes, "reduce-scatter": result_bytes * slices, "all-reduce": 2 * result_bytes,
              "all-to-all": result_bytes / 4}.get(kind, result_bytes)
    return volume * (slices - 1) / slices / net.dcn_bandwidth


def dcn_collectives(transfers: Sequence[dict], net: Interconnect) -> dict[str, dict[str, float]]:
    """:func:`hlo_stats.dcn_transfers` by kind: ``{kind: {"count", "bytes" (result bytes per step per device),
    "seconds" (DCN time per step)}}``; empty on one slice."""
    out: dict[str, dict[str, float]] = {}
    for t in transfers:
        row = out.setdefault(t["kind"], {"count": 0, "bytes": 0.0, "seconds": 0.0})
        row["count"] += t["times"]
        row["bytes"] += t["times"] * t["bytes"]
        row["seconds"] += t["times"] * dcn_seconds(t["kind"], t["bytes"], t["slices"], net)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------------- the estimate
@dataclasses.dataclass
class StepTimeEstimate:
    step_seconds: float  # collectives overlapped with their computation's compute
    compute_seconds: float  # matmuls and memory-bound ops, attention kernels excluded
    attention_seconds: float
    communication_seconds: float  # all collectives back to back
    dcn_seconds: float  # of which between slices (the data-centre network)
    exposed_communication_seconds: float  # what overlap leaves on the critical path
    no_overlap_seconds: float  # the upper bound: nothing overlaps
    matmul_flops: float  # per device per step, from the HLO
    attention_flops: float
    hbm_bytes: float
    by_collective: dict  # kind -> seconds per step
    unpriced_kernels: int = 0  # kernel calls per step with no FLOP count (priced by their bytes only)
    dense_kernels: int = 0  # splash calls per step without block sizes (priced as one T x T block)
    leaves_out: tuple = ()


LEAVES_OUT = (
    "the chip's instruction scheduling: an op runs at the slower of its FLOPs and bytes (a roofline), never slower",
    "host work, input pipeline and step dispatch",
    "contention between collectives issued together, and overlap across computations",
    "attention kernels' masks other than causal (splash's FLOPs assume a decoder's causal mask)",
)


class _Costs:
    def __init__(self, comps: dict[str, list[str]]):
        self.comps = comps
        self.parsed = {name: [i for i in map(parse_instruction, lines) if i] for name, lines in comps.items()}
        self.shapes = {name: _shapes(ins) for name, ins in self.parsed.items()}
        self._flops: dict[str, float] = {}

    def flops(self, comp: str) -> float:
        """Matmul FLOPs of one run of a fused computation (nested fusions included)."""
        if comp not in self._flops:
            self._flops[comp] = 0.0
            self._flops[comp] = sum(self.op_flops(i, comp) for i in self.parsed.get(comp, ()))
        return self._flops[comp]

    def op_flops(self, ins: Instruction, comp: str) -> float:
        shapes = self.shapes[comp]
        if ins.opcode == "convolution" and len(ins.operands) >= 2:
            return convolution_flops(ins.type, shapes.get(ins.operands[0], ""), shapes.get(ins.operands[1], ""),
                                     ins.text)
        if ins.opcode == "dot" and ins.operands:
            return dot_flops(ins.type, shapes.get(ins.operands[0], ""), ins.text)
        if ins.opcode == "fusion":
            called = _attr(ins.text, "calls")
            return self.flops(called.lstrip("%")) if called else 0.0
        return 0.0

    def fusion_bytes(self, ins: Instruction, comp: str) -> float:
        """Bytes a fusion moves: each operand read whole, unless the fused code only slices it (the slices are
        read) or updates it in place (nothing read), through nested fusions and bitcasts; the result written, a
        fused in-place update only its update."""
        called = (_attr(ins.text, "calls") or "").lstrip("%")
        shapes = self.shapes[comp]
        total = sum(self._param_read(called, index, sum(array_bytes(shapes.get(o, ""))))
                    for index, o in enumerate(ins.operands))
        root = next((i for i in self.parsed.get(called, []) if i.text.lstrip().startswith("ROOT")), None)
        return total + self._written(root, called, ins.type)

    def _param_read(self, comp: str, index: int, whole: float) -> float:
        param = next((i.name for i in self.parsed.get(comp, []) if i.opcode == "parameter"
                      and re.search(r"parameter\(" + str(index) + r"\)", i.text)), None)
        return whole if param is None else min(whole, self._read(comp, param, whole))

    def _read(self, comp: str, name: str, whole: float) -> float:
        total, used = 0.0, False
        for u in self.parsed.get(comp, []):
            for pos, o in enumerate(u.operands):
                if o != name:
                    continue
                used = True
                if u.opcode in _SLICING and pos == 0:
                    total += sum(array_bytes(u.type))
                elif u.opcode == "dynamic-update-slice" and pos == 0:
                    pass
                elif u.opcode == "fusion":
                    total += self._param_read((_attr(u.text, "calls") or "").lstrip("%"), pos, whole)
                elif u.opcode == "bitcast":
                    total += self._read(comp, u.name, whole)
                else:
                    return whole
        return total if used else whole

    def _written(self, root: Optional[Instruction], comp: str, result_type: str) -> float:
        if root is None:
            return sum(array_bytes(result_type))
        if root.opcode == "dynamic-update-slice" and len(root.operands) > 1:
            return sum(array_bytes(self.shapes[comp].get(root.operands[1], "")))
        if root.opcode in ("tuple", "bitcast"):
            by_name = {i.name: i for i in self.parsed[comp]}
            return sum(self._written(by_name.get(o), comp, self.shapes[comp].get(o, "")) for o in root.operands)
        return sum(array_bytes(root.type))

    def plain_bytes(self, ins: Instruction, comp: str) -> float:
        shapes = self.shapes[comp]
        if ins.opcode == "dynamic-update-slice" and len(ins.operands) > 1:
            return 2 * sum(array_bytes(shapes.get(ins.operands[1], "")))
        if ins.opcode in _SLICING:
            return 2 * sum(array_bytes(ins.type))
        return sum(sum(array_bytes(shapes.get(o, ""))) for o in ins.operands) + sum(array_bytes(ins.type))


def _control_computations(comps: dict[str, list[str]], entry: str) -> set[str]:
    """The entry and what it runs as control flow (loop bodies, branches, calls): computations whose ops run on
    the chip one after another, as opposed to fused computations (priced through their fusion)."""
    seen, todo = {entry}, [entry]
    while todo:
        for line in comps.get(todo.pop(), ()):
            if " fusion(" in line or " custom-call(" in line:
                continue
            if re.search(r"\s(reduce|reduce-window|scatter|select-and-scatter|sort|map|all-reduce|reduce-scatter)"
                         r"(-start)?\(", line):
                continue  # to_apply there is a scalar reducer
            for _, targets in _CONTROL_CALLEES.findall(line):
                for t in re.findall(r"%?([\w.\-]+)", targets):
                    if t in comps and t not in seen:
                        seen.add(t)
                        todo.append(t)
    return seen


def estimate_step_time(hlo: str, chip, net: Interconnect, efficiency: Optional[float] = None) -> StepTimeEstimate:
    """Prices the optimized HLO of one step (see the module docstring) for ``chip`` on ``net``; matmuls and
    kernels run at ``efficiency`` of the chip's peak (default: ``chip.matmul_efficiency``, calibrated)."""
    peak = chip.peak_flops * (chip.matmul_efficiency if efficiency is None else efficiency)
    comps, entry = computations(hlo)
    mult = multipliers(comps, entry) if entry else {name: 1 for name in comps}
    costs = _Costs(comps)
    totals = dict(step=0.0, compute=0.0, attention=0.0, comm=0.0, dcn=0.0, upper=0.0, mm=0.0, attn_flops=0.0,
                  bytes=0.0)
    by_kind: dict[str, float] = {}
    unpriced = dense = 0
    received = received_bytes(comps)
    for comp in _control_computations(comps, entry or next(iter(comps))):
        times = mult.get(comp, 0)
        if not times:
            continue
        compute = attention = comm = 0.0
        for ins in costs.parsed[comp]:
            if ins.opcode == "send":  # a multislice program's collective between slices (else a host transfer)
                transfer = dcn_transfer(ins.text, received)
                if transfer:
                    t = dcn_seconds(transfer["kind"], transfer["bytes"], transfer["slices"], net)
                    comm += t
                    totals["dcn"] += times * t
                    by_kind[f"{transfer['kind']} (DCN)"] = by_kind.get(f"{transfer['kind']} (DCN)", 0.0) + times * t
                continue
            coll = _COLLECTIVE.match(ins.opcode)
            if coll:
                kind = coll.group(1)
                sizes = array_bytes(ins.type)
                result = max(sizes, default=0.0) if coll.group(2) else sum(sizes)
                groups = replica_groups(ins.text, len(net.coords))
                parts = [collective_parts(kind, result, g, net) for g in groups]
                t = max(sum(p) for p in parts)
                comm += t
                totals["dcn"] += times * max(p[1] for p in parts)
                by_kind[kind] = by_kind.get(kind, 0.0) + times * t
                continue
            if ins.opcode in _FREE:
                continue
            if ins.opcode == "custom-call":
                if "tpu_custom_call" not in ins.text:
                    continue
                cost = kernel_cost(ins, costs.shapes[comp])
                unpriced += 0 if cost.priced else times
                dense += times if cost.dense else 0
                attention += max(cost.flops / peak, cost.bytes / chip.hbm_bandwidth)
                totals["attn_flops"] += times * cost.flops
                totals["bytes"] += times * cost.bytes
                continue
            flops = costs.op_flops(ins, comp)
            moved = costs.fusion_bytes(ins, comp) if ins.opcode == "fusion" else costs.plain_bytes(ins, comp)
            compute += max(flops / peak, moved / chip.hbm_bandwidth)
            totals["mm"] += times * flops
            totals["bytes"] += times * moved
        busy = compute + attention
        totals["step"] += times * max(busy, comm)
        totals["upper"] += times * (busy + comm)
        totals["compute"] += times * compute
        totals["attention"] += times * attention
        totals["comm"] += times * comm
    busy = totals["compute"] + totals["attention"]
    return StepTimeEstimate(
        step_seconds=totals["step"], compute_seconds=totals["compute"], attention_seconds=totals["attention"],
        communication_seconds=totals["comm"], dcn_seconds=totals["dcn"], exposed_communication_seconds=max(0.0, totals["step"] - busy),
        no_overlap_seconds=totals["upper"], matmul_flops=totals["mm"], attention_flops=totals["attn_flops"],
        hbm_bytes=totals["bytes"], by_collective=dict(sorted(by_kind.items())), unpriced_kernels=unpriced,
        dense_kernels=dense,
        leaves_out=LEAVES_OUT + ((f"{unpriced} kernel calls per step without a FLOP count, priced by their bytes",)
                                 if unpriced else ())
        + ((f"{dense} splash kernel calls per step without block sizes, priced as one T x T block",) if dense else ()))
