"""The Pallas kernels of softmax, log_softmax and their gradient ops, and how each is
differentiated (:mod:`jaxops.kernels` states the rules; the op module
:mod:`jaxops.ops.softmax` keeps the schemas, XLA implementations and registered gradients).

* ``softmax``/``log_softmax``: the forward rows kernel, differentiated through the ops'
  registered gradients -- whose gradient ops inherit the implementation and run the kernel
  below in reverse mode.
* ``softmax_gradient``/``log_softmax_gradient``: the backward rows kernel, linear in ``dy``,
  paired with its transpose on the (rows, C) view (``jaxops._ad.linear_pair``; the one
  exception to ``defimpl(transpose=)``, see ``_softmax_gradient_pallas``).  softmax's
  Jacobian ``diag(y) - y y^T`` is symmetric, so the kernel is its own transpose;
  log_softmax's transpose is an XLA formula.

Backend code: :mod:`jaxops.kernels.softmax.triton`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxops._ad import linear_pair
from jaxops._numerics import upcast
from jaxops.kernels.softmax import triton
from jaxops.ops.softmax import log_softmax, log_softmax_gradient, softmax, softmax_gradient


def _as_rows(x: jax.Array, axis: int):
    """``x`` as a 2-D (rows, C) array with ``axis`` last, and the function undoing it."""
    moved = jnp.moveaxis(x, axis, -1)

    def restore(rows):
        return jnp.moveaxis(rows.reshape(moved.shape), -1, axis)

    return moved.reshape(-1, moved.shape[-1]), restore


def _softmax_pallas(x, *, axis, interpret, log):
    rows, restore = _as_rows(x, axis)
    return restore(triton.softmax_rows(rows, log=log, interpret=interpret))


softmax.defimpl("pallas")(functools.partial(_softmax_pallas, log=False))
log_softmax.defimpl("pallas")(functools.partial(_softmax_pallas, log=True))


def _softmax_gradient_rows(y, dy):
    return (softmax_gradient(y, dy, axis=-1, implementation="xla"),)


def _log_softmax_gradient_rows(y, dy):
    return (log_softmax_gradient(y, dy, axis=-1, implementation="xla"),)


def _log_softmax_gradient_transpose(y, t):
    """The transpose of ``dy -> dy - exp(y) * sum(dy)``: ``t -> t - sum(exp(y) * t)``."""
    yf, tf = upcast(y), upcast(t)
    return ((tf - jnp.sum(jnp.exp(yf) * tf, axis=-1, keepdims=True)).astype(t.dtype),)


@functools.cache
def _gradient_pair(log: bool, interpret: bool):
    def kernel(y, dy):
        return (triton.softmax_rows_gradient(y, dy, log=log, interpret=interpret),)

    if log:
        return linear_pair(kernel, _log_softmax_gradient_transpose,
                           twin=_log_softmax_gradient_rows, name="log_softmax_gradient_kernel")
    # softmax's Jacobian diag(y) - y y^T is symmetric: the kernel is its own transpose
    return linear_pair(kernel, kernel, twin=_softmax_gradient_rows,
                       twin_transpose=_softmax_gradient_rows, name="softmax_gradient_kernel")


def _softmax_gradient_pallas(y, dy, *, axis, interpret, log):
    # The pair is declared on the (rows, C) view, not through defimpl(transpose=) on the
    # op's arrays: there the reshape back would sit inside the pair, whose outputs do not
    # carry the operands' sharding, and a class axis sharded over a mesh axis would come
    # back gathered (tests/test_kernels.py::test_row_kernels_on_sharded_rows).
    y_rows, _ = _as_rows(y, axis)
    dy_rows, restore = _as_rows(dy, axis)
    (dx,) = _gradient_pair(log, interpret)((y_rows,), (dy_rows,))
    return restore(dx)


softmax_gradient.defimpl("pallas")(functools.partial(_softmax_gradient_pallas, log=False))
log_softmax_gradient.defimpl("pallas")(functools.partial(_softmax_gradient_pallas, log=True))
