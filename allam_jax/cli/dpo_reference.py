"""``allam dpo-reference``: the reference model's log-probs written into DPO data (a precomputed reference)."""

from __future__ import annotations

import argparse

from allam_jax import gin_setup
from allam_jax.cli.common import add_gin_flags, positive_int
from allam_jax.core.errors import ConfigError
from allam_jax.core.partitioning import Partitioner
from allam_jax.model import Decoder


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dpo-reference", help="precompute reference log-probs for DPO data",
                       description="One pass of the starting model (TrainerConfig.init_from) over DpoData.paths: "
                       "writes the pairs with ref_chosen_logp and ref_rejected_logp added, for "
                       "DpoConfig.reference = 'precomputed' (no frozen copy of the model in memory).")
    add_gin_flags(p)
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.add_argument("--batch_size", type=positive_int, default=8, help="pairs per forward pass (default 8)")
    p.set_defaults(handler=run_dpo_reference)


def run_dpo_reference(args: argparse.Namespace) -> int:
    from allam_jax.align.dpo_reference import precompute_reference
    from allam_jax.align.preference_data import DpoData
    from allam_jax.checkpoint.params_io import load_params

    gin_setup.parse(args.gin_file, args.gin_bindings)
    exp = gin_setup.build_experiment()
    if not isinstance(exp.data, DpoData):
        raise ConfigError(f"experiment.data is {type(exp.data).__name__}, not DpoData")
    if not exp.trainer.init_from:
        raise ConfigError("TrainerConfig.init_from is not set: which model is the reference?")
    model = Decoder(exp.model)
    partitioner = Partitioner.create(exp.partitioning)  # PartitioningConfig: the reference of a 70B model is sharded
    params = load_params(exp.trainer.init_from, model, partitioner)
    n = precompute_reference(model, params, exp.data, exp.trainer.seq_len, args.out, args.batch_size,
                             partitioner=partitioner)
    print(f"wrote {args.out}: {n:,} pairs with reference log-probs from {exp.trainer.init_from}")
    return 0
