"""Which accelerator the code being traced targets (the quiet start without a TPU: ``accelerator_env.py``).

``allam compile`` traces the train step on a CPU host for a TPU topology: ``jax.default_backend()`` is then
``cpu`` while the program runs on TPUs. The ambient mesh knows the truth, so platform-dependent choices
(attention kernel, matmul path, ``'auto'`` dtypes) ask :func:`target_platform` instead.
"""

from __future__ import annotations

import jax


def target_platform() -> str:
    """``'tpu'``, ``'gpu'`` or ``'cpu'``: the platform of the ambient mesh's devices, else the default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    platform = getattr(device, "platform", None)
    if platform in ("cuda", "rocm"):
        platform = "gpu"
    return platform or jax.default_backend()
