"""Row kernels for GPUs in Pallas' Triton backend, the one file of backend-specific code.

Every kernel works on a 2-D ``(rows, C)`` array (the ops move their axis last and flatten
the rest).  One program handles ``block_rows`` rows and walks the row in chunks of
``block_cols`` columns (a power of two); loads and stores are masked, so any row count and
any ``C`` (ragged last block, ``C`` not a power of two) are exact.  When a row fits in one
chunk it is loaded once; otherwise a first sweep keeps the running max ``m`` and the sum
``s`` of ``exp(x - m)`` (the online log-sum-exp of Milakov and Gimelshein, 2018), and a second
sweep writes the output.  All arithmetic is float32 (float64 for float64 inputs); inputs
and outputs keep their dtype.

Why Triton and not Mosaic GPU (JAX's default GPU backend): on jax 0.10.2, lowering the
simplest of these row kernels with ``pallas_call`` for Mosaic GPU fails at realistic
shapes -- a (2, 4096) float32 block: "Async copies only support copying <=256 elements along
each dimension"; C = 5000: "Only copies transferring a number of bytes divisible by the
warpgroup size are supported" -- and Mosaic GPU's replacement API (``plgpu.kernel``) asks
for warpgroup layouts and TMA pipelines written by hand.  Triton's masked loads express
ragged rows directly.  ``tests/test_kernels.py`` lowers every kernel for CUDA on a CPU
machine, so a change in the Triton lowering fails CI.

``interpret=True`` runs the same kernel body in Pallas' interpreter (any platform).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

__all__ = ["softmax_rows", "softmax_rows_gradient", "softmax_cross_entropy_rows"]

#: elements one program keeps in registers per chunk (block_rows * block_cols)
_TILE = 4096
_MAX_BLOCK_ROWS = 64


def _compute_dtype(dtype) -> jnp.dtype:
    return jnp.dtype(jnp.float64) if jnp.dtype(dtype) == jnp.float64 else jnp.dtype(jnp.float32)


def _blocks(rows: int, cols: int) -> tuple[int, int]:
    block_cols = min(pl.next_power_of_2(max(cols, 1)), _TILE)
    block_rows = min(pl.next_power_of_2(max(rows, 1)), _MAX_BLOCK_ROWS,
                     max(1, _TILE // block_cols))
    return block_rows, block_cols


def _call(kernel, out_shape, grid_rows, block_rows, block_cols, interpret, *args):
    return pl.pallas_call(
        kernel, out_shape=out_shape, grid=(pl.cdiv(grid_rows, block_rows),),
        compiler_params=plt.CompilerParams(num_warps=8 if block_rows * block_cols >= 4096
                                           else 4, num_stages=1),
        interpret=interpret,
    )(*args)


class _Tile:
    """Index arithmetic of one (block_rows, block_cols) tile of a (rows, cols) ref."""

    def __init__(self, rows, cols, block_rows, block_cols):
        self.rows, self.cols, self.br, self.bc = rows, cols, block_rows, block_cols
        self.r0 = pl.program_id(0) * block_rows  # int32 indices, also under x64
        self.row_ids = self.r0 + jnp.arange(block_rows, dtype=jnp.int32)
        self.row_mask = self.row_ids < rows
        self.chunks = pl.cdiv(cols, block_cols)

    def col_ids(self, i):
        return i * self.bc + jnp.arange(self.bc, dtype=jnp.int32)

    def mask(self, i):
        return self.row_mask[:, None] & (self.col_ids(i) < self.cols)[None, :]

    def at(self, ref, i):
        return ref.at[pl.ds(self.r0, self.br), pl.ds(i * self.bc, self.bc)]

    def load(self, ref, i, other, dtype):
        return plt.load(self.at(ref, i), mask=self.mask(i), other=other).astype(dtype)

    def store(self, ref, i, value):
        plt.store(self.at(ref, i), value.astype(ref.dtype), mask=self.mask(i))

    def load_rows(self, ref, other):
        return plt.load(ref.at[pl.ds(self.r0, self.br)], mask=self.row_mask, other=other)

    def store_rows(self, ref, value):
        plt.store(ref.at[pl.ds(self.r0, self.br)], value.astype(ref.dtype), mask=self.row_mask)

    def sweep(self, body, init):
        """``body(i, carry)`` over the chunks of the row block."""
        if self.chunks == 1:
            return body(jnp.int32(0), init)
        return jax.lax.fori_loop(jnp.int32(0), jnp.int32(self.chunks), body, init)


def _safe_max(m):
    """The shift of a row: its max, or 0 for a fully masked (all -inf) row."""
    return jnp.where(jnp.isneginf(m), jnp.zeros_like(m), m)


def _online(m, s, x):
    """One step of the online log-sum-exp: (max, sum of exp(x - shift)) after chunk x."""
    m_new = jnp.maximum(m, jnp.max(x, axis=1))
    shift = _safe_max(m_new)
    s = s * jnp.exp(m - shift) + jnp.sum(jnp.exp(x - shift[:, None]), axis=1)
    return m_new, s


def _stats_init(t: _Tile, dtype):
    return jnp.full((t.br,), -jnp.inf, dtype), jnp.zeros((t.br,), dtype)


# ------------------------------------------------------------------ softmax / log_softmax

def _softmax_kernel(x_ref, y_ref, *, log, rows, cols, block_rows, block_cols, dtype):
    t = _Tile(rows, cols, block_rows, block_cols)

    def finish(x, m, s):
        shift = _safe_max(m)[:, None]
        total = jnp.where(s == 0, jnp.ones_like(s), s)[:, None]
        return x - shift - jnp.log(total) if log else jnp.exp(x - shift) / total

    if t.chunks == 1:  # the row is in registers: one read, one write
        x = t.load(x_ref, jnp.int32(0), -jnp.inf, dtype)
        m, s = _online(*_stats_init(t, dtype), x)
        t.store(y_ref, jnp.int32(0), finish(x, m, s))
        return

    m, s = t.sweep(lambda i, c: _online(*c, t.load(x_ref, i, -jnp.inf, dtype)),
                   _stats_init(t, dtype))

    def write(i, carry):
        t.store(y_ref, i, finish(t.load(x_ref, i, -jnp.inf, dtype), m, s))
        return carry

    t.sweep(write, jnp.int32(0))


@functools.partial(jax.jit, static_argnames=("log", "interpret"))
def softmax_rows(x: jax.Array, *, log: bool, interpret: bool = False) -> jax.Array:
    """softmax (or log_softmax, ``log=True``) of each row of a 2-D array."""
    rows, cols = x.shape
    br, bc = _blocks(rows, cols)
    kernel = functools.partial(_softmax_kernel, log=log, rows=rows, cols=cols, block_rows=br,
                               block_cols=bc, dtype=_compute_dtype(x.dtype))
    return _call(kernel, jax.ShapeDtypeStruct(x.shape, x.dtype), rows, br, bc, interpret, x)


def _softmax_gradient_kernel(y_ref, dy_ref, dx_ref, *, log, rows, cols, block_rows,
                             block_cols, dtype):
    t = _Tile(rows, cols, block_rows, block_cols)

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


@functools.partial(jax.jit, static_argnames=("log", "interpret"))
def softmax_rows_gradient(y: jax.Array, dy: jax.Array, *, log: bool,
                          interpret: bool = False) -> jax.Array:
    """The row-wise gradient ops: ``y * (dy - sum(dy * y))``, or ``dy - exp(y) * sum(dy)``
    with ``log=True``; ``y`` is the forward output."""
    rows, cols = y.shape
    br, bc = _blocks(rows, cols)
    kernel = functools.partial(_softmax_gradient_kernel, log=log, rows=rows, cols=cols,
                               block_rows=br, block_cols=bc, dtype=_compute_dtype(dy.dtype))
    return _call(kernel, jax.ShapeDtypeStruct(dy.shape, dy.dtype), rows, br, bc, interpret,
                 y, dy)


# ---------------------------------------------------------------- softmax cross-entropy

def _cross_entropy_kernel(x_ref, labels_ref, loss_ref, *g_ref, ignore_index, rows, cols,
                          block_rows, block_cols, dtype):
    t = _Tile(rows, cols, block_rows, block_cols)
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
        return (*_online(m, s, x), picked)

    first = jnp.int32(0)
    x0 = t.load(x_ref, first, -jnp.inf, dtype) if t.chunks == 1 else None
    init = (*_stats_init(t, dtype), jnp.zeros((t.br,), dtype))
    m, s, picked = stats(first, init, x0) if t.chunks == 1 else t.sweep(stats, init)
    shift = _safe_max(m)
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


@functools.partial(jax.jit, static_argnames=("ignore_index", "with_gradient", "interpret"))
def softmax_cross_entropy_rows(
    x: jax.Array, labels: jax.Array, *, ignore_index: int | None, with_gradient: bool,
    interpret: bool = False,
) -> tuple[jax.Array, ...]:
    """Per-row ``logsumexp(x) - x[label]`` (0 where ``label == ignore_index``, NaN for a label
    outside ``[0, C)``) in the compute dtype and, with ``with_gradient``, its gradient
    ``softmax(x) - onehot(label)`` (0 on ignored rows) in ``x.dtype``, in one kernel."""
    rows, cols = x.shape
    br, bc = _blocks(rows, cols)
    dtype = _compute_dtype(x.dtype)
    kernel = functools.partial(_cross_entropy_kernel, ignore_index=ignore_index, rows=rows,
                               cols=cols, block_rows=br, block_cols=bc, dtype=dtype)
    out = [jax.ShapeDtypeStruct((rows,), dtype)]
    if with_gradient:
        out.append(jax.ShapeDtypeStruct(x.shape, x.dtype))
    return tuple(_call(kernel, tuple(out), rows, br, bc, interpret, x, labels))
