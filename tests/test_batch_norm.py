"""batch_norm against the ONNX reference evaluator, its numerics and its errors (the transform
matrix is in test_transforms.py; the Flax modules in test_flax.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_cross_entropy import onnx_run

import jaxops as jo


def _inputs(shape, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    c = shape[1]
    return (rng.normal(1.0, 2.0, size=shape).astype(dtype),
            rng.uniform(0.5, 2, c).astype(dtype), rng.normal(size=c).astype(dtype),
            rng.normal(size=c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype))


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (2, 3, 4, 2)], ids=str)
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_onnx_reference(shape, training, dtype):
    xs = _inputs(shape, dtype=dtype)
    attrs = {"epsilon": 2.0**-10, "momentum": 0.75}  # exact in float32, as ONNX stores them
    with jax.enable_x64(dtype == np.float64):
        y, mean, var = jo.batch_norm(*xs, training=training, **attrs)
        want = onnx_run("BatchNormalization", 15, list(xs), 3 if training else 1,
                        training_mode=int(training), **attrs)
        tol = 2e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(y, want[0], rtol=tol, atol=tol)
        if training:
            np.testing.assert_allclose(mean, want[1], rtol=tol, atol=tol)
            np.testing.assert_allclose(var, want[2], rtol=tol, atol=tol)
        else:  # inference: the running statistics come back unchanged
            np.testing.assert_array_equal(mean, xs[3])
            np.testing.assert_array_equal(var, xs[4])


def test_no_cancellation_for_large_mean_small_std():
    rng = np.random.default_rng(0)
    x = (1e4 + 1e-2 * rng.normal(size=(256, 4, 2))).astype(np.float32)
    c = np.ones(4, np.float32), np.zeros(4, np.float32)
    y, mean, var = jo.batch_norm(x, *c, *c[::-1], momentum=0.0, training=True)
    x64 = x.astype(np.float64)
    want_var = x64.var(axis=(0, 2))
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2)), rtol=1e-7)
    # E[x^2] - E[x]^2 in float32 gets 0 or a negative number here; two-pass keeps the digits
    np.testing.assert_allclose(var, want_var, rtol=1e-5)
    naive = (x * x).mean(axis=(0, 2)) - x.mean(axis=(0, 2)) ** 2
    assert np.max(np.abs(naive - want_var) / want_var) > 0.5
    y64 = (x64 - x64.mean(axis=(0, 2))[None, :, None]) / np.sqrt(want_var + 1e-5)[None, :, None]
    # what remains is the float32 rounding of x itself (ulp(1e4) ~ 1e-3 against std 1e-2)
    assert np.max(np.abs(np.asarray(y, np.float64) - y64)) < 0.05


def test_mixed_precision_bf16_activations_f32_statistics():
    x, s, b, m, v = _inputs((16, 3, 4))
    xb = jnp.asarray(x, jnp.bfloat16)
    y, new_m, new_v = jo.batch_norm(xb, s, b, m, v, training=True)
    assert (y.dtype, new_m.dtype, new_v.dtype) == (jnp.bfloat16, jnp.float32, jnp.float32)
    y32, m32, v32 = jo.batch_norm(jnp.asarray(xb, jnp.float32), s, b, m, v, training=True)
    np.testing.assert_allclose(np.asarray(y, np.float32), y32, atol=2e-2)
    np.testing.assert_allclose(new_m, m32, rtol=1e-6)
    np.testing.assert_allclose(new_v, v32, rtol=1e-6)
    g = jax.grad(lambda x: jo.batch_norm(x, s, b, m, v, training=True)[0]
                 .astype(jnp.float32).sum())(xb)
    assert g.dtype == jnp.bfloat16


def test_constant_channel_and_single_sample_are_finite():
    x = jnp.full((4, 2), 3.0)
    y, _, var = jo.batch_norm(x, jnp.ones(2), jnp.full(2, 0.5), jnp.zeros(2), jnp.ones(2),
                              training=True)
    np.testing.assert_array_equal(y, 0.5)
    np.testing.assert_allclose(var, 0.9)
    g = jax.grad(lambda x: jo.batch_norm(x, jnp.ones(2), jnp.zeros(2), jnp.zeros(2),
                                         jnp.ones(2), training=True)[0][0, 0])(x)
    assert np.isfinite(np.asarray(g)).all()


def test_registered_gradient_in_training_mode_projects_out_mean_and_xhat():
    x, s, b, m, v = _inputs((6, 2, 3))
    dx = jax.grad(lambda x: jnp.sum(jo.batch_norm(x, s, b, m, v, training=True)[0] *
                                    np.arange(36.0).reshape(6, 2, 3)))(x)
    # dx is orthogonal to the constants and to xhat, per channel
    xhat = (x - x.mean(axis=(0, 2), keepdims=True)) / x.std(axis=(0, 2), keepdims=True)
    dx = np.asarray(dx, np.float64)
    # the sums cancel terms of total size ``size`` computed in float32: measured 2e-6 of it
    size = np.abs(dx * xhat).sum()
    np.testing.assert_allclose(dx.sum(axis=(0, 2)), 0, atol=1e-5 * size)
    np.testing.assert_allclose((dx * xhat).sum(axis=(0, 2)), 0, atol=1e-5 * size)


def test_bad_arguments_raise_with_clear_messages():
    x, s, b, m, v = _inputs((4, 3))
    with pytest.raises(ValueError, match=r"input 'scale' must have shape \(3,\) \(one value per "
                                         r"channel of 'X' \(4, 3\)\), got \(4,\)"):
        jo.batch_norm(x, np.ones(4, np.float32), b, m, v)
    with pytest.raises(ValueError, match=r"input 'X' must have shape \(N, C, d1, \.\.\.\)"):
        jo.batch_norm(x[0], s, b, m, v)
    with pytest.raises(ValueError, match=r"attribute 'momentum': must be in \[0, 1\]"):
        jo.batch_norm(x, s, b, m, v, momentum=1.5)
    with pytest.raises(ValueError, match="attribute 'epsilon': must be > 0"):
        jo.batch_norm(x, s, b, m, v, epsilon=0.0)
    with pytest.raises(TypeError, match="attribute 'training' must be a bool"):
        jo.batch_norm(x, s, b, m, v, training=1)
    with pytest.raises(TypeError, match="input 'B' has dtype float16, but an earlier input of "
                                        "type T1 is float32"):
        jo.batch_norm(x, s, b.astype(np.float16), m, v)
