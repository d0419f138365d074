"""Flax Linen modules for the jaxops operators.

Each module calls the jaxops op, so its derivative is the op's registered gradient; use them
with ``Module.init``/``Module.apply`` under ``jax.jit``, ``jax.grad`` and ``jax.vmap``.
Stateless activations are modules here (Linen has them as plain functions, ``nn.relu`` ...)
so that they can sit in ``nn.Sequential`` and carry their attributes.

The activation modules are made from the registry: every op of README's table with one
array input and one output (``jaxops.relu`` ... ``jaxops.log_softmax``) becomes a module by
:func:`module_for`, named as PyTorch names its module (``ReLU``, ``LeakyReLU``, ``GELU``,
``LogSoftmax``; :data:`ACTIVATIONS` maps the names to the classes), so an op added to a
family module is a module here with nothing written.  Static type checkers do not see these
generated names; ``module_for(jaxops.relu, "ReLU")`` gives the same class explicitly.  Their
dataclass fields are the op's
attributes with the schema's defaults (checked when the module is built), ``__call__(x)``
calls the op, and the docstring is read from the schema.  ``module_for`` takes any op of one
array input and static attributes, yours too (an op made with ``jaxops.defop``)::

    Squareplus = jaxops.flax.linen.module_for(squareplus)    # Squareplus(b=4.0).apply({}, x)

:class:`PReLU` (a learned slope), :class:`BatchNorm` (parameters and running statistics)
and the per-sample normalizations :class:`LayerNorm`, :class:`RMSNorm` and :class:`GroupNorm`
(learned scale and bias, with Flax's names, initializers and defaults) are written out.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxops.flax import linen as jnn
  >>> jnn.ReluN(n=2.0).apply({}, jnp.array([-1.0, 1.0, 3.0]))
  Array([0., 1., 2.], dtype=float32)
  >>> jnn.LeakyReLU(alpha=0.5).apply({}, jnp.array([-2.0, 3.0]))
  Array([-1.,  3.], dtype=float32)

Differences from Flax's own layers, and why:

- :class:`PReLU` can learn one slope per channel (``num_features=C`` on feature ``axis``, or
  ``num_features=None`` to take C from the input), like PyTorch's
  ``nn.PReLU(num_parameters=C)`` and ONNX PRelu's broadcast slope; Flax's ``nn.PReLU`` learns
  one scalar.  The default ``num_features=1`` is that shared slope, with Flax's initial value
  0.01.  The parameter is ``params/slope`` (ONNX's name) of shape ``(num_features,)``.
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
  ``axis_name`` or ``mask``: the output has the input's dtype (jaxops's policy), and under
  SPMD ``jit`` XLA adds the cross-device reductions itself.  Variables have Flax's names:
  ``params/{scale,bias}`` and ``batch_stats/{mean,var}``.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.typing import ArrayLike

import jaxops as jo
from jaxops.flax import _common

__all__ = [
    "ACTIVATIONS", "BatchNorm", "Dropout", "GroupNorm", "LayerNorm", "PReLU", "RMSNorm",
    "module_for",
]  # + the activation modules


def module_for(op: jo.Op, name: str | None = None, *,
               see_also: str | None = None) -> type[nn.Module]:
    """A Linen module class for ``op``, an op of one array input and static attributes.

    The class is named ``name`` (default: the op_type); its dataclass fields are the op's
    attributes, with the schema's defaults, checked as the op does when the module is built;
    ``module.apply({}, x)`` is ``op(x, **attributes)``.  Its docstring is read from the
    schema, ``see_also`` added.

    Args:
      op: a jaxops op (``jaxops.relu_n``) or one of yours (``jaxops.defop``).
      name: the class name.
      see_also: a note for the docstring's "See also" (the Flax counterpart).

    Returns:
      A subclass of ``flax.linen.Module``.

    Raises:
      TypeError: ``op`` is not a jaxops op, or has more than one input.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> from jaxops.flax import linen as jnn
      >>> LogSoftmax = jnn.module_for(jaxops.log_softmax)
      >>> LogSoftmax(axis=0).apply({}, jnp.zeros((2,)))
      Array([-0.6931472, -0.6931472], dtype=float32)
    """
    act = _common.activation(op, "jaxops.flax.linen.module_for", "flax.linen.Module",
                             {*dir(nn.Module), "parent", "name"})  # Linen's dataclass fields
    name = name or op.schema.name
    fields = {}  # a required positional attribute is an annotation alone
    for p in act.parameters:
        kw_only = p.kind is inspect.Parameter.KEYWORD_ONLY
        if p.default is not inspect.Parameter.empty:
            fields[p.name] = dataclasses.field(default=p.default, kw_only=kw_only)
        elif kw_only:
            fields[p.name] = dataclasses.field(kw_only=True)

    def __post_init__(self) -> None:
        act.check({k: getattr(self, k) for k in act.names})
        nn.Module.__post_init__(self)

    def __call__(self, x: ArrayLike) -> jax.Array:
        return act(x, self)

    def body(ns: dict[str, Any]) -> None:
        ns["__annotations__"] = {p.name: p.annotation for p in act.parameters}
        ns.update(fields)
        ns.update({
            "__post_init__": __post_init__, "__call__": __call__, "__module__": __name__,
            "__qualname__": name,
            "__doc__": _common.activation_doc(act, "jaxops.flax.linen.module_for",
                                              "Attributes", see_also),
        })

    return types.new_class(name, (nn.Module,), exec_body=body)


# The activation modules: one per op of _common.activation_ops(), read from its schema.
def _activations() -> dict[str, type[nn.Module]]:
    modules = {}
    for op in _common.activation_ops():
        name = _common.module_name(op.schema.function)
        modules[name] = module_for(op, name, see_also=_common.flax_counterpart(
            op.schema.function, nn, "flax.linen"))
    return modules


ACTIVATIONS: dict[str, type[nn.Module]] = _activations()
globals().update(ACTIVATIONS)
__all__ += sorted(ACTIVATIONS)


class Dropout(nn.Module):
    r""":func:`jaxops.dropout` with Flax's conventions, as ``flax.linen.Dropout``.

    .. math:: y = \frac{m \odot x}{1 - r}, \qquad m_i \sim \mathrm{Bernoulli}(1 - r)

    The key is ``self.make_rng(rng_collection)`` (``apply(..., rngs={"dropout": key})``), or
    the call's ``rng``, and the op's mask is Flax's draw: the same ``rngs`` give this module
    and ``linen.Dropout`` the same masks.  ``deterministic=True`` (or rate 0) is the identity
    and draws no key; rate 1 gives zeros.  Flax's ``broadcast_dims`` is not offered.

    Attributes:
      rate: the probability of dropping an element, in [0, 1].
      deterministic: skip dropout; the call's ``deterministic`` is merged with it (one of the
        two must be given, as in Flax).
      rng_collection: the RNG collection to draw from ("dropout").

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxops.flax import linen as jnn
      >>> layer = jnn.Dropout(0.5, deterministic=False)
      >>> y = layer.apply({}, jnp.ones(6), rngs={"dropout": jax.random.key(0)})
      >>> set(y.tolist()) <= {0.0, 2.0}
      True

    References:
      Srivastava et al. (2014); ``flax.linen.Dropout``.
    """

    rate: float
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: ArrayLike, deterministic: bool | None = None,
                 rng: jax.Array | None = None) -> jax.Array:
        rate = _common.check_rate(self.rate, "flax.linen.Dropout")
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        return _common.dropout(
            x, lambda: self.make_rng(self.rng_collection) if rng is None else rng, rate,
            deterministic)


class PReLU(nn.Module):
    r""":func:`jaxops.prelu` with a learnable slope per channel.

    .. math:: y = \begin{cases} x & x \ge 0 \\ a_c x & x < 0 \end{cases}

    where ``c`` indexes feature ``axis``.  The slope is ``params/slope`` of shape
    ``(num_features,)`` in ``param_dtype``; it is cast to the input's dtype for the call (as
    Flax's ``nn.PReLU`` does), so the output has the input's dtype.

    Unlike Flax's ``nn.PReLU`` (one scalar ``negative_slope``), this is PyTorch's
    ``nn.PReLU(num_parameters=C)``: one slope per channel.  ``num_features=1`` shares one
    slope over every element, like Flax's.

    Attributes:
      num_features: the number of slopes: the size of feature ``axis``, 1 for one shared slope
        (the default), or None to take the size of ``axis`` from the input at ``init``.
      axis: the feature axis of the input (-1, Flax's channels-last convention; PyTorch and
        ONNX use 1).
      negative_slope_init: the slopes' initial value (0.01, as in Flax; PyTorch uses 0.25).
      param_dtype: the slope's dtype (float32).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxops.flax import linen as jnn
      >>> x = jnp.array([[-4.0, -4.0], [1.0, 2.0]])
      >>> layer = jnn.PReLU(num_features=None, negative_slope_init=0.25)
      >>> variables = layer.init(jax.random.key(0), x)
      >>> variables["params"]["slope"].shape
      (2,)
      >>> layer.apply(variables, x)
      Array([[-1., -1.],
             [ 1.,  2.]], dtype=float32)

    References:
      He et al., "Delving Deep into Rectifiers" (2015); ONNX PRelu-16.
    """

    num_features: int | None = 1
    axis: int = -1
    negative_slope_init: float = 0.01
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: ArrayLike) -> jax.Array:
        num = self.num_features
        if num is None:
            num = jnp.shape(x)[_common.feature_axis("PReLU", x, self.axis, min_ndim=1)]
        slope = self.param(
            "slope", lambda _key, n: jnp.full((n,), self.negative_slope_init, self.param_dtype),
            num,
        )
        return _common.prelu(x, slope, self.axis)


class BatchNorm(nn.Module):
    r""":func:`jaxops.batch_norm` as a layer with learnable scale and bias and running
    statistics, switched between training and inference as Flax's ``nn.BatchNorm`` is.

    .. math:: y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta

    In training (``use_running_average=False``; apply with ``mutable=["batch_stats"]``) ``mu``
    and ``sigma^2`` are the batch mean and population (biased) variance over every axis but
    ``axis``, and the running statistics become ``momentum * running + (1 - momentum) * batch``
    (not during ``init``, as in Flax).  In inference (``use_running_average=True``) the running
    statistics normalize and stay as they are.  Variables: ``batch_stats/mean`` and
    ``batch_stats/var`` in float32 (initially 0 and 1), ``params/scale`` (1) and
    ``params/bias`` (0) in ``param_dtype``, one per feature, the size taken from the input.
    The output has the input's dtype.

    Differences from ``nn.BatchNorm``: ``momentum`` defaults to 0.9 (ONNX, Caffe2; Flax 0.99);
    the batch variance is computed in two passes (Flax defaults to E[x^2] - E[x]^2); no
    ``dtype``, initializers, ``axis_name`` or ``mask``.

    Attributes:
      use_running_average: True for inference, False for training; set it here or in the call
        (one of the two, as ``nn.merge_param`` requires).
      axis: the feature axis of the input (-1, Flax's channels-last; ONNX and PyTorch use 1).
      momentum: the running statistics' decay (0.9).
      epsilon: added to the variance (1e-5).
      param_dtype: the dtype of ``scale`` and ``bias`` (float32).
      use_bias: learn ``bias``; without it the bias is 0.
      use_scale: learn ``scale``; without it the scale is 1.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxops.flax import linen as jnn
      >>> layer = jnn.BatchNorm()
      >>> x = jnp.array([[0.0, 10.0], [2.0, 30.0]])
      >>> variables = layer.init(jax.random.key(0), x, use_running_average=False)
      >>> y, updates = layer.apply(variables, x, use_running_average=False,
      ...                          mutable=["batch_stats"])
      >>> updates["batch_stats"]["mean"], updates["batch_stats"]["var"]
      (Array([0.1, 2. ], dtype=float32), Array([ 1. , 10.9], dtype=float32))
      >>> layer.apply({**variables, **updates}, x, use_running_average=True).shape
      (2, 2)

    References:
      Ioffe & Szegedy, "Batch Normalization" (2015); ONNX BatchNormalization-15.
    """

    use_running_average: bool | None = None
    axis: int = -1
    momentum: float = 0.9
    epsilon: float = 1e-5
    param_dtype: jnp.dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True

    @nn.compact
    def __call__(self, x: ArrayLike, use_running_average: bool | None = None) -> jax.Array:
        """Normalize ``x``; in training, also update ``batch_stats``."""
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        ax = _common.feature_axis("BatchNorm", x, self.axis, min_ndim=2)
        shape = (jnp.shape(x)[ax],)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, shape, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, shape, jnp.float32)
        scale = (self.param("scale", nn.initializers.ones, shape, self.param_dtype)
                 if self.use_scale else jnp.ones(shape, self.param_dtype))
        bias = (self.param("bias", nn.initializers.zeros, shape, self.param_dtype)
                if self.use_bias else jnp.zeros(shape, self.param_dtype))
        training = not use_running_average
        y, mean, var = _common.batch_norm(
            x, scale, bias, ra_mean.value, ra_var.value, axis=self.axis,
            epsilon=self.epsilon, momentum=self.momentum, training=training,
        )
        if training and not self.is_initializing():
            ra_mean.value = jax.lax.stop_gradient(mean)
            ra_var.value = jax.lax.stop_gradient(var)
        return y


def _feature_sizes(module: str, x: ArrayLike, feature_axes) -> tuple[int, ...]:
    """The sizes of ``feature_axes`` of ``x``: the parameters' shape, as Flax's."""
    _common.feature_shape(module, x, feature_axes)  # the range check
    axes = (feature_axes,) if isinstance(feature_axes, int) else tuple(feature_axes)
    return tuple(jnp.shape(x)[a] for a in axes)


class LayerNorm(nn.Module):
    r""":func:`jaxops.layer_norm` as a layer with learnable scale and bias, built like Flax's
    ``nn.LayerNorm``.

    .. math:: y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta

    with the mean and (population) variance over ``reduction_axes`` of each sample, which must
    be the trailing axes (the ONNX op normalizes over ``axis, ..., rank - 1``).  Variables
    ``params/scale`` and ``params/bias`` of the shape of ``feature_axes`` (as Flax's), in
    ``param_dtype``, cast to the input's dtype for the call: the output has the input's dtype.

    Differences from ``nn.LayerNorm``: the variance is computed in two passes in float32
    (Flax's default ``use_fast_variance=True`` uses E[x^2] - E[x]^2); no ``dtype``,
    ``axis_name``, ``axis_index_groups`` or ``force_float32_reductions`` (always float32).
    ``epsilon`` defaults to Flax's 1e-6 (the op's, ONNX's, is 1e-5).

    Attributes:
      epsilon: added to the variance (1e-6, as Flax).
      param_dtype: the parameters' dtype (float32).
      use_bias: learn ``bias``; without it there is none (0).
      use_scale: learn ``scale``; without it the scale is 1.
      bias_init, scale_init: Flax initializers (zeros, ones).
      reduction_axes: the normalized axes, trailing (-1).
      feature_axes: the axes the parameters lie along (-1).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxops.flax import linen as jnn
      >>> x = jnp.array([[1.0, 2.0, 3.0]])
      >>> variables = jnn.LayerNorm().init(jax.random.key(0), x)
      >>> jnn.LayerNorm().apply(variables, x).round(3)
      Array([[-1.225,  0.   ,  1.225]], dtype=float32)

    References:
      Ba, Kiros and Hinton, "Layer Normalization" (2016); ONNX LayerNormalization-17.
    """

    epsilon: float = 1e-6
    param_dtype: jnp.dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Any = nn.initializers.zeros
    scale_init: Any = nn.initializers.ones
    reduction_axes: int | tuple[int, ...] = -1
    feature_axes: int | tuple[int, ...] = -1

    @nn.compact
    def __call__(self, x: ArrayLike) -> jax.Array:
        shape = _feature_sizes("LayerNorm", x, self.feature_axes)
        scale = (self.param("scale", self.scale_init, shape, self.param_dtype)
                 if self.use_scale else None)
        bias = self.param("bias", self.bias_init, shape, self.param_dtype) if self.use_bias \
            else None
        return _common.layer_norm(x, scale, bias, reduction_axes=self.reduction_axes,
                                  feature_axes=self.feature_axes, epsilon=self.epsilon)


class RMSNorm(nn.Module):
    r""":func:`jaxops.rms_norm` as a layer with a learnable scale, built like Flax's
    ``nn.RMSNorm``.

    .. math:: y = \frac{x}{\sqrt{\overline{x^2} + \epsilon}}\,\gamma

    with the mean over ``reduction_axes`` (trailing) of each sample; ``params/scale`` of the
    shape of ``feature_axes``, cast to the input's dtype for the call.  Differences from
    ``nn.RMSNorm``: no ``dtype``, ``axis_name``, ``axis_index_groups``,
    ``use_fast_variance`` (a mean of squares has no fast variant) or
    ``force_float32_reductions``; ``epsilon`` 1e-6 as Flax.

    Attributes:
      epsilon: added to the mean square (1e-6, as Flax).
      param_dtype: the scale's dtype (float32).
      use_scale: learn ``scale``; without it the scale is 1.
      scale_init: a Flax initializer (ones).
      reduction_axes: the normalized axes, trailing (-1).
      feature_axes: the axes the scale lies along (-1).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxops.flax import linen as jnn
      >>> x = jnp.array([2.0, -2.0])
      >>> jnn.RMSNorm(epsilon=0.0).apply(jnn.RMSNorm().init(jax.random.key(0), x), x)
      Array([ 1., -1.], dtype=float32)

    References:
      Zhang and Sennrich, "Root Mean Square Layer Normalization" (2019); ONNX
      RMSNormalization-23.
    """

    epsilon: float = 1e-6
    param_dtype: jnp.dtype = jnp.float32
    use_scale: bool = True
    scale_init: Any = nn.initializers.ones
    reduction_axes: int | tuple[int, ...] = -1
    feature_axes: int | tuple[int, ...] = -1

    @nn.compact
    def __call__(self, x: ArrayLike) -> jax.Array:
        shape = _feature_sizes("RMSNorm", x, self.feature_axes)
        scale = (self.param("scale", self.scale_init, shape, self.param_dtype)
                 if self.use_scale else None)
        return _common.rms_norm(x, scale, reduction_axes=self.reduction_axes,
                                feature_axes=self.feature_axes, epsilon=self.epsilon)


class GroupNorm(nn.Module):
    r""":func:`jaxops.group_norm` as a layer with learnable per-channel scale and bias, built
    like Flax's ``nn.GroupNorm``: channels last, ``num_groups`` (32) or ``group_size``.

    .. math:: y = \frac{x - \mu_g}{\sqrt{\sigma_g^2 + \epsilon}}\,\gamma_c + \beta_c

    with the statistics of each sample's group of channels over every axis but the batch
    axis 0.  The ONNX op wants the channels on axis 1: the input's last axis is moved there
    and back.  Variables ``params/scale`` and ``params/bias`` of shape ``(C,)``.

    Differences from ``nn.GroupNorm``: the variance is computed in two passes (Flax's default
    ``use_fast_variance=True`` uses E[x^2] - E[x]^2); no ``reduction_axes`` (every non-batch
    axis, Flax's default), ``dtype``, ``axis_name``, ``axis_index_groups`` or
    ``force_float32_reductions``; ``epsilon`` 1e-6 as Flax (the op's is ONNX's 1e-5).

    Attributes:
      num_groups: the number of groups (32, as Flax), or None with ``group_size``.
      group_size: channels per group, with ``num_groups=None``.
      epsilon: added to the variance (1e-6, as Flax).
      param_dtype: the parameters' dtype (float32).
      use_bias, use_scale: learn ``bias`` / ``scale`` (else 0 / 1).
      bias_init, scale_init: Flax initializers (zeros, ones).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxops.flax import linen as jnn
      >>> x = jnp.array([[0.0, 2.0, 1.0, 1.0]])
      >>> layer = jnn.GroupNorm(num_groups=2)
      >>> layer.apply(layer.init(jax.random.key(0), x), x).round(3)
      Array([[-1.,  1.,  0.,  0.]], dtype=float32)

    References:
      Wu and He, "Group Normalization" (2018); ONNX GroupNormalization-21.
    """

    num_groups: int | None = 32
    group_size: int | None = None
    epsilon: float = 1e-6
    param_dtype: jnp.dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Any = nn.initializers.zeros
    scale_init: Any = nn.initializers.ones

    @nn.compact
    def __call__(self, x: ArrayLike) -> jax.Array:
        c = jnp.shape(x)[_common.feature_axis("GroupNorm", x, -1, min_ndim=2)]
        groups = _common.num_groups(c, self.num_groups, self.group_size)
        scale = (self.param("scale", self.scale_init, (c,), self.param_dtype)
                 if self.use_scale else None)
        bias = self.param("bias", self.bias_init, (c,), self.param_dtype) if self.use_bias \
            else None
        return _common.group_norm(x, scale, bias, groups=groups, epsilon=self.epsilon)
