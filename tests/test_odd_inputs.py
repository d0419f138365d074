"""Ops on odd inputs: empty arrays, ignore_index out of range, wrong dtypes (and the advice the
error gives), Python int scalars, and schema lookup by function name.

References for empty inputs are what jax.nn / jnp / optax give: an empty output of the
inferred shape, a sum of nothing is 0, a mean of nothing is NaN (``jnp.mean``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxops as jo

EMPTY = [(0,), (3, 0), (0, 3)]
F32 = jnp.float32


def _z(shape, dtype=F32):
    return jnp.zeros(shape, dtype)


def _same(got, want):
    """Same structure, shapes and dtypes; equal values, NaN where the reference is NaN."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        w = jnp.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype, (g, w)
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def _mean(x):
    return jnp.mean(x) if x.size else jnp.full((), jnp.nan, x.dtype)


def _reduce(per, reduction):
    return {"none": per, "sum": jnp.sum(per), "mean": jnp.mean(per)}[reduction]


# ------------------------------------------------------------------ empty arrays: the cases

# every elementwise op of one input (an op added to a family module is here with no edit):
# on an empty array, what jax gives is an empty array of the input's shape and dtype
UNARY = {s.function: lambda x: x for s in jo.schema.builtin_forward_schemas()
         if len(s.inputs) == 1 and s.elementwise}
LOSSES = {
    "mse": lambda p, t: optax.squared_error(p, t),
    "mae": lambda p, t: jnp.abs(p - t),
    "msle": lambda p, t: (jnp.log1p(p) - jnp.log1p(t)) ** 2,
    "hinge": lambda s, y: optax.hinge_loss(s, y),
    "kl_divergence": lambda lp, t: jnp.where(t == 0, 0.0, t * (jnp.log(t) - lp)),
    "binary_cross_entropy": optax.sigmoid_binary_cross_entropy,
}


def _empty_cases():
    cases = []
    for s in EMPTY:
        x = _z(s)
        for name, ref in UNARY.items():
            cases.append((f"{name}{s}", lambda n=name, x=x: getattr(jo, n)(x),
                          lambda r=ref, x=x: r(x)))
            gradient = jo.schema.get(name).gradient
            if gradient is not None:
                cases.append((f"{name}_gradient{s}", lambda g=gradient, x=x: getattr(
                    jo, jo.schema.get(g).function)(x, x), lambda x=x: x))
        for axis in (-1, 0):
            cases += [
                (f"softmax{s}axis{axis}", lambda x=x, a=axis: jo.softmax(x, axis=a),
                 lambda x=x, a=axis: jax.nn.softmax(x, axis=a)),
                (f"log_softmax{s}axis{axis}", lambda x=x, a=axis: jo.log_softmax(x, axis=a),
                 lambda x=x, a=axis: jax.nn.log_softmax(x, axis=a)),
                (f"softmax_gradient{s}axis{axis}",
                 lambda x=x, a=axis: jo.softmax_gradient(x, x, axis=a), lambda x=x: x),
                (f"log_softmax_gradient{s}axis{axis}",
                 lambda x=x, a=axis: jo.log_softmax_gradient(x, x, axis=a), lambda x=x: x),
            ]
        cases += [
            (f"clip{s}", lambda x=x: jo.clip(x, 0.0, 1.0), lambda x=x: jnp.clip(x, 0.0, 1.0)),
            (f"clip_gradient{s}", lambda x=x: jo.clip_gradient(x, x, 0.0, 1.0), lambda x=x: x),
            (f"prelu{s}", lambda x=x, s=s: jo.prelu(x, _z(s[-1:])), lambda x=x: x),
            (f"prelu_gradient{s}", lambda x=x, s=s: jo.prelu_gradient(x, _z(s[-1:]), x),
             lambda x=x, s=s: (x, _z(s[-1:]))),
        ]
        for reduction in ("none", "sum", "mean"):
            for name, ref in LOSSES.items():
                t = jnp.ones(s) if name == "hinge" else x
                cases.append((f"{name}{s}{reduction}",
                              lambda n=name, x=x, t=t, r=reduction: getattr(jo, n)(
                                  x, t, reduction=r),
                              lambda f=ref, x=x, t=t, r=reduction: _reduce(f(x, t), r)))
            d = x if reduction == "none" else jnp.float32(1.0)
            cases.append((f"binary_cross_entropy_gradient{s}{reduction}",
                           lambda x=x, d=d, r=reduction: jo.binary_cross_entropy_gradient(
                               x, x, d, reduction=r), lambda x=x: x))
            for axis in (-1, 0):
                per = optax.softmax_cross_entropy(jnp.moveaxis(x, axis, -1),
                                                  jnp.moveaxis(x, axis, -1))
                d = per if reduction == "none" else jnp.float32(1.0)
                cases += [
                    (f"cross_entropy{s}{reduction}axis{axis}",
                     lambda x=x, a=axis, r=reduction: jo.cross_entropy(
                         x, x, from_logits=True, axis=a, reduction=r),
                     lambda p=per, r=reduction: jnp.abs(_reduce(p, r))),
                    (f"cross_entropy_probs{s}{reduction}axis{axis}",
                     lambda x=x, a=axis, r=reduction: jo.cross_entropy(
                         x, x, axis=a, reduction=r),
                     lambda p=per, r=reduction: jnp.abs(_reduce(p, r))),
                    (f"cross_entropy_gradient{s}{reduction}axis{axis}",
                     lambda x=x, a=axis, r=reduction, d=d: jo.cross_entropy_gradient(
                         x, x, d, from_logits=True, axis=a, reduction=r), lambda x=x: x),
                ]
    return cases


EMPTY_CASES = _empty_cases()


@pytest.mark.parametrize("op, ref", [c[1:] for c in EMPTY_CASES],
                         ids=[c[0] for c in EMPTY_CASES])
def test_empty_inputs_give_what_jax_gives(op, ref):
    got, want = op(), ref()
    # -0.0 and 0.0 are the same empty sum
    _same(jax.tree.map(lambda a: a + 0.0 if a.ndim == 0 else a, got),
          jax.tree.map(lambda a: a + 0.0 if jnp.ndim(a) == 0 else a, want))


GRAD_CASES = [
    ("softmax", lambda x: jo.softmax(x).sum()),
    ("log_softmax", lambda x: jo.log_softmax(x, axis=0).sum()),
    ("cross_entropy", lambda x: jo.cross_entropy(x, x, from_logits=True)),
    ("cross_entropy_probs", lambda x: jo.cross_entropy(x, x)),
    ("mse", lambda x: jo.mse(x, x, reduction="sum")),
    ("sigmoid", lambda x: jo.sigmoid(x).sum()),
]


@pytest.mark.parametrize("shape", EMPTY, ids=str)
@pytest.mark.parametrize("name, f", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_empty_inputs_differentiate(name, f, shape):
    x = _z(shape)
    _same(jax.grad(f)(x), x)
    _same(jax.jvp(f, (x,), (x,))[1] + 0.0, jax.jvp(lambda x: jnp.sum(x), (x,), (x,))[1])


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_labelled_losses_on_an_empty_batch(reduction):
    """N = 0: no entries and no weight; "mean" is the all-ignored rule (0), not 0/0."""
    scores, labels = _z((0, 3)), jnp.zeros(0, jnp.int32)
    want = _z(0) if reduction == "none" else jnp.float32(0.0)
    d = _z(0) if reduction == "none" else jnp.float32(1.0)
    for w in (None, jnp.ones(3)):
        _same(jo.softmax_cross_entropy(scores, labels, w, reduction=reduction), want)
        _same(jo.nll_loss(scores, labels, w, reduction=reduction), want)
        _same(jo.softmax_cross_entropy_gradient(scores, labels, w, d, reduction=reduction),
              scores)
        _same(jo.nll_loss_gradient(scores, labels, w, d, reduction=reduction), scores)
        _same(jax.grad(lambda s, w=w: jo.softmax_cross_entropy(
            s, labels, w, reduction=reduction).sum())(scores), scores)
    h, wm = _z((0, 4)), _z((4, 5))
    _same(jo.linear_cross_entropy(h, wm, labels, reduction=reduction), want)
    _same(jax.grad(lambda h: jo.linear_cross_entropy(h, wm, labels, reduction=reduction)
                   .sum(), )(h), h)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_labelled_losses_without_classes(reduction):
    """C = 0: every label is out of range unless ignored.  Ignored entries give 0 (and a
    zero gradient); any other label is the usual ValueError outside jit, NaN inside."""
    scores, ignored = _z((3, 0)), jnp.full(3, -100, jnp.int32)
    want = _z(3) if reduction == "none" else jnp.float32(0.0)
    d = _z(3) if reduction == "none" else jnp.float32(1.0)
    for w in (None, _z(0)):
        _same(jo.softmax_cross_entropy(scores, ignored, w, ignore_index=-100,
                                       reduction=reduction), want)
        _same(jo.nll_loss(scores, ignored, w, ignore_index=-100, reduction=reduction), want)
        for grad_op in (jo.softmax_cross_entropy_gradient, jo.nll_loss_gradient):
            _same(grad_op(scores, ignored, w, d, ignore_index=-100, reduction=reduction),
                  scores)
        _same(jax.grad(lambda s, w=w: jo.softmax_cross_entropy(
            s, ignored, w, ignore_index=-100, reduction=reduction).sum())(scores), scores)
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: 'scores' has no classes "
                                         r"\(axis 1 has size 0\), so every label must be "
                                         r"ignore_index; got labels \[0\]"):
        jo.softmax_cross_entropy(scores, jnp.zeros(3, jnp.int32), reduction=reduction)
    inside = jax.jit(lambda s, t: jo.nll_loss(s, t, reduction=reduction))(
        scores, jnp.zeros(3, jnp.int32))
    assert np.all(np.isnan(inside))
    h, wm = _z((3, 4)), _z((4, 0))
    _same(jo.linear_cross_entropy(h, wm, ignored, ignore_index=-100, reduction=reduction),
          want)
    _same(jax.grad(lambda h: jo.linear_cross_entropy(h, wm, ignored, ignore_index=-100,
                                                     reduction=reduction).sum())(h), h)


def test_linear_cross_entropy_with_no_hidden_units():
    """H = 0: the logits h @ w are all 0, so each loss is log V."""
    h, w, labels = _z((3, 0)), _z((0, 5)), jnp.array([0, 1, 4])
    _same(jo.linear_cross_entropy(h, w, labels, reduction="none"),
          jnp.full(3, jnp.log(5.0), F32))
    dh, dw = jax.grad(lambda h, w: jo.linear_cross_entropy(h, w, labels), (0, 1))(h, w)
    _same((dh, dw), (h, w))


# ---------------------------------------------------------------- no ZeroDivisionError

@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("from_logits", [False, True])
def test_cross_entropy_gradient_without_classes(from_logits, reduction):
    """(3, 0) over axis -1: three examples with no classes, each of loss 0 (an empty sum)."""
    x = _z((3, 0))
    d = _z(3) if reduction == "none" else jnp.float32(1.0)
    _same(jo.cross_entropy_gradient(x, x, d, from_logits=from_logits, reduction=reduction), x)
    _same(jo.cross_entropy(x, x, from_logits=from_logits, reduction=reduction) + 0.0,
          _z(3) if reduction == "none" else jnp.float32(0.0))
    _same(jax.grad(lambda x: jo.cross_entropy(x, x, from_logits=from_logits,
                                              reduction=reduction).sum())(x), x)


@pytest.mark.parametrize("training", [False, True])
def test_batch_norm_without_channels(training):
    x, v = _z((4, 0, 2)), _z(0)
    _same(jo.batch_norm(x, v, v, v, v, training=training), (x, v, v))
    _same(jo.batch_norm_gradient(x, v, v, v, x, training=training), (x, v, v, v, v))
    grads = jax.grad(lambda *a: jo.batch_norm(*a, training=training)[0].sum(),
                     tuple(range(5)))(x, v, v, v, v)
    _same(grads, (x, v, v, v, v))


def test_batch_norm_of_an_empty_batch():
    """N * spatial = 0: the batch mean and variance are means of nothing, NaN as in jnp.mean
    (and flax's BatchNorm); the running statistics become NaN, which is what a step check
    sees.  Inference mode only reads the running statistics."""
    for x in (_z((0, 3)), _z((2, 3, 0))):
        ones, zeros = jnp.ones(3), _z(3)
        y, m, v = jo.batch_norm(x, ones, zeros, zeros, ones, training=True)
        _same(y, x)
        assert np.all(np.isnan(m)) and np.all(np.isnan(v))
        _same(jo.batch_norm(x, ones, zeros, zeros, ones), (x, zeros, ones))
        dx, ds, db, dm, dv = jo.batch_norm_gradient(x, ones, zeros, ones, x, training=True)
        _same((dx, ds, db, dm, dv), (x, zeros, zeros, zeros, zeros))
        g = jax.grad(lambda x, o=ones, z=zeros: jo.batch_norm(x, o, z, z, o,
                                                              training=True)[0].sum())(x)
        _same(g, x)


# ------------------------------------------------------------------------ ignore_index

LABELLED = [
    ("softmax_cross_entropy", lambda ii: jo.softmax_cross_entropy(
        _z((2, 3)), jnp.zeros(2, jnp.int32), ignore_index=ii)),
    ("nll_loss", lambda ii: jo.nll_loss(_z((2, 3)), jnp.zeros(2, jnp.int32), ignore_index=ii)),
    ("linear_cross_entropy", lambda ii: jo.linear_cross_entropy(
        _z((2, 4)), _z((4, 3)), jnp.zeros(2, jnp.int32), ignore_index=ii)),
    ("softmax_cross_entropy_gradient", lambda ii: jo.softmax_cross_entropy_gradient(
        _z((2, 3)), jnp.zeros(2, jnp.int32), None, jnp.float32(1), ignore_index=ii)),
    ("nll_loss_gradient", lambda ii: jo.nll_loss_gradient(
        _z((2, 3)), jnp.zeros(2, jnp.int32), None, jnp.float32(1), ignore_index=ii)),
    ("linear_cross_entropy_gradient", lambda ii: jo.linear_cross_entropy_gradient(
        _z((2, 4)), _z((4, 3)), jnp.zeros(2, jnp.int32), None, jnp.float32(1),
        ignore_index=ii)),
]


@pytest.mark.parametrize("value", [2**40, -(2**31) - 1, 2**31])
@pytest.mark.parametrize("name, call", LABELLED, ids=[c[0] for c in LABELLED])
def test_ignore_index_outside_int32_is_a_value_error(name, call, value):
    with pytest.raises(ValueError, match=rf"jaxops.{name}: attribute 'ignore_index': must be "
                                         rf"an int32 label value, in \[-2147483648, 2147483647\]"
                                         rf".* Got {value}"):
        call(value)
    with pytest.raises(ValueError, match=rf"jaxops.{name}: attribute 'ignore_index'"):
        jax.jit(lambda: call(value))()
    call(2**31 - 1), call(-(2**31))  # the int32 extremes are fine


# --------------------------------------------------------------------------- dtype errors

def test_dtype_errors_name_the_dtype_given():
    with pytest.raises(TypeError, match=r"jaxops.relu: input 'X' has dtype int64, but Relu "
                                        r"accepts T in \{float16, bfloat16, float32, float64\}\. "
                                        r"Cast it with x.astype\(jnp.float32\)\."):
        jo.relu(np.arange(3, dtype=np.int64))
    with pytest.raises(TypeError, match=r"input 'X' has dtype uint8"):
        jo.sigmoid(np.arange(3, dtype=np.uint8))
    with pytest.raises(TypeError, match=r"jaxops.mse: input 'targets' has dtype int64"):
        jo.mse(jnp.zeros(3), np.zeros(3, np.int64))
    # canonicalization still happens for allowed dtypes: int64 labels, float64 scores
    jo.softmax_cross_entropy(np.zeros((2, 3)), np.zeros(2, np.int64))


def _label_advice(name="labels"):
    return (rf"Cast it to int32 with {name}.astype\(jnp.int32\), or use cross_entropy for "
            r"one-hot/probability targets\.")


LABEL_ADVICE = _label_advice()


@pytest.mark.parametrize("call, match", [
    (lambda: jo.softmax_cross_entropy(_z((2, 3)), _z(2)),
     r"softmax_cross_entropy: input 'labels' has dtype float32, but SoftmaxCrossEntropyLoss "
     r"accepts Tind in \{int32, int64\}\. " + LABEL_ADVICE),
    (lambda: jo.nll_loss(_z((2, 3)), np.zeros(2)),
     r"nll_loss: input 'target' has dtype float64, .*" + _label_advice("target")),
    (lambda: jo.softmax_cross_entropy_gradient(_z((2, 3)), _z(2), None, jnp.float32(1)),
     r"input 'labels' has dtype float32, .*" + LABEL_ADVICE),
    (lambda: jo.nll_loss_gradient(_z((2, 3)), _z(2), None, jnp.float32(1)),
     r"input 'target' has dtype float32, .*" + _label_advice("target")),
    (lambda: jo.linear_cross_entropy(_z((2, 4)), _z((4, 3)), _z(2)),
     r"linear_cross_entropy: input 'labels' has dtype float32, .*Cast it to int32 with "
     r"labels.astype\(jnp.int32\)\.$"),
    (lambda: jo.softmax_cross_entropy(_z((2, 3)), jnp.zeros(2, bool)),
     r"input 'labels' has dtype bool, .*Cast it to int32 with labels.astype\(jnp.int32\)"),
    (lambda: jo.softmax_cross_entropy(jnp.zeros((2, 3), jnp.int32), jnp.zeros(2, jnp.int32)),
     r"input 'scores' has dtype int32, .*Cast it with x.astype\(jnp.float32\)\.$"),
    (lambda: jo.log(jnp.zeros(2, jnp.complex64)),
     r"input 'input' has dtype complex64, .*Log accepts T in \{float16, bfloat16, float32, "
     r"float64\}\. Pass a real float array, e.g. jnp.real\(x\) or x.astype\(jnp.float32\)\.$"),
], ids=["sce", "nll", "sce_gradient", "nll_gradient", "lce", "bool_labels", "int_scores",
        "complex"])
def test_dtype_errors_give_advice_that_fits(call, match):
    with pytest.raises(TypeError, match=match):
        call()


# ------------------------------------------------------------------ Python int scalars

@pytest.mark.parametrize("name", sorted(UNARY))
def test_python_int_is_a_weak_float(name):
    op = getattr(jo, name)
    got, want = op(2), op(2.0)
    assert got.dtype == want.dtype == F32 and got.weak_type == want.weak_type
    assert float(got) == float(want)
    np.testing.assert_allclose(float(jo.sigmoid(0)), float(jax.nn.sigmoid(0.0)))
    # next to arrays it takes their dtype, as a Python float does
    x = jnp.array([-1.0, 0.5, 9.0], jnp.bfloat16)
    _same(jo.clip(x, 0, 6), jo.clip(x, 0.0, 6.0))
    _same(jo.clip_gradient(x, x, 0, 6), jo.clip_gradient(x, x, 0.0, 6.0))
    with jax.enable_x64(True):
        assert jo.tanh(1).dtype == jo.tanh(1.0).dtype == jnp.float64
    assert float(jax.grad(jo.sigmoid)(0.0)) == 0.25


@pytest.mark.parametrize("call, match", [
    (lambda: jo.sigmoid(True), r"jaxops.sigmoid: input 'X' is a Python bool"),
    (lambda: jo.clip(jnp.ones(2), False, 1.0), r"jaxops.clip: input 'min' is a Python bool"),
    (lambda: jo.relu(jnp.arange(3)), r"jaxops.relu: input 'X' has dtype int32"),
    (lambda: jo.relu(np.int32(3)), r"jaxops.relu: input 'X' has dtype int32"),
], ids=["bool", "bool_bound", "int_array", "numpy_int_scalar"])
def test_bools_and_integer_arrays_stay_refused(call, match):
    with pytest.raises(TypeError, match=match):
        call()


def test_python_int_beyond_the_float_range_is_a_value_error():
    with pytest.raises(ValueError, match=r"jaxops.exp: input 'input' is a Python int of 401 "
                                         r"digits, beyond the float range"):
        jo.exp(10**400)


# ---------------------------------------------------------------------- schema lookup

def test_schema_get_accepts_the_function_name():
    assert jo.schema.get("leaky_relu") is jo.schema.get("LeakyRelu") is jo.leaky_relu.schema
    assert jo.schema.get("relu_gradient").name == "ReluGradient"
    assert jo.schema.get("softmax_cross_entropy").name == "SoftmaxCrossEntropyLoss"
    for s in jo.schema.builtin_schemas():
        assert jo.schema.get(s.function) is jo.schema.get(s.name) is s


@pytest.mark.parametrize("name, suggestion", [
    ("LeakyReLU", r"'LeakyRelu'"), ("leaky_rel", r"'leaky_relu'"),
    ("Softmaxx", r"'Softmax'"), ("softmax_crossentropy", r"'softmax_cross_entropy'"),
])
def test_schema_get_suggests_the_closest_names(name, suggestion):
    with pytest.raises(KeyError, match=rf"no jaxops op {name!r}; did you mean .*{suggestion}"):
        jo.schema.get(name)
    with pytest.raises(KeyError, match=r"jaxops.schema.all_schemas\(\) lists every op"):
        jo.schema.get("zzz")
