"""A quiet start on machines without a TPU, decided before JAX loads (so ``import allam_jax`` does not load it).

With libtpu installed (the ``tpu`` extra, for ``allam compile``) on a machine with no TPU chip and no GPU plugin,
JAX would start the TPU runtime, print a screen of warnings and fail over to the CPU. :func:`quiet_absent_tpu`
asks for the CPU instead, reading the PCI bus with JAX's own helper, loaded on its own, without JAX.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# libtpu reads these at start-up; set for compile-only topologies so it does not warn about a missing TPU VM.
_COMPILE_ONLY_TPU_ENV = {"TPU_ACCELERATOR_TYPE": "v5litepod-4", "TPU_WORKER_HOSTNAMES": "localhost",
                         "TPU_WORKER_ID": "0", "TPU_SKIP_MDS_QUERY": "1",
                         # compile-only: no chip is opened, so several processes (tests, dry runs) may load libtpu
                         "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
_GPU_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin")


def libtpu_installed() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def _has_tpu_chips() -> bool:
    """The PCI scan JAX itself does before loading libtpu (``jax/_src/hardware_utils.py``, standard library only),
    run from its file so that JAX is not imported; any surprise: assume a TPU may be there."""
    try:
        jax_dir = Path(importlib.util.find_spec("jax").origin).parent
        spec = importlib.util.spec_from_file_location("_allam_jax_hardware_utils", jax_dir / "_src" / "hardware_utils.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.num_available_tpu_chips_and_device_id()[0] > 0
    except Exception:  # noqa: BLE001 - a JAX without this helper
        return True


def _has_gpu_plugin() -> bool:
    return any(importlib.util.find_spec(name) is not None for name in _GPU_PLUGINS)


def quiet_absent_tpu() -> None:
    """Ask JAX for the CPU when libtpu is installed but no TPU chip or GPU plugin is here; a user's own
    ``JAX_PLATFORMS`` always wins."""
    if "JAX_PLATFORMS" in os.environ or not libtpu_installed() or _has_gpu_plugin() or _has_tpu_chips():
        return
    os.environ["JAX_PLATFORMS"] = "cpu"  # this process (JAX reads it when it loads) and child processes
    if "jax" in sys.modules:  # already loaded: it read the variable at import
        sys.modules["jax"].config.update("jax_platforms", "cpu")


def prepare_compile_only_tpu() -> None:
    """Environment for building TPU topologies on a host without TPUs (quiet libtpu start-up). Must run before
    libtpu loads."""
    for key, value in _COMPILE_ONLY_TPU_ENV.items():
        os.environ.setdefault(key, value)
