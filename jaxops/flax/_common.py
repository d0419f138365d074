"""What the NNX and Linen modules share: the feature-axis plumbing between Flax's
channels-last convention and the channel layouts the ops expect.  Knows nothing of either
Flax API."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxops as jo


def feature_axis(module: str, x: jax.Array, axis: int, *, min_ndim: int) -> int:
    """``axis`` as a non-negative index into ``x``, or a ValueError that says what to pass."""
    ndim = np.ndim(x)
    if ndim < min_ndim:
        raise ValueError(
            f"jaxops.flax {module}: input of shape {np.shape(x)} has rank {ndim}; it needs rank "
            f">= {min_ndim} (a batch axis and a feature axis)."
        )
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"jaxops.flax {module}: axis={axis} is out of range for an input of rank {ndim}; "
            f"pass an axis in [{-ndim}, {ndim})."
        )
    return axis % ndim


def check_features(module: str, x: jax.Array, ax: int, num_features: int) -> None:
    if np.shape(x)[ax] != num_features:
        raise ValueError(
            f"jaxops.flax {module}: built for num_features={num_features}, got an input of "
            f"shape {np.shape(x)} with {np.shape(x)[ax]} features on axis {ax}."
        )


def _like_input(a: jax.Array, x: jax.Array) -> jax.Array:
    # Parameters are stored in param_dtype (float32) and meet the input in its dtype, as Flax's
    # own layers do; the ops refuse mixed dtypes rather than promote silently.  A non-float x
    # is left for the op to reject with its own message.
    dtype = jnp.result_type(x)
    return a.astype(dtype) if jnp.issubdtype(dtype, jnp.floating) else a


def prelu(x: jax.Array, slope: jax.Array, axis: int) -> jax.Array:
    """``jo.prelu`` with a ``(num_features,)`` slope laid along feature ``axis`` of ``x``."""
    if slope.shape == (1,):  # one shared slope: a scalar broadcasts to any input
        return jo.prelu(x, _like_input(slope.reshape(()), x))
    ax = feature_axis("PReLU", x, axis, min_ndim=1)
    check_features("PReLU", x, ax, slope.shape[0])
    # ONNX broadcasting is right-aligned: (C, 1, ..., 1) puts C on axis `ax`
    trailing = np.ndim(x) - 1 - ax
    return jo.prelu(x, _like_input(slope.reshape(slope.shape + (1,) * trailing), x))


def batch_norm(x, scale, bias, mean, var, *, axis, epsilon, momentum, training):
    """``jo.batch_norm`` (channels on axis 1, ONNX) for features on ``axis`` (Flax: -1)."""
    ax = feature_axis("BatchNorm", x, axis, min_ndim=2)
    check_features("BatchNorm", x, ax, mean.shape[0])
    y, new_mean, new_var = jo.batch_norm(
        jnp.moveaxis(x, ax, 1), scale, bias, mean, var,
        epsilon=epsilon, momentum=momentum, training=training,
    )
    return jnp.moveaxis(y, 1, ax), new_mean, new_var
