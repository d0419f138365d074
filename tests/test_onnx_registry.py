"""The importer maps ONNX nodes to jaxops ops through the schema registry: attribute names and
defaults come from the schemas, an ai.onnx node runs the jaxops op when the version the model's
opset resolves to has the signature of the one jaxops follows, older definitions that differ
take named legacy handlers, and an op registered later imports with no importer edit.  Hand-
written ONNX bodies are declared beside their ops (``Op.defonnx``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from onnx import TensorProto, helper
from opcheck_examples import examples

import jaxops as jo
from jaxops import onnx as jonnx
from jaxops.onnx import importer
from jaxops.schema import JAXOPS_DOMAIN, Attribute, OpSchema, Parameter

F32 = TensorProto.FLOAT


def _model(nodes, inputs, outputs, opset, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=10)


def _vi(name, shape, t=F32):
    return helper.make_tensor_value_info(name, t, shape)


def _jit_names(fn, *args) -> set[str]:
    """The names of the jitted calls in ``fn``'s jaxpr: a jaxops op shows up as its own."""
    names = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if "name" in eqn.params:
                names.add(eqn.params["name"])
            for p in eqn.params.values():
                inner = getattr(p, "jaxpr", None)
                if inner is not None:
                    walk(getattr(inner, "jaxpr", inner))

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return names


# ------------------------------------------------- every built-in op, through the registry

def _onnx_examples():
    """One example call per built-in ai.onnx-domain op (the opcheck table's first)."""
    out = {}
    for e in examples():
        s = e.op.schema
        if s.domain == "" and s.name not in out:
            out[s.name] = e
    return out


def test_every_builtin_onnx_domain_op_has_an_example():
    assert set(_onnx_examples()) == {s.name for s in jo.schema.builtin_schemas()
                                     if s.domain == ""}


@pytest.mark.parametrize("name", sorted(_onnx_examples()))
def test_builtin_onnx_domain_op_round_trips_through_the_registry(name):
    """Exported by jaxops (one node at the version jaxops follows), imported back as the
    jaxops op itself (its jit shows in the jaxpr, so its registered gradient applies), with
    the values of a direct call."""
    e = _onnx_examples()[name]
    s = e.op.schema
    arrays = [i for i, x in enumerate(e.inputs) if x is not None and
              np.asarray(x).dtype.kind == "f"]
    fixed = list(e.inputs)

    def fn(*xs):
        args = list(fixed)
        for i, x in zip(arrays, xs, strict=True):
            args[i] = x
        return e.op(*args, **e.attrs)

    xs = [jnp.asarray(e.inputs[i], jnp.float32) for i in arrays]
    fixed = [x if x is None or i in arrays else jnp.asarray(x) for i, x in enumerate(fixed)]
    opset = max(jonnx.DEFAULT_OPSET, s.since_version)  # Swish-24: one node from opset 24
    model = jonnx.export(fn, *xs, opset=opset)
    assert [n.op_type for n in model.graph.node if n.op_type == s.name] == [s.name]
    handler = importer._resolve("", s.name, opset)
    assert handler.func is importer._registry_op and handler.keywords["schema"] is s
    imported = jonnx.import_model(model)
    want = fn(*xs)
    got = imported(*xs)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    assert s.function in _jit_names(imported, *xs)


def test_attributes_take_the_schemas_defaults_and_onnx_names():
    """LeakyRelu without alpha is the schema's default; BatchNormalization's training_mode
    is jaxops' training; an omitted optional input ("") in the middle is None."""
    x = np.array([[-2.0, 0.5, 3.0]], np.float32)
    leaky = _model([helper.make_node("LeakyRelu", ["x"], ["y"])], [_vi("x", [1, 3])],
                   [_vi("y", [1, 3])], 16)
    alpha = jo.schema.get("LeakyRelu").attribute("alpha").default
    np.testing.assert_allclose(jonnx.import_model(leaky)(x), np.where(x < 0, alpha * x, x))
    clip = _model([helper.make_node("Clip", ["x", "", "hi"], ["y"])], [_vi("x", [1, 3])],
                  [_vi("y", [1, 3])], 13,
                  [helper.make_tensor("hi", F32, [], [1.0])])
    np.testing.assert_allclose(jonnx.import_model(clip)(x), np.minimum(x, 1.0))
    stats = [helper.make_tensor(n, F32, [3], [0.5, 1.0, 2.0]) for n in "sbmv"]
    bn = _model([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"],
                                  ["y", "rm", "rv"], training_mode=1, momentum=0.5)],
                [_vi("x", [2, 3])], [_vi("y", [2, 3]), _vi("rm", [3]), _vi("rv", [3])], 15,
                stats)
    x2 = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 5.0]], np.float32)
    want = jo.batch_norm(x2, *(jnp.asarray([0.5, 1.0, 2.0]),) * 4, momentum=0.5, training=True)
    for g, w in zip(jonnx.import_model(bn)(x2), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6)


def test_an_optional_output_sets_the_jaxops_only_flag():
    """SoftmaxCrossEntropyLoss's log_prob output is ONNX's form of return_log_prob."""
    scores = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    labels = np.array([0, 2, 1, 1])
    for outputs in (["loss"], ["loss", "logp"]):
        m = _model([helper.make_node("SoftmaxCrossEntropyLoss", ["s", "t"], outputs,
                                     reduction="sum")],
                   [_vi("s", [4, 3]), _vi("t", [4], TensorProto.INT64)],
                   [_vi("loss", []), *([_vi("logp", [4, 3])] if len(outputs) > 1 else [])], 13)
        want = jo.softmax_cross_entropy(scores, labels, reduction="sum",
                                        return_log_prob=len(outputs) > 1)
        got = jonnx.import_model(m)(scores, labels)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-6)


def test_jaxops_domain_nodes_resolve_through_the_registry():
    for s in jo.schema.builtin_schemas():
        if s.domain == JAXOPS_DOMAIN:
            handler = importer._resolve(JAXOPS_DOMAIN, s.name, 1)
            assert handler.func is importer._registry_op and handler.keywords["schema"] is s


# --------------------------------------------------------------------- older definitions

@pytest.mark.parametrize(("op_type", "opset", "legacy"), [
    ("Softmax", 11, "_softmax_before_13"), ("LogSoftmax", 7, "_softmax_before_13"),
    ("Clip", 10, "_clip_before_11"), ("BatchNormalization", 9, "_batch_norm_before_14"),
    ("BatchNormalization", 13, "_batch_norm_before_14"),
])
def test_an_older_definition_that_differs_takes_its_legacy_handler(op_type, opset, legacy):
    assert importer._resolve("", op_type, opset) is getattr(importer, legacy)


@pytest.mark.parametrize(("op_type", "opset"), [
    ("Softsign", 21), ("LeakyRelu", 7), ("Relu", 7), ("PRelu", 7), ("Exp", 7), ("Clip", 11),
    ("Clip", 12), ("BatchNormalization", 14), ("NegativeLogLikelihoodLoss", 12),
    ("SoftmaxCrossEntropyLoss", 12), ("Softmax", 13),
])
def test_an_older_definition_with_the_same_signature_runs_the_jaxops_op(op_type, opset):
    handler = importer._resolve("", op_type, opset)
    assert handler.func is importer._registry_op
    assert handler.keywords["schema"] is jo.schema.get(op_type)


def test_a_legacy_node_imports_with_the_old_meaning():
    """Softmax-11 normalizes the flattened trailing dims from axis 1; Clip-6 reads its
    bounds from attributes."""
    x = np.random.default_rng(1).normal(size=(2, 3, 4)).astype(np.float32)
    m = _model([helper.make_node("Softmax", ["x"], ["y"])], [_vi("x", [2, 3, 4])],
               [_vi("y", [2, 3, 4])], 11)
    flat = np.exp(x.reshape(2, 12))
    np.testing.assert_allclose(jonnx.import_model(m)(x),
                               (flat / flat.sum(1, keepdims=True)).reshape(x.shape), rtol=1e-6)
    m = _model([helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=0.25)],
               [_vi("x", [2, 3, 4])], [_vi("y", [2, 3, 4])], 7)
    np.testing.assert_allclose(jonnx.import_model(m)(x), np.clip(x, -0.5, 0.25))


# ------------------------------------------------ an op registered later: no importer edit

HARD_SIGMOID = OpSchema(
    name="HardSigmoid", function="hard_sigmoid_for_test", since_version=22,
    inherit_onnx_schema=True, doc="Y = max(0, min(1, alpha * X + beta)) * gain.",
    inputs=(Parameter("X"),), outputs=(Parameter("Y"),),
    attributes=(Attribute("alpha", "float", 0.2), Attribute("beta", "float", 0.5),
                # jaxops-only (not an ONNX attribute): the importer leaves its default
                Attribute("gain", "float", 2.0, onnx=False)),
)


def hard_sigmoid_for_test(x, *, alpha=0.2, beta=0.5, gain=2.0):
    return jnp.clip(alpha * x + beta, 0.0, 1.0) * gain


def _without_builtin_hard_sigmoid():
    """Take jaxops' HardSigmoid out of the registry; the returned function puts the registry
    back as it was, in its order (README's table follows it)."""
    order = jo.schema.all_schemas(sort=False)
    jo.schema.unregister("HardSigmoid")

    def restore():
        for s in jo.schema.all_schemas(sort=False):
            jo.schema.unregister(s.name)
        for s in order:
            jo.schema.register(s)

    return restore


@pytest.fixture
def hard_sigmoid():
    # jaxops has HardSigmoid now: taken out for the test, as if it were to be added later
    restore = _without_builtin_hard_sigmoid()
    jo.schema.register(HARD_SIGMOID)
    try:
        yield jo.defop(HARD_SIGMOID)(hard_sigmoid_for_test)
    finally:
        restore()


def _hard_sigmoid_model(opset, **attrs):
    return _model([helper.make_node("HardSigmoid", ["x"], ["y"], name="hs", **attrs)],
                  [_vi("x", [5])], [_vi("y", [5])], opset)


def test_an_op_registered_later_imports_with_no_importer_edit(hard_sigmoid):
    x = np.linspace(-4, 4, 5).astype(np.float32)
    for opset in (22, 7):  # HardSigmoid-6 has HardSigmoid-22's signature
        f = jonnx.import_model(_hard_sigmoid_model(opset, alpha=0.3))
        np.testing.assert_allclose(f(x), hard_sigmoid(x, alpha=0.3), rtol=1e-6)
        np.testing.assert_allclose(f(x), np.clip(0.3 * x + 0.5, 0, 1) * 2.0, rtol=1e-6)
        assert "hard_sigmoid_for_test" in _jit_names(f, x)
    assert jonnx.supported_imports()["ai.onnx"]["HardSigmoid"] == [6, 22]


def test_an_unregistered_op_is_refused_naming_the_node():
    restore = _without_builtin_hard_sigmoid()
    try:
        with pytest.raises(ValueError, match=r"HardSigmoid node 'hs'.*unsupported op "
                                             r"'HardSigmoid' in domain 'ai.onnx'. Supported: "):
            jonnx.import_model(_hard_sigmoid_model(22))
        assert "HardSigmoid" not in jonnx.supported_imports()["ai.onnx"]
    finally:
        restore()


def test_a_definition_jaxops_does_not_follow_is_refused_clearly(hard_sigmoid, monkeypatch):
    """An older definition whose signature differs, and no legacy handler: the message names
    the node, both versions and the fix."""
    monkeypatch.setattr(importer, "_follows", lambda schema, version: version ==
                        schema.since_version)
    with pytest.raises(ValueError, match=r"HardSigmoid node 'hs'.*opset 7 has HardSigmoid-6, "
                       r"whose inputs, outputs or attributes differ from HardSigmoid-22, which "
                       r"jaxops implements \(jaxops.hard_sigmoid_for_test\).*opset where "
                       r"HardSigmoid is version 22"):
        jonnx.import_model(_hard_sigmoid_model(7))


# ------------------------------------------------------------ bodies beside their ops

def test_hand_written_bodies_are_declared_beside_their_ops():
    """functions.py holds the builder only; an ai.jaxops op's hand-written body, where it has
    one, is declared in the op's own module (the others get a body derived from their
    implementation, tests/test_onnx_derived.py)."""
    from jaxops.onnx import functions

    assert not hasattr(functions, "BODIES")
    declared = 0
    for s in jo.schema.builtin_schemas():
        if s.domain == JAXOPS_DOMAIN and (body := functions.body_of(s)) is not None:
            declared += 1
            assert body.__module__ == getattr(jo, s.function).__module__, s.name
    assert declared >= 27  # the bodies there were when they moved beside their ops


def test_ops_modules_do_not_import_onnx():
    import ast
    import pathlib

    for path in (pathlib.Path(jo.__file__).parent / "ops").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                  and n.module}
        assert not {m for m in names if m == "onnx" or m.startswith(("onnx.", "jaxops.onnx"))}


def test_defonnx_refuses_a_second_body():
    with pytest.raises(ValueError, match="ReluGradient already has an ONNX body"):
        jo.relu_gradient.defonnx(lambda b, y, dy: dy)
