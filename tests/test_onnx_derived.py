"""ONNX export of ops without a hand-written body: the model-local function is derived from
the op's implementation (jaxops.onnx.exporter.derived_function_proto).

The ops here are declared by the test, in the domain ``test.ops``, the way a user would
declare their own; their schemas are registered only while this module's tests run.  The
derived bodies of four built-in ops are checked against their hand-written bodies, an
independent formulation of the same op."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

import jaxops as jo
from jaxops import defop, onnx as jonnx
from jaxops._recording import jaxops_op_p, recording
from jaxops.onnx.exporter import derived_function_proto
from jaxops.schema import Attribute, OpSchema, Parameter

DOMAIN = "test.ops"
RNG = np.random.default_rng(0)


# ------------------------------------------------------------------- the test's own ops

SQUAREPLUS = OpSchema(
    name="Squareplus", function="squareplus", domain=DOMAIN, since_version=1,
    doc="Y = (X + sqrt(X^2 + b)) / 2, elementwise (Barron 2021).",
    inputs=(Parameter("X"),), outputs=(Parameter("Y"),),
    attributes=(Attribute("b", "float", 4.0, doc="smoothing, > 0"),),
)


@defop(SQUAREPLUS)
def squareplus(x, *, b=4.0):
    return (x + jnp.sqrt(x * x + jnp.asarray(b, x.dtype))) / 2


def _loss_infer(s, in_avals, *, scale, reduction):
    p = in_avals[0]
    return (jax.ShapeDtypeStruct(p.shape if reduction == "none" else (), p.dtype),)


# since_version 2: the model imports test.ops at the newest version its ops need
SCALED_SQUARED_ERROR = OpSchema(
    name="ScaledSquaredError", function="scaled_squared_error", domain=DOMAIN,
    since_version=2, doc="loss = scale * (P - T)^2, reduced.",
    inputs=(Parameter("P"), Parameter("T")), outputs=(Parameter("loss"),),
    attributes=(Attribute("scale", "float", 1.0), Attribute("reduction", "string", "mean")),
    identical_type_and_shape=False, infer_fn=_loss_infer,
    gradient="ScaledSquaredErrorGradient",
)


@defop(SCALED_SQUARED_ERROR)
def scaled_squared_error(p, t, *, scale=1.0, reduction="mean"):
    d = p - t
    loss = jnp.asarray(scale, p.dtype) * d * d
    return jnp.mean(loss) if reduction == "mean" else jnp.sum(loss) if reduction == "sum" \
        else loss


SCALED_SQUARED_ERROR_GRADIENT = OpSchema(
    name="ScaledSquaredErrorGradient", function="scaled_squared_error_gradient",
    domain=DOMAIN, since_version=1, doc="(dP, dT) of ScaledSquaredError.",
    inputs=(Parameter("P"), Parameter("T"), Parameter("dloss")),
    outputs=(Parameter("dP"), Parameter("dT")),
    attributes=(Attribute("scale", "float", 1.0), Attribute("reduction", "string", "mean")),
    identical_type_and_shape=False,
    infer_fn=lambda s, avals, **attrs: tuple(jax.ShapeDtypeStruct(a.shape, a.dtype)
                                             for a in avals[:2]),
)


@defop(SCALED_SQUARED_ERROR_GRADIENT)
def scaled_squared_error_gradient(p, t, dloss, *, scale=1.0, reduction="mean"):
    g = dloss / jnp.asarray(p.size, dloss.dtype) if reduction == "mean" else dloss
    d = jnp.asarray(2 * scale, p.dtype) * (p - t) * g
    return d, -d


@scaled_squared_error.defgrad
def _scaled_squared_error_vjp(p, t, y, dy, *, scale, reduction):
    return scaled_squared_error_gradient(p, t, dy, scale=scale, reduction=reduction)


CLIPPED_SQUAREPLUS = OpSchema(
    name="ClippedSquareplus", function="clipped_squareplus", domain=DOMAIN, since_version=1,
    doc="Y = ReluN(Squareplus(X, b), n): an op made of two other ops.",
    inputs=(Parameter("X"),), outputs=(Parameter("Y"),),
    attributes=(Attribute("b", "float", 4.0), Attribute("n", "float", 2.0)),
)


@defop(CLIPPED_SQUAREPLUS)
def clipped_squareplus(x, *, b=4.0, n=2.0):
    return jo.relu_n(squareplus(x, b=b), n=n)


TEST_SCHEMAS = (SQUAREPLUS, SCALED_SQUARED_ERROR, SCALED_SQUARED_ERROR_GRADIENT,
                CLIPPED_SQUAREPLUS)


@pytest.fixture(autouse=True, scope="module")
def registered():
    """The test ops are in the registry while this module runs, and only then: other tests
    read every schema."""
    for s in (*TEST_SCHEMAS, *LIMIT_SCHEMAS):
        jo.schema.register(s)
    try:
        yield
    finally:
        for s in (*TEST_SCHEMAS, *LIMIT_SCHEMAS):
            jo.schema.unregister(s.name)


# ------------------------------------------------------------------------------- helpers

def _data(dtype, shape=(4, 3)):
    x = jnp.asarray(RNG.normal(size=shape), dtype)
    t = jnp.asarray(RNG.normal(size=shape), dtype)
    return x, t


def _run_ort(model, *args):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.asarray(a) for i, a in zip(sess.get_inputs(), args, strict=True)}
    return sess.run(None, feeds)


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == jnp.float32 else dict(rtol=1e-12, atol=1e-13)


CASES = [  # (name, function, number of (x, t) inputs, op_type of the one node)
    ("squareplus", lambda x: squareplus(x, b=2.0), 1, "Squareplus"),
    ("scaled_squared_error", lambda p, t: scaled_squared_error(p, t, scale=0.5), 2,
     "ScaledSquaredError"),
    ("scaled_squared_error_none", lambda p, t: scaled_squared_error(
        p, t, scale=3.0, reduction="none"), 2, "ScaledSquaredError"),
    ("clipped_squareplus", lambda x: clipped_squareplus(x, b=1.0, n=1.5), 1,
     "ClippedSquareplus"),
]


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    with jax.enable_x64(request.param == "float64"):
        yield jnp.dtype(request.param)


# --------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("name,fn,n_in,op_type", CASES, ids=[c[0] for c in CASES])
def test_custom_op_exports_as_one_node_and_runs(name, fn, n_in, op_type, dtype):
    args = _data(dtype)[:n_in]
    model = jonnx.export(fn, *args)
    onnx.checker.check_model(model, full_check=True)
    (node,) = model.graph.node
    assert (node.domain, node.op_type) == (DOMAIN, op_type)
    schema = jo.schema.get(op_type)
    # the node carries the call's attributes; its function names the ones it takes
    assert {a.name for a in node.attribute} == {a.name for a in schema.attributes}
    fn_proto = next(f for f in model.functions
                    if (f.domain, f.name, f.overload) == (DOMAIN, op_type, node.overload))
    assert list(fn_proto.input) == [p.name for p in schema.inputs]
    assert list(fn_proto.output) == [p.name for p in schema.outputs]
    assert "body=derived" in node.overload and f"{dtype.name}[4,3]" in node.overload
    versions = {o.domain: o.version for o in model.opset_import}
    assert versions[DOMAIN] == max(s.since_version for s in TEST_SCHEMAS
                                   if s.name in {f.name for f in model.functions})

    want = fn(*args)
    (got,) = _run_ort(model, *args)
    np.testing.assert_allclose(got, want, **_tol(dtype))
    assert got.dtype == dtype

    imported = jonnx.import_model(model)
    np.testing.assert_allclose(imported(*args), want, **_tol(dtype))

    def total(f):
        return lambda *a: jnp.sum(f(*a))

    for got_g, want_g in zip(jax.grad(total(imported), argnums=tuple(range(n_in)))(*args),
                             jax.grad(total(fn), argnums=tuple(range(n_in)))(*args),
                             strict=True):
        np.testing.assert_allclose(got_g, want_g, **_tol(dtype))


def test_nested_ops_are_inlined_into_the_body():
    """An op calling other ops: their bodies (derived for Squareplus, hand-written for ReluN:
    a Clip) are inlined, since onnxruntime does not resolve a call to an overloaded function
    from inside a function body; the model still has one node and one function."""
    model = jonnx.export(lambda x: clipped_squareplus(x, b=1.0, n=1.5), _data(jnp.float32)[0])
    (fn,) = model.functions
    assert (fn.domain, fn.name) == (DOMAIN, "ClippedSquareplus")
    ops = [n.op_type for n in fn.node]
    assert {"Sqrt", "Clip"} <= set(ops) and all(n.domain == "" for n in fn.node)
    assert [o.domain for o in fn.opset_import] == [""]
    assert {o.domain for o in model.opset_import} == {"", DOMAIN}


def test_overloads_are_keyed_by_attributes_and_input_avals():
    x, _ = _data(jnp.float32)

    def f(x, y):
        return (squareplus(x, b=1.0).sum() + squareplus(x * 2, b=1.0).sum()
                + squareplus(x, b=3.0).sum() + squareplus(y, b=1.0).sum())

    model = jonnx.export(f, x, jnp.ones((5,), jnp.float32))
    overloads = sorted(f.overload for f in model.functions)
    assert overloads == ["b=1.0,body=derived,in.X=float32[4,3]",
                         "b=1.0,body=derived,in.X=float32[5]",
                         "b=3.0,body=derived,in.X=float32[4,3]"]
    (got,) = _run_ort(model, x, jnp.ones((5,), jnp.float32))
    np.testing.assert_allclose(got, f(x, jnp.ones((5,), jnp.float32)), rtol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_dynamic_batch_axis_gives_one_shape_generic_body(reduction):
    """The body is traced with the symbolic batch axis: one overload for every batch size,
    which reads the size (jnp.mean's divisor) from its own input's shape."""
    p, t = _data(jnp.float32)

    def fn(p, t):
        return scaled_squared_error(p, t, scale=0.5, reduction=reduction)

    model = jonnx.export(fn, p, t, dynamic_axes={0: {0: "batch"}, 1: {0: "batch"}})
    (node,) = model.graph.node
    assert "in.P=float32[batch,3]" in node.overload
    imported = jonnx.import_model(model)
    for batch in (1, 4, 7):
        p, t = _data(jnp.float32, (batch, 3))
        (got,) = _run_ort(model, p, t)
        np.testing.assert_allclose(got, fn(p, t), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(imported(p, t), fn(p, t), rtol=1e-5, atol=1e-6)


def test_gradient_exports_through_the_registered_gradient_op(dtype):
    p, t = _data(dtype)

    def grads(p, t):
        return jax.grad(lambda p, t: scaled_squared_error(p, t, scale=0.5),
                        argnums=(0, 1))(p, t)

    model = jonnx.export(grads, p, t, dynamic_axes={0: {0: "batch"}, 1: {0: "batch"}})
    onnx.checker.check_model(model, full_check=True)
    assert [(n.domain, n.op_type) for n in model.graph.node if n.domain] == [
        (DOMAIN, "ScaledSquaredErrorGradient")]
    for batch in (4, 6):
        p, t = _data(dtype, (batch, 3))
        for got, want in zip(_run_ort(model, p, t), grads(p, t), strict=True):
            np.testing.assert_allclose(got, want, **_tol(dtype))


@pytest.mark.parametrize("op", [lambda x: squareplus(x, b=2.0),
                                lambda x: clipped_squareplus(x, b=1.0, n=1.5)],
                         ids=["squareplus", "clipped_squareplus"])
def test_gradient_without_a_registered_gradient_is_jax_derivative(op, dtype):
    x, _ = _data(dtype)

    def grad(x):
        return jax.grad(lambda x: op(x).sum())(x)

    model = jonnx.export(grad, x)
    assert all(n.domain == "" for n in model.graph.node)  # standard ops only
    assert not model.functions
    (got,) = _run_ort(model, x)
    np.testing.assert_allclose(got, grad(x), **_tol(dtype))
    np.testing.assert_allclose(jonnx.import_model(model)(x), grad(x), **_tol(dtype))


def test_registered_test_ops_do_not_enter_the_support_table():
    exports = jonnx.supported_exports()
    assert DOMAIN not in exports
    assert "Squareplus" not in {op for ops in exports.values() for op in ops}


# ------------------------------------- derived bodies of built-in ops vs hand-written ones

def _jaxops_eqn(fn, *args):
    """The first recorded op call of ``fn``: its ``jaxops_op`` equation."""
    with recording():
        closed = jax.make_jaxpr(fn)(*args)

    def find(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive is jaxops_op_p:
                return eqn
            for param in eqn.params.values():
                inner = getattr(param, "jaxpr", None)
                if inner is not None and (found := find(getattr(inner, "jaxpr", inner))):
                    return found
        return None

    return find(closed.jaxpr)


def _with_derived_body(model, fn, *args):
    """``model`` (one ai.jaxops node, hand-written body) with the derived body instead."""
    eqn = _jaxops_eqn(fn, *args)
    it = iter(eqn.invars)
    in_avals = [next(it).aval if p else None for p in eqn.params["present"]]
    derived = derived_function_proto(eqn.params["schema"].value, eqn.params["run"].value,
                                     dict(eqn.params["attrs"]), jonnx.DEFAULT_OPSET, in_avals,
                                     [v.aval for v in eqn.outvars])
    out = onnx.ModelProto()
    out.CopyFrom(model)
    (node,) = out.graph.node
    assert (derived.domain, derived.name) == (node.domain, node.op_type)
    assert derived.overload != node.overload
    assert all(f"in.{p.name}=absent" in derived.overload
               for p, a in zip(eqn.params["schema"].value.inputs, in_avals, strict=True)
               if a is None)
    node.overload = derived.overload
    del out.functions[:]
    out.functions.append(derived)
    onnx.checker.check_model(out, full_check=True)
    return out


BUILTINS = [  # (name, function, inputs from (x, positive t))
    ("relu_n", lambda x: jo.relu_n(x, n=0.5), 1),
    ("mse", lambda p, t: jo.mse(p, t), 2),
    ("mse_none", lambda p, t: jo.mse(p, t, reduction="none"), 2),
    ("binary_cross_entropy", lambda z, t: jo.binary_cross_entropy(z, t, reduction="sum"), 2),
    ("softsign_gradient", jo.softsign_gradient, 2),
    # an omitted optional input in the middle: "" in the node, absent from the trace
    ("clip_gradient_max_only", lambda y, dy: jo.clip_gradient(
        y, dy, None, jnp.asarray(0.5, y.dtype)), 2),
]


@pytest.mark.parametrize("name,fn,n_in", BUILTINS, ids=[c[0] for c in BUILTINS])
def test_derived_body_matches_the_hand_written_one(name, fn, n_in, dtype):
    x = jnp.asarray(RNG.normal(size=(4, 3)) * 3, dtype)
    t = jnp.asarray(RNG.uniform(size=(4, 3)), dtype)
    args = (x, t)[:n_in]
    hand = jonnx.export(fn, *args)
    derived = _with_derived_body(hand, fn, *args)
    feeds = {f"input_{i}": np.asarray(a) for i, a in enumerate(args)}
    try:
        (want,) = _run_ort(hand, *args)
    except ort.capi.onnxruntime_pybind11_state.NotImplemented:
        # onnxruntime lacks Softplus in float64: the reference evaluator runs the hand-written
        (want,) = ReferenceEvaluator(hand).run(None, feeds)
    (got,) = _run_ort(derived, *args)
    np.testing.assert_allclose(got, want, **_tol(dtype))
    np.testing.assert_allclose(got, fn(*args), **_tol(dtype))
    # not jaxops' canonical body: the importer inlines it, and JAX differentiates the body
    imported = jonnx.import_model(derived)
    np.testing.assert_allclose(imported(*args), fn(*args), **_tol(dtype))
    g = jax.grad(lambda x: jnp.sum(imported(x, *args[1:])))(x)
    np.testing.assert_allclose(g, jax.grad(lambda x: jnp.sum(fn(x, *args[1:])))(x),
                               **_tol(dtype))


# --------------------------------------------------------------------------------- limits

CUMULATIVE = OpSchema(
    name="Cumulative", function="cumulative", domain=DOMAIN, since_version=1,
    doc="Y = cumsum(X) along the last axis: a primitive the exporter does not translate.",
    inputs=(Parameter("X"),), outputs=(Parameter("Y"),),
)


@defop(CUMULATIVE)
def cumulative(x):
    return jnp.cumsum(x, axis=-1)


WRONG_SHAPE = OpSchema(
    name="WrongShape", function="wrong_shape", domain=DOMAIN, since_version=1,
    doc="Claims (by the default inference) the input's shape, returns a sum.",
    inputs=(Parameter("X"),), outputs=(Parameter("Y"),),
)


@defop(WRONG_SHAPE)
def wrong_shape(x):
    return jnp.sum(x, axis=0)


LIMIT_SCHEMAS = (CUMULATIVE, WRONG_SHAPE)


def test_an_untranslatable_primitive_in_the_implementation_is_named():
    with pytest.raises(NotImplementedError, match="the JAX primitive 'cumsum'"):
        jonnx.export(cumulative, _data(jnp.float32)[0])


def test_an_implementation_disagreeing_with_its_schema_is_refused():
    with pytest.raises(TypeError, match=r"WrongShape's implementation returns float32\[3\] "
                       r"for output 'Y', but its schema infers float32\[4,3\]"):
        jonnx.export(wrong_shape, _data(jnp.float32)[0])


def test_an_attribute_named_like_a_node_field_exports():
    @defop(name="TestNodeFieldAttrs", domain=DOMAIN)
    def node_fields(x, *, name=2.0, domain=1.0, overload=0.5):
        return x * name + domain * overload

    try:
        x = _data(jnp.float32)[0]
        model = jonnx.export(lambda x: node_fields(x, name=3.0), x)
        (node,) = model.graph.node
        assert (node.domain, node.op_type) == (DOMAIN, "TestNodeFieldAttrs")
        assert {a.name: a.f for a in node.attribute} == {"name": 3.0, "domain": 1.0,
                                                          "overload": 0.5}
        (got,) = _run_ort(model, x)
        np.testing.assert_allclose(got, 3 * x + 0.5, rtol=1e-6)
    finally:
        jo.schema.unregister("TestNodeFieldAttrs")
