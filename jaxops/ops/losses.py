"""Elementwise losses with a ``reduction`` ("none" | "sum" | "mean", default "mean").

Each loss is computed per element in at least float32 and reduced there, then cast to the
input dtype (the reduction and its gradient: :mod:`jaxops.ops.loss_machinery`).  ONNX has
none of these ops; they live in the jaxops domain (since_version 1).
Losses whose autodiff is already simple and stable (MSE, MAE, MSLE, Huber, hinge, KL) have no
registered gradient; the logistic cross-entropy has one (Caffe2's
SigmoidCrossEntropyWithLogitsGradient), which never forms ``exp`` of a large logit.

Per-element means: ``reduction="none"`` returns one loss per element, like PyTorch's
``MSELoss``/``KLDivLoss``; optax returns the same per-element values for ``squared_error``,
``hinge_loss`` and ``sigmoid_binary_cross_entropy`` and sums KL over the last axis (that is
``kl_divergence(..., reduction="sum")`` per example here).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxops import schema
from jaxops._numerics import upcast
from jaxops._op import defop
from jaxops.ops.activations import relu
from jaxops.ops.loss_machinery import REDUCTION, check_dloss_shape, loss_shape, reduce, spread
from jaxops.schema import JAXOPS_DOMAIN, Attribute, Cost, OpSchema, Parameter


def _loss_infer(s: OpSchema, in_avals, *, reduction, **attrs):
    first = in_avals[0]
    # the gradient op checks its (logits, targets) prefix with this too: strict=False
    for p, a in zip(s.inputs[1:], in_avals[1:], strict=False):
        if a is not None and a.shape != first.shape:
            raise ValueError(
                f"jaxops.{s.function}: input {p.name!r} must have the shape of "
                f"{s.inputs[0].name!r} {first.shape}, got {a.shape}."
            )
    return (jax.ShapeDtypeStruct(loss_shape(first.shape, reduction), first.dtype),)


def _loss_cost(flops: float, transcendentals: float = 0):
    """Per-element work on the inputs; every input read once, the loss written once."""

    def cost(in_avals, out_avals, **attrs):
        n = math.prod(in_avals[0].shape)
        item = jnp.dtype(in_avals[0].dtype).itemsize
        out = math.prod(out_avals[0].shape) * item
        return Cost(flops * n, transcendentals * n, n * item * len(in_avals), out)

    return cost


def _loss_schema(name, function, doc, inputs, flops, transcendentals=0, **kw) -> OpSchema:
    return schema.register(OpSchema(
        name=name, function=function, domain=JAXOPS_DOMAIN, doc=doc, inputs=inputs,
        outputs=(Parameter("loss", doc="per element for reduction='none', else a scalar"),),
        attributes=(*kw.pop("attributes", ()), REDUCTION), elementwise=False,
        identical_type_and_shape=False, infer_fn=_loss_infer,
        cost_fn=_loss_cost(flops, transcendentals), **kw,
    ))


_PRED_TARGET = (Parameter("predictions", doc="model outputs"),
                Parameter("targets", doc="targets, same shape"))


# ----------------------------------------------------------------------- MSE, MAE, MSLE

MSE = _loss_schema("MeanSquaredError", "mse", "loss = (predictions - targets)^2",
                   _PRED_TARGET, flops=2,
                   formula="(p − t)²", convention="—")


@defop(MSE)
def mse(predictions: ArrayLike, targets: ArrayLike, *, reduction: str = "mean") -> jax.Array:
    r"""Squared error, reduced.

    .. math:: \ell = (p - t)^2

    Matches ``optax.squared_error`` per element (no factor 1/2) and PyTorch's ``MSELoss``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.mse(jnp.array([1.0, 3.0]), jnp.array([0.0, 1.0]))
      Array(2.5, dtype=float32)
    """
    d = upcast(predictions) - upcast(targets)
    return reduce(d * d, reduction, predictions.dtype)


@mse.defonnx
def _mse_onnx(b, p, t, *, reduction):
    d = b.op("Sub", p, t)
    return b.reduce(b.op("Mul", d, d), reduction)


MAE = _loss_schema("MeanAbsoluteError", "mae", "loss = |predictions - targets|",
                   _PRED_TARGET, flops=2,
                   formula="\\|p − t\\|", convention="0 at p = t")


@defop(MAE)
def mae(predictions: ArrayLike, targets: ArrayLike, *, reduction: str = "mean") -> jax.Array:
    r"""Absolute error, reduced.

    .. math:: \ell = |p - t|, \qquad \partial_p \ell = \mathrm{sign}(p - t)

    The derivative at ``p = t`` is 0 (``sign(0)``, as PyTorch's ``L1Loss``; JAX's ``abs``
    would give 1).

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.mae(jnp.array([1.0, 3.0]), jnp.array([0.0, 1.0]), reduction="sum")
      Array(3., dtype=float32)
    """
    d = upcast(predictions) - upcast(targets)
    return reduce(d * jnp.sign(d), reduction, predictions.dtype)  # sign(0) = 0 at the kink


@mae.defonnx
def _mae_onnx(b, p, t, *, reduction):
    return b.reduce(b.op("Abs", b.op("Sub", p, t)), reduction)


MSLE = _loss_schema("MeanSquaredLogError", "msle",
                    "loss = (log(1 + predictions) - log(1 + targets))^2, inputs > -1",
                    _PRED_TARGET, flops=3, transcendentals=2,
                    formula="(log1p p − log1p t)²", convention="—")


@defop(MSLE)
def msle(predictions: ArrayLike, targets: ArrayLike, *, reduction: str = "mean") -> jax.Array:
    r"""Squared logarithmic error, reduced.

    .. math:: \ell = (\log(1 + p) - \log(1 + t))^2

    Inputs must exceed -1; others give NaN (IEEE ``log`` of a negative), never an error in a
    jitted program.  ``log1p`` keeps precision for small inputs.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.msle(jnp.array([jnp.e - 1]), jnp.array([0.0]))
      Array(1., dtype=float32)
    """
    d = jnp.log1p(upcast(predictions)) - jnp.log1p(upcast(targets))
    return reduce(d * d, reduction, predictions.dtype)


@msle.defonnx
def _msle_onnx(b, p, t, *, reduction):
    one = b.const(1.0, p)
    d = b.op("Sub", b.op("Log", b.op("Add", p, one)), b.op("Log", b.op("Add", t, one)))
    return b.reduce(b.op("Mul", d, d), reduction)

# -------------------------------------------------------------------------------- Huber

def _positive_delta(delta: float) -> str | None:
    return None if delta > 0 else ("must be > 0 (the width of the quadratic zone; "
                                   "delta -> 0 approaches 0, use mae for an L1 loss).")


HUBER = _loss_schema(
    "HuberLoss", "huber_loss",
    "loss = 0.5 d^2 if |d| <= delta else delta (|d| - 0.5 delta), d = predictions - targets",
    _PRED_TARGET, flops=5,
    attributes=(Attribute("delta", "float", 1.0, check=_positive_delta,
                          doc="where the loss turns from quadratic to linear, > 0"),),
    formula="½d² if \\|d\\| ≤ δ else δ(\\|d\\| − ½δ), d = p − t",
    convention="C¹ at \\|d\\| = δ; ℓ'' = 1 there (the quadratic piece)",
)


@defop(HUBER)
def huber_loss(
    predictions: ArrayLike, targets: ArrayLike, *, delta: float = 1.0, reduction: str = "mean"
) -> jax.Array:
    r"""Huber loss: quadratic within ``delta`` of the target, linear beyond, reduced.

    .. math:: \ell = \begin{cases} \tfrac12 d^2 & |d| \le \delta \\
              \delta (|d| - \tfrac12 \delta) & |d| > \delta \end{cases}, \qquad
              d = p - t, \qquad \partial_p \ell = \mathrm{clip}(d, -\delta, \delta)

    The loss and its first derivative are continuous at ``|d| = delta`` (both pieces give
    ``delta^2 / 2`` and slope ``±delta``); the second derivative jumps from 1 to 0 there, and
    jaxops gives it 1 at ``|d| = delta`` exactly (the point belongs to the quadratic piece,
    as in the formula's ``|d| <= delta``).  Differentiated by JAX (both branches are finite,
    so no double where is needed).  Per element this is ``optax.huber_loss(p, t, delta)``;
    ``reduction="mean"`` is PyTorch's ``HuberLoss(delta=delta)`` (``"sum"`` and ``"none"``
    too).  ``delta`` must be > 0 (PyTorch's rule; use :func:`mae` for an L1 loss).

    Args:
      predictions: float array.
      targets: float array of the same shape and dtype.
      delta: the half-width of the quadratic zone (static), > 0.
      reduction: "none" | "sum" | "mean".

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.huber_loss(jnp.array([0.5, 3.0]), jnp.zeros(2), reduction="none")
      Array([0.125, 2.5  ], dtype=float32)

    References:
      P. J. Huber, "Robust Estimation of a Location Parameter" (1964); PyTorch
      ``HuberLoss``; optax ``huber_loss``.
    """
    d = upcast(predictions) - upcast(targets)
    a = jnp.abs(d)
    loss = jnp.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta))
    return reduce(loss, reduction, predictions.dtype)


# -------------------------------------------------------------------------------- Hinge

def _labels_pm1(scores, labels, **attrs) -> str | None:
    bad = (labels != 1) & (labels != -1)
    if bad.any():
        return (f"labels must be -1 or +1, got {labels[bad][:3].tolist()} (for {{0, 1}} labels "
                "use 2 * labels - 1, or binary_cross_entropy).")
    return None


HINGE = _loss_schema("HingeLoss", "hinge", "loss = max(0, 1 - labels * scores), labels in ±1",
                     (Parameter("scores", doc="decision values"),
                      Parameter("labels", doc="-1 or +1, same shape")), flops=3,
                     value_check=_labels_pm1, formula="max(0, 1 − y·s), y = ±1",
                     convention="0 at the margin (autodiff via relu)")


@defop(HINGE)
def hinge(scores: ArrayLike, labels: ArrayLike, *, reduction: str = "mean") -> jax.Array:
    r"""Hinge loss for labels in {-1, +1}.

    .. math:: \ell = \max(0, 1 - y s), \qquad \partial_s \ell = -y [y s < 1]

    The derivative at the margin ``y s = 1`` is 0 (through :func:`jaxops.relu`).  Labels in
    {0, 1} are a mistake: called on concrete arrays, a label outside {-1, +1} raises
    ``ValueError``; inside ``jit`` values cannot be checked, and the formula is applied as is.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.hinge(jnp.array([2.0, 0.5, -1.0]), jnp.ones(3), reduction="none")
      Array([0. , 0.5, 2. ], dtype=float32)
    """
    s, y = upcast(scores), upcast(labels)
    return reduce(relu(1 - y * s), reduction, scores.dtype)


@hinge.defonnx
def _hinge_onnx(b, s, y, *, reduction):
    return b.reduce(b.op("Relu", b.op("Sub", b.const(1.0, s), b.op("Mul", y, s))), reduction)


# ---------------------------------------------------------------------------------- KL

KL_DIVERGENCE = _loss_schema(
    "KLDivergence", "kl_divergence",
    "loss = q (log q - log_p) with 0 log 0 = 0; log_target: exp(log_q) (log_q - log_p)",
    (Parameter("log_predictions", doc="log-probabilities of the model"),
     Parameter("targets", doc="target probabilities (log-probabilities if log_target)")),
    flops=3, transcendentals=1,
    attributes=(Attribute("log_target", "bool", False, doc="targets are log-probabilities"),),
    formula="q (log q − log p)", convention="0·log 0 = 0 (autodiff, double where)",
)


@defop(KL_DIVERGENCE)
def kl_divergence(
    log_predictions: ArrayLike, targets: ArrayLike, *, log_target: bool = False,
    reduction: str = "mean",
) -> jax.Array:
    r"""Pointwise Kullback-Leibler divergence of predictions from targets, reduced.

    .. math:: \ell = q (\log q - \log p), \quad 0 \log 0 = 0; \qquad
              \text{log\_target: } \ell = e^{\log q} (\log q - \log p)

    A zero target (``-inf`` with ``log_target``) contributes 0 with finite gradients (the
    "double where": the unselected branch never sees log 0).  ``reduction="sum"`` over an
    example's classes is ``optax.kl_divergence``; ``"mean"`` averages over all elements, as
    PyTorch's ``KLDivLoss``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.kl_divergence(jnp.log(jnp.array([0.5, 0.5])), jnp.array([1.0, 0.0]),
      ...                      reduction="sum")
      Array(0.6931472, dtype=float32)

    References:
      Kullback and Leibler, "On Information and Sufficiency" (1951).
    """
    lp, t = upcast(log_predictions), upcast(targets)
    if log_target:
        empty = jnp.isneginf(t)
        safe = jnp.where(empty, jnp.zeros_like(t), t)
        loss = jnp.where(empty, jnp.zeros_like(t), jnp.exp(safe) * (safe - lp))
    else:
        empty = t == 0
        safe = jnp.where(empty, jnp.ones_like(t), t)
        loss = jnp.where(empty, jnp.zeros_like(t), t * (jnp.log(safe) - lp))
    return reduce(loss, reduction, log_predictions.dtype)


@kl_divergence.defonnx
def _kl_divergence_onnx(b, lp, t, *, log_target, reduction):
    zero = b.const(0.0, t)
    if log_target:
        empty = b.op("IsInf", t, detect_positive=0)
        safe = b.op("Where", empty, zero, t)
        loss = b.op("Mul", b.op("Exp", safe), b.op("Sub", safe, lp))
    else:
        empty = b.op("Equal", t, zero)
        safe = b.op("Where", empty, b.const(1.0, t), t)
        loss = b.op("Mul", t, b.op("Sub", b.op("Log", safe), lp))
    return b.reduce(b.op("Where", empty, zero, loss), reduction)


# ----------------------------------------------------------- logistic (binary) cross-entropy

_LOGITS_TARGETS = (
    Parameter("logits", doc="unnormalized log-odds"),
    Parameter("targets", doc="probabilities in [0, 1], same shape"),
)

BCE = _loss_schema(
    "SigmoidCrossEntropyWithLogits", "binary_cross_entropy",
    "loss = max(z, 0) - z t + log(1 + exp(-|z|)) for logits z and targets t",
    _LOGITS_TARGETS, flops=5, transcendentals=2,
    gradient="SigmoidCrossEntropyWithLogitsGradient",
    formula="stable log loss from logits", convention="—",
)


@defop(BCE)
def binary_cross_entropy(
    logits: ArrayLike, targets: ArrayLike, *, reduction: str = "mean"
) -> jax.Array:
    r"""Binary cross-entropy ("log loss") from logits, reduced.

    .. math:: \ell = -t \log \sigma(z) - (1 - t) \log(1 - \sigma(z))
              = \max(z, 0) - z t + \log(1 + e^{-|z|}), \qquad \partial_z \ell = \sigma(z) - t

    The right-hand form never overflows (finite at ``|z| = 1e4``).  The registered gradient
    op (Caffe2's SigmoidCrossEntropyWithLogitsGradient) computes ``sigma(z) - t`` directly.
    Targets are differentiable, ``d loss / d t = -z`` (as in optax and PyTorch; Caffe2's
    gradient op returns dlogits only, so that derivative is plain JAX); same per-element
    values as ``optax.sigmoid_binary_cross_entropy``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.binary_cross_entropy(jnp.array([1e4, -1e4, 0.0]), jnp.array([1.0, 0.0, 1.0]),
      ...                             reduction="none")
      Array([0.       , 0.       , 0.6931472], dtype=float32)
    """
    z, t = upcast(logits), upcast(targets)
    loss = jnp.maximum(z, 0) - z * t + jnp.log1p(jnp.exp(-jnp.abs(z)))
    return reduce(loss, reduction, logits.dtype)


@binary_cross_entropy.defonnx
def _binary_cross_entropy_onnx(b, z, t, *, reduction):
    zero = b.const(0.0, z)
    loss = b.op("Sub", b.op("Max", z, zero), b.op("Mul", z, t))
    loss = b.op("Add", loss, b.op("Softplus", b.op("Neg", b.op("Abs", z))))
    return b.reduce(loss, reduction)


@binary_cross_entropy.defgrad
def _bce_vjp(logits, targets, loss, dloss, *, reduction):
    # d loss / d targets = -logits (the loss is linear in the targets), as optax and PyTorch
    z = upcast(logits)
    dtargets = -z * spread(dloss, z.shape, reduction)
    return (binary_cross_entropy_gradient(logits, targets, dloss, reduction=reduction),
            dtargets.astype(targets.dtype))


def _bce_gradient_infer(s: OpSchema, in_avals, *, reduction):
    logits, targets, dloss = in_avals
    (loss,) = _loss_infer(s, (logits, targets), reduction=reduction)
    check_dloss_shape(s, dloss, loss.shape, reduction)
    return (jax.ShapeDtypeStruct(logits.shape, logits.dtype),)


BCE_GRADIENT = schema.register(OpSchema(
    name="SigmoidCrossEntropyWithLogitsGradient", function="binary_cross_entropy_gradient",
    domain=JAXOPS_DOMAIN,
    doc="dlogits = (sigmoid(logits) - targets) * dloss, dloss spread back over the reduction.",
    inputs=(*_LOGITS_TARGETS, Parameter("dloss", doc="gradient w.r.t. the loss")),
    outputs=(Parameter("dlogits", doc="gradient w.r.t. the logits"),),
    attributes=(REDUCTION,), elementwise=False, identical_type_and_shape=False,
    infer_fn=_bce_gradient_infer, cost_fn=_loss_cost(4, 1),
))


@defop(BCE_GRADIENT)
def binary_cross_entropy_gradient(
    logits: ArrayLike, targets: ArrayLike, dloss: ArrayLike, *, reduction: str = "mean"
) -> jax.Array:
    r"""Gradient op of :func:`binary_cross_entropy`: ``(sigmoid(z) - t) * dloss``, with a
    scalar ``dloss`` spread over every element (divided by their count for "mean").

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.binary_cross_entropy_gradient(jnp.zeros(2), jnp.array([1.0, 0.0]),
      ...                                      jnp.float32(1.0), reduction="sum")
      Array([-0.5,  0.5], dtype=float32)
    """
    z, t = upcast(logits), upcast(targets)
    return ((jax.lax.logistic(z) - t) * spread(dloss, z.shape, reduction)).astype(logits.dtype)


@binary_cross_entropy_gradient.defonnx
def _binary_cross_entropy_gradient_onnx(b, z, t, dloss, *, reduction):
    g = b.op("Div", dloss, b.count(z, dloss)) if reduction == "mean" else dloss
    return b.op("Mul", b.op("Sub", b.op("Sigmoid", z), t), g)
