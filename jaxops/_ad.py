"""Linear maps with a chosen transpose: how a backward kernel becomes a gradient op.

A registered gradient op is linear in its cotangent (``dy``); jaxops' mechanism
(:mod:`jaxops._op`) gets forward mode by transposing it and reverse mode by transposing that
back.  ``jax.linear_transpose`` can transpose ``jnp`` code, but not a ``pallas_call`` (an opaque
kernel) and not a chunked ``lax.scan`` without stacking every chunk's residuals (which is
the N x V memory a chunked loss exists to avoid).  :func:`linear_pair` declares the
transpose instead: two primitives, each the other's transpose, so

* reverse mode runs ``apply`` (the backward kernel or scan) and never differentiates it;
* forward mode runs ``transpose`` (usually an XLA formula of the tangent);
* derivatives with respect to the residuals (second order) come from ``jax.jvp`` of
  ``twin``, an ordinary differentiable formula of ``apply`` (the XLA reference);
* ``vmap`` batches the functions themselves (``pallas_call`` and ``scan`` batch) and keeps
  the pair, so ``grad(vmap(f))`` still transposes to the kernel.

``jax.custom_derivatives.linear_call`` is the same idea without batching and without
derivatives in the residuals, which jaxops needs (``vmap(grad)``, ``hessian``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core
from jax.interpreters import ad, batching, mlir

__all__ = ["linear_pair", "with_twin_derivative"]


class _Fn:
    """A callable parameter of an equation (hashable by identity, printable by name)."""

    __slots__ = ("fn", "name", "__weakref__")

    def __init__(self, fn, name):
        self.fn, self.name = fn, name

    def __call__(self, *args):
        return self.fn(*args)

    def __repr__(self):
        return self.name


_pair_p = jax.extend.core.Primitive("jaxops_linear")
_pair_p.multiple_results = True

# Symbolic zeros.  A linear input whose tangent or cotangent is JAX's symbolic zero is not
# materialized: the pair's functions receive ``None`` for it (and must read None as zero),
# and the equation binds only the present ones (``lin_mask``).  Outputs nobody asked for are
# not returned (``out_mask``; None: all), so XLA drops their computation.  Instantiating the zeros
# instead costs a full matmul against a zero matrix for every closed-over input (the h @ tw
# of linear_cross_entropy's tangent), and XLA CPU (jax 0.10.2) miscompiles a dot against a
# broadcast zero constant, returning uninitialized memory (docs/design.md).


def _expand(lin, lin_mask):
    """The present linear operands as the full list, None where absent."""
    it = iter(lin)
    return [next(it) if m else None for m in lin_mask]


def _call(fn, args, num_res, lin_mask, out_mask):
    res, lin = args[:num_res], _expand(args[num_res:], lin_mask)
    outs = list(fn(*res, *lin))
    return outs if out_mask is None else [o for o, k in zip(outs, out_mask, strict=True) if k]


def _bind(*args, apply, transpose, twin, twin_t, num_res, lin_mask, out_mask):
    """Bind the pair with ``apply`` traced at these operands: the equation carries its
    jaxpr, so JAX sees what the lowering will hold (a kernel under automatic sharding is a
    ``custom_partitioning`` call, whose lowering needs the device assignment)."""
    jaxpr = jax.make_jaxpr(lambda *a: _call(apply.fn, a, num_res, lin_mask, out_mask))(*args)
    return _pair_p.bind(*args, jaxpr=jaxpr, apply=apply, transpose=transpose, twin=twin,
                        twin_t=twin_t, num_res=num_res, lin_mask=lin_mask, out_mask=out_mask)


def _abstract_eval(*avals, jaxpr, **fns):
    return [jax.core.ShapedArray(o.shape, o.dtype) for o in jaxpr.out_avals]


def _impl(*args, jaxpr, **params):
    return list(jax.jit(jax.extend.core.jaxpr_as_fun(jaxpr))(*args))


def _lower(ctx, *args, jaxpr, **fns):
    return mlir.lower_fun(jax.extend.core.jaxpr_as_fun(jaxpr), multiple_results=True)(
        ctx, *args)


def _transpose_rule(cts, *args, jaxpr, apply, transpose, twin, twin_t, num_res, lin_mask,
                    out_mask):
    res = args[:num_res]
    assert not any(ad.is_undefined_primal(r) for r in res), "residuals must be known"
    present = [c for c in cts if type(c) is not ad.Zero]
    if not present:
        return [None] * len(args)
    # the cotangents, placed among all of apply's outputs (None: zero or not returned)
    it = iter(cts)
    full = list(cts) if out_mask is None else [next(it) if k else None for k in out_mask]
    full = [None if c is None or type(c) is ad.Zero else c for c in full]
    lin_cts = _bind(*res, *(c for c in full if c is not None), apply=transpose,
                    transpose=apply, twin=twin_t, twin_t=twin, num_res=num_res,
                    lin_mask=tuple(c is not None for c in full), out_mask=lin_mask)
    return [None] * num_res + list(lin_cts)


def _jvp_rule(primals, tangents, jaxpr, apply, transpose, twin, twin_t, num_res, lin_mask,
              out_mask):
    fns = dict(apply=apply, transpose=transpose, twin=twin, twin_t=twin_t, num_res=num_res)
    res, lin = primals[:num_res], primals[num_res:]
    t_res, t_lin = tangents[:num_res], tangents[num_res:]
    out = _pair_p.bind(*primals, jaxpr=jaxpr, lin_mask=lin_mask, out_mask=out_mask, **fns)
    t_out = None
    nonzero = tuple(type(t) is not ad.Zero for t in t_lin)
    if any(nonzero):  # the linear part: the pair itself, at the nonzero tangents
        mask = tuple(_expand(nonzero, lin_mask))
        t_out = _bind(*res, *(t for t in t_lin if type(t) is not ad.Zero), **fns,
                      lin_mask=tuple(bool(m) for m in mask), out_mask=out_mask)
    moving = [k for k, t in enumerate(t_res) if type(t) is not ad.Zero]
    if moving:  # through the residuals: the twin, differentiated in the nonzero ones only

        def of_moving(*r):
            full = list(res)
            for k, v in zip(moving, r, strict=True):
                full[k] = v
            return tuple(_call(twin.fn, (*full, *lin), num_res, lin_mask, out_mask))

        _, t_twin = jax.jvp(of_moving, tuple(res[k] for k in moving),
                            tuple(t_res[k] for k in moving))
        t_out = list(t_twin) if t_out is None else [a + b for a, b in zip(t_out, t_twin,
                                                                          strict=True)]
    if t_out is None:
        t_out = [ad.Zero(jax.typeof(o).to_tangent_aval()) for o in out]
    return out, t_out


def _batch_rule(args, dims, jaxpr, apply, transpose, twin, twin_t, num_res, lin_mask,
                out_mask):
    # every operand batched on axis 0, so each function's transpose stays its transpose
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
    args = [jax.numpy.broadcast_to(a, (size, *a.shape)) if d is None
            else jax.numpy.moveaxis(a, d, 0) for a, d in zip(args, dims, strict=True)]

    def batched(f):  # None operands (symbolic zeros) and outputs are empty pytrees to vmap
        return _Fn(jax.vmap(f.fn), f"vmap({f.name})")

    outs = _bind(*args, apply=batched(apply), transpose=batched(transpose),
                 twin=batched(twin), twin_t=batched(twin_t), num_res=num_res,
                 lin_mask=lin_mask, out_mask=out_mask)
    return outs, [0] * len(outs)


_pair_p.def_abstract_eval(_abstract_eval)
_pair_p.def_impl(_impl)
mlir.register_lowering(_pair_p, _lower)
ad.primitive_jvps[_pair_p] = _jvp_rule
ad.primitive_transposes[_pair_p] = _transpose_rule
batching.primitive_batchers[_pair_p] = _batch_rule


def linear_pair(
    apply: Callable[..., tuple[jax.Array, ...]],
    transpose: Callable[..., tuple[jax.Array, ...]],
    *,
    twin: Callable[..., tuple[jax.Array, ...]] | None = None,
    twin_transpose: Callable[..., tuple[jax.Array, ...]] | None = None,
    name: str | None = None,
) -> Callable[..., tuple[jax.Array, ...]]:
    """``call(res, lin) -> outs``: ``apply(*res, *lin)``, linear in ``lin``, whose transpose
    is ``transpose(*res, *cts)``.

    ``twin``/``twin_transpose`` compute the same maps as ``apply``/``transpose`` in ordinary
    differentiable JAX (default: the functions themselves); they give derivatives with
    respect to ``res``.  Every function takes arrays and returns a tuple of arrays.  A linear
    operand that is zero (a symbolic zero tangent or cotangent, or None in ``lin``) is passed
    as ``None``: a function with several linear operands must read None as zero and skip its
    term.  An all-zero ``lin`` is never passed.
    """
    name = name or getattr(apply, "__name__", "linear")
    fns = dict(apply=_Fn(apply, name), transpose=_Fn(transpose, f"{name}_transpose"),
               twin=_Fn(twin or apply, f"{name}_twin"),
               twin_t=_Fn(twin_transpose or transpose, f"{name}_twin_transpose"))

    @functools.wraps(apply)
    def call(res: tuple, lin: tuple) -> tuple[jax.Array, ...]:
        return tuple(_bind(*res, *(x for x in lin if x is not None), num_res=len(res),
                           lin_mask=tuple(x is not None for x in lin), out_mask=None, **fns))

    return call


def with_twin_derivative(kernel: Callable[..., Any],
                         twin: Callable[..., Any]) -> Callable[..., Any]:
    """``kernel``, differentiated as ``twin`` (its XLA reference, same inputs and outputs): a
    Pallas kernel is opaque to JAX, so its outputs take the twin's JVP, hence every
    derivative order.  Bind static arguments with ``functools.partial`` first."""
    fn = jax.custom_jvp(kernel)

    @fn.defjvp
    def _jvp(primals, tangents):
        return kernel(*primals), jax.jvp(twin, primals, tangents)[1]

    return fn
