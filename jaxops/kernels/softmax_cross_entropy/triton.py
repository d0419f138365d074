"""Softmax cross-entropy rows in Pallas' Triton backend: each row's loss by an online
log-sum-exp and, optionally, its gradient ``softmax - onehot`` written in the same pass.

The row layout and the choice of Triton are described in :mod:`jaxops.kernels._triton_tiles`.
``interpret=True`` runs the same kernel body in Pallas' interpreter (any platform).  On a
sharded array each device runs the kernel on its shard (:mod:`jaxops.kernels.sharding`).
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

__all__ = ["softmax_cross_entropy_rows"]


def _cross_entropy_kernel(x_ref, labels_ref, loss_ref, *g_ref, ignore_index, rows, cols,
                          block_rows, block_cols, dtype):
    t = RowTile(rows, cols, block_rows, block_cols)
    labels = t.load_rows(labels_ref, 0)
    ignored = (labels == ignore_index) if ignore_index is not None else jnp.zeros_like(
        t.row_mask)
    valid = (labels >= 0) & (labels < cols) & ~ignored
    labels = jnp.where(valid, labels, -1).astype(jnp.int32)  # -1 matches no column

    def stats(i, carry, x=None):
        m, s, picked = carry
        x = t.load(x_ref, i, -jnp.inf, dtype) if x is None else x
        hit = t.col_ids(i)[None, :] == labels[:, None]
        picked = picked + jnp.sum(jnp.where(hit, x, jnp.zeros_like(x)), axis=1)
        return (*online(m, s, x), picked)

    first = jnp.int32(0)
    x0 = t.load(x_ref, first, -jnp.inf, dtype) if t.chunks == 1 else None
    init = (*stats_init(t, dtype), jnp.zeros((t.br,), dtype))
    m, s, picked = stats(first, init, x0) if t.chunks == 1 else t.sweep(stats, init)
    shift = safe_max(m)
    # a fully masked row (s = 0) has probability 0 for every label: loss -log 0 = inf
    lse = shift + jnp.log(jnp.where(s == 0, jnp.ones_like(s), s))
    loss = jnp.where(valid, jnp.where(s == 0, jnp.full_like(lse, jnp.inf), lse - picked),
                     jnp.where(ignored, jnp.zeros_like(lse), jnp.full_like(lse, jnp.nan)))
    t.store_rows(loss_ref, loss)
    if not g_ref:
        return
    (g_ref,) = g_ref
    keep = ~ignored[:, None]  # an ignored row's gradient is 0 (its weight is 0)
    inv = 1 / jnp.where(s == 0, jnp.ones_like(s), s)

    def gradient(i, x):
        hit = t.col_ids(i)[None, :] == labels[:, None]
        g = jnp.exp(x - shift[:, None]) * inv[:, None] - hit.astype(dtype)
        return jnp.where(keep, g, jnp.zeros_like(g))

    if t.chunks == 1:
        t.store(g_ref, first, gradient(first, x0))
        return

    def write(i, carry):
        t.store(g_ref, i, gradient(i, t.load(x_ref, i, -jnp.inf, dtype)))
        return carry

    t.sweep(write, jnp.int32(0))


@per_row_shard
@functools.partial(jax.jit, static_argnames=("ignore_index", "with_gradient", "interpret"))
def softmax_cross_entropy_rows(
    x: jax.Array, labels: jax.Array, *, ignore_index: int | None, with_gradient: bool,
    interpret: bool = False,
) -> tuple[jax.Array, ...]:
    """Per-row ``logsumexp(x) - x[label]`` (0 where ``label == ignore_index``, NaN for a label
    outside ``[0, C)``) in the compute dtype and, with ``with_gradient``, its gradient
    ``softmax(x) - onehot(label)`` (0 on ignored rows) in ``x.dtype``, in one kernel."""
    rows, cols = x.shape
    br, bc = row_blocks(rows, cols)
    dtype = compute_dtype(x.dtype)
    kernel = functools.partial(_cross_entropy_kernel, ignore_index=ignore_index, rows=rows,
                               cols=cols, block_rows=br, block_cols=bc, dtype=dtype)
    out = [jax.ShapeDtypeStruct((rows,), dtype)]
    if with_gradient:
        out.append(jax.ShapeDtypeStruct(x.shape, x.dtype))
    return tuple(row_call(kernel, tuple(out), rows, br, bc, interpret, x, labels))
