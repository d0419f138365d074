"""Kinks, extreme inputs and bad inputs: the edges of every op, asserted exactly."""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import CASES

import jaxops as jo

DTYPES = ("float32", "bfloat16", "float16", "float64")
FORWARD = [  # single-input elementwise forward ops (the others have their own edge tests)
    c for c in CASES if c.d1 is not None and not c.name.endswith("_gradient")
    and len(c.sample(np.random.default_rng(0), (4,))) == 1
]


def _grad(f):
    return jax.vmap(jax.grad(f))


# --------------------------------------------------------------------------------- kinks

def test_kinks_exact():
    z = jnp.zeros(())
    assert _grad(jo.relu)(z[None])[0] == 0.0
    assert jax.grad(jo.relu_n)(0.0) == 0.0
    assert jax.grad(jo.relu_n)(6.0) == 0.0
    assert jax.grad(lambda x: jo.relu_n(x, n=2.0))(2.0) == 0.0
    assert jax.grad(lambda x: jo.relu_n(x, n=2.0))(7.0) == 0.0
    assert jax.grad(jo.leaky_relu)(0.0) == 1.0
    assert jax.grad(lambda x: jo.leaky_relu(x, alpha=-0.5))(0.0) == 1.0
    assert jax.grad(jo.softsign)(0.0) == 1.0
    assert jax.grad(jax.grad(jo.softsign))(0.0) == 0.0
    assert jax.grad(jax.grad(jo.relu))(0.0) == 0.0
    assert jax.grad(jax.grad(jo.leaky_relu))(0.0) == 0.0


def test_kinks_in_forward_mode_match_reverse_mode():
    for f in (jo.relu, jo.relu_n, jo.leaky_relu, jo.softsign):
        for x in (0.0, 6.0):
            assert jax.jvp(f, (x,), (1.0,))[1] == jax.grad(f)(x), (f.__name__, x)


def test_leaky_relu_negative_and_zero_alpha_gradients():
    x = jnp.array([-3.0, -1e-3, 1e-3, 3.0])
    for alpha in (-0.5, -2.0, 0.0, 0.3):
        g = _grad(functools.partial(jo.leaky_relu, alpha=alpha))(x)
        np.testing.assert_array_equal(g, np.float32([alpha, alpha, 1.0, 1.0]))


def test_leaky_relu_sign_of_zero_and_underflow():
    # +0 -> 1 (Caffe2/ONNX); -0 and negatives whose alpha*x underflows to -0 -> alpha
    x = jnp.array([0.0, -0.0, -1e-37], jnp.float32)
    assert jo.leaky_relu(x, alpha=0.01)[2] == 0.0  # underflowed (XLA:CPU flushes to zero)
    np.testing.assert_array_equal(_grad(jo.leaky_relu)(x), np.float32([1.0, 0.01, 0.01]))


# ------------------------------------------------------------------------- extreme inputs

def _extremes(dtype):
    tiny = float(jnp.finfo(dtype).smallest_subnormal)
    raw = [0.0, -0.0, tiny, -tiny, 1e30, -1e30, np.inf, -np.inf, np.nan, 1.0, -1.0]
    with np.errstate(over="ignore"):
        x = jnp.asarray(np.array(raw), dtype)  # 1e30 is inf in float16
    return x, np.asarray(x, np.float64)


def _flush(x64, dtype):
    """x with subnormals (of dtype, and of float32 where half types are computed) as signed
    zeros: XLA:CPU runs with flush-to-zero and denormals-are-zero."""
    small = float(jnp.finfo(jnp.float32 if dtype != "float64" else dtype).tiny)
    small = max(small, float(jnp.finfo(dtype).tiny))
    return np.where(np.abs(x64) < small, np.copysign(0.0, x64), x64)


def _matches_with_or_without_flush(actual, ref_fn, x64, dtype, what, ulps=4.0):
    actual = np.asarray(actual, np.float64)
    with np.errstate(all="ignore"):
        # references rounded to dtype, as the op's output is
        exact = np.asarray(jnp.asarray(ref_fn(x64), dtype), np.float64)
        flushed = np.asarray(jnp.asarray(ref_fn(_flush(x64, dtype)), dtype), np.float64)
    tol = ulps * float(jnp.finfo(dtype).eps)

    def close(a, b):
        return np.isclose(a, b, rtol=tol, atol=0, equal_nan=True) | (a == b)

    # a subnormal output passed through unchanged (a select) is a zero under DAZ too
    ok = close(actual, exact) | close(actual, flushed) | close(_flush(actual, dtype), flushed)
    bad = ~ok
    assert ok.all(), f"{what}: x={x64[bad]} got={actual[bad]} exact={exact[bad]} ({flushed[bad]})"
    # no NaN where the math is finite
    assert not (np.isnan(actual) & ~np.isnan(exact) & ~np.isnan(flushed)).any(), what


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", FORWARD, ids=str)
def test_extreme_inputs(case, dtype):
    ctx = jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()
    with ctx:
        x, x64 = _extremes(dtype)
        _matches_with_or_without_flush(case(x), case.ref, x64, dtype, f"{case} value",
                                       case.ulps)
        d1 = _grad(case)(x)
        _matches_with_or_without_flush(d1, lambda v: case.d1(v)[0], x64, dtype, f"{case} d1",
                                       case.ulps)
        d2 = _grad(jax.grad(case))(x)
        _matches_with_or_without_flush(d2, lambda v: case.d2(v)[0][0], x64, dtype, f"{case} d2",
                                       case.ulps)


def test_nan_propagates_and_log_follows_ieee():
    nan = jnp.float32(jnp.nan)
    for f in (jo.relu, jo.relu_n, jo.leaky_relu, jo.softsign, jo.log):
        assert jnp.isnan(f(nan)), f.__name__
    np.testing.assert_array_equal(jo.log(jnp.array([0.0, -0.0, -1.0, np.inf])),
                                  [-np.inf, -np.inf, np.nan, np.inf])
    np.testing.assert_array_equal(_grad(jo.log)(jnp.array([0.0, -0.0, np.inf])),
                                  [np.inf, -np.inf, 0.0])
    np.testing.assert_array_equal(jo.softsign(jnp.array([np.inf, -np.inf])), [1.0, -1.0])


def test_log_of_negative_does_not_crash_a_jitted_program():
    out = jax.jit(lambda x: jo.log(x) + 1)(jnp.array([-1.0, 2.0]))
    assert jnp.isnan(out[0]) and out[1] == pytest.approx(1 + np.log(2.0))


# ---------------------------------------------------------------------------- bad inputs

BAD_INPUTS = [
    (lambda: jo.log(jnp.arange(3)), TypeError,
     r"jaxops.log: input 'input' has dtype int32, but Log accepts T in \{float16, bfloat16, "
     r"float32, float64\}. Cast it with x.astype\(jnp.float32\)."),
    (lambda: jo.relu(jnp.array([True, False])), TypeError,
     r"jaxops.relu: input 'X' has dtype bool, but Relu accepts T in"),
    # a Python int is a weak float (tests/test_odd_inputs.py); an int array is not
    (lambda: jo.relu(np.int32(3)), TypeError, r"jaxops.relu: input 'X' has dtype int32"),
    (lambda: jo.relu(True), TypeError, r"jaxops.relu: input 'X' is a Python bool"),
    (lambda: jo.softsign([1.0, 2.0]), TypeError,
     r"jaxops.softsign: input 'input' must be a JAX or NumPy array or a Python float, got "
     r"list. Wrap it with jnp.asarray"),
    (lambda: jo.relu_n(jnp.ones(2), n=0.0), ValueError,
     r"jaxops.relu_n: attribute 'n': must be > 0 .*use jaxops.relu for no upper bound.*Got 0.0"),
    (lambda: jo.relu_n(jnp.ones(2), n=-1), ValueError, r"attribute 'n': must be > 0"),
    (lambda: jo.relu_n(jnp.ones(2), n=float("nan")), ValueError, r"attribute 'n': must be > 0"),
    (lambda: jo.relu_n(jnp.ones(2), n="6"), TypeError,
     r"jaxops.relu_n: attribute 'n' must be a float, got '6' \(str\)"),
    (lambda: jo.leaky_relu(jnp.ones(2), alpha="a"), TypeError,
     r"jaxops.leaky_relu: attribute 'alpha' must be a float, got 'a' \(str\)"),
    (lambda: jo.leaky_relu(jnp.ones(2), alpha=True), TypeError, r"'alpha' must be a float"),
    (lambda: jo.leaky_relu(jnp.ones(2), alpha=float("inf")), ValueError,
     r"attribute 'alpha': must be finite"),
    (lambda: jax.jit(lambda a: jo.leaky_relu(jnp.ones(2), alpha=a))(0.1), TypeError,
     r"attribute 'alpha' must be a static Python float, got .*Tracer"),
    (lambda: jo.relu(jnp.ones(2), alpha=0.1), TypeError,
     r"jaxops.relu: got an unexpected keyword argument 'alpha'"),
    (lambda: jo.relu_n(jnp.ones(2), 6.0), TypeError, r"jaxops.relu_n: too many positional"),
    (lambda: jo.relu_gradient(jnp.ones(3), jnp.ones(4)), ValueError,
     r"jaxops.relu_gradient: input 'dY' must have the shape of 'Y' \(3,\), got \(4,\)"),
    (lambda: jo.log_gradient(jnp.ones(3), jnp.ones(3, jnp.bfloat16)), TypeError,
     r"input 'dY' has dtype bfloat16, but an earlier input of type T is float32; jaxops does "
     r"not promote silently"),
]


@pytest.mark.parametrize("call,error,message", BAD_INPUTS)
def test_bad_inputs_raise_helpful_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_errors_are_raised_at_trace_time():
    with pytest.raises(TypeError, match="jaxops.log: input 'input' has dtype int32"):
        jax.make_jaxpr(jo.log)(jnp.arange(3))
    with pytest.raises(TypeError, match="has dtype int32"):
        jax.eval_shape(jo.relu, jax.ShapeDtypeStruct((2,), jnp.int32))


# ------------------------------------------------------------- broadcasting, softmax edges

@pytest.mark.parametrize("slope_shape", [(), (3,), (1, 3), (4, 1), (4, 3)])
def test_prelu_broadcast_slope_and_its_summed_gradient(slope_shape):
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (4, 3))
    a = rng.uniform(-1, 1, slope_shape)
    w = rng.uniform(-1, 1, (4, 3))
    ab = np.broadcast_to(a, x.shape)
    want_y = np.where(x >= 0, x, ab * x)
    want_dx = w * np.where(x >= 0, 1.0, ab)
    # the slope's gradient sums over the dimensions broadcasting added or stretched
    g = (w * np.where(x < 0, x, 0.0)).sum(axis=tuple(range(x.ndim - len(slope_shape))))
    stretched = tuple(i for i, n in enumerate(slope_shape) if n == 1)
    want_da = g.sum(axis=stretched, keepdims=True).reshape(slope_shape)
    xj, aj, wj = (jnp.asarray(v, jnp.float32) for v in (x, a, w))
    np.testing.assert_allclose(jo.prelu(xj, aj), want_y, rtol=1e-6)
    dx, da = jax.grad(lambda x, a: jnp.sum(jo.prelu(x, a) * wj), argnums=(0, 1))(xj, aj)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-6)
    np.testing.assert_allclose(da, want_da, rtol=1e-5, atol=1e-6)
    # forward mode through the same registration, and second order
    t = jax.jvp(lambda a: jo.prelu(xj, a), (aj,), (jnp.ones_like(aj),))[1]
    np.testing.assert_allclose(t, np.where(x < 0, x, 0.0), rtol=1e-6)
    h = jax.hessian(lambda x, a: jnp.sum(jo.prelu(x, a) * wj), argnums=(0, 1))(xj, aj)
    np.testing.assert_array_equal(h[0][0], 0.0)  # piecewise linear in x
    np.testing.assert_array_equal(h[1][1], 0.0)  # linear in the slope


def test_prelu_rejects_a_slope_that_does_not_broadcast():
    with pytest.raises(ValueError, match=r"slope of shape \(4,\) must broadcast to X's shape "
                                         r"\(2, 3\).*one slope per channel of shape \(3,\)"):
        jo.prelu(jnp.ones((2, 3)), jnp.ones(4))


def test_clip_bounds_are_scalars_and_min_above_max_gives_max():
    x = jnp.linspace(-3, 3, 7)
    np.testing.assert_array_equal(jo.clip(x, 1.0, -1.0), -1.0)
    np.testing.assert_array_equal(jax.grad(lambda x: jo.clip(x, 1.0, -1.0).sum())(x), 0.0)
    np.testing.assert_array_equal(jo.clip(x), x)  # no bounds: identity
    np.testing.assert_array_equal(jax.grad(lambda x: jo.clip(x).sum())(x), 1.0)
    g = jax.grad(lambda x: jo.clip(x, -1.0, 1.0).sum())(jnp.array([-1.0, 1.0, 0.0]))
    np.testing.assert_array_equal(g, [0.0, 0.0, 1.0])  # 0 at both bounds
    # min/max are differentiable, as in jnp.clip / torch.clamp: each sums dy over the
    # entries clipped to it (x = -3..3: four at min = 0, counting x = 0; two at max = 2)
    assert jax.grad(lambda m: jo.clip(x, m, 2.0).sum())(0.0) == 4.0
    assert jax.grad(lambda m: jo.clip(x, 0.0, m).sum())(2.0) == 2.0
    t_y = jax.jvp(lambda m: jo.clip(x, m, 2.0), (0.0,), (1.0,))[1]
    assert t_y.tolist() == [1.0] * 4 + [0.0] * 3
    # min > max: every entry is max, so d/dmax = 7 and d/dmin = 0; min = max goes to max
    assert jax.grad(lambda lo, hi: jo.clip(x, lo, hi).sum(), (0, 1))(1.0, -1.0) == (0.0, 7.0)
    assert jax.grad(lambda lo, hi: jo.clip(x, lo, hi).sum(), (0, 1))(0.5, 0.5) == (0.0, 7.0)
    with pytest.raises(ValueError, match=r"jaxops.clip: input 'min' must be a scalar"):
        jo.clip(x, jnp.zeros(7), 1.0)
    with pytest.raises(TypeError, match=r"input 'max' has dtype float16, but an earlier input"):
        jo.clip(x, 0.0, jnp.float16(1))
    y = jo.clip(jnp.ones(3, jnp.bfloat16), 0, 0.5)  # Python scalars take x's dtype
    assert y.dtype == jnp.bfloat16


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("op", [jo.softmax, jo.log_softmax], ids=lambda f: f.__name__)
def test_softmax_large_masked_and_nan(op, dtype):
    inf = np.inf
    x = jnp.asarray([[1e4, 0.0, -1e4], [-inf, 2.0, -inf], [-inf, -inf, -inf],
                     [65000.0, 65000.0, 65000.0]], dtype)
    y = np.asarray(op(x), np.float64)
    w = jnp.asarray([[1.0, -1.0, 0.5]] * 4, dtype)
    g = np.asarray(jax.grad(lambda x: jnp.sum(jnp.where(jnp.isinf(op(x)), 0, op(x)) * w))(x),
                   np.float64)
    assert not np.isnan(y).any() and not np.isnan(g).any()
    assert np.isfinite(g).all()
    if op is jo.softmax:
        np.testing.assert_allclose(y, [[1, 0, 0], [0, 1, 0], [0, 0, 0], [1 / 3] * 3],
                                   rtol=1e-2, atol=0)
        np.testing.assert_array_equal(g[2], 0.0)  # fully masked row: zero gradient
        np.testing.assert_array_equal(g[1][[0, 2]], 0.0)  # -inf entries: zero gradient
    else:
        np.testing.assert_array_equal(y[2], -inf)
        np.testing.assert_array_equal(y[1], [-inf, 0.0, -inf])
        np.testing.assert_allclose(y[0], [0.0, -1e4, -2e4], rtol=1e-2)
    nan = jnp.asarray([[np.nan, 0.0]], dtype)
    assert np.isnan(np.asarray(op(nan), np.float64)).all()  # NaN propagates along its row


@pytest.mark.parametrize("axis", [0, 1, -3])
def test_softmax_axis_and_its_errors(axis):
    x = jnp.asarray(np.random.default_rng(0).uniform(-3, 3, (2, 3, 4)), jnp.float32)
    ref = jax.nn.softmax(x, axis=axis)
    np.testing.assert_allclose(jo.softmax(x, axis=axis), ref, rtol=1e-6)
    np.testing.assert_allclose(jo.log_softmax(x, axis=axis), jax.nn.log_softmax(x, axis=axis),
                               rtol=1e-5, atol=1e-6)
    w = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, x.shape), jnp.float32)
    for ours, theirs in ((jo.softmax, jax.nn.softmax), (jo.log_softmax, jax.nn.log_softmax)):
        g = jax.grad(lambda x, f=ours: jnp.sum(f(x, axis=axis) * w))(x)
        g_ref = jax.grad(lambda x, f=theirs: jnp.sum(f(x, axis=axis) * w))(x)
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"attribute 'axis'=3 is out of range for an input of "
                                         r"rank 3; use an axis in \[-3, 2\]"):
        jo.softmax(x, axis=3)
    with pytest.raises(TypeError, match=r"attribute 'axis' must be an int, got 1.0"):
        jo.log_softmax(x, axis=1.0)
