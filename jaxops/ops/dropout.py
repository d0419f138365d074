"""Dropout with the random key as an input, and its registered gradient op.

ONNX's Dropout-22 draws its mask from a ``seed`` attribute and takes ``ratio`` and
``training_mode`` as inputs; jaxops' takes a JAX PRNG key as an input and ``rate`` and
``training`` as static attributes, so it lives in the jaxops domain, as ``KeyedDropout``: an
op_type of its own, since the registry (and an ONNX reader) knows op_types by name alone and
``Dropout`` is ONNX's.  The mask is ``jax.random.bernoulli(key, 1 - rate, x.shape)``, the
draw Flax's ``nnx.Dropout`` and ``linen.Dropout`` make: the same key gives the same mask as
Flax's.

The gradient op regenerates the mask from the key instead of reading a stored one: reverse
mode keeps only the key (8 bytes) between the passes, not a byte per element, as
``jax.checkpoint`` would rematerialize it; under ``jit`` XLA computes the draw once when both
passes are in one program.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxops import schema
from jaxops._numerics import upcast
from jaxops._op import defop
from jaxops.schema import (
    FLOAT_TYPES,
    JAXOPS_DOMAIN,
    KEY_TYPES,
    Attribute,
    Cost,
    OpSchema,
    Parameter,
)

_TYPES = {"T": FLOAT_TYPES, "K": KEY_TYPES}


def _rate_ok(rate: float) -> str | None:
    return None if 0.0 <= rate <= 1.0 else (
        "must be in [0, 1] (the probability of dropping an element; rate=1 drops all).")


_RATE = Attribute("rate", "float", 0.5, check=_rate_ok,
                  doc="probability of zeroing an element, in [0, 1]")
_TRAINING = Attribute("training", "bool", True,
                      doc="apply the mask (False: the identity, as in inference)")


def _key_parameter() -> Parameter:
    return Parameter("key", "K", differentiable=False,
                     doc="PRNG key: jax.random.key(seed) or a raw uint32 jax.random.PRNGKey")


def _check_key(s: OpSchema, key) -> None:
    """A single key: a typed key of shape (), or a raw uint32 key of the default
    implementation's key shape (``(2,)`` for threefry), as jax.random.bernoulli takes."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"jaxops.{s.function}: input 'key' must be one key (shape ()), got "
                             f"a key array of shape {key.shape}; split it and pass one key, or "
                             "jax.vmap over the keys.")
        return
    raw = jax.eval_shape(jax.random.PRNGKey, 0).shape
    if key.shape != raw:
        raise ValueError(f"jaxops.{s.function}: input 'key' is a raw uint32 key of shape "
                         f"{key.shape}, but a raw key of the default PRNG has shape {raw} "
                         "(jax.random.PRNGKey(seed)); pass one key, or a typed "
                         "jax.random.key(seed).")


def _infer(s: OpSchema, in_avals, **attrs):
    x, key = in_avals
    _check_key(s, key)
    return (jax.ShapeDtypeStruct(x.shape, x.dtype),)


#: Integer and float operations per element of a training call, as XLA counts them: the
#: threefry-2x32 draw (20 rounds of add, rotate and xor per pair of 32-bit outputs), the
#: bits-to-uniform conversion, the compare, the scale and the select (measured: 53).
_FLOPS_PER_ELEMENT = 52


def _cost(in_avals, out_avals, *, rate, training):
    """The input and key read once, the output written once; per element (training) the
    draw and the masking (:data:`_FLOPS_PER_ELEMENT`), no transcendental, and the 32 random
    bits per element written and read once more (XLA does not fuse its RNG into the mask)."""
    x = in_avals[0]
    n = math.prod(x.shape)
    item = jnp.dtype(x.dtype).itemsize
    active = training and 0.0 < rate < 1.0
    bits = 4 * n if active else 0
    return Cost(flops=_FLOPS_PER_ELEMENT * n if active else 0, transcendentals=0,
                bytes_read=n * item + (8 if active else 0) + bits,
                bytes_written=n * item + bits)


def _mask_and_scale(key, shape, rate):
    """(mask, 1 / (1 - rate)): Flax's draw, and the scale of the kept elements (0 at
    rate 1, where nothing is kept: no inf that a transpose could turn into NaN)."""
    keep = 1.0 - rate
    return jax.random.bernoulli(key, keep, shape), (1.0 / keep if keep > 0 else 0.0)


DROPOUT = schema.register(OpSchema(
    name="KeyedDropout", function="dropout", domain=JAXOPS_DOMAIN,
    doc="y = x * mask / (1 - rate), mask = bernoulli(key, 1 - rate, x.shape) when training; "
        "y = x otherwise.",
    inputs=(Parameter("X", doc="the input"), _key_parameter()),
    outputs=(Parameter("Y", doc="the input with dropped elements zeroed, the kept scaled"),),
    attributes=(_RATE, _TRAINING), type_constraints=_TYPES, elementwise=False,
    identical_type_and_shape=False, infer_fn=_infer, cost_fn=_cost,
    gradient="KeyedDropoutGradient",
    formula="x·m/(1 − r), m ~ Bernoulli(1 − r) from the key",
    convention="linear in x: dX = dY·m/(1 − r) (0 at r = 1)",
))


@defop(DROPOUT)
def dropout(x: ArrayLike, key: ArrayLike, *, rate: float = 0.5,
            training: bool = True) -> jax.Array:
    r"""Dropout: zero each element with probability ``rate``, scale the others by
    ``1 / (1 - rate)``.

    .. math:: y = \frac{m \odot x}{1 - r}, \qquad
              m_i \sim \mathrm{Bernoulli}(1 - r) \text{ drawn from the key}, \qquad
              \frac{\partial y}{\partial x} = \frac{m}{1 - r}

    The mask is ``jax.random.bernoulli(key, 1 - rate, x.shape)``, Flax's draw: the same key
    gives the same mask as ``flax.nnx.Dropout`` / ``flax.linen.Dropout``, and a call with the
    same key the same mask again.  ``training=False`` or ``rate=0`` is the identity (no key is
    drawn); ``rate=1`` gives zeros with a zero gradient (no ``1/0``).  The key may be a typed
    key (``jax.random.key``) or a raw uint32 key (``jax.random.PRNGKey``); it is never
    differentiated.  The op is linear in ``x``, so its derivative needs no convention; its
    gradient op :func:`dropout_gradient` regenerates the mask from the key.  Half precision
    is divided in float32 and rounded once (Flax divides in the input dtype, by
    ``1 - rate`` rounded to it: its bfloat16 values may differ by an ulp).

    ONNX: ``training=False`` (or ``rate=0``) exports as ``Identity``.  A training call is
    refused: JAX's threefry mask has no ONNX translation, and ONNX's Dropout would draw a
    different mask from its own generator (docs/onnx.md).

    Args:
      x: float array.
      key: one PRNG key, typed (shape ()) or raw (uint32 ``(2,)``).
      rate: the probability of dropping an element (static), in ``[0, 1]``.
      training: apply the mask (static); False is the identity.

    Returns:
      An array of ``x``'s shape and dtype.

    Example:
      >>> import jax, jax.numpy as jnp, jaxops
      >>> y = jaxops.dropout(jnp.ones(8), jax.random.key(0), rate=0.5)
      >>> set(y.tolist()) <= {0.0, 2.0}
      True
      >>> jaxops.dropout(jnp.ones(3), jax.random.key(0), training=False)
      Array([1., 1., 1.], dtype=float32)

    References:
      Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
      Overfitting" (2014); ONNX Dropout-22 (whose mask comes from a seed attribute);
      ``flax.nnx.Dropout``.
    """
    if not training or rate == 0.0:
        return x
    if rate == 1.0:
        return jnp.zeros_like(x)
    mask, scale = _mask_and_scale(key, x.shape, rate)
    xf = upcast(x)
    return jnp.where(mask, xf * scale, jnp.zeros_like(xf)).astype(x.dtype)


@dropout.defgrad
def _dropout_vjp(x, key, y, dy, **attrs):
    return dropout_gradient(key, dy, **attrs)


DROPOUT_GRADIENT = schema.register(OpSchema(
    name="KeyedDropoutGradient", function="dropout_gradient", domain=JAXOPS_DOMAIN,
    doc="dX = dY * mask / (1 - rate), the mask regenerated from the key (dY when not "
        "training).",
    inputs=(_key_parameter(), Parameter("dY", doc="gradient w.r.t. Y")),
    outputs=(Parameter("dX", doc="gradient w.r.t. X"),),
    attributes=(_RATE, _TRAINING), type_constraints=_TYPES, elementwise=False,
    identical_type_and_shape=False,
    infer_fn=lambda s, in_avals, **attrs: _infer(s, in_avals[::-1], **attrs),
    cost_fn=lambda in_avals, out_avals, **attrs: _cost(in_avals[::-1], out_avals, **attrs),
))


@defop(DROPOUT_GRADIENT)
def dropout_gradient(key: ArrayLike, dy: ArrayLike, *, rate: float = 0.5,
                     training: bool = True) -> jax.Array:
    r"""Gradient op of :func:`dropout`: ``dY * mask / (1 - rate)`` with the mask drawn again
    from ``key`` (the forward's draw), ``dY`` when not training or at rate 0, zeros at rate 1.
    Linear in ``dY``; the key is not differentiable.

    Example:
      >>> import jax, jax.numpy as jnp, jaxops
      >>> key = jax.random.key(0)
      >>> x = jnp.arange(1.0, 9.0)
      >>> g = jaxops.dropout_gradient(key, jnp.ones(8), rate=0.25)
      >>> bool(jnp.all(g * x == jaxops.dropout(x, key, rate=0.25)))
      True
    """
    if not training or rate == 0.0:
        return dy
    if rate == 1.0:
        return jnp.zeros_like(dy)
    mask, scale = _mask_and_scale(key, dy.shape, rate)
    g = upcast(dy)
    return jnp.where(mask, g * scale, jnp.zeros_like(g)).astype(dy.dtype)
