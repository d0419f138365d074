"""Import an ONNX model as a pure JAX function.

Nodes run as jaxops ops where jaxops has the op (so gradients are the registered ones) and as
``jnp``/``lax`` otherwise.  Version-dependent semantics follow the opset the model imports:
Softmax/LogSoftmax before 13 flatten to 2-D at ``axis`` (default 1), after 13 normalize one
axis (default -1); Clip before 11 takes ``min``/``max`` attributes, after 11 optional inputs;
BatchNormalization 14/15 read ``training_mode``.  Float initializers are parameters, returned
in ``ImportedModel.params`` and replaceable per call (for training); integer initializers and
``Constant`` nodes are static (shapes, axes).

Untrusted models: the importer only reads the protobuf it is given (no file paths, no external
data, no custom code); a malformed model raises ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import onnx
from onnx import helper, numpy_helper

import jaxops as jo
from jaxops.schema import JAXOPS_DOMAIN

#: The ai.onnx opsets imported: 7 made arithmetic broadcast like numpy; 28 is the newest the
#: tested onnx (1.23) defines.  A newer opset may bring op versions this module has not read.
MIN_IMPORT_OPSET, MAX_IMPORT_OPSET = 7, 28

Handler = Callable[..., Any]
_HANDLERS: dict[tuple[str, str], Handler] = {}


def _op(*op_types: str, domain: str = ""):
    def register(fn):
        for t in op_types:
            _HANDLERS[(domain, t)] = fn
        return fn

    return register


class _Node:
    """A node's inputs (None for omitted optionals), static inputs, attributes, version."""

    def __init__(self, proto, inputs, statics, version):
        self.proto, self.inputs, self.statics, self.version = proto, inputs, statics, version
        self.attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}

    def attr(self, name, default=None):
        v = self.attrs.get(name, default)
        return v.decode() if isinstance(v, bytes) else v

    def static(self, i, what):
        if i >= len(self.statics) or self.statics[i] is None:
            raise ValueError(f"jaxops.onnx.import_model: {self.proto.op_type} node "
                             f"{self.proto.name!r}: input {i} ({what}) must be a constant "
                             "(an initializer or Constant node); dynamic shapes are not "
                             "supported.")
        return self.statics[i]


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
               "Erf": jax.scipy.special.erf, "Not": jnp.logical_not, "IsNaN": jnp.isnan,
               "Identity": lambda x: x, "Softplus": jax.nn.softplus,
               # jaxops ops: their registered gradients apply
               "Exp": jo.exp, "Log": jo.log, "Tanh": jo.tanh, "Sigmoid": jo.sigmoid,
               "Relu": jo.relu, "Softsign": jo.softsign}.items():
    _op(_t)(lambda n, f=_f: f(n.inputs[0]))


def _fold(f, xs):
    out = xs[0]
    for x in xs[1:]:
        out = f(out, x)
    return out


@_op("Constant")
def _constant(n):  # evaluated statically by ImportedModel.__call__, never through here
    raise AssertionError("Constant nodes are evaluated statically")


@_op("LeakyRelu")
def _leaky(n):
    return jo.leaky_relu(n.inputs[0], alpha=n.attr("alpha", 0.01))


@_op("PRelu")
def _prelu(n):
    return jo.prelu(*n.inputs[:2])


@_op("Mod")
def _mod(n):
    return (jnp.fmod if n.attr("fmod", 0) else jnp.remainder)(*n.inputs[:2])


@_op("IsInf")
def _isinf(n):
    x = n.inputs[0]
    pos, neg = n.attr("detect_positive", 1), n.attr("detect_negative", 1)
    return (jnp.isposinf(x) & bool(pos)) | (jnp.isneginf(x) & bool(neg))


@_op("Clip")
def _clip(n):
    x = n.inputs[0]
    if n.version < 11:
        lo, hi = n.attr("min", -np.inf), n.attr("max", np.inf)
        lo, hi = jnp.asarray(lo, x.dtype), jnp.asarray(hi, x.dtype)
    else:
        lo = n.inputs[1] if len(n.inputs) > 1 else None
        hi = n.inputs[2] if len(n.inputs) > 2 else None
    return jo.clip(x, lo, hi)


def _flattened(f, x, axis):
    """Softmax-1/11 semantics: normalize over the flattened trailing dims from ``axis``."""
    axis = axis % x.ndim
    shape = x.shape
    y = f(x.reshape(math.prod(shape[:axis]), math.prod(shape[axis:])), axis=-1)
    return y.reshape(shape)


@_op("Softmax", "LogSoftmax")
def _softmax(n):
    f = jo.softmax if n.proto.op_type == "Softmax" else jo.log_softmax
    x = n.inputs[0]
    if n.version < 13:
        return _flattened(f, x, n.attr("axis", 1))
    return f(x, axis=n.attr("axis", -1))


@_op("Cast")
def _cast(n):
    return n.inputs[0].astype(helper.tensor_dtype_to_np_dtype(n.attr("to")))


@_op("CastLike")
def _cast_like(n):
    return n.inputs[0].astype(n.inputs[1].dtype)


@_op("Where")
def _where(n):
    return jnp.where(*n.inputs[:3])


@_op("MatMul")
def _matmul(n):
    return jnp.matmul(*n.inputs[:2])


@_op("Gemm")
def _gemm(n):
    a, b = n.inputs[:2]
    a = a.T if n.attr("transA", 0) else a
    b = b.T if n.attr("transB", 0) else b
    y = n.attr("alpha", 1.0) * (a @ b)
    if len(n.inputs) > 2 and n.inputs[2] is not None:
        y = y + n.attr("beta", 1.0) * n.inputs[2]
    return y.astype(a.dtype)


@_op("Einsum")
def _einsum(n):
    return jnp.einsum(n.attr("equation"), *n.inputs)


@_op("Reshape")
def _reshape(n):
    x, shape = n.inputs[0], [int(s) for s in n.static(1, "shape")]
    if not n.attr("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@_op("Expand")
def _expand(n):
    x, shape = n.inputs[0], tuple(int(s) for s in n.static(1, "shape"))
    return jnp.broadcast_to(x, jnp.broadcast_shapes(x.shape, shape))


def _axes(n, default=None):
    if n.version >= 13 and len(n.inputs) > 1 and n.inputs[1] is not None:
        return tuple(int(a) for a in n.static(1, "axes"))
    a = n.attr("axes", default)
    return None if a is None else tuple(a)


@_op("Squeeze")
def _squeeze(n):
    return jnp.squeeze(n.inputs[0], axis=_axes(n))


@_op("Unsqueeze")
def _unsqueeze(n):
    return jnp.expand_dims(n.inputs[0], _axes(n))


@_op("Transpose")
def _transpose(n):
    return jnp.transpose(n.inputs[0], n.attr("perm"))


@_op("Concat")
def _concat(n):
    return jnp.concatenate(n.inputs, axis=n.attr("axis"))


@_op("Flatten")
def _flatten(n):
    x, axis = n.inputs[0], n.attr("axis", 1) % max(n.inputs[0].ndim, 1)
    return x.reshape(math.prod(x.shape[:axis]), -1)


@_op("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd")
def _reduce(n):
    f = {"ReduceSum": jnp.sum, "ReduceMean": jnp.mean, "ReduceMax": jnp.max,
         "ReduceMin": jnp.min, "ReduceProd": jnp.prod}[n.proto.op_type]
    axes_as_input = n.version >= (13 if n.proto.op_type == "ReduceSum" else 18)
    if axes_as_input:
        axes = (tuple(int(a) for a in n.static(1, "axes"))
                if len(n.inputs) > 1 and n.inputs[1] is not None else None)
    else:
        axes = n.attr("axes")
        axes = None if axes is None else tuple(axes)
    if not axes and n.attr("noop_with_empty_axes", 0):
        return n.inputs[0]
    return f(n.inputs[0], axis=axes or None, keepdims=bool(n.attr("keepdims", 1)))


@_op("ArgMax", "ArgMin")
def _argmax(n):
    f = jnp.argmax if n.proto.op_type == "ArgMax" else jnp.argmin
    return f(n.inputs[0], axis=n.attr("axis", 0), keepdims=bool(n.attr("keepdims", 1)))


@_op("BatchNormalization")
def _batch_norm(n):
    n_out = len([o for o in n.proto.output if o])
    if n.version < 14 and n_out > 1:
        raise ValueError(
            f"jaxops.onnx.import_model: BatchNormalization-{n.version} with {n_out} outputs is "
            "training mode by output count (mean, var, saved_mean, saved_var); only its "
            "inference form (one output) is imported. Opset 14 and later say training_mode.")
    if n.attr("spatial", 1) == 0:
        raise ValueError("jaxops.onnx.import_model: BatchNormalization with spatial=0 "
                         "(statistics per element, not per channel) is not supported.")
    training = bool(n.attr("training_mode", 0)) if n.version >= 14 else False
    y, m, v = jo.batch_norm(*n.inputs[:5], epsilon=n.attr("epsilon", 1e-5),
                            momentum=n.attr("momentum", 0.9), training=training)
    return (y, m, v) if training else y


@_op("SoftmaxCrossEntropyLoss")
def _sce(n):
    weights = n.inputs[2] if len(n.inputs) > 2 else None
    n_out = len([o for o in n.proto.output if o])
    return jo.softmax_cross_entropy(
        n.inputs[0], n.inputs[1], weights, ignore_index=n.attr("ignore_index"),
        reduction=n.attr("reduction", "mean"), return_log_prob=n_out > 1)


@_op("NegativeLogLikelihoodLoss")
def _nll(n):
    weight = n.inputs[2] if len(n.inputs) > 2 else None
    return jo.nll_loss(n.inputs[0], n.inputs[1], weight, ignore_index=n.attr("ignore_index"),
                       reduction=n.attr("reduction", "mean"))


@_op("Gather")
def _gather(n):
    return jnp.take(n.inputs[0], jnp.asarray(n.inputs[1]), axis=n.attr("axis", 0))


@_op("Slice")
def _slice(n):
    x = n.inputs[0]
    if n.version < 10:
        starts, ends, axes = n.attr("starts"), n.attr("ends"), n.attr("axes")
        steps = None
    else:
        starts, ends = n.static(1, "starts"), n.static(2, "ends")
        axes = n.static(3, "axes") if len(n.inputs) > 3 and n.inputs[3] is not None else None
        steps = n.static(4, "steps") if len(n.inputs) > 4 and n.inputs[4] is not None else None
    return x[_slice_index(x.ndim, starts, ends, axes, steps)]


def _slice_index(ndim, starts, ends, axes=None, steps=None) -> tuple:
    """ONNX Slice's parameters as a Python index (which clamps out-of-range bounds as ONNX
    does)."""
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * ndim
    for a, b, e, k in zip(axes, starts, ends, steps, strict=True):
        index[int(a)] = slice(int(b), int(e), int(k))
    return tuple(index)


@_op("Pad")
def _pad(n):
    x = n.inputs[0]
    if n.version < 11:
        pads, value = n.attr("pads"), n.attr("value", 0.0)
        axes = None
    else:
        pads = n.static(1, "pads")
        value = n.inputs[2] if len(n.inputs) > 2 and n.inputs[2] is not None else 0
        axes = n.static(3, "axes") if len(n.inputs) > 3 and n.inputs[3] is not None else None
    axes = list(range(x.ndim)) if axes is None else [int(a) % x.ndim for a in axes]
    config = [(0, 0)] * x.ndim
    for k, a in enumerate(axes):
        config[a] = (int(pads[k]), int(pads[k + len(axes)]))
    mode = n.attr("mode", "constant")
    if mode == "constant":  # lax.pad: negative pads crop, as in ONNX
        return jax.lax.pad(x, jnp.asarray(value, x.dtype).reshape(()),
                           [(lo, hi, 0) for lo, hi in config])
    if any(lo < 0 or hi < 0 for lo, hi in config) or mode not in ("reflect", "edge", "wrap"):
        raise ValueError(f"jaxops.onnx.import_model: Pad mode {mode!r} with pads {config}.")
    return jnp.pad(x, config, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])


@_op("ConstantOfShape")
def _constant_of_shape(n):
    value = n.attr("value")
    value = (_to_array(value, "ConstantOfShape value") if value is not None
             else np.zeros(1, np.float32))
    return jnp.full(tuple(int(d) for d in n.static(0, "shape")), value.reshape(()))


@_op("Shape", "Size")
def _shape(n):  # evaluated statically (shapes are static under jit), never through here
    raise AssertionError("Shape and Size are evaluated statically")


def _static_value(node, ins, version):
    """The numpy value of a shape computation whose inputs are known at trace time (shapes,
    integer constants), else None.  Under ``jit`` these must stay numpy, not traced."""
    t, attrs = node.op_type, {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if t == "Shape":
        shape = np.asarray(np.shape(ins[0]), np.int64)
        return shape[attrs.get("start", 0):attrs.get("end", None)]
    if t == "Size":
        return np.asarray(np.size(ins[0]), np.int64)
    if any(not isinstance(x, np.ndarray) for x in ins if x is not None):
        return None
    if t == "Gather":
        return np.take(ins[0], ins[1], axis=attrs.get("axis", 0))
    if t in ("Squeeze", "Unsqueeze"):
        axes = tuple(int(a) for a in (ins[1] if len(ins) > 1 and version >= 13
                                       else attrs.get("axes", ())))
        if t == "Squeeze":
            return np.squeeze(ins[0], axis=axes or None)
        return np.expand_dims(ins[0], axes)
    if t == "Concat":
        return np.concatenate(ins, axis=attrs["axis"])
    if t == "Cast":
        return ins[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if t in ("Add", "Sub", "Mul") and all(np.issubdtype(x.dtype, np.integer) for x in ins):
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[t](*ins)
    if t == "Div" and all(np.issubdtype(x.dtype, np.integer) for x in ins):
        return np.trunc(np.divide(*ins)).astype(np.result_type(*ins))
    if t == "Identity":
        return ins[0]
    if t == "Slice" and version >= 10:  # Shape -> Slice -> Reshape, as exporters write it
        optional = [*ins[3:5], None, None]
        return ins[0][_slice_index(ins[0].ndim, ins[1], ins[2], optional[0], optional[1])]
    return None


# ------------------------------------------------------------------------ ai.jaxops ops

def _jaxops_domain_op(n):
    schema = jo.schema.get(n.proto.op_type)
    attrs = {a.name: n.attr(a.onnx_name or a.name, a.default) for a in schema.attributes
             if a.onnx}
    for a in schema.attributes:
        if a.type == "bool" and attrs.get(a.name) is not None:
            attrs[a.name] = bool(attrs[a.name])
    return getattr(jo, schema.function)(*n.inputs, **attrs)


for _s in jo.schema.all_schemas():
    if _s.domain == JAXOPS_DOMAIN:
        _HANDLERS[(JAXOPS_DOMAIN, _s.name)] = _jaxops_domain_op


def _to_array(t: onnx.TensorProto, what: str) -> np.ndarray:
    try:
        return numpy_helper.to_array(t)
    except Exception as e:  # an unknown data type, data of the wrong length, ...
        raise ValueError(f"jaxops.onnx.import_model: {what} is not a valid tensor "
                         f"({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------- the model

class ImportedModel:
    """An ONNX graph as a JAX function: ``model(*inputs, params=None)``.

    ``params`` maps the float initializers' names to arrays (``model.params`` by default);
    pass a modified dict to train them (``jax.grad`` w.r.t. ``params`` works).  One output is
    returned as an array, several as a tuple.
    """

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        self.opsets = {o.domain or "": o.version for o in model.opset_import}
        self.params: dict[str, jax.Array] = {}
        self.statics: dict[str, np.ndarray] = {}
        for t in graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                raise ValueError(f"jaxops.onnx.import_model: initializer {t.name!r} uses "
                                 "external data; only self-contained models are imported.")
            value = _to_array(t, f"initializer {t.name!r}")
            if jax.dtypes.issubdtype(value.dtype, np.floating):  # bfloat16 too
                self.params[t.name] = jnp.asarray(value)
            else:
                self.statics[t.name] = value
        init_names = {t.name for t in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in init_names]
        self.output_names = [o.name for o in graph.output]
        for node in graph.node:
            self._handler(node)  # unknown ops fail here, before any call

    def _handler(self, node) -> Handler:
        domain = node.domain if node.domain not in ("ai.onnx",) else ""
        key = (domain, node.op_type)
        if key not in _HANDLERS:
            known = sorted(f"{d + '.' if d else ''}{t}" for d, t in _HANDLERS)
            raise ValueError(f"jaxops.onnx.import_model: unsupported op {node.op_type!r} in "
                             f"domain {node.domain or 'ai.onnx'!r}. Supported: "
                             f"{', '.join(known)}.")
        if domain == "":
            version = self.opsets.get("", 1)
            if not MIN_IMPORT_OPSET <= version <= MAX_IMPORT_OPSET:
                raise ValueError(
                    f"jaxops.onnx.import_model: the model imports ai.onnx opset {version}; "
                    f"supported: {MIN_IMPORT_OPSET} to {MAX_IMPORT_OPSET} (before "
                    f"{MIN_IMPORT_OPSET}, arithmetic broadcast by attributes, not numpy rules).")
            try:
                onnx.defs.get_schema(node.op_type, version, "")
            except onnx.defs.SchemaError:
                raise ValueError(f"jaxops.onnx.import_model: {node.op_type} does not exist in "
                                 f"opset {version}.") from None
        return _HANDLERS[key]

    def _version(self, node) -> int:
        if node.domain not in ("", "ai.onnx"):
            return self.opsets.get(node.domain, 1)
        return onnx.defs.get_schema(node.op_type, self.opsets.get("", 1), "").since_version

    def __call__(self, *inputs, params: dict[str, Any] | None = None):
        # ONNX broadcasts like numpy, whatever the caller's jax_numpy_rank_promotion says
        with jax.numpy_rank_promotion("allow"):
            return self._run(inputs, params)

    def _run(self, inputs, params):
        if len(inputs) != len(self.input_names):
            raise TypeError(f"jaxops.onnx: the model takes {len(self.input_names)} inputs "
                            f"({', '.join(self.input_names)}), got {len(inputs)}")
        env: dict[str, Any] = {**self.params, **(params or {})}
        static: dict[str, np.ndarray] = dict(self.statics)
        env.update(static)
        env.update(zip(self.input_names, (jnp.asarray(x) for x in inputs), strict=True))
        for node in self.model.graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                raw = helper.get_attribute_value(node.attribute[0])  # value, value_float, ...
                value = (_to_array(raw, f"Constant {node.output[0]!r}")
                         if isinstance(raw, onnx.TensorProto)
                         else np.asarray(raw, np.float32 if isinstance(raw, float) else None))
                static[node.output[0]] = value
                env[node.output[0]] = value if not jax.dtypes.issubdtype(value.dtype, np.floating) \
                    else jnp.asarray(value)
                continue
            ins = [env[name] if name else None for name in node.input]
            while ins and ins[-1] is None:
                ins.pop()
            if node.domain in ("", "ai.onnx"):
                value = _static_value(node, [static.get(name, x) for name, x in
                                             zip(node.input, ins, strict=False)],
                                      self._version(node))
                if value is not None:
                    static[node.output[0]] = env[node.output[0]] = value
                    continue
            ins = [jnp.asarray(x) if isinstance(x, np.ndarray) else x for x in ins]
            statics = [static.get(name) for name in node.input]
            out = self._handler(node)(_Node(node, ins, statics, self._version(node)))
            outs = out if isinstance(out, tuple) else (out,)
            for name, value in zip(node.output, outs, strict=False):
                if name:
                    env[name] = value
        result = tuple(env[name] for name in self.output_names)
        return result[0] if len(result) == 1 else result


def supported_imports() -> dict[str, dict[str, list[int]]]:
    """``{domain: {op_type: [versions]}}``: each op type ``import_model`` runs, with the
    versions of it (ONNX ``since_version``) found in ai.onnx opsets ``MIN_IMPORT_OPSET`` to
    the newest that the installed ``onnx`` knows."""
    newest = MAX_IMPORT_OPSET
    out: dict[str, dict[str, list[int]]] = {"ai.onnx": {}, JAXOPS_DOMAIN: {}}
    for domain, op_type in _HANDLERS:
        if domain == JAXOPS_DOMAIN:
            out[JAXOPS_DOMAIN][op_type] = [1]
            continue
        versions = set()
        for opset in range(MIN_IMPORT_OPSET, newest + 1):
            try:
                versions.add(onnx.defs.get_schema(op_type, opset, "").since_version)
            except onnx.defs.SchemaError:
                pass  # not yet in this opset
        out["ai.onnx"][op_type] = sorted(versions)
    return {d: dict(sorted(ops.items())) for d, ops in out.items()}


def import_model(model: onnx.ModelProto | bytes) -> ImportedModel:
    """Turn an ONNX model (a ``ModelProto`` or its serialized bytes) into a JAX function.

    The result works under ``jit``, ``grad`` and ``vmap``; its float initializers are
    ``.params``.  Raises ``ValueError`` for a malformed model, an unsupported op type or
    version, or external data.
    """
    if isinstance(model, (bytes, bytearray)):
        try:
            model = onnx.load_from_string(bytes(model))
        except Exception as e:  # protobuf's DecodeError and friends
            raise ValueError(f"jaxops.onnx.import_model: not an ONNX model ({e})") from None
    if not isinstance(model, onnx.ModelProto):
        raise TypeError("jaxops.onnx.import_model takes an onnx.ModelProto or its bytes, got "
                        f"{type(model).__name__} (load files yourself with onnx.load).")
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # ValidationError; UnicodeDecodeError on a corrupt name; ...
        raise ValueError(f"jaxops.onnx.import_model: invalid model: {e}") from None
    return ImportedModel(model)
