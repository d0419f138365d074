"""Bodies, in standard ONNX ops, of the jaxops-domain operators that ONNX lacks, gradient
ops included.

Each is an ONNX model-local function (``FunctionProto``) in the ``ai.jaxops`` domain, so any
ONNX runtime can run an exported model.  A function body cannot branch on an attribute
(``reduction="none"`` returns a tensor, ``"mean"`` a scalar) or on whether an optional input
was given, so each combination an exported model uses gets its own *overload* of the function
(ONNX IR 10): the node names the overload and still carries its attributes, which is what
:func:`jaxops.onnx.import_model` reads.  The overload name lists the attributes, the omitted
optional inputs (``min=absent``), the few shape facts a body needs (PReluGradient's slope
shape, BatchNormalizationGradient's rank) and, when the body computes in a wider type than its
inputs (float16/bfloat16 inputs compute in float32, as the jaxops op does), that type and
the exact input and output types the casts depend on.  Bodies in ``NATIVE_TYPE`` compute in
their inputs' type, as those ops do.  Constants are ``CastLike``-d to an input, so one body
serves float32 and float64 alike.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import onnx
from onnx import helper

from jaxops.schema import JAXOPS_DOMAIN, OpSchema

#: The oldest ai.onnx opset the function bodies are valid in (ReduceMean's axes input); a
#: function imports the model's own opset, as the checker requires.
MIN_BODY_OPSET = 18


class _Body:
    """A little builder: ``b.op("Sub", a, c)`` appends a node and returns its output name.

    ``b.avals`` are the shapes and dtypes of the node's inputs at the exported call (None for
    an omitted optional input); a body that depends on one records it with ``b.specialize``,
    which puts it into the overload name."""

    def __init__(self, avals):
        self.nodes: list[onnx.NodeProto] = []
        self.avals = avals
        self.key: dict[str, object] = {}

    def op(self, op_type: str, *inputs: str, n_out: int = 1, **attrs):
        outs = [f"t{len(self.nodes)}_{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def specialize(self, **facts) -> None:
        self.key.update(facts)

    def const(self, value: float, like: str) -> str:
        c = self.op("Constant", value=helper.make_tensor("c", onnx.TensorProto.FLOAT, [], [value]))
        return self.op("CastLike", c, like)

    def ints(self, values) -> str:
        values = list(values)
        return self.op("Constant", value=helper.make_tensor(
            "i", onnx.TensorProto.INT64, [len(values)], values))

    def zeros_like(self, x: str) -> str:
        return self.op("CastLike", self.op("ConstantOfShape", self.op("Shape", x)), x)

    def count(self, x: str, like: str, axis: int | None = None) -> str:
        """The number of elements of ``x`` (per position of ``axis``), as ``like``'s type."""
        n = self.op("Size", x)
        if axis is not None:
            n = self.op("Div", n, self.op("Gather", self.op("Shape", x), self.ints([axis]),
                                          axis=0))
            n = self.op("Squeeze", n)
        return self.op("CastLike", n, like)

    def reduce(self, loss: str, reduction: str) -> str:
        if reduction == "sum":
            return self.op("ReduceSum", loss, keepdims=0)
        if reduction == "mean":
            return self.op("ReduceMean", loss, keepdims=0)
        return self.op("Identity", loss)


def _relu_n(b, x, *, n):
    return b.op("Clip", x, b.const(0.0, x), b.const(n, x))


def _mse(b, p, t, *, reduction):
    d = b.op("Sub", p, t)
    return b.reduce(b.op("Mul", d, d), reduction)


def _mae(b, p, t, *, reduction):
    return b.reduce(b.op("Abs", b.op("Sub", p, t)), reduction)


def _msle(b, p, t, *, reduction):
    one = b.const(1.0, p)
    d = b.op("Sub", b.op("Log", b.op("Add", p, one)), b.op("Log", b.op("Add", t, one)))
    return b.reduce(b.op("Mul", d, d), reduction)


def _hinge(b, s, y, *, reduction):
    return b.reduce(b.op("Relu", b.op("Sub", b.const(1.0, s), b.op("Mul", y, s))), reduction)


def _kl(b, lp, t, *, log_target, reduction):
    zero = b.const(0.0, t)
    if log_target:
        empty = b.op("IsInf", t, detect_positive=0)
        safe = b.op("Where", empty, zero, t)
        loss = b.op("Mul", b.op("Exp", safe), b.op("Sub", safe, lp))
    else:
        empty = b.op("Equal", t, zero)
        safe = b.op("Where", empty, b.const(1.0, t), t)
        loss = b.op("Mul", t, b.op("Sub", b.op("Log", safe), lp))
    return b.reduce(b.op("Where", empty, zero, loss), reduction)


def _bce(b, z, t, *, reduction):
    zero = b.const(0.0, z)
    loss = b.op("Sub", b.op("Max", z, zero), b.op("Mul", z, t))
    loss = b.op("Add", loss, b.op("Softplus", b.op("Neg", b.op("Abs", z))))
    return b.reduce(loss, reduction)


def _cross_entropy(b, x, t, *, from_logits, axis, reduction):
    zero = b.const(0.0, t)
    logp = b.op("LogSoftmax", x, axis=axis) if from_logits else b.op("Log", x)
    empty = b.op("Equal", t, zero)
    term = b.op("Where", empty, zero, b.op("Mul", t, b.op("Where", empty, zero, logp)))
    axes = b.op("Constant", value=helper.make_tensor("a", onnx.TensorProto.INT64, [1], [axis]))
    return b.reduce(b.op("Neg", b.op("ReduceSum", term, axes, keepdims=0)), reduction)


# ------------------------------------------------------------------------- gradient ops

def _masked(b, mask, dy):
    return b.op("Where", mask, dy, b.const(0.0, dy))


def _relu_gradient(b, y, dy):
    return _masked(b, b.op("Greater", y, b.const(0.0, y)), dy)


def _relu_n_gradient(b, y, dy, *, n):
    inside = b.op("And", b.op("Greater", y, b.const(0.0, y)), b.op("Less", y, b.const(n, y)))
    return _masked(b, inside, dy)


def _leaky_relu_gradient(b, y, dy, *, alpha):
    # the sign bit of y: y < 0, or -0.0 (1/y = -inf).  (A NaN's sign bit is not visible to
    # ONNX ops: a NaN y gives dy, where jaxops reads its sign bit.)
    zero = b.const(0.0, y)
    negative = b.op("Or", b.op("Less", y, zero), b.op("Less", b.op("Reciprocal", y), zero))
    return b.op("Where", negative, b.op("Mul", dy, b.const(alpha, dy)), dy)


def _softsign_gradient(b, x, dy):
    r = b.op("Reciprocal", b.op("Add", b.const(1.0, x), b.op("Abs", x)))
    return b.op("Mul", dy, b.op("Mul", r, r))


def _sigmoid_gradient(b, y, dy):
    return b.op("Mul", dy, b.op("Mul", y, b.op("Sub", b.const(1.0, y), y)))


def _tanh_gradient(b, y, dy):
    return b.op("Mul", dy, b.op("Sub", b.const(1.0, y), b.op("Mul", y, y)))


def _exp_gradient(b, y, dy):
    return b.op("Mul", dy, y)


def _log_gradient(b, x, dy):
    return b.op("Div", dy, x)


def _clip_gradient(b, y, dy, lo, hi):
    if lo is None and hi is None:
        return b.op("Identity", dy)
    masks = ([b.op("Greater", y, b.op("CastLike", lo, y))] if lo is not None else []) + (
        [b.op("Less", y, b.op("CastLike", hi, y))] if hi is not None else [])
    return _masked(b, masks[0] if len(masks) == 1 else b.op("And", *masks), dy)


def _prelu_gradient(b, x, slope, dy):
    rank, shape = len(b.avals[0].shape), tuple(b.avals[1].shape)
    b.specialize(rank=rank, slope_shape="x".join(map(str, shape)) or "scalar")
    negative = b.op("Less", x, b.const(0.0, x))
    dx = b.op("Where", negative, b.op("Mul", slope, dy), dy)
    lead = rank - len(shape)  # slope broadcasts from the right: sum where it was stretched
    axes = list(range(lead)) + [lead + i for i, n in enumerate(shape) if n == 1]
    dslope = b.op("Where", negative, b.op("Mul", dy, x), b.const(0.0, dy))
    if axes:
        dslope = b.op("ReduceSum", dslope, b.ints(axes), keepdims=1)
    return dx, b.op("Reshape", dslope, b.ints(shape))


def _softmax_gradient(b, y, dy, *, axis):
    inner = b.op("ReduceSum", b.op("Mul", dy, y), b.ints([axis]), keepdims=1)
    return b.op("Mul", y, b.op("Sub", dy, inner))


def _log_softmax_gradient(b, y, dy, *, axis):
    total = b.op("ReduceSum", dy, b.ints([axis]), keepdims=1)
    return b.op("Sub", dy, b.op("Mul", b.op("Exp", y), total))


def _bce_gradient(b, z, t, dloss, *, reduction):
    g = b.op("Div", dloss, b.count(z, dloss)) if reduction == "mean" else dloss
    return b.op("Mul", b.op("Sub", b.op("Sigmoid", z), t), g)


def _cross_entropy_gradient(b, x, t, dloss, *, from_logits, axis, reduction):
    g = b.op("Div", dloss, b.count(x, dloss, axis)) if reduction == "mean" else dloss
    if reduction == "none":
        g = b.op("Unsqueeze", g, b.ints([axis]))
    if from_logits:
        # jaxops' softmax of a fully masked (all -inf) row is 0; ONNX's Softmax gives NaN
        empty_row = b.op("Equal", b.op("ReduceMax", x, b.ints([axis]), keepdims=1),
                         b.const(float("-inf"), x))
        p = b.op("Where", empty_row, b.const(0.0, x), b.op("Softmax", x, axis=axis))
        dx = b.op("Sub", b.op("Mul", p, b.op("ReduceSum", t, b.ints([axis]), keepdims=1)), t)
    else:
        zero = b.const(0.0, t)
        empty = b.op("Equal", t, zero)
        dx = b.op("Where", empty, zero, b.op("Neg", b.op(
            "Div", t, b.op("Where", empty, b.const(1.0, x), x))))
    return b.op("Mul", dx, g)


def _label_coefficient(b, scores, labels, weights, dloss, ignore_index, reduction):
    """(coef, safe): d total / d loss_n = w[label_n] * dloss (NaN for an out-of-range label),
    spread over the reduction, and the labels clamped into range; as jaxops computes it."""
    c = b.op("Gather", b.op("Shape", scores), b.ints([1]), axis=0)
    c = b.op("CastLike", c, labels)
    zero_l = b.op("CastLike", b.ints([0]), labels)
    out_of_range = b.op("Or", b.op("Less", labels, zero_l),
                        b.op("GreaterOrEqual", labels, c))
    if ignore_index is not None:
        ignored = b.op("Equal", labels, b.op("CastLike", b.ints([ignore_index]), labels))
        invalid = b.op("And", out_of_range, b.op("Not", ignored))
        skip = b.op("Or", ignored, invalid)
    else:
        ignored, invalid, skip = None, out_of_range, out_of_range
    safe = b.op("Where", skip, zero_l, labels)
    zero, one = b.const(0.0, dloss), b.const(1.0, dloss)
    if weights is not None:
        w = b.op("CastLike", b.op("Gather", weights, safe, axis=0), dloss)
    else:
        w = b.op("Where", b.op("Equal", labels, labels), one, zero)  # ones, labels' shape
    if ignored is not None:
        w = b.op("Where", ignored, zero, w)
    g = dloss
    if reduction == "mean":
        denom = b.op("ReduceSum", w, keepdims=0)
        empty = b.op("Equal", denom, zero)
        g = b.op("Where", empty, zero, b.op("Div", g, b.op("Where", empty, one, denom)))
    nan = b.const(float("nan"), dloss)
    coef = b.op("Where", invalid, nan, b.op("Mul", w, g))
    return b.op("Unsqueeze", coef, b.ints([1])), safe


def _one_hot(b, safe, scores, like):
    """onehot(safe) on axis 1 as ``like``'s type: labels == a (1, C, 1, ...) class iota.
    (Not ONNX's OneHot: onnxruntime's CPU kernel lacks most of its type combinations.)"""
    rank = len(b.avals[0].shape)
    b.specialize(rank=rank)
    c = b.op("Squeeze", b.op("Gather", b.op("Shape", scores), b.ints([1]), axis=0))
    classes = b.op("Range", b.op("Squeeze", b.ints([0])), c, b.op("Squeeze", b.ints([1])))
    classes = b.op("Reshape", b.op("CastLike", classes, safe), b.ints([1, -1] + [1] * (rank - 2)))
    hit = b.op("Equal", b.op("Unsqueeze", safe, b.ints([1])), classes)
    return b.op("Where", hit, b.const(1.0, like), b.const(0.0, like))


def _sce_gradient(b, log_prob, labels, weights, dloss, *, ignore_index, reduction):
    coef, safe = _label_coefficient(b, log_prob, labels, weights, dloss, ignore_index,
                                    reduction)
    p = b.op("Exp", log_prob)
    return b.op("Mul", b.op("Sub", p, _one_hot(b, safe, log_prob, p)), coef)


def _linear_cross_entropy(b, h, w, labels, weights, *, ignore_index, reduction, **unused):
    """The logits materialized (an ONNX graph has no chunked loop worth its cost)."""
    z = b.op("MatMul", h, w)
    attrs = {"reduction": reduction} | ({} if ignore_index is None else
                                        {"ignore_index": ignore_index})
    return b.op("SoftmaxCrossEntropyLoss", z, labels, *([weights] if weights else []), **attrs)


def _linear_cross_entropy_gradient(b, h, w, labels, weights, dloss, *, ignore_index,
                                   reduction, **unused):
    dz = _sce_gradient(b, b.op("LogSoftmax", b.op("MatMul", h, w), axis=1), labels, weights,
                       dloss, ignore_index=ignore_index, reduction=reduction)
    return (b.op("MatMul", dz, b.op("Transpose", w, perm=[1, 0])),
            b.op("MatMul", b.op("Transpose", h, perm=[1, 0]), dz))


def _nll_gradient(b, x, labels, weights, dloss, *, ignore_index, reduction):
    coef, safe = _label_coefficient(b, x, labels, weights, dloss, ignore_index, reduction)
    return b.op("CastLike", b.op("Neg", b.op("Mul", _one_hot(b, safe, x, coef), coef)), x)


def _batch_norm_gradient(b, x, scale, mean, var, dy, *, epsilon, training):
    rank = len(b.avals[0].shape)
    b.specialize(rank=rank)
    axes = b.ints([0, *range(2, rank)])

    def per_channel(v):
        return b.op("Unsqueeze", v, axes)

    inv = b.op("Reciprocal", b.op("Sqrt", b.op("Add", var, b.const(epsilon, var))))
    xhat = b.op("Mul", b.op("Sub", x, per_channel(mean)), per_channel(inv))
    dbias = b.op("ReduceSum", dy, axes, keepdims=0)
    dscale = b.op("ReduceSum", b.op("Mul", dy, xhat), axes, keepdims=0)
    k = per_channel(b.op("Mul", scale, inv))
    if training:
        centred = b.op("Add", per_channel(dbias), b.op("Mul", xhat, per_channel(dscale)))
        centred = b.op("Div", centred, b.count(x, dy, 1))
        dx = b.op("Mul", k, b.op("Sub", dy, centred))
        dmean = dvar = b.zeros_like(mean)
    else:
        dx = b.op("Mul", k, dy)
        dmean = b.op("Neg", b.op("Mul", dbias, b.op("Mul", scale, inv)))
        dvar = b.op("Mul", b.const(-0.5, dscale), b.op("Mul", dscale, b.op(
            "Mul", scale, b.op("Mul", inv, inv))))
    return dx, dscale, dbias, dmean, dvar


#: op_type -> body builder ``(builder, *input names (None if omitted), **attributes) ->
#: output name(s)``.
BODIES: dict[str, Callable[..., str | tuple[str, ...]]] = {
    "ReluN": _relu_n,
    "MeanSquaredError": _mse,
    "MeanAbsoluteError": _mae,
    "MeanSquaredLogError": _msle,
    "HingeLoss": _hinge,
    "KLDivergence": _kl,
    "SigmoidCrossEntropyWithLogits": _bce,
    "CrossEntropy": _cross_entropy,
    "ReluGradient": _relu_gradient,
    "ReluNGradient": _relu_n_gradient,
    "LeakyReluGradient": _leaky_relu_gradient,
    "SoftsignGradient": _softsign_gradient,
    "SigmoidGradient": _sigmoid_gradient,
    "TanhGradient": _tanh_gradient,
    "ExpGradient": _exp_gradient,
    "LogGradient": _log_gradient,
    "ClipGradient": _clip_gradient,
    "PReluGradient": _prelu_gradient,
    "SoftmaxGradient": _softmax_gradient,
    "LogSoftmaxGradient": _log_softmax_gradient,
    "SigmoidCrossEntropyWithLogitsGradient": _bce_gradient,
    "CrossEntropyGradient": _cross_entropy_gradient,
    "SoftmaxCrossEntropyLossGradient": _sce_gradient,
    "NegativeLogLikelihoodLossGradient": _nll_gradient,
    "BatchNormalizationGradient": _batch_norm_gradient,
    "LinearCrossEntropyLoss": _linear_cross_entropy,
    "LinearCrossEntropyLossGradient": _linear_cross_entropy_gradient,
}


def overload_name(key: dict) -> str:
    """The overload of a function for one combination (stable, readable)."""
    return ",".join(f"{k}={v}" for k, v in sorted(key.items()))


#: Bodies that compute in their inputs' own type, as the jaxops ops do (a comparison with
#: ``n`` rounded to float16 is not one with ``n`` in float32).
NATIVE_TYPE = frozenset({"ReluN", "ReluGradient", "ReluNGradient", "ClipGradient"})


def _is_float(dtype) -> bool:
    return jax.dtypes.issubdtype(dtype, np.floating)  # bfloat16 too (numpy: no)


def _compute_dtype(avals) -> np.dtype:
    """The type a body computes in: float64 if an input is, else float32 (as jaxops's
    ``upcast``)."""
    floats = [np.dtype(a.dtype) for a in avals if a is not None and _is_float(a.dtype)]
    return np.dtype(np.float64) if np.dtype(np.float64) in floats else np.dtype(np.float32)


def function_proto(schema: OpSchema, attrs: dict, opset: int, in_avals, out_avals
                   ) -> onnx.FunctionProto:
    """The model-local function for one call of ``schema``: its (canonical) attributes, its
    inputs' avals (None where an optional input is omitted) and its outputs' avals."""
    if schema.name not in BODIES:
        raise NotImplementedError(
            f"jaxops.onnx.export: {schema.name} (jaxops.{schema.function}) has no ONNX body "
            f"yet; exportable jaxops-domain ops: {', '.join(sorted(BODIES))}."
        )
    if opset < MIN_BODY_OPSET:
        raise NotImplementedError(f"jaxops.onnx.export: {schema.name} exports as a function "
                                  f"written for opset >= {MIN_BODY_OPSET}, not {opset}.")
    b = _Body(in_avals)
    key = dict(attrs)
    key.update({p.name: "absent" for p, a in zip(schema.inputs, in_avals, strict=True)
                if a is None})
    native = schema.name in NATIVE_TYPE
    compute = _compute_dtype(in_avals)
    inputs = []
    for p, a in zip(schema.inputs, in_avals, strict=True):
        name = p.name if a is not None else None
        if a is not None and not native and _is_float(a.dtype) and a.dtype != compute:
            name = b.op("Cast", name, to=helper.np_dtype_to_tensor_dtype(compute))
            key["compute"] = compute.name
        inputs.append(name)
    outs = BODIES[schema.name](b, *inputs, **attrs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    for out, p, a in zip(outs, schema.outputs, out_avals, strict=True):
        if not native and np.dtype(a.dtype) != compute:
            b.nodes.append(helper.make_node("Cast", [out], [p.name],
                                            to=helper.np_dtype_to_tensor_dtype(a.dtype)))
            key["compute"] = compute.name
        else:
            b.nodes.append(helper.make_node("Identity", [out], [p.name]))
    if "compute" in key:  # the casts depend on every type: one overload per signature
        key["types"] = "-".join(np.dtype(a.dtype).name for a in (*in_avals, *out_avals)
                                if a is not None)
    key.update(b.key)
    # trailing omitted inputs are left out of the node, so of the function's signature too
    last = max(i for i, a in enumerate(in_avals) if a is not None)
    return helper.make_function(
        JAXOPS_DOMAIN, schema.name, [p.name for p in schema.inputs[:last + 1]],
        [p.name for p in schema.outputs[:len(out_avals)]], b.nodes,
        [helper.make_opsetid("", opset)],
        attributes=sorted(a.onnx_name or a.name for a in schema.attributes if a.onnx),
        doc_string=schema.doc, overload=overload_name(key),
    )
