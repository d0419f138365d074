"""What the NNX and Linen modules share: what an activation module is made of (read from
the op's schema), and the feature-axis plumbing between Flax's channels-last convention and
the channel layouts the ops expect.  Knows nothing of either Flax API."""

from __future__ import annotations

import dataclasses
import inspect
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
