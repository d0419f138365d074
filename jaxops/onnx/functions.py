"""The machinery of hand-written ONNX function bodies: the builder a body is written with and
the model-local function made of one call.

An op that ONNX lacks (jaxops' ai.jaxops ops, gradient ops included) exports as a node backed
by a function of standard ops.  Its body is declared beside the op, in its family module, with
``Op.defonnx`` (``@relu_gradient.defonnx``: ``body(b, *input names, **attributes)``, written
with the :class:`_Body` builder handed in here, so the ops modules never import onnx); an op
without one gets a body derived from its implementation (``exporter.derived_function_proto``).

Each is an ONNX model-local function (``FunctionProto``) in the ``ai.jaxops`` domain, so any
ONNX runtime can run an exported model.  A function body cannot branch on an attribute
(``reduction="none"`` returns a tensor, ``"mean"`` a scalar) or on whether an optional input
was given, so each combination an exported model uses gets its own *overload* of the function
(ONNX IR 10): the node names the overload and still carries its attributes, which is what
:func:`jaxops.onnx.import_model` reads.  The overload name lists the attributes, the omitted
optional inputs (``min=absent``), the few shape facts a body needs (PReluGradient's slope
shape, BatchNormalizationGradient's rank) and, when the body computes in a wider type than its
inputs (float16/bfloat16 inputs compute in float32, as the jaxops op does), that type and
the exact input and output types the casts depend on.  Bodies declared with
``native_type=True`` compute in their inputs' type, as those ops do.  Constants are
``CastLike``-d to an input, so one body serves float32 and float64 alike.
"""

from __future__ import annotations

import jax
import numpy as np
import onnx
from onnx import helper

from jaxops._op import op_of
from jaxops.schema import OpSchema

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


def body_of(schema: OpSchema):
    """The op's hand-written body (declared beside it with ``Op.defonnx``), or None."""
    op = op_of(schema)
    return None if op is None else op.onnx_body


def overload_name(key: dict) -> str:
    """The overload of a function for one combination (stable, readable)."""
    return ",".join(f"{k}={v}" for k, v in sorted(key.items()))


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
    body = body_of(schema)
    if body is None:
        raise NotImplementedError(
            f"jaxops.onnx.export: {schema.name} (jaxops.{schema.function}) has no hand-written "
            "ONNX body (Op.defonnx); its body is derived from the implementation instead."
        )
    if opset < MIN_BODY_OPSET:
        raise NotImplementedError(f"jaxops.onnx.export: {schema.name} exports as a function "
                                  f"written for opset >= {MIN_BODY_OPSET}, not {opset}.")
    b = _Body(in_avals)
    key = dict(attrs)
    key.update({p.name: "absent" for p, a in zip(schema.inputs, in_avals, strict=True)
                if a is None})
    native = op_of(schema).onnx_native_type
    compute = _compute_dtype(in_avals)
    inputs = []
    for p, a in zip(schema.inputs, in_avals, strict=True):
        name = p.name if a is not None else None
        if a is not None and not native and _is_float(a.dtype) and a.dtype != compute:
            name = b.op("Cast", name, to=helper.np_dtype_to_tensor_dtype(compute))
            key["compute"] = compute.name
        inputs.append(name)
    outs = body(b, *inputs, **attrs)
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
        schema.domain, schema.name, [p.name for p in schema.inputs[:last + 1]],
        [p.name for p in schema.outputs[:len(out_avals)]], b.nodes,
        [helper.make_opsetid("", opset)],
        attributes=sorted(a.onnx_name or a.name for a in schema.attributes if a.onnx),
        doc_string=schema.doc, overload=overload_name(key),
    )
