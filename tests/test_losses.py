"""Losses under reduction "sum" and "mean" (the "none" form is in the transform matrix),
against float64 references derived from the same table entries, against optax where it has
the loss, and at their edges."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import CASES

import jaxops as jo

LOSSES = [c for c in CASES if c.attrs.get("reduction") == "none"]
DTYPES = ("float32", "bfloat16", "float64")
# the reduction sums n terms in float32 (float64 for float64): error grows like sqrt(n) eps,
# then one rounding to the output dtype
TOL = {"float32": 1e-5, "bfloat16": 1.6e-2, "float64": 1e-12}


def _ctx(dtype):
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("case", LOSSES, ids=str)
def test_reduced_loss_value_grad_jvp_hessian(case, reduction, dtype):
    with _ctx(dtype):
        raw = case.sample(np.random.default_rng(0), (6, 4))
        xs = tuple(jnp.asarray(r, dtype) for r in raw)
        xs64 = tuple(np.asarray(x, np.float64) for x in xs)
        n = xs64[0].size
        scale = 1.0 if reduction == "sum" else 1.0 / n
        attrs = {**case.attrs, "reduction": reduction}

        def f(*a):
            return case.op(*a, **attrs)

        tol = TOL[dtype]
        y = f(*xs)
        assert y.shape == () and y.dtype == jnp.dtype(dtype)
        np.testing.assert_allclose(float(y), scale * case.ref(*xs64).sum(), rtol=tol, atol=tol)
        grads = jax.grad(f, argnums=tuple(range(len(xs))))(*xs)
        for g, d in zip(grads, case.d1(*xs64), strict=True):
            np.testing.assert_allclose(np.asarray(g, np.float64), scale * d, rtol=tol, atol=tol)
        ts = tuple(jnp.ones_like(x) for x in xs)
        _, t_out = jax.jvp(f, xs, ts)
        want = scale * sum(d.sum() for d in case.d1(*xs64))
        np.testing.assert_allclose(float(t_out), want, rtol=tol, atol=tol * n)
        h = jax.hessian(f)(*xs)  # w.r.t. the first input: diagonal
        np.testing.assert_allclose(np.diagonal(np.asarray(h, np.float64).reshape(n, n)),
                                   scale * case.d2(*xs64)[0][0].ravel(), rtol=tol, atol=tol)


def _rand(shape, lo=-3, hi=3, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(lo, hi, shape), jnp.float32)


def test_against_optax():
    p, t = _rand((5, 4)), _rand((5, 4), seed=1)
    np.testing.assert_allclose(jo.mse(p, t, reduction="none"), optax.squared_error(p, t),
                               rtol=1e-6)
    labels = jnp.sign(_rand((5, 4), seed=2))
    np.testing.assert_allclose(jo.hinge(p, labels, reduction="none"),
                               optax.hinge_loss(p, labels), rtol=1e-6)
    probs = jax.nn.sigmoid(t)
    np.testing.assert_allclose(jo.binary_cross_entropy(p, probs, reduction="none"),
                               optax.sigmoid_binary_cross_entropy(p, probs), rtol=1e-6)
    np.testing.assert_allclose(
        jax.grad(lambda p: jo.binary_cross_entropy(p, probs))(p),
        jax.grad(lambda p: optax.sigmoid_binary_cross_entropy(p, probs).mean())(p), rtol=1e-5)
    log_p = jax.nn.log_softmax(p)
    q = jax.nn.softmax(t)
    # optax sums over the last axis per example: reduction="sum" on each row
    per_row = jax.vmap(lambda a, b: jo.kl_divergence(a, b, reduction="sum"))(log_p, q)
    np.testing.assert_allclose(per_row, optax.kl_divergence(log_p, q), rtol=1e-5)
    per_row = jax.vmap(lambda a, b: jo.kl_divergence(a, b, log_target=True, reduction="sum"))(
        log_p, jnp.log(q))
    want = optax.losses.kl_divergence_with_log_targets(log_p, jnp.log(q))
    np.testing.assert_allclose(per_row, want, rtol=1e-5)


@pytest.mark.parametrize("delta", [1.0, 0.3, 2.5])
def test_huber_against_optax_and_pytorch_formula(delta):
    p, t = _rand((5, 4)), _rand((5, 4), seed=1)
    p = p.at[0, :2].set(t[0, :2] + jnp.array([delta, -delta]))  # on the kinks
    np.testing.assert_allclose(jo.huber_loss(p, t, delta=delta, reduction="none"),
                               optax.huber_loss(p, t, delta=delta), rtol=1e-6, atol=1e-7)
    # torch.nn.HuberLoss(delta=delta) as documented: 0.5 d^2 if |d| < delta else
    # delta (|d| - 0.5 delta), reduced by the mean (PyTorch is not a test dependency)
    d = np.asarray(p, np.float64) - np.asarray(t, np.float64)
    torch = np.where(np.abs(d) < delta, 0.5 * d**2, delta * (np.abs(d) - 0.5 * delta))
    for reduction, want in (("mean", torch.mean()), ("sum", torch.sum())):
        np.testing.assert_allclose(jo.huber_loss(p, t, delta=delta, reduction=reduction),
                                   want, rtol=1e-6)
    # gradient: clip(d, -delta, delta), equal to optax's (whose min() ties give the same)
    np.testing.assert_allclose(
        jax.grad(lambda p: jo.huber_loss(p, t, delta=delta, reduction="sum"))(p),
        jax.grad(lambda p: optax.huber_loss(p, t, delta=delta).sum())(p), rtol=1e-6)
    np.testing.assert_allclose(
        jax.grad(lambda p: jo.huber_loss(p, t, delta=delta, reduction="sum"))(p),
        np.clip(d, -delta, delta), rtol=1e-6, atol=1e-6)


def test_huber_convention_at_the_kink():
    """Slope ±delta and curvature 1 at |d| = delta exactly (the quadratic piece); 0 beyond."""
    def f(p):
        return jo.huber_loss(p, jnp.float32(0.0), delta=0.5, reduction="sum")

    assert jax.grad(f)(jnp.float32(0.5)) == 0.5
    assert jax.grad(f)(jnp.float32(-0.5)) == -0.5
    assert jax.grad(jax.grad(f))(jnp.float32(0.5)) == 1.0
    assert jax.grad(jax.grad(f))(jnp.float32(0.75)) == 0.0


def test_edges():
    # BCE: no overflow and finite, exact gradients at |logit| = 1e4
    z = jnp.array([1e4, -1e4, 1e4, -1e4])
    t = jnp.array([1.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(jo.binary_cross_entropy(z, t, reduction="none"),
                               [0.0, 0.0, 1e4, 1e4])
    g = jax.grad(lambda z: jo.binary_cross_entropy(z, t, reduction="sum"))(z)
    np.testing.assert_array_equal(g, [0.0, 0.0, 1.0, -1.0])
    # KL: 0 log 0 = 0 with finite gradients, in both forms
    lp = jnp.log(jnp.array([0.5, 0.5]))
    q = jnp.array([1.0, 0.0])
    assert jo.kl_divergence(lp, q, reduction="sum") == pytest.approx(np.log(2))
    for form, target in ((False, q), (True, jnp.log(q))):
        g = jax.grad(lambda a, b, f=form: jo.kl_divergence(a, b, log_target=f), argnums=(0, 1))(
            lp, target)
        assert all(np.isfinite(np.asarray(x)).all() for x in g)
    # MAE: derivative 0 where prediction == target; MSLE: NaN below -1, no crash under jit
    assert jax.grad(lambda p: jo.mae(p, jnp.float32(1.0)))(jnp.float32(1.0)) == 0.0
    assert jnp.isnan(jax.jit(jo.msle)(jnp.array([-2.0]), jnp.array([0.0])))
    # hinge: zero derivative at the margin
    assert jax.grad(lambda s: jo.hinge(s, jnp.float32(1.0)))(jnp.float32(1.0)) == 0.0


@pytest.mark.parametrize("call,error,message", [
    (lambda: jo.hinge(jnp.ones(3), jnp.array([0.0, 1.0, 1.0])), ValueError,
     r"jaxops.hinge: labels must be -1 or \+1, got \[0.0\] \(for \{0, 1\} labels use "
     r"2 \* labels - 1"),
    (lambda: jo.mse(jnp.ones(3), jnp.ones(3), reduction="avg"), ValueError,
     r"jaxops.mse: attribute 'reduction': must be one of \('none', 'sum', 'mean'\). Got 'avg'"),
    (lambda: jo.mae(jnp.ones(3), jnp.ones(4)), ValueError,
     r"jaxops.mae: input 'targets' must have the shape of 'predictions' \(3,\), got \(4,\)"),
    (lambda: jo.binary_cross_entropy(jnp.ones(3), jnp.ones(3, jnp.int32)), TypeError,
     r"jaxops.binary_cross_entropy: input 'targets' has dtype int32"),
    (lambda: jo.huber_loss(jnp.ones(3), jnp.ones(3), delta=0.0), ValueError,
     r"jaxops.huber_loss: attribute 'delta': must be > 0 .* Got 0.0"),
    (lambda: jo.kl_divergence(jnp.ones(3), jnp.ones(3), log_target=1), TypeError,
     r"attribute 'log_target' must be a bool, got 1"),
])
def test_loss_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_hinge_label_check_never_crashes_a_jitted_program():
    out = jax.jit(jo.hinge)(jnp.ones(3), jnp.array([0.0, 1.0, 1.0]))
    assert np.isfinite(out)
