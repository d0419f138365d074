"""Batch-norm training reductions in Pallas' Triton backend: the per-channel statistics in
one pass over x, and the backward's per-channel sums in one pass over (x, dy).

``interpret=True`` runs the same kernel body in Pallas' interpreter (any platform).  The
kernels see whole arrays; :mod:`jaxops.kernels.sharding` runs them per shard.

x is viewed as (N, C, S) (S: the spatial axes, 1 for a 2-D input).  Program (i, p) owns
channels [i bc, (i + 1) bc) and a contiguous range of ``per`` row blocks of N; it walks its
(bn, bc, bs) tiles once.  The statistics kernel merges each tile's count, mean and centred
sum of squares of ``x - shift`` into running ones (Chan, Golub and LeVeque's pairwise
update: one pass over x, without the cancellation of E[x^2] - E[x]^2); the partial results
of the p programs are merged outside, where their counts are known statically.  The sums
kernel accumulates sum(dy) and sum(dy * xhat) likewise.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from jaxops.kernels._triton_tiles import TILE, compute_dtype

__all__ = ["batch_norm_statistics", "batch_norm_sums"]


_MAX_BLOCK_CHANNELS = 64
_PROGRAMS = 512  # aim: this many programs, so small C still fills the GPU


def _bn_blocks(n: int, c: int, s: int) -> tuple[int, int, int, int, int]:
    """(bn, bc, bs, splits of N, row blocks per split)."""
    bs = min(pl.next_power_of_2(max(s, 1)), TILE)
    bc = min(pl.next_power_of_2(max(c, 1)), _MAX_BLOCK_CHANNELS, max(1, TILE // bs))
    bn = min(pl.next_power_of_2(max(n, 1)), max(1, TILE // (bc * bs)))
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
    dtype = compute_dtype(x.dtype)
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
    dtype = compute_dtype(dy.dtype)
    x3, shape, splits = _bn_grid(x)
    kernel = functools.partial(_bn_sums_kernel, dtype=dtype, **shape)
    sums = _bn_call(kernel, shape, splits, dtype, interpret, x3,
                    dy.reshape(x3.shape), mean.astype(dtype), inv.astype(dtype))
    return tuple(jnp.sum(p, axis=0) for p in sums)
