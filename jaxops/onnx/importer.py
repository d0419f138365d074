"""Import an ONNX model as a pure JAX function.

Nodes run as jaxops ops where jaxops has the op (so gradients are the registered ones) and as
``jnp``/``lax`` otherwise.  A node whose (domain, op_type) has a registered jaxops schema runs
that op through the registry (:func:`_registry_op`): attribute names and defaults are the
schema's, read at import, so an op registered later imports with no edit here.  For ai.onnx,
the definition the model's opset resolves to must be the one jaxops follows or have its
signature (inputs, outputs, attributes with defaults: the versions between differ in types);
older definitions that differ take the legacy handlers: Softmax/LogSoftmax before 13 flatten
to 2-D at ``axis`` (default 1), Clip before 11 takes ``min``/``max`` attributes,
BatchNormalization before 14 is inference by output count.  Float initializers are
parameters, returned in ``ImportedModel.params`` and replaceable per call (for training);
integer initializers and ``Constant`` nodes are static (shapes, axes).

Models may come from anyone (docs/onnx.md, "Security model"): no file is read unless the
caller names a directory (:mod:`jaxops.onnx.tensors`), every tensor the model makes is bounded
before it is allocated, the model's own function bodies run as written, and every refusal is a
``ValueError``, ``TypeError`` or ``NotImplementedError`` naming the node.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnx.inliner
from onnx import AttributeProto, TensorProto, helper

import jaxops as jo
from jaxops._op import op_of
from jaxops.onnx import functions
from jaxops.onnx.tensors import (
    DEFAULT_MAX_TENSOR_BYTES,
    all_tensors,
    check_size,
    element_type,
    resolve_tensors,
    to_array,
)
from jaxops.ops import layer_normalization
from jaxops.schema import JAXOPS_DOMAIN

#: The ai.onnx opsets imported: 7 made arithmetic broadcast like numpy; 28 is the newest the
#: tested onnx (1.23) defines.  A newer opset may bring op versions this module has not read.
MIN_IMPORT_OPSET, MAX_IMPORT_OPSET = 7, 28

#: The default bound on the nodes a model may run: the graph's, with each call of a
#: model-local function counted as its body once inlined (nested calls too: a few bytes of
#: nested calls could otherwise expand exponentially).  Import and the first call cost about
#: 0.1 ms per node each: a chain of 100,000 Neg imported in 11 s and made its first call in
#: 7 s (measured, shared 2-core CPU; the reported 200,000 took 39 s and 32 s).  Raise it
#: with ``import_model(model, max_nodes=...)``.
DEFAULT_MAX_NODES = 100_000

_PREFIX = "jaxops.onnx.import_model"
Handler = Callable[..., Any]
_HANDLERS: dict[tuple[str, str], Handler] = {}


def _op(*op_types: str, domain: str = ""):
    def register(fn):
        for t in op_types:
            _HANDLERS[(domain, t)] = fn
        return fn

    return register


def _describe(node) -> str:
    out = f" (output {node.output[0]!r})" if len(node.output) and node.output[0] else ""
    return f"{node.op_type} node {node.name!r}{out}"


def _domain(node) -> str:
    return "" if node.domain == "ai.onnx" else node.domain


class _Node:
    """A node's inputs (None for omitted optionals), static inputs, attributes, version, and
    the checks every handler shares (axes, sizes), which name the node when they refuse."""

    def __init__(self, proto, inputs, statics, version, max_bytes):
        self.proto, self.inputs, self.statics, self.version = proto, inputs, statics, version
        self.max_bytes = max_bytes
        self.attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}

    def fail(self, message: str, cls: type[Exception] = ValueError):
        raise cls(f"{_PREFIX}: {_describe(self.proto)}: {message}")

    def attr(self, name, default=None):
        v = self.attrs.get(name, default)
        return v.decode() if isinstance(v, bytes) else v

    def has(self, i: int) -> bool:
        return i < len(self.inputs) and self.inputs[i] is not None

    def static(self, i, what):
        if i >= len(self.statics) or self.statics[i] is None:
            self.fail(f"input {i} ({what}) must be a constant (an initializer or Constant "
                      "node); dynamic shapes are not supported.")
        return self.statics[i]

    def axis(self, axis, rank: int, what: str = "axis", end: bool = False) -> int:
        """``axis`` in [-rank, rank - 1] (to ``rank`` when ``end``), made non-negative."""
        hi = rank if end else rank - 1
        if axis is None or not -rank <= int(axis) <= hi:
            self.fail(f"{what} {axis} is out of range for an input of rank {rank}; ONNX "
                      f"allows [{-rank}, {hi}]. Fix the model's {what}.")
        return int(axis) + rank if int(axis) < 0 else int(axis)

    def axes(self, axes, rank: int, what: str = "axes") -> tuple[int, ...]:
        out = tuple(self.axis(a, rank, what) for a in axes)
        if len(set(out)) != len(out):
            self.fail(f"{what} {list(axes)} repeat an axis (rank {rank}). Fix the model.")
        return out

    def bound(self, shape, dtype) -> None:
        """Refuse an output over the size bound before it is allocated."""
        check_size(_describe(self.proto), shape, dtype, self.max_bytes)


# ---------------------------------------------------------------------- standard ai.onnx

def _divide(a, b):
    """ONNX Div: true division for floats, truncation toward zero for integers."""
    if jnp.issubdtype(a.dtype, jnp.integer):
        return jax.lax.div(a, b)
    return jnp.divide(a, b)


for _t, _f in {"Add": jnp.add, "Sub": jnp.subtract, "Mul": jnp.multiply, "Div": _divide,
               "Max": jnp.maximum, "Min": jnp.minimum, "Pow": jnp.power,
               "Greater": jnp.greater, "Less": jnp.less, "GreaterOrEqual": jnp.greater_equal,
               "LessOrEqual": jnp.less_equal, "Equal": jnp.equal, "And": jnp.logical_and,
               "Or": jnp.logical_or}.items():
    _op(_t)(lambda n, f=_f: f(*n.inputs[:2]) if n.proto.op_type not in ("Max", "Min") else
            _fold(f, n.inputs))
for _t, _f in {"Neg": jnp.negative, "Abs": jnp.abs, "Sign": jnp.sign, "Sqrt": jnp.sqrt,
               "Reciprocal": jnp.reciprocal, "Floor": jnp.floor, "Ceil": jnp.ceil,
               "Erf": jax.scipy.special.erf, "Sin": jnp.sin, "Cos": jnp.cos,
               "Not": jnp.logical_not, "IsNaN": jnp.isnan,
               "Identity": lambda x: x, "Softplus": jax.nn.softplus}.items():
    _op(_t)(lambda n, f=_f: f(n.inputs[0]))


def _fold(f, xs):
    out = xs[0]
    for x in xs[1:]:
        out = f(out, x)
    return out


@_op("Constant")
def _constant(n):  # evaluated once at import (ImportedModel._constant), never through here
    raise AssertionError("Constant nodes are evaluated at import")


@_op("Mod")
def _mod(n):
    return (jnp.fmod if n.attr("fmod", 0) else jnp.remainder)(*n.inputs[:2])


@_op("IsInf")
def _isinf(n):
    x = n.inputs[0]
    pos, neg = n.attr("detect_positive", 1), n.attr("detect_negative", 1)
    return (jnp.isposinf(x) & bool(pos)) | (jnp.isneginf(x) & bool(neg))


# ------------------------------------- older definitions of ops jaxops implements
# A node whose ONNX definition (the version the model's opset resolves to) has the signature
# of the one jaxops follows runs through the registry (_registry_op); these are the older
# definitions whose signature, and so meaning, differs.  A change of meaning without one of
# signature would have to be refused in _follows and handled here; for the ops jaxops
# implements there is none: the versions with equal signatures differ in type constraints,
# and their docs in formatting and Clip-12's note on min > max (jaxops' clip, for Clip-11 too).

@_op("Clip")
def _clip_before_11(n):
    """Clip-6: the bounds are attributes (from 11, optional inputs)."""
    x = n.inputs[0]
    lo = jnp.asarray(n.attr("min", -np.inf), x.dtype)
    hi = jnp.asarray(n.attr("max", np.inf), x.dtype)
    return jo.clip(x, lo, hi)


@_op("Softmax", "LogSoftmax")
def _softmax_before_13(n):
    """Softmax-1/11 and LogSoftmax-1/11: normalize over the trailing dims from ``axis``
    (default 1), flattened to 2-D (from 13, over one axis, default -1)."""
    f = jo.softmax if n.proto.op_type == "Softmax" else jo.log_softmax
    x = n.inputs[0]
    axis = n.axis(n.attr("axis", 1), x.ndim)
    shape = x.shape
    y = f(x.reshape(math.prod(shape[:axis]), math.prod(shape[axis:])), axis=-1)
    return y.reshape(shape)


@_op("BatchNormalization")
def _batch_norm_before_14(n):
    """BatchNormalization-7/9: training by output count (refused), ``spatial`` (7; 0 is
    refused).  Inference: running statistics normalize, as jaxops' inference mode."""
    n_out = len([o for o in n.proto.output if o])
    if n_out > 1:
        n.fail(f"BatchNormalization-{n.version} with {n_out} outputs is training mode by output "
               "count (mean, var, saved_mean, saved_var); only its inference form (one output) "
               "is imported. Opset 14 and later say training_mode.")
    if n.attr("spatial", 1) == 0:
        n.fail("spatial=0 (statistics per element, not per channel) is not supported.")
    return jo.batch_norm(*n.inputs[:5], epsilon=n.attr("epsilon", 1e-5))[0]


def _cast_type(n) -> np.dtype:
    """Cast's target type (checked at import), as JAX holds it: int64 is int32 unless
    jax_enable_x64 (float64 models are refused without it, never narrowed)."""
    return jax.dtypes.canonicalize_dtype(element_type(n.attr("to"), _describe(n.proto)))


@_op("Cast")
def _cast(n):
    return n.inputs[0].astype(_cast_type(n))


@_op("CastLike")
def _cast_like(n):
    return n.inputs[0].astype(n.inputs[1].dtype)


@_op("Where")
def _where(n):
    return jnp.where(*n.inputs[:3])


@_op("MatMul")
def _matmul(n):
    a, b = n.inputs[:2]
    if a.ndim == 0 or b.ndim == 0:
        n.fail(f"inputs of shapes {a.shape} and {b.shape}: MatMul needs rank >= 1 (numpy's "
               "matmul rules). Fix the model.")
    return jnp.matmul(a, b)


@_op("Gemm")
def _gemm(n):
    a, b = n.inputs[:2]
    if a.ndim != 2 or b.ndim != 2:
        n.fail(f"A {a.shape} and B {b.shape} must be matrices. Fix the model.")
    a = a.T if n.attr("transA", 0) else a
    b = b.T if n.attr("transB", 0) else b
    y = n.attr("alpha", 1.0) * (a @ b)
    if n.has(2):
        y = y + n.attr("beta", 1.0) * n.inputs[2]
    return y.astype(a.dtype)


@_op("Einsum")
def _einsum(n):
    return jnp.einsum(n.attr("equation"), *n.inputs)


@_op("Reshape")
def _reshape(n):
    x, shape = n.inputs[0], [int(s) for s in n.static(1, "shape")]
    if not n.attr("allowzero", 0):
        if any(s == 0 for s in shape[x.ndim:]):
            n.fail(f"shape {shape} copies (0) an axis that the input of rank {x.ndim} lacks.")
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    if shape.count(-1) > 1 or any(s < -1 for s in shape):
        n.fail(f"shape {shape}: at most one -1 and no other negative size. Fix the model.")
    return x.reshape(shape)


@_op("Expand")
def _expand(n):
    x, shape = n.inputs[0], tuple(int(s) for s in n.static(1, "shape"))
    out = _broadcast_shape(x.shape, shape)
    if out is None:
        n.fail(f"shape {list(shape)} does not broadcast with the input's {x.shape}.")
    n.bound(out, x.dtype)
    return jnp.broadcast_to(x, out)


def _broadcast_shape(*shapes) -> tuple[int, ...] | None:
    """numpy's broadcast of ``shapes``, or None.  Not ``np.broadcast_shapes``: it builds an
    empty array of the result, and refuses one too big for numpy as if it did not broadcast,
    before the size bound can say why."""
    rank = max(len(s) for s in shapes)
    out = []
    for dims in zip(*((1,) * (rank - len(s)) + tuple(s) for s in shapes), strict=True):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1 or any(d < 0 for d in sizes):
            return None
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _axes(n, default=None):
    if n.version >= 13 and n.has(1):
        return tuple(int(a) for a in n.static(1, "axes"))
    a = n.attr("axes", default)
    return None if a is None else tuple(a)


def _squeeze_axes(n, x):
    axes = _axes(n)
    axes = None if axes is None else n.axes(axes, x.ndim)
    if axes is not None and any(x.shape[a] != 1 for a in axes):
        n.fail(f"axes {list(axes)} of an input of shape {x.shape} are not all of size 1.")
    return axes


def _unsqueeze_axes(n, x):
    axes = _axes(n)
    if axes is None:
        n.fail("has no axes. Give the axes (an input from opset 13, an attribute before).")
    return n.axes(axes, x.ndim + len(axes))


@_op("Squeeze")
def _squeeze(n):
    return jnp.squeeze(n.inputs[0], axis=_squeeze_axes(n, n.inputs[0]))


@_op("Unsqueeze")
def _unsqueeze(n):
    return jnp.expand_dims(n.inputs[0], _unsqueeze_axes(n, n.inputs[0]))


@_op("Transpose")
def _transpose(n):
    x, perm = n.inputs[0], n.attr("perm")
    if perm is not None and sorted(int(p) for p in perm) != list(range(x.ndim)):
        n.fail(f"perm {list(perm)} is not a permutation of the {x.ndim} axes. Fix the model.")
    return jnp.transpose(x, perm)


@_op("Concat")
def _concat(n):
    xs = [x for x in n.inputs if x is not None]
    return jnp.concatenate(xs, axis=n.axis(n.attr("axis"), xs[0].ndim))


@_op("Flatten")
def _flatten(n):
    x = n.inputs[0]
    axis = n.axis(n.attr("axis", 1), x.ndim, end=True)  # axis = rank is allowed: (N, 1)
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@_op("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd")
def _reduce(n):
    t, x = n.proto.op_type, n.inputs[0]
    axes_as_input = n.version >= (13 if t == "ReduceSum" else 18)
    if axes_as_input:
        axes = tuple(int(a) for a in n.static(1, "axes")) if n.has(1) else None
    else:
        axes = n.attr("axes")
        axes = None if axes is None else tuple(axes)
    if not axes and n.attr("noop_with_empty_axes", 0):
        return x
    axes = n.axes(axes, x.ndim) if axes else None
    keep = bool(n.attr("keepdims", 1))
    reduced = range(x.ndim) if axes is None else axes
    count = math.prod(x.shape[a] for a in reduced)
    if t in ("ReduceSum", "ReduceProd"):  # over nothing: 0 and 1, as ONNX says
        # ONNX keeps the input's type; jnp widens int32 to int64 when x64 is on
        return (jnp.sum if t == "ReduceSum" else jnp.prod)(x, axis=axes, keepdims=keep,
                                                            dtype=x.dtype)
    if t == "ReduceMean":
        if not jnp.issubdtype(x.dtype, jnp.integer):
            # over nothing ONNX leaves it undefined; NaN, as onnx.reference gives (onnxruntime
            # 1.32 gives 0)
            return jnp.mean(x, axis=axes, keepdims=keep)
        if count == 0:
            n.fail(f"takes the mean over the empty axes {list(reduced)} of an integer input of "
                   f"shape {x.shape}: ONNX leaves it undefined, and an integer has no NaN. Fix "
                   "the model (or its input's shape).")
        # the integer mean truncated toward zero, as onnxruntime and onnx.reference give it
        total = jnp.sum(x, axis=axes, keepdims=keep, dtype=x.dtype)
        return jax.lax.div(total, jnp.asarray(count, x.dtype))
    largest = t == "ReduceMax"
    if count:
        return (jnp.max if largest else jnp.min)(x, axis=axes, keepdims=keep)
    # ONNX: the max over nothing is -inf, or the type's least value (the min: the opposite);
    # jnp refuses an empty reduction without an identity
    shape = [1 if a in reduced else d for a, d in enumerate(x.shape) if keep or a not in reduced]
    return jnp.full(shape, _extreme(x.dtype, least=largest), x.dtype)


def _extreme(dtype, least: bool):
    """The least (or greatest) value of ``dtype``: -inf (inf) for floats."""
    if dtype == np.bool_:
        return not least
    if jnp.issubdtype(dtype, jnp.integer):
        info = jnp.iinfo(dtype)
        return info.min if least else info.max
    return -np.inf if least else np.inf


@_op("ArgMax", "ArgMin")
def _argmax(n):
    f = jnp.argmax if n.proto.op_type == "ArgMax" else jnp.argmin
    x = n.inputs[0]
    axis, keep = n.axis(n.attr("axis", 0), x.ndim), bool(n.attr("keepdims", 1))
    if x.shape[axis] == 0:
        n.fail(f"axis {axis} of the input {x.shape} is empty; there is no extremum.")
    if n.attr("select_last_index", 0):  # the first extremum of the reversed axis
        index = x.shape[axis] - 1 - f(jnp.flip(x, axis), axis=axis, keepdims=keep)
    else:
        index = f(x, axis=axis, keepdims=keep)
    return index.astype(jax.dtypes.canonicalize_dtype(np.int64))


def _check_indices(n, indices, size: int) -> None:
    """ONNX Gather: indices in [-size, size - 1]; out-of-range is an error, not a fill."""
    indices = np.asarray(indices)
    if indices.size and (indices.min() < -size or indices.max() >= size):
        n.fail(f"indices from {indices.min()} to {indices.max()} are out of range for an axis "
               f"of size {size}; ONNX allows [{-size}, {size - 1}]. Fix the model's indices.")


@_op("Gather")
def _gather(n):
    x, indices = n.inputs[:2]
    axis = n.axis(n.attr("axis", 0), x.ndim)
    if n.statics[1] is not None:
        _check_indices(n, n.statics[1], x.shape[axis])
    # indices known only at run time cannot raise under jit: out-of-range ones give NaN for
    # floats (jnp.take's "fill"), documented in docs/onnx.md
    return jnp.take(x, indices, axis=axis)


@_op("Slice")
def _slice(n):
    x = n.inputs[0]
    if n.version < 10:
        starts, ends, axes = n.attr("starts"), n.attr("ends"), n.attr("axes")
        steps = None
    else:
        starts, ends = n.static(1, "starts"), n.static(2, "ends")
        axes = n.static(3, "axes") if n.has(3) else None
        steps = n.static(4, "steps") if n.has(4) else None
    return x[_slice_index(n, x.ndim, starts, ends, axes, steps)]


def _slice_index(n, ndim, starts, ends, axes=None, steps=None) -> tuple:
    """ONNX Slice's parameters as a Python index (which clamps out-of-range bounds as ONNX
    does)."""
    starts, ends = [int(s) for s in np.ravel(starts)], [int(e) for e in np.ravel(ends)]
    axes = range(len(starts)) if axes is None else n.axes(np.ravel(axes), ndim)
    steps = [1] * len(starts) if steps is None else [int(k) for k in np.ravel(steps)]
    if not len(starts) == len(ends) == len(axes) == len(steps) or 0 in steps:
        n.fail(f"starts {starts}, ends {ends}, axes {list(axes)} and steps {steps} must have "
               "one entry per sliced axis, and no step may be 0. Fix the model.")
    index = [slice(None)] * ndim
    for a, b, e, k in zip(axes, starts, ends, steps, strict=True):
        index[a] = slice(b, e, k)
    return tuple(index)


@_op("Pad")
def _pad(n):
    x = n.inputs[0]
    if n.version < 11:
        pads, value = n.attr("pads"), n.attr("value", 0.0)
        axes = None
    else:
        pads = n.static(1, "pads")
        value = n.inputs[2] if n.has(2) else 0
        axes = n.static(3, "axes") if n.has(3) else None
    axes = list(range(x.ndim)) if axes is None else n.axes(np.ravel(axes), x.ndim)
    pads = [int(p) for p in np.ravel(pads)]
    if len(pads) != 2 * len(axes):
        n.fail(f"pads {pads} must have two entries per padded axis ({len(axes)} axes).")
    config = [(0, 0)] * x.ndim
    for k, a in enumerate(axes):
        config[a] = (pads[k], pads[k + len(axes)])
    out = [d + lo + hi for d, (lo, hi) in zip(x.shape, config, strict=True)]
    if any(d < 0 for d in out):
        n.fail(f"pads {pads} crop more than the input's {x.shape} has. Fix the model.")
    n.bound(out, x.dtype)
    mode = n.attr("mode", "constant")
    if mode == "constant":  # lax.pad: negative pads crop, as in ONNX
        return jax.lax.pad(x, jnp.asarray(value, x.dtype).reshape(()),
                           [(lo, hi, 0) for lo, hi in config])
    if any(lo < 0 or hi < 0 for lo, hi in config) or mode not in ("reflect", "edge", "wrap"):
        n.fail(f"mode {mode!r} with pads {config} is not supported (reflect, edge and wrap "
               "take non-negative pads).", NotImplementedError)
    if mode == "reflect" and any(max(lo, hi) >= d for d, (lo, hi) in
                                 zip(x.shape, config, strict=True) if lo or hi):
        n.fail(f"reflect pads {config} must be smaller than the input's sizes {x.shape}.")
    if mode in ("edge", "wrap") and any(d == 0 for d, (lo, hi) in
                                        zip(x.shape, config, strict=True) if lo or hi):
        n.fail(f"{mode} padding of an empty axis (input {x.shape}).")
    return jnp.pad(x, config, mode=mode)


@_op("ConstantOfShape")
def _constant_of_shape(n):
    shape = tuple(int(d) for d in np.ravel(n.static(0, "shape")))
    value = n.attr("value")
    value = (to_array(value, _describe(n.proto) + " value", n.max_bytes)
             if value is not None else np.zeros(1, np.float32))
    if value.size != 1:
        n.fail(f"value has {value.size} elements; ONNX requires one.")
    n.bound(shape, value.dtype)
    return jnp.full(shape, value.reshape(()))


@_op("Shape", "Size")
def _shape(n):  # evaluated statically (shapes are static under jit), never through here
    raise AssertionError("Shape and Size are evaluated statically")


def _static_value(n: _Node):
    """The numpy value of a shape computation whose inputs are known at trace time (shapes,
    integer constants), else None.  Under ``jit`` these must stay numpy, not traced.  Each
    result is bounded before numpy allocates it."""
    t, ins = n.proto.op_type, n.inputs
    if t == "Shape":
        shape = np.asarray(np.shape(ins[0]), np.int64)
        return shape[n.attr("start", 0):n.attr("end", None)]
    if t == "Size":
        return np.asarray(np.size(ins[0]), np.int64)
    if not ins or any(not isinstance(x, np.ndarray) for x in ins if x is not None):
        return None
    if t == "Gather":
        axis = n.axis(n.attr("axis", 0), ins[0].ndim)
        _check_indices(n, ins[1], ins[0].shape[axis])
        n.bound(ins[0].shape[:axis] + ins[1].shape + ins[0].shape[axis + 1:], ins[0].dtype)
        return np.take(ins[0], ins[1], axis=axis)
    if t == "Squeeze":
        return np.squeeze(ins[0], axis=_squeeze_axes(n, ins[0]))
    if t == "Unsqueeze":
        return np.expand_dims(ins[0], _unsqueeze_axes(n, ins[0]))
    if t == "Concat":
        axis = n.axis(n.attr("axis"), ins[0].ndim)
        if any(x.ndim != ins[0].ndim for x in ins):
            n.fail(f"inputs of ranks {[x.ndim for x in ins]} cannot be concatenated.")
        shape = list(ins[0].shape)
        shape[axis] = sum(x.shape[axis] for x in ins)
        n.bound(shape, np.result_type(*ins))
        return np.concatenate(ins, axis=axis)
    if t == "Cast":
        dtype = element_type(n.attr("to"), _describe(n.proto))
        n.bound(ins[0].shape, dtype)
        return ins[0].astype(dtype)
    if t in ("Add", "Sub", "Mul", "Div") and all(np.issubdtype(x.dtype, np.integer)
                                                 for x in ins):
        shape = _broadcast_shape(*(x.shape for x in ins))
        if shape is None:
            n.fail(f"inputs of shapes {[x.shape for x in ins]} do not broadcast.")
        n.bound(shape, np.result_type(*ins))
        if t == "Div":
            if np.any(ins[1] == 0):
                n.fail("divides an integer by zero. Fix the model's constants.")
            return np.trunc(np.divide(*ins)).astype(np.result_type(*ins))
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[t](*ins)
    if t == "Identity":
        return ins[0]
    if t == "Slice" and n.version >= 10:  # Shape -> Slice -> Reshape, as exporters write it
        optional = [*ins[3:5], None, None]
        return ins[0][_slice_index(n, ins[0].ndim, ins[1], ins[2], optional[0], optional[1])]
    return None


# ----------------------------------------------------- jaxops ops, through the registry

def _registered(domain: str, op_type: str):
    """The registered schema of the jaxops op (ai.onnx or ai.jaxops) ``op_type``, whose
    :class:`jaxops.Op` is ``op_of(schema)``, or None.  The registry is read at each import, so
    an op registered later imports with no edit here."""
    if domain not in ("", JAXOPS_DOMAIN):
        return None
    try:
        schema = jo.schema.get(op_type)
    except KeyError:
        return None
    if schema.name != op_type or schema.domain != domain or op_of(schema) is None:
        return None  # get() also takes function names; a schema without an op runs nothing
    return schema


@functools.cache  # onnx.defs is fixed for the process; asked once per node and trace
def _signature(op_type: str, version: int):
    """What of an ai.onnx definition a node can say: inputs and outputs (names, options),
    attributes (names, types, defaults).  Definitions with one signature differ in types."""
    d = onnx.defs.get_schema(op_type, version, "")
    return ([(p.name, p.option) for p in d.inputs], [(p.name, p.option) for p in d.outputs],
            {k: (a.type, a.default_value.SerializeToString()) for k, a in d.attributes.items()})


def _follows(schema, version: int) -> bool:
    """Whether ``version`` of an ai.onnx op (the one the model's opset resolves to) means
    what jaxops' schema follows: the same version, or one with the same signature."""
    return version == schema.since_version or (
        _signature(schema.name, version) == _signature(schema.name, schema.since_version))


def _jaxops_attrs(n, schema) -> dict:
    """The node's attributes as the op's keywords: ONNX names and the schema's defaults."""
    attrs = {a.name: n.attr(a.onnx_name or a.name, a.default) for a in schema.attributes
             if a.onnx}
    for a in schema.attributes:
        if a.type == "bool" and attrs.get(a.name) is not None:
            attrs[a.name] = bool(attrs[a.name])
    return attrs


def _registry_op(n, schema):
    """Run the node as the jaxops op of ``schema``.  Omitted optional inputs are None; a
    jaxops-only attribute (``onnx=False``) keeps its default, except ``return_<output>``,
    which is set when the node asks for that optional output (SoftmaxCrossEntropyLoss's
    ``log_prob``).  Outputs the node does not name are dropped."""
    if len(n.inputs) > len(schema.inputs):
        n.fail(f"has {len(n.inputs)} inputs; {schema.name}-{schema.since_version} takes at "
               f"most {len(schema.inputs)} ({', '.join(p.name for p in schema.inputs)}). Fix "
               "the model.")
    attrs = _jaxops_attrs(n, schema)
    names = list(n.proto.output)
    for k, p in enumerate(schema.outputs):
        flag = f"return_{p.name}"
        if p.optional and any(a.name == flag and not a.onnx for a in schema.attributes):
            attrs[flag] = k < len(names) and bool(names[k])
    if schema.name == "BatchNormalization" and not attrs["training"]:
        # ONNX: in inference mode the node has one output (jaxops returns the statistics)
        asked = len([o for o in names if o])
        if asked > 1:
            n.fail(f"in inference mode (training_mode=0) BatchNormalization has one output, "
                   f"Y; the node asks for {asked}. Set training_mode=1 for the running "
                   "statistics, or drop the extra outputs.")
    out = op_of(schema)(*n.inputs, *[None] * (len(schema.inputs) - len(n.inputs)), **attrs)
    if schema.name == "LayerNormalization" and any(names[1:]):
        # ONNX's optional statistics outputs (training graphs), which jaxops' op does not
        # return: computed beside it, as LayerNormalization-17 defines them
        return (out, *layer_normalization.statistics(n.inputs[0], axis=attrs["axis"],
                                                     epsilon=attrs["epsilon"]))[:len(names)]
    outs = out if isinstance(out, tuple) else (out,)
    return outs[:max(len(names), 1)] if len(outs) > 1 else out


def _resolve(domain: str, op_type: str, opset: int) -> Handler | None:
    """What runs a node of ``op_type`` in a model importing ``domain`` at ``opset``: the
    jaxops op (through the registry) where the definition is the one jaxops follows, else a
    handler of this module (a standard op, or an older definition of a jaxops op), else
    None."""
    schema = _registered(domain, op_type)
    if schema is not None:
        if domain == JAXOPS_DOMAIN:
            return functools.partial(_registry_op, schema=schema)
        try:
            version = onnx.defs.get_schema(op_type, opset, "").since_version
        except onnx.defs.SchemaError:
            return None
        if _follows(schema, version):
            return functools.partial(_registry_op, schema=schema)
    return _HANDLERS.get((domain, op_type))


def _known(domain: str, op_type: str) -> bool:
    """Whether some definition of the op is imported (a jaxops op, or a handler here)."""
    return (domain, op_type) in _HANDLERS or _registered(domain, op_type) is not None


def _known_ops() -> set[tuple[str, str]]:
    return {*_HANDLERS, *((s.domain, s.name) for s in jo.schema.all_schemas()
                          if _registered(s.domain, s.name) is not None)}


def _is_canonical_body(n, fn: onnx.FunctionProto, opset: int) -> bool:
    """Whether ``fn``, the model's own body for an ai.jaxops node, is what jaxops' exporter
    writes for this call (apart from the overload's name, which records jaxops-only
    attributes such as ``chunk_size`` that change no value).  Only then may the jaxops op,
    with its registered gradient, stand in for the body."""
    try:
        schema = jo.schema.get(n.proto.op_type)
        if schema.domain != JAXOPS_DOMAIN or functions.body_of(schema) is None:
            return False
        attrs = schema.canonical_attributes(_jaxops_attrs(n, schema))
        ins = [*n.inputs, *[None] * (len(schema.inputs) - len(n.inputs))]
        in_avals = [None if x is None else jax.ShapeDtypeStruct(x.shape, x.dtype) for x in ins]
        out_avals = schema.infer(*in_avals, **attrs)
        want = functions.function_proto(schema, attrs, opset, in_avals, out_avals)
    except Exception:  # noqa: BLE001 -- any mismatch with jaxops' form means "not canonical"
        return False
    want.overload = fn.overload
    return want.SerializeToString(deterministic=True) == fn.SerializeToString(deterministic=True)


# --------------------------------------------------------------------------- the model

_CONSTANT_VALUES = ("value", "value_float", "value_floats", "value_int", "value_ints",
                    "value_string", "value_strings", "sparse_value")


class _Program:
    """A list of nodes ready to run: Constant values evaluated and, for each node that calls
    a model-local function, that function's body inlined (by position in ``nodes``)."""

    def __init__(self, nodes):
        self.nodes = list(nodes)
        self.constants: dict[int, np.ndarray] = {}
        self.bodies: dict[int, tuple[onnx.FunctionProto, _Program]] = {}
        self.error: Exception | None = None  # why the nodes cannot run, found at import


class ImportedModel:
    """An ONNX graph as a JAX function: ``model(*inputs, params=None)``.

    ``params`` maps the float initializers' names to arrays (``model.params`` by default);
    pass a modified dict to train them (``jax.grad`` w.r.t. ``params`` works).  One output is
    returned as an array, several as a tuple.  Inputs are checked against the graph's
    declared element types, ranks and sizes (a ``dim_param`` binds one size across inputs).
    """

    def __init__(self, model: onnx.ModelProto, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
                 max_nodes: int = DEFAULT_MAX_NODES):
        _check_node_count(model, max_nodes)
        self.model = model
        self.max_tensor_bytes = max_tensor_bytes
        graph = model.graph
        self.opsets = {o.domain or "": o.version for o in model.opset_import}
        self._needs_x64 = _float64_site(model)
        self._check_x64()
        if len(graph.sparse_initializer):
            raise NotImplementedError(
                f"{_PREFIX}: sparse initializer {graph.sparse_initializer[0].values.name!r}: "
                "sparse tensors are not imported. Store it as a dense initializer.")
        self.params: dict[str, jax.Array] = {}
        self.statics: dict[str, np.ndarray] = {}
        for t in graph.initializer:
            value = to_array(t, f"initializer {t.name!r}", max_tensor_bytes)
            if jax.dtypes.issubdtype(value.dtype, np.floating):  # bfloat16 too
                self.params[t.name] = jnp.asarray(value)
            else:
                self.statics[t.name] = value
        init_names = {t.name for t in graph.initializer}
        self._inputs = [_input_spec(i) for i in graph.input if i.name not in init_names]
        self.input_names = [name for name, _, _ in self._inputs]
        self.output_names = [o.name for o in graph.output]
        self._functions = {(f.domain, f.name, f.overload): f for f in model.functions}
        self._program = self._prepare(graph.node, inline=True)
        # a function body's Cast may take its `to` from the call (`to = @dt`): only the
        # inlined nodes say whether the model computes in float64
        self._check_x64()
        produced = {*self.input_names, *init_names,
                    *(o for node in graph.node for o in node.output if o)}
        for name in self.output_names:
            if name not in produced:
                raise ValueError(f"{_PREFIX}: graph output {name!r} is produced by no node, "
                                 "input or initializer. Fix the model.")
        self._checked: set = set()
        if all(dtype is not None and dims is not None and
               all(isinstance(d, int) for d in dims) for _, dtype, dims in self._inputs):
            # every size is known: shape errors and oversized tensors surface now, not at
            # the first call (abstractly: nothing is allocated)
            self._check_abstract([jax.ShapeDtypeStruct(dims, jax.dtypes.canonicalize_dtype(
                dtype)) for _, dtype, dims in self._inputs], self.params)

    # ---------------------------------------------------------------- import-time checks

    def _check_x64(self):
        if self._needs_x64 and not jax.config.jax_enable_x64:
            raise ValueError(
                f"{_PREFIX}: {self._needs_x64} is float64, but jax_enable_x64 is off, so JAX "
                "would compute in float32. Enable float64 first: "
                "jax.config.update('jax_enable_x64', True), or import and call the model "
                "inside `with jax.enable_x64(True):`.")

    def _prepare(self, nodes, inline: bool, defer: bool = False) -> _Program:
        program = _Program(nodes)
        for k, node in enumerate(program.nodes):
            key = (node.domain, node.op_type, node.overload)
            if inline and key in self._functions:  # its size was bounded: _check_node_count
                fn = self._functions[key]
                jaxops_op = _registered(_domain(node), node.op_type) is not None
                # jaxops' own bodies use ops the importer lacks (Range): a body that may
                # never run is refused only when it has to (not jaxops' canonical body)
                body = self._prepare(self._inline(node), inline=False, defer=jaxops_op)
                program.bodies[k] = (fn, body)
                if not jaxops_op:
                    if body.error is not None:
                        raise body.error
                    continue  # only the body can run this node
            try:
                self._check_node(program, k, node)
            except (ValueError, TypeError, NotImplementedError) as e:
                if not defer:
                    raise
                program.error = program.error or e
        return program

    def _check_node(self, program: _Program, k: int, node) -> None:
        self._needs_x64 = self._needs_x64 or _float64_node(node)
        if node.op_type == "Constant" and _domain(node) == "":
            program.constants[k] = self._constant(node)
        self._handler(node)  # unknown ops fail here, before any call
        if node.op_type == "Cast" and _domain(node) == "":
            to = [a.i for a in node.attribute if a.name == "to"]
            element_type(to[0] if to else 0, f"{_describe(node)} (attribute 'to')")

    def _inline(self, node) -> list:
        """The nodes of the function ``node`` calls, inlined with onnx's own inliner (which
        substitutes attribute references and renames the body's values)."""
        names = list(dict.fromkeys(i for i in node.input if i))
        # onnx's inliner (1.23) drops a reference the call leaves unset even when the
        # function declares a default (attribute_proto), which onnxruntime applies
        fn = self._functions[(node.domain, node.op_type, node.overload)]
        given = {a.name for a in node.attribute}
        call = onnx.NodeProto()
        call.CopyFrom(node)
        call.attribute.extend(a for a in fn.attribute_proto if a.name not in given)
        graph = helper.make_graph(
            [call], "call", [helper.make_value_info(i, onnx.TypeProto()) for i in names],
            [helper.make_value_info(o, onnx.TypeProto()) for o in node.output if o])
        call = helper.make_model(graph, opset_imports=self.model.opset_import,
                                 functions=self.model.functions, ir_version=self.model.ir_version)
        try:
            return list(onnx.inliner.inline_local_functions(call).graph.node)
        except Exception as e:  # noqa: BLE001 -- onnx's inliner reports in its own types
            raise ValueError(f"{_PREFIX}: {_describe(node)}: its model-local function cannot "
                             f"be inlined ({type(e).__name__}: {e}). Fix the model.") from None

    def _constant(self, node) -> np.ndarray:
        given = [a for a in node.attribute if a.name in _CONSTANT_VALUES]
        where = _describe(node)
        if len(given) != 1 or len(node.attribute) != 1:
            raise ValueError(
                f"{_PREFIX}: {where} has attributes {[a.name for a in node.attribute]}; ONNX "
                f"requires exactly one of {', '.join(_CONSTANT_VALUES)}. Fix the model.")
        a = given[0]
        expected = {"value": AttributeProto.TENSOR, "value_float": AttributeProto.FLOAT,
                    "value_floats": AttributeProto.FLOATS, "value_int": AttributeProto.INT,
                    "value_ints": AttributeProto.INTS}
        if a.name not in expected:
            raise NotImplementedError(f"{_PREFIX}: {where}: {a.name} (strings and sparse "
                                      "tensors) is not imported. Use a dense numeric value.")
        if a.type != expected[a.name]:
            raise ValueError(f"{_PREFIX}: {where}: attribute {a.name!r} has type "
                             f"{AttributeProto.AttributeType.Name(a.type)}. Fix the model.")
        if a.name == "value":
            return to_array(a.t, f"{where} value", self.max_tensor_bytes)
        if a.name in ("value_float", "value_floats"):  # ONNX float attributes are float32
            return np.asarray(a.f if a.name == "value_float" else list(a.floats), np.float32)
        return np.asarray(a.i if a.name == "value_int" else list(a.ints), np.int64)

    def _handler(self, node) -> Handler:
        domain = _domain(node)
        if domain == "":
            version = self.opsets.get("", 1)
            if not MIN_IMPORT_OPSET <= version <= MAX_IMPORT_OPSET:
                raise ValueError(
                    f"{_PREFIX}: the model imports ai.onnx opset {version}; supported: "
                    f"{MIN_IMPORT_OPSET} to {MAX_IMPORT_OPSET} (before {MIN_IMPORT_OPSET}, "
                    "arithmetic broadcast by attributes, not numpy rules).")
            if _known(domain, node.op_type):
                try:
                    onnx.defs.get_schema(node.op_type, version, "")
                except onnx.defs.SchemaError:
                    raise ValueError(f"{_PREFIX}: {node.op_type} does not exist in opset "
                                     f"{version}.") from None
        handler = _resolve(domain, node.op_type, self.opsets.get(domain, 1))
        if handler is not None:
            return handler
        schema = _registered(domain, node.op_type)
        if schema is not None:  # an ai.onnx definition jaxops does not follow
            v = onnx.defs.get_schema(node.op_type, self.opsets.get("", 1), "").since_version
            raise ValueError(
                f"{_PREFIX}: {_describe(node)}: opset {self.opsets.get('', 1)} has "
                f"{node.op_type}-{v}, whose inputs, outputs or attributes differ from "
                f"{node.op_type}-{schema.since_version}, which jaxops implements "
                f"(jaxops.{schema.function}); {node.op_type}-{v} is not imported. Convert the "
                f"model to an opset where {node.op_type} is version {schema.since_version} "
                "(onnx.version_converter.convert_version).")
        known = sorted(f"{d + '.' if d else ''}{t}" for d, t in _known_ops())
        raise ValueError(f"{_PREFIX}: {_describe(node)}: unsupported op {node.op_type!r} "
                         f"in domain {node.domain or 'ai.onnx'!r}. Supported: "
                         f"{', '.join(known)}.")

    def _version(self, node) -> int:
        if _domain(node) != "":
            return self.opsets.get(node.domain, 1)
        return onnx.defs.get_schema(node.op_type, self.opsets.get("", 1), "").since_version

    # ----------------------------------------------------------------------- calling

    def __call__(self, *inputs, params: dict[str, Any] | None = None):
        self._check_x64()  # x64 may have been switched off since import
        inputs = self._check_inputs(inputs)
        params = {**self.params, **(params or {})}
        # ONNX broadcasts like numpy, whatever the caller's jax_numpy_rank_promotion says
        with jax.numpy_rank_promotion("allow"):
            self._check_abstract(inputs, params)  # sizes bounded before anything allocates
            return self._run(inputs, params)

    def _check_abstract(self, inputs, params):
        """Run the graph on shapes only (nothing is allocated), once per input signature:
        every node's output is checked against the size bound, and shape errors raise."""
        key = tuple((tuple(x.shape), np.dtype(x.dtype)) for x in inputs) + tuple(
            (k, tuple(jnp.shape(v)), np.dtype(v.dtype)) for k, v in sorted(params.items()))
        if key in self._checked:
            return
        avals = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in inputs]
        with jax.numpy_rank_promotion("allow"):
            jax.eval_shape(self._run, avals, {k: jax.ShapeDtypeStruct(jnp.shape(v), v.dtype)
                                              for k, v in params.items()})
        self._checked.add(key)

    def _check_inputs(self, inputs) -> list:
        if len(inputs) != len(self._inputs):
            raise TypeError(f"jaxops.onnx: the model takes {len(self._inputs)} inputs "
                            f"({', '.join(self.input_names)}), got {len(inputs)}")
        sizes: dict[str, tuple[str, int, int]] = {}  # dim_param -> (input, axis, size)
        out = []
        for (name, dtype, dims), x in zip(self._inputs, inputs, strict=True):
            x = _as_input(name, dtype, x)
            if dims is not None:
                if len(dims) != x.ndim:
                    raise ValueError(f"jaxops.onnx: input {name!r} has shape {x.shape}, but the "
                                     f"model declares rank {len(dims)} ({_dims(dims)}).")
                for axis, (d, s) in enumerate(zip(dims, x.shape, strict=True)):
                    if isinstance(d, int) and d != s:
                        raise ValueError(f"jaxops.onnx: input {name!r} has shape {x.shape}, "
                                         f"but the model declares {_dims(dims)}.")
                    if isinstance(d, str):
                        first = sizes.setdefault(d, (name, axis, s))
                        if first[2] != s:
                            raise ValueError(
                                f"jaxops.onnx: input {name!r} axis {axis} has size {s}, but "
                                f"{d!r} is {first[2]} in input {first[0]!r} axis {first[1]}; "
                                f"the model declares one size for {d!r}.")
            out.append(x)
        return out

    def _run(self, inputs, params):
        env: dict[str, Any] = dict(params)
        static: dict[str, np.ndarray] = dict(self.statics)
        env.update(static)
        env.update(zip(self.input_names, inputs, strict=True))
        self._execute(self._program, env, static)
        result = tuple(env[name] for name in self.output_names)
        return result[0] if len(result) == 1 else result

    def _execute(self, program: _Program, env: dict, static: dict) -> None:
        for k, node in enumerate(program.nodes):
            if k in program.constants:
                value = program.constants[k]
                static[node.output[0]] = value
                env[node.output[0]] = (jnp.asarray(value) if
                                       jax.dtypes.issubdtype(value.dtype, np.floating) else value)
                continue
            try:
                self._step(program, k, node, env, static)
            except Exception as e:  # noqa: BLE001 -- every failure must name its node
                if type(e) in (ValueError, TypeError, NotImplementedError) and \
                        str(e).startswith("jaxops.onnx"):
                    raise
                cls = (TypeError if isinstance(e, TypeError) else NotImplementedError
                       if isinstance(e, NotImplementedError) else ValueError)
                raise cls(f"{_PREFIX}: {_describe(node)} failed ({type(e).__name__}: {e}). "
                          "The node breaks ONNX's rules for its op (shapes, types or "
                          "attributes) or uses a form jaxops does not import; fix the model."
                          ) from e

    def _step(self, program, k, node, env, static) -> None:
        missing = [name for name in node.input if name and name not in env]
        if missing:
            raise ValueError(f"{_PREFIX}: {_describe(node)} reads {missing}, which no earlier "
                             "node, input or initializer defines. Fix the model.")
        ins = [env[name] if name else None for name in node.input]
        while ins and ins[-1] is None:
            ins.pop()
        statics = [static.get(name) if name else None for name in node.input]
        n = _Node(node, [static.get(name, x) for name, x in zip(node.input, ins, strict=False)],
                  statics, self._version(node), self.max_tensor_bytes)
        if k not in program.bodies:  # a function call's body nodes are checked instead
            _check_types(n, self.opsets)
        if _domain(node) == "" and k not in program.bodies:
            value = _static_value(n)
            if value is not None:
                static[node.output[0]] = env[node.output[0]] = value
                return
        n.inputs = [_to_jax(x) for x in ins]
        if k in program.bodies:
            fn, body = program.bodies[k]
            if not (_registered(_domain(node), node.op_type) is not None and
                    _is_canonical_body(n, fn, self.opsets.get("", 1))):
                if body.error is not None:
                    raise body.error
                self._call_body(node, body, env, static)
                return
        try:
            out = self._handler(node)(n)
        except Exception as e:
            if not str(e).startswith(_PREFIX) and any(isinstance(x, _TooWide)
                                                      for x in n.inputs):
                n.fail("computes with an int64 constant whose values lie outside 32 bits, "
                       "which JAX narrows while jax_enable_x64 is off. Enable it: "
                       "jax.config.update('jax_enable_x64', True).", TypeError)
            raise
        outs = out if isinstance(out, tuple) else (out,)
        extra = [o for o in node.output[len(outs):] if o]
        if extra:
            n.fail(f"asks for outputs {extra}, which this op does not produce in the form the "
                   "node describes (its attributes). Fix the model.")
        for name, value in zip(node.output, outs, strict=False):
            n.bound(np.shape(value), value.dtype)
            if name:
                env[name] = value

    def _call_body(self, node, body: _Program, env: dict, static: dict) -> None:
        """Run the inlined body in its own scope: its value names are unique only within
        the call."""
        local = {name: env[name] for name in node.input if name}
        local_static = {name: static[name] for name in node.input if name in static}
        self._execute(body, local, local_static)
        for name in node.output:
            if name:
                env[name] = local[name]
                if name in local_static:
                    static[name] = local_static[name]


def _dims(dims) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _input_spec(vi) -> tuple[str, np.dtype | None, list | None]:
    """(name, dtype, dims) of a graph input: dims are ints, dim_param names or None (unknown);
    dims is None when the rank is not declared."""
    t = vi.type
    if t.WhichOneof("value") != "tensor_type":
        raise NotImplementedError(f"{_PREFIX}: graph input {vi.name!r} is a "
                                  f"{t.WhichOneof('value')}, not a tensor; only tensor inputs "
                                  "are imported.")
    tt = t.tensor_type
    dtype = element_type(tt.elem_type, f"graph input {vi.name!r}") if tt.elem_type else None
    if not tt.HasField("shape"):
        return vi.name, dtype, None
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param")
            else None for d in tt.shape.dim]
    return vi.name, dtype, dims


def _as_input(name, dtype, x):
    """A call's input as an array of the declared element type: arrays must have it (ONNX
    does not convert), Python numbers and lists are converted to it."""
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        try:
            x = np.asarray(x, dtype)
        except (TypeError, ValueError, OverflowError) as e:
            raise TypeError(f"jaxops.onnx: input {name!r} cannot be made an array of "
                            f"{dtype} ({e}).") from None
    if dtype is not None and not _same_type(np.dtype(x.dtype), dtype):
        raise TypeError(f"jaxops.onnx: input {name!r} has dtype {np.dtype(x.dtype).name}, but the "
                        f"model declares {dtype.name}. Cast it (ONNX does not convert inputs).")
    if isinstance(x, np.ndarray) and x.dtype in (np.int64, np.uint64) and x.size and \
            not jax.config.jax_enable_x64:
        info = np.iinfo(jax.dtypes.canonicalize_dtype(x.dtype))
        if x.min() < info.min or x.max() > info.max:
            raise ValueError(f"jaxops.onnx: input {name!r} has {x.dtype.name} values outside "
                             f"{info.dtype.name}, which JAX uses while jax_enable_x64 is off. "
                             "Enable it: jax.config.update('jax_enable_x64', True).")
    return x if isinstance(x, jax.Array | jax.core.Tracer) else jnp.asarray(x)


def _same_type(got: np.dtype, declared: np.dtype) -> bool:
    # without x64 JAX holds 64-bit integers in 32 bits: an int64 input may arrive as int32
    return got == declared or (jax.dtypes.canonicalize_dtype(got) ==
                               jax.dtypes.canonicalize_dtype(declared) and
                               jnp.issubdtype(got, jnp.integer))


class _TooWide:
    """Stands in for an int64 constant whose values int32 cannot hold while jax_enable_x64
    is off: read statically (a shape, axes) it is exact, but JAX refuses to compute with this
    stand-in, and the node's error then says why (``ImportedModel._step``)."""

    def __init__(self, dtype):
        self.dtype, self.shape = dtype, ()


def _to_jax(x):
    if not isinstance(x, np.ndarray):
        return x
    if x.dtype in (np.int64, np.uint64) and x.size and not jax.config.jax_enable_x64:
        info = np.iinfo(jax.dtypes.canonicalize_dtype(x.dtype))
        if x.min() < info.min or x.max() > info.max:
            return _TooWide(x.dtype)
    return jnp.asarray(x)


def _onnx_type(dtype) -> str:
    return f"tensor({TensorProto.DataType.Name(helper.np_dtype_to_tensor_dtype(dtype)).lower()})"


def _check_types(n: _Node, opsets: dict) -> None:
    """ONNX's type constraints: the inputs sharing a type parameter (``T`` of Add) have one
    element type, and it is one the op allows.  ONNX never promotes."""
    domain = _domain(n.proto)
    try:
        schema = onnx.defs.get_schema(n.proto.op_type, opsets.get(domain, 1), domain)
    except onnx.defs.SchemaError:
        return  # a model-local function: its body's nodes are checked
    allowed = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
    formals, seen = schema.inputs, {}
    for i, x in enumerate(n.inputs):
        if x is None or not formals or (i >= len(formals) and formals[-1].option !=
                                        onnx.defs.OpSchema.FormalParameterOption.Variadic):
            continue
        p = formals[min(i, len(formals) - 1)]
        if p.type_str not in allowed:
            continue
        dtype = np.dtype(x.dtype)
        wide = {np.dtype(np.int32): np.int64, np.dtype(np.uint32): np.uint64}.get(dtype)
        if _onnx_type(dtype) not in allowed[p.type_str] and not (
                wide is not None and not jax.config.jax_enable_x64 and
                _onnx_type(wide) in allowed[p.type_str]):
            n.fail(f"input {i} has element type {dtype.name}, which {n.proto.op_type}-"
                   f"{schema.since_version} does not allow for {p.type_str} "
                   f"({', '.join(allowed[p.type_str])}). Insert a Cast.", TypeError)
        if p.option == onnx.defs.OpSchema.FormalParameterOption.Variadic and \
                not p.is_homogeneous:
            continue
        canonical = jax.dtypes.canonicalize_dtype(dtype)
        first = seen.setdefault(p.type_str, (i, canonical))
        if first[1] != canonical:
            n.fail(f"input {i} is {dtype.name} but input {first[0]} is {first[1].name}; both "
                   f"are {p.type_str}, which must be one type (ONNX does not promote). Insert "
                   "a Cast.", TypeError)


def _float64_site(model: onnx.ModelProto) -> str | None:
    """Where the model declares or stores float64 (the first place found), else None.  Nodes
    are asked after inlining (:func:`_float64_node`), when attribute references are resolved."""
    double = TensorProto.DOUBLE
    for v in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        if v.type.tensor_type.elem_type == double:
            return f"value {v.name!r}"
    for t, what in all_tensors(model):
        if t.data_type == double:
            return what
    return None


def _float64_node(node) -> str | None:
    """Whether ``node`` (of the graph or of an inlined function body, its attribute
    references substituted) makes float64: a Cast to DOUBLE or a float64 tensor attribute
    (Constant and ConstantOfShape ``value``)."""
    for a in node.attribute:
        if a.ref_attr_name:  # an uninlined body: its caller's value is checked when inlined
            continue
        if node.op_type == "Cast" and _domain(node) == "" and a.name == "to" and \
                a.i == TensorProto.DOUBLE:
            return f"the output of {_describe(node)}"
        tensors = [a.t] if a.HasField("t") else list(a.tensors)
        if any(t.data_type == TensorProto.DOUBLE for t in tensors):
            return f"attribute {a.name!r} of {_describe(node)}"
    return None


def _check_node_count(model: onnx.ModelProto, max_nodes: int) -> None:
    """Refuse a model that runs more than ``max_nodes`` nodes, function calls counted inlined,
    before any per-node work (the checker, inlining, tracing)."""
    fns = {(f.domain, f.name, f.overload): f for f in model.functions}
    total, sizes = 0, {}
    for node in model.graph.node:
        key = (node.domain, node.op_type, node.overload)
        size = _expanded_size(fns, key, max_nodes, sizes) if key in fns else 1
        if size > max_nodes:
            raise ValueError(
                f"{_PREFIX}: {_describe(node)}: the model-local functions it calls expand to "
                f"more than {max_nodes:,} nodes when inlined, over the bound of {max_nodes:,} "
                "nodes. If the model is trusted, raise the bound: "
                "import_model(model, max_nodes=...).")
        total += size
    if total > max_nodes:
        raise ValueError(
            f"{_PREFIX}: the model has {total:,} nodes (the graph's, with function calls "
            f"counted inlined), over the bound of {max_nodes:,}; import and the first call "
            "take about 0.1 ms per node each. If the model is trusted, raise the bound: "
            "import_model(model, max_nodes=...).")


def _expanded_size(fns: dict, key, cap: int, sizes: dict) -> int:
    """How many nodes calling ``key`` becomes once every nested call is inlined (counting
    stops past ``cap``); ``sizes`` remembers each function's across calls."""
    stack, on_path = [key], set()
    while stack:  # iterative: the depth of nested calls is the model's choice
        k = stack[-1]
        if k in sizes:
            stack.pop()
            continue
        callees = [c for c in ((n.domain, n.op_type, n.overload) for n in fns[k].node)
                   if c in fns]
        pending = [c for c in callees if c not in sizes]
        if pending and k not in on_path:
            on_path.add(k)
            for c in pending:
                if c in on_path:
                    raise ValueError(f"{_PREFIX}: model-local function {k[0]}.{k[1]} calls "
                                     "itself (through others). Fix the model.")
            stack.extend(pending)
            continue
        sizes[k] = min(sum(sizes.get(c, 1) if c in fns else 1 for c in
                           ((n.domain, n.op_type, n.overload) for n in fns[k].node)),
                       cap + 1)
        on_path.discard(k)
        stack.pop()
    return sizes[key]


def supported_imports() -> dict[str, dict[str, list[int]]]:
    """``{domain: {op_type: [versions]}}``: each op type ``import_model`` runs, with the
    versions of it (ONNX ``since_version``) found in ai.onnx opsets ``MIN_IMPORT_OPSET`` to
    the newest that the installed ``onnx`` knows."""
    out: dict[str, dict[str, list[int]]] = {"ai.onnx": {}, JAXOPS_DOMAIN: {}}
    for domain, op_type in _known_ops():
        if domain == JAXOPS_DOMAIN:
            out[JAXOPS_DOMAIN][op_type] = [_registered(domain, op_type).since_version]
            continue
        versions = set()
        for opset in range(MIN_IMPORT_OPSET, MAX_IMPORT_OPSET + 1):
            try:
                version = onnx.defs.get_schema(op_type, opset, "").since_version
            except onnx.defs.SchemaError:
                continue  # not yet in this opset
            if _resolve(domain, op_type, opset) is not None:
                versions.add(version)
        out["ai.onnx"][op_type] = sorted(versions)
    return {d: dict(sorted(ops.items())) for d, ops in out.items()}


def import_model(model: onnx.ModelProto | bytes, *,
                 external_data_dir: str | os.PathLike | None = None,
                 max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
                 max_nodes: int = DEFAULT_MAX_NODES) -> ImportedModel:
    """Turn an ONNX model (a ``ModelProto`` or its serialized bytes) into a JAX function.

    The result works under ``jit``, ``grad`` and ``vmap``; its float initializers are
    ``.params``.  The model may be untrusted (docs/onnx.md, "Security model").

    Args:
      model: the model; never a path (load files yourself with ``onnx.load``).
      external_data_dir: the directory whose files the model's external data may name.
        ``None`` (the default): no file is read and external data is refused.
      max_tensor_bytes: the bound on each tensor the model makes (initializers, constants,
        every node's output), checked before it is allocated; 2 GiB by default.
      max_nodes: the bound on the nodes the model runs (the graph's, with each call of a
        model-local function counted as its inlined body), checked before any per-node work;
        100,000 by default (import and the first call cost about 0.1 ms per node each).

    Raises:
      ValueError, TypeError or NotImplementedError naming the node, for a malformed model,
      an unsupported op type or version, external data, or a tensor over the bound.
    """
    if isinstance(model, (bytes, bytearray)):
        try:
            model = onnx.load_from_string(bytes(model))
        except Exception as e:  # protobuf's DecodeError and friends
            raise ValueError(f"{_PREFIX}: not an ONNX model ({e})") from None
    if not isinstance(model, onnx.ModelProto):
        raise TypeError("jaxops.onnx.import_model takes an onnx.ModelProto or its bytes, got "
                        f"{type(model).__name__} (load files yourself with onnx.load).")
    for name, bound in (("max_tensor_bytes", max_tensor_bytes), ("max_nodes", max_nodes)):
        if isinstance(bound, bool) or not isinstance(bound, int) or bound <= 0:
            raise ValueError(f"{_PREFIX}: {name} must be a positive int, got {bound!r}.")
    if external_data_dir is not None and not os.path.isdir(external_data_dir):
        raise ValueError(f"{_PREFIX}: external_data_dir {os.fspath(external_data_dir)!r} is "
                         "not a directory.")
    # before onnx.checker, which looks for external data files relative to the working
    # directory even for a model in memory
    _check_node_count(model, max_nodes)  # before the checker, whose time grows with it
    model = resolve_tensors(model, external_data_dir, max_tensor_bytes)
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # ValidationError; UnicodeDecodeError on a corrupt name; ...
        raise ValueError(f"{_PREFIX}: invalid model: {e}") from None
    return ImportedModel(model, max_tensor_bytes, max_nodes)
