"""``allam train``: one training run from gin configs (multi-process with jax.distributed)."""

from __future__ import annotations

import argparse
import json

from allam_jax.cli.common import add_gin_flags, non_negative_int, positive_int
from allam_jax.core import distributed
from allam_jax.core.errors import ConfigError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train or continue training a model from gin configs",
                       description="Train a decoder. Resumes automatically from WORKDIR/checkpoints; writes "
                       "WORKDIR/metrics.jsonl, WORKDIR/tensorboard/ and WORKDIR/config.gin.")
    add_gin_flags(p)
    p.add_argument("--workdir", required=True, help="output directory: checkpoints, metrics, the operative config")
    p.add_argument("--coordinator_address", default=None, help="multi-process: HOST:PORT of process 0 "
                   "(env ALLAM_COORDINATOR)")
    p.add_argument("--num_processes", type=positive_int, default=None, help="multi-process: number of processes "
                   "(env ALLAM_NUM_PROCESSES)")
    p.add_argument("--process_id", type=non_negative_int, default=None, help="multi-process: this process's id, 0..N-1 "
                   "(env ALLAM_PROCESS_ID)")
    p.add_argument("--distributed", choices=["off", "auto"], default="off", help="'auto': let JAX find its peers "
                   "(TPU VM pod slices, SLURM)")
    p.add_argument("--distributed_timeout", type=positive_int, default=300,
                   help="seconds to wait for the other processes")
    p.add_argument("--profile", nargs="?", const="0,3", default=None, metavar="START,COUNT",
                   help="write a jax.profiler trace of COUNT steps from step START into WORKDIR/tensorboard/plugins/"
                        "profile/ (open it in TensorBoard's profile tab or XProf); bare --profile: 3 steps from the "
                        "third this run takes (past compilation); the same as TrainerConfig.profile_steps")
    p.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from allam_jax import runner

    distributed.initialize(distributed.DistributedConfig.from_env(
        coordinator_address=args.coordinator_address, num_processes=args.num_processes, process_id=args.process_id,
        auto=args.distributed == "auto", timeout_s=args.distributed_timeout))
    bindings = list(args.gin_bindings or [])
    if args.profile is not None:
        bindings.append(f"TrainerConfig.profile_steps = ({_profile_steps(args.profile)})")
    final = runner.train_from_gin(args.gin_file, bindings, args.workdir)
    print(json.dumps({"workdir": args.workdir, **{k: round(v, 6) for k, v in final.items()}}))
    return 0


def _profile_steps(text: str) -> str:
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or int(parts[1]) < 1:
        raise ConfigError(f"--profile takes START,COUNT (two whole numbers, COUNT >= 1), got {text!r}")
    return f"{int(parts[0])}, {int(parts[1])}"
