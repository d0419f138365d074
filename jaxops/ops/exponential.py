"""Log and Exp, with their gradient ops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxops import schema
from jaxops._numerics import upcast
from jaxops._op import defop
from jaxops.schema import JAXOPS_DOMAIN, OpSchema, Parameter, pointwise_cost

LOG = schema.register(OpSchema(
    name="Log", function="log", since_version=13, inherit_onnx_schema=True,
    doc="output = ln(input), elementwise.",
    inputs=(Parameter("input", doc="input tensor"),),
    outputs=(Parameter("output", doc="natural logarithm of the input"),),
    gradient="LogGradient",
    cost_fn=pointwise_cost(transcendentals=1),
    formula="ln x",
    convention="±inf at ±0",
))


@defop(LOG)
def log(x: ArrayLike) -> jax.Array:
    r"""Natural logarithm.

    .. math:: \log'(x) = 1 / x, \qquad \log''(x) = -1 / x^2

    IEEE semantics, never an error: ``log(0) = -inf``, ``log(x < 0) = NaN``,
    ``log(inf) = inf``; the derivative at ±0 is ±inf.  Caffe2 allowed an in-place Log, but
    its gradient reads X, so jaxops does not.  Half-precision inputs are computed in float32.

    Args:
      x: float16, bfloat16, float32 or float64 array.

    Example:
      >>> import jax, jax.numpy as jnp, jaxops
      >>> jaxops.log(jnp.array([1.0, 0.0]))
      Array([  0., -inf], dtype=float32)
      >>> jax.grad(jaxops.log)(jnp.float32(4.0))
      Array(0.25, dtype=float32)

    References:
      ONNX Log-13; Caffe2 ``LogOp`` (its gradient was ``Div(dY, X)``).
    """
    return jnp.log(upcast(x)).astype(x.dtype)


@log.defgrad
def _log_vjp(x, y, dy):
    return log_gradient(x, dy)


LOG_GRADIENT = schema.register(OpSchema(
    name="LogGradient", function="log_gradient", domain=JAXOPS_DOMAIN,
    doc="dX = dY / X (Caffe2 expressed it as Div(dY, X)).",
    inputs=schema.GRADIENT_OF_X, outputs=schema.DX, allow_inplace=((1, 0),),
    cost_fn=pointwise_cost(flops=1),
))


@defop(LOG_GRADIENT)
def log_gradient(x: ArrayLike, dy: ArrayLike) -> jax.Array:
    r"""Gradient op of :func:`log`: ``dy / x``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.log_gradient(jnp.array([2.0, 4.0]), jnp.ones(2))
      Array([0.5 , 0.25], dtype=float32)
    """
    return (upcast(dy) / upcast(x)).astype(dy.dtype)


@log_gradient.defonnx
def _log_gradient_onnx(b, x, dy):
    return b.op("Div", dy, x)


EXP = schema.register(OpSchema(
    name="Exp", function="exp", since_version=13, inherit_onnx_schema=True,
    doc="output = e^input, elementwise.",
    inputs=(Parameter("input", doc="input tensor"),),
    outputs=(Parameter("output", doc="exponential of the input"),),
    allow_inplace=((0, 0),), gradient="ExpGradient",
    cost_fn=pointwise_cost(transcendentals=1),
    formula="e^x",
    convention="smooth",
))


@defop(EXP)
def exp(x: ArrayLike) -> jax.Array:
    r"""Exponential.

    .. math:: \exp'(x) = \exp(x)

    IEEE semantics: overflow gives inf, ``exp(-inf) = 0``.  The gradient op reads Y, so Exp
    may run in place.  Half precision is computed in float32.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.exp(jnp.array([0.0, -jnp.inf]))
      Array([1., 0.], dtype=float32)

    References:
      ONNX Exp-13; Caffe2 ``ExpOp`` (its gradient was ``Mul(dY, Y)``).
    """
    return jnp.exp(upcast(x)).astype(x.dtype)


@exp.defgrad
def _exp_vjp(x, y, dy):
    return exp_gradient(y, dy)


EXP_GRADIENT = schema.register(OpSchema(
    name="ExpGradient", function="exp_gradient", domain=JAXOPS_DOMAIN,
    doc="dX = dY * Y (Caffe2 expressed it as Mul(dY, Y)).",
    inputs=schema.GRADIENT_OF_Y, outputs=schema.DX, allow_inplace=((1, 0),),
    cost_fn=pointwise_cost(flops=1),
))


@defop(EXP_GRADIENT)
def exp_gradient(y: ArrayLike, dy: ArrayLike) -> jax.Array:
    r"""Gradient op of :func:`exp`, from its output: ``dy * y``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.exp_gradient(jnp.array([2.0]), jnp.array([3.0]))
      Array([6.], dtype=float32)
    """
    return (upcast(dy) * upcast(y)).astype(dy.dtype)


@exp_gradient.defonnx
def _exp_gradient_onnx(b, y, dy):
    return b.op("Mul", dy, y)
