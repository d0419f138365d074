"""Operator schemas: ONNX's vocabulary plus Caffe2's flags, one record per op.

An :class:`OpSchema` describes an operator the way ``onnx.defs`` and Caffe2's
``OPERATOR_SCHEMA`` do: typed inputs and outputs, attributes with defaults, type
constraints, which inputs may share a buffer with which outputs, the gradient op,
and functions for shape/dtype inference and cost.  Every public jaxops op (and every
gradient op) registers one here; :func:`get` and :func:`all_schemas` read the registry.

    >>> import jaxops
    >>> s = jaxops.schema.get("LeakyRelu")
    >>> s.domain, s.since_version, s.attribute("alpha").default
    ('', 16, 0.01)
    >>> s.gradient
    'LeakyReluGradient'
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

__all__ = [
    "Attribute",
    "Cost",
    "DX",
    "FLOAT_TYPES",
    "GRADIENT_OF_X",
    "GRADIENT_OF_Y",
    "JAXOPS_DOMAIN",
    "KEY_TYPE",
    "KEY_TYPES",
    "XLA_AND_PALLAS",
    "XLA_PLATFORMS",
    "OpSchema",
    "Parameter",
    "all_schemas",
    "dtype_name",
    "get",
    "onnx_type",
    "pointwise_cost",
    "register",
    "unregister",
]

#: Domain of the operators (and gradient operators) that ONNX does not define.
JAXOPS_DOMAIN = "ai.jaxops"

#: The platforms XLA compiles for: every op's ``"xla"`` implementation runs on all of them.
XLA_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")

#: ``implementations`` of an op with a Pallas kernel: Triton lowers for CUDA GPUs (tested);
#: ``"pallas_interpret"`` runs the same kernel in Pallas' interpreter on any platform.
XLA_AND_PALLAS = {"xla": XLA_PLATFORMS, "pallas": ("cuda",)}

#: The floating dtypes every differentiable jaxops op accepts (float64 needs x64).
FLOAT_TYPES = ("float16", "bfloat16", "float32", "float64")

#: A typed PRNG key (``jax.random.key``) in a type constraint: JAX's extended dtype, which
#: neither NumPy nor ONNX has.  A raw key (``jax.random.PRNGKey``) is uint32.
KEY_TYPE = "key"
#: The keys jax.random's samplers accept: typed keys, and raw uint32 keys.
KEY_TYPES = (KEY_TYPE, "uint32")


def dtype_name(dtype: Any) -> str:
    """The type-constraint name of a dtype: NumPy's name (``'float32'``), or
    :data:`KEY_TYPE` for a typed PRNG key of any implementation."""
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return KEY_TYPE
    return np.dtype(dtype).name


def _kind(name: str) -> str:
    """NumPy's kind letter of a type-constraint name ('K' for a typed key)."""
    return "K" if name == KEY_TYPE else np.dtype(name).kind

_ONNX_TYPE_NAMES = {
    "float16": "tensor(float16)",
    "bfloat16": "tensor(bfloat16)",
    "float32": "tensor(float)",
    "float64": "tensor(double)",
    "int32": "tensor(int32)",
    "int64": "tensor(int64)",
    "uint32": "tensor(uint32)",
    "bool": "tensor(bool)",
}


def onnx_type(dtype_name: str) -> str:
    """The ONNX type string (``'tensor(float)'``) of a numpy dtype name."""
    return _ONNX_TYPE_NAMES[dtype_name]


@dataclasses.dataclass(frozen=True)
class Parameter:
    """An input or output: ONNX's ``FormalParameter``."""

    name: str
    type_param: str = "T"
    doc: str = ""
    optional: bool = False
    differentiable: bool = True
    scalar: bool = False  # ONNX's "tensor of empty shape" (Clip's min and max)
    # appended to the advice of a dtype error, e.g. the float-target alternative to labels
    dtype_advice: str = ""


#: The inputs and output of a Caffe2 gradient op, shared by every op family: it reads the
#: forward output Y (in-place friendly) or input X, and the output gradient dY.
GRADIENT_OF_Y = (
    Parameter("Y", doc="the forward op's output (its derivative is 0 almost everywhere)"),
    Parameter("dY", doc="gradient of the loss w.r.t. Y"),
)
GRADIENT_OF_X = (
    Parameter("X", doc="the forward op's input"),
    Parameter("dY", doc="gradient of the loss w.r.t. Y"),
)
DX = (Parameter("dX", doc="gradient of the loss w.r.t. X"),)


@dataclasses.dataclass(frozen=True)
class Attribute:
    """A static attribute with its ONNX type and default.

    ``check`` returns an error sentence for a bad value (``None`` when fine); it runs
    after the value has been converted to ``type``.  An optional attribute whose default is
    ``None`` (ONNX's "absent", e.g. ``ignore_index``) also accepts ``None``.  ``onnx=False``
    marks a jaxops-only attribute that ONNX expresses otherwise (``return_log_prob``: ONNX
    asks for the optional output instead); the onnx.defs fidelity test skips it.
    ``onnx_name`` is ONNX's name where the Python keyword differs (BatchNormalization's
    ``training_mode``, an int 0/1 in ONNX, is ``training: bool`` here, as the SPEC's API).
    """

    name: str
    type: str  # "float" | "int" | "bool" | "string"
    default: Any = None
    required: bool = False
    doc: str = ""
    check: Callable[[Any], str | None] | None = None
    onnx: bool = True
    onnx_name: str | None = None

    def canonical(self, op: str, value: Any) -> Any:
        """The value as a hashable Python scalar of this attribute's type, or an error
        (``op``: the op's name in messages, :attr:`OpSchema.qualified_name`)."""
        where = f"{op}: attribute {self.name!r}"
        if value is None and self.default is None and not self.required:
            return None
        if isinstance(value, jax.core.Tracer) or (
            isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) != 0
        ):
            raise TypeError(
                f"{where} must be a static Python {self.type}, got {type(value).__name__}. "
                "Attributes are compile-time constants; pass a Python number "
                "(use an input, not an attribute, for a learnable or traced value)."
            )
        if self.type == "float":
            ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
            ok = ok or (isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) == 0)
            if not ok:
                raise TypeError(f"{where} must be a float, got {value!r} ({type(value).__name__}).")
            value = float(value)
        elif self.type == "int":
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{where} must be an int, got {value!r} ({type(value).__name__}).")
            value = int(value)
        elif self.type == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{where} must be a bool, got {value!r} ({type(value).__name__}).")
            value = bool(value)
        elif self.type == "string":
            if not isinstance(value, str):
                raise TypeError(
                    f"{where} must be a string, got {value!r} ({type(value).__name__})."
                )
        if self.check is not None and (problem := self.check(value)) is not None:
            raise ValueError(f"{where}: {problem} Got {value!r}.")
        return value


@dataclasses.dataclass(frozen=True)
class Cost:
    """Caffe2's ``OpSchema::Cost``: work and traffic of one call."""

    flops: float
    transcendentals: float
    bytes_read: float
    bytes_written: float

    @property
    def bytes_accessed(self) -> float:
        return self.bytes_read + self.bytes_written


def _nbytes(aval) -> int:
    return math.prod(aval.shape) * np.dtype(aval.dtype).itemsize


def pointwise_cost(flops: float = 0, transcendentals: float = 0):
    """Caffe2's ``PointwiseCostInference<N>``: N flops per output element, every input
    read once and every output written once."""

    def cost(in_avals, out_avals, /, **attrs):
        n = sum(math.prod(a.shape) for a in out_avals)
        return Cost(
            flops=flops * n,
            transcendentals=transcendentals * n,
            bytes_read=sum(_nbytes(a) for a in in_avals if a is not None),
            bytes_written=sum(_nbytes(a) for a in out_avals),
        )

    return cost


def _identical_type_and_shape(schema: OpSchema, in_avals, /, **attrs):
    """Caffe2's ``IdenticalTypeAndShape``: every tensor input has one shape and dtype; the
    outputs have them too.  Scalar inputs must be scalars."""
    first = in_avals[0]
    for p, a in zip(schema.inputs[1:], in_avals[1:], strict=True):
        if a is None:
            continue
        if p.scalar:
            if a.shape != ():
                raise ValueError(
                    f"{schema.qualified_name}: input {p.name!r} must be a scalar (shape ()), "
                    f"got shape {a.shape}."
                )
        elif a.shape != first.shape:
            raise ValueError(
                f"{schema.qualified_name}: input {p.name!r} must have the shape of "
                f"{schema.inputs[0].name!r} {first.shape}, got {a.shape}."
            )
    return tuple(jax.ShapeDtypeStruct(first.shape, first.dtype) for _ in schema.outputs)


@dataclasses.dataclass(frozen=True)
class OpSchema:
    """One operator's record, in ONNX's vocabulary plus Caffe2's flags.

    Attributes:
      name: the op_type (ONNX's name where ONNX has the op, else Caffe2's).
      function: the public Python name (``jaxops.<function>``).
      domain: ``""`` for ai.onnx ops, :data:`JAXOPS_DOMAIN` for the others.
      since_version: the ONNX opset version whose semantics the op follows.
      inputs / outputs / attributes / type_constraints: as in ``onnx.defs.OpSchema``.
      elementwise: each output element depends on the input elements at its position only
        (after broadcasting); False for reductions along an axis (softmax).
      value_check: ``(*concrete inputs, **attrs) -> problem | None``, run only when every
        input is concrete (outside ``jit``): value-dependent mistakes get a clear error
        where one is possible, and never crash a jitted program.
      allow_inplace: ``(input, output)`` index pairs whose buffers may be shared.
      inplace_condition: ``(**attrs) -> reason | None`` for ops that may alias only for
        some attribute values.
      identical_type_and_shape: outputs take the first input's shape and dtype.
      inherit_onnx_schema: the record mirrors ``onnx.defs.get_schema(name, since_version)``.
      gradient: the op_type of the registered gradient op, if any.
      cost_fn: ``(in_avals, out_avals, **attrs) -> Cost`` (Caffe2's cost inference).
      infer_fn: ``(schema, in_avals, /, **attrs) -> tuple of ShapeDtypeStruct`` (schema and
        in_avals positional-only: an attribute may have any name).
      implementations: implementation name -> platforms it runs on (Caffe2's
        ``REGISTER_CPU_OPERATOR`` / ``REGISTER_CUDA_OPERATOR``): ``"xla"`` everywhere,
        ``"pallas"`` where a kernel is registered (:data:`XLA_AND_PALLAS`).
      default_implementation: platform -> the implementation a call without
        ``implementation=`` runs there; ``"xla"`` on platforms not listed.  A Pallas kernel
        becomes a default only where a committed benchmark shows it winning (docs/kernels.md).
      formula / convention: the README operator table's prose, the one thing about an op no
        other field holds: what it computes in the table's notation (``"max(0, x)"``) and the
        derivative's convention at its kinks (``"0 at x = 0"``; ``"smooth"`` where there is
        none).  Empty for ops outside the table (gradient ops, users' ops).
    """

    name: str
    function: str
    doc: str
    inputs: tuple[Parameter, ...]
    outputs: tuple[Parameter, ...]
    since_version: int = 1
    domain: str = ""
    attributes: tuple[Attribute, ...] = ()
    type_constraints: Mapping[str, tuple[str, ...]] = dataclasses.field(
        default_factory=lambda: {"T": FLOAT_TYPES}
    )
    elementwise: bool = True
    value_check: Callable[..., str | None] | None = None
    allow_inplace: tuple[tuple[int, int], ...] = ()
    inplace_condition: Callable[..., str | None] | None = None
    identical_type_and_shape: bool = True
    inherit_onnx_schema: bool = False
    gradient: str | None = None
    cost_fn: Callable[..., Cost] | None = None
    infer_fn: Callable[..., tuple[jax.ShapeDtypeStruct, ...]] | None = None
    implementations: Mapping[str, tuple[str, ...]] = dataclasses.field(
        default_factory=lambda: {"xla": XLA_PLATFORMS}
    )
    default_implementation: Mapping[str, str] = dataclasses.field(default_factory=dict)
    formula: str = ""
    convention: str = ""

    @property
    def qualified_name(self) -> str:
        """The op's name in messages: ``jaxops.<function>`` for jaxops' own ops (domains
        ai.onnx and ai.jaxops), ``<domain>.<function>`` for a user's op."""
        if self.domain in ("", JAXOPS_DOMAIN):
            return f"jaxops.{self.function}"
        return f"{self.domain}.{self.function}"

    def attribute(self, name: str) -> Attribute:
        for a in self.attributes:
            if a.name == name:
                return a
        raise KeyError(f"{self.name} has no attribute {name!r}")

    def inplace_refusal(self, attrs: Mapping[str, Any]) -> str | None:
        """Why this op may not overwrite its input for these attributes (None: it may)."""
        if not self.allow_inplace:
            grad = f" ({self.gradient} reads X)" if self.gradient else ""
            return f"{self.name} lists no allow_inplace pairs{grad}; call it without donation."
        if self.inplace_condition is not None:
            return self.inplace_condition(**self.canonical_attributes(attrs))
        return None

    def nondifferentiable_error(self, index: int) -> TypeError:
        """The error for differentiating input ``index``, which the registered gradient does
        not cover: refused, never given a silent zero derivative."""
        name = self.inputs[index].name
        return TypeError(
            f"{self.qualified_name}: input {name!r} is not differentiable ({self.name} has "
            "no derivative with respect to it, as in PyTorch), but it was differentiated: a "
            "tangent reached it in jvp/grad. Differentiate with respect to the other inputs "
            f"only (argnums=...), or pass jax.lax.stop_gradient({name}) to treat it as a "
            "constant.")

    def check_inputs(self, in_avals: Sequence[Any]) -> None:
        """Enforce the type constraints: TypeError naming op, input, dtype and allowed.

        Omitted optional inputs (None) are skipped.  Weakly typed inputs (Python scalars)
        take the dtype of the other inputs of their type parameter, as in ``jnp``; alone,
        they must have an allowed dtype themselves.
        """
        bound: dict[str, np.dtype] = {}
        present = [(p, a) for p, a in zip(self.inputs, in_avals, strict=True) if a is not None]
        for strong in (True, False):
            for p, a in present:
                if bool(getattr(a, "weak_type", False)) == strong:
                    continue
                dtype = a.dtype
                if not strong and p.type_param in bound:
                    continue  # a Python scalar next to arrays: takes their dtype
                if dtype_name(dtype) not in self.type_constraints[p.type_param]:
                    raise self.dtype_error(p, dtype)
                first = bound.setdefault(p.type_param, dtype)
                if dtype != first:
                    raise TypeError(
                        f"{self.qualified_name}: input {p.name!r} has dtype "
                        f"{dtype_name(dtype)}, but an earlier input of type {p.type_param} is "
                        f"{dtype_name(first)}; jaxops does "
                        "not promote silently. Cast the inputs to one dtype."
                    )

    def dtype_error(self, param: Parameter, dtype: Any) -> TypeError:
        """The TypeError for ``param`` given an array of ``dtype`` (the dtype the user
        passed, before JAX canonicalizes it), with advice that fits: an integer dtype for
        a float input, a float one for labels, a complex one for a real input."""
        name = dtype_name(dtype)
        allowed = self.type_constraints[param.type_param]
        wants_ints = any(_kind(a) in "iu" for a in allowed)
        if KEY_TYPE in allowed:
            advice = ("Pass a PRNG key: jax.random.key(seed) (typed) or "
                      "jax.random.PRNGKey(seed) (raw uint32).")
        elif wants_ints:
            advice = (f"Cast it to int32 with {param.name}.astype(jnp.int32)"
                      f"{param.dtype_advice}.")
        elif _kind(name) == "c":
            advice = "Pass a real float array, e.g. jnp.real(x) or x.astype(jnp.float32)."
        else:
            advice = "Cast it with x.astype(jnp.float32)."
        return TypeError(
            f"{self.qualified_name}: input {param.name!r} has dtype {name}, but "
            f"{self.name} accepts {param.type_param} in {{{', '.join(allowed)}}}. {advice}"
        )

    def canonical_attributes(self, attrs: Mapping[str, Any]) -> dict[str, Any]:
        """Attributes checked against the schema and converted to hashable scalars."""
        out = {}
        for a in self.attributes:
            if a.name not in attrs:
                if a.required:
                    raise TypeError(f"{self.qualified_name}: attribute {a.name!r} is required.")
                out[a.name] = a.default
            else:
                out[a.name] = a.canonical(self.qualified_name, attrs[a.name])
        return out

    def infer(self, /, *in_avals, **attrs) -> tuple[jax.ShapeDtypeStruct, ...]:
        """Output shapes and dtypes, without running anything (must match jax.eval_shape)."""
        self.check_inputs(in_avals)
        attrs = self.canonical_attributes(attrs)
        if self.infer_fn is not None:
            return self.infer_fn(self, in_avals, **attrs)
        if self.identical_type_and_shape:
            return _identical_type_and_shape(self, in_avals, **attrs)
        raise NotImplementedError(f"{self.name} has no shape inference")

    def cost(self, /, *in_avals, **attrs) -> Cost:
        """Caffe2-style cost of one call on inputs of these shapes and dtypes."""
        if self.cost_fn is None:
            raise NotImplementedError(f"{self.name} has no cost inference")
        out_avals = self.infer(*in_avals, **attrs)
        return self.cost_fn(in_avals, out_avals, **self.canonical_attributes(attrs))

    def __str__(self) -> str:
        def params(ps):
            return "\n".join(
                f"    {p.name}: {p.type_param}{' (optional)' if p.optional else ''}"
                f"{'' if p.differentiable else ' (non-differentiable)'}  {p.doc}"
                for p in ps
            )

        attrs = "\n".join(
            f"    {a.name}: {a.type}"
            f"{' (required)' if a.required else f' = {a.default!r}'}  {a.doc}"
            for a in self.attributes
        ) or "    (none)"
        tcs = "\n".join(f"    {k} in {{{', '.join(v)}}}" for k, v in self.type_constraints.items())
        return (
            f"{self.name}-{self.since_version} (domain {self.domain or 'ai.onnx'!r}) "
            f"= {self.qualified_name}\n  {self.doc}\n"
            f"  inputs:\n{params(self.inputs)}\n  outputs:\n{params(self.outputs)}\n"
            f"  attributes:\n{attrs}\n  type constraints:\n{tcs}\n"
            f"  allow_inplace: {list(self.allow_inplace)}\n"
            f"  gradient: {self.gradient}\n"
            f"  implementations: {dict(self.implementations)}"
            + (f"; default {dict(self.default_implementation)}"
               if self.default_implementation else "")
        )


_REGISTRY: dict[str, OpSchema] = {}


def register(schema: OpSchema) -> OpSchema:
    """Add a schema to the registry (an op_type may be registered once)."""
    if (holder := _REGISTRY.get(schema.name)) is not None:
        raise ValueError(
            f"schema {schema.name!r} is already registered: op_types are unique across "
            f"domains in jaxops' registry (get() looks an op up by op_type alone), and "
            f"{schema.name!r} is held by {holder.qualified_name} (domain "
            f"{holder.domain or 'ai.onnx'}). Give your op another name, e.g. "
            f"{_free_name(schema)!r}.")
    _REGISTRY[schema.name] = schema
    return schema


def _free_name(schema: OpSchema) -> str:
    """An unregistered op_type for a clashing ``schema``: its domain's last part
    capitalized in front of its name (``MyopsRelu``), numbered if that is taken too."""
    prefix = "".join(part.capitalize() for part in schema.domain.split(".")[-1:]) or "My"
    candidate, k = prefix + schema.name, 2
    while candidate in _REGISTRY:
        candidate, k = f"{prefix}{schema.name}{k}", k + 1
    return candidate


def unregister(name: str) -> OpSchema:
    """Remove the schema registered under the op_type ``name`` and return it: a test that
    declares an op of its own takes it out again, so that code reading every schema
    (:func:`all_schemas`: the docs' tables, the onnx.defs comparisons) sees jaxops' alone."""
    if name not in _REGISTRY:
        raise KeyError(f"no schema {name!r} is registered")
    return _REGISTRY.pop(name)


def get(name: str) -> OpSchema:
    """The schema registered under ``name``: its op_type (``"LeakyRelu"``,
    ``"ReluGradient"``) or its Python function name (``"leaky_relu"``, ``"relu_gradient"``).

    Both are accepted because users meet both: the op_type in ONNX graphs and this module,
    the function name in their code.  The two namespaces cannot collide (op_types are
    CamelCase, function names snake_case).  An unknown name raises ``KeyError`` suggesting
    the closest names of either kind (``difflib``, case-insensitive).
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    for s in _REGISTRY.values():
        if s.function == name:
            return s
    # suggest names of the kind asked for: op_types for CamelCase, else function names
    camel = any(c.isupper() for c in str(name))
    lower = {}
    for s in _REGISTRY.values():
        for key in (s.name, s.function):
            lower[key.lower()] = s.name if camel else s.function
    close = difflib.get_close_matches(str(name).lower(), lower, n=6, cutoff=0.6)
    names = list(dict.fromkeys(lower[c] for c in close))[:3]
    hint = (f"did you mean {', '.join(map(repr, names))}? " if names
            else "no registered name is close. ")
    raise KeyError(f"no jaxops op {name!r}; {hint}jaxops.schema.all_schemas() lists every op "
                   "(get takes an op_type such as 'LeakyRelu' or a function name such as "
                   "'leaky_relu').")


def builtin_schemas(*, sort: bool = True) -> tuple[OpSchema, ...]:
    """jaxops' own schemas (domains ai.onnx and ai.jaxops), without users' ops; sorted by
    op_type, or with ``sort=False`` in registration order (family by family, each op
    before its gradient op, as the ops modules declare them)."""
    return tuple(s for s in all_schemas(sort=sort) if s.domain in ("", JAXOPS_DOMAIN))


def builtin_forward_schemas() -> tuple[OpSchema, ...]:
    """jaxops' own ops that are not some op's gradient op, in registration order: the ops
    of README's table, and those :mod:`jaxops.flax` makes modules of."""
    builtin = builtin_schemas(sort=False)
    gradients = {s.gradient for s in builtin if s.gradient}
    return tuple(s for s in builtin if s.name not in gradients)


def all_schemas(*, sort: bool = True) -> tuple[OpSchema, ...]:
    """Every registered schema (ops and gradient ops), sorted by op_type, or with
    ``sort=False`` in registration order."""
    names = sorted(_REGISTRY) if sort else list(_REGISTRY)
    return tuple(_REGISTRY[k] for k in names)
