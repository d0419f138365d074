"""Per-platform implementations: which implementation a call runs, and the refusal of a
kernel on a platform that lacks it.

Caffe2 registers an operator per device (REGISTER_CPU_OPERATOR / REGISTER_CUDA_OPERATOR).
Here an op has its XLA implementation everywhere and may register a Pallas kernel
(``op.defimpl("pallas")``) for the platforms its schema lists.  A call picks one by the
platform it is compiled for (``lax.platform_dependent``: one jitted function, exported for
several platforms, runs the right one on each), or as ``implementation=`` says:

* ``"xla"``: the XLA implementation, on every platform;
* ``"pallas"``: the kernel; compiling the call for a platform without it raises (never a
  silent fallback);
* ``"pallas_interpret"``: the kernel run by Pallas' interpreter, on any platform (tests);
* None: the schema's ``default_implementation`` for the platform, else XLA.

The gradient ops called by an op's registered gradient inherit the choice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.extend.core
from jax.interpreters import ad, batching, mlir

__all__ = ["IMPLEMENTATIONS", "Implementation", "Kernel", "unavailable"]

IMPLEMENTATIONS = ("xla", "pallas", "pallas_interpret")
Implementation = Literal["xla", "pallas", "pallas_interpret"]


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



class Kernel:
    """A registered non-XLA implementation (``op.defimpl``): ``fn(*inputs, interpret,
    **attrs)``, how it is differentiated (``jvp`` or ``transpose``, at most one; neither: the
    op's registered gradient) and ``supports(**attrs) -> reason | None``."""

    def __init__(self, fn: Callable[..., Any], jvp: Callable[..., Any] | None,
                 transpose: Callable[..., Any] | None,
                 supports: Callable[..., str | None]):
        self.fn, self.jvp, self.transpose, self.supports = fn, jvp, transpose, supports


def unavailable(schema, arrays, attrs):
    """A call of ``schema``'s Pallas kernel compiled for a platform without it: traced,
    differentiated and batched like any call, refused with a clear error when lowered."""
    avals = [None if a is None else jax.typeof(a) for a in arrays]
    out_avals = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype)
                      for a in schema.infer(*avals, **attrs))
    where = ", ".join(schema.implementations["pallas"])
    message = (f"{schema.qualified_name}: implementation='pallas' runs on {where}, "
               "but this call is compiled for {platform}. Use implementation='xla' "
               "(or no implementation=, which picks the platform's default), or "
               "'pallas_interpret' to run the kernel in Pallas' interpreter.")
    outs = _unavailable_p.bind(*(a for a in arrays if a is not None), out_avals=out_avals,
                               message=message)
    return outs[0] if len(outs) == 1 else tuple(outs)
