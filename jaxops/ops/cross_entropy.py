"""Cross-entropy losses over a class axis, each with its registered gradient op.

* :func:`softmax_cross_entropy`: ONNX SoftmaxCrossEntropyLoss-13 (integer labels, class axis
  1, optional class weights, ``ignore_index``, optional ``log_prob`` output).
* :func:`nll_loss`: ONNX NegativeLogLikelihoodLoss-22 (the same, from log-probabilities).
* :func:`cross_entropy`: Caffe2's CrossEntropy, with distribution targets (jaxops domain).

The labelled losses share ONNX's semantics, with two choices where ONNX is silent (a fully
ignored or empty batch has mean 0, not NaN; ``ignore_index`` must be an int32 value): labels,
``ignore_index``, class weights, the weighted mean and out-of-range labels are described and
implemented once, in :mod:`jaxops.ops.loss_machinery`.

Everything is computed in float32 for half-precision scores and cast back once.

softmax_cross_entropy's fused Pallas kernel, and how it is differentiated:
:mod:`jaxops.kernels.softmax_cross_entropy`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxops import schema
from jaxops._numerics import upcast
from jaxops._op import defop
from jaxops.ops.loss_machinery import (
    IGNORE_INDEX,
    LABELLED_TYPES,
    REDUCTION,
    check_dloss_shape,
    entry_weights,
    labels_in_range,
    labels_parameter,
    loss_coefficient,
    loss_shape,
    reduce,
    reduce_weighted,
    spread,
    weights_parameter,
)
from jaxops.ops.softmax import log_softmax, log_softmax_gradient
from jaxops.schema import (
    JAXOPS_DOMAIN,
    XLA_AND_PALLAS,
    Attribute,
    Cost,
    OpSchema,
    Parameter,
)

# -------------------------------------------------------------------- shared by SCE and NLL

def _check_labelled(s: OpSchema, scores, labels, weights, axis: int = 1) -> int:
    """Shapes of (scores (N, C, d...), labels (N, d...), weights (C,)) with the classes on
    ``axis`` (1: ONNX's layout); returns C."""
    f, (x, t) = s.function, (s.inputs[0].name, s.inputs[1].name)
    rank = len(scores.shape)
    if not -rank <= axis < rank:
        raise ValueError(f"jaxops.{f}: input {x!r} must have shape (N, C, d1, ...) with the "
                         f"classes on axis 1 (ONNX's layout), or pass axis= (axis=-1 for "
                         f"(..., C) scores); got shape {scores.shape}, which has no axis {axis}.")
    axis %= rank
    want = scores.shape[:axis] + scores.shape[axis + 1:]
    if labels.shape != want:
        raise ValueError(f"jaxops.{f}: input {t!r} must have shape {want} ({x!r} without its "
                         f"class axis {axis}), got {labels.shape}.")
    c = scores.shape[axis]
    if weights is not None and weights.shape != (c,):
        raise ValueError(f"jaxops.{f}: input {s.inputs[2].name!r} must have shape ({c},), one "
                         f"weight per class, got {weights.shape}.")
    return c


def _picked(logp, safe, axis=1):
    """logp[n, label_n, d...]: the log-probability of each entry's label along ``axis``.
    Without classes there is nothing to pick (a gather of an empty axis is refused): 0, which
    the callers mask, since each such entry is ignored or invalid."""
    if logp.shape[axis] == 0:
        return jnp.zeros(safe.shape, logp.dtype)
    return jnp.take_along_axis(logp, jnp.expand_dims(safe, axis), axis=axis).squeeze(axis)


def _along(v, axis, rank):
    """A (C,) per-class vector shaped to broadcast along ``axis`` of a rank-``rank`` array."""
    return v.reshape(tuple(-1 if k == axis % rank else 1 for k in range(rank)))


def _smoothing_term(logp, weights, ignored, axis):
    """Label smoothing's per-entry term ``-sum_c w_c log p_c`` (PyTorch's ``smooth_loss``),
    0 on ignored entries."""
    wc = 1.0 if weights is None else _along(upcast(weights), axis, logp.ndim)
    return jnp.where(ignored, 0.0, -jnp.sum(logp * wc, axis=axis))


def _ignored(labels, ignore_index):
    if ignore_index is None:
        return jnp.zeros_like(labels, bool)
    return labels == ignore_index


def _nll_from_log_prob(logp, labels, weights, *, ignore_index, reduction, axis=1,
                       label_smoothing=0.0):
    """The weighted negative log-likelihood of float32 log-probabilities, with PyTorch's label
    smoothing: ``(1 - eps) w_l nll + eps / C * sum_c w_c (-log p_c)`` per entry, the "mean"
    divided by ``sum_n w_{l_n}`` either way."""
    c = logp.shape[axis]
    w, safe, invalid = entry_weights(labels, weights, c, ignore_index, logp.dtype)
    nll = -_picked(logp, safe, axis)
    if not label_smoothing:
        return reduce_weighted(nll, w, invalid, reduction)
    smooth = _smoothing_term(logp, weights, _ignored(labels, ignore_index), axis)
    return reduce_weighted(nll, w, invalid, reduction, scale=1.0 - label_smoothing,
                           plus=label_smoothing / max(c, 1) * smooth)


def _one_hot(safe, c, dtype, axis=1):
    return jax.nn.one_hot(safe, c, axis=axis, dtype=dtype)


def _labelled_infer(s: OpSchema, in_avals, *, reduction, return_log_prob=False, axis=1,
                    **attrs):
    scores, labels, weights = in_avals[:3]
    _check_labelled(s, scores, labels, weights, axis)
    loss = jax.ShapeDtypeStruct(loss_shape(labels.shape, reduction), scores.dtype)
    if return_log_prob:
        return loss, jax.ShapeDtypeStruct(scores.shape, scores.dtype)
    return (loss,)


def _labelled_gradient_infer(s: OpSchema, in_avals, *, reduction, axis=1, **attrs):
    scores, labels, weights, dloss = in_avals
    (loss,) = _labelled_infer(s, (scores, labels, weights), reduction=reduction, axis=axis)
    check_dloss_shape(s, dloss, loss.shape, reduction)
    return (jax.ShapeDtypeStruct(scores.shape, scores.dtype),)


def _labelled_cost(flops: float, exps: float, logs_per_entry: float, reads_first=True):
    """One read of every input (not of the first when only its shape is used), one write of
    every output; ``flops``/``exps`` per score."""

    def cost(in_avals, out_avals, **attrs):
        n = math.prod(in_avals[0].shape)
        entries = math.prod(in_avals[1].shape)
        read = sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize
                   for a in in_avals[0 if reads_first else 1:] if a is not None)
        written = sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in out_avals)
        return Cost(flops * n, exps * n + logs_per_entry * entries, read, written)

    return cost


#: The class axis: a jaxops extension of ONNX's labelled losses, whose classes are on axis 1.
#: A call with another axis exports as the ONNX node between Transposes (docs/onnx.md).
CLASS_AXIS = Attribute(
    "axis", "int", 1, onnx=False,
    doc="the class axis of the scores (ONNX: 1); -1 takes (..., C) scores with (...) labels")


def _smoothing_ok(eps: float) -> str | None:
    return None if 0.0 <= eps <= 1.0 else "must be in [0, 1] (PyTorch's label_smoothing)."


#: Label smoothing, PyTorch's: a jaxops extension of ONNX's SoftmaxCrossEntropyLoss.
LABEL_SMOOTHING = Attribute(
    "label_smoothing", "float", 0.0, onnx=False, check=_smoothing_ok,
    doc="eps in [0, 1]: the target is (1 - eps) onehot + eps / C, as PyTorch's "
        "CrossEntropyLoss(label_smoothing=eps), class weights included")

# ------------------------------------------------------------------ SoftmaxCrossEntropyLoss

SOFTMAX_CROSS_ENTROPY = schema.register(OpSchema(
    name="SoftmaxCrossEntropyLoss", function="softmax_cross_entropy", since_version=13,
    inherit_onnx_schema=True,
    doc="loss = -weights[labels] * log_softmax(scores, axis=1)[labels], reduced.",
    inputs=(Parameter("scores", doc="unnormalized scores, shape (N, C, d1, ...)"),
            labels_parameter(), weights_parameter()),
    outputs=(Parameter("output", doc="the loss: shape (N, d1, ...) for 'none', else ()"),
             Parameter("log_prob", doc="log_softmax(scores, axis=1)", optional=True)),
    attributes=(IGNORE_INDEX, REDUCTION,
                Attribute("return_log_prob", "bool", False, onnx=False,
                          doc="also return log_prob (ONNX's optional second output)"),
                CLASS_AXIS, LABEL_SMOOTHING),
    type_constraints=LABELLED_TYPES, elementwise=False, identical_type_and_shape=False,
    value_check=labels_in_range, gradient="SoftmaxCrossEntropyLossGradient",
    infer_fn=_labelled_infer, cost_fn=_labelled_cost(flops=5, exps=1, logs_per_entry=1),
    implementations=XLA_AND_PALLAS,
    formula="−w[l]·log_softmax(s, axis=1)[l]",
    convention="fully ignored → 0",
))


@defop(SOFTMAX_CROSS_ENTROPY)
def softmax_cross_entropy(
    scores: ArrayLike, labels: ArrayLike, weights: ArrayLike | None = None, *,
    ignore_index: int | None = None, reduction: str = "mean", return_log_prob: bool = False,
    axis: int = 1, label_smoothing: float = 0.0,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Softmax cross-entropy of integer labels (ONNX SoftmaxCrossEntropyLoss-13), with
    PyTorch's label smoothing.

    .. math:: \ell_n = (1 - \varepsilon)\, w_{l_n} (-\log p_{n, l_n})
              + \frac{\varepsilon}{C} \sum_c w_c (-\log p_{n, c}), \qquad
              p_n = \mathrm{softmax}(s_n), \qquad
              \text{mean} = \frac{\sum_n \ell_n}{\sum_n w_{l_n}}

    .. math:: \frac{\partial \ell_n}{\partial s_n} = (1 - \varepsilon)\, w_{l_n}
              (p_n - \mathrm{onehot}(l_n)) + \frac{\varepsilon}{C}
              \Big(p_n \sum_c w_c - w\Big)

    Classes are on ``axis``, 1 by default (ONNX's layout): ``scores`` is ``(N, C)`` or
    ``(N, C, d1, ...)`` and ``labels`` ``(N)`` or ``(N, d1, ...)``; with ``axis=-1``,
    ``(B, T, C)`` scores take ``(B, T)`` labels (optax's layout).  Labels have the shape of
    ``scores`` without its class axis.  Entries labelled ``ignore_index`` add neither loss nor
    weight; a fully ignored batch has mean 0 (ONNX/PyTorch: NaN).  Stable for large scores
    (``log_softmax``); half precision is computed in float32.  The registered gradient op
    reads ``log_prob`` and writes ``softmax - onehot`` (Caffe2's SoftmaxWithLossGradient),
    with the classes on axis 1 (another class axis is moved there and back); the smoothing
    term, linear in ``log_prob``, adds :func:`log_softmax_gradient` of its cotangent
    ``-eps / C * w``.  The Pallas kernel serves any class axis (moved last) and no smoothing.

    ``label_smoothing`` is PyTorch's ``CrossEntropyLoss(label_smoothing=eps)`` exactly,
    class weights and ``ignore_index`` included: the smoothing term weights each class by its
    own weight and is 0 on ignored entries, and "mean" divides both terms by the summed weight
    of the entries' labels.  Without weights it is
    ``optax.softmax_cross_entropy(s, optax.smooth_labels(onehot(l), eps))`` per entry.  A
    class of probability 0 (a ``-inf`` score) makes the smoothing term ``inf``, as in PyTorch.

    Same values as ``optax.softmax_cross_entropy_with_integer_labels`` per entry and PyTorch's
    ``CrossEntropyLoss`` (NaN when fully ignored).

    Args:
      scores: float array ``(N, C, d1, ...)`` (classes on ``axis``).
      labels: int32/int64 array ``(N, d1, ...)`` of classes in ``[0, C)`` or ``ignore_index``.
      weights: optional float array ``(C,)`` (the dtype of ``scores``).
      ignore_index: label value to skip (static), or None.
      reduction: "none" | "sum" | "mean".
      return_log_prob: also return ``log_softmax(scores, axis=axis)``.
      axis: the class axis of ``scores`` (static; ONNX: 1).
      label_smoothing: ``eps`` in ``[0, 1]`` (static).

    Returns:
      The loss; with ``return_log_prob``, ``(loss, log_prob)``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> scores = jnp.array([[0.0, 0.0], [20.0, 0.0]])
      >>> jaxops.softmax_cross_entropy(scores, jnp.array([0, 1]), reduction="none")
      Array([ 0.6931472, 20.       ], dtype=float32)
      >>> jaxops.softmax_cross_entropy(scores[None], jnp.array([[0, 1]]), axis=-1,
      ...                              label_smoothing=0.2, reduction="none")
      Array([[ 0.6931472, 18.       ]], dtype=float32)

    References:
      ONNX SoftmaxCrossEntropyLoss-13; Caffe2 ``SoftmaxWithLoss``; Szegedy et al.,
      "Rethinking the Inception Architecture for Computer Vision" (2016) (label smoothing);
      PyTorch ``CrossEntropyLoss``.
    """
    logp = log_softmax(upcast(scores), axis=axis)
    loss = _nll_from_log_prob(logp, labels, weights, ignore_index=ignore_index,
                              reduction=reduction, axis=axis,
                              label_smoothing=label_smoothing).astype(scores.dtype)
    return (loss, logp.astype(scores.dtype)) if return_log_prob else loss


@softmax_cross_entropy.defgrad
def _softmax_cross_entropy_vjp(scores, labels, weights, y, dy, *, return_log_prob, axis,
                               label_smoothing, ignore_index, reduction):
    # recomputed when not returned; under jit XLA shares it with the forward
    logp = y[1] if return_log_prob else log_softmax(scores, axis=axis)
    dloss = dy[0] if return_log_prob else dy
    eps, axis = label_smoothing, axis % scores.ndim
    # the gradient op keeps ONNX's layout, classes on axis 1: another axis is moved there
    # and back (transposes XLA folds into the elementwise gradient)
    dscores = jnp.moveaxis(softmax_cross_entropy_gradient(
        jnp.moveaxis(logp, axis, 1), labels, weights, dloss * (1.0 - eps) if eps else dloss,
        ignore_index=ignore_index, reduction=reduction), 1, axis)
    # the smoothing term eps / C * sum_c w_c (-log p_c) is linear in log_prob: its gradient
    # is log_softmax's gradient op of its cotangent, -eps / C * w_c * g_n
    dlogp = _smoothing_cotangent(logp, labels, weights, dloss, eps, axis=axis,
                                 ignore_index=ignore_index, reduction=reduction) if eps else None
    if return_log_prob:
        dlogp = dy[1] if dlogp is None else dlogp + dy[1]
    if dlogp is not None:
        dscores = dscores + log_softmax_gradient(logp, dlogp, axis=axis)
    return dscores


def _smoothing_cotangent(logp, labels, weights, dloss, eps, *, axis, ignore_index, reduction):
    """The cotangent of ``log_prob`` from the smoothing term: ``-eps / C * w_c * g_n`` with
    ``g_n`` the loss's ``dloss`` spread over the weighted reduction (0 on ignored entries).
    The class weights of the labels are picked by a one-hot contraction, not a gather: this
    runs in the registered gradient, whose jnp an ONNX export of a gradient translates."""
    c = logp.shape[axis]
    ignored = _ignored(labels, ignore_index)
    skip = ignored | (labels < 0) | (labels >= c)
    g = jnp.broadcast_to(upcast(dloss), labels.shape)
    wc = jnp.ones((c,), g.dtype) if weights is None else upcast(weights)
    if reduction == "mean":
        onehot = _one_hot(jnp.where(skip, 0, labels), c, wc.dtype, axis)
        w = jnp.where(ignored, 0.0, jnp.sum(onehot * _along(wc, axis, logp.ndim), axis=axis))
        denom = jnp.sum(w)
        g = jnp.where(denom == 0, 0.0, g / jnp.where(denom == 0, 1.0, denom))
    g = jnp.where(skip, 0.0, g)
    dlogp = -eps / c * jnp.expand_dims(g, axis) * _along(wc, axis, logp.ndim)
    return dlogp.astype(logp.dtype)


SOFTMAX_CROSS_ENTROPY_GRADIENT = schema.register(OpSchema(
    name="SoftmaxCrossEntropyLossGradient", function="softmax_cross_entropy_gradient",
    domain=JAXOPS_DOMAIN,
    doc="dscores = (exp(log_prob) - onehot(labels)) * weights[labels] * dloss, "
        "spread back over the reduction.",
    inputs=(Parameter("log_prob", doc="log_softmax(scores, axis=1)"), labels_parameter(),
            weights_parameter(differentiable=True),
            Parameter("dloss", doc="gradient w.r.t. the loss")),
    outputs=(Parameter("dscores", doc="gradient w.r.t. the scores"),),
    attributes=(IGNORE_INDEX, REDUCTION), type_constraints=LABELLED_TYPES,
    elementwise=False, identical_type_and_shape=False, infer_fn=_labelled_gradient_infer,
    cost_fn=_labelled_cost(flops=4, exps=1, logs_per_entry=0),
))


@defop(SOFTMAX_CROSS_ENTROPY_GRADIENT)
def softmax_cross_entropy_gradient(
    log_prob: ArrayLike, labels: ArrayLike, weights: ArrayLike | None, dloss: ArrayLike, *,
    ignore_index: int | None = None, reduction: str = "mean",
) -> jax.Array:
    r"""Gradient op of :func:`softmax_cross_entropy`:
    ``(exp(log_prob) - onehot(labels)) * w[labels] * dloss`` (divided by the summed weight
    for "mean"), classes on axis 1 (ONNX's layout: the registered gradient moves another
    class axis there and back).

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> lp = jnp.log(jnp.array([[0.25, 0.75]]))
      >>> jaxops.softmax_cross_entropy_gradient(lp, jnp.array([1]), None, jnp.float32(1.0))
      Array([[ 0.25, -0.25]], dtype=float32)
    """
    lp, c = upcast(log_prob), log_prob.shape[1]
    coef, safe = loss_coefficient(labels, weights, dloss, c, ignore_index=ignore_index,
                                  reduction=reduction)
    coef = jnp.broadcast_to(coef, labels.shape)
    return ((jnp.exp(lp) - _one_hot(safe, c, lp.dtype)) * coef[:, None]).astype(log_prob.dtype)


def _onnx_label_coefficient(b, scores, labels, weights, dloss, ignore_index, reduction):
    """(coef, safe) in ONNX ops: d total / d loss_n = w[label_n] * dloss (NaN for an
    out-of-range label), spread over the reduction, and the labels clamped into range; as
    :func:`loss_coefficient` computes it."""
    c = b.op("Gather", b.op("Shape", scores), b.ints([1]), axis=0)
    c = b.op("CastLike", c, labels)
    zero_l = b.op("CastLike", b.ints([0]), labels)
    out_of_range = b.op("Or", b.op("Less", labels, zero_l),
                        b.op("GreaterOrEqual", labels, c))
    if ignore_index is not None:
        ignored = b.op("Equal", labels, b.op("CastLike", b.ints([ignore_index]), labels))
        invalid = b.op("And", out_of_range, b.op("Not", ignored))
        skip = b.op("Or", ignored, invalid)
    else:
        ignored, invalid, skip = None, out_of_range, out_of_range
    safe = b.op("Where", skip, zero_l, labels)
    zero, one = b.const(0.0, dloss), b.const(1.0, dloss)
    if weights is not None:
        w = b.op("CastLike", b.op("Gather", weights, safe, axis=0), dloss)
    else:
        w = b.op("Where", b.op("Equal", labels, labels), one, zero)  # ones, labels' shape
    if ignored is not None:
        w = b.op("Where", ignored, zero, w)
    g = dloss
    if reduction == "mean":
        denom = b.op("ReduceSum", w, keepdims=0)
        empty = b.op("Equal", denom, zero)
        g = b.op("Where", empty, zero, b.op("Div", g, b.op("Where", empty, one, denom)))
    nan = b.const(float("nan"), dloss)
    coef = b.op("Where", invalid, nan, b.op("Mul", w, g))
    return b.op("Unsqueeze", coef, b.ints([1])), safe


def _onnx_one_hot(b, safe, scores, like):
    """onehot(safe) on axis 1 as ``like``'s type: labels == a (1, C, 1, ...) class iota.
    (Not ONNX's OneHot: onnxruntime's CPU kernel lacks most of its type combinations.)"""
    rank = len(b.avals[0].shape)
    b.specialize(rank=rank)
    c = b.op("Squeeze", b.op("Gather", b.op("Shape", scores), b.ints([1]), axis=0))
    classes = b.op("Range", b.op("Squeeze", b.ints([0])), c, b.op("Squeeze", b.ints([1])))
    classes = b.op("Reshape", b.op("CastLike", classes, safe), b.ints([1, -1] + [1] * (rank - 2)))
    hit = b.op("Equal", b.op("Unsqueeze", safe, b.ints([1])), classes)
    return b.op("Where", hit, b.const(1.0, like), b.const(0.0, like))


@softmax_cross_entropy_gradient.defonnx
def _softmax_cross_entropy_gradient_onnx(b, log_prob, labels, weights, dloss, *, ignore_index,
                                         reduction):
    # not derived: the implementation gathers the class weights (no ONNX translation)
    coef, safe = _onnx_label_coefficient(b, log_prob, labels, weights, dloss, ignore_index,
                                         reduction)
    p = b.op("Exp", log_prob)
    return b.op("Mul", b.op("Sub", p, _onnx_one_hot(b, safe, log_prob, p)), coef)


def cross_entropy_rows_xla(x, labels, *, ignore_index):
    """Per-row loss (compute dtype) and gradient softmax - onehot (dtype of x) of (rows, C)
    scores, in XLA: the twin of the fused kernel (:mod:`jaxops.kernels.softmax_cross_entropy`)
    and linear_cross_entropy's per-chunk step."""
    xf = upcast(x)
    logp = log_softmax(xf, axis=1, implementation="xla")
    ignored = labels == ignore_index if ignore_index is not None else jnp.zeros_like(labels,
                                                                                     bool)
    valid = (labels >= 0) & (labels < x.shape[1]) & ~ignored
    safe = jnp.where(valid, labels, 0)
    loss = jnp.where(valid, 0.0 - _picked(logp, safe),  # +0, not -0, for a certain label
                     jnp.where(ignored, 0.0, jnp.nan))
    onehot = _one_hot(safe, x.shape[1], xf.dtype)
    g = jnp.exp(logp) - jnp.where(valid[:, None], onehot, jnp.zeros_like(onehot))
    return loss.astype(xf.dtype), jnp.where(ignored[:, None], 0.0, g).astype(x.dtype)


# ---------------------------------------------------------------- NegativeLogLikelihoodLoss

NLL_LOSS = schema.register(OpSchema(
    name="NegativeLogLikelihoodLoss", function="nll_loss", since_version=22,
    inherit_onnx_schema=True,
    doc="loss = -weight[target] * input[target] along axis 1, reduced.",
    inputs=(Parameter("input", doc="log-probabilities, shape (N, C, d1, ...)"),
            labels_parameter("target"), weights_parameter("weight")),
    outputs=(Parameter("loss", doc="shape (N, d1, ...) for 'none', else ()"),),
    attributes=(IGNORE_INDEX, REDUCTION, CLASS_AXIS),
    type_constraints=LABELLED_TYPES, elementwise=False, identical_type_and_shape=False,
    value_check=labels_in_range, gradient="NegativeLogLikelihoodLossGradient",
    infer_fn=_labelled_infer, cost_fn=_labelled_cost(flops=0, exps=0, logs_per_entry=0),
    formula="−w[l]·x[l] along axis 1",
    convention="fully ignored → 0",
))


@defop(NLL_LOSS)
def nll_loss(
    input: ArrayLike, target: ArrayLike, weight: ArrayLike | None = None, *,
    ignore_index: int | None = None, reduction: str = "mean", axis: int = 1,
) -> jax.Array:
    r"""Negative log-likelihood of integer labels (ONNX NegativeLogLikelihoodLoss-22).

    .. math:: \ell_n = -w_{t_n} x_{n, t_n}, \qquad
              \text{mean} = \frac{\sum_n \ell_n}{\sum_n w_{t_n}}

    ``input`` holds log-probabilities with classes on ``axis``, 1 by default (ONNX's layout;
    e.g. ``log_softmax(s, axis=1)``), -1 for ``(B, T, C)`` inputs with ``(B, T)`` targets;
    ``nll_loss(log_softmax(s, axis=1), t)`` equals ``softmax_cross_entropy(s, t)``.  The
    ``ignore_index``, weighting and out-of-range rules are those of
    :func:`softmax_cross_entropy` (:mod:`jaxops.ops.loss_machinery`).  Matches PyTorch's
    ``NLLLoss``.

    Args:
      input: float array ``(N, C, d1, ...)`` of log-probabilities.
      target: int32/int64 array ``(N, d1, ...)``.
      weight: optional float array ``(C,)``.
      ignore_index: label value to skip (static), or None.
      reduction: "none" | "sum" | "mean".
      axis: the class axis of ``input`` (static; ONNX: 1).

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> logp = jnp.log(jnp.array([[0.5, 0.5], [0.25, 0.75]]))
      >>> jaxops.nll_loss(logp, jnp.array([0, 1]), jnp.array([1.0, 3.0]))
      Array(0.38904837, dtype=float32)

    References:
      ONNX NegativeLogLikelihoodLoss-22.
    """
    return _nll_from_log_prob(upcast(input), target, weight, ignore_index=ignore_index,
                              reduction=reduction, axis=axis).astype(input.dtype)


@nll_loss.defgrad
def _nll_loss_vjp(input, target, weight, loss, dloss, *, axis, **attrs):
    # the gradient op keeps ONNX's layout, classes on axis 1 (see softmax_cross_entropy)
    axis %= input.ndim
    return jnp.moveaxis(nll_loss_gradient(jnp.moveaxis(input, axis, 1), target, weight, dloss,
                                          **attrs), 1, axis)


NLL_LOSS_GRADIENT = schema.register(OpSchema(
    name="NegativeLogLikelihoodLossGradient", function="nll_loss_gradient",
    domain=JAXOPS_DOMAIN,
    doc="dinput = -onehot(target) * weight[target] * dloss, spread back over the reduction.",
    inputs=(Parameter("input", doc="the forward input (for its shape and dtype; its values "
                      "are not read, so its derivative is exactly 0)"),
            labels_parameter("target"), weights_parameter("weight", differentiable=True),
            Parameter("dloss", doc="gradient w.r.t. loss")),
    outputs=(Parameter("dinput", doc="gradient w.r.t. the input"),),
    attributes=(IGNORE_INDEX, REDUCTION), type_constraints=LABELLED_TYPES,
    elementwise=False, identical_type_and_shape=False, infer_fn=_labelled_gradient_infer,
    cost_fn=_labelled_cost(flops=1, exps=0, logs_per_entry=0, reads_first=False),
))


@defop(NLL_LOSS_GRADIENT)
def nll_loss_gradient(
    input: ArrayLike, target: ArrayLike, weight: ArrayLike | None, dloss: ArrayLike, *,
    ignore_index: int | None = None, reduction: str = "mean",
) -> jax.Array:
    r"""Gradient op of :func:`nll_loss`: ``-onehot(target) * w[target] * dloss`` (divided by
    the summed weight for "mean"), classes on axis 1; ``input`` only gives the shape and
    dtype.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.nll_loss_gradient(jnp.zeros((1, 2)), jnp.array([1]), None, jnp.float32(1.0))
      Array([[-0., -1.]], dtype=float32)
    """
    c = input.shape[1]
    coef, safe = loss_coefficient(target, weight, dloss, c, ignore_index=ignore_index,
                                  reduction=reduction)
    coef = jnp.broadcast_to(coef, target.shape)
    return (-_one_hot(safe, c, coef.dtype) * coef[:, None]).astype(input.dtype)


@nll_loss_gradient.defonnx
def _nll_loss_gradient_onnx(b, x, labels, weights, dloss, *, ignore_index, reduction):
    coef, safe = _onnx_label_coefficient(b, x, labels, weights, dloss, ignore_index, reduction)
    return b.op("CastLike", b.op("Neg", b.op("Mul", _onnx_one_hot(b, safe, x, coef), coef)), x)


# ------------------------------------------------------------- CrossEntropy (distributions)

_AXIS = Attribute("axis", "int", -1, doc="the class axis, in [-rank, rank)")
_FROM_LOGITS = Attribute("from_logits", "bool", False,
                         doc="inputs are logits (log_softmax is applied), not probabilities")


def _ce_infer(s: OpSchema, in_avals, *, axis, reduction, **attrs):
    x, t = in_avals[:2]
    rank = len(x.shape)
    if not -rank <= axis < rank:
        raise ValueError(f"jaxops.{s.function}: attribute 'axis'={axis} is out of range for an "
                         f"input of rank {rank}; use an axis in [{-rank}, {rank - 1}].")
    if t.shape != x.shape:
        raise ValueError(f"jaxops.{s.function}: input {s.inputs[1].name!r} must have the shape "
                         f"of {s.inputs[0].name!r} {x.shape}, got {t.shape}.")
    per_example = x.shape[:axis % rank] + x.shape[axis % rank + 1:]
    return (jax.ShapeDtypeStruct(loss_shape(per_example, reduction), x.dtype),)


def _ce_gradient_infer(s: OpSchema, in_avals, *, axis, reduction, **attrs):
    x, t, dloss = in_avals
    (loss,) = _ce_infer(s, (x, t), axis=axis, reduction=reduction)
    check_dloss_shape(s, dloss, loss.shape, reduction)
    return (jax.ShapeDtypeStruct(x.shape, x.dtype),)


def _ce_cost(flops: float, grad: bool = False):
    """Per element: ``flops``, and an exp (logits) or a log (probabilities, forward only);
    per row a log (the log-sum-exp of the forward from logits)."""

    def cost(in_avals, out_avals, *, from_logits, axis, **attrs):
        x = in_avals[0]
        n = math.prod(x.shape)
        rows = n // x.shape[axis] if x.shape and x.shape[axis] else 0
        item = np.dtype(x.dtype).itemsize
        exps = n if from_logits else (0 if grad else n)  # exp of logits, or log of probs
        logs = rows if from_logits and not grad else 0
        read = sum(math.prod(a.shape) * item for a in in_avals)
        written = sum(math.prod(a.shape) * item for a in out_avals)
        return Cost(flops * n, exps + logs, read, written)

    return cost


CROSS_ENTROPY = schema.register(OpSchema(
    name="CrossEntropy", function="cross_entropy", domain=JAXOPS_DOMAIN,
    doc="loss = -sum(targets * log(p), axis) with 0 log 0 = 0; p = softmax(inputs) if "
        "from_logits else inputs.",
    inputs=(Parameter("inputs", doc="probabilities (or logits with from_logits)"),
            Parameter("targets", doc="target distribution, same shape")),
    outputs=(Parameter("loss", doc="per example for 'none', else a scalar"),),
    attributes=(_FROM_LOGITS, _AXIS, REDUCTION), elementwise=False,
    identical_type_and_shape=False, gradient="CrossEntropyGradient", infer_fn=_ce_infer,
    cost_fn=_ce_cost(flops=3),
    formula="−Σ t·log p",
    convention="0·log 0 = 0",
))


def _per_example_ce(x, t, *, from_logits, axis):
    """-sum(t log p) along axis in float32, with t = 0 contributing 0 (double where)."""
    logp = log_softmax(x, axis=axis) if from_logits else None
    empty = t == 0
    if from_logits:
        term = jnp.where(empty, 0.0, t * jnp.where(empty, 0.0, logp))
    else:
        term = jnp.where(empty, 0.0, t * jnp.log(jnp.where(empty, 1.0, x)))
    return -jnp.sum(term, axis=axis)


@defop(CROSS_ENTROPY)
def cross_entropy(
    inputs: ArrayLike, targets: ArrayLike, *, from_logits: bool = False, axis: int = -1,
    reduction: str = "mean",
) -> jax.Array:
    r"""Cross-entropy of a target distribution, per example along ``axis``, reduced.

    .. math:: \ell = -\sum_c t_c \log p_c, \quad 0 \log 0 = 0, \qquad
              p = \mathrm{softmax}(x) \text{ if from\_logits else } x

    A zero target contributes 0 even where ``p`` is 0 (or a logit is ``-inf``), with a finite
    gradient; ``p = 0`` under a positive target gives ``inf``, as the math says.  Targets are
    non-differentiable (Caffe2's CrossEntropyGradient returns dX only).  With
    ``from_logits=True`` this is ``optax.softmax_cross_entropy`` (classes on ``axis``);
    ``reduction="mean"`` averages over examples.

    Args:
      inputs: float array of probabilities, or logits with ``from_logits=True``.
      targets: float array of the same shape (rows summing to 1 for a distribution).
      from_logits: apply ``log_softmax`` along ``axis`` first (static).
      axis: the class axis (static).
      reduction: "none" (one loss per example) | "sum" | "mean".

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.cross_entropy(jnp.array([[0.5, 0.5, 0.0]]), jnp.array([[1.0, 0.0, 0.0]]))
      Array(0.6931472, dtype=float32)

    References:
      Caffe2 ``CrossEntropy``; optax ``softmax_cross_entropy``.
    """
    loss = _per_example_ce(upcast(inputs), upcast(targets), from_logits=from_logits, axis=axis)
    return reduce(loss, reduction, inputs.dtype)


@cross_entropy.defonnx
def _cross_entropy_onnx(b, x, t, *, from_logits, axis, reduction):
    zero = b.const(0.0, t)
    logp = b.op("LogSoftmax", x, axis=axis) if from_logits else b.op("Log", x)
    empty = b.op("Equal", t, zero)
    term = b.op("Where", empty, zero, b.op("Mul", t, b.op("Where", empty, zero, logp)))
    return b.reduce(b.op("Neg", b.op("ReduceSum", term, b.ints([axis]), keepdims=0)),
                    reduction)


def _spread(dloss, x, axis, reduction):
    """d total / d loss_n per example, broadcastable against ``x`` along ``axis``."""
    examples = x.shape[:axis % x.ndim] + x.shape[axis % x.ndim + 1:]
    return jnp.expand_dims(spread(dloss, examples, reduction), axis)


@cross_entropy.defgrad
def _cross_entropy_vjp(inputs, targets, loss, dloss, *, from_logits, axis, reduction):
    # d loss / d targets = -log p (the loss is linear in the targets), as optax and PyTorch
    # differentiate it; inf where p = 0
    x = upcast(inputs)
    logp = log_softmax(x, axis=axis) if from_logits else jnp.log(x)
    dtargets = -logp * _spread(dloss, x, axis, reduction)
    return (cross_entropy_gradient(inputs, targets, dloss, from_logits=from_logits, axis=axis,
                                   reduction=reduction),
            dtargets.astype(targets.dtype))


CROSS_ENTROPY_GRADIENT = schema.register(OpSchema(
    name="CrossEntropyGradient", function="cross_entropy_gradient", domain=JAXOPS_DOMAIN,
    doc="dinputs = -targets / inputs * dloss (0 where targets = 0), or with from_logits "
        "(softmax(inputs) * sum(targets) - targets) * dloss; dloss spread over the reduction.",
    inputs=(Parameter("inputs", doc="the forward inputs"),
            Parameter("targets", doc="target distribution"),
            Parameter("dloss", doc="gradient w.r.t. the loss")),
    outputs=(Parameter("dinputs", doc="gradient w.r.t. the inputs"),),
    attributes=(_FROM_LOGITS, _AXIS, REDUCTION), elementwise=False,
    identical_type_and_shape=False, infer_fn=_ce_gradient_infer,
    cost_fn=_ce_cost(flops=3, grad=True),
))


@defop(CROSS_ENTROPY_GRADIENT)
def cross_entropy_gradient(
    inputs: ArrayLike, targets: ArrayLike, dloss: ArrayLike, *, from_logits: bool = False,
    axis: int = -1, reduction: str = "mean",
) -> jax.Array:
    r"""Gradient op of :func:`cross_entropy`.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.cross_entropy_gradient(jnp.array([[0.5, 0.5]]), jnp.array([[1.0, 0.0]]),
      ...                               jnp.float32(1.0))
      Array([[-2.,  0.]], dtype=float32)
    """
    x, t = upcast(inputs), upcast(targets)
    g = _spread(dloss, x, axis, reduction)
    if from_logits:
        p = jnp.exp(log_softmax(x, axis=axis))
        dx = p * jnp.sum(t, axis=axis, keepdims=True) - t
    else:
        # -t / x is linear in t (its t-derivative -1 / x is needed at t = 0 too); only 0 / 0
        # at t = x = 0 is kept out, giving 0 (0 - t: +0, not -0, where t = 0)
        dx = (0.0 - t) / jnp.where((t == 0) & (x == 0), 1.0, x)
    return (dx * g).astype(inputs.dtype)


@cross_entropy_gradient.defonnx
def _cross_entropy_gradient_onnx(b, x, t, dloss, *, from_logits, axis, reduction):
    g = b.op("Div", dloss, b.count(x, dloss, axis)) if reduction == "mean" else dloss
    if reduction == "none":
        g = b.op("Unsqueeze", g, b.ints([axis]))
    if from_logits:
        # jaxops' softmax of a fully masked (all -inf) row is 0; ONNX's Softmax gives NaN
        empty_row = b.op("Equal", b.op("ReduceMax", x, b.ints([axis]), keepdims=1),
                         b.const(float("-inf"), x))
        p = b.op("Where", empty_row, b.const(0.0, x), b.op("Softmax", x, axis=axis))
        dx = b.op("Sub", b.op("Mul", p, b.op("ReduceSum", t, b.ints([axis]), keepdims=1)), t)
    else:
        zero = b.const(0.0, t)
        empty = b.op("Equal", t, zero)
        dx = b.op("Where", empty, zero, b.op("Neg", b.op(
            "Div", t, b.op("Where", empty, b.const(1.0, x), x))))
    return b.op("Mul", dx, g)
