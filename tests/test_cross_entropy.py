"""softmax_cross_entropy, nll_loss and cross_entropy against the ONNX reference evaluator and
optax, and at their edges (the transform matrix is in test_transforms.py)."""

from __future__ import annotations

import contextlib
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import optax
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import jaxops as jo

_ONNX_TYPES = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE,
               np.int32: TensorProto.INT32, np.int64: TensorProto.INT64}


def onnx_run(op_type, opset, inputs, n_outputs=1, **attrs):
    """Run one ONNX node with the reference evaluator (None inputs are omitted optionals)."""
    names = [f"in{i}" if x is not None else "" for i, x in enumerate(inputs)]
    outs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, names, outs, **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, _ONNX_TYPES[x.dtype.type], x.shape)
         for n, x in zip(names, inputs, strict=True) if x is not None],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    feeds = {n: x for n, x in zip(names, inputs, strict=True) if x is not None}
    return ReferenceEvaluator(model).run(None, feeds)


def _ctx(dtype):
    return jax.enable_x64(True) if dtype == np.float64 else contextlib.nullcontext()


def _labelled(shape, seed=0, ignore=None):
    rng = np.random.default_rng(seed)
    n, c = shape[0], shape[1]
    scores = rng.normal(0, 3, size=shape)
    labels = rng.integers(0, c, size=(n, *shape[2:]))
    if ignore is not None:
        labels.reshape(-1)[::3] = ignore
    return scores, labels, rng.uniform(0.5, 2, size=c)


OPTIONS = list(itertools.product(
    [(6, 4), (3, 4, 5), (2, 3, 2, 2)], ["none", "sum", "mean"], [None, 2, -100], [False, True]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,reduction,ignore,weighted", OPTIONS)
def test_softmax_cross_entropy_and_nll_match_onnx(shape, reduction, ignore, weighted, dtype):
    scores, labels, weights = _labelled(shape, ignore=ignore)
    scores, weights = scores.astype(dtype), (weights.astype(dtype) if weighted else None)
    attrs = {"reduction": reduction} | ({} if ignore is None else {"ignore_index": ignore})
    with _ctx(dtype):
        want_loss, want_logp = onnx_run("SoftmaxCrossEntropyLoss", 13,
                                        [scores, labels.astype(np.int64), weights], 2, **attrs)
        loss, logp = jo.softmax_cross_entropy(scores, labels, weights, return_log_prob=True,
                                              **attrs)
        tol = 2e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(loss, want_loss, rtol=tol, atol=tol)
        np.testing.assert_allclose(logp, want_logp, rtol=tol, atol=tol)
        (want_nll,) = onnx_run("NegativeLogLikelihoodLoss", 22,
                               [want_logp, labels.astype(np.int32), weights], **attrs)
        np.testing.assert_allclose(jo.nll_loss(want_logp, labels, weights, **attrs), want_nll,
                                   rtol=tol, atol=tol)


def test_softmax_cross_entropy_matches_optax_with_classes_last():
    scores, labels, _ = _labelled((5, 7, 3))
    # optax: classes on the last axis
    s_last = jnp.moveaxis(jnp.asarray(scores, jnp.float32), 1, -1)
    want = optax.softmax_cross_entropy_with_integer_labels(s_last, labels)
    got = jo.softmax_cross_entropy(jnp.asarray(scores, jnp.float32), labels, reduction="none")
    np.testing.assert_allclose(got, want, rtol=1e-6)
    g = jax.grad(lambda s: jo.softmax_cross_entropy(s, labels, reduction="sum"))(
        jnp.asarray(scores, jnp.float32))
    g_optax = jax.grad(lambda s: optax.softmax_cross_entropy_with_integer_labels(
        jnp.moveaxis(s, 1, -1), labels).sum())(jnp.asarray(scores, jnp.float32))
    np.testing.assert_allclose(g, g_optax, rtol=1e-5, atol=1e-7)


def test_cross_entropy_matches_optax_and_numpy():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, size=(6, 5)).astype(np.float32)
    t = rng.dirichlet(np.ones(5), size=6).astype(np.float32)
    t[0] = (1, 0, 0, 0, 0)
    want = optax.softmax_cross_entropy(logits, t)
    np.testing.assert_allclose(jo.cross_entropy(logits, t, from_logits=True, reduction="none"),
                               want, rtol=1e-6)
    g = jax.grad(lambda z: jo.cross_entropy(z, t, from_logits=True))(logits)
    g_optax = jax.grad(lambda z: optax.softmax_cross_entropy(z, t).mean())(logits)
    np.testing.assert_allclose(g, g_optax, rtol=1e-5, atol=1e-7)
    p = np.asarray(jax.nn.softmax(logits), np.float64)
    want64 = -(t * np.log(p)).sum(-1)
    np.testing.assert_allclose(jo.cross_entropy(p.astype(np.float32), t, reduction="none"),
                               want64, rtol=1e-5)
    # classes on axis 0
    np.testing.assert_allclose(jo.cross_entropy(p.T.astype(np.float32), t.T, axis=0,
                                                reduction="none"), want64, rtol=1e-5)


# --------------------------------------------------------------------------------- edges

def test_fully_ignored_batch_has_mean_zero_and_zero_gradient():
    scores = jnp.asarray(_labelled((4, 3))[0], jnp.float32)
    labels = jnp.full((4,), 2)
    for op in (jo.softmax_cross_entropy,
               lambda s, t, **a: jo.nll_loss(jo.log_softmax(s, axis=1), t, **a)):
        loss = lambda s, op=op: op(s, labels, ignore_index=2)  # noqa: E731
        assert loss(scores) == 0.0
        g = jax.grad(loss)(scores)
        assert np.all(np.asarray(g) == 0.0)
        # ONNX's reference gives 0/0 = NaN here: the documented difference
    with np.errstate(invalid="ignore"):
        (want,) = onnx_run("SoftmaxCrossEntropyLoss", 13,
                           [np.asarray(scores), np.full(4, 2, np.int64)], ignore_index=2)
    assert np.isnan(want)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_huge_and_masked_scores_stay_finite(dtype):
    scores = jnp.array([[1e4, -1e4, 0.0], [0.0, -jnp.inf, 5.0], [-1e4, 1e4, 1e4]], dtype)
    labels = jnp.array([1, 2, 0])
    loss = jo.softmax_cross_entropy(scores, labels, reduction="none")
    big = float(jnp.asarray(1e4, dtype))  # 1e4 rounds to 9984 in float16
    np.testing.assert_allclose(np.asarray(loss, np.float64),
                               [2 * big, 0.0067153485, 2 * big + np.log(2)], rtol=1e-2)
    g = jax.grad(lambda s: jo.softmax_cross_entropy(s, labels, reduction="sum"))(scores)
    assert np.isfinite(np.asarray(g, np.float32)).all()
    assert float(g[1, 1]) == 0.0  # a masked class gets no gradient
    h = jax.hessian(lambda s: jo.softmax_cross_entropy(s, labels).astype(jnp.float32))(
        scores.astype(jnp.float32))
    assert np.isfinite(np.asarray(h)).all()


def test_cross_entropy_zero_target_times_log_zero():
    p = jnp.array([[0.0, 1.0], [0.5, 0.5]])
    t = jnp.array([[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(jo.cross_entropy(p, t, reduction="none"), [0.0, np.log(2)],
                               rtol=1e-7)
    g = jax.grad(lambda p: jo.cross_entropy(p, t, reduction="sum"))(p)
    np.testing.assert_allclose(g, [[0.0, -1.0], [-2.0, 0.0]])
    z = jnp.array([[-jnp.inf, 0.0, 1.0]])
    t = jnp.array([[0.0, 0.5, 0.5]])
    loss = jo.cross_entropy(z, t, from_logits=True)
    assert np.isfinite(float(loss))
    g = jax.grad(lambda z: jo.cross_entropy(z, t, from_logits=True))(z)
    assert np.isfinite(np.asarray(g)).all() and float(g[0, 0]) == 0.0
    # a positive target on p = 0 is infinitely wrong, as the math says
    assert jo.cross_entropy(jnp.array([[0.0, 1.0]]), jnp.array([[1.0, 0.0]])) == jnp.inf


def test_labels_may_be_int32_or_int64():
    scores, labels, w = _labelled((5, 3))
    s = jnp.asarray(scores, jnp.float32)
    want = jo.softmax_cross_entropy(s, labels.astype(np.int32))
    assert jo.softmax_cross_entropy(s, labels.astype(np.int64)) == want
    with jax.enable_x64(True):
        got = jo.softmax_cross_entropy(s, jnp.asarray(labels, jnp.int64))
        assert got == want and got.dtype == jnp.float32


def test_out_of_range_labels_raise_eagerly_and_give_nan_under_jit():
    s = jnp.zeros((3, 4))
    bad = jnp.array([0, 4, 1])
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 4\) or "
                                         r"ignore_index=None, got \[4\]"):
        jo.softmax_cross_entropy(s, bad)
    with pytest.raises(ValueError, match=r"got \[-1\]"):
        jo.nll_loss(s, jnp.array([0, -1, 1]), ignore_index=-100)
    loss = jax.jit(lambda s, t: jo.softmax_cross_entropy(s, t, reduction="none"))(s, bad)
    loss = np.asarray(loss)
    assert np.isnan(loss[1]) and np.isfinite(loss[[0, 2]]).all()
    assert np.isnan(jax.jit(jo.softmax_cross_entropy)(s, bad))
    jo.softmax_cross_entropy(s, jnp.array([0, -100, 1]), ignore_index=-100)  # fine


def test_bad_arguments_raise_with_clear_messages():
    s, t = jnp.zeros((3, 4)), jnp.array([0, 1, 2])
    with pytest.raises(TypeError, match=r"input 'labels' has dtype float32, but "
                       r"SoftmaxCrossEntropyLoss accepts Tind in \{int32, int64\}"):
        jo.softmax_cross_entropy(s, t.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"input 'labels' must have shape \(3,\) \('scores' "
                                         r"without its class axis 1\), got \(4,\)"):
        jo.softmax_cross_entropy(s, jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match=r"input 'weights' must have shape \(4,\), one weight "
                                         r"per class, got \(3,\)"):
        jo.softmax_cross_entropy(s, t, jnp.ones(3))
    with pytest.raises(ValueError, match=r"must have shape \(N, C, d1, \.\.\.\)"):
        jo.nll_loss(jnp.zeros(4), jnp.zeros((), jnp.int32))
    with pytest.raises(TypeError, match="input 'weight' has dtype float16, but an earlier input "
                                        "of type T is float32"):
        jo.nll_loss(s, t, jnp.ones(4, jnp.float16))
    with pytest.raises(ValueError, match="attribute 'reduction'"):
        jo.softmax_cross_entropy(s, t, reduction="avg")
    with pytest.raises(TypeError, match="attribute 'ignore_index' must be an int"):
        jo.softmax_cross_entropy(s, t, ignore_index=1.5)
    with pytest.raises(ValueError, match="input 'targets' must have the shape of 'inputs'"):
        jo.cross_entropy(s, jnp.zeros((3, 3)))
    with pytest.raises(ValueError, match="attribute 'axis'=2 is out of range"):
        jo.cross_entropy(s, s, axis=2)


def test_onnx_schema_records_the_optional_output():
    s = jo.schema.get("SoftmaxCrossEntropyLoss")
    ref = onnx.defs.get_schema("SoftmaxCrossEntropyLoss", 13)
    assert [o.name for o in ref.outputs] == [o.name for o in s.outputs]
    assert s.outputs[1].optional and not s.attribute("return_log_prob").onnx


# ---------------------------------------------- the class axis and label smoothing (issue 16)

def _pytorch_label_smoothing(scores, labels, weights, eps, ignore, reduction):
    """PyTorch's documented CrossEntropyLoss with class indices and label_smoothing, in
    float64: l_n = -sum_c w_c log p_{n,c} y_{n,c} with y = (1 - eps) onehot + eps / C, 0 where
    the label is ignore_index; "mean" divides by sum_n w_{y_n} over the kept entries."""
    x = np.asarray(scores, np.float64)
    c = x.shape[1]
    logp = x - x.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    w = np.ones(c) if weights is None else np.asarray(weights, np.float64)
    kept = np.ones(labels.shape, bool) if ignore is None else labels != ignore
    safe = np.where(kept, labels, 0)
    y = (1 - eps) * np.moveaxis(np.eye(c)[safe], -1, 1) + eps / c
    wb = w.reshape((1, c) + (1,) * (x.ndim - 2))
    loss = np.where(kept, -(wb * logp * y).sum(1), 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / np.where(kept, w[safe], 0.0).sum()


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("ignore,weighted", [(None, False), (2, False), (None, True), (2, True)])
@pytest.mark.parametrize("eps", [0.1, 0.5, 1.0])
def test_label_smoothing_is_pytorch_documented_formula(eps, ignore, weighted, reduction):
    scores, labels, weights = _labelled((5, 4, 3), seed=3, ignore=ignore)
    w = weights if weighted else None
    want = _pytorch_label_smoothing(scores, labels, w, eps, ignore, reduction)
    with jax.enable_x64(True):
        got = jo.softmax_cross_entropy(scores, labels, w, ignore_index=ignore,
                                       reduction=reduction, label_smoothing=eps)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)
    # and in float32 with the classes last: the same numbers
    got = jo.softmax_cross_entropy(jnp.asarray(np.moveaxis(scores, 1, -1), jnp.float32),
                                   jnp.asarray(labels), None if w is None else jnp.asarray(
                                       w, jnp.float32), ignore_index=ignore, axis=-1,
                                   reduction=reduction, label_smoothing=eps)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_label_smoothing_matches_optax_smooth_labels(eps):
    """Unweighted: optax.softmax_cross_entropy(logits, optax.smooth_labels(onehot, eps)), with
    (B, T, C) logits and (B, T) labels (axis=-1), values and gradients."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(0, 3, (2, 5, 7)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 7, (2, 5)))

    def ours(s):
        return jo.softmax_cross_entropy(s, labels, axis=-1, label_smoothing=eps)

    def theirs(s):
        target = optax.smooth_labels(jax.nn.one_hot(labels, 7), eps)
        return optax.softmax_cross_entropy(s, target).mean()

    np.testing.assert_allclose(ours(logits), theirs(logits), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(theirs)(logits), rtol=1e-5,
                               atol=1e-7)
    per = jo.softmax_cross_entropy(logits, labels, axis=-1, label_smoothing=eps,
                                   reduction="none")
    np.testing.assert_allclose(per, optax.softmax_cross_entropy(
        logits, optax.smooth_labels(jax.nn.one_hot(labels, 7), eps)), rtol=1e-6)


def test_class_axis_last_equals_axis_1_and_optax():
    rng = np.random.default_rng(1)
    s = jnp.asarray(rng.normal(size=(3, 4, 6)), jnp.float32)  # (B, T, C)
    t = jnp.asarray(rng.integers(0, 6, (3, 4)))
    last = jo.softmax_cross_entropy(s, t, axis=-1, reduction="none")
    np.testing.assert_allclose(last, optax.softmax_cross_entropy_with_integer_labels(s, t),
                               rtol=1e-6)
    np.testing.assert_array_equal(
        last, jo.softmax_cross_entropy(jnp.moveaxis(s, -1, 1), t, reduction="none"))
    lp = jax.nn.log_softmax(s)
    np.testing.assert_array_equal(jo.nll_loss(lp, t, axis=2),
                                  jo.nll_loss(jnp.moveaxis(lp, -1, 1), t))
    g_last = jax.grad(lambda s: jo.softmax_cross_entropy(s, t, axis=-1))(s)
    g_1 = jax.grad(lambda s: jo.softmax_cross_entropy(s, t))(jnp.moveaxis(s, -1, 1))
    np.testing.assert_allclose(g_last, jnp.moveaxis(g_1, 1, -1), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("impl", ["pallas_interpret", "pallas"])
def test_pallas_path_moves_the_class_axis_and_refuses_label_smoothing(impl):
    rng = np.random.default_rng(2)
    s = jnp.asarray(rng.normal(size=(3, 4, 6)), jnp.float32)
    t = jnp.asarray(rng.integers(0, 6, (3, 4))).at[0, 0].set(-100)
    if impl == "pallas_interpret":
        f = jax.value_and_grad(lambda s: jo.softmax_cross_entropy(
            s, t, ignore_index=-100, axis=-1, implementation=impl))
        g = jax.value_and_grad(lambda s: jo.softmax_cross_entropy(
            s, t, ignore_index=-100, axis=-1, implementation="xla"))
        for a, b in zip(jax.tree.leaves(f(s)), jax.tree.leaves(g(s)), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"implementation='[a-z_]+' does not support "
                                         r"label_smoothing != 0"):
        jo.softmax_cross_entropy(s, t, ignore_index=-100, axis=-1, label_smoothing=0.1,
                                 implementation=impl)


def test_class_axis_and_label_smoothing_errors():
    s, t = jnp.zeros((3, 4)), jnp.array([0, 1, 2])
    with pytest.raises(ValueError, match=r"jaxops.softmax_cross_entropy: input 'scores' must "
                                         r"have shape \(N, C, d1, \.\.\.\) .* or pass axis= "
                                         r".*got shape \(3, 4\), which has no axis 2"):
        jo.softmax_cross_entropy(s, t, axis=2)
    with pytest.raises(ValueError, match=r"input 'labels' must have shape \(4,\) \('scores' "
                                         r"without its class axis 0\), got \(3,\)"):
        jo.softmax_cross_entropy(s, t, axis=0)
    with pytest.raises(ValueError, match=r"attribute 'label_smoothing': must be in \[0, 1\] "
                                         r"\(PyTorch's label_smoothing\). Got 1.5"):
        jo.softmax_cross_entropy(s, t, label_smoothing=1.5)
    with pytest.raises(TypeError, match="attribute 'axis' must be an int"):
        jo.nll_loss(s, t, axis=1.0)
    # jaxops extensions of an ai.onnx schema: not ONNX attributes
    for name in ("axis", "label_smoothing"):
        assert not jo.schema.get("SoftmaxCrossEntropyLoss").attribute(name).onnx
    assert not jo.schema.get("NegativeLogLikelihoodLoss").attribute("axis").onnx
