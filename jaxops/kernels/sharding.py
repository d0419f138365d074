"""Kernels on sharded arrays: each device runs the kernel on its own shard.

A ``pallas_call`` sees whole arrays.  How a kernel call finds its shard depends on how the
operands are sharded:

* **Explicit sharding** (a mesh with ``AxisType.Explicit``, where the sharding is part of
  the type; ``jax.make_mesh``'s default): a ``pallas_call`` cannot even be traced on such an
  array ("sharded ref can only be sliced along unsharded axes"), so the kernel runs under
  ``jax.shard_map`` with the operands' own partition.
* **Automatic sharding** (``AxisType.Auto``: ``jax.jit`` with ``NamedSharding`` inputs or
  ``in_shardings``, the types carry no sharding): the kernel is a
  ``jax.experimental.custom_partitioning`` call, so XLA's partitioner asks it, at compile
  time, how to split its operands, and it answers with the operands' partition and a
  per-shard function -- left to itself, the partitioner would gather the operands of an
  opaque GPU kernel on every device.  On one device (or inside a user's ``shard_map``) the
  call is the kernel itself.

Either way the per-shard work is the same.  The row kernels (:func:`per_row_shard`) are
independent per row: rows stay split as an operand's rows are, every other axis is gathered
(one program reads a whole row), and there is no other communication.  The batch-norm
reductions (:func:`per_channel_reduction`) reduce each shard and combine the partial
results over the mesh axes that split the reduced axes.

Under ``vmap`` (``custom_vmap``: ``custom_partitioning`` has no batching rule, and Pallas'
own rule fails in the interpreter on a sharded batch axis) the batch axes stay leading axes,
split as the operands' are, and the per-shard function takes them: a row kernel folds its
(batch, rows) block into rows, a reduction vmaps its per-shard function (there Pallas'
batching rule runs, on unsharded shards: one more grid axis).

Limits of ``custom_partitioning``: ``jax.export`` cannot serialize it (it is a Python
callback at compile time), so a multi-device program with automatic sharding through a
kernel does not export; and it needs the devices at lowering, so such a program cannot be
lowered for an ``AbstractMesh``.  Explicit sharding and single-device programs do both.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

__all__ = ["padded_spec", "per_channel_reduction", "per_row_shard", "row_axes",
           "sharded_axes"]


def padded_spec(x) -> tuple:
    """``x``'s partition spec (padded to its rank): from its type, or from a
    ``jax.ShapeDtypeStruct``'s sharding (custom_partitioning's callbacks)."""
    sharding = getattr(x, "sharding", None) if isinstance(x, jax.ShapeDtypeStruct) else \
        getattr(jax.typeof(x), "sharding", None)
    spec = tuple(getattr(sharding, "spec", ()))
    return spec + (None,) * (len(x.shape) - len(spec))


def _names(entry) -> tuple[str, ...]:
    """The mesh axis names of one PartitionSpec entry."""
    return () if entry is None else tuple(entry) if isinstance(entry, tuple) else (entry,)


def row_axes(x) -> tuple[str, ...]:
    """Mesh axes sharding the first axis of ``x`` in its type (explicit sharding)."""
    return _names(padded_spec(x)[0]) if x.ndim else ()


def sharded_axes(x) -> tuple[str, ...]:
    """Mesh axes sharding any axis of ``x`` in its type."""
    return tuple(a for entry in padded_spec(x) for a in _names(entry))


def _mode(arrays) -> tuple[str, jax.sharding.AbstractMesh]:
    """``"explicit"`` (sharding in the types), ``"manual"`` (inside a shard_map: the
    arrays are shards already) or ``"auto"``, with the mesh of the first operand sharded
    in its type, else the context's."""
    sharded = [a for a in arrays if sharded_axes(a)]
    mesh = (jax.typeof(sharded[0]).sharding.mesh if sharded
            else jax.sharding.get_abstract_mesh())
    if not mesh.empty and AxisType.Explicit in mesh.axis_types:
        return "explicit", mesh
    if not mesh.empty and AxisType.Manual in mesh.axis_types:
        return "manual", mesh
    return "auto", mesh


def _with_batch_axes(run: Callable, *arrays, batch: int = 0):
    """``run(batch, *arrays)``: the operands (and outputs) have ``batch`` leading vmapped
    axes; under ``vmap`` it runs again with one more, every operand broadcast to it."""
    f = jax.custom_batching.custom_vmap(lambda *a: run(batch, *a))

    @f.def_vmap
    def stacked(axis_size, in_batched, *arrays):
        arrays = [a if b else jnp.broadcast_to(a, (axis_size, *a.shape))
                  for a, b in zip(arrays, in_batched, strict=True)]
        outs = _with_batch_axes(run, *arrays, batch=batch + 1)
        return outs, jax.tree.map(lambda _: True, outs)

    return f(*arrays)


# -------------------------------------------------------------------------- row kernels

def per_row_shard(kernel: Callable) -> Callable:
    """``kernel(*arrays, **static)`` on rows (axis 0 of every operand and output), run on
    each shard of the rows, split as in the first operand whose rows are sharded.

    Under ``vmap`` the batch axes stay leading axes split as the operands' are, and each
    shard's kernel takes its (batch, rows) block as rows (a reshape of a contiguous block)."""

    @functools.wraps(kernel)
    def call(*arrays, **static):
        return _with_batch_axes(
            lambda batch, *a: _rows(lambda *r: kernel(*r, **static), batch + 1, *a), *arrays)

    return call


def _folded(kernel, lead):
    """``kernel`` on arrays whose ``lead`` leading axes are all rows."""

    def fn(*arrays):
        shape = arrays[0].shape[:lead]
        outs = kernel(*(a.reshape(math.prod(shape), *a.shape[lead:]) for a in arrays))
        return jax.tree.map(lambda o: o.reshape(*shape, *o.shape[1:]), outs)

    return fn


def _leading(specs, lead) -> tuple:
    """The ``lead`` leading spec entries of the first operand with any of them sharded."""
    return next((s[:lead] for s in specs if any(e is not None for e in s[:lead])),
                (None,) * lead)


def _rows(kernel, lead, *arrays):
    mode, mesh = _mode(arrays)
    fn = _folded(kernel, lead)
    if mode == "manual":
        return fn(*arrays)
    if mode == "auto":
        return _auto_rows(fn, lead, arrays)
    # Explicit sharding: the leading axes split as in the first operand with any of them
    # sharded, every other axis whole (all operands resharded alike: a no-op where they
    # already are).  Replicated operands under an explicit mesh also run in shard_map,
    # whole on every device: Pallas' interpreter cannot trace them outside it there.
    sharded = any(sharded_axes(a) for a in arrays)
    lead_spec = _leading([padded_spec(a) for a in arrays], lead)
    specs = [P(*lead_spec, *(None,) * (a.ndim - lead)) for a in arrays]
    if sharded:
        arrays = [jax.sharding.reshard(a, NamedSharding(mesh, s))
                  for a, s in zip(arrays, specs, strict=True)]
    # check_vma=False: pallas_call's outputs carry no varying-axes annotation
    return jax.shard_map(fn, mesh=mesh, in_specs=tuple(specs), out_specs=P(*lead_spec),
                         check_vma=False)(*arrays)


def _auto_rows(fn, lead, arrays):
    """``fn(*arrays)`` partitioned by XLA: the ``lead`` leading axes split as in the first
    operand with any of them sharded, every other axis whole."""

    def shardings(mesh, arg_shapes, result_shape):
        lead_spec = _leading([padded_spec(s) for s in arg_shapes], lead)

        def split(shape):
            return NamedSharding(mesh, P(*lead_spec, *(None,) * (len(shape.shape) - lead)))

        return tuple(map(split, arg_shapes)), jax.tree.map(split, result_shape)

    def partition(mesh, arg_shapes, result_shape):
        ins, outs = shardings(mesh, arg_shapes, result_shape)
        return mesh, fn, outs, ins

    # Shardy's rule: the leading axes are factors shared by every operand and output,
    # every other axis a factor of its own that must stay whole
    fresh = (f"k{i}" for i in itertools.count())
    rows = [f"r{i}" for i in range(lead)]
    whole: list[str] = []

    def factors(ndim):
        rest = [next(fresh) for _ in range(ndim - lead)]
        whole.extend(rest)
        return " ".join([*rows, *rest])

    outs = jax.tree.leaves(jax.eval_shape(fn, *arrays))
    rule = (", ".join(factors(a.ndim) for a in arrays) + " -> "
            + ", ".join(factors(o.ndim) for o in outs))
    call = custom_partitioning(fn)
    call.def_partition(partition, sharding_rule=rule, need_replication_factors=tuple(whole),
                       infer_sharding_from_operands=lambda *a: shardings(*a)[1])
    return call(*arrays)


# ------------------------------------------------------------------ channel reductions

def per_channel_reduction(local: Callable, x, *operands):
    """``local(x, *operands, axes) -> (C,) arrays``: per-channel reductions of ``x`` (N, C,
    ...) over every axis but 1, run on each shard of a sharded ``x``.

    ``operands`` are shaped like ``x`` (sharded alike) or per-channel (C,) vectors (sharded
    like x's channel axis).  ``axes`` are the mesh axes that shard x's reduced axes: ``local``
    must combine its shard's partial results over them (``lax.psum``/``pmean``); shards
    hold equal numbers of elements (explicit sharding splits evenly; under automatic
    sharding a reduced axis that does not split evenly is gathered)."""
    return _with_batch_axes(functools.partial(_reduce, local), x, *operands)


def _per_shard(local, batch, axes):
    fn = functools.partial(_call_local, local, axes)
    for _ in range(batch):
        fn = jax.vmap(fn)
    return fn


def _call_local(local, axes, *args):
    return local(*args, axes)


def _reduce_specs(spec, batch, ndim_x, shapes, mesh_shape=None):
    """(x's spec, the per-channel spec, the operands' specs, the reduced mesh axes)."""
    channel = batch + 1
    reduced = [i for i in range(batch, len(spec)) if i != channel]
    if mesh_shape is not None:  # automatic: keep an unevenly split reduced axis whole
        spec = tuple(None if i in reduced and shapes[0][i] % math.prod(
            mesh_shape[a] for a in _names(e)) else e for i, e in enumerate(spec))
    vector = P(*spec[:batch], spec[channel])
    specs = [P(*spec) if len(s) == ndim_x else vector for s in shapes[1:]]
    axes = tuple(a for i in reduced for a in _names(spec[i]))
    return P(*spec), vector, specs, axes


def _reduce(local, batch, x, *operands):
    mode, mesh = _mode((x, *operands))
    if mode == "manual":
        return _per_shard(local, batch, ())(x, *operands)
    shapes = [a.shape for a in (x, *operands)]
    if mode == "auto":
        return _auto_reduce(local, batch, x, operands, shapes)
    spec, vector, specs, axes = _reduce_specs(padded_spec(x), batch, x.ndim, shapes)
    operands = [jax.sharding.reshard(a, NamedSharding(mesh, s))
                for a, s in zip(operands, specs, strict=True)]
    return jax.shard_map(_per_shard(local, batch, axes), mesh=mesh,
                         in_specs=(spec, *specs), out_specs=vector,
                         check_vma=False)(x, *operands)


def _auto_reduce(local, batch, x, operands, shapes):
    def shardings(mesh, arg_shapes, result_shape):
        spec, vector, specs, axes = _reduce_specs(padded_spec(arg_shapes[0]), batch, x.ndim,
                                                  shapes, dict(mesh.shape))
        ins = tuple(NamedSharding(mesh, s) for s in (spec, *specs))
        return ins, jax.tree.map(lambda _: NamedSharding(mesh, vector), result_shape), axes

    def partition(mesh, arg_shapes, result_shape):
        ins, outs, axes = shardings(mesh, arg_shapes, result_shape)
        return mesh, _per_shard(local, batch, axes), outs, ins

    # Shardy's rule: leading batch factors, n, c, spatial factors; n and spatial reduced
    lead = [f"b{i}" for i in range(batch)]
    spatial = [f"s{i}" for i in range(x.ndim - batch - 2)]
    full = " ".join([*lead, "n", "c", *spatial])
    vector = " ".join([*lead, "c"])
    outs = jax.eval_shape(_per_shard(local, batch, ()), x, *operands)
    rule = (", ".join(full if len(s) == x.ndim else vector for s in shapes) + " -> "
            + ", ".join(vector for _ in jax.tree.leaves(outs)))
    call = custom_partitioning(_per_shard(local, batch, ()))
    call.def_partition(partition, sharding_rule=rule, reduction_factors=("n", *spatial),
                       infer_sharding_from_operands=lambda *a: shardings(*a)[1])
    return call(x, *operands)
