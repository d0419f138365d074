"""Softmax and log-softmax rows, and their gradient ops' rows, in Pallas' Triton backend.

The row layout, the online log-sum-exp and the choice of Triton are described in
:mod:`jaxops.kernels._triton_tiles`.  ``interpret=True`` runs the same kernel body in
Pallas' interpreter (any platform).  On a sharded array each device runs the kernel on its
shard (:mod:`jaxops.kernels.sharding`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxops.kernels._triton_tiles import (
    RowTile,
    compute_dtype,
    online,
    row_blocks,
    row_call,
    safe_max,
    stats_init,
)
from jaxops.kernels.sharding import per_row_shard

__all__ = ["softmax_rows", "softmax_rows_gradient"]


def _softmax_kernel(x_ref, y_ref, *, log, rows, cols, block_rows, block_cols, dtype):
    t = RowTile(rows, cols, block_rows, block_cols)

    def finish(x, m, s):
        shift = safe_max(m)[:, None]
        total = jnp.where(s == 0, jnp.ones_like(s), s)[:, None]
        return x - shift - jnp.log(total) if log else jnp.exp(x - shift) / total

    if t.chunks == 1:  # the row is in registers: one read, one write
        x = t.load(x_ref, jnp.int32(0), -jnp.inf, dtype)
        m, s = online(*stats_init(t, dtype), x)
        t.store(y_ref, jnp.int32(0), finish(x, m, s))
        return

    m, s = t.sweep(lambda i, c: online(*c, t.load(x_ref, i, -jnp.inf, dtype)),
                   stats_init(t, dtype))

    def write(i, carry):
        t.store(y_ref, i, finish(t.load(x_ref, i, -jnp.inf, dtype), m, s))
        return carry

    t.sweep(write, jnp.int32(0))


@per_row_shard
@functools.partial(jax.jit, static_argnames=("log", "interpret"))
def softmax_rows(x: jax.Array, *, log: bool, interpret: bool = False) -> jax.Array:
    """softmax (or log_softmax, ``log=True``) of each row of a 2-D array."""
    rows, cols = x.shape
    br, bc = row_blocks(rows, cols)
    kernel = functools.partial(_softmax_kernel, log=log, rows=rows, cols=cols, block_rows=br,
                               block_cols=bc, dtype=compute_dtype(x.dtype))
    return row_call(kernel, jax.ShapeDtypeStruct(x.shape, x.dtype), rows, br, bc, interpret, x)


def _softmax_gradient_kernel(y_ref, dy_ref, dx_ref, *, log, rows, cols, block_rows,
                             block_cols, dtype):
    t = RowTile(rows, cols, block_rows, block_cols)

    def partial_sum(y, dy):  # softmax: sum(dy * y); log_softmax: sum(dy)
        return jnp.sum(dy if log else dy * y, axis=1)

    def finish(y, dy, total):
        return dy - jnp.exp(y) * total[:, None] if log else y * (dy - total[:, None])

    def load(i):
        return t.load(y_ref, i, 0, dtype), t.load(dy_ref, i, 0, dtype)

    if t.chunks == 1:
        y, dy = load(jnp.int32(0))
        t.store(dx_ref, jnp.int32(0), finish(y, dy, partial_sum(y, dy)))
        return

    total = t.sweep(lambda i, acc: acc + partial_sum(*load(i)), jnp.zeros((t.br,), dtype))

    def write(i, carry):
        t.store(dx_ref, i, finish(*load(i), total))
        return carry

    t.sweep(write, jnp.int32(0))


@per_row_shard
@functools.partial(jax.jit, static_argnames=("log", "interpret"))
def softmax_rows_gradient(y: jax.Array, dy: jax.Array, *, log: bool,
                          interpret: bool = False) -> jax.Array:
    """The row-wise gradient ops: ``y * (dy - sum(dy * y))``, or ``dy - exp(y) * sum(dy)``
    with ``log=True``; ``y`` is the forward output."""
    rows, cols = y.shape
    br, bc = row_blocks(rows, cols)
    kernel = functools.partial(_softmax_gradient_kernel, log=log, rows=rows, cols=cols,
                               block_rows=br, block_cols=bc, dtype=compute_dtype(dy.dtype))
    return row_call(kernel, jax.ShapeDtypeStruct(dy.shape, dy.dtype), rows, br, bc, interpret,
                 y, dy)
