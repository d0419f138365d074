"""jaxops.onnx: export to ONNX (checked, run in onnxruntime), import back to JAX (jit, grad,
vmap), opset-dependent import semantics, and errors."""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
from flax import nnx
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from reference import CASES, STRUCTURED

import jaxops as jo
from jaxops import onnx as jonnx
from jaxops.flax import nnx as jnnx

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
X3 = jnp.asarray(RNG.normal(size=(2, 3, 4)), jnp.float32)
POS = jnp.asarray(RNG.uniform(0.1, 2.0, size=(4, 3)), jnp.float32)
LABELS = jnp.array([0, 1, 2, 1])
LABELS3 = jnp.array([[0, 1, 2], [3, 2, 1]])  # X3 (2, 3, 4) with the classes last
PM1 = jnp.asarray(np.sign(RNG.normal(size=(4, 3))), jnp.float32)
STATS = (jnp.linspace(0.5, 2, 3), jnp.linspace(-1, 1, 3), jnp.linspace(-0.2, 0.2, 3),
         jnp.linspace(0.5, 1.5, 3))

def _like(arrays, x):
    return [a.astype(x.dtype) for a in arrays]


# (name, function, example args): every forward op, each attribute form that changes the graph
ROUND_TRIPS = [
    ("relu", jo.relu, (X,)),
    ("relu_n", lambda x: jo.relu_n(x, n=0.5), (X,)),
    ("leaky_relu", lambda x: jo.leaky_relu(x, alpha=-0.3), (X,)),
    ("prelu", lambda x: jo.prelu(x, jnp.array([0.1, 0.2, 0.3], x.dtype)), (X,)),
    ("clip", lambda x: jo.clip(x, -0.5, 0.5), (X,)),
    ("clip_max_only", lambda x: jo.clip(x, None, 0.5), (X,)),
    ("softsign", jo.softsign, (X,)),
    ("sigmoid", jo.sigmoid, (X,)),
    ("tanh", jo.tanh, (X,)),
    ("exp", jo.exp, (X,)),
    ("log", jo.log, (POS,)),
    ("softmax", lambda x: jo.softmax(x, axis=1), (X3,)),
    ("log_softmax", jo.log_softmax, (X3,)),
    ("mse", jo.mse, (X, POS)),
    ("mae_none", lambda p, t: jo.mae(p, t, reduction="none"), (X, POS)),
    ("msle_sum", lambda p, t: jo.msle(p, t, reduction="sum"), (POS, POS * 2)),
    ("hinge", jo.hinge, (X, PM1)),
    ("kl", lambda lp, q: jo.kl_divergence(lp, q, reduction="none"),
     (jo.log_softmax(X), jo.softmax(X * 2))),
    ("kl_log_target", lambda lp, q: jo.kl_divergence(lp, q, log_target=True),
     (jo.log_softmax(X), jo.log_softmax(X * 2))),
    ("binary_cross_entropy", jo.binary_cross_entropy, (X * 10, jo.sigmoid(X))),
    ("cross_entropy", jo.cross_entropy, (jo.softmax(X), jo.softmax(X * 3))),
    ("cross_entropy_logits", lambda z, t: jo.cross_entropy(z, t, from_logits=True,
                                                           reduction="none"),
     (X, jo.softmax(X * 3))),
    ("softmax_cross_entropy", lambda s: jo.softmax_cross_entropy(
        s, LABELS, jnp.array([1.0, 2.0, 0.5], s.dtype), ignore_index=2, return_log_prob=True),
     (X,)),
    ("linear_cross_entropy", lambda h: jo.linear_cross_entropy(
        h, jnp.linspace(-1, 1, 15, dtype=h.dtype).reshape(3, 5), LABELS, ignore_index=2,
        chunk_size=2), (X,)),
    ("nll_loss", lambda lp: jo.nll_loss(lp, LABELS, reduction="sum"), (jo.log_softmax(X),)),
    # jaxops' extensions of the labelled losses: the class axis (Transposes around the ONNX
    # node) and label smoothing (the ONNX node's loss and log_prob, mixed and reduced)
    ("softmax_cross_entropy_axis_last", lambda s: jo.softmax_cross_entropy(
        s, LABELS3, jnp.array([1.0, 2.0, 0.5, 1.5], s.dtype), ignore_index=2, axis=-1,
        reduction="none", return_log_prob=True), (X3,)),
    ("softmax_cross_entropy_label_smoothing", lambda s: jo.softmax_cross_entropy(
        s, LABELS, jnp.array([1.0, 2.0, 0.5], s.dtype), ignore_index=2, label_smoothing=0.2),
     (X,)),
    ("softmax_cross_entropy_label_smoothing_axis_last", lambda s: jo.softmax_cross_entropy(
        s, LABELS3, axis=-1, label_smoothing=0.1, reduction="sum", return_log_prob=True),
     (X3,)),
    ("softmax_cross_entropy_label_smoothing_none", lambda s: jo.softmax_cross_entropy(
        s, LABELS, ignore_index=0, label_smoothing=0.3, reduction="none"), (X,)),
    ("nll_loss_axis_last", lambda lp: jo.nll_loss(lp, LABELS3, ignore_index=1, axis=-1),
     (jo.log_softmax(X3),)),
    ("batch_norm_eval", lambda x: jo.batch_norm(x, *_like(STATS, x)), (X3,)),
    ("batch_norm_train", lambda x: jo.batch_norm(x, *_like(STATS, x), momentum=0.75,
                                                 training=True), (X3,)),
    ("mlp", lambda x: jo.softmax(jo.tanh(x @ jnp.ones((3, 5), x.dtype) + 1.0) * 2.0), (X,)),
]


def _op_of_case(name):
    """The schema of the op a ROUND_TRIPS case is named after (longest function prefix)."""
    named = [s for s in jo.schema.builtin_schemas() if name.startswith(s.function)]
    return max(named, key=lambda s: len(s.function), default=None)


def _from_reference() -> list:
    """A row for each forward op of the reference table (tests/reference.py) that the rows
    above lack, on the table's own sample: an op added to the table round-trips with no row
    here, and its gradient op with it (test_gradient_exports_as_gradient_ops)."""
    named = {s.function: s for s in jo.schema.builtin_forward_schemas()}
    covered = {s.function for name, *_ in ROUND_TRIPS if (s := _op_of_case(name)) is not None}
    rng, rows = np.random.default_rng(1), []
    for case in (*CASES, *STRUCTURED):
        function = getattr(case.op, "__name__", "")
        if function not in named or function in covered or getattr(jo, function) is not case.op:
            continue
        covered.add(function)
        xs = case.sample(rng, case.shape or (4, 3))
        args = tuple(jnp.asarray(x, jnp.int32 if i in case.ints else jnp.float32)
                     for i, x in enumerate(xs))
        rows.append((case.name, functools.partial(case.op, **case.attrs), args))
    return rows


ROUND_TRIPS += _from_reference()


def _tuple(y):
    return y if isinstance(y, tuple) else (y,)


def run_ort(model, *args):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # not the constant-folding notes on float16 nodes
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feeds = {i.name: np.asarray(a) for i, a in zip(session.get_inputs(), args, strict=True)}
    return session.run(None, feeds)


@pytest.mark.parametrize(("name", "fn", "args"), ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_export_runs_in_onnxruntime_and_imports_back(name, fn, args):
    model = jonnx.export(fn, *args)  # checked with full_check inside
    want = _tuple(fn(*args))
    got = run_ort(model, *args)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        # onnxruntime computes in float32 with its own kernels: a few float32 ulps
        np.testing.assert_allclose(g, w, rtol=2e-6, atol=2e-6)
    imported = jonnx.import_model(model)
    for g, w in zip(_tuple(jax.jit(imported)(*args)), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    _assert_listed(model)


def _assert_listed(model):
    """Every node is an op type (and version) that supported_exports declares."""
    listed = jonnx.supported_exports()
    for n in model.graph.node:
        ops = listed[n.domain or "ai.onnx"]
        assert n.op_type in ops, n.op_type


def _weighted_sum(fn):
    """A scalar of ``fn``'s outputs with fixed random weights: its gradient w.r.t. the first
    argument pulls a generic cotangent through every output."""

    def loss(*args):
        total = 0.0
        for k, y in enumerate(_tuple(fn(*args))):
            w = jnp.asarray(np.random.default_rng(k).normal(size=y.shape), y.dtype)
            total = total + jnp.sum(y * w)
        return total

    return loss


@pytest.mark.parametrize(("name", "fn", "args"), ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_gradient_exports_as_gradient_ops(name, fn, args):
    """``jax.value_and_grad`` of a recorded function exports each registered gradient as one
    ai.jaxops node, whose function body onnxruntime runs to JAX's values."""
    grad = jax.value_and_grad(_weighted_sum(fn))
    model = jonnx.export(grad, *args)
    want = grad(*args)
    got = run_ort(model, *args)
    # float32 sums in onnxruntime's order: measured worst 8.3e-7 of max(|ref|, 1) (batch
    # norm); imported back into JAX, 1.5e-7
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-6, atol=2e-6)
    for g, w in zip(jonnx.import_model(model)(*args), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    _assert_listed(model)
    op = _op_of_case(name)
    if op is not None and op.gradient is not None:
        assert op.gradient in {n.op_type for n in model.graph.node}


def test_an_op_without_a_hand_row_gets_one_from_the_reference_table(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROUND_TRIPS",
                        [r for r in ROUND_TRIPS if r[0] != "tanh"])
    (row,) = [r for r in _from_reference() if r[0] == "tanh"]
    np.testing.assert_allclose(row[1](*row[2]), np.tanh(np.asarray(row[2][0], np.float64)),
                               rtol=1e-6)


def test_the_gradient_cases_cover_every_gradient_op():
    tried = {op.gradient for name, *_ in ROUND_TRIPS if (op := _op_of_case(name)) is not None}
    # dropout exports only in inference, the identity, whose gradient needs no gradient op
    # (a training call is refused: tests/test_dropout.py)
    assert tried - {None} == {s.name for s in jo.schema.builtin_schemas()
                              if s.name.endswith("Gradient")} - {"KeyedDropoutGradient"}


# onnxruntime 1.32's CPU kernels lack some ops in float64 (LeakyRelu, PRelu, Softsign,
# ThresholdedRelu, Elu, Selu, Softplus, HardSigmoid, HardSwish, Mish, Erf) and float16
# (Softplus, HardSigmoid): the reference evaluator runs those models; and every op in
# bfloat16 (the evaluator runs all of it, one bfloat16 rounding per node)
def _ort_or_reference(model, args, dtype, reference):
    if dtype == "bfloat16":
        return reference(model, *args)
    try:
        return run_ort(model, *args)
    except ort.capi.onnxruntime_pybind11_state.NotImplemented:
        assert dtype in ("float64", "float16")  # onnxruntime has every float32 kernel
        return reference(model, *args)


# ONNX float attributes are float32: leaky_relu's alpha=-0.3 loses float64 digits, epsilon
# 1e-5 the normalizations' (measured 1.04e-12 for layer_norm).  GroupNormalization-21 is a
# function whose body casts to float32 (stash_type=1, as ONNX defines it) also for float64
# inputs, which jaxops computes in float64: measured 3.1e-7 in onnxruntime.
_F32_ATTRIBUTE = {"leaky_relu": 2e-8, "layer_norm": 2e-12, "rms_norm": 2e-12,
                  "group_norm": 1e-6, "hard_sigmoid": 2e-8, "hard_swish": 3e-8,
                  # not an attribute: the reference evaluator's Erf is float32 (2.9e-8)
                  "gelu": 5e-8}
_F16_KERNEL = {"hard_swish": 2 ** -8}
_RTOL = {"float64": 1e-12, "float16": 2 ** -10, "bfloat16": 2 ** -7}
# the reference evaluator runs the normalizations entirely in bfloat16 (mean, variance and
# the normalized values each rounded), jaxops in float32 with one rounding: measured 0.024
# (layer_norm) and 0.012 (group_norm) of max(|ref|, 1)
_BF16_EVALUATOR = {"layer_norm": 2 ** -5, "rms_norm": 2 ** -5, "group_norm": 2 ** -5}


def _relative_error(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1.0)))


@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
@pytest.mark.parametrize(("name", "fn", "args"), ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_round_trips_in_other_float_types(name, fn, args, dtype):
    """Measured worst relative errors (of max(|ref|, 1)): float64 9e-13 (batch norm: ONNX's
    float32 epsilon attribute), float16 0 in onnxruntime, bfloat16 2^-7 in the evaluator
    (it rounds after every node; jaxops computes in float32).  Imported back into JAX the
    graph runs the same jaxops ops: equal bit for bit, but for float64 ops with float
    attributes, which ONNX stores in float32."""
    with jax.enable_x64(dtype == "float64"):
        args = [a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in args]
        want = _tuple(fn(*args))
        model = jonnx.export(fn, *args)
        assert model.graph.input[0].type.tensor_type.elem_type == _tensor_type(dtype)
        got = _ort_or_reference(model, args, dtype, run_reference)
        rtol = max(_RTOL[dtype], _F32_ATTRIBUTE.get(name, 0.0) if dtype == "float64" else 0.0,
                   _BF16_EVALUATOR.get(name, 0.0) if dtype == "bfloat16" else 0.0)
        if name.startswith("batch_norm") and dtype == "float64":
            rtol = 2e-12
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype
            assert _relative_error(g, w) <= rtol
        for g, w in zip(_tuple(jonnx.import_model(model)(*args)), want, strict=True):
            if dtype == "float64":  # float32 attributes (alpha, epsilon) read back
                assert _relative_error(g, w) <= rtol
            else:
                np.testing.assert_array_equal(g, w)


def run_reference(model, *args):
    """The ONNX reference evaluator on the model with its functions inlined (the evaluator
    cannot run functions with attributes, and ignores overloads)."""
    inlined = onnx.inliner.inline_local_functions(model)
    return ReferenceEvaluator(inlined).run(
        None, {i.name: np.asarray(a) for i, a in zip(model.graph.input, args, strict=True)})


@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
@pytest.mark.parametrize(("name", "fn", "args"), ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_gradients_in_other_float_types(name, fn, args, dtype):
    """float16/bfloat16 gradient bodies compute in float32 (Cast in, Cast out), as the jaxops
    ops do: measured worst 2 float16 ulps in onnxruntime (batch norm), 2 bfloat16 ulps in the
    reference evaluator (whose forward nodes round in bfloat16), float64 9e-13 (ONNX's
    float32 epsilon)."""
    with jax.enable_x64(dtype == "float64"):
        args = [a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in args]
        grad = jax.value_and_grad(_weighted_sum(fn))
        model = jonnx.export(grad, *args)
        want = grad(*args)
        rtol = {"float64": 2e-12, "float16": 2 ** -9, "bfloat16": 2 ** -6}[dtype]
        if dtype == "float64":
            rtol = max(rtol, _F32_ATTRIBUTE.get(name, 0.0))
        if dtype == "float16":
            # onnxruntime's HardSwish float16 kernel computes in float16, the gradient body in
            # float32: measured 2.7e-3 on the forward value that value_and_grad returns
            rtol = max(rtol, _F16_KERNEL.get(name, 0.0))
        # onnxruntime lacks bfloat16 kernels and some float64 ones (see above)
        got = _ort_or_reference(model, args, dtype, run_reference)
        for g, w in zip(got, want, strict=True):
            assert _relative_error(g, w) <= rtol
        for g, w in zip(jonnx.import_model(model)(*args), want, strict=True):
            assert _relative_error(g, w) <= rtol


def _tensor_type(dtype):
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(jnp.dtype(dtype)))


def _same_in_ort(fn, *args):
    model = jonnx.export(fn, *args)
    for g, w in zip(run_ort(model, *args), _tuple(fn(*args)), strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("alpha", [0.1, -0.3])
def test_leaky_relu_gradient_body_reads_the_sign_bit_at_infinity_and_zero(alpha):
    y = jnp.array([-jnp.inf, -1.0, -0.0, 0.0, 2.0, jnp.inf])
    _same_in_ort(lambda y, dy: jo.leaky_relu_gradient(y, dy, alpha=alpha), y, jnp.ones(6))


def test_masking_gradient_bodies_compare_in_the_input_type():
    # n = 0.1 rounds to 0.09998 in float16: y saturated there is not below n
    x = jnp.array([0.05, 0.5, 2.0], jnp.float16)
    _same_in_ort(jax.grad(lambda x: jo.relu_n(x, n=0.1).astype(jnp.float32).sum()), x)


def test_overloads_differ_by_input_types():
    x, scale = jnp.ones((2, 3), jnp.float16), jnp.ones(3, jnp.float16)
    mean, var = jnp.zeros(3), jnp.ones(3)

    def both(x, scale, mean, var):  # float32 and float16 statistics in one graph
        a = jo.batch_norm_gradient(x, scale, mean, var, x)
        b = jo.batch_norm_gradient(x, scale, mean.astype(jnp.float16), var.astype(jnp.float16),
                                   x)
        return a[3], b[3]

    model = jonnx.export(both, x, scale, mean, var)
    assert len(model.functions) == 2
    for g, w in zip(run_ort(model, x, scale, mean, var), both(x, scale, mean, var),
                    strict=True):
        assert g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=2 ** -10)


def test_cross_entropy_gradient_body_on_a_fully_masked_row():
    x = jnp.array([[-jnp.inf] * 3, [0.0, -jnp.inf, 1.0]])
    t = jnp.array([[0.0] * 3, [0.5, 0.0, 0.5]])
    f = lambda x, t, d: jo.cross_entropy_gradient(x, t, d, from_logits=True,  # noqa: E731
                                                  reduction="none")
    model = jonnx.export(f, x, t, jnp.ones(2))
    np.testing.assert_allclose(run_ort(model, x, t, jnp.ones(2))[0], f(x, t, jnp.ones(2)),
                               rtol=1e-6)


def test_floor_quotient_of_a_dynamic_axis():
    def f(x):
        return jax.lax.slice_in_dim(x, 0, x.shape[0] // 2) * 2.0

    model = jonnx.export(f, jnp.ones((4, 3)), dynamic_axes={0: {0: "b"}})
    x = jnp.asarray(RNG.normal(size=(7, 3)), jnp.float32)
    np.testing.assert_array_equal(run_ort(model, x)[0], f(x))


def test_transforms_export_does_not_record_are_named():
    with pytest.raises(NotImplementedError, match="first-order reverse-mode gradients"):
        jonnx.export(jax.grad(jax.grad(lambda x: jo.tanh(x))), jnp.float32(0.5))
    with pytest.raises(NotImplementedError, match="vmap of jaxops ops are not recorded"):
        jonnx.export(jax.vmap(jo.relu), X)


def test_jaxops_ops_are_single_nodes_and_domain_ops_are_functions():
    model = jonnx.export(lambda x, t: jo.mse(jo.relu_n(x, n=2.0), t, reduction="none")
                         + jo.mse(x, t, reduction="none"), X, POS)
    ops = [(n.domain, n.op_type, n.overload) for n in model.graph.node]
    assert ("ai.jaxops", "ReluN", "n=2.0") in ops
    assert ("ai.jaxops", "MeanSquaredError", "reduction=none") in ops
    assert {(f.name, f.overload) for f in model.functions} == {
        ("ReluN", "n=2.0"), ("MeanSquaredError", "reduction=none")}
    relu_n = next(n for n in model.graph.node if n.op_type == "ReluN")
    assert helper.get_attribute_value(relu_n.attribute[0]) == pytest.approx(2.0)
    assert [o.domain for o in model.opset_import] == ["", "ai.jaxops"]


def test_flax_mlp_with_batch_norm_round_trip_and_fine_tune():
    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(3, 8, rngs=rngs)
            self.bn = jnnx.BatchNorm(8, rngs=rngs)
            self.l2 = nnx.Linear(8, 2, rngs=rngs)

        def __call__(self, x):
            return self.l2(jo.relu(self.bn(self.l1(x))))

    model = MLP(nnx.Rngs(0))
    model(X)  # one training step: non-trivial running statistics
    model.eval()
    onnx_model = jonnx.export(lambda x: model(x), X)
    assert "BatchNormalization" in [n.op_type for n in onnx_model.graph.node]
    np.testing.assert_allclose(run_ort(onnx_model, X)[0], model(X), rtol=1e-5, atol=1e-6)
    imported = jonnx.import_model(onnx_model)
    np.testing.assert_allclose(imported(X), model(X), rtol=1e-6, atol=1e-7)
    # parameters are the float initializers; gradients flow to them
    params = imported.params
    assert len(params) >= 6

    def loss(p):
        return jo.softmax_cross_entropy(imported(X, params=p), jnp.array([0, 1, 1, 0]))

    grads = jax.grad(loss)(params)
    assert any(float(jnp.abs(g).sum()) > 0 for g in grads.values())
    stepped = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    assert loss(stepped) < loss(params)


def test_flax_linen_apply_exports_for_inference_and_training():
    """A linen model's ``apply``: inference exports one BatchNormalization; the training step
    (``mutable=["batch_stats"]``, ``value_and_grad`` w.r.t. params) exports the gradient ops
    and the updated statistics, and onnxruntime computes all of them as JAX does."""
    import flax.linen as nn

    from jaxops.flax import linen as jlinen

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            h = jlinen.BatchNorm(use_running_average=not train, axis=1)(nn.Dense(8)(x))
            return nn.Dense(3)(jo.leaky_relu(h))

    model = MLP()
    variables = model.init(jax.random.key(0), X, train=False)

    def infer(x):
        return model.apply(variables, x, train=False)

    onnx_model = jonnx.export(infer, X, dynamic_axes={0: {0: "batch"}})
    assert "BatchNormalization" in [n.op_type for n in onnx_model.graph.node]
    x7 = jnp.asarray(RNG.normal(size=(7, 3)), jnp.float32)
    np.testing.assert_allclose(run_ort(onnx_model, x7)[0], infer(x7), rtol=2e-6, atol=2e-6)

    def train_step(x):
        def loss(params):
            y, updates = model.apply({**variables, "params": params}, x, train=True,
                                     mutable=["batch_stats"])
            return jo.softmax_cross_entropy(y, LABELS), updates["batch_stats"]

        (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        return value, stats, grads

    onnx_model = jonnx.export(train_step, X)
    ops = {n.op_type for n in onnx_model.graph.node}
    assert {"BatchNormalizationGradient", "LeakyReluGradient",
            "SoftmaxCrossEntropyLossGradient"} <= ops
    want = jax.tree.leaves(train_step(X))
    got = run_ort(onnx_model, X)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-6, atol=2e-6)


def test_imported_model_under_vmap_and_grad():
    # the batch axis is dynamic: vmap calls the model on one row, grad on all four (inputs
    # are checked against the declared shapes)
    model = jonnx.export(lambda x: jo.log_softmax(jo.leaky_relu(x)), X,
                         dynamic_axes={0: {0: "batch"}})
    f = jonnx.import_model(model)
    rows = jax.vmap(lambda r: f(r[None])[0])(X)
    np.testing.assert_allclose(rows, jo.log_softmax(jo.leaky_relu(X)), rtol=1e-6)
    g = jax.grad(lambda x: f(x)[0, 0])(X)
    want = jax.grad(lambda x: jo.log_softmax(jo.leaky_relu(x))[0, 0])(X)
    np.testing.assert_allclose(g, want, rtol=1e-6)


def test_dynamic_batch_axis_survives_export():
    model = jonnx.export(lambda x: jo.softmax(jnp.tanh(x @ jnp.ones((3, 2)))), X,
                         dynamic_axes={0: {0: "batch"}})
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch"
    x7 = jnp.asarray(RNG.normal(size=(7, 3)), jnp.float32)
    np.testing.assert_allclose(run_ort(model, x7)[0],
                               jo.softmax(jnp.tanh(x7 @ jnp.ones((3, 2)))), rtol=1e-6)


def _batch_dependent(x):
    """Flattens, averages over, and broadcasts to the batch axis: its size is used as a
    shape and as a value."""
    w = jnp.asarray(np.random.default_rng(1).normal(size=(6, 5)), jnp.float32)
    h = x.reshape(x.shape[0], -1) @ w
    h = h - jnp.mean(h, axis=0, keepdims=True)
    y, _, _ = jo.batch_norm(h[:, :, None], jnp.ones(5), jnp.zeros(5), jnp.zeros(5),
                            jnp.ones(5), training=True)
    h = jax.lax.slice_in_dim(jo.relu(jnp.squeeze(y, 2)), 1, 5, axis=1)  # x[:, 1:] is a gather
    return jo.log_softmax(h + jnp.zeros((x.shape[0], 4)))


@pytest.mark.parametrize("grad", [False, True], ids=["forward", "gradient"])
def test_symbolic_batch_in_reshapes_means_and_gradients(grad):
    fn = _batch_dependent
    if grad:
        fn = jax.grad(lambda x: jo.nll_loss(_batch_dependent(x), jnp.zeros(x.shape[0], jnp.int32)))
    x4 = jnp.asarray(RNG.normal(size=(4, 2, 3)), jnp.float32)
    model = jonnx.export(fn, x4, dynamic_axes={0: {0: "batch"}})
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    imported = jonnx.import_model(model)
    for n in (1, 7):
        x = jnp.asarray(RNG.normal(size=(n, 2, 3)), jnp.float32)
        np.testing.assert_allclose(run_ort(model, x)[0], fn(x), rtol=2e-6, atol=2e-6)
        np.testing.assert_allclose(imported(x), fn(x), rtol=1e-6, atol=1e-6)


def test_dynamic_axes_errors():
    with pytest.raises(ValueError, match="names input 1, but the function has 1"):
        jonnx.export(jo.relu, X, dynamic_axes={1: {0: "b"}})
    with pytest.raises(ValueError, match=r"names axis 2, but input 0 has shape \(4, 3\)"):
        jonnx.export(jo.relu, X, dynamic_axes={0: {2: "b"}})
    with pytest.raises(ValueError, match="must be a name like 'batch', got '2b'"):
        jonnx.export(jo.relu, X, dynamic_axes={0: {0: "2b"}})
    with pytest.raises(NotImplementedError, match="iota over the dynamic axis"):
        jonnx.export(lambda x: x + jnp.arange(x.shape[0], dtype=x.dtype)[:, None], X,
                     dynamic_axes={0: {0: "b"}})


# ------------------------------------------------------------ import: opset semantics

def _model(nodes, inputs, outputs, opset, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize(("opset", "axis"), [(7, None), (7, 2), (11, None), (11, 1), (11, 2),
                                             (13, None), (13, 1)])
def test_softmax_axis_follows_the_imported_opset(op, opset, axis):
    attrs = {} if axis is None else {"axis": axis}
    model = _model([helper.make_node(op, ["x"], ["y"], **attrs)], [_vi("x", [2, 3, 4])],
                   [_vi("y", [2, 3, 4])], opset)
    x = np.asarray(X3)
    # onnxruntime, not the reference evaluator: the evaluator applies opset-13 semantics
    # (one axis, default -1) to Softmax-11 too, where the spec flattens from axis (default 1)
    want = run_ort(model, x)[0]
    np.testing.assert_allclose(jonnx.import_model(model)(x), want, rtol=1e-6, atol=1e-7)
    if opset < 13:
        flat = x.reshape(2, 12) if axis in (None, 1) else x.reshape(6, 4)
        e = np.exp(flat - flat.max(-1, keepdims=True))
        ref = e / e.sum(-1, keepdims=True)
        ref = ref if op == "Softmax" else np.log(ref)
        np.testing.assert_allclose(want, ref.reshape(x.shape), rtol=1e-5, atol=1e-6)


def test_clip_attributes_before_opset_11_and_inputs_after():
    x = np.asarray(X)
    old = _model([helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=0.25)],
                 [_vi("x", [4, 3])], [_vi("y", [4, 3])], 7)  # Clip-6
    np.testing.assert_allclose(jonnx.import_model(old)(x), np.clip(x, -0.5, 0.25))
    new = _model([helper.make_node("Clip", ["x", "", "hi"], ["y"])], [_vi("x", [4, 3])],
                 [_vi("y", [4, 3])], 13,
                 [onnx.numpy_helper.from_array(np.float32(0.25), "hi")])
    np.testing.assert_allclose(jonnx.import_model(new)(x), np.minimum(x, 0.25))


def test_batch_norm_training_mode_matches_reference_evaluator():
    names = ["x", "s", "b", "m", "v"]
    inits = [onnx.numpy_helper.from_array(np.asarray(a), n) for a, n in zip(STATS, names[1:],
                                                                             strict=True)]
    node = helper.make_node("BatchNormalization", names, ["y", "rm", "rv"], training_mode=1,
                            momentum=0.75)
    model = _model([node], [_vi("x", [2, 3, 4])],
                   [_vi("y", [2, 3, 4]), _vi("rm", [3]), _vi("rv", [3])], 15, inits)
    x = np.asarray(X3)
    want = ReferenceEvaluator(model).run(None, {"x": x})
    for g, w in zip(jonnx.import_model(model)(x), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def _init(name, value):
    return onnx.numpy_helper.from_array(np.asarray(value), name)


X34 = np.asarray(RNG.normal(size=(3, 4)), np.float32)
X234 = np.asarray(X3)
_I = onnx.helper.make_node
# (id, opset, nodes, graph inputs (name, value), initializers, output shape): each checked
# against onnxruntime at the opset it names (the id names the op version that opset has)
STANDARD_OPS = [
    ("ReduceSum-11-attr", 11, [_I("ReduceSum", ["x"], ["y"], axes=[1], keepdims=0)],
     [("x", X234)], [], [2, 4]),
    ("ReduceSum-13-input", 13, [_I("ReduceSum", ["x", "a"], ["y"])], [("x", X234)],
     [_init("a", np.array([0, 2]))], [1, 3, 1]),
    ("ReduceSum-13-noop", 13, [_I("ReduceSum", ["x"], ["y"], noop_with_empty_axes=1)],
     [("x", X234)], [], [2, 3, 4]),
    ("ReduceMean-13-attr", 13, [_I("ReduceMean", ["x"], ["y"], axes=[-1])], [("x", X234)], [],
     [2, 3, 1]),
    ("ReduceMean-18-input", 18, [_I("ReduceMean", ["x", "a"], ["y"], keepdims=0)],
     [("x", X234)], [_init("a", np.array([1]))], [2, 4]),
    ("ReduceMax-18-all", 18, [_I("ReduceMax", ["x"], ["y"], keepdims=0)], [("x", X234)], [],
     []),
    ("Squeeze-11-attr", 11, [_I("Unsqueeze", ["x"], ["u"], axes=[0, 3]),
                             _I("Squeeze", ["u"], ["y"], axes=[0])], [("x", X34)], [],
     [3, 4, 1]),
    ("Squeeze-13-input", 13, [_I("Unsqueeze", ["x", "a"], ["u"]), _I("Squeeze", ["u"], ["y"])],
     [("x", X34)], [_init("a", np.array([1]))], [3, 4]),
    ("Slice-13", 13, [_I("Slice", ["x", "s", "e", "a", "k"], ["y"])], [("x", X234)],
     [_init("s", np.array([-1, 0])), _init("e", np.array([-100, 10])), _init("a", np.array([2, 1])),
      _init("k", np.array([-2, 2]))], [2, 2, 2]),
    ("Slice-1-attr", 7, [_I("Slice", ["x"], ["y"], starts=[1], ends=[3], axes=[1])],
     [("x", X234)], [], [2, 2, 4]),
    ("Pad-2-attr", 7, [_I("Pad", ["x"], ["y"], pads=[1, 0, 0, 2], value=1.5)], [("x", X34)], [],
     [4, 6]),
    ("Pad-13-negative", 13, [_I("Pad", ["x", "p", "c"], ["y"])], [("x", X34)],
     [_init("p", np.array([0, -1, 2, 1])), _init("c", np.float32(-3.0))], [5, 4]),
    ("Pad-18-axes-reflect", 18, [_I("Pad", ["x", "p", "", "a"], ["y"], mode="reflect")],
     [("x", X34)], [_init("p", np.array([2, 1])), _init("a", np.array([1]))], [3, 7]),
    ("Pad-13-edge", 13, [_I("Pad", ["x", "p"], ["y"], mode="edge")], [("x", X34)],
     [_init("p", np.array([1, 1, 1, 1]))], [5, 6]),
    ("Gather", 13, [_I("Gather", ["x", "i"], ["y"], axis=1)], [("x", X34)],
     [_init("i", np.array([[3, 0], [1, 1]]))], [3, 2, 2]),
    ("Shape-Reshape", 15, [_I("Shape", ["x"], ["s"], start=0, end=1),
                           _I("Concat", ["s", "m"], ["t"], axis=0),
                           _I("Reshape", ["x", "t"], ["y"])], [("x", X234)],
     [_init("m", np.array([-1]))], [2, 12]),
    ("ConstantOfShape", 13, [_I("Shape", ["x"], ["s"]),
                             _I("ConstantOfShape", ["s"], ["c"], value=onnx.helper.make_tensor(
                                 "v", TensorProto.FLOAT, [1], [2.5])),
                             _I("Mul", ["x", "c"], ["y"])], [("x", X34)], [], [3, 4]),
    ("Gemm", 13, [_I("Gemm", ["a", "b", "c"], ["y"], transA=1, alpha=0.5, beta=2.0)],
     [("a", X34)], [_init("b", X34), _init("c", np.ones(4, np.float32))], [4, 4]),
    ("Flatten", 13, [_I("Flatten", ["x"], ["y"], axis=2)], [("x", X234)], [], [6, 4]),
    ("Expand", 13, [_I("Expand", ["x", "s"], ["y"])], [("x", X34[:1])],
     [_init("s", np.array([2, 3, 1]))], [2, 3, 4]),
    ("Einsum", 12, [_I("Einsum", ["a", "b"], ["y"], equation="ij,kj->ik")], [("a", X34)],
     [_init("b", X34)], [3, 3]),
    ("Where-Cast", 13, [_I("Greater", ["x", "z"], ["g"]), _I("Cast", ["g"], ["c"], to=1),
                        _I("Where", ["g", "x", "c"], ["y"])], [("x", X34)],
     [_init("z", np.float32(0))], [3, 4]),
    ("Transpose-Concat", 13, [_I("Transpose", ["x"], ["t"], perm=[1, 0]),
                              _I("Concat", ["t", "t"], ["y"], axis=1)], [("x", X34)], [],
     [4, 6]),
    ("BatchNormalization-7", 7, [_I("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])],
     [("x", X234)], [_init(n, np.asarray(a)) for n, a in zip("sbmv", STATS, strict=True)],
     [2, 3, 4]),
    ("BatchNormalization-9", 9, [_I("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
                                    epsilon=1e-3)],
     [("x", X234)], [_init(n, np.asarray(a)) for n, a in zip("sbmv", STATS, strict=True)],
     [2, 3, 4]),
    ("BatchNormalization-14", 14, [_I("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])],
     [("x", X234)], [_init(n, np.asarray(a)) for n, a in zip("sbmv", STATS, strict=True)],
     [2, 3, 4]),
]


@pytest.mark.parametrize(("opset", "nodes", "inputs", "inits", "shape"),
                         [c[1:] for c in STANDARD_OPS], ids=[c[0] for c in STANDARD_OPS])
def test_standard_ops_import_as_onnxruntime_runs_them(opset, nodes, inputs, inits, shape):
    model = _model(nodes, [_vi(n, list(v.shape)) for n, v in inputs], [_vi("y", shape)], opset,
                   inits)
    want = run_ort(model, *(v for _, v in inputs))[0]
    imported = jonnx.import_model(model)
    got = jax.jit(imported)(*(v for _, v in inputs))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_import_integer_division_truncates_and_shape_slices_stay_static():
    div = _model([_I("Div", ["a", "b"], ["y"])], [_vi("a", [3], TensorProto.INT64)],
                 [_vi("y", [3], TensorProto.INT64)], 13, [_init("b", np.array([2, 2, -3]))])
    a = np.array([-7, 7, 5])
    np.testing.assert_array_equal(jonnx.import_model(div)(a), run_ort(div, a)[0])
    nodes = [_I("Shape", ["x"], ["s"]), _I("Slice", ["s", "b", "e"], ["lead"]),
             _I("Concat", ["lead", "m"], ["t"], axis=0), _I("Reshape", ["x", "t"], ["y"])]
    model = _model(nodes, [_vi("x", [2, 3, 4])], [_vi("y", [2, 12])], 13,
                   [_init("b", np.array([0])), _init("e", np.array([1])),
                    _init("m", np.array([-1]))])
    np.testing.assert_array_equal(jax.jit(jonnx.import_model(model))(X234),
                                  X234.reshape(2, 12))


def test_batch_norm_training_by_output_count_is_refused():
    outs = ["y", "rm", "rv", "sm", "sv"]
    node = _I("BatchNormalization", ["x", "s", "b", "m", "v"], outs)
    model = _model([node], [_vi("x", [2, 3, 4])],
                   [_vi("y", [2, 3, 4])] + [_vi(o, [3]) for o in outs[1:]], 9,
                   [_init(n, np.asarray(a)) for n, a in zip("sbmv", STATS, strict=True)])
    with pytest.raises(ValueError, match="BatchNormalization-9 with 5 outputs is training "
                                         "mode by output count"):
        jonnx.import_model(model)(X234)


# ------------------------------------------------------- ONNX-domain ops vs the evaluator

EDGE = np.array([[-3.0, -0.0, 0.0, 2.0], [1e4, -1e4, 0.5, -jnp.inf]], np.float32)
EVALUATED = [
    ("Relu", jo.relu, {}), ("LeakyRelu", lambda x: jo.leaky_relu(x, alpha=0.1), {"alpha": 0.1}),
    ("Softsign", jo.softsign, {}), ("Sigmoid", jo.sigmoid, {}), ("Tanh", jo.tanh, {}),
    ("Exp", jo.exp, {}), ("Softmax", jo.softmax, {}), ("LogSoftmax", jo.log_softmax, {}),
]


@pytest.mark.parametrize(("op", "fn", "attrs"), EVALUATED, ids=[e[0] for e in EVALUATED])
def test_onnx_domain_ops_match_the_reference_evaluator(op, fn, attrs):
    s = jo.schema.get(op)
    model = _model([helper.make_node(op, ["x"], ["y"], **attrs)], [_vi("x", [2, 4])],
                   [_vi("y", [2, 4])], s.since_version)
    for x in (np.asarray(RNG.normal(size=(2, 4)) * 3, np.float32), EDGE):
        with np.errstate(all="ignore"):
            want = ReferenceEvaluator(model).run(None, {"x": x})[0]
        got = np.asarray(fn(x))
        if op == "Softsign" and x is EDGE:  # jaxops: softsign(-inf) = -1; the evaluator: NaN
            assert got[1, 3] == -1.0 and np.isnan(want[1, 3])
            got, want = got[:, :3], want[:, :3]
        if op == "LogSoftmax" and x is EDGE:  # the evaluator's log(softmax) underflows to -inf
            x64 = x.astype(np.float64)
            m = x64.max(-1, keepdims=True)
            exact = x64 - m - np.log(np.exp(x64 - m).sum(-1, keepdims=True))
            under = np.isneginf(want) & np.isfinite(exact)
            np.testing.assert_allclose(got[under], exact[under], rtol=1e-7)
            got, want = np.where(under, 0, got), np.where(under, 0, want)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-30)


# ------------------------------------------------------------------------------- errors

def test_unsupported_primitive_is_named_with_its_source_line():
    with pytest.raises(NotImplementedError, match=r"the JAX primitive 'sort' \(at .*test_onnx"):
        jonnx.export(lambda x: jnp.sort(x), X)


def test_old_opset_for_a_newer_op_exports_its_implementation():
    # Softsign-1 (opset 13) is not the Softsign-22 jaxops follows: written out as standard ops
    model = jonnx.export(jo.softsign, X, opset=13)
    assert "Softsign" not in {n.op_type for n in model.graph.node}
    np.testing.assert_allclose(run_ort(model, X)[0], jo.softsign(X), rtol=1e-6)


def test_import_rejects_unknown_ops_malformed_bytes_and_external_data():
    unknown = _model([helper.make_node("Shrink", ["x"], ["y"])], [_vi("x", [3])],
                     [_vi("y", [3])], 20)
    with pytest.raises(ValueError, match=r"unsupported op 'Shrink' in domain 'ai.onnx'. "
                                         r"Supported: .*Relu"):
        jonnx.import_model(unknown)
    with pytest.raises(ValueError, match="not an ONNX model"):
        jonnx.import_model(b"\x08\x07garbage\xff\xff")
    with pytest.raises(TypeError, match="takes an onnx.ModelProto or its bytes"):
        jonnx.import_model("/etc/passwd")
    t = onnx.numpy_helper.from_array(np.ones(3, np.float32), "w")
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("raw_data")
    t.external_data.add(key="location", value="../../secret.bin")
    ext = _model([helper.make_node("Add", ["x", "w"], ["y"])], [_vi("x", [3])],
                 [_vi("y", [3])], 13, [t])
    with pytest.raises(ValueError, match="external data|invalid model"):
        jonnx.import_model(ext)


def test_corrupted_models_give_clear_errors_not_crashes():
    """Random byte flips, truncations and insertions of a serialized model: each either
    imports and runs, or raises ValueError/TypeError from jaxops (measured over 1,500
    mutations: 5% import and run; the rest fail in the parser, the checker, or a clear
    jaxops error; before the fix a corrupt name escaped as UnicodeDecodeError and an unknown
    tensor type as KeyError)."""
    w = jnp.asarray(RNG.normal(size=(3, 5)), jnp.float32)
    stats = [jnp.linspace(0.5, 2, 5), jnp.linspace(-1, 1, 5), jnp.linspace(-0.2, 0.2, 5),
             jnp.linspace(0.5, 1.5, 5)]

    def f(x):
        y = jo.batch_norm(jo.relu_n(x @ w, n=2.0), *stats)[0]
        return jo.softmax_cross_entropy(y, LABELS, reduction="none")

    data = jonnx.export(f, X).SerializeToString()
    rng = np.random.default_rng(0)
    outcomes = {"ran": 0, "refused": 0}
    for k in range(300):
        b = bytearray(data)
        if k % 3 == 0:
            for _ in range(rng.integers(1, 4)):
                b[rng.integers(len(b))] = rng.integers(256)
        elif k % 3 == 1:
            b = b[:rng.integers(len(b))]
        else:
            i = rng.integers(len(b))
            b[i:i] = bytes(rng.integers(0, 256, rng.integers(1, 8)).tolist())
        try:
            jonnx.import_model(bytes(b))(X)
            outcomes["ran"] += 1
        except (ValueError, TypeError) as e:
            assert type(e) in (ValueError, TypeError), type(e)  # not a subclass in disguise
            assert str(e).startswith("jaxops."), str(e)
            outcomes["refused"] += 1
    assert outcomes["ran"] > 0 and outcomes["refused"] > 0


def test_docs_list_the_supported_ops():
    from pathlib import Path

    docs = (Path(__file__).parent.parent / "docs" / "onnx.md").read_text()
    assert jonnx.support_table() in docs


def test_models_older_than_opset_7_are_refused():
    model = _model([_I("Add", ["x", "x"], ["y"])], [_vi("x", [3])], [_vi("y", [3])], 6)
    with pytest.raises(ValueError, match="imports ai.onnx opset 6; supported: 7 to"):
        jonnx.import_model(model)


def test_import_jaxops_does_not_import_onnx():
    import subprocess
    import sys

    code = "import sys, jaxops; assert 'onnx' not in sys.modules, 'onnx imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_jaxops_domain_schemas_are_registered_with_onnx_defs():
    for s in jo.schema.builtin_schemas():
        if s.domain != jo.schema.JAXOPS_DOMAIN:
            continue
        ref = onnx.defs.get_schema(s.name, 1, s.domain)
        assert [p.name for p in ref.inputs] == [p.name for p in s.inputs]
        assert [p.name for p in ref.outputs] == [p.name for p in s.outputs]
        assert set(ref.attributes) == {a.onnx_name or a.name for a in s.attributes if a.onnx}
    assert onnx.defs.get_schema("ReluN", 1, "ai.jaxops").attributes["n"].default_value.f == 6.0


def test_import_constant_nodes_in_each_form():
    nodes = [helper.make_node("Constant", [], ["a"], value_float=2.0),
             helper.make_node("Constant", [], ["s"], value_ints=[4, 3]),
             helper.make_node("Mul", ["x", "a"], ["m"]),
             helper.make_node("Reshape", ["m", "s"], ["y"])]
    model = _model(nodes, [_vi("x", [3, 4])], [_vi("y", [4, 3])], 13)
    x = np.asarray(RNG.normal(size=(3, 4)), np.float32)
    np.testing.assert_allclose(jonnx.import_model(model)(x), (2 * x).reshape(4, 3))


def test_every_exported_standard_op_type_is_importable():
    """What the exporter may write (at the version it writes), import_model reads."""
    exports = jonnx.supported_exports()["ai.onnx"]
    imports = jonnx.supported_imports()["ai.onnx"]
    missing = {t: v for t, v in exports.items() if v not in imports.get(t, [])}
    assert not missing, f"exported but not importable: {missing}"


def test_an_op_using_sin_and_cos_round_trips():
    @jo.defop(name="TestSinCos", domain="test.import")
    def sin_cos(x):
        return jnp.sin(x) * jnp.cos(x)

    try:
        x = jnp.linspace(-3, 3, 7)
        model = jonnx.export(sin_cos, x)
        imported = jonnx.import_model(model)
        np.testing.assert_allclose(imported(x), np.sin(x) * np.cos(x), rtol=1e-6, atol=1e-7)
    finally:
        jo.schema.unregister("TestSinCos")
