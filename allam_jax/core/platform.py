"""Which accelerator the code being traced targets, and a quiet start on machines without a TPU.

``allam compile`` traces the train step on a CPU host for a TPU topology: ``jax.default_backend()`` is then
``cpu`` while the program runs on TPUs. The ambient mesh knows the truth, so platform-dependent choices
(attention kernel, matmul path, ``'auto'`` dtypes) ask :func:`target_platform` instead.
"""

from __future__ import annotations

import importlib.util
import os

# libtpu reads these at start-up; set for compile-only topologies so it does not warn about a missing TPU VM.
_COMPILE_ONLY_TPU_ENV = {"TPU_ACCELERATOR_TYPE": "v5litepod-4", "TPU_WORKER_HOSTNAMES": "localhost",
                         "TPU_WORKER_ID": "0", "TPU_SKIP_MDS_QUERY": "1",
                         # compile-only: no chip is opened, so several processes (tests, dry runs) may load libtpu
                         "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


def target_platform() -> str:
    """``'tpu'``, ``'gpu'`` or ``'cpu'``: the platform of the ambient mesh's devices, else the default backend."""
    import jax

    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    platform = getattr(device, "platform", None)
    if platform in ("cuda", "rocm"):
        platform = "gpu"
    return platform or jax.default_backend()


def libtpu_installed() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def _has_tpu_chips() -> bool:
    try:
        from jax._src import hardware_utils  # the PCI scan JAX itself does before loading libtpu

        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except Exception:  # noqa: BLE001 - a JAX without this helper: assume a TPU may be there
        return True


def _has_gpu_plugin() -> bool:
    return any(importlib.util.find_spec(name) is not None
               for name in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin"))


def quiet_absent_tpu() -> None:
    """With libtpu installed (the ``tpu`` extra, for ``allam compile``) on a machine with no TPU chip and no GPU
    plugin, JAX would still start the TPU runtime, which prints a screen of warnings and fails over to the CPU.
    Ask for the CPU directly instead; a user's own ``JAX_PLATFORMS`` always wins."""
    if "JAX_PLATFORMS" in os.environ or not libtpu_installed() or _has_gpu_plugin() or _has_tpu_chips():
        return
    import jax

    os.environ["JAX_PLATFORMS"] = "cpu"  # for child processes
    jax.config.update("jax_platforms", "cpu")  # this process: jax read the variable at import


def prepare_compile_only_tpu() -> None:
    """Environment for building TPU topologies on a host without TPUs (quiet libtpu start-up). Must run before
    libtpu loads."""
    for key, value in _COMPILE_ONLY_TPU_ENV.items():
        os.environ.setdefault(key, value)
