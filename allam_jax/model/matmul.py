"""The projection matmul, in two forms: XLA's plain ``dot_general``, or a hand-written VJP for CPUs.

``matmul_impl = 'auto'`` (the default) is ``explicit_vjp`` on CPUs and ``xla`` elsewhere.

``matmul_impl = 'xla'`` is a plain dot in the compute dtype: the right choice on GPUs and TPUs, whose
compilers pick bf16 kernels with f32 accumulation and good layouts themselves.

``matmul_impl = 'explicit_vjp'`` writes out the three dots of a projection (forward, input gradient,
weight gradient) in the one form XLA's CPU backend runs fastest: row-major operands, the lhs contracted
on its last axis, f32 accumulation. Two things it fixes, both measured on a 2-core AVX-512 CPU:

* bf16: XLA hands a dot to its fast bf16 library (YNNPACK) only when it is bf16 x bf16 -> f32 in that form.
  A plain bf16 dot is upcast to f32 instead, and so is the weight gradient autodiff writes (it contracts
  the lhs's first axis). Here outputs accumulate in f32 and are rounded to the compute dtype, and the
  kernel's gradient comes back in the parameter dtype without a bf16 rounding step.
* float32 and bf16: for the weight gradient autodiff asks for a transposed copy of the output gradient, and
  XLA fuses that transpose into the elementwise op producing it (SwiGLU's backward: a strided 2048x2048
  write, ~65 ms instead of ~5 ms). Here the forward activation is transposed instead, into a real
  row-major copy behind an optimization barrier, and the output gradient is used as it comes.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp

from allam_jax.core.platform import target_platform

MATMUL_IMPLS = ("auto", "xla", "explicit_vjp")


def _row_major_transpose(x: jax.Array) -> jax.Array:
    """``x.T`` as a materialised row-major array (a bare transpose would become a column-major layout)."""
    m, k = x.shape
    return jax.lax.optimization_barrier(jnp.transpose(x)[:, None, :]).reshape(k, m)


def _dot_f32acc(a: jax.Array, b: jax.Array, a_contract: int, b_contract: int, out_dtype) -> jax.Array:
    """The dot in the fast form, rounded to ``out_dtype``. The barrier keeps XLA from folding a later transpose
    of the result into the dot (it would swap the operands into a form the fast library rejects, after the
    pass that decided to keep the dot in bf16: the CPU runtime then fails with 'Unsupported element type')."""
    out = jax.lax.dot_general(a, b, (((a_contract,), (b_contract,)), ((), ())), preferred_element_type=jnp.float32)
    return jax.lax.optimization_barrier(out.astype(out_dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul_f32acc(x: jax.Array, kernel: jax.Array, out_dtype) -> jax.Array:
    return _dot_f32acc(x, kernel.astype(x.dtype), 1, 0, out_dtype)


def _matmul_f32acc_fwd(x: jax.Array, kernel: jax.Array, out_dtype):
    return _matmul_f32acc(x, kernel, out_dtype), (x, kernel)


def _matmul_f32acc_bwd(out_dtype, residuals, g: jax.Array):
    x, kernel = residuals
    g = g.astype(x.dtype)
    dx = _dot_f32acc(g, kernel.astype(x.dtype), 1, 1, x.dtype)
    dkernel = _dot_f32acc(_row_major_transpose(x), g, 1, 0, kernel.dtype)
    return dx, dkernel


_matmul_f32acc.defvjp(_matmul_f32acc_fwd, _matmul_f32acc_bwd)


def project(x: jax.Array, kernel: jax.Array, num_contract: int, dtype, impl: str = "xla",
            out_dtype: Optional[jnp.dtype] = None) -> jax.Array:
    """Contracts the trailing ``num_contract`` axes of ``x`` with the leading axes of ``kernel``.

    x: [..., *in], kernel: [*in, *out] (any dtype; cast to ``dtype`` for the dot) -> [..., *out] in
    ``out_dtype`` (default ``dtype``; float32 keeps the accumulator's precision, as for logits).
    """
    if impl not in MATMUL_IMPLS:
        raise ValueError(f"matmul_impl must be one of {MATMUL_IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = "explicit_vjp" if target_platform() == "cpu" else "xla"
    out_dtype = dtype if out_dtype is None else out_dtype
    if impl == "xla":
        contract = tuple(range(x.ndim - num_contract, x.ndim))
        return jax.lax.dot_general(
            x.astype(dtype), kernel.astype(dtype), ((contract, tuple(range(num_contract))), ((), ()))
        ).astype(out_dtype)
    lead, out = x.shape[: x.ndim - num_contract], kernel.shape[num_contract:]
    k = math.prod(kernel.shape[:num_contract])
    y = _matmul_f32acc(x.astype(dtype).reshape(-1, k), kernel.reshape(k, -1), jnp.dtype(out_dtype))
    return y.reshape(*lead, *out)
