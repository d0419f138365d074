"""Bodies, in standard ONNX ops, of the jaxops-domain operators that ONNX lacks.

Each is an ONNX model-local function (``FunctionProto``) in the ``ai.jaxops`` domain, so any
ONNX runtime can run an exported model.  A function body cannot branch on an attribute
(``reduction="none"`` returns a tensor, ``"mean"`` a scalar), so each attribute combination an
exported model uses gets its own *overload* of the function (ONNX IR 10): the node names the
overload and still carries its attributes, which is what :func:`jaxops.onnx.import_model`
reads.  Constants are ``CastLike``-d to the input, so one body serves every float type.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
from onnx import helper

from jaxops.schema import JAXOPS_DOMAIN, OpSchema

#: The oldest ai.onnx opset the function bodies are valid in (ReduceMean's axes input); a
#: function imports the model's own opset, as the checker requires.
MIN_BODY_OPSET = 18


class _Body:
    """A little builder: ``b.op("Sub", a, c)`` appends a node and returns its output name."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []

    def op(self, op_type: str, *inputs: str, n_out: int = 1, **attrs):
        outs = [f"t{len(self.nodes)}_{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value: float, like: str) -> str:
        c = self.op("Constant", value=helper.make_tensor("c", onnx.TensorProto.FLOAT, [], [value]))
        return self.op("CastLike", c, like)

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


#: op_type -> body builder ``(builder, *input names, **attributes) -> output name``.
BODIES: dict[str, Callable[..., str]] = {
    "ReluN": _relu_n,
    "MeanSquaredError": _mse,
    "MeanAbsoluteError": _mae,
    "MeanSquaredLogError": _msle,
    "HingeLoss": _hinge,
    "KLDivergence": _kl,
    "SigmoidCrossEntropyWithLogits": _bce,
    "CrossEntropy": _cross_entropy,
}


def overload_name(attrs: dict) -> str:
    """The overload of a function for one attribute combination (stable, readable)."""
    return ",".join(f"{k}={v}" for k, v in sorted(attrs.items()))


def function_proto(schema: OpSchema, attrs: dict, opset: int) -> onnx.FunctionProto:
    """The model-local function for ``schema`` with these (canonical) attributes."""
    if schema.name not in BODIES:
        raise NotImplementedError(
            f"jaxops.onnx.export: {schema.name} (jaxops.{schema.function}) has no ONNX body "
            f"yet; exportable jaxops-domain ops: {', '.join(sorted(BODIES))}."
        )
    if opset < MIN_BODY_OPSET:
        raise NotImplementedError(f"jaxops.onnx.export: {schema.name} exports as a function "
                                  f"written for opset >= {MIN_BODY_OPSET}, not {opset}.")
    b = _Body()
    inputs = [p.name for p in schema.inputs]
    out = BODIES[schema.name](b, *inputs, **attrs)
    b.nodes.append(helper.make_node("Identity", [out], [schema.outputs[0].name]))
    return helper.make_function(
        JAXOPS_DOMAIN, schema.name, inputs, [schema.outputs[0].name], b.nodes,
        [helper.make_opsetid("", opset)], attributes=sorted(attrs),
        doc_string=schema.doc, overload=overload_name(attrs),
    )
