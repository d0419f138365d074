"""Kernels on sharded arrays: each device runs the kernel on its own shard (``shard_map``).

A ``pallas_call`` sees whole arrays; on an explicitly sharded array (a mesh with
``AxisType.Explicit``, where the sharding is part of the type) it cannot even be traced
("sharded ref can only be sliced along unsharded axes").  The row kernels are independent per
row, so :func:`per_row_shard` runs them under ``jax.shard_map`` with the rows split as an
operand's rows are and every other axis whole (a row is one program's work): no
communication, unless another axis was sharded (it is gathered first) or the operands' rows
disagree (they are resharded alike).

Under automatic sharding (``AxisType.Auto``) types carry no sharding: the kernel is called on
the global array and XLA's partitioner decides (a GPU kernel is a custom call, so it gathers
the operands).  Explicit sharding is what jaxops' tests use (``jax.make_mesh``'s default).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

__all__ = ["per_channel_reduction", "per_row_shard", "row_axes", "sharded_axes"]


def _spec(x) -> tuple:
    sharding = getattr(jax.typeof(x), "sharding", None)
    spec = tuple(getattr(sharding, "spec", ()))
    return spec + (None,) * (x.ndim - len(spec))


def _names(entry) -> tuple[str, ...]:
    """The mesh axis names of one PartitionSpec entry."""
    return () if entry is None else tuple(entry) if isinstance(entry, tuple) else (entry,)


def row_axes(x) -> tuple[str, ...]:
    """Mesh axes sharding the first axis of ``x`` in its type (explicit sharding)."""
    return _names(_spec(x)[0]) if x.ndim else ()


def sharded_axes(x) -> tuple[str, ...]:
    """Mesh axes sharding any axis of ``x`` in its type."""
    return tuple(a for entry in _spec(x) for a in _names(entry))


def per_row_shard(kernel: Callable) -> Callable:
    """``kernel(*arrays, **static)`` on rows (axis 0 of every operand and output), run on each
    shard of the rows, split as in the first operand whose rows are sharded; without an
    explicit mesh (on the operands or in context) it is called directly."""

    def run(*arrays, **static):
        sharded = [a for a in arrays if sharded_axes(a)]
        mesh = (jax.typeof(sharded[0]).sharding.mesh if sharded
                else jax.sharding.get_abstract_mesh())
        if mesh.empty or AxisType.Explicit not in mesh.axis_types:
            return kernel(*arrays, **static)
        # Explicit sharding: rows split as in the first operand whose rows are sharded (all
        # operands resharded alike, their other axes gathered: a no-op where they already
        # are); replicated operands under an explicit mesh run whole on every device (Pallas'
        # interpreter cannot trace them outside shard_map there).
        axes = next((row_axes(a) for a in sharded if row_axes(a)), ())
        rows = P(axes if len(axes) > 1 else (axes[0] if axes else None))
        arrays = [jax.sharding.reshard(a, NamedSharding(mesh, P(*rows, *(None,) * (a.ndim - 1))))
                  if sharded else a for a in arrays]
        # check_vma=False: pallas_call's outputs carry no varying-axes annotation
        return jax.shard_map(functools.partial(kernel, **static), mesh=mesh, in_specs=rows,
                             out_specs=rows, check_vma=False)(*arrays)

    @functools.wraps(kernel)
    def call(*arrays, **static):
        f = jax.custom_batching.custom_vmap(functools.partial(run, **static))

        @f.def_vmap
        def stacked(axis_size, in_batched, *arrays):
            # vmap of a row kernel is the kernel on the stacked rows (so a batch axis that is
            # sharded becomes sharded rows, which Pallas' own batching rule cannot handle)
            arrays = [a if b else jnp.broadcast_to(a, (axis_size, *a.shape))
                      for a, b in zip(arrays, in_batched, strict=True)]
            # merge (batch, rows) with a sharded axis major, as explicit sharding requires
            swap = any(_spec(a)[1] is not None and _spec(a)[0] is None for a in arrays)
            if swap:
                arrays = [jnp.swapaxes(a, 0, 1) for a in arrays]
            outs = f(*(a.reshape(a.shape[0] * a.shape[1], *a.shape[2:]) for a in arrays))
            major = arrays[0].shape[0]
            outs = jax.tree.map(lambda o: o.reshape(major, -1, *o.shape[1:]), outs)
            if swap:
                outs = jax.tree.map(lambda o: jnp.swapaxes(o, 0, 1), outs)
            return outs, jax.tree.map(lambda _: True, outs)

        return f(*arrays)

    return call


def per_channel_reduction(local: Callable, x, *operands):
    """``local(x, *operands, axes) -> (C,) arrays``: per-channel reductions of ``x`` (N, C,
    ...) over every axis but 1, run on each shard of an explicitly sharded ``x``.

    ``operands`` are shaped like ``x`` (sharded alike) or per-channel (C,) vectors (sharded
    like x's channel axis).  ``axes`` are the mesh axes that shard x's reduced axes: ``local``
    must combine its shard's partial results over them (``lax.psum``/``pmean``); shards
    hold equal numbers of elements (explicit sharding splits evenly)."""
    sharded = [a for a in (x, *operands) if sharded_axes(a)]
    mesh = (jax.typeof(sharded[0]).sharding.mesh if sharded
            else jax.sharding.get_abstract_mesh())
    if mesh.empty or AxisType.Explicit not in mesh.axis_types:
        return local(x, *operands, ())
    spec = _spec(x)
    channel = P(spec[1])
    specs = [P(*spec) if a.ndim == x.ndim else channel for a in operands]
    operands = [jax.sharding.reshard(a, NamedSharding(mesh, s)) for a, s in zip(operands, specs,
                                                                                strict=True)]
    axes = tuple(a for i, entry in enumerate(spec) if i != 1 for a in _names(entry))
    return jax.shard_map(lambda *args: local(*args, axes), mesh=mesh,
                         in_specs=(P(*spec), *specs), out_specs=channel,
                         check_vma=False)(x, *operands)
