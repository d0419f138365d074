"""The operator mechanism: (XLA implementation, registered gradient op, schema) -> :class:`Op`.

Every jaxops op is an :class:`Op`, made by :func:`defop` -- the built-in ops and users' own
ops alike.

Why ``jax.custom_jvp`` with a rule derived from the registered VJP (docs/design.md has
the evidence): Caffe2 registers a gradient op, i.e. a VJP ``bwd(res, dy)``.  ``jax.custom_vjp``
would run it in reverse mode but rejects ``jvp``/``jacfwd``/``hessian``/``linearize``.  A
registered VJP is linear in ``dy``, so its transpose is the JVP: the tangent rule is
``jax.linear_transpose(bwd)(t)``.  Forward mode evaluates that transpose; reverse mode
transposes it once more and so runs ``bwd`` itself, the registered gradient op, which shows up
by name (``jit[name=relu_gradient]``) in every reverse-mode jaxpr.  Gradient ops are ordinary
jaxops ops written in transposable ``jnp``; JAX differentiates them for second derivatives.

Export recording lives in :mod:`jaxops._recording`, platform dispatch in
:mod:`jaxops._dispatch`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.custom_derivatives import SymbolicZero

from jaxops import schema as _schema_registry
from jaxops._ad import linear_pair
from jaxops._dispatch import IMPLEMENTATIONS, Implementation, Kernel, unavailable
from jaxops._recording import is_recording, record
from jaxops.schema import FLOAT_TYPES, JAXOPS_DOMAIN, KEY_TYPE, Attribute, OpSchema, Parameter

__all__ = ["Op", "defop", "op_of"]

# op_type -> the Op made most recently of that schema (``op_of`` checks it is the registered one)
_OPS: dict[str, Op] = {}

# Trace-time state: the implementation an op's gradient ops inherit (``Op._choose``).  Export
# recording is not here but in jaxops._recording: its mode must be part of JAX's cache keys.
class _State(threading.local):
    implementation: str | None = None  # a class default: reading it never raises


_STATE = _State()


@contextlib.contextmanager
def _state_set(name: str, value: Any):
    """Set one field of the (thread-local) trace-time state for the duration."""
    previous = getattr(_STATE, name, None)
    setattr(_STATE, name, value)
    try:
        yield
    finally:
        setattr(_STATE, name, previous)


def _takes_ints(schema: OpSchema, param) -> bool:
    return any(d != KEY_TYPE and np.dtype(d).kind in "iu"
               for d in schema.type_constraints[param.type_param])


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
        raise TypeError(f"{schema.qualified_name}: input {param.name!r} is required, got None.")
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
            f"{schema.qualified_name}: input {param.name!r} is a Python bool ({value}), but "
            f"{schema.name} accepts {param.type_param} in {{{allowed}}}. Pass a number "
            f"({example}), or an array of an accepted dtype."
        )
    if isinstance(value, int) and not _takes_ints(schema, param):
        try:
            value = float(value)
        except OverflowError:
            raise ValueError(
                f"{schema.qualified_name}: input {param.name!r} is a Python int of "
                f"{len(str(abs(value)))} digits, beyond the float range; pass a float "
                "(float('inf') if that is what you mean)."
            ) from None
    if isinstance(value, (int, float)):
        dtype = jax.dtypes.canonicalize_dtype(np.result_type(value))
        return jax.ShapeDtypeStruct((), dtype, weak_type=True)
    raise TypeError(
        f"{schema.qualified_name}: input {param.name!r} must be a JAX or NumPy array or a "
        f"Python float, got {type(value).__name__}. Wrap it with jnp.asarray(...)."
    )


def _int_as_float(schema: OpSchema, param, value: Any) -> Any:
    """A Python int for a float-only input as the Python float :func:`_aval` typed it as,
    so that ``jit`` traces a weak float, not a weak int32."""
    if isinstance(value, int) and not isinstance(value, bool) and not _takes_ints(schema,
                                                                                  param):
        return float(value)
    return value



class Op:
    """A jaxops operator: its schema, XLA implementation, registered gradient and kernels.

    Calling it runs the op: ``op(*inputs, implementation=None, **attributes)``.  Inputs are
    arrays (positional, in the schema's order; omitted optional inputs are None);
    attributes are static keyword arguments, checked against the schema and canonicalized
    once per call; ``implementation`` picks ``"xla"``, ``"pallas"`` or ``"pallas_interpret"``
    (None: the platform's benchmarked default, or the one inherited by a gradient op).  Every
    call is checked at trace time (dtypes, shapes, attributes: clear ``TypeError`` /
    ``ValueError`` naming the op) and runs under ``jax.jit``.

    Once :meth:`defgrad` has registered a gradient, the op differentiates through it in both
    modes (jvp, jacfwd, hessian, linearize by its transpose; grad, vjp, jacrev by the gradient
    op itself).  An op without one (a gradient op) is differentiated by JAX.

    Attributes:
      schema: the op's :class:`jaxops.schema.OpSchema`.
      name: its op_type (``schema.name``).
    """

    def __init__(self, impl: Callable[..., Any], schema: OpSchema):
        self.schema, self.name = schema, schema.name
        self._impl = impl
        self._vjp: Callable[..., Any] | None = None
        self._kernels: dict[str, Kernel] = {}
        sig = inspect.signature(impl)
        self._signature = sig
        self._input_names = [p.name for p in sig.parameters.values()
                             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self._attr_names = tuple(p.name for p in sig.parameters.values()
                                 if p.kind == p.KEYWORD_ONLY)
        self._attr_set = frozenset(self._attr_names)
        self._n_inputs = len(self._input_names)
        self._differentiable = tuple(i for i, p in enumerate(schema.inputs) if p.differentiable)
        self._nondifferentiable_floats = any(
            not p.differentiable and any(d != KEY_TYPE and np.dtype(d).kind == "f"
                                         or d == "bfloat16"
                                         for d in schema.type_constraints[p.type_param])
            for p in schema.inputs)
        # the implementation's parameter names are Python's (x), the schema's ONNX's (X)
        if len(schema.inputs) != len(self._input_names) or (
                {a.name for a in schema.attributes} != self._attr_set):
            raise ValueError(
                f"jaxops.defop({schema.name}): the implementation's signature {sig} does not "
                f"match the schema (inputs {[p.name for p in schema.inputs]}, attributes "
                f"{[a.name for a in schema.attributes]}): positional parameters are the "
                "inputs, keyword-only parameters the attributes.")
        functools.update_wrapper(self, impl)
        # every op takes ``implementation=`` (keyword-only, last) besides its attributes
        self.__signature__ = sig.replace(parameters=[
            *sig.parameters.values(),
            inspect.Parameter("implementation", inspect.Parameter.KEYWORD_ONLY,
                              default=None, annotation="Implementation | None")])
        self._with_gradient = functools.cache(self._make_with_gradient)
        statics = (*self._attr_names, "implementation")
        self._jitted = jax.jit(self._traced_core(), static_argnames=statics)
        donate = tuple(sorted({i for i, _ in schema.allow_inplace}))
        self._inplace_jit = jax.jit(self._call, donate_argnums=donate, static_argnames=statics)
        # calls that need no eager work before the jit: all inputs given as JAX arrays, no
        # concrete-value check; the jit's own cache then makes them as cheap as a jax.nn call
        self._fast = schema.value_check is None
        self._attribute_cache: dict[tuple, dict] = {}
        self.onnx_body: Callable[..., Any] | None = None
        self.onnx_native_type = False
        _OPS[schema.name] = self

    def __repr__(self) -> str:
        s = self.schema
        return f"<jaxops op {s.function} ({s.name}-{s.since_version}, {s.domain or 'ai.onnx'})>"

    # ------------------------------------------------------------------------------ calling
    def __call__(self, /, *inputs: Any, implementation: Implementation | None = None,
                 **attributes: Any) -> Any:
        # the fast path: every input a JAX array, nothing to inherit or record; the jit's
        # own cache then makes a call nearly as cheap as a jax.nn call (benchmarks.dispatch)
        if (implementation is None and self._fast and len(inputs) == self._n_inputs
                and _STATE.implementation is None and not is_recording()
                and (isinstance(inputs[0], jax.Array) if self._n_inputs == 1
                     else all(isinstance(a, jax.Array) for a in inputs))):
            given = self._given_attributes(attributes) if attributes else attributes
            if given is not None:
                try:
                    return self._jitted(*inputs, **given)
                except (TypeError, ValueError):
                    pass  # the full path raises the same problem eagerly, with a clean message
        return self._call(*inputs, implementation=implementation, **attributes)

    def _given_attributes(self, attributes: dict) -> dict | None:
        """The canonical non-default attributes of a call (None: take the full path), cached
        by the attributes as passed, so a repeated call canonicalizes nothing."""
        if not attributes:
            return attributes
        try:
            # the type too: 1 == 1.0 == True, but axis=1.0 is an error and axis=1 is not
            key = tuple((k, type(v), v) for k, v in attributes.items())
            return self._attribute_cache[key]
        except TypeError:  # an unhashable value: the full path says what is wrong
            return None
        except KeyError:
            pass
        if not attributes.keys() <= self._attr_set:
            return None
        try:
            attrs = self.schema.canonical_attributes(attributes)
        except (TypeError, ValueError):
            return None
        if len(self._attribute_cache) > 256:  # a sweep over many values: no unbounded growth
            self._attribute_cache.clear()
        given = {k: v for k, v in attrs.items()
                 if not _is_default(self.schema.attribute(k), v)}
        self._attribute_cache[key] = given
        return given

    def _call(self, /, *args, implementation=None, **kwargs):
        schema = self.schema
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{schema.qualified_name}: {e}; signature is "
                            f"{self._signature}") from None
        bound.apply_defaults()  # omitted optional inputs are None
        arrays = [bound.arguments[n] for n in self._input_names]
        avals = [_aval(schema, p, a) for p, a in zip(schema.inputs, arrays, strict=True)]
        arrays = [_int_as_float(schema, p, a) for p, a in zip(schema.inputs, arrays,
                                                                strict=True)]
        attrs = schema.canonical_attributes({n: bound.arguments[n] for n in self._attr_names})
        schema.infer(*avals, **attrs)  # type constraints and shapes, before anything runs
        if schema.value_check is not None and not any(
                isinstance(a, jax.core.Tracer) for a in arrays):
            values = [None if a is None else np.asarray(a) for a in arrays]
            if (problem := schema.value_check(*values, **attrs)) is not None:
                raise ValueError(f"{schema.qualified_name}: {problem}")
        if is_recording():  # export: one jaxops_op equation (jaxops/_recording.py)
            return record(schema, self._jitted, self._vjp, self._differentiable, arrays,
                          avals, attrs)
        # attributes at their defaults are left out, so that every spelling of a call (n=6,
        # n=6.0, no n) shares the fast path's jit cache entry
        given = {k: v for k, v in attrs.items() if not _is_default(schema.attribute(k), v)}
        if (choice := self._choose(implementation, attrs)) is not None:
            given["implementation"] = choice  # left out when None, as the fast path does
        return self._jitted(*arrays, **given)

    def _traced_core(self):
        """The jitted function: checks at trace time (the fast path skipped them), then the
        implementation chosen for the platform, differentiated through the registered
        gradient."""
        schema = self.schema

        def core(*arrays, implementation=None, **attrs):
            attrs = schema.canonical_attributes(attrs)
            schema.infer(*(None if a is None else _aval(schema, p, a)
                           for p, a in zip(schema.inputs, arrays, strict=True)), **attrs)
            items = tuple(attrs.items())
            if implementation in ("xla", "pallas_interpret"):
                return self._with_gradient(items, implementation)(*arrays)
            if implementation == "pallas":
                branches = {p: self._with_gradient(items, "pallas")
                            for p in schema.implementations["pallas"]}
                return jax.lax.platform_dependent(
                    *arrays, default=lambda *xs: unavailable(schema, xs, attrs), **branches)
            defaults = {p: c for p, c in schema.default_implementation.items()
                        if c != "xla" and self._kernels[c].supports(**attrs) is None}
            if not defaults:
                return self._with_gradient(items, "xla")(*arrays)
            return jax.lax.platform_dependent(
                *arrays, default=self._with_gradient(items, "xla"),
                **{p: self._with_gradient(items, c) for p, c in defaults.items()})

        core.__name__ = core.__qualname__ = self._impl.__name__  # jit[name=relu]
        core.__signature__ = self.__signature__
        return core

    def _choose(self, implementation: str | None, attrs: dict) -> str | None:
        """Check an ``implementation=`` argument (None: inherited from the op whose gradient
        this is, else the platform's default)."""
        schema = self.schema
        offered = IMPLEMENTATIONS if self._kernels else ("xla",)
        if implementation is None:
            inherited = _STATE.implementation
            if inherited not in offered or (inherited != "xla" and
                                            self._kernels["pallas"].supports(**attrs)):
                return None
            return inherited
        if implementation not in offered:
            raise ValueError(
                f"{schema.qualified_name}: implementation={implementation!r} is not "
                f"registered; {schema.name} has {', '.join(map(repr, offered))} "
                f"(platforms: {dict(schema.implementations)}).")
        if implementation != "xla" and (why := self._kernels["pallas"].supports(**attrs)):
            raise ValueError(f"{schema.qualified_name}: implementation={implementation!r} "
                             f"does not support {why}; use implementation='xla'.")
        return implementation

    def inplace(self, /, *args: Any, **kwargs: Any) -> Any:
        """The op jitted with its inputs donated where the schema lets the outputs alias
        them (``allow_inplace``): the output reuses the input's buffer."""
        attrs = {k: v for k, v in kwargs.items() if k in self._attr_set}
        kwargs.setdefault("implementation", None)
        if (why := self.schema.inplace_refusal(attrs)) is not None:
            raise ValueError(f"{self.schema.qualified_name} may not run in place: {why}")
        return self._inplace_jit(*args, **kwargs)

    # -------------------------------------------------------------------------- registering
    def defgrad(self, vjp: Callable[..., Any]) -> Callable[..., Any]:
        """Register ``vjp(*inputs, y, dy, **attributes)`` -> the cotangents of the
        differentiable inputs that are present (a tuple, or one array for one input), each
        of its input's shape and dtype; ``y`` and ``dy`` are tuples for an op of several
        outputs.  The signature is checked here, the cotangents at their first use.  It
        should call the op's gradient op, so that reverse mode runs it by name; it must be
        linear in ``dy`` and written in transposable ``jnp`` (forward mode transposes it)."""
        if self._vjp is not None:
            raise ValueError(f"{self.name} already has a registered gradient")
        self._check_gradient_signature(vjp)
        self._vjp = vjp
        self._with_gradient.cache_clear()
        return vjp

    def _check_gradient_signature(self, vjp: Callable[..., Any]) -> None:
        """A gradient function that cannot take the op's inputs, y and dy positionally and its
        attributes as keywords is refused here, not with an opaque error at its first use."""
        try:
            sig = inspect.signature(vjp)
        except (TypeError, ValueError):
            return  # a builtin or C function: nothing to check
        n = self._n_inputs + 2
        try:
            sig.bind(*range(n), **dict.fromkeys(self._attr_names))
        except TypeError as e:
            example = ", ".join([*self._input_names, "y", "dy"])
            if self._attr_names:
                example += ", *, " + ", ".join(self._attr_names)
            raise TypeError(
                f"{self.schema.qualified_name}: defgrad: the gradient function {sig} must "
                f"take the op's {self._n_inputs} inputs {self._input_names}, y and dy ({n} "
                f"positional arguments) and its attributes {list(self._attr_names)} as "
                f"keywords ({e}); write it as def _({example}): ...") from None

    def _checked_cotangents(self, cts: Any, primals: Sequence[Any],
                            present: Sequence[int]) -> tuple:
        """The registered gradient's result as a tuple: one cotangent per differentiable
        input present, of that input's shape and dtype, or an error naming the op."""
        cts = cts if isinstance(cts, tuple) else (cts,)
        names = [self._input_names[i] for i in present]
        where = f"{self.schema.qualified_name}: the registered gradient"
        if len(cts) != len(present):
            raise ValueError(
                f"{where} returned {len(cts)} cotangent{'s' if len(cts) != 1 else ''}, "
                f"expected {len(present)} (for {', '.join(map(repr, names))}: one per "
                "differentiable input present, in order, as a tuple).")
        for name, i, ct in zip(names, present, cts, strict=True):
            want, got = jax.typeof(primals[i]), jax.typeof(ct)
            if (got.shape, got.dtype) != (want.shape, want.dtype):
                raise ValueError(
                    f"{where}'s cotangent for {name!r} has shape {got.shape} and dtype "
                    f"{got.dtype}, expected {want.shape} and {want.dtype} (the input's).")
        return cts

    def defonnx(self, body: Callable[..., Any] | None = None, *, native_type: bool = False):
        """Register ``body(b, *input names, **attributes) -> output name(s)``, the op's ONNX
        function body written with the builder ``b`` of :mod:`jaxops.onnx.functions`
        (``b.op("Mul", x, y)``; an omitted optional input's name is None).  Without one, the
        exporter derives the body from the implementation.  ``native_type=True``: the body
        computes in its inputs' own type (a comparison), not float32 for float16/bfloat16
        inputs.  Nothing here imports onnx: the builder is handed in at export."""

        def register(fn):
            if self.onnx_body is not None:
                raise ValueError(f"{self.name} already has an ONNX body")
            self.onnx_body, self.onnx_native_type = fn, native_type
            return fn

        return register if body is None else register(body)

    def defimpl(self, name: str, *, jvp: Callable[..., Any] | None = None,
                transpose: Callable[..., Any] | None = None,
                supports: Callable[..., str | None] = lambda **attrs: None):
        """Register ``fn(*inputs, interpret, **attributes)`` as the ``name`` implementation
        (a kernel) on the platforms the schema lists for it, and declare how it is
        differentiated -- here and nowhere else -- by one of:

        * neither ``jvp`` nor ``transpose``: through the op's registered gradient, as the XLA
          implementation is (forward mode: its transpose; reverse mode: the gradient op,
          which inherits the implementation and so runs its own kernel).
        * ``transpose``, for a kernel linear in the op's last input (a gradient op's ``dY``):
          ``transpose(*other_inputs, *output_cotangents, interpret, **attributes)`` returns
          the last input's cotangent as a 1-tuple; output cotangents that are zero arrive
          as None.
          Reverse mode runs the kernel, forward mode the transpose, and derivatives in the
          other inputs are those of the XLA implementation, the kernel's twin
          (:func:`jaxops._ad.linear_pair`); a ``transpose`` function is its own twin, so it
          is written in differentiable ``jnp``.
        * ``jvp(primals, tangents, *, interpret, **attributes) -> (y, t_y)``, for a fused
          kernel that computes its gradient in the forward pass: the op's linearization
          (tangents of inputs not differentiated are None).  Kernel outputs it uses are
          differentiated as their XLA twin (:func:`jaxops._ad.with_twin_derivative`), and a
          linear part meant to run a gradient op's kernel in reverse mode is that gradient
          op's transpose (``jax.linear_transpose``).

        ``supports(**attributes)`` names attribute values the kernel does not handle (None:
        all)."""
        schema = self.schema
        if name == "xla" or name not in schema.implementations:
            raise ValueError(f"{schema.name}: the schema lists no {name!r} "
                             f"implementation ({dict(schema.implementations)})")
        if jvp is not None and transpose is not None:
            raise ValueError(f"{schema.name}: declare one of jvp= (a fused kernel's own "
                             "linearization) and transpose= (a kernel linear in its last "
                             "input), not both.")

        def register(fn):
            self._kernels[name] = Kernel(fn, jvp, transpose, supports)
            self._with_gradient.cache_clear()
            return fn

        return register

    # ------------------------------------------------------------------------ differentiation
    def _implementation_of(self, choice: str, attrs: dict):
        """(forward, jvp override or None) of an implementation choice."""
        if choice == "xla":
            return functools.partial(self._impl, **attrs), None
        kernel, interpret = self._kernels["pallas"], choice == "pallas_interpret"
        forward = functools.partial(kernel.fn, interpret=interpret, **attrs)
        if kernel.transpose is not None:
            return self._linear_kernel(kernel, interpret, attrs), None
        jvp = kernel.jvp and functools.partial(kernel.jvp, interpret=interpret, **attrs)
        return forward, jvp

    def _linear_kernel(self, kernel: Kernel, interpret: bool, attrs: dict):
        """A kernel linear in the last input, paired with its declared transpose and
        differentiated in the other inputs as the XLA implementation (``defimpl``)."""

        def tupled(f):  # the pair's functions return tuples
            def g(*args):
                out = f(*args)
                return out if isinstance(out, tuple) else (out,)

            return g

        apply = tupled(functools.partial(kernel.fn, interpret=interpret, **attrs))
        twin = tupled(functools.partial(self._impl, **attrs))
        transpose = functools.partial(kernel.transpose, interpret=interpret, **attrs)
        pair = linear_pair(apply, transpose, twin=twin, name=f"{self.schema.function}_kernel")
        n, single = self._n_inputs - 1, len(self.schema.outputs) == 1

        def run(*xs):
            outs = pair(xs[:n], xs[n:])
            return outs[0] if single else outs

        return run

    def _make_with_gradient(self, attr_items: tuple[tuple[str, Any], ...],
                            choice: str) -> Callable[..., Any]:
        attrs = dict(attr_items)
        run, jvp_override = self._implementation_of(choice, attrs)
        if self._vjp is None and jvp_override is None:
            # a gradient op: JAX differentiates its implementation (wrapped only to refuse
            # the float inputs its schema marks non-differentiable)
            return self._refusing(run) if self._nondifferentiable_floats else run
        registered_vjp, differentiable = self._vjp, self._differentiable

        def forward(*xs):
            return run(*xs)

        forward.__name__ = forward.__qualname__ = self._impl.__name__  # custom_jvp_call[name=]
        fn = jax.custom_jvp(forward)

        # Symbolic zeros: an input that is not differentiated (closed over, or not an
        # argument of jvp/grad) arrives as a SymbolicZero and stays one.  Only the
        # differentiated inputs' cotangents are transposed, so no zero tangent is
        # materialized and multiplied into the result: that would cost work (a matmul per
        # closed-over matrix), turn 0 * inf into NaN, and hit an XLA CPU miscompile of dots
        # against zero constants (docs/design.md, "Symbolic zeros").
        @functools.partial(fn.defjvp, symbolic_zeros=True)
        def jvp(primals, tangents):
            tangents = self._checked_tangents(tangents)
            if jvp_override is not None:  # a fused kernel's own linearization
                return jvp_override(primals, tangents)
            y = fn(*primals)
            present = [i for i in differentiable if primals[i] is not None]
            wrt = [k for k, i in enumerate(present) if tangents[i] is not None]

            def vjp(dy):
                with _state_set("implementation", choice):  # gradient ops: the same
                    cts = registered_vjp(*primals, y, dy, **attrs)
                cts = self._checked_cotangents(cts, primals, present)
                return tuple(cts[k] for k in wrt)

            (t_out,) = jax.linear_transpose(vjp, y)(tuple(tangents[present[k]] for k in wrt))
            return y, t_out

        return fn

    def _refusing(self, run: Callable[..., Any]) -> Callable[..., Any]:
        """``run`` differentiated by JAX, refusing its non-differentiable float inputs."""
        fn = jax.custom_jvp(run)

        @functools.partial(fn.defjvp, symbolic_zeros=True)
        def jvp(primals, tangents):
            tangents = self._checked_tangents(tangents)
            moving = [i for i, t in enumerate(tangents) if t is not None]

            def of_moving(*values):
                args = list(primals)
                for i, v in zip(moving, values, strict=True):
                    args[i] = v
                return run(*args)

            return jax.jvp(of_moving, tuple(primals[i] for i in moving),
                           tuple(tangents[i] for i in moving))

        return fn

    def _checked_tangents(self, tangents: Sequence[Any]) -> list[Any]:
        """The tangents with None for symbolic zeros (inputs not differentiated); a float
        input the schema marks non-differentiable is refused when it is differentiated, never
        given a silent zero derivative."""
        tangents = [None if t is None or isinstance(t, SymbolicZero) else t for t in tangents]
        for i, t in enumerate(tangents):
            if t is not None and i not in self._differentiable and jax.numpy.issubdtype(
                    jax.typeof(t).dtype, jax.numpy.inexact):
                raise self.schema.nondifferentiable_error(i)
        return tangents


def op_of(schema: OpSchema) -> Op | None:
    """The :class:`Op` made of ``schema`` (the registered record itself), or None."""
    op = _OPS.get(schema.name)
    return op if op is not None and op.schema is schema else None


def _is_default(attribute: Attribute, value: Any) -> bool:
    default = attribute.default
    return type(value) is type(default) and value == default


# ------------------------------------------------------------------------------------ defop
_ATTRIBUTE_TYPES = {bool: "bool", int: "int", float: "float", str: "string"}


def _inferred_schema(impl: Callable[..., Any], *, name: str, domain: str, since_version: int,
                     doc: str | None, outputs: Sequence[str], type_constraints,
                     allow_inplace, gradient: str | None) -> OpSchema:
    """A schema read from ``impl``'s signature: positional parameters are inputs (optional
    when their default is None), keyword-only parameters with defaults are attributes typed
    by their default (or annotation), every input and output of type T (the float types);
    shapes and dtypes are inferred by tracing ``impl`` (``jax.eval_shape``)."""
    where = f"jaxops.defop(name={name!r})"
    inputs, attributes = [], []
    for p in inspect.signature(impl).parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            if p.default not in (inspect.Parameter.empty, None):
                raise ValueError(f"{where}: input {p.name!r} has default {p.default!r}; an "
                                 "input's only default is None (an optional input). Make "
                                 "it keyword-only (after *) to declare an attribute.")
            inputs.append(Parameter(p.name, optional=p.default is None))
        elif p.kind == p.KEYWORD_ONLY:
            kind = type(p.default) if p.default is not inspect.Parameter.empty else None
            if kind not in _ATTRIBUTE_TYPES:
                kind = {"float": float, "int": int, "bool": bool, "str": str}.get(
                    getattr(p.annotation, "__name__", p.annotation))
            if kind not in _ATTRIBUTE_TYPES:
                raise TypeError(f"{where}: attribute {p.name!r} needs a default (or an "
                                "annotation) of type float, int, bool or str, got "
                                f"default {p.default!r}; pass schema=OpSchema(...) for more.")
            attributes.append(Attribute(p.name, _ATTRIBUTE_TYPES[kind],
                                        None if p.default is inspect.Parameter.empty
                                        else p.default,
                                        required=p.default is inspect.Parameter.empty))
        else:
            raise TypeError(f"{where}: *args/**kwargs are not supported ({p}); list the "
                            "inputs and attributes.")

    # schema and in_avals positional-only: an attribute may be named ``s`` or ``in_avals``
    def infer(s, in_avals, /, **attrs):
        args = [None if a is None else jax.ShapeDtypeStruct(a.shape, a.dtype) for a in in_avals]
        out = jax.eval_shape(functools.partial(impl, **attrs), *args)
        out = out if isinstance(out, tuple) else (out,)
        if len(out) != len(s.outputs):
            raise ValueError(f"{s.qualified_name}: the implementation returns {len(out)} "
                             f"outputs, the schema declares {len(s.outputs)} "
                             f"({[p.name for p in s.outputs]}); pass outputs=(...) to defop.")
        _check_output_types(s, in_avals, out)
        return tuple(jax.ShapeDtypeStruct(o.shape, o.dtype) for o in out)

    return OpSchema(
        name=name, function=impl.__name__, domain=domain, since_version=since_version,
        doc=doc if doc is not None else (inspect.getdoc(impl) or "").split("\n")[0],
        inputs=tuple(inputs), outputs=tuple(Parameter(o) for o in outputs),
        attributes=tuple(attributes),
        type_constraints=type_constraints or {"T": FLOAT_TYPES}, elementwise=False,
        identical_type_and_shape=False, infer_fn=infer, allow_inplace=tuple(allow_inplace),
        gradient=gradient)


def _check_output_types(schema: OpSchema, in_avals, out) -> None:
    """The schema is the contract: an output of type parameter T has the dtype the inputs
    bound T to (strong inputs first; a Python scalar's weak dtype only when alone), so an
    implementation that returns float32 for float16 inputs is refused, never passed off as
    of type T (opcheck's dtypes check would otherwise compare the implementation with
    itself)."""
    bound: dict[str, Any] = {}
    present = [(p, a) for p, a in zip(schema.inputs, in_avals, strict=True) if a is not None]
    for strong in (True, False):
        for p, a in present:
            if bool(getattr(a, "weak_type", False)) != strong:
                bound.setdefault(p.type_param, a.dtype)
    for p, o in zip(schema.outputs, out, strict=True):
        want = bound.get(p.type_param)
        if want is not None and o.dtype != want:
            raise TypeError(
                f"{schema.qualified_name}: output {p.name!r} has dtype {o.dtype}, but the "
                f"schema declares it {p.type_param}, which is {np.dtype(want).name} here (the "
                f"inputs' dtype). Return {p.name} in its inputs' dtype (compute in float32 "
                f"and cast back: y.astype(x.dtype)), or declare {schema.name}'s outputs with "
                "a type of their own (schema=OpSchema(...)).")


def defop(schema: OpSchema | None = None, /, *, name: str | None = None,
          domain: str | None = None, since_version: int = 1, doc: str | None = None,
          outputs: Sequence[str] = ("Y",), type_constraints=None,
          allow_inplace: Sequence[tuple[int, int]] = (),
          gradient: str | None = None) -> Callable[[Callable[..., Any]], Op]:
    """Make an :class:`Op` of an XLA implementation.

    Either give a full :class:`jaxops.OpSchema` (``defop(SCHEMA)``: type constraints,
    shape and cost inference, in-place pairs, kernels) or let the schema be read from the
    implementation's signature (``defop(name="Squareplus", domain="example.ops")``):
    positional parameters are the inputs (arrays; a default of None makes one optional),
    keyword-only parameters with defaults the static attributes (typed by the default:
    float, int, bool or str), every input of the float types, outputs named ``outputs``,
    shapes and dtypes inferred by tracing the implementation.  Either way the schema is
    registered (``jaxops.schema.get(name)``) and the op gets what a built-in op gets:
    checks at trace time, ``jit`` with static attributes, ``vmap``, a registered gradient in
    both AD modes (:meth:`Op.defgrad`), ONNX export as one node of its domain, Flax use.

    Example:
      >>> import jax, jax.numpy as jnp, jaxops
      >>> @jaxops.defop(name="DocSquareplus", domain="example.ops")
      ... def doc_squareplus(x, *, b=4.0):
      ...     return (x + jnp.sqrt(x * x + b)) / 2
      >>> doc_squareplus(jnp.array([0.0, 2.0]))
      Array([1.       , 2.4142137], dtype=float32)
    """
    if schema is not None and name is not None:
        raise TypeError("jaxops.defop: pass a schema or name=..., not both.")
    if schema is None and (name is None or domain is None):
        raise TypeError("jaxops.defop: pass name= and domain= (a user op lives in its own "
                        "domain, e.g. domain='example.ops'), or a full OpSchema.")
    if schema is not None and not isinstance(schema, OpSchema):
        raise TypeError(f"jaxops.defop: expected an OpSchema, got {type(schema).__name__}; "
                        "use @jaxops.defop(name=..., domain=...) for a schema read from the "
                        "signature.")

    def decorate(impl: Callable[..., Any]) -> Op:
        s = schema
        if s is None:
            if "implementation" in inspect.signature(impl).parameters:
                raise ValueError(f"jaxops.defop(name={name!r}): 'implementation' is reserved "
                                 "(every op takes implementation=...), so it cannot name an "
                                 "input or attribute; rename that parameter.")
            if domain in ("", "ai.onnx", JAXOPS_DOMAIN):
                raise ValueError(f"jaxops.defop(name={name!r}): the domain {domain!r} belongs "
                                 "to ONNX or to jaxops' own ops; give your op a domain of its "
                                 "own (e.g. 'example.ops').")
            s = _schema_registry.register(_inferred_schema(
                impl, name=name, domain=domain, since_version=since_version, doc=doc,
                outputs=outputs, type_constraints=type_constraints,
                allow_inplace=allow_inplace, gradient=gradient))
            try:
                return Op(impl, s)
            except BaseException:  # the name is not taken by an op that was never made
                _schema_registry.unregister(s.name)
                raise
        return Op(impl, s)

    return decorate
