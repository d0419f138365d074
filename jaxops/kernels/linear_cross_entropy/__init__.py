"""The Pallas path of linear_cross_entropy, and how it is differentiated
(:mod:`jaxops.kernels` states the rules; :mod:`jaxops.ops.linear_cross_entropy` keeps the op
and its chunked XLA scans).

The gradient is computed during the forward pass (Liger-Kernel's fused linear
cross-entropy): per chunk of tokens the fused softmax cross-entropy kernel
(:mod:`jaxops.kernels.softmax_cross_entropy.triton`; this op has no backend code of its own)
writes the loss and ``G = softmax - onehot`` in one pass over the logits, and ``dh``, ``dw``
are accumulated right away.  The op's linearization (``jvp=``) is ``<dh, th> + <dw, tw>``,
which reverse mode only scales by ``dloss``; the fused scan's outputs are differentiated as
the XLA scan (second derivatives).  ``reduction="none"`` is not supported: a per-entry
``dloss`` cannot scale ``dw`` after the forward summed it.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from jaxops._ad import with_twin_derivative
from jaxops._numerics import upcast
from jaxops.kernels.softmax_cross_entropy import triton
from jaxops.ops.linear_cross_entropy import (
    gradient_scan,
    linear_cross_entropy,
    loss_scan,
    xla_rows,
)
from jaxops.ops.loss_machinery import loss_coefficient, reduce_entries


def _kernel_rows(ignore_index, interpret, with_gradient=True):
    """Each chunk's step by the fused kernel (the loss alone without ``with_gradient``)."""
    return functools.partial(triton.softmax_cross_entropy_rows, ignore_index=ignore_index,
                             with_gradient=with_gradient, interpret=interpret)


def _supports(*, reduction, **attrs):
    return None if reduction != "none" else (
        "reduction='none' (a per-entry dloss cannot scale dw after the forward summed it)")


def _linear_cross_entropy_pallas(h, w, labels, weights=None, *, ignore_index, reduction,
                                 chunk_size, interpret):
    """The loss alone (no gradient wanted): the kernel without its gradient output."""
    loss = loss_scan(h, w, labels, _kernel_rows(ignore_index, interpret, with_gradient=False),
                     chunk_size)
    return reduce_entries(loss, labels, weights, w.shape[1], ignore_index=ignore_index,
                          reduction=reduction).astype(h.dtype)


def _linear_cross_entropy_pallas_jvp(primals, tangents, *, ignore_index, reduction,
                                     chunk_size, interpret):
    """(loss, dh, dw) in one pass per chunk (the fused kernel writes G), differentiated as
    the XLA scan; the tangent is <dh, th> + <dw, tw>, which reverse mode only scales.  The
    mechanism calls it only when th or tw is nonzero (None: a symbolic zero)."""
    h, w, labels, weights = primals
    coef, _ = loss_coefficient(labels, weights, jnp.ones((), upcast(h).dtype), w.shape[1],
                               ignore_index=ignore_index, reduction=reduction)
    fused = with_twin_derivative(
        functools.partial(gradient_scan, rows=_kernel_rows(ignore_index, interpret),
                          chunk_size=chunk_size),
        functools.partial(gradient_scan, rows=xla_rows(ignore_index), chunk_size=chunk_size))
    loss, dh, dw = fused(h, w, labels, jnp.broadcast_to(coef, labels.shape))
    y = reduce_entries(loss, labels, weights, w.shape[1], ignore_index=ignore_index,
                       reduction=reduction).astype(h.dtype)
    # None: a symbolic zero tangent (that input is not differentiated): no term
    t_y = sum(jnp.sum(upcast(g) * upcast(t)) for g, t in zip((dh, dw), tangents[:2],
                                                               strict=True) if t is not None)
    return y, t_y.astype(h.dtype)


linear_cross_entropy.defimpl("pallas", jvp=_linear_cross_entropy_pallas_jvp,
                             supports=_supports)(_linear_cross_entropy_pallas)
