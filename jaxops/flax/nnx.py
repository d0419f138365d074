"""Flax NNX modules for the jaxops operators.

Each module calls the jaxops op, so its derivative is the op's registered gradient and it
works under ``nnx.jit``, ``nnx.grad``, ``nnx.vmap`` and the JAX transforms.  Stateless
activations are modules here (Flax NNX has them as plain functions, ``nnx.relu`` ...) so that
they can sit in ``nnx.Sequential`` and carry their attributes (``ReluN(n=6.0)``).

The activation modules are made from the registry: every op of README's table with one
array input and one output (``jaxops.relu`` ... ``jaxops.log_softmax``) becomes a module by
:func:`module_for`, named as PyTorch names its module (``ReLU``, ``LeakyReLU``, ``GELU``,
``LogSoftmax``; :data:`ACTIVATIONS` maps the names to the classes), so an op added to a
family module is a module here with nothing written.  Static type checkers do not see these
generated names; ``module_for(jaxops.relu, "ReLU")`` gives the same class explicitly.  The
constructor takes the op's attributes
with the schema's defaults (and checks them), ``__call__(x)`` calls the op, and the
docstring is read from the schema.  ``module_for`` takes any op of one array input and static
attributes, yours too (an op made with ``jaxops.defop``)::

    Squareplus = jaxops.flax.nnx.module_for(squareplus)      # Squareplus(b=4.0)(x)

:class:`PReLU` (a learned slope), :class:`BatchNorm` (parameters and running statistics)
and the per-sample normalizations :class:`LayerNorm`, :class:`RMSNorm` and :class:`GroupNorm`
(learned scale and bias, with Flax's names, initializers and defaults) are written out.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxops.flax import nnx as jnnx
  >>> jnnx.ReluN(n=2.0)(jnp.array([-1.0, 1.0, 3.0]))
  Array([0., 1., 2.], dtype=float32)
  >>> jnnx.LeakyReLU(alpha=0.5)(jnp.array([-2.0, 3.0]))
  Array([-1.,  3.], dtype=float32)
  >>> jnnx.Softmax()(jnp.array([[0.0, 0.0], [0.0, -jnp.inf]]))
  Array([[0.5, 0.5],
         [1. , 0. ]], dtype=float32)

Differences from Flax's own layers, and why:

- :class:`PReLU` learns one slope per channel (``num_features``, on feature ``axis``), like
  PyTorch's ``nn.PReLU(num_parameters=C)`` and ONNX PRelu's broadcast slope; Flax's
  ``nnx.PReLU`` learns one scalar.  ``PReLU()`` (``num_features=1``) is the shared-slope form,
  with Flax's initial value 0.01.  The parameter is named ``slope`` (ONNX) and has shape
  ``(num_features,)``.
- :class:`LayerNorm`, :class:`RMSNorm` and :class:`GroupNorm` keep Flax's ``epsilon=1e-6``
  (the ops default to ONNX's 1e-5) and parameter names, compute the variance in two passes
  in float32 (Flax's default ``use_fast_variance=True`` uses E[x^2] - E[x]^2), return the
  input's dtype (Flax promotes to the parameters'), and have no ``dtype``, ``axis_name`` or
  ``axis_index_groups``.  ``reduction_axes`` must be trailing axes (the ONNX ops normalize
  over ``axis, ..., rank - 1``); :class:`GroupNorm` normalizes over every non-batch axis
  (Flax's default) and moves the channels-last input's channels to axis 1 and back.
- :class:`BatchNorm` defaults to ``momentum=0.9`` (ONNX BatchNormalization and Caffe2's
  SpatialBN; Flax defaults to 0.99) and computes the batch variance in two passes
  (Flax's default ``use_fast_variance=True`` uses E[x^2] - E[x]^2).  It has no ``dtype``,
  ``promote_dtype``, ``axis_name`` or ``mask``: the output has the input's dtype (jaxops's
  policy), and under SPMD ``jit`` XLA adds the cross-device reductions itself.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

import jaxops as jo
from jaxops.flax import _common

__all__ = [
    "ACTIVATIONS", "BatchNorm", "Dropout", "GroupNorm", "LayerNorm", "PReLU", "RMSNorm",
    "module_for",
]  # + the activation modules


def module_for(op: jo.Op, name: str | None = None, *,
               see_also: str | None = None) -> type[nnx.Module]:
    """An NNX module class for ``op``, an op of one array input and static attributes.

    The class is named ``name`` (default: the op_type); its constructor takes the op's
    attributes, with the schema's defaults, and checks them as the op does; calling an
    instance on ``x`` is ``op(x, **attributes)``.  Its docstring is read from the schema,
    ``see_also`` added.

    Args:
      op: a jaxops op (``jaxops.relu_n``) or one of yours (``jaxops.defop``).
      name: the class name.
      see_also: a note for the docstring's "See also" (the Flax counterpart).

    Returns:
      A subclass of ``flax.nnx.Module``.

    Raises:
      TypeError: ``op`` is not a jaxops op, or has more than one input.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> from jaxops.flax import nnx as jnnx
      >>> LogSoftmax = jnnx.module_for(jaxops.log_softmax)
      >>> LogSoftmax(axis=0)(jnp.zeros((2,)))
      Array([-0.6931472, -0.6931472], dtype=float32)
    """
    act = _common.activation(op, "jaxops.flax.nnx.module_for", "flax.nnx.Module",
                             dir(nnx.Module))
    name = name or op.schema.name
    signature = inspect.Signature(act.parameters)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"jaxops.flax.nnx.{name}{signature}: {e}") from None
        bound.apply_defaults()
        act.check(bound.arguments)
        for k, v in bound.arguments.items():
            setattr(self, k, v)

    def __call__(self, x: ArrayLike) -> jax.Array:
        return act(x, self)

    return type(name, (nnx.Module,), {
        "__init__": __init__, "__call__": __call__, "__module__": __name__,
        "__qualname__": name, "__signature__": signature,  # what help() and IDEs show
        "__doc__": _common.activation_doc(act, "jaxops.flax.nnx.module_for", "Args", see_also),
    })


# The activation modules: one per op of _common.activation_ops(), read from its schema.
def _activations() -> dict[str, type[nnx.Module]]:
    modules = {}
    for op in _common.activation_ops():
        name = _common.module_name(op.schema.function)
        modules[name] = module_for(op, name, see_also=_common.flax_counterpart(
            op.schema.function, nnx, "flax.nnx"))
    return modules


ACTIVATIONS: dict[str, type[nnx.Module]] = _activations()
globals().update(ACTIVATIONS)
__all__ += sorted(ACTIVATIONS)


class Dropout(nnx.Module):
    r""":func:`jaxops.dropout` with Flax's RNG stream conventions, as ``flax.nnx.Dropout``.

    .. math:: y = \frac{m \odot x}{1 - r}, \qquad m_i \sim \mathrm{Bernoulli}(1 - r)

    The key comes from the ``rng_collection`` stream (``nnx.Rngs(dropout=...)``) forked at
    construction, or from ``rngs=`` at the call (an ``nnx.Rngs``, an ``RngStream`` or a key),
    exactly as Flax's module draws it, and the op's mask is Flax's draw: with the same
    ``Rngs`` this module and ``nnx.Dropout`` give the same masks, call after call.
    ``deterministic=True`` (or ``model.eval()``, or rate 0) is the identity and draws no key;
    rate 1 gives zeros.  Flax's ``broadcast_dims`` (one mask shared along some axes) is not
    offered.

    Args:
      rate: the probability of dropping an element, in [0, 1].
      deterministic: skip dropout (False: apply it); the call's ``deterministic`` overrides.
      rng_collection: the RNG stream to draw from ("dropout").
      rngs: an ``nnx.Rngs`` or ``RngStream`` (or None: pass ``rngs=`` at the call).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxops.flax import nnx as jnnx
      >>> layer = jnnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
      >>> set(layer(jnp.ones(6)).tolist()) <= {0.0, 2.0}
      True
      >>> layer(jnp.ones(2), deterministic=True)
      Array([1., 1.], dtype=float32)

    References:
      Srivastava et al. (2014); ``flax.nnx.Dropout``.
    """

    def __init__(self, rate: float, *, deterministic: bool = False,
                 rng_collection: str = "dropout",
                 rngs: nnx.Rngs | nnx.RngStream | None = None):
        self.rate = _common.check_rate(rate, "flax.nnx.Dropout")
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        if isinstance(rngs, nnx.Rngs):
            self.rngs = rngs[rng_collection].fork()
        elif isinstance(rngs, nnx.RngStream):
            self.rngs = rngs.fork()
        elif rngs is None:
            self.rngs = nnx.data(None)
        else:
            raise TypeError(f"jaxops.flax.nnx.Dropout: rngs must be an nnx.Rngs, an "
                            f"nnx.RngStream or None, got {type(rngs).__name__}.")

    def __call__(self, x: ArrayLike, *, deterministic: bool | None = None,
                 rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None) -> jax.Array:
        deterministic = self.deterministic if deterministic is None else deterministic

        def draw_key():
            source = self.rngs if rngs is None else rngs
            if isinstance(source, nnx.Rngs):
                return source[self.rng_collection]()
            if isinstance(source, nnx.RngStream):
                return source()
            if isinstance(source, jax.Array):
                return source
            raise TypeError("jaxops.flax.nnx.Dropout: deterministic is False, but no rngs "
                            "were given, to the constructor or the call (pass "
                            "rngs=nnx.Rngs(dropout=seed)), or rngs is not an nnx.Rngs, "
                            f"RngStream or key (got {type(source).__name__}).")

        return _common.dropout(x, draw_key, self.rate, deterministic)


class PReLU(nnx.Module):
    r""":func:`jaxops.prelu` with a learnable slope per channel.

    .. math:: y = \begin{cases} x & x \ge 0 \\ a_c x & x < 0 \end{cases}

    where ``c`` indexes feature ``axis``.  The slope is an ``nnx.Param`` named ``slope`` of
    shape ``(num_features,)`` in ``param_dtype``; it is cast to the input's dtype for the call
    (as Flax's ``nnx.PReLU`` does), so the output has the input's dtype.

    Unlike Flax's ``nnx.PReLU`` (one scalar ``negative_slope``), this is PyTorch's
    ``nn.PReLU(num_parameters=C)``: one slope per channel.  ``num_features=1`` shares one
    slope over every element, like Flax's.

    Args:
      num_features: the number of slopes: the size of feature ``axis``, or 1 for one shared
        slope.
      axis: the feature axis of the input (-1, Flax's channels-last convention; PyTorch and
        ONNX use 1).
      negative_slope_init: the slopes' initial value (0.01, as in Flax; PyTorch uses 0.25).
      param_dtype: the slope's dtype (float32).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxops.flax import nnx as jnnx
      >>> layer = jnnx.PReLU(2, negative_slope_init=0.25)
      >>> layer.slope.shape
      (2,)
      >>> layer(jnp.array([[-4.0, -4.0], [1.0, 2.0]]))
      Array([[-1., -1.],
             [ 1.,  2.]], dtype=float32)

    References:
      He et al., "Delving Deep into Rectifiers" (2015); ONNX PRelu-16.
    """

    def __init__(
        self,
        num_features: int = 1,
        *,
        axis: int = -1,
        negative_slope_init: float = 0.01,
        param_dtype: jnp.dtype = jnp.float32,
    ):
        self.slope = nnx.Param(jnp.full((num_features,), negative_slope_init, param_dtype))
        self.num_features = num_features
        self.axis = axis

    def __call__(self, x: ArrayLike) -> jax.Array:
        return _common.prelu(x, self.slope[...], self.axis)


class BatchNorm(nnx.Module):
    r""":func:`jaxops.batch_norm` as a layer with learnable scale and bias and running
    statistics, switched between training and inference as Flax's ``nnx.BatchNorm`` is.

    .. math:: y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta

    In training (``use_running_average=False``, set by ``model.train()``) ``mu`` and
    ``sigma^2`` are the batch mean and population (biased) variance over every axis but
    ``axis``, and the running statistics become ``momentum * running + (1 - momentum) * batch``.
    In inference (``use_running_average=True``, set by ``model.eval()``) the running statistics
    normalize and stay as they are.  The running ``mean`` and ``var`` are ``nnx.BatchStat``
    variables in float32 (initially 0 and 1); ``scale`` (1) and ``bias`` (0) are ``nnx.Param``
    in ``param_dtype``.  The output has the input's dtype.

    Differences from ``nnx.BatchNorm``: ``momentum`` defaults to 0.9 (ONNX, Caffe2; Flax 0.99);
    the batch variance is computed in two passes (Flax defaults to E[x^2] - E[x]^2); no
    ``dtype``, ``promote_dtype``, initializers, ``axis_name`` or ``mask``.  ``rngs`` is
    accepted so that the two construct alike, and unused: the initial values are constants.

    Args:
      num_features: the size of feature ``axis``.
      use_running_average: True for inference, False for training, None to require it at
        call time; ``__call__``'s argument takes precedence.
      axis: the feature axis of the input (-1, Flax's channels-last; ONNX and PyTorch use 1).
      momentum: the running statistics' decay (0.9).
      epsilon: added to the variance (1e-5).
      param_dtype: the dtype of ``scale`` and ``bias`` (float32).
      use_bias: learn ``bias``; without it the bias is 0.
      use_scale: learn ``scale``; without it the scale is 1.
      rngs: unused; accepted for ``nnx.BatchNorm``'s signature.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxops.flax import nnx as jnnx
      >>> layer = jnnx.BatchNorm(2)
      >>> x = jnp.array([[0.0, 10.0], [2.0, 30.0]])
      >>> layer(x).round(4)             # training: batch statistics
      Array([[-1., -1.],
             [ 1.,  1.]], dtype=float32)
      >>> layer.mean[...], layer.var[...]
      (Array([0.1, 2. ], dtype=float32), Array([ 1. , 10.9], dtype=float32))
      >>> layer.eval()
      >>> layer(x).shape                # inference: running statistics, left unchanged
      (2, 2)

    References:
      Ioffe & Szegedy, "Batch Normalization" (2015); ONNX BatchNormalization-15.
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool | None = False,
        axis: int = -1,
        momentum: float = 0.9,
        epsilon: float = 1e-5,
        param_dtype: jnp.dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        rngs: nnx.Rngs | None = None,
    ):
        shape = (num_features,)
        self.mean = nnx.BatchStat(jnp.zeros(shape, jnp.float32))
        self.var = nnx.BatchStat(jnp.ones(shape, jnp.float32))
        self.scale = nnx.Param(jnp.ones(shape, param_dtype)) if use_scale else nnx.data(None)
        self.bias = nnx.Param(jnp.zeros(shape, param_dtype)) if use_bias else nnx.data(None)
        self.num_features = num_features
        self.use_running_average = use_running_average
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale

    def __call__(self, x: ArrayLike, use_running_average: bool | None = None) -> jax.Array:
        """Normalize ``x``; in training, also update the running statistics."""
        if use_running_average is None:
            use_running_average = self.use_running_average
        if use_running_average is None:
            raise ValueError(
                "jaxops.flax BatchNorm: use_running_average is None; pass it to the constructor "
                "or the call, or set it with model.train() / model.eval()."
            )
        shape = (self.num_features,)
        scale = self.scale[...] if self.scale is not None else jnp.ones(shape, self.param_dtype)
        bias = self.bias[...] if self.bias is not None else jnp.zeros(shape, self.param_dtype)
        training = not use_running_average
        y, mean, var = _common.batch_norm(
            x, scale, bias, self.mean[...], self.var[...], axis=self.axis,
            epsilon=self.epsilon, momentum=self.momentum, training=training,
        )
        if training:
            # statistics are state, not a function of the parameters being differentiated
            self.mean[...] = jax.lax.stop_gradient(mean)
            self.var[...] = jax.lax.stop_gradient(var)
        return y

    def set_view(self, use_running_average: bool | None = None):
        """Used by ``nnx.view``, as for ``nnx.BatchNorm``."""
        if use_running_average is not None:
            self.use_running_average = use_running_average


def _initial(init, rngs: nnx.Rngs | None, shape, dtype, default) -> jax.Array:
    """A parameter's initial value; the default initializers (ones, zeros) need no key."""
    if rngs is None:
        if init is not default:
            raise ValueError("jaxops.flax.nnx: a custom initializer needs a key: pass rngs=.")
        return init(jax.random.key(0), shape, dtype)
    return init(rngs.params(), shape, dtype)


class LayerNorm(nnx.Module):
    r""":func:`jaxops.layer_norm` as a layer with learnable scale and bias, built like Flax's
    ``nnx.LayerNorm``.

    .. math:: y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta

    with the mean and (population) variance over ``reduction_axes`` of each sample, which must
    be the trailing axes (the ONNX op normalizes over ``axis, ..., rank - 1``).  ``scale``
    and ``bias`` are ``nnx.Param`` of shape ``(num_features,)`` in ``param_dtype``, laid
    along ``feature_axes`` and cast to the input's dtype for the call, so the output has the
    input's dtype (Flax promotes it to the parameters' dtype).

    Differences from ``nnx.LayerNorm``: the variance is computed in two passes in float32
    (Flax's default ``use_fast_variance=True`` uses E[x^2] - E[x]^2); no ``dtype``,
    ``promote_dtype``, ``axis_name`` or metadata arguments; ``rngs`` may be omitted for the
    default initializers.  ``epsilon`` defaults to Flax's 1e-6 (the op's, ONNX's, is 1e-5),
    so that a model moved from Flax computes the same numbers.

    Args:
      num_features: the number of features (the product of the ``feature_axes`` sizes).
      epsilon: added to the variance (1e-6, as Flax).
      param_dtype: the parameters' dtype (float32).
      use_bias: learn ``bias``; without it there is none (0).
      use_scale: learn ``scale``; without it the scale is 1.
      bias_init, scale_init: Flax initializers (zeros, ones).
      reduction_axes: the normalized axes, trailing (-1).
      feature_axes: the axes the parameters lie along (-1).
      rngs: the key for the initializers (optional with the default ones).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxops.flax import nnx as jnnx
      >>> layer = jnnx.LayerNorm(3)
      >>> layer(jnp.array([[1.0, 2.0, 3.0]])).round(3)
      Array([[-1.225,  0.   ,  1.225]], dtype=float32)

    References:
      Ba, Kiros and Hinton, "Layer Normalization" (2016); ONNX LayerNormalization-17.
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        param_dtype: jnp.dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Any = nnx.initializers.zeros,
        scale_init: Any = nnx.initializers.ones,
        reduction_axes: int | tuple[int, ...] = -1,
        feature_axes: int | tuple[int, ...] = -1,
        rngs: nnx.Rngs | None = None,
    ):
        shape = (num_features,)
        self.scale = (nnx.Param(_initial(scale_init, rngs, shape, param_dtype,
                                         nnx.initializers.ones))
                      if use_scale else nnx.data(None))
        self.bias = (nnx.Param(_initial(bias_init, rngs, shape, param_dtype,
                                        nnx.initializers.zeros))
                     if use_bias else nnx.data(None))
        self.num_features = num_features
        self.epsilon = epsilon
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.reduction_axes = reduction_axes
        self.feature_axes = feature_axes

    def __call__(self, x: ArrayLike) -> jax.Array:
        return _common.layer_norm(
            x, None if self.scale is None else self.scale[...],
            None if self.bias is None else self.bias[...], reduction_axes=self.reduction_axes,
            feature_axes=self.feature_axes, epsilon=self.epsilon)


class RMSNorm(nnx.Module):
    r""":func:`jaxops.rms_norm` as a layer with a learnable scale, built like Flax's
    ``nnx.RMSNorm``.

    .. math:: y = \frac{x}{\sqrt{\overline{x^2} + \epsilon}}\,\gamma

    with the mean over ``reduction_axes`` (trailing) of each sample; ``scale`` is an
    ``nnx.Param`` of shape ``(num_features,)`` along ``feature_axes``, cast to the input's
    dtype for the call.  Differences from ``nnx.RMSNorm``: no ``dtype``, ``promote_dtype``,
    ``axis_name``, ``use_fast_variance`` (a mean of squares has no fast variant) or metadata
    arguments; ``rngs`` may be omitted for the default initializer; ``epsilon`` 1e-6 as Flax.

    Args:
      num_features: the number of features.
      epsilon: added to the mean square (1e-6, as Flax).
      param_dtype: the scale's dtype (float32).
      use_scale: learn ``scale``; without it the scale is 1.
      scale_init: a Flax initializer (ones).
      reduction_axes: the normalized axes, trailing (-1).
      feature_axes: the axes the scale lies along (-1).
      rngs: the key for the initializer (optional with the default).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxops.flax import nnx as jnnx
      >>> jnnx.RMSNorm(2, epsilon=0.0)(jnp.array([2.0, -2.0]))
      Array([ 1., -1.], dtype=float32)

    References:
      Zhang and Sennrich, "Root Mean Square Layer Normalization" (2019); ONNX
      RMSNormalization-23.
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        param_dtype: jnp.dtype = jnp.float32,
        use_scale: bool = True,
        scale_init: Any = nnx.initializers.ones,
        reduction_axes: int | tuple[int, ...] = -1,
        feature_axes: int | tuple[int, ...] = -1,
        rngs: nnx.Rngs | None = None,
    ):
        self.scale = (nnx.Param(_initial(scale_init, rngs, (num_features,), param_dtype,
                                         nnx.initializers.ones))
                      if use_scale else nnx.data(None))
        self.num_features = num_features
        self.epsilon = epsilon
        self.param_dtype = param_dtype
        self.use_scale = use_scale
        self.reduction_axes = reduction_axes
        self.feature_axes = feature_axes

    def __call__(self, x: ArrayLike) -> jax.Array:
        return _common.rms_norm(
            x, None if self.scale is None else self.scale[...],
            reduction_axes=self.reduction_axes, feature_axes=self.feature_axes,
            epsilon=self.epsilon)


class GroupNorm(nnx.Module):
    r""":func:`jaxops.group_norm` as a layer with learnable per-channel scale and bias, built
    like Flax's ``nnx.GroupNorm``: channels last, ``num_groups`` (32) or ``group_size``.

    .. math:: y = \frac{x - \mu_g}{\sqrt{\sigma_g^2 + \epsilon}}\,\gamma_c + \beta_c

    with the statistics of each sample's group of channels over every axis but the batch
    axis 0.  The ONNX op wants the channels on axis 1: the input's last axis is moved there
    and back.  ``scale`` and ``bias`` are ``nnx.Param`` of shape ``(num_features,)``.

    Differences from ``nnx.GroupNorm``: the variance is computed in two passes (Flax's
    default ``use_fast_variance=True`` uses E[x^2] - E[x]^2); no ``reduction_axes`` (every
    non-batch axis, Flax's default), ``dtype``, ``promote_dtype``, ``axis_name`` or
    metadata arguments; ``rngs`` may be omitted for the default initializers; ``epsilon``
    1e-6 as Flax (the op's is ONNX's 1e-5).

    Args:
      num_features: the number of channels (the input's last axis).
      num_groups: the number of groups (32, as Flax), or None with ``group_size``.
      group_size: channels per group, with ``num_groups=None``.
      epsilon: added to the variance (1e-6, as Flax).
      param_dtype: the parameters' dtype (float32).
      use_bias, use_scale: learn ``bias`` / ``scale`` (else 0 / 1).
      bias_init, scale_init: Flax initializers (zeros, ones).
      rngs: the key for the initializers (optional with the default ones).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxops.flax import nnx as jnnx
      >>> layer = jnnx.GroupNorm(4, num_groups=2)
      >>> layer(jnp.array([[0.0, 2.0, 1.0, 1.0]])).round(3)
      Array([[-1.,  1.,  0.,  0.]], dtype=float32)

    References:
      Wu and He, "Group Normalization" (2018); ONNX GroupNormalization-21.
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int | None = 32,
        group_size: int | None = None,
        *,
        epsilon: float = 1e-6,
        param_dtype: jnp.dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Any = nnx.initializers.zeros,
        scale_init: Any = nnx.initializers.ones,
        rngs: nnx.Rngs | None = None,
    ):
        self.groups = _common.num_groups(num_features, num_groups, group_size)
        shape = (num_features,)
        self.scale = (nnx.Param(_initial(scale_init, rngs, shape, param_dtype,
                                         nnx.initializers.ones))
                      if use_scale else nnx.data(None))
        self.bias = (nnx.Param(_initial(bias_init, rngs, shape, param_dtype,
                                        nnx.initializers.zeros))
                     if use_bias else nnx.data(None))
        self.num_features = num_features
        self.num_groups = num_groups
        self.group_size = group_size
        self.epsilon = epsilon
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale

    def __call__(self, x: ArrayLike) -> jax.Array:
        return _common.group_norm(
            x, None if self.scale is None else self.scale[...],
            None if self.bias is None else self.bias[...], groups=self.groups,
            epsilon=self.epsilon)
