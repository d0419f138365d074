r"""Per-sample normalizations: LayerNormalization-17, RMSNormalization-23 and
GroupNormalization-21, each with its registered gradient op.

Unlike batch normalization (:mod:`jaxops.ops.normalization`) the statistics are each
sample's own, over a trailing block of axes (layer and RMS norm) or over a group of channels
(group norm), so nothing is carried between calls.

Numerics: half-precision inputs are computed in float32 and float64 inputs in float64 (ONNX's
``stash_type=1`` says float32; onnxruntime's LayerNormalization kernel keeps float64 too,
while GroupNormalization-21's function body casts float64 to float32), and the variance is
taken in two passes, the mean first and then the mean of the squared deviations (corrected
by the first mean's rounding error, as batch_norm), so a row with a large mean and a small
spread keeps its mean and variance (``E[x^2] - E[x]^2``, Flax's ``use_fast_variance=True``,
loses the variance to cancellation).  A constant row has variance 0: it normalizes to 0
(``y = bias``) with finite derivatives as long as ``epsilon > 0``.

Gradient ops.  Each reads X (not Y: a scale of 0 hides X in Y) and recomputes the row
statistics from it, so it takes the forward op's inputs and ``dY`` and nothing saved: the
statistics are a few reductions over X that, under ``jit(grad)``, XLA computes once for the
forward and the gradient together (the forward's and the recomputed ones are the same
expression; counted in tests/test_layer_normalization.py), and the op stands alone, with no
hidden ``Mean``/``InvStdDev`` to carry.  Outside that, they are a reduction over X that
``jax.grad`` without ``jit`` computes twice.

.. math:: \hat x = (x - \mu)\, r, \quad g = dy \cdot \gamma, \quad
          dx = r\,\big(g - \overline{g} - \hat x\, \overline{g \hat x}\big)

with the bars means over the normalized elements (no mean term for RMS norm, whose
``xhat = x r``).  ``dscale`` and ``dbias`` sum ``dy * xhat`` and ``dy`` over the axes the
parameters are broadcast along.
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
from jaxops.schema import FLOAT_TYPES, JAXOPS_DOMAIN, Attribute, Cost, OpSchema, Parameter

_AXIS = Attribute("axis", "int", -1,
                  doc="the first normalized axis: the statistics are over axis, ..., rank - 1")
_EPSILON = Attribute(
    "epsilon", "float", 1e-5, doc="added to the variance (mean square) before the sqrt",
    check=lambda e: None if e >= 0 else (
        "must be >= 0 (a negative epsilon makes rows of variance below -epsilon NaN)."))
_STASH_TYPE = Attribute(
    "stash_type", "int", 1,
    doc="the statistics' precision: 1, float32 (float64 for float64 inputs); ONNX's only one",
    check=lambda t: None if t == 1 else (
        "must be 1 (statistics in float32, float64 for float64 inputs): the only stash type "
        "ONNX defines an implementation for."))
_NUM_GROUPS = Attribute("num_groups", "int", None, required=True,
                        doc="the number of channel groups; must divide the channels C",
                        check=lambda g: None if g > 0 else "must be > 0.")


# ------------------------------------------------------------------------------- shared

def _normalized_axes(ndim: int, axis: int) -> tuple[int, ...]:
    return tuple(range(axis % ndim, ndim))


def _check_axis(s: OpSchema, x, axis: int) -> None:
    rank = len(x.shape)
    if rank == 0 or not -rank <= axis < rank:
        raise ValueError(
            f"jaxops.{s.function}: attribute 'axis'={axis} is out of range for an input of "
            f"rank {rank}; use an axis in [{-rank}, {rank - 1}] (the statistics are over "
            "axis, ..., rank - 1).")


def _check_broadcast(s: OpSchema, x, param, a) -> None:
    """ONNX's unidirectional broadcasting: ``a`` broadcasts to X's shape, X's shape stays."""
    try:
        ok = len(a.shape) <= len(x.shape) and jnp.broadcast_shapes(x.shape, a.shape) == x.shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"jaxops.{s.function}: input {param.name!r} of shape {a.shape} must broadcast to "
            f"X's shape {x.shape} (ONNX unidirectional broadcasting), e.g. one value per "
            f"normalized element, of shape {x.shape[-1:]} for axis=-1.")


def _check_same_dtype(s: OpSchema, x, param, a) -> None:
    """RMSNormalization types X (T) and scale (V) apart; jaxops does not promote silently."""
    if a is None or bool(getattr(a, "weak_type", False)):
        return
    if np.dtype(a.dtype) != np.dtype(x.dtype):
        raise TypeError(
            f"jaxops.{s.function}: input {param.name!r} has dtype {np.dtype(a.dtype).name}, "
            f"but 'X' is {np.dtype(x.dtype).name}; jaxops does not promote silently. Cast "
            f"{param.name} to X's dtype (Y has it).")


def _check_dy(s: OpSchema, x, dy) -> None:
    if dy.shape != x.shape:
        raise ValueError(f"jaxops.{s.function}: input 'dY' must have X's shape {x.shape}, got "
                         f"{dy.shape}.")


def _struct(a) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(a.shape, a.dtype)


def _sum_to_shape(g: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``g`` summed over the axes that broadcasting ``shape`` to ``g.shape`` added or
    stretched (the cotangent of a unidirectionally broadcast parameter)."""
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    return jnp.sum(g, axis=axes, keepdims=True).reshape(shape) if axes else g.reshape(shape)


def _lifted(a: jax.Array, ndim: int) -> jax.Array:
    """A parameter of lower rank reshaped to ``ndim`` with leading 1s (ONNX's unidirectional
    broadcasting is right-aligned; jaxops' tests run with rank promotion refused)."""
    return a.reshape((1,) * (ndim - a.ndim) + a.shape)


def _moments(xf: jax.Array, axes: tuple[int, ...], epsilon: float):
    """Mean and 1/sqrt(variance + epsilon) over ``axes`` (kept), by the corrected two-pass
    algorithm (Chan, Golub and LeVeque 1983), as batch_norm: with ``d = x - mean(x)`` as
    computed, ``mean(d)`` is the first mean's rounding error, added back to the mean and
    taken off the variance, ``mean(d^2) - mean(d)^2``.  Both reduce ``d`` (one pass, sibling
    reductions); without the correction a row of mean 1e4 and spread 1e-2 normalizes 0.1 off
    in float32 (the summation error of the mean; tests/test_layer_normalization.py)."""
    rough = jax.lax.stop_gradient(jnp.mean(xf, axis=axes, keepdims=True))
    d = xf - rough
    dmean = jnp.mean(d, axis=axes, keepdims=True)
    var = jnp.mean(d * d, axis=axes, keepdims=True) - dmean * dmean
    return rough + dmean, jax.lax.rsqrt(var + epsilon)


def _nbytes(avals) -> int:
    return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in avals if a is not None)


def _rows(x, axis: int) -> int:
    n = math.prod(x.shape)
    width = math.prod(x.shape[axis % len(x.shape):])
    return n // width if width else 0


def _row_cost(flops_per_element: float):
    """Per element the stated flops (XLA's count of the float32 formula: the forward's mean,
    deviation, its mean, square, mean, scale and shift, 9 for layer norm; the gradient's
    recomputed statistics and its three row means, 20), one rsqrt per normalized row; every
    input read once and every output written once."""

    def cost(in_avals, out_avals, *, axis, **attrs):
        x = in_avals[0]
        return Cost(flops_per_element * math.prod(x.shape), _rows(x, axis), _nbytes(in_avals),
                    _nbytes(out_avals))

    return cost


# -------------------------------------------------------------------- LayerNormalization

def _ln_infer(s: OpSchema, in_avals, *, axis, **attrs):
    x, scale, bias = in_avals[:3]
    _check_axis(s, x, axis)
    for p, a in zip(s.inputs[1:3], (scale, bias), strict=True):
        if a is not None:
            _check_broadcast(s, x, p, a)
    if len(in_avals) == 3:
        return (_struct(x),)
    _check_dy(s, x, in_avals[3])
    return tuple(_struct(a) for a in (x, scale, bias) if a is not None)


LAYER_NORM = schema.register(OpSchema(
    name="LayerNormalization", function="layer_norm", since_version=17,
    inherit_onnx_schema=True,
    doc="Y = (X - mean) / sqrt(var + epsilon) * Scale + B, with mean and var over the axes "
        "axis, ..., rank - 1 of each sample; Scale and B broadcast to X.",
    inputs=(Parameter("X", doc="input tensor"),
            Parameter("Scale", doc="scale, unidirectionally broadcastable to X"),
            Parameter("B", doc="bias, unidirectionally broadcastable to X", optional=True)),
    outputs=(Parameter("Y", doc="normalized, the shape of X"),
             Parameter("Mean", "U", doc="not returned by jaxops (ONNX's optional output)",
                       optional=True),
             Parameter("InvStdDev", "U", doc="not returned by jaxops (ONNX's optional output)",
                       optional=True)),
    attributes=(_AXIS, _EPSILON, _STASH_TYPE),
    type_constraints={"T": FLOAT_TYPES, "U": ("float32", "bfloat16")}, elementwise=False,
    identical_type_and_shape=False, gradient="LayerNormalizationGradient",
    infer_fn=_ln_infer, cost_fn=_row_cost(9),
    formula="(x − μ)/√(σ² + ε)·γ + β over axes axis… (two-pass f32 σ²)",
    convention="smooth (ε > 0; a constant row → β)",
))


@defop(LAYER_NORM)
def layer_norm(
    x: ArrayLike, scale: ArrayLike, bias: ArrayLike | None = None, *, axis: int = -1,
    epsilon: float = 1e-5, stash_type: int = 1,
) -> jax.Array:
    r"""Layer normalization over the trailing axes ``axis, ..., rank - 1`` (ONNX
    LayerNormalization-17).

    .. math:: y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\, \gamma + \beta, \qquad
              \mu = \overline{x}, \quad \sigma^2 = \overline{(x - \mu)^2}

    with the means over the normalized axes of each sample.  ``scale`` (gamma) and ``bias``
    (beta) broadcast to ``x`` as ONNX's unidirectional broadcasting says: usually of shape
    ``x.shape[axis:]``, but any shape that broadcasts to ``x`` works, and their gradients sum
    over the broadcast axes.  The variance is the population variance, taken in two passes
    in float32 (float64 for float64 inputs); ``y`` has the dtype of ``x``, which ``scale``
    and ``bias`` must share.  A constant row gives ``y = bias``, with finite derivatives
    (``epsilon > 0``).

    ONNX's optional outputs ``Mean`` and ``InvStdDev`` are not returned (as ``jax.nn`` and
    Flax return ``y`` only); an exported call is a one-output LayerNormalization node.  An
    imported node that asks for them gets them from :func:`statistics`.
    ``stash_type`` is ONNX's attribute; 1 (float32 statistics) is its only defined value.

    Args:
      x: float array, rank >= 1.
      scale: float array broadcastable to ``x`` (``x.shape[axis:]``), the dtype of ``x``.
      bias: None, or like ``scale``.
      axis: the first normalized axis (static int in ``[-rank, rank)``).
      epsilon: added to the variance (>= 0; 0 makes a constant row NaN, as in ONNX).
      stash_type: 1.

    Returns:
      ``y``, the shape and dtype of ``x``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> x = jnp.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
      >>> jaxops.layer_norm(x, jnp.ones(3), jnp.zeros(3), epsilon=0.0).round(4)[0]
      Array([-1.2247,  0.    ,  1.2247], dtype=float32)
      >>> jaxops.layer_norm(x, jnp.ones(3), jnp.full(3, 0.5))[1]  # a constant row: the bias
      Array([0.5, 0.5, 0.5], dtype=float32)

    References:
      Ba, Kiros and Hinton, "Layer Normalization" (2016); ONNX LayerNormalization-17.
    """
    xf = upcast(x)
    mu, inv = _moments(xf, _normalized_axes(x.ndim, axis), epsilon)
    y = (xf - mu) * inv * _lifted(upcast(scale), x.ndim)
    if bias is not None:
        y = y + _lifted(upcast(bias), x.ndim)
    return y.astype(x.dtype)


def statistics(x: ArrayLike, *, axis: int = -1, epsilon: float = 1e-5
               ) -> tuple[jax.Array, jax.Array]:
    """ONNX LayerNormalization's optional outputs ``(Mean, InvStdDev)`` for ``layer_norm(x,
    ..., axis=axis, epsilon=epsilon)``: over the axes ``axis, ..., rank - 1``, kept as 1s,
    in float32 (ONNX's ``stash_type=1``; float64 for float64 ``x``).  What the importer
    returns for a node that asks for them; differentiable by JAX."""
    xf = upcast(x)
    mean, inv = _moments(xf, _normalized_axes(xf.ndim, axis), epsilon)
    return mean, inv


@layer_norm.defgrad
def _layer_norm_vjp(x, scale, bias, y, dy, *, axis, epsilon, stash_type):
    return layer_norm_gradient(x, scale, bias, dy, axis=axis, epsilon=epsilon,
                               stash_type=stash_type)


LAYER_NORM_GRADIENT = schema.register(OpSchema(
    name="LayerNormalizationGradient", function="layer_norm_gradient", domain=JAXOPS_DOMAIN,
    doc="dX, dScale (and dB when B is given) of LayerNormalization, with the statistics "
        "recomputed from X.",
    inputs=(Parameter("X", doc="the forward input"),
            Parameter("Scale", doc="the forward scale"),
            Parameter("B", doc="the forward bias (only its shape is read: dB's shape)",
                      optional=True),
            Parameter("dY", doc="gradient w.r.t. Y")),
    outputs=(Parameter("dX", doc="gradient w.r.t. X"),
             Parameter("dScale", doc="gradient w.r.t. Scale, of its shape"),
             Parameter("dB", doc="gradient w.r.t. B, of its shape (when B is given)",
                       optional=True)),
    attributes=(_AXIS, _EPSILON, _STASH_TYPE), elementwise=False,
    identical_type_and_shape=False, infer_fn=_ln_infer, cost_fn=_row_cost(20),
))


@defop(LAYER_NORM_GRADIENT)
def layer_norm_gradient(
    x: ArrayLike, scale: ArrayLike, bias: ArrayLike | None, dy: ArrayLike, *, axis: int = -1,
    epsilon: float = 1e-5, stash_type: int = 1,
) -> tuple[jax.Array, ...]:
    r"""Gradient op of :func:`layer_norm`: ``(dx, dscale[, dbias])`` from X, the scale and
    ``dy`` (the module docstring has the formula); ``dbias`` is returned when ``bias`` is
    given, whose shape it takes (its values are not read).

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> x = jnp.array([[0.0, 1.0, 5.0]])
      >>> dx, ds, db = jaxops.layer_norm_gradient(x, jnp.ones(3), jnp.zeros(3),
      ...                                         jnp.array([[1.0, 0.0, 0.0]]))
      >>> dx
      Array([[ 0.17634676, -0.22043295,  0.04408618]], dtype=float32)
      >>> db  # dscale = sum(dy * xhat) = xhat[0] = -2 / sqrt(14 / 3 + 1e-5)
      Array([1., 0., 0.], dtype=float32)
    """
    axes = _normalized_axes(x.ndim, axis)
    xf, dyf = upcast(x), upcast(dy)
    mu, inv = _moments(xf, axes, epsilon)
    xhat = (xf - mu) * inv
    g = dyf * _lifted(upcast(scale), x.ndim)
    dx = inv * (g - jnp.mean(g, axis=axes, keepdims=True)
                - xhat * jnp.mean(g * xhat, axis=axes, keepdims=True))
    out = (dx.astype(x.dtype), _sum_to_shape(dyf * xhat, jnp.shape(scale)).astype(scale.dtype))
    if bias is None:
        return out
    return (*out, _sum_to_shape(dyf, jnp.shape(bias)).astype(bias.dtype))


# ---------------------------------------------------------------------- RMSNormalization

def _rms_infer(s: OpSchema, in_avals, *, axis, **attrs):
    x, scale = in_avals[:2]
    _check_axis(s, x, axis)
    _check_broadcast(s, x, s.inputs[1], scale)
    _check_same_dtype(s, x, s.inputs[1], scale)
    if len(in_avals) == 2:
        return (_struct(x),)
    _check_dy(s, x, in_avals[2])
    return _struct(x), _struct(scale)


RMS_NORM = schema.register(OpSchema(
    name="RMSNormalization", function="rms_norm", since_version=23, inherit_onnx_schema=True,
    doc="Y = X / sqrt(mean(X^2) + epsilon) * scale, with the mean over the axes axis, ..., "
        "rank - 1 of each sample; scale broadcasts to X.",
    inputs=(Parameter("X", doc="input tensor"),
            Parameter("scale", "V", doc="scale, unidirectionally broadcastable to X (X's "
                                        "dtype in jaxops)")),
    outputs=(Parameter("Y", "V", doc="normalized, the shape of X"),),
    attributes=(_AXIS, _EPSILON, _STASH_TYPE),
    type_constraints={"T": FLOAT_TYPES, "V": FLOAT_TYPES}, elementwise=False,
    identical_type_and_shape=False, gradient="RMSNormalizationGradient",
    infer_fn=_rms_infer, cost_fn=_row_cost(4),
    formula="x/√(mean(x²) + ε)·γ over axes axis…",
    convention="smooth (ε > 0; a zero row → 0)",
))


@defop(RMS_NORM)
def rms_norm(
    x: ArrayLike, scale: ArrayLike, *, axis: int = -1, epsilon: float = 1e-5,
    stash_type: int = 1,
) -> jax.Array:
    r"""Root-mean-square normalization over the trailing axes ``axis, ..., rank - 1`` (ONNX
    RMSNormalization-23).

    .. math:: y = \frac{x}{\sqrt{\overline{x^2} + \epsilon}}\, \gamma

    with the mean over the normalized axes of each sample; no centering and no bias.
    ``scale`` broadcasts to ``x`` (ONNX unidirectional broadcasting; usually
    ``x.shape[axis:]``) and must have the dtype of ``x`` (ONNX types it apart, as V; jaxops
    does not promote).  Computed in float32 (float64 for float64 inputs); ``y`` has the
    dtype of ``x``.  A zero row gives 0, with finite derivatives (``epsilon > 0``).

    Exported at opset >= 23 as one RMSNormalization node; older opsets have no such op.

    Args:
      x: float array, rank >= 1.
      scale: float array broadcastable to ``x``, the dtype of ``x``.
      axis: the first normalized axis (static int in ``[-rank, rank)``).
      epsilon: added to the mean square (>= 0).
      stash_type: 1.

    Returns:
      ``y``, the shape and dtype of ``x``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.rms_norm(jnp.array([3.0, 4.0]), jnp.ones(2), epsilon=0.0)
      Array([0.84852815, 1.1313709 ], dtype=float32)

    References:
      Zhang and Sennrich, "Root Mean Square Layer Normalization" (2019); ONNX
      RMSNormalization-23.
    """
    xf = upcast(x)
    axes = _normalized_axes(x.ndim, axis)
    inv = jax.lax.rsqrt(jnp.mean(xf * xf, axis=axes, keepdims=True) + epsilon)
    return (xf * inv * _lifted(upcast(scale), x.ndim)).astype(x.dtype)


@rms_norm.defgrad
def _rms_norm_vjp(x, scale, y, dy, *, axis, epsilon, stash_type):
    return rms_norm_gradient(x, scale, dy, axis=axis, epsilon=epsilon, stash_type=stash_type)


RMS_NORM_GRADIENT = schema.register(OpSchema(
    name="RMSNormalizationGradient", function="rms_norm_gradient", domain=JAXOPS_DOMAIN,
    doc="dX, dscale of RMSNormalization, with the mean square recomputed from X.",
    inputs=(Parameter("X", doc="the forward input"),
            Parameter("scale", "V", doc="the forward scale"),
            Parameter("dY", "V", doc="gradient w.r.t. Y")),
    outputs=(Parameter("dX", doc="gradient w.r.t. X"),
             Parameter("dscale", "V", doc="gradient w.r.t. scale, of its shape")),
    attributes=(_AXIS, _EPSILON, _STASH_TYPE),
    type_constraints={"T": FLOAT_TYPES, "V": FLOAT_TYPES}, elementwise=False,
    identical_type_and_shape=False, infer_fn=_rms_infer, cost_fn=_row_cost(13),
))


@defop(RMS_NORM_GRADIENT)
def rms_norm_gradient(
    x: ArrayLike, scale: ArrayLike, dy: ArrayLike, *, axis: int = -1, epsilon: float = 1e-5,
    stash_type: int = 1,
) -> tuple[jax.Array, jax.Array]:
    r"""Gradient op of :func:`rms_norm`: with ``r = 1/sqrt(mean(x^2) + epsilon)``,
    ``xhat = x r`` and ``g = dy * scale``, ``dx = r (g - xhat mean(g xhat))`` and
    ``dscale = sum(dy * xhat)`` over the axes ``scale`` is broadcast along.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> dx, ds = jaxops.rms_norm_gradient(jnp.array([3.0, 4.0]), jnp.ones(2),
      ...                                   jnp.array([1.0, 0.0]), epsilon=0.0)
      >>> dx
      Array([ 0.18101934, -0.13576451], dtype=float32)
      >>> ds
      Array([0.84852815, 0.        ], dtype=float32)
    """
    axes = _normalized_axes(x.ndim, axis)
    xf, dyf = upcast(x), upcast(dy)
    inv = jax.lax.rsqrt(jnp.mean(xf * xf, axis=axes, keepdims=True) + epsilon)
    xhat = xf * inv
    g = dyf * _lifted(upcast(scale), x.ndim)
    dx = inv * (g - xhat * jnp.mean(g * xhat, axis=axes, keepdims=True))
    return (dx.astype(x.dtype),
            _sum_to_shape(dyf * xhat, jnp.shape(scale)).astype(scale.dtype))


# -------------------------------------------------------------------- GroupNormalization

def _gn_infer(s: OpSchema, in_avals, *, num_groups, **attrs):
    x = in_avals[0]
    if len(x.shape) < 2:
        raise ValueError(f"jaxops.{s.function}: input 'X' must have shape (N, C, d1, ...) "
                         f"with the channels on axis 1, got {x.shape}.")
    c = x.shape[1]
    if c % num_groups:
        raise ValueError(
            f"jaxops.{s.function}: attribute 'num_groups'={num_groups} must divide the "
            f"{c} channels of X (axis 1 of {x.shape}), so that every group has as many "
            "channels.")
    for p, a in zip(s.inputs[1:], in_avals[1:], strict=True):
        want = x.shape if p.name == "dY" else (c,)
        if a.shape != want:
            raise ValueError(f"jaxops.{s.function}: input {p.name!r} must have shape {want} "
                             f"(one value per channel of X {x.shape}), got {a.shape}.")
    if len(in_avals) == 3 and s.inputs[2].name != "dY":
        return (_struct(x),)
    return _struct(x), _struct(in_avals[1]), _struct(in_avals[1])


def _gn_cost(flops_per_element: float):
    def cost(in_avals, out_avals, *, num_groups, **attrs):
        x = in_avals[0]
        return Cost(flops_per_element * math.prod(x.shape), x.shape[0] * num_groups,
                    _nbytes(in_avals), _nbytes(out_avals))

    return cost


GROUP_NORM = schema.register(OpSchema(
    name="GroupNormalization", function="group_norm", since_version=21,
    inherit_onnx_schema=True,
    doc="Y = (X - mean) / sqrt(var + epsilon) * scale + bias, with mean and var over each "
        "sample's group of C / num_groups channels (axis 1) and its spatial axes; scale and "
        "bias per channel.",
    inputs=(Parameter("X", doc="input, shape (N, C, d1, ...)"),
            Parameter("scale", doc="per-channel scale (C,)"),
            Parameter("bias", doc="per-channel bias (C,)")),
    outputs=(Parameter("Y", doc="normalized, the shape of X"),),
    attributes=(_NUM_GROUPS, _EPSILON, _STASH_TYPE), elementwise=False,
    identical_type_and_shape=False, gradient="GroupNormalizationGradient",
    infer_fn=_gn_infer, cost_fn=_gn_cost(9),
    formula="(x − μ_g)/√(σ_g² + ε)·γ_c + β_c, groups of channels (axis 1)",
    convention="smooth (ε > 0; a constant group → β)",
))


def _grouped(x: jax.Array, num_groups: int) -> jax.Array:
    """``x`` (N, C, d1, ...) as (N, G, C/G, d1, ...): the statistics are over axes 2, ...
    (a split of the channel axis only, which keeps a batch-sharded ``x`` sharded: merging
    C/G with d1 is a reshape JAX's explicit sharding refuses)."""
    n, c = x.shape[:2]
    return x.reshape(n, num_groups, c // num_groups, *x.shape[2:])


def _per_channel(v: jax.Array, ndim: int) -> jax.Array:
    return v.reshape((1, -1) + (1,) * (ndim - 2))


@defop(GROUP_NORM)
def group_norm(
    x: ArrayLike, scale: ArrayLike, bias: ArrayLike, *, num_groups: int,
    epsilon: float = 1e-5, stash_type: int = 1,
) -> jax.Array:
    r"""Group normalization (ONNX GroupNormalization-21): the channels (axis 1) are split
    into ``num_groups`` groups of ``C / num_groups`` consecutive channels, and each sample's
    group is normalized over its channels and spatial axes.

    .. math:: y_{nc\ldots} = \frac{x_{nc\ldots} - \mu_{ng}}{\sqrt{\sigma^2_{ng} + \epsilon}}
              \,\gamma_c + \beta_c, \qquad g = \lfloor c / (C / G) \rfloor

    ``num_groups = 1`` is layer normalization over (C, d1, ...) with per-channel parameters;
    ``num_groups = C`` is instance normalization.  ``scale`` and ``bias`` have shape (C,)
    (GroupNormalization-21; version 18's per-group parameters are deprecated) and the dtype
    of ``x``.  Statistics as in :func:`layer_norm`: two-pass, float32 (float64 for float64).

    Args:
      x: float array ``(N, C, d1, ...)``.
      scale, bias: float arrays ``(C,)``.
      num_groups: the number of groups (required; must divide C).
      epsilon: added to the variance (>= 0).
      stash_type: 1.

    Returns:
      ``y``, the shape and dtype of ``x``.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> x = jnp.array([[[0.0, 2.0], [4.0, 6.0], [1.0, 1.0], [1.0, 1.0]]])  # (1, 4, 2)
      >>> jaxops.group_norm(x, jnp.ones(4), jnp.zeros(4), num_groups=2).round(4)
      Array([[[-1.3416, -0.4472],
              [ 0.4472,  1.3416],
              [ 0.    ,  0.    ],
              [ 0.    ,  0.    ]]], dtype=float32)

    References:
      Wu and He, "Group Normalization" (2018); ONNX GroupNormalization-21.
    """
    xg = _grouped(upcast(x), num_groups)
    mu, inv = _moments(xg, tuple(range(2, xg.ndim)), epsilon)
    xhat = ((xg - mu) * inv).reshape(x.shape)
    y = xhat * _per_channel(upcast(scale), x.ndim) + _per_channel(upcast(bias), x.ndim)
    return y.astype(x.dtype)


@group_norm.defgrad
def _group_norm_vjp(x, scale, bias, y, dy, *, num_groups, epsilon, stash_type):
    return group_norm_gradient(x, scale, dy, num_groups=num_groups, epsilon=epsilon,
                               stash_type=stash_type)


GROUP_NORM_GRADIENT = schema.register(OpSchema(
    name="GroupNormalizationGradient", function="group_norm_gradient", domain=JAXOPS_DOMAIN,
    doc="dX, dscale, dbias of GroupNormalization, with the group statistics recomputed "
        "from X.",
    inputs=(Parameter("X", doc="the forward input (N, C, d1, ...)"),
            Parameter("scale", doc="per-channel scale (C,)"),
            Parameter("dY", doc="gradient w.r.t. Y")),
    outputs=(Parameter("dX", doc="gradient w.r.t. X"),
             Parameter("dscale", doc="gradient w.r.t. scale (C,)"),
             Parameter("dbias", doc="gradient w.r.t. bias (C,)")),
    attributes=(_NUM_GROUPS, _EPSILON, _STASH_TYPE), elementwise=False,
    identical_type_and_shape=False, infer_fn=_gn_infer, cost_fn=_gn_cost(21),
))


@defop(GROUP_NORM_GRADIENT)
def group_norm_gradient(
    x: ArrayLike, scale: ArrayLike, dy: ArrayLike, *, num_groups: int,
    epsilon: float = 1e-5, stash_type: int = 1,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Gradient op of :func:`group_norm`: ``(dx, dscale, dbias)``, the layer-norm formula
    (module docstring) on each sample's group, ``g = dy * scale[c]``; ``dscale`` and
    ``dbias`` sum ``dy * xhat`` and ``dy`` over the batch and spatial axes.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> x = jnp.array([[[0.0, 1.0], [5.0, 2.0]]])  # (N, C, d) = (1, 2, 2), one group
      >>> dx, ds, db = jaxops.group_norm_gradient(
      ...     x, jnp.ones(2), jnp.array([[[1.0, 0.0], [0.0, 0.0]]]), num_groups=1)
      >>> print(dx.round(4))
      [[[ 0.2482 -0.21  ]
        [ 0.0954 -0.1336]]]
      >>> print(ds.round(4), db)
      [-1.069  0.   ] [1. 0.]
    """
    nd = x.ndim
    xg = _grouped(upcast(x), num_groups)
    axes = tuple(range(2, xg.ndim))
    mu, inv = _moments(xg, axes, epsilon)
    xhat = (xg - mu) * inv
    dyf = upcast(dy)
    g = _grouped(dyf * _per_channel(upcast(scale), nd), num_groups)
    dx = inv * (g - jnp.mean(g, axis=axes, keepdims=True)
                - xhat * jnp.mean(g * xhat, axis=axes, keepdims=True))
    reduce = (0, *range(2, nd))
    dscale = jnp.sum(dyf * xhat.reshape(x.shape), axis=reduce)
    dbias = jnp.sum(dyf, axis=reduce)
    return (dx.reshape(x.shape).astype(x.dtype), dscale.astype(scale.dtype),
            dbias.astype(scale.dtype))
