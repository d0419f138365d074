"""What the Triton-backend kernels share: the compute dtype, the block plan of a row kernel,
its launch, and the index arithmetic of a row tile with the online log-sum-exp.

A row kernel (softmax, softmax cross-entropy) works on a 2-D ``(rows, C)`` array (the ops
move their axis last and flatten the rest).  One program handles ``block_rows`` rows and
walks the row in chunks of ``block_cols`` columns (a power of two); loads and stores are
masked, so any row count and any ``C`` (ragged last block, ``C`` not a power of two) are
exact.  When a row fits in one chunk it is loaded once; otherwise a first sweep keeps the
running max ``m`` and the sum ``s`` of ``exp(x - m)`` (the online log-sum-exp of Milakov and
Gimelshein, 2018), and a second sweep writes the output.  All arithmetic is float32 (float64
for float64 inputs); inputs and outputs keep their dtype.

Why Triton and not Mosaic GPU (JAX's default GPU backend): on jax 0.10.2, lowering the
simplest of these row kernels with ``pallas_call`` for Mosaic GPU fails at realistic
shapes -- a (2, 4096) float32 block: "Async copies only support copying <=256 elements along
each dimension"; C = 5000: "Only copies transferring a number of bytes divisible by the
warpgroup size are supported" -- and Mosaic GPU's replacement API (``plgpu.kernel``) asks
for warpgroup layouts and TMA pipelines written by hand.  Triton's masked loads express
ragged rows directly.  ``tests/test_kernels.py`` lowers every kernel for CUDA on a CPU
machine, so a change in the Triton lowering fails CI.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

__all__ = ["TILE", "RowTile", "compute_dtype", "online", "row_blocks", "row_call",
           "safe_max", "stats_init"]

#: elements one program keeps in registers per chunk (block_rows * block_cols)
TILE = 4096
_MAX_BLOCK_ROWS = 64


def compute_dtype(dtype) -> jnp.dtype:
    return jnp.dtype(jnp.float64) if jnp.dtype(dtype) == jnp.float64 else jnp.dtype(jnp.float32)


def row_blocks(rows: int, cols: int) -> tuple[int, int]:
    block_cols = min(pl.next_power_of_2(max(cols, 1)), TILE)
    block_rows = min(pl.next_power_of_2(max(rows, 1)), _MAX_BLOCK_ROWS,
                     max(1, TILE // block_cols))
    return block_rows, block_cols


def row_call(kernel, out_shape, grid_rows, block_rows, block_cols, interpret, *args):
    return pl.pallas_call(
        kernel, out_shape=out_shape, grid=(pl.cdiv(grid_rows, block_rows),),
        compiler_params=plt.CompilerParams(num_warps=8 if block_rows * block_cols >= 4096
                                           else 4, num_stages=1),
        interpret=interpret,
    )(*args)


class RowTile:
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


def safe_max(m):
    """The shift of a row: its max, or 0 for a fully masked (all -inf) row."""
    return jnp.where(jnp.isneginf(m), jnp.zeros_like(m), m)


def online(m, s, x):
    """One step of the online log-sum-exp: (max, sum of exp(x - shift)) after chunk x."""
    m_new = jnp.maximum(m, jnp.max(x, axis=1))
    shift = safe_max(m_new)
    s = s * jnp.exp(m - shift) + jnp.sum(jnp.exp(x - shift[:, None]), axis=1)
    return m_new, s


def stats_init(t: RowTile, dtype):
    return jnp.full((t.br,), -jnp.inf, dtype), jnp.zeros((t.br,), dtype)
