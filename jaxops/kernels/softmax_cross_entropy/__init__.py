"""The fused Pallas kernel of softmax_cross_entropy, and how it is differentiated
(:mod:`jaxops.kernels` states the rules; :mod:`jaxops.ops.cross_entropy` keeps the op).

One pass over the scores computes each row's loss with an online log-sum-exp and writes its
gradient ``softmax - onehot`` alongside.  The op's linearization (``jvp=``) is the
contraction with that gradient, so reverse mode only scales it by the weights and dloss (no
second pass over the scores), and forward mode works too.  The kernel's outputs are
differentiated as their XLA twin, :func:`jaxops.ops.cross_entropy.cross_entropy_rows_xla`
(second derivatives).  Without a gradient wanted, the kernel writes the loss alone.

Backend code: :mod:`jaxops.kernels.softmax_cross_entropy.triton`.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from jaxops._ad import with_twin_derivative
from jaxops._numerics import upcast
from jaxops.kernels.softmax_cross_entropy import triton
from jaxops.ops.cross_entropy import cross_entropy_rows_xla, softmax_cross_entropy
from jaxops.ops.loss_machinery import reduce_entries


def _score_rows(scores, labels, axis=1):
    """(rows, C) scores with the class axis last, and the (rows,) labels: the labels have the
    scores' other axes in their order, so each row keeps its label (a free reshape when the
    classes are already last, axis=-1)."""
    return (jnp.moveaxis(scores, axis, -1).reshape(-1, scores.shape[axis]),
            labels.reshape(-1))


def _cross_entropy_rows(x, labels, *, ignore_index, interpret):
    kernel = functools.partial(triton.softmax_cross_entropy_rows, ignore_index=ignore_index,
                               with_gradient=True, interpret=interpret)
    twin = functools.partial(cross_entropy_rows_xla, ignore_index=ignore_index)
    return with_twin_derivative(kernel, twin)(x, labels)


def _supports(*, return_log_prob, label_smoothing, **attrs):
    # any class axis: the kernel path moves it last (_score_rows)
    if return_log_prob:
        return "return_log_prob=True (the kernel does not write log_prob)"
    if label_smoothing:
        return ("label_smoothing != 0 (the kernel computes the label's term only, not "
                "sum_c w_c log p_c)")
    return None


def _softmax_cross_entropy_pallas(scores, labels, weights=None, *, ignore_index, reduction,
                                  return_log_prob, axis, label_smoothing, interpret):
    x, t = _score_rows(scores, labels, axis)
    (loss,) = triton.softmax_cross_entropy_rows(x, t, ignore_index=ignore_index,
                                                with_gradient=False, interpret=interpret)
    return reduce_entries(loss.reshape(labels.shape), labels, weights, scores.shape[axis],
                          ignore_index=ignore_index, reduction=reduction).astype(scores.dtype)


def _softmax_cross_entropy_pallas_jvp(primals, tangents, *, ignore_index, reduction,
                                      return_log_prob, axis, label_smoothing, interpret):
    scores, labels, weights = primals
    x, t = _score_rows(scores, labels, axis)
    loss, g = _cross_entropy_rows(x, t, ignore_index=ignore_index, interpret=interpret)
    dx, _ = _score_rows(upcast(tangents[0]), labels, axis)
    t_rows = jnp.sum(upcast(g) * dx, axis=1)  # <gradient, tangent> per row
    y, t_y = (reduce_entries(r.reshape(labels.shape), labels, weights, scores.shape[axis],
                             ignore_index=ignore_index, reduction=reduction)
              .astype(scores.dtype) for r in (loss, t_rows))
    return y, t_y


softmax_cross_entropy.defimpl("pallas", jvp=_softmax_cross_entropy_pallas_jvp,
                              supports=_supports)(_softmax_cross_entropy_pallas)
