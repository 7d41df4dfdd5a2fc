"""Multi-process start-up: ``jax.distributed`` from flags or environment, before anything touches devices.

Every process runs the same command. On a TPU VM pod slice (or under SLURM) JAX finds its peers by
itself (``--distributed=auto``); elsewhere give the coordinator's ``host:port``, the process count and
this process's id, by flags or by ``ALLAM_COORDINATOR``, ``ALLAM_NUM_PROCESSES``, ``ALLAM_PROCESS_ID``.
CPU processes talk through gloo collectives.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from typing import Optional

import jax

from allam_jax.core.errors import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    auto: bool = False
    timeout_s: int = 300

    @classmethod
    def from_env(cls, **overrides) -> "DistributedConfig":
        env = os.environ

        def pick(flag, name, cast):
            value = overrides.get(flag)
            if value is None and env.get(name):
                try:
                    value = cast(env[name])
                except ValueError:
                    raise ConfigError(f"{name}={env[name]!r} is not a valid {cast.__name__}") from None
            return value

        return cls(coordinator_address=pick("coordinator_address", "ALLAM_COORDINATOR", str),
                   num_processes=pick("num_processes", "ALLAM_NUM_PROCESSES", int),
                   process_id=pick("process_id", "ALLAM_PROCESS_ID", int),
                   auto=bool(overrides.get("auto")), timeout_s=int(overrides.get("timeout_s") or 300))

    @property
    def enabled(self) -> bool:
        return self.auto or (self.num_processes or 1) > 1

    def validate(self) -> None:
        if self.auto or not self.enabled:
            return
        if not self.coordinator_address or ":" not in self.coordinator_address:
            raise ConfigError(f"multi-process run needs --coordinator_address HOST:PORT, got {self.coordinator_address!r}")
        if self.process_id is None or not 0 <= self.process_id < self.num_processes:
            raise ConfigError(f"--process_id {self.process_id} is out of range for --num_processes "
                              f"{self.num_processes} (0..{self.num_processes - 1})")


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Polls ``HOST:PORT`` until it accepts a TCP connection; a clear error after ``timeout_s`` (JAX's own
    client would abort the process instead of raising)."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ConfigError(f"could not join the distributed job: the coordinator {address} did not answer "
                                  f"within {timeout_s:.0f}s ({e.strerror or e}); is process 0 running?") from None
            time.sleep(0.5)


def initialize(cfg: DistributedConfig) -> None:
    """Joins the job (no-op for a single process); a coordinator that never answers fails after the timeout."""
    cfg.validate()
    if not cfg.enabled:
        return

    if not cfg.auto and cfg.process_id != 0:
        wait_for_coordinator(cfg.coordinator_address, cfg.timeout_s)

    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        if cfg.auto:
            jax.distributed.initialize(initialization_timeout=cfg.timeout_s)
        else:
            jax.distributed.initialize(coordinator_address=cfg.coordinator_address, num_processes=cfg.num_processes,
                                       process_id=cfg.process_id, initialization_timeout=cfg.timeout_s)
    except Exception as e:  # noqa: BLE001 - jax raises several types; the message is what matters
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConfigError(f"could not join the distributed job (coordinator {cfg.coordinator_address or 'auto'}, "
                          f"process {cfg.process_id} of {cfg.num_processes}, waited up to {cfg.timeout_s}s): "
                          f"{first}") from None
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
