"""Log (and, with the wider operator set, its relatives), with their gradient ops."""

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
    inputs=(Parameter("X", doc="the forward op's input"), Parameter("dY", doc="gradient w.r.t. Y")),
    outputs=(Parameter("dX", doc="gradient w.r.t. X"),), allow_inplace=((1, 0),),
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
