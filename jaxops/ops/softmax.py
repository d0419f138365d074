"""Softmax and LogSoftmax over one axis, with their Caffe2 gradient ops (which read Y).

Numerics: the row maximum is subtracted before ``exp`` (no overflow for large logits);
half-precision inputs are computed in float32 and the sums accumulate there.  A row that is
entirely ``-inf`` (fully masked) has softmax 0, not 0/0 = NaN; ``-inf`` entries have
softmax 0 and log-softmax ``-inf`` (log 0), and every gradient stays finite.

The Pallas kernels of these four ops, and how they are differentiated:
:mod:`jaxops.kernels.softmax`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxops import schema
from jaxops._numerics import upcast
from jaxops._op import defop
from jaxops.schema import JAXOPS_DOMAIN, XLA_AND_PALLAS, Attribute, Cost, OpSchema, Parameter

_AXIS = Attribute("axis", "int", -1, doc="the axis to normalize over, in [-rank, rank)")


def _check_axis(s: OpSchema, in_avals, *, axis: int):
    rank = len(in_avals[0].shape)
    if not -rank <= axis < rank or rank == 0:
        raise ValueError(
            f"jaxops.{s.function}: attribute 'axis'={axis} is out of range for an input of "
            f"rank {rank}; use an axis in [{-rank}, {rank - 1}]."
        )
    for p, a in zip(s.inputs[1:], in_avals[1:], strict=True):
        if a.shape != in_avals[0].shape:
            raise ValueError(f"jaxops.{s.function}: input {p.name!r} must have shape "
                             f"{in_avals[0].shape}, got {a.shape}.")
    a = in_avals[0]
    return (jax.ShapeDtypeStruct(a.shape, a.dtype),)


def _row_cost(flops: float, exps: float, logs_per_row: float):
    """Caffe2-style cost of a row-wise op: ideal traffic is every input read once, the
    output written once."""

    def cost(in_avals, out_avals, *, axis):
        n = math.prod(out_avals[0].shape)
        rows = n // out_avals[0].shape[axis] if n else 0
        nbytes = n * jnp.dtype(out_avals[0].dtype).itemsize
        return Cost(flops * n, exps * n + logs_per_row * rows, nbytes * len(in_avals), nbytes)

    return cost


def _shifted(xf: jax.Array, axis: int) -> jax.Array:
    """x - max(x), where a fully masked (all -inf) row is shifted by the lowest finite
    value instead of -inf (so it stays -inf, not NaN).

    ``maximum``, not ``where(isneginf(m), 0, m)``: on XLA CPU (jax 0.10.2) a ``where`` here
    or on the row sum stopped the exp from fusing into the reductions (softmax's forward
    took 5x as long and wrote a temporary of x's size; ``benchmarks/results/fused-cpu.md``).

    An empty axis has no maximum (``jnp.max`` raises) and nothing to shift: ``x`` is returned
    as is, and the op's output is empty like ``jax.nn.softmax``'s.  Decided on the static
    shape, so the traced program of every other shape is unchanged.
    """
    if xf.shape[axis] == 0:
        return xf
    m = jnp.max(xf, axis=axis, keepdims=True)
    return xf - jax.lax.stop_gradient(jnp.maximum(m, jnp.finfo(xf.dtype).min))


def _row_sum_or_one(total: jax.Array) -> jax.Array:
    """The sum of ``exp(x - max)`` over a row is >= 1 (its maximum contributes exp(0) = 1),
    except in a fully masked row, where it is 0: there it becomes 1."""
    return jnp.maximum(total, 1.0)


# ------------------------------------------------------------------------------- Softmax

SOFTMAX = schema.register(OpSchema(
    name="Softmax", function="softmax", since_version=13, inherit_onnx_schema=True,
    doc="output = exp(input) / sum(exp(input), axis), along one axis.",
    inputs=(Parameter("input", doc="input tensor"),),
    outputs=(Parameter("output", doc="normalized along axis"),),
    attributes=(_AXIS,), elementwise=False, allow_inplace=((0, 0),), gradient="SoftmaxGradient",
    implementations=XLA_AND_PALLAS,
    infer_fn=_check_axis, cost_fn=_row_cost(flops=4, exps=1, logs_per_row=0),
    formula="e^x / Σ e^x",
    convention="masked rows → 0",
))


@defop(SOFTMAX)
def softmax(x: ArrayLike, *, axis: int = -1) -> jax.Array:
    r"""Softmax along ``axis``.

    .. math:: \mathrm{softmax}(x)_i = \frac{e^{x_i}}{\sum_j e^{x_j}}, \qquad
              \frac{\partial s_i}{\partial x_j} = s_i (\delta_{ij} - s_j)

    Stable for large logits; ``-inf`` entries get 0 and a fully masked row is all 0 (with
    zero gradient).  Half precision is computed and accumulated in float32.

    Args:
      x: float16, bfloat16, float32 or float64 array, rank >= 1.
      axis: the axis to normalize over (static int).

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.softmax(jnp.array([[0.0, 0.0], [1000.0, -jnp.inf]]))
      Array([[0.5, 0.5],
             [1. , 0. ]], dtype=float32)

    References:
      ONNX Softmax-13; Caffe2 ``SoftmaxOp`` / ``SoftmaxGradientOp``.
    """
    e = jnp.exp(_shifted(upcast(x), axis))
    total = jnp.sum(e, axis=axis, keepdims=True)
    return (e / _row_sum_or_one(total)).astype(x.dtype)


@softmax.defgrad
def _softmax_vjp(x, y, dy, *, axis):
    return softmax_gradient(y, dy, axis=axis)



SOFTMAX_GRADIENT = schema.register(OpSchema(
    name="SoftmaxGradient", function="softmax_gradient", domain=JAXOPS_DOMAIN,
    doc="dX = Y * (dY - sum(dY * Y, axis)) (Caffe2 SoftmaxGradient).",
    inputs=schema.GRADIENT_OF_Y, outputs=schema.DX,
    attributes=(_AXIS,), elementwise=False, allow_inplace=((1, 0),), infer_fn=_check_axis,
    cost_fn=_row_cost(flops=4, exps=0, logs_per_row=0), implementations=XLA_AND_PALLAS,
))


@defop(SOFTMAX_GRADIENT)
def softmax_gradient(y: ArrayLike, dy: ArrayLike, *, axis: int = -1) -> jax.Array:
    r"""Gradient op of :func:`softmax`, from its output: ``y * (dy - sum(dy * y, axis))``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.softmax_gradient(jnp.array([0.5, 0.5]), jnp.array([1.0, 0.0]))
      Array([ 0.25, -0.25], dtype=float32)
    """
    yf, dyf = upcast(y), upcast(dy)
    inner = jnp.sum(dyf * yf, axis=axis, keepdims=True)
    return (yf * (dyf - inner)).astype(dy.dtype)


@softmax_gradient.defonnx
def _softmax_gradient_onnx(b, y, dy, *, axis):
    inner = b.op("ReduceSum", b.op("Mul", dy, y), b.ints([axis]), keepdims=1)
    return b.op("Mul", y, b.op("Sub", dy, inner))


# ---------------------------------------------------------------------------- LogSoftmax

LOG_SOFTMAX = schema.register(OpSchema(
    name="LogSoftmax", function="log_softmax", since_version=13, inherit_onnx_schema=True,
    doc="output = input - log(sum(exp(input), axis)), along one axis.",
    inputs=(Parameter("input", doc="input tensor"),),
    outputs=(Parameter("output", doc="log of the softmax along axis"),),
    attributes=(_AXIS,), elementwise=False, allow_inplace=((0, 0),),
    gradient="LogSoftmaxGradient", infer_fn=_check_axis, implementations=XLA_AND_PALLAS,
    cost_fn=_row_cost(flops=4, exps=1, logs_per_row=1),
    formula="x − log Σ e^x",
    convention="−inf entries → −inf",
))


@defop(LOG_SOFTMAX)
def log_softmax(x: ArrayLike, *, axis: int = -1) -> jax.Array:
    r"""Log-softmax along ``axis``.

    .. math:: \mathrm{log\_softmax}(x)_i = x_i - \log \sum_j e^{x_j}, \qquad
              \frac{\partial l_i}{\partial x_j} = \delta_{ij} - \mathrm{softmax}(x)_j

    Stable for large logits.  A ``-inf`` entry gives ``-inf`` (log 0), also in a fully
    masked row, never NaN; gradients stay finite (``dy_i`` flows to a ``-inf`` entry, as
    ``d l_i / d x_i = 1`` there).  Half precision is computed and accumulated in float32.

    Args:
      x: float16, bfloat16, float32 or float64 array, rank >= 1.
      axis: the axis to normalize over (static int).

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.log_softmax(jnp.array([0.0, 0.0]))
      Array([-0.6931472, -0.6931472], dtype=float32)

    References:
      ONNX LogSoftmax-13; Caffe2 ``LogSoftmaxOp``.
    """
    shifted = _shifted(upcast(x), axis)
    total = jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True)
    lse = jnp.log(_row_sum_or_one(total))
    return (shifted - lse).astype(x.dtype)


@log_softmax.defgrad
def _log_softmax_vjp(x, y, dy, *, axis):
    return log_softmax_gradient(y, dy, axis=axis)


LOG_SOFTMAX_GRADIENT = schema.register(OpSchema(
    name="LogSoftmaxGradient", function="log_softmax_gradient", domain=JAXOPS_DOMAIN,
    doc="dX = dY - exp(Y) * sum(dY, axis).",
    inputs=schema.GRADIENT_OF_Y, outputs=schema.DX,
    attributes=(_AXIS,), elementwise=False, allow_inplace=((1, 0),), infer_fn=_check_axis,
    cost_fn=_row_cost(flops=3, exps=1, logs_per_row=0), implementations=XLA_AND_PALLAS,
))


@defop(LOG_SOFTMAX_GRADIENT)
def log_softmax_gradient(y: ArrayLike, dy: ArrayLike, *, axis: int = -1) -> jax.Array:
    r"""Gradient op of :func:`log_softmax`, from its output: ``dy - exp(y) * sum(dy, axis)``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.log_softmax_gradient(jnp.log(jnp.array([0.5, 0.5])), jnp.array([1.0, 0.0]))
      Array([ 0.5, -0.5], dtype=float32)
    """
    yf, dyf = upcast(y), upcast(dy)
    return (dyf - jnp.exp(yf) * jnp.sum(dyf, axis=axis, keepdims=True)).astype(dy.dtype)


@log_softmax_gradient.defonnx
def _log_softmax_gradient_onnx(b, y, dy, *, axis):
    total = b.op("ReduceSum", dy, b.ints([axis]), keepdims=1)
    return b.op("Sub", dy, b.op("Mul", b.op("Exp", y), total))
