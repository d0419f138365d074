"""Batch normalization (ONNX BatchNormalization-15) and its registered gradient op.

A pure function: running statistics go in as inputs and come out updated, so nothing is
hidden in state (the Flax modules in :mod:`jaxops.flax` keep them in the framework's usual
collections).  Moments are computed in float32 (float64 for float64 inputs) by the
corrected two-pass algorithm (Chan, Golub and LeVeque 1983): with ``d = x - mean(x)`` as
computed, ``var = mean(d^2) - mean(d)^2``, where ``mean(d)`` is the rounding error of the
first mean.  A channel with mean 1e4 and standard deviation 1e-2 keeps its variance to
float32 rounding instead of losing it to cancellation (``E[x^2] - E[x]^2`` returns 0 or
negative values there).

The training-mode Pallas kernels, and how they are differentiated:
:mod:`jaxops.kernels.batch_norm`, which shares this module's public helpers (``moments``,
``normalize``, ``running``, ``backward``, ``reduce_axes``, ``per_channel``).
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
from jaxops.schema import (
    FLOAT_TYPES,
    JAXOPS_DOMAIN,
    XLA_AND_PALLAS,
    Attribute,
    Cost,
    OpSchema,
    Parameter,
)

_EPSILON = Attribute("epsilon", "float", 1e-5, doc="added to the variance before the sqrt",
                     check=lambda e: None if e > 0 else "must be > 0.")
_MOMENTUM = Attribute("momentum", "float", 0.9,
                      doc="running = momentum * running + (1 - momentum) * batch",
                      check=lambda m: None if 0 <= m <= 1 else "must be in [0, 1].")
_TRAINING = Attribute("training", "bool", False, onnx_name="training_mode",
                      doc="normalize with the batch statistics and update the running ones")
_TYPES = {"T": FLOAT_TYPES, "T1": FLOAT_TYPES, "T2": FLOAT_TYPES}


def reduce_axes(x) -> tuple[int, ...]:
    return (0, *range(2, x.ndim))


def _count(x) -> int:
    """M, the number of values each channel's statistics average: N * d1 * ... (0 for an
    empty batch; never divided by a channel count, which may be 0 too)."""
    return math.prod(x.shape[i] for i in reduce_axes(x))


def per_channel(v, ndim):
    """A (C,) vector shaped to broadcast against (N, C, d1, ...)."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and population variance of ``x`` (N, C, ...), in float32 or wider,
    by the corrected two-pass (no cancellation for large means; no slicing of the batch
    axis, so a batch-sharded ``x`` stays sharded)."""
    xf, axes = upcast(x), reduce_axes(x)
    rough = jax.lax.stop_gradient(jnp.mean(xf, axis=axes))
    d = xf - per_channel(rough, x.ndim)
    dmean = jnp.mean(d, axis=axes)  # the rounding error of ``rough``: small
    return rough + dmean, jnp.mean(d * d, axis=axes) - dmean * dmean


def _check_shapes(s: OpSchema, in_avals, *, grad=False):
    x = in_avals[0]
    if len(x.shape) < 2:
        raise ValueError(f"jaxops.{s.function}: input {s.inputs[0].name!r} must have shape "
                         f"(N, C, d1, ...) with the channels on axis 1, got {x.shape}.")
    c = x.shape[1]
    for p, a in zip(s.inputs[1:], in_avals[1:], strict=True):
        want = x.shape if p.name == "dY" else (c,)
        if a.shape != want:
            raise ValueError(f"jaxops.{s.function}: input {p.name!r} must have shape {want} "
                             f"(one value per channel of {s.inputs[0].name!r} {x.shape}), got "
                             f"{a.shape}.")
    return x, in_avals[1], in_avals[3]


def _bn_infer(s: OpSchema, in_avals, **attrs):
    x, _, mean = _check_shapes(s, in_avals)
    stat = jax.ShapeDtypeStruct(mean.shape, mean.dtype)
    return jax.ShapeDtypeStruct(x.shape, x.dtype), stat, stat


def _bn_cost(flops_per_element: float):
    """Per element: the moments (subtract, square, sum) and the normalization (subtract,
    multiply, add), 6 flops; one rsqrt per channel; every input read and output written once."""

    def cost(in_avals, out_avals, **attrs):
        n, c = math.prod(in_avals[0].shape), in_avals[0].shape[1]
        nbytes = lambda avals: sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize  # noqa: E731
                                   for a in avals)
        return Cost(flops_per_element * n, c, nbytes(in_avals), nbytes(out_avals))

    return cost


BATCH_NORM = schema.register(OpSchema(
    name="BatchNormalization", function="batch_norm", since_version=15,
    inherit_onnx_schema=True,
    doc="Y = scale * (X - mean) / sqrt(var + epsilon) + B per channel (axis 1); in training "
        "mode mean/var are the batch's and the running statistics are updated.",
    inputs=(Parameter("X", doc="input, shape (N, C, d1, ...)"),
            Parameter("scale", "T1", doc="per-channel scale (C,)"),
            Parameter("B", "T1", doc="per-channel bias (C,)"),
            Parameter("input_mean", "T2", doc="running mean (C,)"),
            Parameter("input_var", "T2", doc="running variance (C,)")),
    outputs=(Parameter("Y", doc="normalized, the shape of X"),
             Parameter("running_mean", "T2", doc="updated running mean (C,)", optional=True),
             Parameter("running_var", "T2", doc="updated running variance (C,)", optional=True)),
    attributes=(_EPSILON, _MOMENTUM, _TRAINING), type_constraints=_TYPES, elementwise=False,
    identical_type_and_shape=False, gradient="BatchNormalizationGradient",
    infer_fn=_bn_infer, cost_fn=_bn_cost(6), implementations=XLA_AND_PALLAS,
    formula="γ(x − μ)/√(σ² + ε) + β → (y, mean, var)",
    convention="two-pass f32 moments (kernel: one shifted pass)",
))


@defop(BATCH_NORM)
def batch_norm(
    x: ArrayLike, scale: ArrayLike, bias: ArrayLike, mean: ArrayLike, var: ArrayLike, *,
    epsilon: float = 1e-5, momentum: float = 0.9, training: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Batch normalization over every axis but the channel axis 1 (ONNX
    BatchNormalization-15).

    .. math:: y = \gamma \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta, \qquad
              \hat\mu \leftarrow m \hat\mu + (1 - m) \mu_B, \quad
              \hat\sigma^2 \leftarrow m \hat\sigma^2 + (1 - m) \sigma_B^2

    Inference (``training=False``): ``mu, sigma^2`` are the running ``mean, var``, returned
    unchanged.  Training: they are the batch mean and *population* variance (as ONNX, for
    normalizing and for the running update; PyTorch updates with the unbiased variance), and
    the running statistics come back updated with ``momentum`` (0.9 as ONNX and Caffe2; flax's
    default is 0.99 and PyTorch's 0.1 means ``1 - momentum`` here).  Moments accumulate in
    float32 (corrected two-pass, module docstring); ``y`` has the dtype of ``x``, the statistics
    that of ``mean``, so bfloat16 activations with float32 statistics work as in ONNX.

    The registered gradient op (BatchNormalizationGradient, Caffe2's SpatialBNGradient)
    returns ``dx = gamma / sigma (dy - mean(dy) - xhat mean(dy xhat))`` in training mode; the
    updated statistics are differentiable too (``d new_mean / d x = (1 - m) / M``).

    Args:
      x: float array ``(N, C, d1, ...)``.
      scale, bias: float arrays ``(C,)`` (one dtype).
      mean, var: running statistics ``(C,)`` (one dtype).
      epsilon: added to the variance (> 0).
      momentum: weight of the old running statistics, in [0, 1].
      training: use and update batch statistics.

    Returns:
      ``(y, new_mean, new_var)``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> x = jnp.array([[1.0], [3.0]])
      >>> y, m, v = jaxops.batch_norm(x, jnp.ones(1), jnp.zeros(1), jnp.zeros(1), jnp.ones(1),
      ...                             epsilon=1e-6, training=True)
      >>> y.ravel()
      Array([-0.9999995,  0.9999995], dtype=float32)
      >>> m, v
      (Array([0.2], dtype=float32), Array([1.], dtype=float32))

    References:
      Ioffe and Szegedy, "Batch Normalization" (2015); ONNX BatchNormalization-15.
    """
    if training:
        mu, sigma2 = moments(x)
        new_mean, new_var = running(mean, var, mu, sigma2, momentum)
    else:
        mu, sigma2, new_mean, new_var = upcast(mean), upcast(var), mean, var
    return normalize(x, scale, bias, mu, sigma2, epsilon), new_mean, new_var


def normalize(x, scale, bias, mu, sigma2, epsilon):
    nd = x.ndim
    inv = jax.lax.rsqrt(sigma2 + epsilon)
    y = (upcast(x) - per_channel(mu, nd)) * per_channel(inv * upcast(scale), nd)
    return (y + per_channel(upcast(bias), nd)).astype(x.dtype)


def running(mean, var, mu, sigma2, momentum):
    """The running statistics updated with the batch's."""
    new_mean = momentum * upcast(mean) + (1 - momentum) * mu
    new_var = momentum * upcast(var) + (1 - momentum) * sigma2
    return new_mean.astype(mean.dtype), new_var.astype(var.dtype)


@batch_norm.defgrad
def _batch_norm_vjp(x, scale, bias, mean, var, outs, douts, *, epsilon, momentum, training):
    dy, dnew_mean, dnew_var = douts
    saved_mean, saved_var = moments(x) if training else (mean, var)
    dx, dscale, dbias, dmean, dvar = batch_norm_gradient(
        x, scale, saved_mean, saved_var, dy, epsilon=epsilon, training=training)
    # the running statistics' own (linear) paths
    dnm, dnv = upcast(dnew_mean), upcast(dnew_var)
    if training:
        m_count = _count(x)
        centered = upcast(x) - per_channel(saved_mean, x.ndim)
        extra = (per_channel((1 - momentum) * dnm, x.ndim)
                 + 2 * (1 - momentum) * centered * per_channel(dnv, x.ndim)) / m_count
        dx = (upcast(dx) + extra).astype(x.dtype)
        dmean, dvar = momentum * dnm, momentum * dnv
    else:
        dmean, dvar = upcast(dmean) + dnm, upcast(dvar) + dnv
    return dx, dscale, dbias, dmean.astype(mean.dtype), dvar.astype(var.dtype)


# training mode's backward, given per-channel sums (XLA here, the kernel's in the Pallas path)

def _xla_sums(x, dy, mu, inv):
    axes, nd = reduce_axes(x), x.ndim
    g = upcast(dy)
    xhat = (upcast(x) - per_channel(mu, nd)) * per_channel(inv, nd)
    return jnp.sum(g, axis=axes), jnp.sum(g * xhat, axis=axes)


def backward(x, scale, mu, inv, dy, *, sums):
    """Training mode's (dx, dscale, dbias) from the batch statistics ``mu``, ``inv``."""
    nd, m_count = x.ndim, _count(x)
    sum_dy, sum_dy_xhat = sums(x, dy, mu, inv)
    xhat = (upcast(x) - per_channel(mu, nd)) * per_channel(inv, nd)
    dx = per_channel(upcast(scale) * inv, nd) * (
        upcast(dy) - (per_channel(sum_dy, nd) + xhat * per_channel(sum_dy_xhat, nd)) / m_count)
    return dx.astype(x.dtype), sum_dy_xhat.astype(scale.dtype), sum_dy.astype(scale.dtype)


def _bn_gradient_infer(s: OpSchema, in_avals, **attrs):
    x, scale, mean = _check_shapes(s, in_avals)
    p, m = (jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (scale, mean))
    return jax.ShapeDtypeStruct(x.shape, x.dtype), p, p, m, m


BATCH_NORM_GRADIENT = schema.register(OpSchema(
    name="BatchNormalizationGradient", function="batch_norm_gradient", domain=JAXOPS_DOMAIN,
    doc="dX, dscale, dB, dmean, dvar of Y = scale * (X - mean) / sqrt(var + epsilon) + B, "
        "with mean/var the batch's (training) or the running ones (inference).",
    inputs=(Parameter("X", doc="the forward input"),
            Parameter("scale", "T1", doc="per-channel scale (C,)"),
            Parameter("saved_mean", "T2", doc="the mean Y was normalized with (C,)"),
            Parameter("saved_var", "T2", doc="the variance Y was normalized with (C,)"),
            Parameter("dY", doc="gradient w.r.t. Y")),
    outputs=(Parameter("dX", doc="gradient w.r.t. X"),
             Parameter("dscale", "T1", doc="gradient w.r.t. scale"),
             Parameter("dB", "T1", doc="gradient w.r.t. B"),
             Parameter("dmean", "T2", doc="gradient w.r.t. the running mean (0 in training)"),
             Parameter("dvar", "T2", doc="gradient w.r.t. the running var (0 in training)")),
    attributes=(_EPSILON, _TRAINING), type_constraints=_TYPES, elementwise=False,
    identical_type_and_shape=False, infer_fn=_bn_gradient_infer, cost_fn=_bn_cost(10),
    implementations=XLA_AND_PALLAS,
))


@defop(BATCH_NORM_GRADIENT)
def batch_norm_gradient(
    x: ArrayLike, scale: ArrayLike, saved_mean: ArrayLike, saved_var: ArrayLike,
    dy: ArrayLike, *, epsilon: float = 1e-5, training: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    r"""Gradient op of :func:`batch_norm` w.r.t. its output ``Y``.

    .. math:: \hat x = (x - \mu) / \sigma, \quad
              d\gamma = \textstyle\sum dy \, \hat x, \quad d\beta = \sum dy, \quad
              dx = \frac{\gamma}{\sigma} \big(dy - \tfrac{1}{M}(d\beta + \hat x \, d\gamma)\big)
              \text{ (training)}, \quad \frac{\gamma}{\sigma} dy \text{ (inference)}

    In inference mode ``dmean = -sum(dy) gamma / sigma`` and
    ``dvar = -sum(dy xhat) gamma / (2 sigma^2)``; in training mode they are 0 (the statistics
    Y used are functions of X, already in ``dx``).

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> x = jnp.array([[0.0], [1.0], [5.0]])  # mean 2, variance 14/3
      >>> dx, ds, db, dm, dv = jaxops.batch_norm_gradient(
      ...     x, jnp.ones(1), jnp.array([2.0]), jnp.array([14 / 3]),
      ...     jnp.array([[1.0], [0.0], [0.0]]), training=True)
      >>> dx.ravel()
      Array([ 0.17634678, -0.22043298,  0.04408619], dtype=float32)
      >>> ds, db
      (Array([-0.9258191], dtype=float32), Array([1.], dtype=float32))
    """
    mu, gamma = upcast(saved_mean), upcast(scale)
    inv = jax.lax.rsqrt(upcast(saved_var) + epsilon)
    if training:
        dx, dscale, dbias = backward(x, scale, mu, inv, dy, sums=_xla_sums)
        zeros = jnp.zeros_like(saved_mean)  # the statistics Y used are functions of X
        return dx, dscale, dbias, zeros, zeros
    dbias, dscale = _xla_sums(x, dy, mu, inv)
    dx = per_channel(gamma * inv, x.ndim) * upcast(dy)
    dmean = -dbias * gamma * inv
    dvar = -0.5 * dscale * gamma * inv * inv
    return (dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype),
            dmean.astype(saved_mean.dtype), dvar.astype(saved_mean.dtype))


@batch_norm_gradient.defonnx
def _batch_norm_gradient_onnx(b, x, scale, mean, var, dy, *, epsilon, training):
    rank = len(b.avals[0].shape)
    b.specialize(rank=rank)
    axes = b.ints([0, *range(2, rank)])

    def per_channel(v):
        return b.op("Unsqueeze", v, axes)

    inv = b.op("Reciprocal", b.op("Sqrt", b.op("Add", var, b.const(epsilon, var))))
    xhat = b.op("Mul", b.op("Sub", x, per_channel(mean)), per_channel(inv))
    dbias = b.op("ReduceSum", dy, axes, keepdims=0)
    dscale = b.op("ReduceSum", b.op("Mul", dy, xhat), axes, keepdims=0)
    k = per_channel(b.op("Mul", scale, inv))
    if training:
        centred = b.op("Add", per_channel(dbias), b.op("Mul", xhat, per_channel(dscale)))
        centred = b.op("Div", centred, b.count(x, dy, 1))
        dx = b.op("Mul", k, b.op("Sub", dy, centred))
        dmean = dvar = b.zeros_like(mean)
    else:
        dx = b.op("Mul", k, dy)
        dmean = b.op("Neg", b.op("Mul", dbias, b.op("Mul", scale, inv)))
        dvar = b.op("Mul", b.const(-0.5, dscale), b.op("Mul", dscale, b.op(
            "Mul", scale, b.op("Mul", inv, inv))))
    return dx, dscale, dbias, dmean, dvar
