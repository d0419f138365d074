"""What the NNX and Linen modules share: what an activation module is made of (read from
the op's schema), and the feature-axis plumbing between Flax's channels-last convention and
the channel layouts the ops expect.  Knows nothing of either Flax API."""

from __future__ import annotations

import dataclasses
import inspect
import math
import textwrap
from collections.abc import Collection, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxops as jo
from jaxops.schema import JAXOPS_DOMAIN, Attribute

_PYTHON_TYPES = {"float": float, "int": int, "bool": bool, "string": str}

#: Words of a function name as PyTorch writes them in its module names (``nn.GELU``).
_WORDS = {"relu": "ReLU", "gelu": "GELU", "silu": "SiLU", "elu": "ELU", "selu": "SELU",
          "celu": "CELU", "glu": "GLU"}
#: Module names that predate the rule, kept so that users' code keeps working.
_NAMES = {"relu_n": "ReluN"}
#: Flax's counterpart where its name is not the op's function name, or a note is due.
_FLAX_NOTES = {
    "relu": "``{api}.relu`` (the same values and derivative)",
    "relu_n": "``{api}.relu6`` (``n=6``)",
    "leaky_relu": "``{api}.leaky_relu`` (its ``negative_slope`` is ``alpha``)",
    "softsign": "``{api}.soft_sign``",
    "gelu": "``{api}.gelu`` (``approximate=False``; Flax's default is the tanh form)",
    "hard_sigmoid": "``{api}.hard_sigmoid`` (``alpha=1/6``; ONNX's default is 0.2)",
}


def module_name(function: str) -> str:
    """The module class name for the op ``jaxops.<function>``: ``gelu`` -> ``GELU``,
    ``leaky_relu`` -> ``LeakyReLU``, ``log_softmax`` -> ``LogSoftmax``."""
    return _NAMES.get(function) or "".join(_WORDS.get(w, w.capitalize())
                                           for w in function.split("_"))


def activation_ops() -> tuple[jo.Op, ...]:
    """The built-in ops that are modules of their own in both Flax APIs: every forward op of
    README's table with one array input and one output, in the table's order.  An op added
    to a family module becomes a module with nothing written here."""
    return tuple(getattr(jo, s.function) for s in jo.schema.builtin_forward_schemas()
                 if len(s.inputs) == 1 and len(s.outputs) == 1)


def flax_counterpart(function: str, api: Any, api_name: str) -> str | None:
    """The "See also" note: Flax's function of the same name, where it has one."""
    if function in _FLAX_NOTES:
        return _FLAX_NOTES[function].format(api=api_name)
    return f"``{api_name}.{function}``" if hasattr(api, function) else None


@dataclasses.dataclass(frozen=True)
class Activation:
    """An op of one array input and static attributes, as a module sees it.

    ``parameters`` are the attributes as constructor parameters, in the schema's order with
    its defaults; those from the first required attribute after an optional one on are
    keyword-only (a Python signature cannot have them positional).
    """

    op: jo.Op
    parameters: tuple[inspect.Parameter, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    def check(self, values: Mapping[str, Any]) -> None:
        """Raise the op's own error for a bad attribute value, when the module is built."""
        self.op.schema.canonical_attributes(values)

    def __call__(self, x: Any, module: Any) -> jax.Array:
        """The op on ``x`` with the attributes ``module`` holds."""
        return self.op(x, **{k: getattr(module, k) for k in self.names})


def activation(op: Any, factory: str, base: str, reserved: Collection[str]) -> Activation:
    """``op`` as an :class:`Activation`, or a TypeError / ValueError saying why it cannot be
    one.  ``reserved``: the names of the Flax base class ``base``, which an attribute may not
    shadow."""
    if not isinstance(op, jo.Op):
        raise TypeError(f"{factory}: expected a jaxops op (jaxops.relu, or one made with "
                        f"jaxops.defop), got {op!r}.")
    s = op.schema
    if len(s.inputs) != 1:
        raise TypeError(
            f"{factory}: {s.name} has {len(s.inputs)} inputs "
            f"({', '.join(p.name for p in s.inputs)}); a module made from the schema takes one "
            "array and the op's static attributes. Write the module by hand (as PReLU's learns "
            "its slope) or call the op in your own module's __call__.")
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = []
    for a in s.attributes:
        if a.name in reserved:
            raise ValueError(f"{factory}: {s.name}'s attribute {a.name!r} would shadow "
                             f"{base}.{a.name}; the op cannot become a module of this API "
                             "as it is: call it in your own module's __call__.")
        if a.required and parameters and parameters[-1].default is not inspect.Parameter.empty:
            kind = inspect.Parameter.KEYWORD_ONLY
        parameters.append(inspect.Parameter(
            a.name, kind, annotation=_annotation(a),
            default=inspect.Parameter.empty if a.required else a.default))
    return Activation(op, tuple(parameters))


def _annotation(a: Attribute) -> Any:
    t = _PYTHON_TYPES[a.type]
    return t | None if a.default is None and not a.required else t


def activation_doc(act: Activation, factory: str, section: str, see_also: str | None) -> str:
    """The docstring of the module made from ``act``: read from its schema."""
    s = act.op.schema
    builtin = s.domain in ("", JAXOPS_DOMAIN)
    op = f":func:`jaxops.{s.function}`" if builtin else f"``{s.function}``"
    lines = [
        *textwrap.wrap(f"{op} as a module: {s.doc}", 88),
        "",
        *textwrap.wrap(
            f"Made by ``{factory}`` from the schema of {s.name}-{s.since_version} "
            f"({s.domain or 'ai.onnx'}): the attributes are the op's, with its defaults, "
            "checked when the module is built; the derivative is "
            + (f"the registered gradient op ``{s.gradient}``." if s.gradient
               else "JAX's derivative of the op's implementation."), 88),
    ]
    if act.parameters:
        lines += ["", f"{section}:"]
        for p, a in zip(act.parameters, s.attributes, strict=True):
            default = "required" if a.required else f"default {a.default!r}"
            lines += textwrap.wrap(f"{p.name}: {a.type}, {default}"
                                   + (f"; {a.doc}." if a.doc else "."), 86,
                                   initial_indent="  ", subsequent_indent="    ")
    if see_also:
        lines += ["", *textwrap.wrap(f"See also: {see_also}.", 88)]
    return "\n".join(lines)



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


def trailing_axis(module: str, x: jax.Array, reduction_axes: Any) -> int:
    """Flax's ``reduction_axes`` (an int or a sequence) as the ONNX op's ``axis``: they must
    be a trailing block ``axis, ..., rank - 1``, the axes LayerNormalization and
    RMSNormalization normalize over."""
    ndim = np.ndim(x)
    axes = (reduction_axes,) if isinstance(reduction_axes, int) else tuple(reduction_axes)
    if not axes or any(not -ndim <= a < ndim for a in axes):
        raise ValueError(f"jaxops.flax {module}: reduction_axes={reduction_axes!r} is out of "
                         f"range for an input of rank {ndim}.")
    canonical = sorted({a % ndim for a in axes})
    if canonical != list(range(canonical[0], ndim)):
        raise ValueError(
            f"jaxops.flax {module}: reduction_axes={reduction_axes!r} are not the trailing "
            f"axes of an input of rank {ndim}; the op normalizes over axis, ..., rank - 1 "
            f"(ONNX): pass reduction_axes={tuple(range(canonical[0], ndim))}, or move the "
            "axes last with jnp.moveaxis.")
    return canonical[0] - ndim


def feature_shape(module: str, x: jax.Array, feature_axes: Any) -> tuple[int, ...]:
    """The shape that lays parameters along ``feature_axes`` of ``x`` (1 elsewhere), as
    Flax's normalization layers shape theirs."""
    ndim = np.ndim(x)
    axes = (feature_axes,) if isinstance(feature_axes, int) else tuple(feature_axes)
    if any(not -ndim <= a < ndim for a in axes):
        raise ValueError(f"jaxops.flax {module}: feature_axes={feature_axes!r} is out of range "
                         f"for an input of rank {ndim}.")
    shape = [1] * ndim
    for a in axes:
        shape[a % ndim] = np.shape(x)[a]
    return tuple(shape)


def _laid_out(module: str, p: jax.Array | None, shape: tuple[int, ...], x: jax.Array):
    if p is None:
        return None
    if p.size != math.prod(shape):
        raise ValueError(f"jaxops.flax {module}: built for {p.size} features, got an input of "
                         f"shape {np.shape(x)} with {math.prod(shape)} on the feature axes.")
    return _like_input(p.reshape(shape), x)


def layer_norm(x, scale, bias, *, reduction_axes, feature_axes, epsilon):
    """``jo.layer_norm`` over Flax's ``reduction_axes`` with parameters on ``feature_axes``
    (None: not learned, so 1 and 0)."""
    axis = trailing_axis("LayerNorm", x, reduction_axes)
    shape = feature_shape("LayerNorm", x, feature_axes)
    scale = _laid_out("LayerNorm", scale, shape, x)
    if scale is None:
        scale = jnp.ones(shape, jnp.result_type(x))
    return jo.layer_norm(x, scale, _laid_out("LayerNorm", bias, shape, x), axis=axis,
                         epsilon=epsilon)


def rms_norm(x, scale, *, reduction_axes, feature_axes, epsilon):
    """``jo.rms_norm`` over Flax's ``reduction_axes`` with the scale on ``feature_axes``."""
    axis = trailing_axis("RMSNorm", x, reduction_axes)
    shape = feature_shape("RMSNorm", x, feature_axes)
    scale = _laid_out("RMSNorm", scale, shape, x)
    if scale is None:
        scale = jnp.ones(shape, jnp.result_type(x))
    return jo.rms_norm(x, scale, axis=axis, epsilon=epsilon)


def num_groups(num_features: int, groups: int | None, group_size: int | None) -> int:
    """Flax GroupNorm's ``num_groups``/``group_size`` (exactly one given) as num_groups."""
    if (groups is None) == (group_size is None):
        raise ValueError(
            "jaxops.flax GroupNorm: give exactly one of num_groups and group_size (as Flax's "
            f"GroupNorm); got num_groups={groups}, group_size={group_size}. For group_size, "
            "pass num_groups=None too.")
    if group_size is not None:
        if group_size <= 0 or num_features % group_size:
            raise ValueError(f"jaxops.flax GroupNorm: group_size={group_size} must divide "
                             f"num_features={num_features}.")
        return num_features // group_size
    if groups <= 0 or num_features % groups:
        raise ValueError(f"jaxops.flax GroupNorm: num_groups={groups} must divide "
                         f"num_features={num_features}.")
    return groups


def group_norm(x, scale, bias, *, groups, epsilon):
    """``jo.group_norm`` (channels on axis 1, ONNX) for Flax's channels-last input; scale and
    bias None: not learned."""
    ax = feature_axis("GroupNorm", x, -1, min_ndim=2)
    c = np.shape(x)[ax]
    one = jnp.ones((c,), jnp.result_type(x))
    scale = one if scale is None else _like_input(scale, x)
    bias = jnp.zeros_like(one) if bias is None else _like_input(bias, x)
    if scale.shape != (c,):
        raise ValueError(f"jaxops.flax GroupNorm: built for num_features={scale.shape[0]}, got "
                         f"an input of shape {np.shape(x)} with {c} features on its last axis.")
    y = jo.group_norm(jnp.moveaxis(x, ax, 1), scale, bias, num_groups=groups, epsilon=epsilon)
    return jnp.moveaxis(y, 1, ax)

# ----------------------------------------------------------------------------- dropout

def check_rate(rate: float, where: str) -> float:
    """The module's ``rate`` as a float in [0, 1], or the op's own error, at construction."""
    return jo.schema.get("KeyedDropout").attribute("rate").canonical(f"jaxops.{where}", rate)


def dropout(x: Any, draw_key: Any, rate: float, deterministic: bool) -> jax.Array:
    """Flax's Dropout control flow around :func:`jaxops.dropout`: the identity when
    deterministic or at rate 0, zeros at rate 1, and otherwise one key drawn (``draw_key()``,
    only then, so that the RNG stream advances exactly as under Flax's module) for the op,
    whose mask is Flax's ``bernoulli(key, 1 - rate, x.shape)``."""
    if deterministic or rate == 0.0:
        return x
    if rate == 1.0:
        return jnp.zeros_like(x)
    return jo.dropout(x, draw_key(), rate=rate)
