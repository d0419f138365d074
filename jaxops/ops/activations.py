"""The ReLU family and Softsign, with their Caffe2 gradient ops.

Each op is one block: schema, XLA implementation (the decorated function), registered
gradient (``@op.defgrad``), then its gradient op.  The gradient ops of the ReLU family read
Y, as Caffe2's do, so that the forward may overwrite X (``allow_inplace``); Softsign's reads X
and so may not run in place.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxops import schema
from jaxops._numerics import upcast
from jaxops._op import defop
from jaxops.schema import JAXOPS_DOMAIN, Attribute, OpSchema, Parameter, pointwise_cost

_X = (Parameter("X", doc="input tensor"),)
_Y = (Parameter("Y", doc="output tensor"),)
_Y_DY, _X_DY, _DX = schema.GRADIENT_OF_Y, schema.GRADIENT_OF_X, schema.DX


# ---------------------------------------------------------------------------------- Relu

RELU = schema.register(OpSchema(
    name="Relu", function="relu", since_version=14, inherit_onnx_schema=True,
    doc="Y = max(0, X), elementwise.",
    inputs=_X, outputs=_Y, allow_inplace=((0, 0),), gradient="ReluGradient",
    cost_fn=pointwise_cost(flops=0),
    formula="max(0, x)",
    convention="0 at x = 0",
))


@defop(RELU)
def relu(x: ArrayLike) -> jax.Array:
    r"""Rectified linear unit.

    .. math:: \mathrm{relu}(x) = \max(0, x), \qquad \mathrm{relu}'(x) = [x > 0]

    The derivative at 0 is 0 (Caffe2's and ONNX's convention; ``jnp.maximum`` would give
    0.5).  NaN propagates.  Output dtype = input dtype.

    Args:
      x: float16, bfloat16, float32 or float64 array.

    Returns:
      ``max(0, x)``, same shape and dtype.

    Example:
      >>> import jax, jax.numpy as jnp, jaxops
      >>> jaxops.relu(jnp.array([-1.0, 0.0, 2.0]))
      Array([0., 0., 2.], dtype=float32)
      >>> jax.grad(lambda x: jaxops.relu(x).sum())(jnp.array([-1.0, 0.0, 2.0]))
      Array([0., 0., 1.], dtype=float32)

    References:
      ONNX Relu-14; Caffe2 ``ReluOp`` / ``ReluGradientOp``.
    """
    return jnp.maximum(x, jnp.zeros((), x.dtype))  # max propagates NaN; `where(x > 0)` would not


@relu.defgrad
def _relu_vjp(x, y, dy):
    return relu_gradient(y, dy)


RELU_GRADIENT = schema.register(OpSchema(
    name="ReluGradient", function="relu_gradient", domain=JAXOPS_DOMAIN,
    doc="dX = dY where Y > 0, else 0 (Caffe2 ReluGradient).",
    inputs=_Y_DY, outputs=_DX, allow_inplace=((1, 0),),
    cost_fn=pointwise_cost(flops=1),
))


@defop(RELU_GRADIENT)
def relu_gradient(y: ArrayLike, dy: ArrayLike) -> jax.Array:
    r"""Gradient op of :func:`relu`, from its output: ``dy * [y > 0]``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.relu_gradient(jnp.array([0.0, 2.0]), jnp.array([5.0, 5.0]))
      Array([0., 5.], dtype=float32)
    """
    return jnp.where(y > 0, dy, jnp.zeros_like(dy))


@relu_gradient.defonnx(native_type=True)
def _relu_gradient_onnx(b, y, dy):
    return b.op("Where", b.op("Greater", y, b.const(0.0, y)), dy, b.const(0.0, dy))


# ---------------------------------------------------------------------------------- ReluN

def _positive(n: float) -> str | None:
    if not n > 0:
        return "must be > 0 (ReluN clips to [0, n]; use jaxops.relu for no upper bound)."
    return None


RELU_N = schema.register(OpSchema(
    name="ReluN", function="relu_n", domain=JAXOPS_DOMAIN,
    doc="Y = min(max(0, X), n), elementwise (Caffe2 ReluN; exports to ONNX as Clip(X, 0, n)).",
    inputs=_X, outputs=_Y, allow_inplace=((0, 0),), gradient="ReluNGradient",
    attributes=(Attribute("n", "float", 6.0, doc="upper bound, > 0", check=_positive),),
    cost_fn=pointwise_cost(flops=2),
    formula="min(max(0, x), n)",
    convention="0 at 0 and n",
))


@defop(RELU_N)
def relu_n(x: ArrayLike, *, n: float = 6.0) -> jax.Array:
    r"""ReLU clipped at ``n`` (ReLU6 for the default).

    .. math:: \mathrm{relu\_n}(x) = \min(\max(0, x), n), \qquad
              \mathrm{relu\_n}'(x) = [0 < x < n]

    The derivative is 0 at both kinks, x = 0 and x = n (``jnp.clip`` would give 0.5).
    NaN propagates.

    Args:
      x: float16, bfloat16, float32 or float64 array.
      n: the upper bound, a Python float > 0 (static).

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.relu_n(jnp.array([-1.0, 3.0, 9.0]), n=6.0)
      Array([0., 3., 6.], dtype=float32)

    References:
      Caffe2 ``ReluNOp`` / ``ReluNGradientOp``; Krizhevsky, "Convolutional Deep Belief
      Networks on CIFAR-10" (2010) for ReLU6.
    """
    return jnp.minimum(jnp.maximum(x, jnp.zeros((), x.dtype)), jnp.asarray(n, x.dtype))


@relu_n.defonnx(native_type=True)
def _relu_n_onnx(b, x, *, n):
    return b.op("Clip", x, b.const(0.0, x), b.const(n, x))


@relu_n.defgrad
def _relu_n_vjp(x, y, dy, *, n):
    return relu_n_gradient(y, dy, n=n)


RELU_N_GRADIENT = schema.register(OpSchema(
    name="ReluNGradient", function="relu_n_gradient", domain=JAXOPS_DOMAIN,
    doc="dX = dY where 0 < Y < n, else 0 (Caffe2 ReluNGradient).",
    inputs=_Y_DY, outputs=_DX, allow_inplace=((1, 0),),
    attributes=(Attribute("n", "float", 6.0, doc="upper bound, > 0", check=_positive),),
    cost_fn=pointwise_cost(flops=2),
))


@defop(RELU_N_GRADIENT)
def relu_n_gradient(y: ArrayLike, dy: ArrayLike, *, n: float = 6.0) -> jax.Array:
    r"""Gradient op of :func:`relu_n`, from its output: ``dy * [0 < y < n]``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.relu_n_gradient(jnp.array([0.0, 3.0, 6.0]), jnp.ones(3), n=6.0)
      Array([0., 1., 0.], dtype=float32)
    """
    return jnp.where((y > 0) & (y < jnp.asarray(n, y.dtype)), dy, jnp.zeros_like(dy))


@relu_n_gradient.defonnx(native_type=True)
def _relu_n_gradient_onnx(b, y, dy, *, n):
    inside = b.op("And", b.op("Greater", y, b.const(0.0, y)), b.op("Less", y, b.const(n, y)))
    return b.op("Where", inside, dy, b.const(0.0, dy))


# ----------------------------------------------------------------------------- LeakyRelu

def _finite(v: float) -> str | None:
    return None if math.isfinite(v) else "must be finite."


def _leaky_inplace(alpha: float) -> str | None:
    if alpha > 0:
        return None
    return (f"with alpha={alpha} <= 0 its gradient reads X (Y no longer carries the sign of X); "
            "call it without donation.")


_ALPHA = Attribute("alpha", "float", 0.01, doc="slope for x < 0", check=_finite)

LEAKY_RELU = schema.register(OpSchema(
    name="LeakyRelu", function="leaky_relu", since_version=16, inherit_onnx_schema=True,
    doc="Y = X where X >= 0, else alpha * X, elementwise.",
    inputs=_X, outputs=_Y, allow_inplace=((0, 0),), inplace_condition=_leaky_inplace,
    gradient="LeakyReluGradient", attributes=(_ALPHA,),
    cost_fn=pointwise_cost(flops=2),
    formula="x if x ≥ 0 else α·x",
    convention="1 at +0, α at −0; gradient reads X if α ≤ 0",
))


@defop(LEAKY_RELU)
def leaky_relu(x: ArrayLike, *, alpha: float = 0.01) -> jax.Array:
    r"""Leaky rectified linear unit.

    .. math:: \mathrm{leaky\_relu}(x) = \begin{cases} x & x \ge 0 \\ \alpha x & x < 0
              \end{cases}, \qquad \mathrm{leaky\_relu}'(x) = \begin{cases} 1 & x \ge 0 \\
              \alpha & x < 0 \end{cases}

    The derivative at +0 is 1 (Caffe2/ONNX).  The gradient op reads the sign of its first
    input: Y when ``alpha > 0`` (Y has the sign of X, even where ``alpha * x`` underflows to
    -0), X when ``alpha <= 0`` (Y loses the sign of X; negative slopes are supported).  So
    the derivative at -0 is ``alpha``: from Y, -0 cannot be told apart from an underflowed
    negative input.  Half-precision inputs are multiplied in float32.  NaN propagates.

    Args:
      x: float16, bfloat16, float32 or float64 array.
      alpha: slope for negative inputs, a finite Python float (static); may be negative.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.leaky_relu(jnp.array([-2.0, 0.0, 3.0]), alpha=0.5)
      Array([-1.,  0.,  3.], dtype=float32)

    References:
      ONNX LeakyRelu-16; Caffe2 ``LeakyReluOp``; Maas et al., "Rectifier Nonlinearities
      Improve Neural Network Acoustic Models" (2013).
    """
    xf = upcast(x)
    return jnp.where(x >= 0, xf, alpha * xf).astype(x.dtype)


@leaky_relu.defgrad
def _leaky_relu_vjp(x, y, dy, *, alpha):
    return leaky_relu_gradient(y if alpha > 0 else x, dy, alpha=alpha)


LEAKY_RELU_GRADIENT = schema.register(OpSchema(
    name="LeakyReluGradient", function="leaky_relu_gradient", domain=JAXOPS_DOMAIN,
    doc="dX = dY where Y is positive or +0, else alpha * dY (Caffe2 LeakyReluGradient; "
        "for alpha <= 0 the first input is X).",
    inputs=_Y_DY, outputs=_DX, allow_inplace=((1, 0),), attributes=(_ALPHA,),
    cost_fn=pointwise_cost(flops=2),
))


@defop(LEAKY_RELU_GRADIENT)
def leaky_relu_gradient(y: ArrayLike, dy: ArrayLike, *, alpha: float = 0.01) -> jax.Array:
    r"""Gradient op of :func:`leaky_relu`: ``dy`` where ``y`` is positive or +0, else
    ``alpha * dy``.

    ``y`` is the forward output for ``alpha > 0`` and the forward input otherwise; only its
    sign bit is read (see :func:`leaky_relu`).

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.leaky_relu_gradient(jnp.array([-1.0, 0.0, 2.0]), jnp.ones(3), alpha=0.1)
      Array([0.1, 1. , 1. ], dtype=float32)
    """
    dyf = upcast(dy)
    return jnp.where(jnp.signbit(y), alpha * dyf, dyf).astype(dy.dtype)


@leaky_relu_gradient.defonnx
def _leaky_relu_gradient_onnx(b, y, dy, *, alpha):
    # the sign bit of y: y < 0, or -0.0 (1/y = -inf).  (A NaN's sign bit is not visible to
    # ONNX ops: a NaN y gives dy, where jaxops reads its sign bit.)  Not derived: ONNX has no
    # bitcast for jnp.signbit.
    zero = b.const(0.0, y)
    negative = b.op("Or", b.op("Less", y, zero), b.op("Less", b.op("Reciprocal", y), zero))
    return b.op("Where", negative, b.op("Mul", dy, b.const(alpha, dy)), dy)


# ----------------------------------------------------------------------- ThresholdedRelu

THRESHOLDED_RELU = schema.register(OpSchema(
    name="ThresholdedRelu", function="thresholded_relu", since_version=22,
    inherit_onnx_schema=True, doc="Y = X where X > alpha, else 0, elementwise.",
    inputs=_X, outputs=_Y, gradient="ThresholdedReluGradient",
    attributes=(Attribute("alpha", "float", 1.0, doc="the threshold", check=_finite),),
    cost_fn=pointwise_cost(flops=1),
    formula="x if x > α else 0",
    convention="0 at x = α (the jump)",
))


@defop(THRESHOLDED_RELU)
def thresholded_relu(x: ArrayLike, *, alpha: float = 1.0) -> jax.Array:
    r"""Thresholded rectified linear unit.

    .. math:: y = \begin{cases} x & x > \alpha \\ 0 & x \le \alpha \end{cases}, \qquad
              y' = [x > \alpha]

    For ``alpha != 0`` the function jumps at ``alpha``; the derivative there is 0, the
    left-hand one (PyTorch's ``nn.Threshold(alpha, 0)`` backward).  NaN propagates.  The
    gradient op reads X (Y = 0 cannot tell ``x <= alpha`` from ``x = 0 > alpha``), so the op
    may not run in place.

    Args:
      x: float16, bfloat16, float32 or float64 array.
      alpha: the threshold, finite.

    Returns:
      ``x`` where ``x > alpha``, else 0; same shape and dtype.

    Example:
      >>> import jax, jax.numpy as jnp, jaxops
      >>> jaxops.thresholded_relu(jnp.array([0.5, 1.0, 2.0]))
      Array([0., 0., 2.], dtype=float32)
      >>> jax.grad(lambda x: jaxops.thresholded_relu(x, alpha=0.5).sum())(jnp.array([0.5, 1.0]))
      Array([0., 1.], dtype=float32)

    References:
      ONNX ThresholdedRelu-22; Konda et al., "Zero-bias autoencoders and the benefits of
      co-adapting features" (2015).
    """
    return jnp.where(x <= jnp.asarray(alpha, x.dtype), jnp.zeros_like(x), x)  # NaN stays NaN


@thresholded_relu.defgrad
def _thresholded_relu_vjp(x, y, dy, *, alpha):
    return thresholded_relu_gradient(x, dy, alpha=alpha)


THRESHOLDED_RELU_GRADIENT = schema.register(OpSchema(
    name="ThresholdedReluGradient", function="thresholded_relu_gradient",
    domain=JAXOPS_DOMAIN, doc="dX = dY where X > alpha, else 0.",
    inputs=_X_DY, outputs=_DX, allow_inplace=((1, 0),),
    attributes=(Attribute("alpha", "float", 1.0, doc="the threshold", check=_finite),),
    cost_fn=pointwise_cost(flops=1),
))


@defop(THRESHOLDED_RELU_GRADIENT)
def thresholded_relu_gradient(x: ArrayLike, dy: ArrayLike, *, alpha: float = 1.0) -> jax.Array:
    r"""Gradient op of :func:`thresholded_relu`, from its input: ``dy * [x > alpha]``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.thresholded_relu_gradient(jnp.array([1.0, 3.0]), jnp.ones(2))
      Array([0., 1.], dtype=float32)
    """
    return jnp.where(x > jnp.asarray(alpha, x.dtype), dy, jnp.zeros_like(dy))


# ------------------------------------------------------------------------------ Softsign

SOFTSIGN = schema.register(OpSchema(
    name="Softsign", function="softsign", since_version=22, inherit_onnx_schema=True,
    doc="output = input / (1 + |input|), elementwise.",
    inputs=(Parameter("input", doc="input tensor"),),
    outputs=(Parameter("output", doc="output tensor"),),
    gradient="SoftsignGradient",
    cost_fn=pointwise_cost(flops=3),
    formula="x / (1 + \\|x\\|)",
    convention="softsign''(0) = 0",
))


@defop(SOFTSIGN)
def softsign(x: ArrayLike) -> jax.Array:
    r"""Softsign.

    .. math:: \mathrm{softsign}(x) = \frac{x}{1 + |x|}, \qquad
              \mathrm{softsign}'(x) = \frac{1}{(1 + |x|)^2}, \qquad
              \mathrm{softsign}''(x) = \frac{-2\,\mathrm{sign}(x)}{(1 + |x|)^3}

    ``softsign(±inf) = ±1`` (the limit; the plain formula gives inf/inf = NaN).  The second
    derivative at 0 is 0 (``sign(0) = 0``).  Its gradient op reads X, so Softsign may not
    run in place.  Half-precision inputs are computed in float32.

    Args:
      x: float16, bfloat16, float32 or float64 array.

    Example:
      >>> import jax, jax.numpy as jnp, jaxops
      >>> jaxops.softsign(jnp.array([-1.0, 0.0, 3.0]))
      Array([-0.5 ,  0.  ,  0.75], dtype=float32)
      >>> jax.grad(jaxops.softsign)(jnp.float32(1.0))
      Array(0.25, dtype=float32)

    References:
      ONNX Softsign-22; Caffe2 ``SoftsignOp``; Bergstra et al., "Quadratic polynomials
      learn better image features" (2009).
    """
    xf = upcast(x)
    y = jnp.where(jnp.isinf(xf), jnp.sign(xf), xf / (1 + jnp.abs(xf)))
    return y.astype(x.dtype)


@softsign.defgrad
def _softsign_vjp(x, y, dy):
    return softsign_gradient(x, dy)


SOFTSIGN_GRADIENT = schema.register(OpSchema(
    name="SoftsignGradient", function="softsign_gradient", domain=JAXOPS_DOMAIN,
    doc="dX = dY / (1 + |X|)^2 (Caffe2 SoftsignGradient).",
    inputs=_X_DY,
    outputs=_DX, allow_inplace=((1, 0),),
    cost_fn=pointwise_cost(flops=3),
))


@defop(SOFTSIGN_GRADIENT)
def softsign_gradient(x: ArrayLike, dy: ArrayLike) -> jax.Array:
    r"""Gradient op of :func:`softsign`, from its input: ``dy / (1 + |x|)^2``.

    Differentiable in ``x`` too, with ``d/dx = -2 dy sign(x) / (1 + |x|)^3`` (0 at x = 0).

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.softsign_gradient(jnp.array([0.0, 1.0]), jnp.ones(2))
      Array([1.  , 0.25], dtype=float32)
    """
    xf, dyf = upcast(x), upcast(dy)
    # |x| as x * sign(x): JAX's abs'(0) is 1, but softsign''(0) must be 0.  A product with
    # r = 1/(1+|x|) rather than a division by (1+|x|)^2, so that d/dx = -2 dy r^3 sign(x)
    # is 0, not inf/inf = NaN, at x = ±inf.
    r = 1 / (1 + xf * jnp.sign(xf))
    return (dyf * (r * r)).astype(dy.dtype)


@softsign_gradient.defonnx
def _softsign_gradient_onnx(b, x, dy):
    r = b.op("Reciprocal", b.op("Add", b.const(1.0, x), b.op("Abs", x)))
    return b.op("Mul", dy, b.op("Mul", r, r))


# ------------------------------------------------------------------------ Sigmoid, Tanh

def _reads_y(name: str, formula: str) -> OpSchema:
    """Schema of a Caffe2 gradient op that reads the forward output: (Y, dY) -> dX."""
    return OpSchema(
        name=f"{name}Gradient", function=f"{_snake(name)}_gradient", domain=JAXOPS_DOMAIN,
        doc=f"dX = {formula} (Caffe2 {name}Gradient).", inputs=_Y_DY, outputs=_DX,
        allow_inplace=((1, 0),), cost_fn=pointwise_cost(flops=3),
    )


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


SIGMOID = schema.register(OpSchema(
    name="Sigmoid", function="sigmoid", since_version=13, inherit_onnx_schema=True,
    doc="Y = 1 / (1 + exp(-X)), elementwise.",
    inputs=_X, outputs=_Y, allow_inplace=((0, 0),), gradient="SigmoidGradient",
    cost_fn=pointwise_cost(flops=3, transcendentals=1),
    formula="1 / (1 + e^−x)",
    convention="smooth",
))


@defop(SIGMOID)
def sigmoid(x: ArrayLike) -> jax.Array:
    r"""Logistic sigmoid.

    .. math:: \sigma(x) = \frac{1}{1 + e^{-x}}, \qquad \sigma' = \sigma (1 - \sigma)

    Computed with ``lax.logistic`` (no overflow for large ``|x|``); half precision in
    float32.  The gradient op reads Y, so Sigmoid may run in place.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.sigmoid(jnp.array([0.0, 100.0, -100.0]))
      Array([0.5, 1. , 0. ], dtype=float32)

    References:
      ONNX Sigmoid-13; Caffe2 ``SigmoidOp`` / ``SigmoidGradientOp``.
    """
    return jax.lax.logistic(upcast(x)).astype(x.dtype)


@sigmoid.defgrad
def _sigmoid_vjp(x, y, dy):
    return sigmoid_gradient(y, dy)


SIGMOID_GRADIENT = schema.register(_reads_y("Sigmoid", "dY * Y * (1 - Y)"))


@defop(SIGMOID_GRADIENT)
def sigmoid_gradient(y: ArrayLike, dy: ArrayLike) -> jax.Array:
    r"""Gradient op of :func:`sigmoid`, from its output: ``dy * y * (1 - y)``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.sigmoid_gradient(jnp.array([0.5]), jnp.array([2.0]))
      Array([0.5], dtype=float32)
    """
    yf = upcast(y)
    return (upcast(dy) * (yf * (1 - yf))).astype(dy.dtype)


@sigmoid_gradient.defonnx
def _sigmoid_gradient_onnx(b, y, dy):
    return b.op("Mul", dy, b.op("Mul", y, b.op("Sub", b.const(1.0, y), y)))


TANH = schema.register(OpSchema(
    name="Tanh", function="tanh", since_version=13, inherit_onnx_schema=True,
    doc="output = tanh(input), elementwise.",
    inputs=(Parameter("input", doc="input tensor"),),
    outputs=(Parameter("output", doc="hyperbolic tangent of the input"),),
    allow_inplace=((0, 0),), gradient="TanhGradient",
    cost_fn=pointwise_cost(transcendentals=1),
    formula="tanh x",
    convention="smooth",
))


@defop(TANH)
def tanh(x: ArrayLike) -> jax.Array:
    r"""Hyperbolic tangent.

    .. math:: \tanh'(x) = 1 - \tanh^2(x), \qquad \tanh''(x) = -2 \tanh(x) (1 - \tanh^2(x))

    Half precision is computed in float32.  The gradient op reads Y (in place allowed).

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.tanh(jnp.array([0.0, 20.0]))
      Array([0., 1.], dtype=float32)

    References:
      ONNX Tanh-13; Caffe2 ``TanhOp`` / ``TanhGradientOp``.
    """
    return jnp.tanh(upcast(x)).astype(x.dtype)


@tanh.defgrad
def _tanh_vjp(x, y, dy):
    return tanh_gradient(y, dy)


TANH_GRADIENT = schema.register(_reads_y("Tanh", "dY * (1 - Y^2)"))


@defop(TANH_GRADIENT)
def tanh_gradient(y: ArrayLike, dy: ArrayLike) -> jax.Array:
    r"""Gradient op of :func:`tanh`, from its output: ``dy * (1 - y^2)``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.tanh_gradient(jnp.array([0.5]), jnp.array([2.0]))
      Array([1.5], dtype=float32)
    """
    yf = upcast(y)
    return (upcast(dy) * (1 - yf * yf)).astype(dy.dtype)


@tanh_gradient.defonnx
def _tanh_gradient_onnx(b, y, dy):
    return b.op("Mul", dy, b.op("Sub", b.const(1.0, y), b.op("Mul", y, y)))


# ---------------------------------------------------------------------------------- Clip

def _clip_mask(y, lo, hi):
    """[lo < y < hi], a bound that is None being no bound."""
    mask = jnp.ones(jnp.shape(y), bool)
    if lo is not None:
        mask = mask & (y > jnp.asarray(lo, y.dtype))
    if hi is not None:
        mask = mask & (y < jnp.asarray(hi, y.dtype))
    return mask


_BOUNDS = (
    Parameter("min", doc="lower bound; omitted: none", optional=True, scalar=True),
    Parameter("max", doc="upper bound; omitted: none", optional=True, scalar=True),
)

CLIP = schema.register(OpSchema(
    name="Clip", function="clip", since_version=13, inherit_onnx_schema=True,
    doc="output = min(max(input, min), max); min > max gives max everywhere (ONNX Clip-13).",
    inputs=(Parameter("input", doc="input tensor"), *_BOUNDS),
    outputs=(Parameter("output", doc="clipped tensor"),),
    allow_inplace=((0, 0),), gradient="ClipGradient",
    cost_fn=pointwise_cost(flops=2),
    formula="min(max(x, min), max)",
    convention="0 at both bounds (d/dmin, d/dmax take it)",
))


@defop(CLIP)
def clip(x: ArrayLike, min: ArrayLike | None = None, max: ArrayLike | None = None) -> jax.Array:  # noqa: A002
    r"""Clip to ``[min, max]``.

    .. math:: \mathrm{clip}(x) = \min(\max(x, \mathrm{min}), \mathrm{max}), \qquad
              \mathrm{clip}'(x) = [\mathrm{min} < x < \mathrm{max}]

    The derivative is 0 at both bounds (``jnp.clip`` gives 0.5 at a tie).  When
    ``min > max`` every output is ``max`` (ONNX Clip-13) and the derivative is 0.  ``min`` and
    ``max`` are inputs, as in ONNX: scalars (Python floats take ``x``'s dtype) or ``None`` for
    no bound.  They are differentiable, as in ``jnp.clip`` and ``torch.clamp`` (ONNX marks
    them non-differentiable): ``d/dmin`` sums ``dy`` over the entries at ``min`` (``x <=
    min``), ``d/dmax`` over those at ``max``, so the three derivatives add up to ``dy``.  NaN
    propagates.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.clip(jnp.array([-2.0, 0.5, 3.0]), -1.0, 1.0)
      Array([-1. ,  0.5,  1. ], dtype=float32)

    References:
      ONNX Clip-13; Caffe2 ``ClipOp`` / ``ClipGradientOp``.
    """
    y = x
    if min is not None:
        y = jnp.maximum(y, jnp.asarray(min, x.dtype))
    if max is not None:
        y = jnp.minimum(y, jnp.asarray(max, x.dtype))
    return y


@clip.defgrad
def _clip_vjp(x, lo, hi, y, dy):
    # The bounds are differentiable, as in jnp.clip and torch.clamp: an output clipped to a
    # bound moves with it.  Entries at a bound (x = min included, where d/dx is 0) go to that
    # bound, so dx + dmin + dmax = dy everywhere; with min >= max every entry is max.
    cts = [clip_gradient(y, dy, lo, hi)]
    at_hi = None if hi is None else y == jnp.asarray(hi, y.dtype)
    if lo is not None:
        at_lo = y == jnp.asarray(lo, y.dtype)
        if at_hi is not None:
            at_lo = at_lo & ~at_hi
        cts.append(_bound_cotangent(dy, at_lo, lo))
    if hi is not None:
        cts.append(_bound_cotangent(dy, at_hi, hi))
    return tuple(cts)


def _bound_cotangent(dy, at_bound, bound):
    """Sum of ``dy`` over the entries clipped to a scalar bound, in the bound's dtype."""
    total = jnp.sum(jnp.where(at_bound, upcast(dy), 0.0))
    return total.astype(jnp.result_type(bound)).reshape(jnp.shape(bound))


CLIP_GRADIENT = schema.register(OpSchema(
    name="ClipGradient", function="clip_gradient", domain=JAXOPS_DOMAIN,
    doc="dX = dY where min < Y < max, else 0 (Caffe2 ClipGradient).",
    inputs=(*_Y_DY, *_BOUNDS), outputs=_DX, allow_inplace=((1, 0),),
    cost_fn=pointwise_cost(flops=3),
))


@defop(CLIP_GRADIENT)
def clip_gradient(
    y: ArrayLike, dy: ArrayLike, min: ArrayLike | None = None, max: ArrayLike | None = None  # noqa: A002
) -> jax.Array:
    r"""Gradient op of :func:`clip`, from its output: ``dy * [min < y < max]``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.clip_gradient(jnp.array([-1.0, 0.5, 1.0]), jnp.ones(3), -1.0, 1.0)
      Array([0., 1., 0.], dtype=float32)
    """
    return jnp.where(_clip_mask(y, min, max), dy, jnp.zeros_like(dy))


@clip_gradient.defonnx(native_type=True)
def _clip_gradient_onnx(b, y, dy, lo, hi):
    if lo is None and hi is None:
        return b.op("Identity", dy)
    masks = ([b.op("Greater", y, b.op("CastLike", lo, y))] if lo is not None else []) + (
        [b.op("Less", y, b.op("CastLike", hi, y))] if hi is not None else [])
    inside = masks[0] if len(masks) == 1 else b.op("And", *masks)
    return b.op("Where", inside, dy, b.const(0.0, dy))


# --------------------------------------------------------------------------------- PRelu

def _prelu_infer(s: OpSchema, in_avals, **attrs):
    x, slope = in_avals
    try:
        ok = jnp.broadcast_shapes(x.shape, slope.shape) == x.shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"jaxops.{s.function}: slope of shape {slope.shape} must broadcast to X's shape "
            f"{x.shape} (ONNX unidirectional broadcasting), e.g. one slope per channel of shape "
            f"{x.shape[-1:]}."
        )
    return tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in in_avals[: len(s.outputs)])


PRELU = schema.register(OpSchema(
    name="PRelu", function="prelu", since_version=16, inherit_onnx_schema=True,
    doc="Y = X where X >= 0, else slope * X; slope broadcasts to X.",
    inputs=(Parameter("X", doc="input tensor"),
            Parameter("slope", doc="learnable slope, unidirectionally broadcastable to X")),
    outputs=_Y, gradient="PReluGradient", infer_fn=_prelu_infer,
    cost_fn=pointwise_cost(flops=2),
    formula="x if x ≥ 0 else slope·x",
    convention="1 at 0; slope broadcasts to x",
))


@defop(PRELU)
def prelu(x: ArrayLike, slope: ArrayLike) -> jax.Array:
    r"""Parametric ReLU with a learnable slope.

    .. math:: \mathrm{prelu}(x, a) = \begin{cases} x & x \ge 0 \\ a x & x < 0 \end{cases},
              \qquad \partial_x = [x \ge 0] + a [x < 0], \qquad \partial_a = x [x < 0]

    ``slope`` broadcasts to ``x`` (e.g. one slope per channel); its gradient is summed over
    the broadcast dimensions.  The derivative in ``x`` at 0 is 1.  The gradient op reads X
    (a negative slope hides the sign of X in Y), so PRelu may not run in place.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.prelu(jnp.array([[-2.0, 3.0], [-1.0, -4.0]]), jnp.array([0.5, 0.25]))
      Array([[-1. ,  3. ],
             [-0.5, -1. ]], dtype=float32)

    References:
      ONNX PRelu-16; Caffe2 ``PReluOp``; He et al., "Delving Deep into Rectifiers" (2015).
    """
    xf = upcast(x)
    slope = jnp.broadcast_to(upcast(slope), xf.shape)  # explicit: ONNX unidirectional
    return jnp.where(xf >= 0, xf, slope * xf).astype(x.dtype)


@prelu.defgrad
def _prelu_vjp(x, slope, y, dy):
    return prelu_gradient(x, slope, dy)


def _prelu_gradient_infer(s: OpSchema, in_avals, **attrs):
    _prelu_infer(s, in_avals[:2])
    x, slope, dy = in_avals
    if dy.shape != x.shape:
        raise ValueError(f"jaxops.{s.function}: dY must have X's shape {x.shape}, got {dy.shape}.")
    return (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(slope.shape, slope.dtype))


PRELU_GRADIENT = schema.register(OpSchema(
    name="PReluGradient", function="prelu_gradient", domain=JAXOPS_DOMAIN,
    doc="dX = dY where X >= 0 else slope * dY; dslope = sum of dY * X where X < 0 over the "
        "broadcast dimensions (Caffe2 PReluGradient, which also took Y but never read it).",
    inputs=(Parameter("X", doc="the forward op's input"), Parameter("slope", doc="the slope"),
            Parameter("dY", doc="gradient w.r.t. Y")),
    outputs=(Parameter("dX", doc="gradient w.r.t. X"),
             Parameter("dslope", doc="gradient w.r.t. slope")),
    identical_type_and_shape=False, elementwise=False,  # dslope sums over broadcast dims
    infer_fn=_prelu_gradient_infer,
    cost_fn=pointwise_cost(flops=4),
))


def _sum_to_shape(g: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sum ``g`` over the dimensions that broadcasting to its shape added or stretched."""
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1
    )
    return jnp.sum(g, axis=axes, keepdims=True).reshape(shape)


@defop(PRELU_GRADIENT)
def prelu_gradient(x: ArrayLike, slope: ArrayLike, dy: ArrayLike) -> tuple[jax.Array, jax.Array]:
    r"""Gradient op of :func:`prelu`: ``(dx, dslope)`` from X, the slope and ``dy``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> dx, dslope = jaxops.prelu_gradient(jnp.array([-2.0, 3.0]), jnp.array(0.5), jnp.ones(2))
      >>> dx, dslope
      (Array([0.5, 1. ], dtype=float32), Array(-2., dtype=float32))
    """
    xf, dyf = upcast(x), upcast(dy)
    sf = jnp.broadcast_to(upcast(slope), xf.shape)
    negative = xf < 0
    dx = jnp.where(negative, sf * dyf, dyf)
    dslope = _sum_to_shape(jnp.where(negative, dyf * xf, jnp.zeros_like(dyf)), jnp.shape(slope))
    return dx.astype(dy.dtype), dslope.astype(slope.dtype)


@prelu_gradient.defonnx
def _prelu_gradient_onnx(b, x, slope, dy):
    rank, shape = len(b.avals[0].shape), tuple(b.avals[1].shape)
    b.specialize(rank=rank, slope_shape="x".join(map(str, shape)) or "scalar")
    negative = b.op("Less", x, b.const(0.0, x))
    dx = b.op("Where", negative, b.op("Mul", slope, dy), dy)
    lead = rank - len(shape)  # slope broadcasts from the right: sum where it was stretched
    axes = list(range(lead)) + [lead + i for i, n in enumerate(shape) if n == 1]
    dslope = b.op("Where", negative, b.op("Mul", dy, x), b.const(0.0, dy))
    if axes:
        dslope = b.op("ReduceSum", dslope, b.ints(axes), keepdims=1)
    return dx, b.op("Reshape", dslope, b.ints(shape))
