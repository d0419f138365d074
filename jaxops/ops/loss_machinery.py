"""What every loss shares: the ``reduction``, the labels and their weights, and the dloss a
gradient op takes.  No ops live here; the loss families (:mod:`jaxops.ops.losses`,
:mod:`jaxops.ops.cross_entropy`, :mod:`jaxops.ops.linear_cross_entropy`) build theirs from it,
so each rule below is written once.

Reduction (the ``reduction`` attribute, ONNX's name and default):

* ``"none"`` returns one loss per element (per example, per labelled entry), ``"sum"`` their
  sum and ``"mean"`` (the default) their mean; a reduced loss is a scalar
  (:func:`loss_shape`).  Losses are reduced in their compute dtype (at least float32) and cast
  to the input dtype once (:func:`reduce`).

Labelled losses (integer class labels with classes on axis 1 by default, ONNX's layout, or on
the ``axis`` the op is given: ONNX's SoftmaxCrossEntropyLoss and NegativeLogLikelihoodLoss, and
the chunked LM-head loss), with two choices where ONNX is silent:

* Labels are int32 or int64 (``LABELLED_TYPES``); the optional class weights have one entry
  per class.  An entry's weight is its label's class weight (1 without weights), 0 where the
  label is ``ignore_index``: an ignored entry adds neither loss nor weight.
* ``reduction="mean"`` is the weighted mean ``sum_n w[l_n] loss_n / sum_n w[l_n]`` (plain mean
  without weights).  When every entry is ignored the sum of weights is 0: jaxops returns 0
  with zero gradients (ONNX's reference and PyTorch give 0/0 = NaN), so an all-padding batch
  cannot poison a training run.
* An empty batch (N = 0, or no spatial positions) has no weight either, so its mean is 0 by
  the same rule (``jnp.mean`` of no losses would be NaN); its sum is 0.  Scores without
  classes (C = 0) have no valid label: every label must be ``ignore_index``.
* ``ignore_index`` must be an int32 value (``ValueError`` otherwise): labels are int32, or
  int64 under x64, and no label could equal a value outside that range.
* A label outside ``[0, C)`` that is not ``ignore_index`` is a value error: outside ``jit`` it
  raises ``ValueError`` (:func:`labels_in_range`); inside ``jit`` its loss is NaN (ONNX leaves
  it undefined; indexing would crash), and NaN propagates through the reductions, where a
  checked loop can see it.

Gradient ops (Caffe2's ``*Gradient``) take ``dloss``, the gradient with respect to the loss:

* Its shape is the loss's, per element for ``"none"`` and a scalar otherwise; anything else
  is refused at trace time (:func:`check_dloss_shape`).
* It is spread back over the reduction: each element's coefficient is ``dloss`` for
  ``"sum"``, ``dloss / count`` for ``"mean"`` (:func:`spread`), and for labelled losses
  ``w_n dloss`` or ``w_n dloss / sum_n w_n`` (:func:`loss_coefficient`), 0 when no weight is
  left, NaN for an out-of-range label.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from jaxops._numerics import upcast
from jaxops.schema import FLOAT_TYPES, Attribute, OpSchema, Parameter

__all__ = [
    "IGNORE_INDEX",
    "INDEX_TYPES",
    "LABELLED_TYPES",
    "REDUCTION",
    "REDUCTIONS",
    "check_dloss_shape",
    "entry_weights",
    "labels_in_range",
    "labels_parameter",
    "loss_coefficient",
    "loss_shape",
    "reduce",
    "reduce_entries",
    "reduce_weighted",
    "spread",
    "weights_parameter",
]

# ------------------------------------------------------------------------------ reduction

REDUCTIONS = ("none", "sum", "mean")


def _reduction_ok(r: str) -> str | None:
    return None if r in REDUCTIONS else f"must be one of {REDUCTIONS}."


#: The ``reduction`` attribute of every loss and loss-gradient op.
REDUCTION = Attribute("reduction", "string", "mean", doc="none | sum | mean",
                      check=_reduction_ok)


def loss_shape(shape: tuple[int, ...], reduction: str) -> tuple[int, ...]:
    """The shape of a loss whose unreduced losses have ``shape``: that, or a scalar."""
    return shape if reduction == "none" else ()


def reduce(loss: jax.Array, reduction: str, dtype: DTypeLike) -> jax.Array:
    """Unweighted losses summed, averaged or kept, then cast to ``dtype``.

    Example:
      >>> import jax.numpy as jnp
      >>> reduce(jnp.array([1.0, 2.0]), "mean", jnp.bfloat16)
      Array(1.5, dtype=bfloat16)
    """
    if reduction == "sum":
        loss = jnp.sum(loss)
    elif reduction == "mean":
        loss = jnp.mean(loss)
    return loss.astype(dtype)


def spread(dloss: ArrayLike, shape: tuple[int, ...], reduction: str) -> jax.Array:
    """``dloss`` (in the compute dtype) spread over the unreduced losses of ``shape``: the
    gradient of :func:`reduce`'s result with respect to each of them."""
    g = upcast(dloss)
    if reduction == "mean":
        # the mean over no losses is NaN, but then their gradient is empty: any divisor will do
        g = g / max(math.prod(shape), 1)
    return jnp.broadcast_to(g, shape)


def check_dloss_shape(s: OpSchema, dloss, expected: tuple[int, ...], reduction: str) -> None:
    """A gradient op's trace-time check: ``dloss`` (an aval) has the shape ``expected`` of
    the loss it is the gradient of (:func:`loss_shape`)."""
    if dloss.shape != expected:
        raise ValueError(f"jaxops.{s.function}: dloss must have the loss's shape {expected} "
                         f"for reduction={reduction!r}, got {dloss.shape}.")


# ------------------------------------------------------------------- labels and weights

INDEX_TYPES = ("int32", "int64")

#: Type constraints of a labelled loss: float scores and weights ``T``, integer labels ``Tind``.
LABELLED_TYPES = {"T": FLOAT_TYPES, "Tind": INDEX_TYPES}

_INT32 = np.iinfo(np.int32)


def _int32_label(value: int) -> str | None:
    """Labels are int32 (int64 only with x64): an ``ignore_index`` no int32 label can equal
    is a mistake, and comparing labels with it would overflow at trace time.  The int32
    range lies inside both label dtypes, so checking it here covers either."""
    if _INT32.min <= value <= _INT32.max:
        return None
    return (f"must be an int32 label value, in [{_INT32.min}, {_INT32.max}] (no label can "
            "equal it otherwise). Use the value your padding labels hold, e.g. -100.")


#: The ``ignore_index`` attribute of every labelled loss and its gradient op.
IGNORE_INDEX = Attribute("ignore_index", "int", None, check=_int32_label,
                         doc="label value that contributes neither loss nor weight")


# float labels are usually one-hot or soft targets, which cross_entropy takes as they are
_FLOAT_TARGETS = ", or use cross_entropy for one-hot/probability targets"


def labels_parameter(name: str = "labels", dtype_advice: str = _FLOAT_TARGETS) -> Parameter:
    """The integer-labels input of a labelled loss (``Tind``, not differentiable)."""
    return Parameter(name, "Tind", doc="class indices, shape (N, d1, ...)", differentiable=False,
                     dtype_advice=dtype_advice)


def weights_parameter(name: str = "weights", *, differentiable: bool = False) -> Parameter:
    """The optional per-class weights input of a labelled loss: not differentiable in the
    loss (differentiating it raises), differentiable in its gradient op, which JAX
    differentiates (``differentiable=True``: what a second derivative w.r.t. the weights
    is, e.g. of a weighted gradient penalty)."""
    return Parameter(name, doc="per-class weights, shape (C,)", optional=True,
                     differentiable=differentiable)


def labels_in_range(scores, labels, weights=None, *rest, ignore_index=None, axis=1, **attrs):
    """The ``value_check`` of a labelled loss whose ``scores`` have the classes on ``axis``
    (1 unless the op has an ``axis`` attribute): every label in ``[0, C)`` or
    ``ignore_index``."""
    c = scores.shape[axis]
    bad = ((labels < 0) | (labels >= c)) & (labels != ignore_index)
    if bad.any() and c == 0:
        return (f"'scores' has no classes (axis {axis} has size 0), so every label must be "
                f"ignore_index; got labels {np.unique(labels[bad])[:5].tolist()} with "
                f"ignore_index={ignore_index}. Check the class axis ({axis}) of 'scores'.")
    if bad.any():
        return (f"labels must be class indices in [0, {c}) or ignore_index={ignore_index}, "
                f"got {np.unique(labels[bad])[:5].tolist()}.")
    return None


# ---------------------------------------------------------- the labelled-entry reduction

def entry_weights(labels, weights, c, ignore_index, dtype):
    """(w, safe, invalid): the weight of each entry (0 where ignored) in the compute
    ``dtype``, labels clamped into range for indexing, and the entries whose label is out of
    range (not ignored)."""
    # *_like: sharded like the labels (explicit sharding)
    ignored = (labels == ignore_index) if ignore_index is not None else jnp.zeros_like(
        labels, bool)
    invalid = ((labels < 0) | (labels >= c)) & ~ignored
    safe = jnp.where(ignored | invalid, 0, labels)
    if weights is None or c == 0:  # no classes: every entry is ignored or invalid anyway
        w = jnp.ones_like(labels, dtype)
    else:  # the weights are replicated; each entry's weight is sharded like its label
        w = upcast(weights).at[safe].get(out_sharding=jax.typeof(safe).sharding)
    return jnp.where(ignored, jnp.zeros_like(w), w), safe, invalid


def _sum_or_weighted_mean(loss, w, reduction):
    if reduction == "none":
        return loss
    total = jnp.sum(loss)
    if reduction == "sum":
        return total
    denom = jnp.sum(w)
    # all entries ignored: 0, not 0/0 (and a zero gradient, not NaN)
    return jnp.where(denom == 0, 0.0, total / jnp.where(denom == 0, 1.0, denom))


def reduce_weighted(loss, w, invalid, reduction, *, scale=1.0, plus=None):
    """Per-entry losses weighted and reduced, given :func:`entry_weights`' ``w`` and
    ``invalid``.  A weight-0 entry (ignored, or a class of weight 0) adds 0 even where its
    loss is inf (its label's probability is 0): 0 * inf would be NaN.  ``scale * w_n loss_n
    + plus_n`` is reduced when ``plus`` (per-entry terms already weighted and masked, e.g.
    label smoothing's) is given; "mean" still divides by ``sum_n w_n`` (PyTorch's rule)."""
    loss = jnp.where(w == 0, jnp.zeros_like(loss), loss * w)
    if plus is not None:
        loss = scale * loss + plus
    return _sum_or_weighted_mean(jnp.where(invalid, jnp.nan, loss), w, reduction)


def reduce_entries(loss, labels, weights, classes, *, ignore_index, reduction):
    """Per-entry losses (or their tangents) weighted by their labels' weights and reduced."""
    w, _, invalid = entry_weights(labels, weights, classes, ignore_index, loss.dtype)
    return reduce_weighted(loss, w, invalid, reduction)


def loss_coefficient(labels, weights, dloss, c, *, ignore_index, reduction):
    """(coef, safe): d total / d loss_n for each entry, w_n * dloss spread over the
    reduction, and the labels clamped into range (:func:`entry_weights`)."""
    g = upcast(dloss)
    w, safe, invalid = entry_weights(labels, weights, c, ignore_index, g.dtype)
    if reduction == "mean":
        denom = jnp.sum(w)
        g = jnp.where(denom == 0, 0.0, g / jnp.where(denom == 0, 1.0, denom))
    return jnp.where(invalid, jnp.nan, w * g), safe
