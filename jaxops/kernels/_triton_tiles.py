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

``interpret=True`` runs the same kernel body in Pallas' interpreter (any platform).  On a
sharded array each device runs the kernel on its shard (:mod:`jaxops.kernels.sharding`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from jaxops.kernels.sharding import per_row_shard

__all__ = ["batch_norm_statistics", "batch_norm_sums", "softmax_cross_entropy_rows",
           "softmax_rows", "softmax_rows_gradient"]

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


@per_row_shard
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


@per_row_shard
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
    br, bc = _blocks(rows, cols)
    dtype = _compute_dtype(x.dtype)
    kernel = functools.partial(_cross_entropy_kernel, ignore_index=ignore_index, rows=rows,
                               cols=cols, block_rows=br, block_cols=bc, dtype=dtype)
    out = [jax.ShapeDtypeStruct((rows,), dtype)]
    if with_gradient:
        out.append(jax.ShapeDtypeStruct(x.shape, x.dtype))
    return tuple(_call(kernel, tuple(out), rows, br, bc, interpret, x, labels))


# ------------------------------------------------------------- batch-norm statistics
# x is viewed as (N, C, S) (S: the spatial axes, 1 for a 2-D input).  Program (i, p) owns
# channels [i bc, (i + 1) bc) and a contiguous range of ``per`` row blocks of N; it walks its
# (bn, bc, bs) tiles once.  The statistics kernel merges each tile's count, mean and centred
# sum of squares of ``x - shift`` into running ones (Chan, Golub and LeVeque's pairwise
# update: one pass over x, without the cancellation of E[x^2] - E[x]^2); the partial results
# of the p programs are merged outside, where their counts are known statically.  The sums
# kernel accumulates sum(dy) and sum(dy * xhat) likewise.

_MAX_BLOCK_CHANNELS = 64
_PROGRAMS = 512  # aim: this many programs, so small C still fills the GPU


def _bn_blocks(n: int, c: int, s: int) -> tuple[int, int, int, int, int]:
    """(bn, bc, bs, splits of N, row blocks per split)."""
    bs = min(pl.next_power_of_2(max(s, 1)), _TILE)
    bc = min(pl.next_power_of_2(max(c, 1)), _MAX_BLOCK_CHANNELS, max(1, _TILE // bs))
    bn = min(pl.next_power_of_2(max(n, 1)), max(1, _TILE // (bc * bs)))
    blocks = pl.cdiv(n, bn)
    splits = max(1, min(blocks, _PROGRAMS // pl.cdiv(c, bc)))
    per = pl.cdiv(blocks, splits)
    return bn, bc, bs, pl.cdiv(blocks, per), per


def _bn_split_counts(n: int, s: int, bn: int, per: int, splits: int) -> np.ndarray:
    """Elements per channel that each split of N covers (static)."""
    rows = np.clip(n - np.arange(splits) * per * bn, 0, per * bn)
    return rows * s


class _ChannelTiles:
    """The tiles of program (i, p) over an (N, C, S) ref."""

    def __init__(self, n, c, s, bn, bc, bs, per):
        self.n, self.s, self.bn, self.bc, self.bs, self.per = n, s, bn, bc, bs, per
        self.c0 = pl.program_id(0) * bc
        self.c_mask = self.c0 + jnp.arange(bc, dtype=jnp.int32) < c
        self.first_block = pl.program_id(1) * per
        self.s_chunks = pl.cdiv(s, bs)

    def origin(self, k):
        """(first row, first spatial index) of the k-th tile."""
        return ((self.first_block + k // self.s_chunks) * self.bn,
                (k % self.s_chunks) * self.bs)

    def count(self, k):
        n0, s0 = self.origin(k)
        return (jnp.clip(self.n - n0, 0, self.bn) * jnp.clip(self.s - s0, 0, self.bs))

    def load(self, ref, k, dtype):
        n0, s0 = self.origin(k)
        n_ok = n0 + jnp.arange(self.bn, dtype=jnp.int32) < self.n
        s_ok = s0 + jnp.arange(self.bs, dtype=jnp.int32) < self.s
        mask = n_ok[:, None, None] & self.c_mask[None, :, None] & s_ok[None, None, :]
        tile = plt.load(ref.at[pl.ds(n0, self.bn), pl.ds(self.c0, self.bc), pl.ds(s0, self.bs)],
                        mask=mask, other=0).astype(dtype)
        return tile, mask

    def load_channels(self, ref, dtype):
        return plt.load(ref.at[pl.ds(self.c0, self.bc)], mask=self.c_mask,
                        other=0).astype(dtype)

    def store_channels(self, ref, value):
        plt.store(ref.at[pl.program_id(1), pl.ds(self.c0, self.bc)], value.astype(ref.dtype),
                  mask=self.c_mask)

    def sweep(self, body, init):
        steps = self.per * self.s_chunks
        if steps == 1:
            return body(jnp.int32(0), init)
        return jax.lax.fori_loop(jnp.int32(0), jnp.int32(steps), body, init)


def _channel_sum(tile):
    return jnp.sum(jnp.sum(tile, axis=2), axis=0)


def _bn_statistics_kernel(x_ref, shift_ref, mean_ref, m2_ref, *, dtype, **shape):
    t = _ChannelTiles(**shape)
    shift = t.load_channels(shift_ref, dtype)[None, :, None]

    def merge(k, carry):
        mean_a, m2_a, count_a = carry
        x, mask = t.load(x_ref, k, dtype)
        x = jnp.where(mask, x - shift, jnp.zeros_like(x))  # near 0: exact merges below
        count_b = t.count(k).astype(dtype)
        mean_b = _channel_sum(x) / jnp.maximum(count_b, 1)
        d = jnp.where(mask, x - mean_b[None, :, None], jnp.zeros_like(x))
        # corrected two-pass within the tile: sum(d) is the rounding error of mean_b
        m2_b = _channel_sum(d * d) - jnp.square(_channel_sum(d)) / jnp.maximum(count_b, 1)
        count = count_a + count_b
        frac = count_b / jnp.maximum(count, 1)  # 0 for a tile past the end of N
        delta = mean_b - mean_a
        return mean_a + delta * frac, m2_a + m2_b + delta * delta * count_a * frac, count

    zeros = jnp.zeros((t.bc,), dtype)
    mean, m2, _ = t.sweep(merge, (zeros, zeros, jnp.zeros((), dtype)))
    t.store_channels(mean_ref, mean)
    t.store_channels(m2_ref, m2)


def _bn_grid(x):
    n, c = x.shape[:2]
    s = math.prod(x.shape[2:])
    bn, bc, bs, splits, per = _bn_blocks(n, c, s)
    shape = dict(n=n, c=c, s=s, bn=bn, bc=bc, bs=bs, per=per)
    return x.reshape(n, c, s), shape, splits


def _bn_call(kernel, shape, splits, dtype, interpret, *args):
    """Two (splits, C) outputs: each program's partial result for its channels."""
    out = jax.ShapeDtypeStruct((splits, shape["c"]), dtype)
    return pl.pallas_call(
        kernel, out_shape=(out, out), grid=(pl.cdiv(shape["c"], shape["bc"]), splits),
        compiler_params=plt.CompilerParams(num_warps=8, num_stages=1), interpret=interpret,
    )(*args)


@functools.partial(jax.jit, static_argnames=("interpret",))
def batch_norm_statistics(x: jax.Array, shift: jax.Array, *, interpret: bool = False
                          ) -> tuple[jax.Array, jax.Array]:
    """Per-channel ``mean(x) - shift`` and population variance of ``x`` (N, C, ...) over
    every axis but 1, in float32 (float64 for float64 ``x``), reading ``x`` once.

    ``shift`` (C,) is any value near each channel's data (its first element, say): the
    statistics accumulate on ``x - shift``, so a channel with mean 1e4 and standard deviation
    1e-2 keeps its variance in float32 (the same shift must serve every program of a channel:
    their partial means are merged on its scale)."""
    dtype = _compute_dtype(x.dtype)
    x3, shape, splits = _bn_grid(x)
    kernel = functools.partial(_bn_statistics_kernel, dtype=dtype, **shape)
    means, m2s = _bn_call(kernel, shape, splits, dtype, interpret, x3, shift.astype(dtype))
    # merge the splits' partial statistics (Chan et al.), with their static counts
    counts = jnp.asarray(_bn_split_counts(shape["n"], shape["s"], shape["bn"], shape["per"],
                                          splits), dtype)[:, None]
    total = jnp.sum(counts)
    mean = jnp.sum(counts * means, axis=0) / total
    m2 = jnp.sum(m2s + counts * jnp.square(means - mean[None]), axis=0)
    return mean, m2 / total


def _bn_sums_kernel(x_ref, dy_ref, mean_ref, inv_ref, sum_dy_ref, sum_dy_xhat_ref, *, dtype,
                    **shape):
    t = _ChannelTiles(**shape)
    mean = t.load_channels(mean_ref, dtype)[None, :, None]
    inv = t.load_channels(inv_ref, dtype)[None, :, None]

    def add(k, carry):
        sum_dy, sum_dy_xhat = carry
        x, _ = t.load(x_ref, k, dtype)
        dy, _ = t.load(dy_ref, k, dtype)  # 0 outside: masked entries add nothing
        return sum_dy + _channel_sum(dy), sum_dy_xhat + _channel_sum(dy * (x - mean) * inv)

    zeros = jnp.zeros((t.bc,), dtype)
    sum_dy, sum_dy_xhat = t.sweep(add, (zeros, zeros))
    t.store_channels(sum_dy_ref, sum_dy)
    t.store_channels(sum_dy_xhat_ref, sum_dy_xhat)


@functools.partial(jax.jit, static_argnames=("interpret",))
def batch_norm_sums(x: jax.Array, dy: jax.Array, mean: jax.Array, inv: jax.Array, *,
                    interpret: bool = False) -> tuple[jax.Array, jax.Array]:
    """Per-channel ``sum(dy)`` and ``sum(dy * (x - mean) * inv)`` over every axis but 1 (the
    batch-norm backward's reductions), reading ``x`` and ``dy`` once."""
    dtype = _compute_dtype(dy.dtype)
    x3, shape, splits = _bn_grid(x)
    kernel = functools.partial(_bn_sums_kernel, dtype=dtype, **shape)
    sums = _bn_call(kernel, shape, splits, dtype, interpret, x3,
                    dy.reshape(x3.shape), mean.astype(dtype), inv.astype(dtype))
    return tuple(jnp.sum(p, axis=0) for p in sums)
