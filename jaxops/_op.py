"""The operator mechanism: (XLA implementation, registered gradient op, schema) -> public op.

Every jaxops op is made here, by :func:`defop`, and nowhere else.

Why ``jax.custom_jvp`` with a rule derived from the registered VJP (docs/design.md has
the evidence): Caffe2 registers a gradient op, i.e. a VJP ``bwd(res, dy)``.  ``jax.custom_vjp``
would run it in reverse mode but rejects ``jvp``/``jacfwd``/``hessian``/``linearize``.  A
registered VJP is linear in ``dy``, so its transpose is the JVP: the tangent rule is
``jax.linear_transpose(bwd)(t)``.  Forward mode evaluates that transpose; reverse mode
transposes it once more and so runs ``bwd`` itself, the registered gradient op, which shows up
by name (``jit[name=relu_gradient]``) in every reverse-mode jaxpr.  Gradient ops are ordinary
jaxops ops written in transposable ``jnp``; JAX differentiates them for second derivatives.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jax.interpreters import ad, batching, mlir

from jaxops._recording import is_recording, record
from jaxops.schema import OpSchema

__all__ = ["defop"]

# Trace-time state: the implementation an op's gradient ops inherit (``choose``).  Export
# recording is not here but in jaxops._recording: its mode must be part of JAX's cache keys.
_STATE = threading.local()


@contextlib.contextmanager
def _state_set(name: str, value: Any):
    """Set one field of the (thread-local) trace-time state for the duration."""
    previous = getattr(_STATE, name, None)
    setattr(_STATE, name, value)
    try:
        yield
    finally:
        setattr(_STATE, name, previous)


# --------------------------------------------------------------- per-platform implementations
# Caffe2 registers an operator per device (REGISTER_CPU_OPERATOR / REGISTER_CUDA_OPERATOR).
# Here an op has its XLA implementation everywhere and may register a Pallas kernel
# (``op.defimpl("pallas")``) for the platforms its schema lists.  A call picks one by the
# platform it is compiled for (``lax.platform_dependent``: one jitted function, exported for
# several platforms, runs the right one on each), or as ``implementation=`` says:
#
# * ``"xla"``: the XLA implementation, on every platform;
# * ``"pallas"``: the kernel; compiling the call for a platform without it raises (never a
#   silent fallback);
# * ``"pallas_interpret"``: the kernel run by Pallas' interpreter, on any platform (tests);
# * None: the schema's ``default_implementation`` for the platform, else XLA.
#
# The gradient ops called by an op's registered gradient inherit the choice.

IMPLEMENTATIONS = ("xla", "pallas", "pallas_interpret")


_unavailable_p = jax.extend.core.Primitive("jaxops_unavailable")
_unavailable_p.multiple_results = True
_unavailable_p.def_abstract_eval(
    lambda *avals, out_avals, message: [jax.core.ShapedArray(a.shape, a.dtype)
                                        for a in out_avals])


def _unavailable_lowering(ctx, *args, out_avals, message):
    platforms = ", ".join(ctx.module_context.platforms)
    raise ValueError(message.format(platform=platforms))


mlir.register_lowering(_unavailable_p, _unavailable_lowering)


# The unavailable branch is traced (and differentiated, batched) like the others, and is
# only refused when lowered: its rules return more of itself.
def _unavailable_like(arrays, avals, message):
    return _unavailable_p.bind(*arrays, out_avals=tuple(
        jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals), message=message)


def _unavailable_jvp(primals, tangents, *, out_avals, message):
    outs = _unavailable_p.bind(*primals, out_avals=out_avals, message=message)
    # the tangents' own unavailable map (a function of the tangents, so it is transposed and
    # lowered -- and refused -- rather than treated as a constant)
    tangents = [ad.instantiate_zeros(t) for t in tangents]
    return outs, _unavailable_like(tangents, [jax.typeof(o).to_tangent_aval() for o in outs],
                                   message)


def _unavailable_transpose(cts, *args, out_avals, message):
    cts = [jax.numpy.zeros(a.shape, a.dtype) if type(c) is ad.Zero else c
           for c, a in zip(cts, out_avals, strict=True)]
    wanted = [a.aval if ad.is_undefined_primal(a) else jax.typeof(a) for a in args]
    return list(_unavailable_like(cts, wanted, message))


def _unavailable_batch(args, dims, *, out_avals, message):
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
    outs = _unavailable_like(args, [jax.ShapeDtypeStruct((size, *a.shape), a.dtype)
                                    for a in out_avals], message)
    return outs, [0] * len(outs)


ad.primitive_jvps[_unavailable_p] = _unavailable_jvp
ad.primitive_transposes[_unavailable_p] = _unavailable_transpose
batching.primitive_batchers[_unavailable_p] = _unavailable_batch


class _Kernel:
    """A registered non-XLA implementation (see ``op.defimpl``)."""

    def __init__(self, fn, jvp, supports):
        self.fn, self.jvp, self.supports = fn, jvp, supports


def _takes_ints(schema: OpSchema, param) -> bool:
    return any(np.dtype(d).kind in "iu" for d in schema.type_constraints[param.type_param])


def _aval(schema: OpSchema, param, value: Any) -> jax.ShapeDtypeStruct | None:
    """Shape and (canonical) dtype of an argument, None for an omitted optional input, or a
    TypeError naming the dtype the user passed (an ``np.int64`` array is reported as int64,
    not as the int32 JAX would make of it).

    Python scalars are weakly typed: they take the dtype of the arrays they meet, as in
    ``jnp``.  A Python int for an input that takes floats only is a weakly typed *float*
    (``sigmoid(0)`` is ``sigmoid(0.0)``; ``jnp.exp(0)``, ``jnp.tanh(0)`` and ``1.5 * 2`` do
    the same), and :func:`_int_as_float` converts its value to match; an int beyond the float
    range is a ValueError.  A Python bool is refused: jax.nn is inconsistent about bools
    (``sigmoid``, ``silu``, ``log_sigmoid`` and optax's losses refuse them; ``soft_sign``
    takes them), and True is far more often a mistaken argument than an activation.
    Integer and bool *arrays* (NumPy scalars included) keep their dtype, and are refused
    by the type constraints."""
    if value is None:
        if param.optional:
            return None
        raise TypeError(f"jaxops.{schema.function}: input {param.name!r} is required, got None.")
    if isinstance(value, jax.Array):  # arrays and tracers; a traced Python scalar stays weak
        aval = jax.typeof(value)
        return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=aval.weak_type)
    if isinstance(value, (np.ndarray, np.generic)):
        dtype = jax.dtypes.canonicalize_dtype(value.dtype)
        if dtype.name not in schema.type_constraints[param.type_param]:
            raise schema.dtype_error(param, value.dtype)
        return jax.ShapeDtypeStruct(np.shape(value), dtype)
    if isinstance(value, bool):
        allowed = ", ".join(schema.type_constraints[param.type_param])
        example = "1 or 0" if _takes_ints(schema, param) else "1.0 or 0.0"
        raise TypeError(
            f"jaxops.{schema.function}: input {param.name!r} is a Python bool ({value}), but "
            f"{schema.name} accepts {param.type_param} in {{{allowed}}}. Pass a number "
            f"({example}), or an array of an accepted dtype."
        )
    if isinstance(value, int) and not _takes_ints(schema, param):
        try:
            value = float(value)
        except OverflowError:
            raise ValueError(
                f"jaxops.{schema.function}: input {param.name!r} is a Python int of "
                f"{len(str(abs(value)))} digits, beyond the float range; pass a float "
                "(float('inf') if that is what you mean)."
            ) from None
    if isinstance(value, (int, float)):
        dtype = jax.dtypes.canonicalize_dtype(np.result_type(value))
        return jax.ShapeDtypeStruct((), dtype, weak_type=True)
    raise TypeError(
        f"jaxops.{schema.function}: input {param.name!r} must be a JAX or NumPy array or a "
        f"Python float, got {type(value).__name__}. Wrap it with jnp.asarray(...)."
    )


def _int_as_float(schema: OpSchema, param, value: Any) -> Any:
    """A Python int for a float-only input as the Python float :func:`_aval` typed it as,
    so that ``jit`` traces a weak float, not a weak int32."""
    if isinstance(value, int) and not isinstance(value, bool) and not _takes_ints(schema,
                                                                                  param):
        return float(value)
    return value


def defop(schema: OpSchema) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn an XLA implementation into the public op described by ``schema``.

    The decorated function is the op's XLA implementation: positional parameters are the
    schema's inputs (arrays), keyword-only parameters its attributes (static).  The result is
    the public op: it checks inputs and attributes against the schema at trace time, runs the
    implementation under ``jax.jit`` (one compilation per shape, dtype and attribute values)
    and, once ``@op.defgrad`` has registered a gradient, differentiates through that gradient
    in both modes.  The op carries ``op.schema`` and ``op.inplace`` (a jitted variant that
    donates the inputs the schema lets the outputs alias).
    """

    def decorate(impl: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(impl)
        input_names = [
            p.name for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        attr_names = tuple(
            p.name for p in sig.parameters.values() if p.kind == p.KEYWORD_ONLY
        )
        differentiable = tuple(i for i, p in enumerate(schema.inputs) if p.differentiable)
        registered: dict[str, Callable[..., Any]] = {}

        kernels: dict[str, _Kernel] = {}

        def implementation_of(choice: str, attrs: dict) -> tuple[Callable, Callable | None]:
            """(forward, jvp override or None) of an implementation choice."""
            if choice == "xla":
                return functools.partial(impl, **attrs), None
            kernel, interpret = kernels["pallas"], choice == "pallas_interpret"
            forward = functools.partial(kernel.fn, interpret=interpret, **attrs)
            jvp = kernel.jvp and functools.partial(kernel.jvp, interpret=interpret, **attrs)
            return forward, jvp

        @functools.cache
        def with_gradient(attr_items: tuple[tuple[str, Any], ...],
                          choice: str) -> Callable[..., Any]:
            attrs = dict(attr_items)
            run, jvp_override = implementation_of(choice, attrs)
            if "vjp" not in registered and jvp_override is None:
                return run  # a gradient op: JAX differentiates its implementation

            def forward(*xs):
                return run(*xs)

            forward.__name__ = forward.__qualname__ = impl.__name__  # custom_jvp_call[name=]
            fn = jax.custom_jvp(forward)

            # Symbolic zeros: an input that is not differentiated (closed over, or not an
            # argument of jvp/grad) arrives as a SymbolicZero and stays one.  Only the
            # differentiated inputs' cotangents are transposed, so no zero tangent is
            # materialized and multiplied into the result: that would cost work (a matmul
            # per closed-over matrix), turn 0 * inf into NaN, and hit an XLA CPU miscompile
            # of dots against zero constants (docs/design.md, "Symbolic zeros").
            @functools.partial(fn.defjvp, symbolic_zeros=True)
            def jvp(primals, tangents):
                tangents = [None if t is None or isinstance(t, SymbolicZero) else t
                            for t in tangents]
                _refuse_nondifferentiable(tangents)
                if jvp_override is not None:  # a fused kernel's own linearization
                    return jvp_override(primals, tangents)
                y = fn(*primals)
                present = [i for i in differentiable if primals[i] is not None]
                wrt = [k for k, i in enumerate(present) if tangents[i] is not None]

                def vjp(dy):
                    with _state_set("implementation", choice):  # gradient ops: the same
                        cts = registered["vjp"](*primals, y, dy, **attrs)
                    cts = cts if isinstance(cts, tuple) else (cts,)
                    return tuple(cts[k] for k in wrt)

                (t_out,) = jax.linear_transpose(vjp, y)(
                    tuple(tangents[present[k]] for k in wrt))
                return y, t_out

            return fn

        def _refuse_nondifferentiable(tangents):
            """A float input the registered gradient does not cover is refused when it is
            differentiated, never given a silent zero derivative."""
            for i, t in enumerate(tangents):
                param = schema.inputs[i]
                if t is not None and i not in differentiable and jax.numpy.issubdtype(
                        jax.typeof(t).dtype, jax.numpy.inexact):
                    raise TypeError(
                        f"jaxops.{schema.function}: input {param.name!r} is not "
                        f"differentiable ({schema.name} has no derivative with respect to "
                        "it, as in PyTorch), but it was differentiated: a tangent reached it "
                        "in jvp/grad. Differentiate with respect to the other inputs only "
                        f"(argnums=...), or pass jax.lax.stop_gradient({param.name}) to "
                        "treat it as a constant.")

        def unavailable(arrays, attrs):
            avals = [None if a is None else jax.typeof(a) for a in arrays]
            out_avals = schema.infer(*avals, **attrs)
            out_avals = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in out_avals)
            where = ", ".join(schema.implementations["pallas"])
            message = (f"jaxops.{schema.function}: implementation='pallas' runs on {where}, "
                       "but this call is compiled for {platform}. Use implementation='xla' "
                       "(or no implementation=, which picks the platform's default), or "
                       "'pallas_interpret' to run the kernel in Pallas' interpreter.")
            outs = _unavailable_p.bind(*(a for a in arrays if a is not None),
                                       out_avals=out_avals, message=message)
            return outs[0] if len(outs) == 1 else tuple(outs)

        @functools.wraps(impl)
        def core(*arrays, implementation=None, **attrs):
            items = tuple(attrs.items())
            if implementation in ("xla", "pallas_interpret"):
                return with_gradient(items, implementation)(*arrays)
            if implementation == "pallas":
                branches = {p: with_gradient(items, "pallas")
                            for p in schema.implementations["pallas"]}
                return jax.lax.platform_dependent(
                    *arrays, default=lambda *xs: unavailable(xs, attrs), **branches)
            defaults = {p: c for p, c in schema.default_implementation.items()
                        if c != "xla" and kernels[c].supports(**attrs) is None}
            if not defaults:
                return with_gradient(items, "xla")(*arrays)
            return jax.lax.platform_dependent(
                *arrays, default=with_gradient(items, "xla"),
                **{p: with_gradient(items, c) for p, c in defaults.items()})

        # every op takes ``implementation=`` (keyword-only, last) besides its attributes
        public_sig = sig.replace(parameters=[
            *sig.parameters.values(),
            inspect.Parameter("implementation", inspect.Parameter.KEYWORD_ONLY,
                              default=None, annotation="str | None")])
        core.__signature__ = public_sig
        jitted = jax.jit(core, static_argnames=(*attr_names, "implementation"))

        @functools.wraps(impl)
        def op(*args, implementation: str | None = None, **kwargs):
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"jaxops.{schema.function}: {e}; signature is {sig}") from None
            bound.apply_defaults()  # omitted optional inputs are None
            arrays = [bound.arguments[n] for n in input_names]
            avals = [_aval(schema, p, a) for p, a in zip(schema.inputs, arrays, strict=True)]
            arrays = [_int_as_float(schema, p, a) for p, a in zip(schema.inputs, arrays,
                                                                    strict=True)]
            attrs = schema.canonical_attributes({n: bound.arguments[n] for n in attr_names})
            schema.infer(*avals, **attrs)  # type constraints and shapes, at trace time
            if schema.value_check is not None and not any(
                isinstance(a, jax.core.Tracer) for a in arrays
            ):
                values = [None if a is None else np.asarray(a) for a in arrays]
                if (problem := schema.value_check(*values, **attrs)) is not None:
                    raise ValueError(f"jaxops.{schema.function}: {problem}")
            if is_recording():  # export: one jaxops_op equation (jaxops/_recording.py)
                return record(schema, jitted, registered.get("vjp"), differentiable, arrays,
                              avals, attrs)
            return jitted(*arrays, implementation=choose(implementation, attrs), **attrs)

        def choose(implementation: str | None, attrs: dict) -> str | None:
            """Check an ``implementation=`` argument (None: inherited from the op whose
            gradient this is, else the platform's default)."""
            offered = IMPLEMENTATIONS if kernels else ("xla",)
            if implementation is None:
                inherited = getattr(_STATE, "implementation", None)
                if inherited not in offered or (inherited != "xla" and
                                                kernels["pallas"].supports(**attrs)):
                    return None
                return inherited
            if implementation not in offered:
                raise ValueError(
                    f"jaxops.{schema.function}: implementation={implementation!r} is not "
                    f"registered; {schema.name} has {', '.join(map(repr, offered))} "
                    f"(platforms: {dict(schema.implementations)}).")
            if implementation != "xla" and (why := kernels["pallas"].supports(**attrs)):
                raise ValueError(f"jaxops.{schema.function}: implementation="
                                 f"{implementation!r} does not support {why}; use "
                                 "implementation='xla'.")
            return implementation

        def defimpl(name: str, *, jvp: Callable[..., Any] | None = None,
                    supports: Callable[..., str | None] = lambda **attrs: None):
            """Register ``fn(*inputs, interpret, **attrs)`` as the ``name`` implementation
            (a kernel) on the platforms the schema lists for it.

            ``jvp(primals, tangents, *, interpret, **attrs) -> (y, t_y)`` replaces the
            default rule (the transpose of the registered gradient) for a fused kernel that
            computes its own gradient in the forward pass; ``supports(**attrs)`` names
            attribute values the kernel does not handle (None: all)."""
            if name == "xla" or name not in schema.implementations:
                raise ValueError(f"{schema.name}: the schema lists no {name!r} "
                                 f"implementation ({dict(schema.implementations)})")

            def register(fn):
                kernels[name] = _Kernel(fn, jvp, supports)
                return fn

            return register

        def defgrad(vjp: Callable[..., Any]) -> Callable[..., Any]:
            """Register ``vjp(*inputs, y, dy, **attrs)`` -> cotangents of the differentiable
            inputs that are present (a tuple, or one array for one input).  It must call the
            gradient op."""
            if "vjp" in registered:
                raise ValueError(f"{schema.name} already has a registered gradient")
            registered["vjp"] = vjp
            return vjp

        donate = tuple(sorted({i for i, _ in schema.allow_inplace}))
        op.__signature__ = public_sig
        inplace_jit = jax.jit(op, donate_argnums=donate,
                              static_argnames=(*attr_names, "implementation"))

        @functools.wraps(impl)
        def inplace(*args, **kwargs):
            attrs = {k: v for k, v in kwargs.items() if k in attr_names}
            kwargs.setdefault("implementation", None)
            if (why := schema.inplace_refusal(attrs)) is not None:
                raise ValueError(f"jaxops.{schema.function} may not run in place: {why}")
            return inplace_jit(*args, **kwargs)

        inplace.__signature__ = public_sig
        op.schema = schema
        op.defgrad = defgrad
        op.defimpl = defimpl
        op.inplace = inplace
        return op

    return decorate
