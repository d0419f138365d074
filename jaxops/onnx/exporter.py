"""Export a JAX function that calls jaxops ops to an ONNX model.

The function is traced with :func:`jaxops._recording.recording`, in which every jaxops op is one
``jaxops_op`` equation carrying its schema and attributes; that equation becomes one ONNX node
(op_type, ONNX attribute names, the ai.onnx version the schema follows; where the model's
opset lacks that version, the standard ops of the op's implementation).  Ops that ONNX lacks
become nodes in the ``ai.jaxops`` domain backed by model-local functions (bodies declared
beside the ops with ``Op.defonnx``, built by :mod:`jaxops.onnx.functions`); an op without a
hand-written body becomes a node of its own domain whose function is derived from its
implementation (:func:`derived_function_proto`).  The JAX primitives of an ordinary model
(``dot_general``, elementwise arithmetic, reshapes, broadcasts, reductions, comparisons,
``select_n``, casts, nested ``jit``/``custom_jvp`` calls) map to standard ONNX ops; constants
and closed-over parameters become initializers.  Anything else raises ``NotImplementedError``
naming the primitive and the line that made it.
"""

from __future__ import annotations

import ast
import inspect
import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import onnx
from jax.extend import core as jex_core
from onnx import helper, numpy_helper

from jaxops._recording import jaxops_op_p, recording
from jaxops.onnx import functions
from jaxops.schema import JAXOPS_DOMAIN

#: The ai.onnx opset exported models import by default: the newest version of every op
#: jaxops follows (Softsign-22, NegativeLogLikelihoodLoss-22) is in it.
DEFAULT_OPSET = 22
_IR_VERSION = 10  # function overloads


def _tensor_type(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class _Graph:
    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        # model-local functions by (domain, op_type, overload), and the version each
        # non-standard domain is imported at
        self.functions: dict[tuple[str, str, str], onnx.FunctionProto] = {}
        self.domains: dict[str, int] = {}
        self.inline_calls = False  # a derived body: nested ops' bodies inlined, not called
        self.names: dict[Any, str] = {}
        # dynamic axis -> (input, axis): a graph input, or the input of a derived body
        self.dims: dict[str, tuple[str, int]] = {}
        self.folded: dict[Any, np.ndarray] = {}  # variables computed from constants only
        # names whose ONNX value has 1s where the JAX value was broadcast: (actual, full)
        self.unexpanded: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._expanded: dict[str, str] = {}
        self._count = itertools.count()

    def fresh(self, hint: str = "t") -> str:
        return f"{hint}_{next(self._count)}"

    def constant(self, value, hint="const") -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def ints(self, values, hint="shape") -> str:
        """An int64 vector; a symbolic entry (a dynamic axis) is computed from the input that
        carries it."""
        values = list(values)
        if all(_is_int(v) for v in values):
            return self.constant(np.asarray(values, np.int64), hint)
        parts = [self.ints([v]) if _is_int(v) else self.node("Unsqueeze", [
            self.dim_value(v), self.ints([0], "axes")])[0] for v in values]
        return self.node("Concat", parts, axis=0)[0]

    def dim_value(self, dim) -> str:
        """An int64 scalar computing a symbolic dimension (``batch``, ``2*batch``, ...) from
        the shapes of the graph inputs."""
        return _dim_expr(self, ast.parse(str(dim), mode="eval").body, dim)

    def node(self, op_type, inputs, n_out=1, domain="", **attrs) -> list[str]:
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, domain=domain, **attrs))
        return outs

    def name_of(self, atom) -> str:
        if isinstance(atom, jex_core.Literal):
            return self.constant(np.asarray(atom.val, atom.aval.dtype), "literal")
        return self.names[atom]

    def materialize(self, name: str) -> str:
        """``name`` with its broadcast made explicit (an Expand), for consumers that do not
        broadcast."""
        if name not in self.unexpanded:
            return name
        if name not in self._expanded:
            actual, full = self.unexpanded[name]
            # 1 where the value already has the full size: Expand broadcasts the two shapes,
            # so a (symbolic) batch axis the value carries is not baked in
            target = [1 if a == f else f for a, f in zip(actual, full, strict=True)]
            (self._expanded[name],) = self.node("Expand", [name, self.ints(target)])
        return self._expanded[name]

    def reshape(self, x: str, in_shape, out_shape) -> list[str]:
        """A Reshape that copies the leading dimensions it keeps (ONNX's 0) and infers the
        first one it changes (-1), so that a symbolic batch axis, kept or merged into the
        next, is not baked into the graph."""
        in_shape, out_shape = tuple(in_shape), tuple(out_shape)
        target = list(out_shape)
        k = 0
        while k < min(len(in_shape), len(out_shape)) and in_shape[k] == out_shape[k]:
            target[k] = 0
            k += 1
        if k < len(out_shape) and not any(_is_int(d) and d == 0 for d in out_shape):
            target[k] = -1
        return self.node("Reshape", [x, self.ints(target)])

    def actual_shape(self, name: str, aval) -> tuple[int, ...]:
        return self.unexpanded[name][0] if name in self.unexpanded else tuple(aval.shape)

    def static_value(self, atom):
        """The numpy value of a literal or constant-folded variable, else None."""
        if isinstance(atom, jex_core.Literal):
            return np.asarray(atom.val, atom.aval.dtype)
        return self.folded.get(atom)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer))


def _dim_expr(g: _Graph, node, dim) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return g.constant(np.int64(node.value), "dim")
    if isinstance(node, ast.Name) and node.id in g.dims:
        source, axis = g.dims[node.id]
        shape = g.node("Shape", [source])[0]
        return g.node("Squeeze", g.node("Gather", [shape, g.ints([axis], "axes")], axis=0))[0]
    ops = {ast.Add: "Add", ast.Sub: "Sub", ast.Mult: "Mul", ast.FloorDiv: "Div"}
    if isinstance(node, ast.BinOp) and type(node.op) in ops:
        return g.node(ops[type(node.op)], [_dim_expr(g, node.left, dim),
                                           _dim_expr(g, node.right, dim)])[0]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return g.node("Neg", [_dim_expr(g, node.operand, dim)])[0]
    calls = {"floordiv": "Div", "mod": "Mod"}  # JAX prints b // 2 as floordiv(b, 2)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in calls and len(node.args) == 2):
        # sizes are >= 1 and divisors constant positive: truncation is floor division
        return g.node(calls[node.func.id], [_dim_expr(g, a, dim) for a in node.args])[0]
    raise NotImplementedError(f"jaxops.onnx.export: the symbolic dimension {dim} has no ONNX "
                              "translation (sums, products and floor quotients of the "
                              "dynamic axes are supported).")


def _broadcast_shapes(*shapes) -> tuple:
    """numpy's broadcast of shapes that may hold symbolic dimensions."""
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        big = [d for d in dims if not (_is_int(d) and d == 1)]
        out.append(big[0] if big else 1)
    return tuple(out)


_CALL_SITES: list[str] = []  # where the enclosing calls were made (inner jaxprs have none)


def _where(eqn) -> str:
    from jax._src import source_info_util

    here = source_info_util.summarize(eqn.source_info)
    return here if here.strip() else next((w for w in reversed(_CALL_SITES) if w.strip()),
                                          "unknown")


# --------------------------------------------------------------------- primitive emitters

_UNARY = {"neg": "Neg", "exp": "Exp", "log": "Log", "tanh": "Tanh", "logistic": "Sigmoid",
          "sqrt": "Sqrt", "abs": "Abs", "sign": "Sign", "floor": "Floor", "ceil": "Ceil",
          "erf": "Erf", "not": "Not", "stop_gradient": "Identity", "copy": "Identity",
          "copy_p": "Identity", "is_finite": None, "sin": "Sin", "cos": "Cos"}
_BINARY = {"add": "Add", "add_any": "Add", "sub": "Sub", "mul": "Mul", "div": "Div",
           "max": "Max", "min": "Min", "pow": "Pow", "gt": "Greater", "lt": "Less",
           "ge": "GreaterOrEqual", "le": "LessOrEqual", "eq": "Equal", "and": "And", "or": "Or",
           "rem": "Mod"}


def _emit_primitive(g: _Graph, eqn, ins: list[str]) -> list[str]:
    p, params = eqn.primitive.name, eqn.params
    out_aval = eqn.outvars[0].aval
    if p in _UNARY and _UNARY[p] is not None:
        return g.node(_UNARY[p], ins)
    if p in _BINARY:
        attrs = ({"fmod": 1} if p == "rem" and jax.dtypes.issubdtype(out_aval.dtype, np.floating)
                 else {})
        return g.node(_BINARY[p], ins, **attrs)
    if p == "ne":
        return g.node("Not", g.node("Equal", ins))
    if p == "is_finite":
        return g.node("Not", g.node("Or", g.node("IsInf", ins) + g.node("IsNaN", ins)))
    if p == "rsqrt":
        return g.node("Reciprocal", g.node("Sqrt", ins))
    if p == "log1p":
        one = g.constant(np.ones((), out_aval.dtype))
        return g.node("Log", g.node("Add", [ins[0], one]))
    if p == "erfc":  # 1 - erf: ONNX has no Erfc
        one = g.constant(np.ones((), out_aval.dtype))
        return g.node("Sub", [one, *g.node("Erf", ins)])
    if p == "expm1":
        one = g.constant(np.ones((), out_aval.dtype))
        return g.node("Sub", g.node("Exp", ins) + [one])
    if p == "square":
        return g.node("Mul", [ins[0], ins[0]])
    if p == "integer_pow":
        return g.node("Pow", [ins[0], g.constant(np.asarray(params["y"], out_aval.dtype))])
    if p == "convert_element_type":
        return g.node("Cast", ins, to=_tensor_type(params["new_dtype"]))
    if p == "reshape":
        return g.reshape(ins[0], eqn.invars[0].aval.shape, out_aval.shape)
    if p == "squeeze":
        return g.node("Squeeze", [ins[0], g.ints(params["dimensions"], "axes")])
    if p == "expand_dims":
        return g.node("Unsqueeze", [ins[0], g.ints(params["dimensions"], "axes")])
    if p == "transpose":
        return g.node("Transpose", ins, perm=list(params["permutation"]))
    if p == "broadcast_in_dim":
        shape, dims = out_aval.shape, params["broadcast_dimensions"]
        operand_shape = eqn.invars[0].aval.shape
        ranked = [1] * len(shape)
        for d, size in zip(dims, operand_shape, strict=True):
            ranked[d] = size
        x = ins[0]
        if tuple(ranked) != tuple(operand_shape):
            (x,) = g.reshape(x, operand_shape, ranked)
        if tuple(ranked) != tuple(shape):
            # left for the consumer's own (numpy) broadcasting when it has one; an Expand
            # would bake the size of a batch axis into the graph
            g.unexpanded[x] = (tuple(ranked), tuple(shape))
        return [x]
    if p in ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin"):
        axes = list(params["axes"])
        if p in ("argmax", "argmin"):
            (i,) = g.node("ArgMax" if p == "argmax" else "ArgMin", ins, axis=axes[0],
                          keepdims=0)
            return g.node("Cast", [i], to=_tensor_type(params["index_dtype"]))
        op = {"reduce_sum": "ReduceSum", "reduce_max": "ReduceMax", "reduce_min": "ReduceMin",
              "reduce_prod": "ReduceProd"}[p]
        return g.node(op, [ins[0], g.ints(axes, "axes")], keepdims=0)
    if p == "select_n":
        if len(ins) != 3 or eqn.invars[0].aval.dtype != np.bool_:
            raise NotImplementedError(
                f"jaxops.onnx.export: select_n with {len(ins) - 1} cases or a non-bool "
                f"predicate (at {_where(eqn)}); only jnp.where-style selects export.")
        return g.node("Where", [ins[0], ins[2], ins[1]])
    if p == "slice":
        starts, limits = params["start_indices"], params["limit_indices"]
        steps = params["strides"] or (1,) * len(starts)
        return g.node("Slice", [ins[0], g.ints(starts, "starts"), g.ints(limits, "ends"),
                                g.ints(range(len(starts)), "axes"), g.ints(steps, "steps")])
    if p == "pad":
        config = params["padding_config"]
        if any(interior for _, _, interior in config):
            raise NotImplementedError(f"jaxops.onnx.export: pad with interior padding (at "
                                      f"{_where(eqn)}) has no ONNX translation.")
        pads = [lo for lo, _, _ in config] + [hi for _, hi, _ in config]
        return g.node("Pad", [ins[0], g.ints(pads, "pads"), ins[1]], mode="constant")
    if p == "concatenate":
        return g.node("Concat", ins, axis=params["dimension"])
    if p == "clamp":  # lax.clamp(min, x, max)
        return g.node("Min", g.node("Max", [ins[1], ins[0]]) + [ins[2]])
    if p == "dim_as_value":
        return g.node("Cast", [g.dim_value(params["dim"])], to=_tensor_type(out_aval.dtype))
    if p == "iota" and not all(_is_int(d) for d in out_aval.shape):
        raise NotImplementedError(f"jaxops.onnx.export: an iota over the dynamic axis of "
                                  f"shape {out_aval.shape} (at {_where(eqn)}).")
    if p == "iota":
        return [g.constant(np.asarray(jax.lax.iota(out_aval.dtype, out_aval.shape[0]))
                           if len(out_aval.shape) == 1 else
                           np.asarray(jax.lax.broadcasted_iota(out_aval.dtype, out_aval.shape,
                                                               params["dimension"])))]
    if p == "dot_general":
        return _dot_general(g, eqn, ins)
    raise NotImplementedError(
        f"jaxops.onnx.export: the JAX primitive {p!r} (at {_where(eqn)}) has no ONNX "
        "translation. Supported: jaxops ops, and "
        f"{', '.join(sorted({*_UNARY, *_BINARY, 'dot_general', 'reshape', 'broadcast_in_dim'}))}"
        ", reductions, casts, select_n, slice, pad, concatenate, transpose, squeeze, iota.")


def _dot_general(g: _Graph, eqn, ins):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
    if not lb and not rb and tuple(lc) == (lhs.ndim - 1,) and tuple(rc) == (0,) and rhs.ndim == 2:
        out = g.node("MatMul", ins)
    else:  # the general case as an Einsum equation
        letters = iter("abcdefghijklmnopqrstuvwxyz")
        ls = [next(letters) for _ in range(lhs.ndim)]
        rs = [None] * rhs.ndim
        for i, j in zip(lb, rb, strict=True):
            rs[j] = ls[i]
        for i, j in zip(lc, rc, strict=True):
            rs[j] = ls[i]
        rs = [r if r is not None else next(letters) for r in rs]
        free_l = [ls[i] for i in range(lhs.ndim) if i not in lb and i not in lc]
        free_r = [rs[j] for j in range(rhs.ndim) if j not in rb and j not in rc]
        out_sub = [ls[i] for i in lb] + free_l + free_r
        eq = f"{''.join(ls)},{''.join(rs)}->{''.join(out_sub)}"
        if lhs.dtype == jnp.bfloat16:  # Einsum has no bfloat16: accumulate in float32
            f32 = _tensor_type(np.float32)
            out = g.node("Einsum", [g.node("Cast", [i], to=f32)[0] for i in ins], equation=eq)
            out = g.node("Cast", out, to=_tensor_type(lhs.dtype))
        else:
            out = g.node("Einsum", ins, equation=eq)
    want = eqn.outvars[0].aval.dtype
    if want != lhs.dtype:  # preferred_element_type
        out = g.node("Cast", out, to=_tensor_type(want))
    return out


# -------------------------------------------------------------------------- jaxops nodes

def _onnx_attrs(schema, attrs: dict) -> dict:
    out = {}
    for a in schema.attributes:
        value = attrs[a.name]
        if not a.onnx or value is None:
            continue
        out[a.onnx_name or a.name] = int(value) if a.type == "bool" else value
    return out


def _emit_jaxops(g: _Graph, eqn, ins: list[str]) -> list[str]:
    schema, attrs = eqn.params["schema"].value, dict(eqn.params["attrs"])
    it = iter(ins)
    inputs = [next(it) if present else "" for present in eqn.params["present"]]
    it = iter(eqn.invars)
    in_avals = [next(it).aval if present else None for present in eqn.params["present"]]
    out_avals = [v.aval for v in eqn.outvars]
    run = eqn.params["run"].value
    if _class_axis_moved(schema, attrs, in_avals):
        return _around_class_axis(g, schema, attrs, inputs, in_avals, out_avals, run)
    return _emit_call(g, schema, attrs, inputs, in_avals, out_avals, run)


# ----------------------------------------------------- the labelled losses' class axis
# ONNX's labelled losses (SoftmaxCrossEntropyLoss, NegativeLogLikelihoodLoss) have their
# classes on axis 1; jaxops' ``axis`` attribute moves them.  A call with another class axis
# exports as the call with axis 1 between Transposes of every class-shaped tensor (the
# inputs and outputs of the scores' rank): the labels keep their shape and order.

def _class_axis_moved(schema, attrs: dict, in_avals) -> bool:
    if "Tind" not in schema.type_constraints or "axis" not in attrs:
        return False
    return attrs["axis"] % len(in_avals[0].shape) != 1


def _around_class_axis(g: _Graph, schema, attrs, inputs, in_avals, out_avals, run):
    rank = len(in_avals[0].shape)
    axis = attrs["axis"] % rank
    perm = [0, axis, *(k for k in range(1, rank) if k != axis)]  # classes to axis 1
    back = [perm.index(k) for k in range(rank)]

    def moved(a):
        return jax.ShapeDtypeStruct(tuple(a.shape[k] for k in perm), a.dtype)

    class_shaped = [a is not None and len(a.shape) == rank for a in in_avals]
    inputs = [g.node("Transpose", [x], perm=perm)[0] if c else x
              for x, c in zip(inputs, class_shaped, strict=True)]
    in_avals = [moved(a) if c else a for a, c in zip(in_avals, class_shaped, strict=True)]
    out_class = [len(a.shape) == rank for a in out_avals]
    out_avals = [moved(a) if c else a for a, c in zip(out_avals, out_class, strict=True)]
    outs = _emit_call(g, schema, {**attrs, "axis": 1}, inputs, in_avals, out_avals, run)
    return [g.node("Transpose", [o], perm=back)[0] if c else o
            for o, c in zip(outs, out_class, strict=True)]


def _emit_call(g: _Graph, schema, attrs, inputs, in_avals, out_avals, run) -> list[str]:
    inputs = list(inputs)
    while inputs and inputs[-1] == "":
        inputs.pop()
    n_out = len(out_avals)
    if schema.domain == "" and _opset_version(schema.name, g.opset) != schema.since_version:
        return _decomposed(g, schema, attrs, inputs, in_avals, out_avals, run)
    if schema.domain == "":
        if schema.name == "BatchNormalization" and not attrs["training"]:
            # ONNX: one output in inference mode; jaxops returns the statistics unchanged
            (y,) = g.node(schema.name, inputs, 1, **_onnx_attrs(schema, attrs))
            return [y, inputs[3], inputs[4]]
        if attrs.get("label_smoothing"):
            return _smoothed_cross_entropy(g, schema, attrs, inputs, in_avals, out_avals)
        return g.node(schema.name, inputs, n_out, **_onnx_attrs(schema, attrs))
    if (schema.domain == JAXOPS_DOMAIN and schema.name in ("KeyedDropout", "KeyedDropoutGradient")
            and attrs["training"] and attrs["rate"] > 0):
        raise NotImplementedError(
            f"jaxops.onnx.export: jaxops.{schema.function} with training=True has no ONNX "
            "export: its mask is JAX's threefry draw from the key, which ONNX cannot compute, "
            "and ONNX's Dropout would draw a different mask from its own generator (and its "
            "gradient could not regenerate it). Export the inference model "
            "(training=False, or nnx.Dropout with deterministic=True), which is the identity.")
    if functions.body_of(schema) is not None:
        # hand-written beside the op: shape-generic and exact (ONNX's own Softmax, Clip, ...)
        fn = functions.function_proto(schema, attrs, g.opset, in_avals, out_avals)
    else:
        fn = derived_function_proto(schema, run, attrs, g.opset, in_avals, out_avals)
    if g.inline_calls:
        return _inline_call(g, fn, inputs)
    g.functions[(fn.domain, fn.name, fn.overload)] = fn
    _import_domain(g.domains, schema)
    outs = [g.fresh(schema.name.lower()) for _ in range(n_out)]
    node = helper.make_node(schema.name, inputs, outs, domain=schema.domain,
                            overload=fn.overload)
    # attributes added apart: a user's attribute may be called name, domain or overload
    node.attribute.extend(helper.make_attribute(k, v)
                          for k, v in sorted(_onnx_attrs(schema, attrs).items()))
    g.nodes.append(node)
    return outs


def _opset_version(op_type: str, opset: int) -> int | None:
    """The version of the ai.onnx op ``op_type`` that ``opset`` holds (None: not yet)."""
    try:
        return onnx.defs.get_schema(op_type, opset, "").since_version
    except onnx.defs.SchemaError:
        return None


def _smoothed_cross_entropy(g: _Graph, schema, attrs, inputs, in_avals, out_avals):
    """SoftmaxCrossEntropyLoss with PyTorch's label smoothing (a jaxops extension) in standard
    ops: the ONNX node's per-entry loss and log_prob, the smoothing term
    ``-sum_c w_c log_prob_c`` (0 where ignored), mixed ``(1 - eps) nll + eps / C smooth``
    and reduced; "mean" divides by the summed label weights (0 when every entry is ignored,
    as jaxops)."""
    eps, reduction, ignore = attrs["label_smoothing"], attrs["reduction"], attrs["ignore_index"]
    labels = inputs[1]
    dtype = in_avals[0].dtype
    rank, c = len(in_avals[0].shape), in_avals[0].shape[1]
    sce = {"reduction": "none"} | ({} if ignore is None else {"ignore_index": ignore})
    compute = np.float64 if dtype == np.float64 else np.float32  # as the op: >= float32
    to = _tensor_type(compute)
    if dtype != compute:  # half precision: the whole loss in float32, rounded once
        inputs = [g.node("Cast", [x], to=to)[0] if k != 1 and x else x
                  for k, x in enumerate(inputs)]
    weights = inputs[2] if len(inputs) > 2 and inputs[2] else None
    nll, lp = g.node("SoftmaxCrossEntropyLoss", inputs, 2, **sce)
    logp = lp if dtype == compute else g.node("Cast", [lp], to=_tensor_type(dtype))[0]
    if weights is not None:
        wc = weights
        shaped = g.node("Reshape", [wc, g.ints([1, -1] + [1] * (rank - 2))])[0]
        lp_w = g.node("Mul", [lp, shaped])[0]
    else:
        lp_w = lp
    smooth = g.node("Neg", g.node("ReduceSum", [lp_w, g.ints([1], "axes")], keepdims=0))[0]
    zero = g.constant(np.zeros((), compute))
    if ignore is not None:
        ignored = g.node("Equal", [labels, g.constant(np.asarray(
            ignore, in_avals[1].dtype))])[0]
        smooth = g.node("Where", [ignored, zero, smooth])[0]
    if not _is_int(c):
        raise NotImplementedError(f"jaxops.onnx.export: label_smoothing needs a static class "
                                  f"count, got the dynamic axis {c!r}.")
    per = g.node("Add", [g.node("Mul", [nll, g.constant(np.asarray(1 - eps, compute))])[0],
                         g.node("Mul", [smooth, g.constant(np.asarray(eps / max(c, 1),
                                                                      compute))])[0]])[0]
    if reduction == "sum":
        per = g.node("ReduceSum", [per], keepdims=0)[0]
    elif reduction == "mean":
        if weights is not None:
            safe = labels
            if ignore is not None:
                safe = g.node("Where", [ignored, g.constant(np.zeros((), in_avals[1].dtype)),
                                        labels])[0]
            w = g.node("Gather", [wc, safe], axis=0)[0]
        else:
            w = g.node("Cast", g.node("Equal", [labels, labels]), to=to)[0]  # ones
        if ignore is not None:
            w = g.node("Where", [ignored, zero, w])[0]
        denom = g.node("ReduceSum", [w], keepdims=0)[0]
        empty = g.node("Equal", [denom, zero])[0]
        one = g.constant(np.ones((), compute))
        total = g.node("ReduceSum", [per], keepdims=0)[0]
        per = g.node("Where", [empty, zero, g.node(
            "Div", [total, g.node("Where", [empty, one, denom])[0]])[0]])[0]
    loss = g.node("Cast", [per], to=_tensor_type(dtype))[0]
    return [loss, logp][:len(out_avals)]


def _decomposed(g: _Graph, schema, attrs: dict, inputs: list[str], in_avals, out_avals,
                run) -> list[str]:
    """An ai.onnx op whose version the model's opset lacks (Swish-24 at opset 22), written
    out as the standard ops of its implementation, inlined in place of the node: the body
    :func:`derived_function_proto` derives, which follows jaxops' semantics whatever the
    opset holds (an older version with other semantics, a newer one, or none)."""
    version = _opset_version(schema.name, g.opset)
    held = (f"opset {g.opset} has no {schema.name}" if version is None else
            f"{schema.name} in opset {g.opset} is version {version}")
    try:
        fn = derived_function_proto(schema, run, attrs, g.opset, in_avals, out_avals)
    except NotImplementedError as e:
        raise NotImplementedError(
            f"jaxops.onnx.export: {held}, but jaxops.{schema.function} follows "
            f"{schema.name}-{schema.since_version}, and its implementation has no translation "
            f"to standard ops ({e}); export with opset >= {schema.since_version}.") from None
    return _inline_call(g, fn, inputs)


def _inline_call(g: _Graph, fn: onnx.FunctionProto, inputs: list[str]) -> list[str]:
    """``fn``'s nodes appended to ``g`` with its values renamed apart, in place of a call
    (the bodies jaxops writes take no attribute references and call no functions)."""
    prefix = g.fresh(fn.name.lower())
    rename = {formal: actual for formal, actual in zip(fn.input, inputs, strict=True)}

    def name(value: str) -> str:
        return rename.setdefault(value, f"{prefix}_{value}") if value else ""

    for n in fn.node:
        node = onnx.NodeProto()
        node.CopyFrom(n)
        node.input[:] = [name(i) for i in n.input]
        node.output[:] = [name(o) for o in n.output]
        g.nodes.append(node)
    return [name(o) for o in fn.output]


def _import_domain(domains: dict[str, int], schema) -> None:
    """Record that a node of ``schema``'s (non-standard) domain is written: the model
    imports the domain at the newest version any of its ops needs."""
    domains[schema.domain] = max(domains.get(schema.domain, 1), schema.since_version)


def _aval_text(aval) -> str:
    """``float32[batch,3]``: an input's type and shape as an overload name records it."""
    return f"{np.dtype(aval.dtype).name}[{','.join(str(d) for d in aval.shape)}]"


def derived_function_proto(schema, run: Callable[..., Any], attrs: dict, opset: int,
                           in_avals, out_avals) -> onnx.FunctionProto:
    """The model-local function of one call of an op that has no hand-written body, derived
    from its implementation: ``run(*inputs, **attrs)`` is traced at the call's avals and its
    jaxpr emitted through the same primitive translations as an exported model.

    What the body depends on is in the overload name: every attribute value, the omitted
    optional inputs (``name=absent``) and each input's dtype and shape
    (``in.X=float32[batch,3]``), since a trace is specialized to them; a dynamic axis stays
    symbolic (the body reads it from its own input's ``Shape``), so one overload serves every
    batch size.  ``body=derived`` keeps the overload apart from a hand-written one.

    A jaxops op that the implementation calls is traced in recording mode and its own body
    (hand-written, or derived in turn) is inlined, so the body is standard ops only: a call
    from one function to another would be neater, but onnxruntime (1.32) does not resolve a
    call to an overloaded function made inside a function body ("d:Inner(-1) is not a
    registered function/op"; top-level calls work).  Constants become ``Constant`` nodes (a
    function has no initializers).

    Args:
      schema: the op's :class:`jaxops.schema.OpSchema` (names, domain, attributes).
      run: the op's implementation, ``run(*inputs, **attrs)``, None for omitted inputs.
      attrs: the call's canonical attributes.
      opset: the ai.onnx opset the body imports (the model's).
      in_avals: the inputs' shapes and dtypes (None where an optional input is omitted).
      out_avals: the outputs' shapes and dtypes, as the schema infers them.

    Returns:
      An ``onnx.FunctionProto`` in ``schema.domain`` named ``schema.name``.
    """
    present = [a is not None for a in in_avals]
    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in in_avals if a is not None]
    kwargs = dict(attrs)
    if "implementation" in _parameters(run):
        # the XLA implementation is the reference; a Pallas kernel has no ONNX translation
        kwargs["implementation"] = "xla"

    def body(*xs):
        it = iter(xs)
        out = run(*(next(it) if p else None for p in present), **kwargs)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    with recording():
        closed = jax.make_jaxpr(body)(*specs)
    names = [p.name for p, a in zip(schema.inputs, in_avals, strict=True) if a is not None]
    b = _Graph(opset)
    b.inline_calls = True
    for name, a in zip(names, specs, strict=True):
        for axis, d in enumerate(a.shape):
            if not _is_int(d) and str(d).isidentifier():
                b.dims.setdefault(str(d), (name, axis))
    outs = [b.materialize(o) for o in _emit_jaxpr(b, closed.jaxpr, closed.consts, names)]
    out_names = [p.name for p in schema.outputs[:len(out_avals)]]
    for out, name, var, want in zip(outs, out_names, closed.jaxpr.outvars, out_avals,
                                    strict=True):
        if np.dtype(var.aval.dtype) != np.dtype(want.dtype) or tuple(var.aval.shape) != tuple(
                want.shape):
            raise TypeError(
                f"jaxops.onnx.export: {schema.name}'s implementation returns "
                f"{_aval_text(var.aval)} for output {name!r}, but its schema infers "
                f"{_aval_text(want)}; the two must agree for the derived ONNX body.")
        b.nodes.append(helper.make_node("Identity", [out], [name]))
    live = _live(b.nodes, out_names)
    used = {i for n in live for i in n.input}
    constants = [helper.make_node("Constant", [], [t.name], value=t)
                 for t in b.initializers if t.name in used]

    key: dict[str, object] = {"body": "derived", **attrs}
    for p, a in zip(schema.inputs, in_avals, strict=True):
        key[f"in.{p.name}"] = "absent" if a is None else _aval_text(a)
    # trailing omitted inputs are left out of the node, so of the function's signature too
    last = max(i for i, p in enumerate(present) if p)
    return helper.make_function(
        schema.domain, schema.name, [p.name for p in schema.inputs[:last + 1]], out_names,
        constants + live, [helper.make_opsetid("", opset)],
        attributes=sorted(a.onnx_name or a.name for a in schema.attributes if a.onnx),
        doc_string=schema.doc, overload=functions.overload_name(key))


def _parameters(fn) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # a builtin or a callable without a signature
        return set()


# primitives whose ONNX op broadcasts like numpy: their inputs may stay unexpanded
_BROADCASTING = {"add", "add_any", "sub", "mul", "div", "max", "min", "pow", "gt", "lt", "ge",
                 "le", "eq", "ne", "and", "or", "select_n"}

_FOLDABLE = {"broadcast_in_dim", "convert_element_type", "reshape", "iota", "transpose",
             "squeeze", "expand_dims", "concatenate"}
_FOLD_LIMIT = 1 << 20

# jax.checkpoint binds "remat2" (jax 0.10, 0.11); rematerialization means nothing to ONNX
_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr",
          "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr", "remat": "jaxpr",
          "remat2": "jaxpr", "checkpoint": "jaxpr"}


def _emit_jaxpr(g: _Graph, jaxpr, consts, in_names: list[str], in_values=()) -> list[str]:
    for var, c in zip(jaxpr.constvars, consts, strict=True):
        g.names[var] = g.constant(np.asarray(c), "param")
    for var, name in zip(jaxpr.invars, in_names, strict=True):
        g.names[var] = name
    for var, value in zip(jaxpr.invars, in_values, strict=False):
        if value is not None:
            g.folded[var] = value
    for eqn in jaxpr.eqns:
        values = [g.static_value(v) for v in eqn.invars]
        if (eqn.primitive.name in _FOLDABLE and all(v is not None for v in values)
                and all(all(_is_int(d) for d in v.aval.shape) for v in eqn.outvars)
                and all(v.aval.size <= _FOLD_LIMIT for v in eqn.outvars)):
            # constants only (a broadcast zero, an iota): one initializer, not a subgraph
            res = eqn.primitive.bind(*values, **eqn.params)
            res = res if eqn.primitive.multiple_results else [res]
            outs = []
            for var, r in zip(eqn.outvars, res, strict=True):
                g.folded[var] = np.asarray(r)
                outs.append(g.constant(g.folded[var], "folded"))
        elif eqn.primitive is jaxops_op_p:
            outs = _emit_jaxops(g, eqn, [g.materialize(g.name_of(v)) for v in eqn.invars])
        elif eqn.primitive.name in _CALLS:
            inner = eqn.params[_CALLS[eqn.primitive.name]]
            inner_jaxpr = getattr(inner, "jaxpr", inner)
            inner_consts = getattr(inner, "consts", ())
            _CALL_SITES.append(_where(eqn))
            try:
                outs = _emit_jaxpr(g, inner_jaxpr, inner_consts,
                                   [g.materialize(g.name_of(v)) for v in eqn.invars], values)
            finally:
                _CALL_SITES.pop()
            for inner_var, var in zip(inner_jaxpr.outvars, eqn.outvars, strict=True):
                if (v := g.static_value(inner_var)) is not None:
                    g.folded[var] = v
        elif eqn.primitive.name in _BROADCASTING:
            ins = [g.name_of(v) for v in eqn.invars]
            if eqn.primitive.name == "select_n":
                ins[0] = g.materialize(ins[0])
            outs = _emit_primitive(g, eqn, ins)
            actual = _broadcast_shapes(*(g.actual_shape(n, v.aval)
                                           for n, v in zip(ins, eqn.invars, strict=True)))
            full = tuple(eqn.outvars[0].aval.shape)
            if tuple(actual) != full:
                g.unexpanded[outs[0]] = (tuple(actual), full)
        else:
            outs = _emit_primitive(g, eqn, [g.materialize(g.name_of(v)) for v in eqn.invars])
        for var, name in zip(eqn.outvars, outs, strict=True):
            g.names[var] = name
    return [g.name_of(v) for v in jaxpr.outvars]


def _live(nodes, graph_outputs) -> list:
    """The nodes the graph outputs depend on (a gradient's trace also computes the loss it
    does not return), in their order."""
    needed, live = set(graph_outputs), []
    for n in reversed(nodes):
        if needed & set(n.output):
            live.append(n)
            needed.update(n.input)
    return live[::-1]


def _unused_running_statistics(nodes, graph_outputs) -> None:
    """A training-mode BatchNormalization whose running statistics nothing reads gets
    ``momentum=1``: by the spec its ``Y`` does not depend on momentum, but onnxruntime (1.32)
    computes ``Y`` from the momentum-blended statistics when only ``Y`` is used
    (microsoft/onnxruntime#29790); with momentum 1 the blend is the batch's own."""
    used = {i for n in nodes for i in n.input} | set(graph_outputs)
    for n in nodes:
        if (n.op_type == "BatchNormalization" and n.domain == "" and len(n.output) == 3
                and not used & set(n.output[1:])):
            for a in n.attribute:
                if a.name == "momentum":
                    a.f = 1.0
                    break
            else:
                n.attribute.append(helper.make_attribute("momentum", 1.0))


_DYNAMIC_AXES_FORMS = (
    "dynamic_axes maps a graph input (its position among the flattened example arguments, or "
    "its name in input_names) to its dynamic axes, either {axis: name} or a list of axes "
    "(each then gets its own name): dynamic_axes={0: {0: 'batch'}} or {'input_0': [0]}. "
    "One name on several inputs is one size: {0: {0: 'batch'}, 1: {0: 'batch'}}. An output "
    "name may label its output's dynamic axes (PyTorch's form): {'output_0': {0: 'batch'}}."
)


def _axes_of(key, axes, shape, where: str) -> dict[int, str | None]:
    """One entry of ``dynamic_axes``: ``{axis: name}`` or a list of axes, as ``{axis in
    0..rank-1: name}`` (None: the list form, named by the caller)."""
    if isinstance(axes, dict):
        items = list(axes.items())
    elif isinstance(axes, (list, tuple)):
        items = [(a, None) for a in axes]
    else:
        hint = (f" A name alone does not say which axis: for axis 0, {{{key!r}: {{0: "
                f"{axes!r}}}}}; for axis 0 of every input, one such entry per input."
                if isinstance(axes, str) else "")
        raise TypeError(f"jaxops.onnx.export: dynamic_axes[{key!r}] is {axes!r}; "
                        f"{_DYNAMIC_AXES_FORMS}{hint}")
    out: dict[int, str | None] = {}
    rank = len(shape)
    for axis, symbol in items:
        if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
            raise TypeError(f"jaxops.onnx.export: dynamic_axes[{key!r}] names axis {axis!r}; "
                            f"axes are ints. {_DYNAMIC_AXES_FORMS}")
        if not -rank <= axis < rank:
            raise ValueError(f"jaxops.onnx.export: dynamic_axes[{key!r}] names axis {axis}, "
                             f"but {where} has shape {tuple(shape)}.")
        if symbol is not None and not (isinstance(symbol, str) and symbol.isidentifier()):
            raise ValueError(f"jaxops.onnx.export: dynamic_axes[{key!r}][{axis}] must be a "
                             f"name like 'batch', got {symbol!r}.")
        axis = int(axis) % rank
        if axis in out:
            raise ValueError(f"jaxops.onnx.export: dynamic_axes[{key!r}] names axis {axis} "
                             "twice.")
        out[axis] = symbol
    return out


def _dynamic_input_axes(dynamic_axes, flat_args, in_names):
    """``dynamic_axes`` as ``{input index: {axis: symbol}}`` and the entries that name
    outputs (``{name: axes}``, checked once the outputs are known)."""
    if dynamic_axes is None:
        return {}, {}
    if not isinstance(dynamic_axes, dict):
        raise TypeError(f"jaxops.onnx.export: dynamic_axes is {dynamic_axes!r}; "
                        f"{_DYNAMIC_AXES_FORMS}")
    inputs: dict[int, dict[int, str]] = {}
    outputs: dict[str, Any] = {}
    for key, axes in dynamic_axes.items():
        if isinstance(key, str) and key not in in_names:
            outputs[key] = axes
            continue
        if isinstance(key, str):
            i = in_names.index(key)
        elif isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            i = int(key)
            if not 0 <= i < len(flat_args):
                raise ValueError(f"jaxops.onnx.export: dynamic_axes names input {key}, but "
                                 f"the function has {len(flat_args)} array inputs.")
        else:
            raise TypeError(f"jaxops.onnx.export: dynamic_axes has the key {key!r}; "
                            f"{_DYNAMIC_AXES_FORMS}")
        if i in inputs:
            raise ValueError(f"jaxops.onnx.export: dynamic_axes names input {i} "
                             f"({in_names[i]!r}) twice, by position and by name.")
        shape = np.shape(flat_args[i])
        where = f"input {i}" if isinstance(key, int) else f"input {i} ({key!r})"
        # the list form: a name per (input, axis), as PyTorch does; a legal identifier
        stem = "".join(c if c.isalnum() or c == "_" else "_" for c in in_names[i])
        stem = stem if stem[:1].isalpha() or stem[:1] == "_" else f"input_{stem}"
        inputs[i] = {axis: symbol or f"{stem}_dim{axis}"
                     for axis, symbol in _axes_of(key, axes, shape, where).items()}
    return inputs, outputs


def _output_labels(outputs, out_names, out_avals, in_names) -> dict[tuple[int, int], str]:
    """The dim_params that ``dynamic_axes`` gives outputs: ``{(output, axis): label}``.  An
    output axis is dynamic only through the inputs, so a static one is refused."""
    labels = {}
    for key, axes in outputs.items():
        if key not in out_names:
            raise ValueError(f"jaxops.onnx.export: dynamic_axes names {key!r}, which is "
                             f"neither an input ({', '.join(map(repr, in_names))}) nor an "
                             f"output ({', '.join(map(repr, out_names))}). "
                             f"{_DYNAMIC_AXES_FORMS}")
        j = out_names.index(key)
        shape = out_avals[j].shape
        where = f"output {key!r}"
        for axis, label in _axes_of(key, axes, shape, where).items():
            if _is_int(shape[axis]):
                raise ValueError(
                    f"jaxops.onnx.export: dynamic_axes[{key!r}] makes axis {axis} of {where} "
                    f"(shape {tuple(shape)}) dynamic, but its size does not depend on a "
                    "dynamic input axis. Outputs follow from the inputs: make the input axis "
                    "it comes from dynamic.")
            labels[(j, axis)] = label or str(shape[axis])
    return labels


def _symbolic_specs(flat_args, dynamic_axes, in_names):
    """The example inputs as ShapeDtypeStructs, the dynamic axes (``{input index: {axis:
    symbol}}``) as JAX symbolic dimensions (one scope: a symbol named twice is one size), and
    where each symbol can be read."""
    scope = jax.export.SymbolicScope()
    specs, sources, sizes = [], {}, {}
    for i, x in enumerate(flat_args):
        axes = dynamic_axes.get(i, {})
        shape = np.shape(x)
        for k, symbol in axes.items():
            # one symbol is one size: the example must agree, or the model would be written
            # for inputs its own example does not fit
            first = sizes.setdefault(symbol, (shape[k], in_names[i], k))
            if first[0] != shape[k]:
                raise ValueError(
                    f"jaxops.onnx.export: dynamic_axes names axis {k} of {in_names[i]!r} "
                    f"(size {shape[k]}) and axis {first[2]} of {first[1]!r} (size {first[0]}) "
                    f"both {symbol!r}, but one symbol is one size. Give them different "
                    "symbols, or example inputs whose sizes agree.")
        if axes:
            spec = ", ".join(axes.get(k, str(d)) for k, d in enumerate(shape))
            shape = jax.export.symbolic_shape(spec, scope=scope)
            for k, symbol in axes.items():
                sources.setdefault(symbol, (in_names[i], k))
        specs.append(jax.ShapeDtypeStruct(shape, jax.dtypes.canonicalize_dtype(x.dtype)))
    return specs, sources


#: The ai.onnx op types the primitive translations above emit (besides the jaxops ops').
PRIMITIVE_OPS = frozenset({
    *(v for v in _UNARY.values() if v), *_BINARY.values(), "Not", "Equal", "IsInf", "IsNaN",
    "Or", "Reciprocal", "Sqrt", "Log", "Add", "Exp", "Sub", "Mul", "Pow", "Cast", "Reshape",
    "Squeeze", "Unsqueeze", "Transpose", "Expand", "ReduceSum", "ReduceMax", "ReduceMin",
    "ReduceProd", "ArgMax", "ArgMin", "Where", "Concat", "Min", "Max", "MatMul", "Einsum",
    "Slice", "Pad", "Shape", "Gather", "Identity", "Constant",  # Constant: in decompositions
})


def supported_exports(opset: int = DEFAULT_OPSET) -> dict[str, dict[str, int]]:
    """``{domain: {op_type: version}}``: what ``export`` writes at ``opset``: the jaxops ops
    (ai.onnx at the version jaxops follows; ai.jaxops, gradient ops included, as functions)
    and the standard ops of the primitive translations.  Ops of other domains (a user's)
    export too, with bodies derived from their implementations; they are not listed."""
    import jaxops as jo

    onnx_ops = {op: onnx.defs.get_schema(op, opset, "").since_version for op in PRIMITIVE_OPS}
    jaxops_ops = {}
    for s in jo.schema.all_schemas():
        if s.domain == JAXOPS_DOMAIN:
            jaxops_ops[s.name] = s.since_version
        elif s.domain == "" and _opset_version(s.name, opset) == s.since_version:
            onnx_ops[s.name] = s.since_version
    return {"ai.onnx": dict(sorted(onnx_ops.items())),
            JAXOPS_DOMAIN: dict(sorted(jaxops_ops.items()))}


def export(fn: Callable[..., Any], *example_args, opset: int | None = None,
           input_names: list[str] | None = None, output_names: list[str] | None = None,
           dynamic_axes: dict[int | str, dict[int, str] | list[int]] | None = None,
           model_name: str = "jaxops") -> onnx.ModelProto:
    """Trace ``fn`` on ``example_args`` (arrays or pytrees of arrays) and return the ONNX
    model computing it.

    Args:
      fn: a function of arrays (jitted or not; a Flax model's apply, a closure over
        parameters: closed-over arrays become initializers).
      example_args: arrays (or ShapeDtypeStructs) fixing the input shapes and dtypes.
      opset: the ai.onnx opset to import (``DEFAULT_OPSET``, 22).
      input_names, output_names: graph input and output names (``input_0``..., ``output_0``).
      dynamic_axes: the input dimensions whose size the model takes at run time (e.g. a
        batch axis).  Keys are graph inputs, by position among the flattened
        ``example_args`` or by name (``input_names``, else ``input_0``...); values are
        ``{axis: symbol}`` or, as in ``torch.onnx.export``, a list of axes, each then named
        ``<input>_dim<axis>``: ``{0: {0: "batch"}}``, ``{"x": {0: "batch"}}``,
        ``{"x": [0]}``.  Negative axes count from the end.  One symbol on several inputs is
        one size (``{0: {0: "batch"}, 1: {0: "batch"}}``); distinct symbols are independent
        sizes, which JAX refuses to broadcast together.  The axes are traced as JAX symbolic
        dimensions and exported as ONNX ``dim_param``s; reshapes, broadcasts and sizes used
        as values (``jnp.mean`` over the batch) compute them from the input's shape at run
        time.  A key naming an output (``output_names``, else ``output_0``...) labels that
        output's axes, which must follow from a dynamic input axis; outputs carry their
        symbolic size (``batch``, ``2*batch``) without one.  A bare symbol
        (``{0: "batch"}``) is refused: it does not say which input or which axis.
      model_name: the graph's name.

    Returns:
      An ``onnx.ModelProto`` that passes ``onnx.checker.check_model(full_check=True)``.
    """
    opset = DEFAULT_OPSET if opset is None else opset
    flat_args, tree = jax.tree.flatten(example_args)
    in_names = input_names or [f"input_{i}" for i in range(len(flat_args))]
    input_axes, output_axes = _dynamic_input_axes(dynamic_axes, flat_args, in_names)
    specs, sources = _symbolic_specs(flat_args, input_axes, in_names)
    with recording():
        try:
            closed = jax.make_jaxpr(fn)(*jax.tree.unflatten(tree, specs))
        except (TypeError, ValueError) as e:
            if not input_axes or "jaxops" in str(e).split(":")[0]:
                raise
            # a shape error of the traced function itself: with dynamic axes it usually
            # means two sizes the function combines were given independent symbols
            symbols = sorted({v for axes in input_axes.values() for v in axes.values()})
            raise type(e)(
                f"jaxops.onnx.export: tracing the function with dynamic axes "
                f"{', '.join(map(repr, symbols))} failed: {e}\nAxes with different symbols "
                "are independent sizes; axes the function combines (adds, concatenates, "
                "broadcasts together) need the same symbol, e.g. dynamic_axes={0: {0: "
                "'batch'}, 1: {0: 'batch'}}.") from e
        except NotImplementedError as e:
            if "jaxops_op" not in str(e) and "custom_lin" not in str(e):
                raise
            raise NotImplementedError(
                "jaxops.onnx.export records jaxops ops and their first-order reverse-mode "
                "gradients (jax.grad, jax.vjp); forward mode (jvp, jacfwd, hessian), a "
                f"gradient of a gradient and vmap of jaxops ops are not recorded ({e})."
            ) from None
    g = _Graph(opset)
    g.dims.update(sources)
    outs = [g.materialize(o) for o in _emit_jaxpr(g, closed.jaxpr, closed.consts, in_names)]
    out_names = output_names or [f"output_{i}" for i in range(len(outs))]
    produced = {o for n in g.nodes for o in n.output}
    renamed: dict[str, str] = {}
    for src, dst in zip(outs, out_names, strict=True):
        if src in produced and src not in renamed and src not in out_names:
            for n in g.nodes:  # name the producing node's output after the graph output
                n.input[:] = [dst if i == src else i for i in n.input]
                n.output[:] = [dst if o == src else o for o in n.output]
            renamed[src] = dst
        else:  # an input, a constant, or a value returned twice
            g.nodes.append(helper.make_node("Identity", [renamed.get(src, src)], [dst]))
    g.nodes = _live(g.nodes, out_names)
    # the functions and domains of dropped nodes go too (a gradient's unused forward op)
    called = {(n.domain, n.op_type, n.overload) for n in g.nodes}
    g.functions = {k: f for k, f in g.functions.items() if k in called}
    g.domains = {d: v for d, v in g.domains.items() if d in {n.domain for n in g.nodes}}
    g.initializers = [t for t in g.initializers if t.name in {i for n in g.nodes for i in n.input}]
    _unused_running_statistics(g.nodes, out_names)

    labels = _output_labels(output_axes, out_names, [v.aval for v in closed.jaxpr.outvars],
                            in_names)

    def value_info(name, aval, j=None):
        shape = [d if _is_int(d) else labels.get((j, k), str(d))  # dim_param: "batch"
                 for k, d in enumerate(aval.shape)]
        return helper.make_tensor_value_info(name, _tensor_type(aval.dtype), shape)

    graph = helper.make_graph(
        g.nodes, model_name,
        [value_info(n, v.aval) for n, v in zip(in_names, closed.jaxpr.invars, strict=True)],
        [value_info(n, v.aval, j) for j, (n, v) in enumerate(zip(out_names,
                                                                 closed.jaxpr.outvars,
                                                                 strict=True))],
        initializer=g.initializers,
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in
                                                 sorted(g.domains.items())]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(g.functions.values()),
                              ir_version=_IR_VERSION, producer_name="jaxops")
    onnx.checker.check_model(model, full_check=True)
    return model
