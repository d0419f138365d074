"""Export recording: inside :func:`recording`, each jaxops op call is one ``jaxops_op``
equation carrying the op's schema and attributes.

An exporter (:mod:`jaxops.onnx`) needs each op call as one node with its schema and
attributes; in an ordinary trace an op is a ``jit`` whose static attributes are baked in.
Inside ``recording()`` the public ops bind ``jaxops_op`` instead: a primitive whose abstract
evaluation is the schema's ``infer`` and whose implementation is the op itself, so a recorded
function still runs.  Each recorded call is a ``jax.custom_vjp`` whose backward calls the
registered gradient op, recorded in turn, so ``jax.grad`` of a recorded function exports as a
graph of ops and gradient ops.

Why the mode is a JAX user context (``jax.make_user_context``) and not a flag of our own:
JAX caches traces -- ``jit`` (the user's, nested ones, each op's own), ``checkpoint``,
custom-derivative rules -- keyed by the function, its arguments and JAX's trace context.  A
flag outside that key let a recorded trace (``custom_vjp`` equations, which reject ``jvp``,
``vmap`` and ``hessian``) be served to ordinary calls after an export, and an ordinary trace
(plain primitives) be served to an export after a call.  A user context is part of the trace
context and of the jit cache key, so the two modes never share a cache entry; its value is
thread-local when set by ``with``, so one thread exporting leaves the others' traces ordinary.
``jax.make_user_context`` is public API in jax 0.10.2 and 0.11 (the range jaxops supports).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core
from jax.custom_derivatives import SymbolicZero
from jax.interpreters import mlir

__all__ = ["is_recording", "jaxops_op_p", "record", "recording"]

# Made once, at import: JAX documents adding user contexts as not thread-safe.
_RECORDING = jax.make_user_context(False)


def recording():
    """Within this context (in this thread), jaxops ops trace to one ``jaxops_op`` equation
    each, and JAX's caches hold those traces apart from ordinary ones."""
    return _RECORDING(True)


def _not_recording():
    return _RECORDING(False)


def is_recording() -> bool:
    """Whether jaxops ops called now are recorded (see :func:`recording`)."""
    return bool(_RECORDING.value)


class _ByIdentity:
    """A hashable handle on an unhashable value (a schema): equation params must hash."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return id(self.value)

    def __eq__(self, other):
        return isinstance(other, _ByIdentity) and other.value is self.value

    def __repr__(self):
        return getattr(self.value, "name", repr(self.value))


jaxops_op_p = jax.extend.core.Primitive("jaxops_op")
jaxops_op_p.multiple_results = True


def _recorded_abstract_eval(*avals, schema, attrs, present, run):
    it = iter(avals)
    full = [next(it) if p else None for p in present]
    return [jax.core.ShapedArray(a.shape, a.dtype)
            for a in schema.value.infer(*full, **dict(attrs))]


def _recorded_impl(*arrays, schema, attrs, present, run):
    it = iter(arrays)
    with _not_recording():  # the op's own trace is the ordinary one
        out = run.value(*(next(it) if p else None for p in present), **dict(attrs))
    return list(out) if isinstance(out, tuple) else [out]


jaxops_op_p.def_abstract_eval(_recorded_abstract_eval)
jaxops_op_p.def_impl(_recorded_impl)
mlir.register_lowering(jaxops_op_p, mlir.lower_fun(_recorded_impl, multiple_results=True))


def _recorded_call(schema, run, attrs, present, vjp, differentiable):
    """The recorded form of one op call: a ``jaxops_op`` equation inside a ``jax.custom_vjp``
    whose backward calls the op's registered gradient (recorded too: ``jax.grad`` of a
    recorded function records its gradient ops as equations), or, for an op without one, is
    JAX's own derivative of the implementation (plain primitives).  Forward mode is not
    recorded: the exporter writes inference and reverse-mode training graphs."""

    def bind(*xs):
        outs = jaxops_op_p.bind(*xs, schema=_ByIdentity(schema), attrs=attrs, present=present,
                                run=_ByIdentity(run))
        return outs[0] if len(outs) == 1 else tuple(outs)

    def full(xs):
        it = iter(xs)
        return [next(it) if p else None for p in present]

    call = jax.custom_vjp(bind)
    slots = [i for i, p in enumerate(present) if p]  # argument index of each of xs

    def fwd(*primals):
        # symbolic zeros: ``perturbed`` says which inputs are differentiated, so a float
        # input the registered gradient does not cover is refused here, as in an ordinary
        # trace, instead of exporting a zero derivative
        xs = tuple(p.value for p in primals)
        for k, p in enumerate(primals):
            if (vjp is not None and p.perturbed and slots[k] not in differentiable
                    and jax.numpy.issubdtype(jax.typeof(p.value).dtype, jax.numpy.inexact)):
                raise schema.nondifferentiable_error(slots[k])
        y = bind(*xs)
        return y, (xs, y)

    def bwd(res, dy):
        xs, y = res
        dy = jax.tree.map(_instantiate, dy, y, is_leaf=lambda c: isinstance(c, SymbolicZero))
        # an op without a registered gradient is differentiated by JAX in all its float
        # inputs, as in an ordinary trace
        wrt = [k for k, i in enumerate(slots)
               if (i in differentiable if vjp is not None else
                   jax.numpy.issubdtype(jax.typeof(xs[k]).dtype, jax.numpy.inexact))]
        if vjp is not None:
            cts = vjp(*full(xs), y, dy, **dict(attrs))
            cts = cts if isinstance(cts, tuple) else (cts,)
        else:
            def of_wrt(*d):
                args = list(xs)
                for k, v in zip(wrt, d, strict=True):
                    args[k] = v
                return run(*full(args), **dict(attrs))

            with _not_recording():
                _, pull = jax.vjp(of_wrt, *(xs[k] for k in wrt))
                cts = pull(dy)
        by_slot = dict(zip(wrt, cts, strict=True))
        # one cotangent per present input: None for labels and other non-differentiables
        return tuple(by_slot.get(k) for k in range(len(xs)))

    call.defvjp(fwd, bwd, symbolic_zeros=True)
    return call


def _instantiate(ct, like):
    return jax.numpy.zeros_like(like) if isinstance(ct, SymbolicZero) else ct


def record(schema, run: Callable[..., Any], vjp: Callable[..., Any] | None,
           differentiable: Sequence[int], arrays: Sequence[Any], avals: Sequence[Any],
           attrs: dict[str, Any]):
    """One recorded call of the op ``schema`` describes: ``run`` is the op's ordinary (jitted)
    form, ``vjp`` its registered gradient, ``arrays`` its inputs (None where omitted) and
    ``avals`` their abstract values (weak-typed for Python scalars)."""
    present = tuple(a is not None for a in arrays)
    call = _recorded_call(schema, run, tuple(attrs.items()), present, vjp, tuple(differentiable))
    # a Python scalar takes the dtype of its type parameter's arrays, as in jnp
    strong = {p.type_param: v.dtype for p, v in zip(schema.inputs, avals, strict=True)
              if v is not None and not v.weak_type}
    return call(*(jax.numpy.asarray(a, strong.get(p.type_param) if v.weak_type else None)
                  for p, a, v in zip(schema.inputs, arrays, avals, strict=True)
                  if a is not None))
