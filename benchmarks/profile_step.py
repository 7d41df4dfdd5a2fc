"""Where a train step spends its time: a jax.profiler trace of a few steps, summed per model part.

    python benchmarks/profile_step.py --config tiny
    python benchmarks/profile_step.py --config 100m --attention reference --scan --detail attention

Each traced XLA op is mapped back to the JAX code that produced it (the HLO ``op_name`` metadata) and
its time is added to a group: forward/backward of attention, MLP, LM head, the rest of the model, and
the optimizer and metrics (ops XLA made inside a loop body count for the loop). ``--detail PART`` lists
the slowest single ops whose JAX op_name or XLA op name contains PART, then the same ops summed by kind
(forward or backward, XLA op, JAX primitive: every layer's and loop step's copy of an op on one line).
Times are wall time per op; the CPU runtime runs independent ops concurrently, so groups can add up to
more than the step. The trace itself stays in ``--trace_dir`` for TensorBoard or Perfetto.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

from allam_jax.model import ModelConfig  # noqa: E402
from vs_torch import CONFIGS, PRECISIONS, JaxTrainer, make_batch  # noqa: E402

PARTS = ("attention", "mlp", "lm_head", "embed")


def direction_of(op_name: str) -> str:
    """Autodiff names backward-pass ops ``transpose(jvp(...))``."""
    return "backward" if "transpose(" in op_name else "forward"


def group_of(op_name: str) -> str:
    if "Decoder" in op_name:
        part = next((p for p in PARTS if f"/{p}" in op_name), "other layers")
        return f"model {direction_of(op_name)}: {part}"
    return "optimizer, loss and metrics"


def op_kind(xla_name: str, op_name: str) -> str:
    """``ynn_fusion.609`` from ``transpose(jvp(Decoder))/.../vmap(gts,sd->gtd)/dot_general`` ->
    ``backward ynn_fusion vmap(gts,sd->gtd)/dot_general``: one line per kind of op, its layers and loop steps
    summed."""
    direction = direction_of(op_name)
    primitive = "/".join(op_name.split("/")[-2:]) if "vmap(" in op_name else op_name.split("/")[-1]
    kind = re.sub(r"[.]\d+$", "", xla_name)
    return f"{direction:8s} {kind}  {primitive}"


def hlo_op_names(hlo: str) -> dict[str, str]:
    """XLA instruction name -> the JAX op_name it came from. Instructions without metadata (fusions XLA made
    inside a loop body, say) take the op_name of the instruction that calls their computation (the while)."""
    own, computation_of, caller_of, computation = {}, {}, {}, ""
    for line in hlo.splitlines():
        header = re.match(r"(?:ENTRY )?%([\w.\-]+) \(", line)
        if header:
            computation = header.group(1)
            continue
        inst = re.match(r"\s+(?:ROOT )?%([\w.\-]+) = ", line)
        if not inst:
            continue
        name = inst.group(1)
        computation_of[name] = computation
        meta = re.search(r'op_name="([^"]+)"', line)
        if meta:
            own[name] = meta.group(1)
        for callee in re.findall(r"(?:body|condition|calls|to_apply)=%([\w.\-]+)", line):
            caller_of[callee] = name

    def origin(name: str | None) -> str | None:
        for _ in range(20):  # nesting depth of computations
            if name is None or name in own:
                return own.get(name)
            name = caller_of.get(computation_of.get(name))
        return None

    return {name: op for name in computation_of if (op := origin(name)) is not None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", choices=sorted(CONFIGS), help="model size (default tiny)")
    p.add_argument("--batch_size", type=int, default=8, help="rows per step (default 8)")
    p.add_argument("--seq_len", type=int, default=256, help="tokens per row (default 256)")
    p.add_argument("--steps", type=int, default=3, help="traced steps after a warm-up step (default 3)")
    p.add_argument("--attention", default="blockwise", help="ModelConfig.attention_impl (default blockwise)")
    p.add_argument("--scan", action="store_true", help="scanned layers (default unrolled)")
    p.add_argument("--precision", default="float32", choices=sorted(PRECISIONS),
                   help="float32, or bf16 matmuls with float32 accumulation (default float32)")
    p.add_argument("--detail", default=None, help="also list the slowest ops whose op_name (JAX code path) or "
                   "XLA op name (e.g. copy_bitcast_fusion) contains this ('/' for all), and their totals by "
                   "kind")
    p.add_argument("--top", type=int, default=15, help="how many ops --detail lists (default 15)")
    p.add_argument("--trace_dir", default=None, help="where the trace is written (default: a temporary dir)")
    args = p.parse_args(argv)

    cfg = ModelConfig(**CONFIGS[args.config], max_seq_len=args.seq_len, scan_layers=args.scan,
                      attention_impl=args.attention, **PRECISIONS[args.precision])
    trainer = JaxTrainer(cfg, make_batch(cfg, args.batch_size, args.seq_len))
    with trainer.partitioner.activate():
        compiled = trainer.step_fn.lower(trainer.state, trainer.batch).compile()
    # Trace this very executable: op names (fusion.N) differ between two compilations of the same step.
    trainer.step_fn = compiled
    trainer.step()  # warm-up
    hlo = compiled.as_text()
    op_names = hlo_op_names(hlo)
    trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="allam-profile-")
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        trainer.step()
    step_ms = (time.perf_counter() - t0) / args.steps * 1000
    jax.profiler.stop_trace()
    trace = sorted(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True))[-1]
    groups: collections.Counter = collections.Counter()
    ops: collections.Counter = collections.Counter()
    kinds: collections.Counter = collections.Counter()
    for event in json.load(gzip.open(trace))["traceEvents"]:
        op = op_names.get(event.get("name", ""))
        if event.get("ph") != "X" or op is None:
            continue
        groups[group_of(op)] += event["dur"] / 1000 / args.steps
        if args.detail and (args.detail in op or args.detail in event["name"]):
            ops[f"{event['name']}  ({op.split('jit(train_step)/')[-1][-80:]})"] += event["dur"] / 1000 / args.steps
            kinds[op_kind(event["name"], op)] += event["dur"] / 1000 / args.steps
    print(f"{args.config}: {args.batch_size}x{args.seq_len}, attention={args.attention}, scan={args.scan}, "
          f"precision={args.precision}; "
          f"step {step_ms:.1f} ms (traced); trace in {trace_dir}")
    for name, ms in groups.most_common():
        print(f"{ms:10.1f} ms  {name}")
    if args.detail:
        print(f"\nslowest ops in '{args.detail}':")
        for name, ms in ops.most_common(args.top):
            print(f"{ms:10.1f} ms  {name}")
        print("\nthe same ops summed by kind (forward/backward, XLA op, JAX primitive):")
        for name, ms in kinds.most_common(args.top):
            print(f"{ms:10.1f} ms  {name}")
    return 0


if __name__ == "__main__":
    from allam_jax.core.hugepages import reexec_with_hugepages

    reexec_with_hugepages()  # as the allam command does (ALLAM_HUGEPAGES=0 to measure without)
    sys.exit(main())
