"""``WORKDIR/run.json``: what the saved data position means (global batch, sequence length, process count, mixture
rates), so a resume that would silently change it is refused, or warned about, before the first step.

A data position counts batches of a shape, drawn per data shard; resuming with another batch size, sequence
length or (with one shard per process) another process count continues on other data while looking like the
same run. Rates change which examples come next, not how many were taken: a changed mixture is allowed and
warned about, old -> new.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

from allam_jax.checkpoint import workdir_files
from allam_jax.checkpoint.workdir import Workdir
from allam_jax.core.errors import ConfigError
from allam_jax.core.paths import write_text_atomically

log = logging.getLogger(__name__)


def describe(exp: Any, process_count: int) -> dict:
    data = exp.data.describe()
    return {"batch_size": exp.trainer.batch_size, "seq_len": exp.trainer.seq_len, "process_count": process_count,
            "data_shards": data.data_shards,  # None: the data's position is the same on any count
            "rates": {k: float(v) for k, v in dict(data.rates).items()} if data.rates is not None else None}


def read(workdir: Workdir) -> Optional[dict]:
    """The record, validated (a damaged one is one line naming the field); None for a workdir from before it."""
    return workdir_files.read_run_record(workdir.root)


def check_resume(saved: Optional[dict], now: dict, start: int, num_steps: int, checkpoints: str,
                 accept_new_data_order: bool = False) -> None:
    """Raises ConfigError when resuming at ``start`` with ``now`` would change what the data position means or
    train nothing; warns when the mixture's rates changed (or, accepted, the process count)."""
    if num_steps < start:
        raise ConfigError(f"TrainerConfig.num_steps={num_steps} is below the step of the checkpoint in {checkpoints} "
                          f"({start}): nothing to train; raise num_steps to continue (config.gin left as it was)")
    if saved is None:
        return
    for key, name in (("batch_size", "TrainerConfig.batch_size"), ("seq_len", "TrainerConfig.seq_len")):
        if saved.get(key) is not None and saved[key] != now[key]:
            raise ConfigError(f"{name} is {now[key]} but the checkpoint in {checkpoints} was trained with {saved[key]}: "
                              "its data position counts batches of that shape; resume with the same value, or start a "
                              "new workdir with TrainerConfig.init_from pointing at this checkpoint")
    if (now.get("data_shards") == 0 and saved.get("process_count") is not None
            and saved["process_count"] != now["process_count"]):
        if accept_new_data_order:
            log.warning("resuming a run of %s process(es) on %s with data_shards = 0: the data continues on other "
                        "batches (TrainerConfig.accept_new_data_order)", saved["process_count"], now["process_count"])
            return
        raise ConfigError(f"the checkpoint in {checkpoints} was written by {saved['process_count']} process(es) and this "
                          f"run has {now['process_count']}: with data_shards = 0 each process reads its own data stream, "
                          "so the run would continue on other data; resume on the same number of processes, set "
                          "TrainerConfig.accept_new_data_order = True to go on anyway, or set data_shards to a "
                          "multiple of every process count (the same batches on any count) in a new workdir")
    if saved.get("rates") and now.get("rates") and saved["rates"] != now["rates"]:
        changes = ", ".join(f"{k} {saved['rates'].get(k, 0)} -> {now['rates'].get(k, 0)}"
                            for k in sorted(set(saved["rates"]) | set(now["rates"]))
                            if saved["rates"].get(k) != now["rates"].get(k))
        log.warning("the mixture's rates changed since the checkpoint in %s: %s; the data position continues under "
                    "the new rates", checkpoints, changes)


def write(workdir: Workdir, now: dict) -> None:
    write_text_atomically(workdir.run_record, json.dumps(now, indent=2) + "\n")
