"""Slice names (``v5p-128``, ``v5e-16``, ``cpu:8``) -> compile-only devices and the chip's data-sheet numbers.

TPU devices come from ``jax.experimental.topologies.get_topology_desc`` with libtpu installed: they exist only
for compiling, so a CPU host can lower and compile a program for a whole pod slice. ``v4-N`` and ``v5p-N``
count TensorCores (two per chip, one JAX device per chip); ``v5e-N``/``v5litepod-N`` and ``v6e-N`` count chips.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Optional, Sequence

import jax
from jax.experimental import topologies

from allam_jax.aot.calibration import CALIBRATIONS, Calibration
from allam_jax.core.errors import ConfigError
from allam_jax.core.accelerator_env import libtpu_installed, prepare_compile_only_tpu

GIB = 1024**3

FAMILIES_HELP = ("v4-N, v5p-N (N TensorCores = 2 per chip), v5e-N or v5litepod-N, v6e-N (N chips), a raw "
                 "libtpu topology such as v5e:2x2 or v5:4x4x4, or cpu:N (N fake CPU devices); a TPU slice name "
                 "ending in xS (v5p-512x4) is S such slices joined over the data-centre network")


@dataclasses.dataclass(frozen=True)
class Chip:
    """Data-sheet numbers of one accelerator chip (one JAX device)."""

    name: str
    hbm_bytes: float
    peak_flops: float  # dense bf16 FLOP/s
    topology_prefix: str  # libtpu's name of the generation ('v5' is v5p)
    dims: int  # 3-D torus (v4, v5p) or 2-D (v5e, v6e)
    cores_per_chip: int  # what the slice name counts per chip
    hbm_bandwidth: float  # bytes/s
    ici_link_bandwidth: float  # bytes/s, one direction of one link to a torus neighbour
    dcn_bandwidth: float  # bytes/s per chip between slices
    matmul_efficiency: float = 1.0  # the share of peak FLOP/s the step-time estimate grants matmuls and kernels
    calibration: Optional[Calibration] = None  # where matmul_efficiency comes from; None: borrowed, uncalibrated

    def calibration_note(self) -> str:
        if self.calibration is None:
            return (f"{self.name}: no published measurement compiled here; efficiency {self.matmul_efficiency:.3f} "
                    "borrowed from v5p, error unknown")
        return self.calibration.describe(self.name)


# Cloud TPU's data sheets (peak bf16, HBM, DCN per chip); per-link ICI as in "How to Scale Your Model" (jax-ml), the
# per-chip totals of the data sheets divided over the links (v5p: 1200 GB/s bidirectional over 6 links). The matmul
# efficiency of each generation is its calibration's (aot/calibration.py); v4 has none and borrows v5p's.
CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, 275e12, "v4", 3, 2, 1.2e12, 4.5e10, 6.25e9, CALIBRATIONS["v5p"].efficiency),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12, "v5", 3, 2, 2.765e12, 1.0e11, 6.25e9, CALIBRATIONS["v5p"].efficiency,
                CALIBRATIONS["v5p"]),
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12, "v5e", 2, 1, 8.19e11, 4.5e10, 6.25e9, CALIBRATIONS["v5e"].efficiency,
                CALIBRATIONS["v5e"]),
    "v6e": Chip("TPU v6e", 32 * GIB, 918e12, "v6e", 2, 1, 1.64e12, 9.0e10, 6.25e9, CALIBRATIONS["v6e"].efficiency,
                CALIBRATIONS["v6e"]),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e", "v5": "v5p"}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as the user wrote it
    platform: str  # 'tpu' or 'cpu'
    devices: tuple
    chip: Optional[Chip]  # None for cpu:N
    libtpu_name: Optional[str] = None
    wrap: tuple[bool, ...] = ()  # per torus dimension: whether its ring closes (wraparound links)
    num_slices: int = 1  # slices joined over DCN (multislice); devices carry their slice_index

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def hbm_bytes(self) -> float:
        """Memory per device: the chip's HBM, or for cpu:N this host's RAM shared by the N devices."""
        if self.chip is not None:
            return self.chip.hbm_bytes
        return _host_memory_bytes() / self.num_devices

    @property
    def peak_flops(self) -> Optional[float]:
        return None if self.chip is None else self.chip.peak_flops


def _host_memory_bytes() -> float:
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def torus_shape(chips: int, dims: int) -> tuple[int, ...]:
    """The slice shape Cloud TPU gives a power-of-two chip count: double the last of the smallest sides,
    starting from 2x2(x1), e.g. 3-D 16 -> 2x2x4, 64 -> 4x4x4, 256 -> 4x8x8; 2-D 8 -> 2x4, 256 -> 16x16."""
    if chips < 1 or chips & (chips - 1):
        raise ConfigError(f"a slice of {chips} chips is not a power of two; name the topology directly "
                          f"(e.g. v5:4x4x12)")
    if dims == 3 and chips <= 4:
        return {1: (1, 1, 1), 2: (1, 2, 1), 4: (2, 2, 1)}[chips]
    shape = [2, 2, 1] if dims == 3 else [1, 1]
    while math.prod(shape) < chips:
        smallest = min(shape)
        shape[max(i for i, s in enumerate(shape) if s == smallest)] *= 2
    return tuple(shape)


def torus_wrap(shape: Sequence[int], dims: int) -> tuple[bool, ...]:
    """Which sides of a slice close into rings, as Cloud TPU wires them: a 3-D slice (v4, v5p) has wraparound
    links on every side once each side is a multiple of 4 (a whole number of 4x4x4 cubes), none below; a 2-D
    slice (v5e, v6e) only along a side of 16 chips (a whole pod's side).

    The TPU compiler plans collectives on these rings: without the links it lowers an all-gather over a 4x4x4
    cube as an all-reduce of a zero-padded buffer (twice the bytes), so a dry run must describe them."""
    shape = tuple(shape)
    if dims == 3:
        closed = len(shape) == 3 and all(s % 4 == 0 for s in shape)
        return (closed,) * 3
    return tuple(s == 16 for s in shape) + (False,) * (3 - len(shape))


def _parse(name: str) -> tuple[str, Optional[Chip], Optional[str]]:
    """-> (platform, chip, libtpu topology name)."""
    raw = re.fullmatch(r"(v\d+[a-z]*):(\d+(?:x\d+){1,2})", name)
    if raw:
        prefix, shape = raw.groups()
        family = _ALIASES.get(prefix, prefix)
        if family not in CHIPS:
            raise ConfigError(f"unknown TPU generation {prefix!r} in --topology={name}; known: {FAMILIES_HELP}")
        chip = CHIPS[family]
        return "tpu", chip, f"{chip.topology_prefix}:{shape}"
    m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name)
    if m:
        family = _ALIASES.get(m.group(1), m.group(1))
        if family not in CHIPS:
            raise ConfigError(f"unknown TPU family in --topology={name}; known: {FAMILIES_HELP}")
        chip = CHIPS[family]
        count = int(m.group(2))
        if count % chip.cores_per_chip:
            raise ConfigError(f"--topology={name}: {family} slices count TensorCores, {chip.cores_per_chip} per "
                              f"chip; {count} is not a multiple")
        shape = torus_shape(count // chip.cores_per_chip, chip.dims)
        return "tpu", chip, f"{chip.topology_prefix}:{'x'.join(map(str, shape))}"
    raise ConfigError(f"unknown topology {name!r}; known: {FAMILIES_HELP}")


def _libtpu_missing_message(name: str) -> str:
    return (f"--topology={name} needs libtpu (the TPU compiler) on this machine: pip install 'allam-jax[tpu]' "
            f"(or: pip install libtpu==0.0.52); no TPU is needed")


def split_slices(name: str, num_slices: Optional[int] = None) -> tuple[str, int]:
    """``v5p-512x4`` -> (``v5p-512``, 4); a separate ``num_slices`` (``--num_slices``) must agree."""
    m = re.fullmatch(r"(.+-\d+)x(\d+)", name)
    base, count = (m.group(1), int(m.group(2))) if m else (name, None)
    if count is not None and num_slices is not None and count != num_slices:
        raise ConfigError(f"--topology={name} names {count} slices but --num_slices={num_slices}")
    if count is not None and count < 1:
        raise ConfigError(f"--topology={name} names {count} slices; a slice count must be >= 1")
    count = count if count is not None else num_slices if num_slices is not None else 1
    if count < 1:
        raise ConfigError(f"--num_slices must be >= 1, got {count}")
    return base, count


def resolve_topology(name: str, num_slices: Optional[int] = None) -> Topology:
    """Compile-only devices for ``name`` (see :data:`FAMILIES_HELP`), ``num_slices`` slices of it."""
    m = re.fullmatch(r"cpu:(\d+)", name)
    if m:
        if num_slices is not None and num_slices < 1:
            raise ConfigError(f"--num_slices must be >= 1, got {num_slices}")
        if (num_slices or 1) > 1:
            raise ConfigError(f"--topology={name}: several slices are TPU slices (v5p-512x4); on CPU devices group "
                              "processes with PartitioningConfig.num_slices")
        return _cpu_topology(name, int(m.group(1)))
    base, slices = split_slices(name, num_slices)
    platform, chip, libtpu_name = _parse(base)

    if not libtpu_installed():
        raise ConfigError(_libtpu_missing_message(name))
    prepare_compile_only_tpu()

    dims = [int(x) for x in libtpu_name.split(":")[1].split("x")]
    kwargs: dict[str, Any] = {}
    if chip.cores_per_chip == 2:  # one JAX device per chip (megacore), as on Cloud TPU VMs; libtpu's v4 default
        kwargs["chip_config_name"] = "megacore"  # is a device per TensorCore
    if math.prod(dims) < 4:  # one host holds up to 2x2x1 chips; smaller slices are a host of their own
        kwargs["chips_per_host_bounds"] = tuple(dims + [1] * (3 - len(dims)))
    wrap = torus_wrap(dims, chip.dims)
    if any(wrap):
        kwargs["wrap"] = wrap
    if slices > 1:
        kwargs["num_slices"] = slices
    try:
        devices = topologies.get_topology_desc(libtpu_name, "tpu", **kwargs).devices
    except Exception as e:  # noqa: BLE001 - libtpu raises its own runtime errors
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"libtpu cannot build topology {libtpu_name} (from --topology={name}): {first}") from None
    return Topology(name, platform, tuple(devices), chip, libtpu_name, wrap[:len(dims)], slices)


def _cpu_topology(name: str, count: int) -> Topology:
    if count < 1:
        raise ConfigError(f"--topology={name}: the device count must be positive")
    devices = jax.devices("cpu")
    if len(devices) < count:
        raise ConfigError(f"--topology={name} needs {count} CPU devices but this process has {len(devices)}; "
                          f"start it with XLA_FLAGS=--xla_force_host_platform_device_count={count} "
                          "(allam compile does this itself when JAX has not started yet)")
    return Topology(name, "cpu", tuple(devices[:count]), None)
