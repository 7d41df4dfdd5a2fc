"""``allam compile``: the TPU dry run -- compile any config for a slice on this machine, per-chip memory,
collectives and the estimated step time; ``--search`` ranks remat and micro-batch variants."""

from __future__ import annotations

import argparse
import json
import re

import jax

from allam_jax import gin_setup
from allam_jax.aot.dry_run import compile_step
from allam_jax.aot.search import (DEFAULT_ATTENTION_BACKWARD, DEFAULT_GRAD_ACCUM, DEFAULT_LOGITS_CHUNK, DEFAULT_REMAT,
                                  format_search, search)
from allam_jax.aot.table import format_report
from allam_jax.aot.topology import FAMILIES_HELP, resolve_topology
from allam_jax.cli.common import EXIT_OK, add_gin_flags, fraction, mesh_shape, non_negative_int, positive_int
from allam_jax.core.errors import ConfigError
from allam_jax.model.config import REMAT_POLICIES

EXIT_DOES_NOT_FIT = 3



def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compile", help="dry-run a config on a TPU slice (or N CPU devices): per-chip memory, fit, FLOPs, collectives",
        description="Build exactly what `allam train` would run for the gin config (model, mesh, remat, attention, "
        "global batch and sequence length, gradient accumulation, optimizer) from abstract arrays -- nothing is "
        "allocated -- then lower and compile the step with the real XLA compiler for --topology, and print per-chip "
        "memory, whether it fits, model FLOPs, collectives and the step time the chip's peak allows. TPU topologies "
        "need libtpu (the 'tpu' extra), not a TPU. Exit 0: fits; 3: does not fit; 2: bad input.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: allam compile --gin_file=runs/continue_llama2_13b_ar.gin --topology=v5p-128",
    )
    add_gin_flags(p)
    p.add_argument("--topology", required=True, help=f"the slice to compile for: {FAMILIES_HELP}")
    p.add_argument("--num_slices", type=positive_int, default=None,
                   help="compile for this many copies of --topology joined over the data-centre network (TPU "
                        "multislice; the same as writing v5p-512x4); the mesh puts them on "
                        "PartitioningConfig.dcn_mesh_shape and the table splits collectives into ICI and DCN")
    p.add_argument("--step", default="train", choices=("train", "eval", "decode"),
                   help="train: the optimizer step (default); eval: the log-likelihood scoring forward pass; "
                   "decode: one token per row against a KV cache of seq_len (rows = TrainerConfig.batch_size)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--hlo_out", default=None, metavar="DIR",
                   help="also write the optimized HLO (DIR/hlo.txt) and the devices' torus coordinates in program "
                        "order (DIR/devices.json): what the step-time estimate reads (not with --search)")
    s = p.add_argument_group("search (--search): compile variants of the config and rank those that fit by the "
                             "estimated step time")
    s.add_argument("--search", action="store_true",
                   help="compile every variant below (train step only) and print them ranked, with the gin bindings "
                        "of the fastest that fits; progress goes to stderr, one line per compile")
    s.add_argument("--search_remat", nargs="+", default=list(DEFAULT_REMAT), choices=list(REMAT_POLICIES),
                   metavar="POLICY", help=f"remat policies to try (default: {' '.join(DEFAULT_REMAT)})")
    s.add_argument("--search_grad_accum", nargs="+", type=positive_int, default=list(DEFAULT_GRAD_ACCUM), metavar="N",
                   help="micro-batch counts (TrainerConfig.grad_accum_steps) to try, fewest first; the first that fits "
                        "ends a line (default: %(default)s)")
    s.add_argument("--search_logits_chunk", nargs="+", type=non_negative_int, default=list(DEFAULT_LOGITS_CHUNK),
                   metavar="N",
                   help="StepConfig.logits_chunk_size values to try, 0 = unchunked (default: %(default)s)")
    s.add_argument("--search_mesh", nargs="+", type=mesh_shape, default=[], metavar="SHAPE",
                   help="PartitioningConfig.mesh_shape values to try, e.g. '(1, -1, 1)' '(2, -1, 1)' "
                        "(default: the config's own)")
    s.add_argument("--search_attention_backward", nargs="+", default=list(DEFAULT_ATTENTION_BACKWARD),
                   choices=list(DEFAULT_ATTENTION_BACKWARD), metavar="KIND",
                   help="ModelConfig.attention_backward values to try with pallas attention: fused (one splash "
                        "backward kernel) and/or separate (dK/dV and dQ kernels) (default: %(default)s)")
    s.add_argument("--headroom", type=fraction, default=0.1,
                   help="share of the chip's memory to leave free (default: 0.1, i.e. use at most 90%%)")
    p.set_defaults(handler=run_compile)


def _prepare_cpu_devices(topology: str) -> None:
    """cpu:N needs N host devices, which JAX creates only when its CPU backend starts."""
    m = re.fullmatch(r"cpu:(\d+)", topology)
    if not m:
        return

    try:
        jax.config.update("jax_num_cpu_devices", max(int(m.group(1)), 1))
    except RuntimeError:  # the backend already started (e.g. a test process): resolve_topology checks the count
        pass


def run_compile(args: argparse.Namespace) -> int:
    _prepare_cpu_devices(args.topology)
    topology = resolve_topology(args.topology, args.num_slices)  # bad names fail before the (slow) gin and model build
    if args.search:
        return _run_search(args, topology)
    gin_setup.parse(args.gin_file, args.gin_bindings)
    report = compile_step(gin_setup.build_experiment(), topology, args.step, hlo_out=args.hlo_out)
    if args.json:
        print(json.dumps({"config": args.gin_file, **report.as_dict()}))
    else:
        print(format_report(report, args.gin_file))
    return EXIT_OK if report.fits else EXIT_DOES_NOT_FIT


def _run_search(args: argparse.Namespace, topology) -> int:
    if args.step != "train":
        raise ConfigError("--search ranks train steps; drop --step or use --step=train")
    found = search(args.gin_file, args.gin_bindings, topology, remat=args.search_remat,
                   grad_accum=args.search_grad_accum, logits_chunk=args.search_logits_chunk, meshes=args.search_mesh,
                   headroom=args.headroom, backward=args.search_attention_backward)
    if all(c.error for c in found):  # bad input, not a config too large for the slice
        raise ConfigError(f"every --search variant is invalid; the first: {found[0].error}")
    if args.json:
        print(json.dumps([{"bindings": list(c.bindings), "within_budget": c.within_budget, "error": c.error,
                           "report": c.report.as_dict() if c.report else None} for c in found]))
    else:
        print(format_search(found, args.headroom))
    return EXIT_OK if any(c.within_budget for c in found) else EXIT_DOES_NOT_FIT
