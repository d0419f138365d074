"""dropout: Flax's mask for the same key, the edges (rate 0 and 1, inference), the key forms,
the gradient op regenerating the mask, errors, and the ONNX policy (the transform matrix runs
on the reference table's rows)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxops as jo
from jaxops import onnx as jonnx
from jaxops.testing import CHECKS, opcheck

X = jnp.asarray(np.random.default_rng(0).uniform(-2, 2, (4, 5)), jnp.float32)


@pytest.mark.parametrize("key", [jax.random.key(7), jax.random.PRNGKey(7)], ids=["typed", "raw"])
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_mask_is_flax_bernoulli_draw(key, rate):
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, X.shape)
    want = jax.lax.select(mask, X / keep, jnp.zeros_like(X))  # flax.nnx.Dropout's formula
    np.testing.assert_array_equal(jo.dropout(X, key, rate=rate), want)
    np.testing.assert_array_equal(jo.dropout(X, key, rate=rate), jo.dropout(X, key, rate=rate))
    # the gradient op draws the same mask again: dX = dY * mask / keep
    g = jax.grad(lambda x: jnp.sum(jo.dropout(x, key, rate=rate) * 3.0))(X)
    np.testing.assert_array_equal(g, jnp.where(mask, 3.0 / jnp.float32(keep), 0.0))
    np.testing.assert_array_equal(jo.dropout_gradient(key, X, rate=rate), want)


def test_identity_zeros_and_edges():
    key = jax.random.key(0)
    np.testing.assert_array_equal(jo.dropout(X, key, training=False), X)
    np.testing.assert_array_equal(jo.dropout(X, key, rate=0.0), X)
    z = jo.dropout(X, key, rate=1.0)
    np.testing.assert_array_equal(z, jnp.zeros_like(X))
    for f in (jax.grad(lambda x: jo.dropout(x, key, rate=1.0).sum()),
              jax.jacfwd(lambda x: jo.dropout(x, key, rate=1.0).sum())):
        g = f(X)
        assert np.all(g == 0) and np.all(np.isfinite(g))  # no 0 * inf from 1 / (1 - rate)
    np.testing.assert_array_equal(jax.grad(lambda x: jo.dropout(x, key, training=False).sum())(
        X), jnp.ones_like(X))
    # a dropped inf or NaN is 0 (a select, as Flax's), the kept ones scaled
    inf = jnp.full((64,), jnp.inf)
    y = jo.dropout(inf, key, rate=0.5)
    assert set(np.unique(np.asarray(y)).tolist()) == {0.0, np.inf}
    # half precision: divided in float32, rounded once
    xb = X.astype(jnp.bfloat16)
    mask = jax.random.bernoulli(key, 0.7, X.shape)
    want = jnp.where(mask, xb.astype(jnp.float32) / 0.7, 0.0).astype(jnp.bfloat16)
    np.testing.assert_array_equal(jo.dropout(xb, key, rate=0.3), want)


def test_key_is_never_differentiated_and_vmaps():
    key = jax.random.PRNGKey(1)
    # a raw key is an integer array: grad refuses it as JAX does for any int input
    with pytest.raises(TypeError):
        jax.grad(lambda k: jo.dropout(X, k).sum())(key)
    keys = jax.random.split(jax.random.key(2), 4)
    per_row = jax.vmap(lambda x, k: jo.dropout(x, k, rate=0.5))(X, keys)
    for r in range(4):
        np.testing.assert_array_equal(per_row[r], jo.dropout(X[r], keys[r], rate=0.5))


@pytest.mark.parametrize("call,error,message", [
    (lambda: jo.dropout(X, jnp.zeros(2)), TypeError,
     r"jaxops.dropout: input 'key' has dtype float32, but KeyedDropout accepts K in \{key, uint32\}"
     r". Pass a PRNG key: jax.random.key\(seed\)"),
    (lambda: jo.dropout(X, jax.random.split(jax.random.key(0), 2)), ValueError,
     r"input 'key' must be one key \(shape \(\)\), got a key array of shape \(2,\)"),
    (lambda: jo.dropout(X, jnp.zeros(3, jnp.uint32)), ValueError,
     r"input 'key' is a raw uint32 key of shape \(3,\), but a raw key of the default PRNG "
     r"has shape \(2,\)"),
    (lambda: jo.dropout(X, jax.random.key(0), rate=1.5), ValueError,
     r"jaxops.dropout: attribute 'rate': must be in \[0, 1\] .* Got 1.5"),
    (lambda: jo.dropout(X, jax.random.key(0), rate=-0.1), ValueError, r"must be in \[0, 1\]"),
    (lambda: jo.dropout(X.astype(jnp.int32), jax.random.key(0)), TypeError,
     r"input 'X' has dtype int32"),
])
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_opcheck_in_training():
    """The battery on a training call (all but ONNX, which a training call has not)."""
    x = np.random.default_rng(1).uniform(-2, 2, (2, 3))
    key = np.asarray(jax.random.PRNGKey(3))
    for op, args in ((jo.dropout, (x, key)), (jo.dropout_gradient, (key, x))):
        report = opcheck(op, *args, rate=0.3, onnx=False)
        assert report.ok and set(report.passed) == set(CHECKS) - {"onnx"}, str(report)


def test_onnx_inference_is_the_identity_and_training_is_refused():
    import onnxruntime as ort

    key = jax.random.PRNGKey(0)
    model = jonnx.export(lambda x, k: jo.dropout(x, k, rate=0.4, training=False), X, key)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.asarray(a) for i, a in zip(session.get_inputs(), (X, key), strict=True)}
    np.testing.assert_array_equal(session.run(None, feeds)[0], X)
    np.testing.assert_array_equal(jonnx.import_model(model)(X, key), X)
    with pytest.raises(NotImplementedError, match=r"jaxops.dropout with training=True has no "
                                                  r"ONNX export: its mask is JAX's threefry"):
        jonnx.export(lambda x, k: jo.dropout(x, k, rate=0.4), X, key)


def test_nnx_model_train_and_eval():
    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.drop = __import__("jaxops.flax.nnx", fromlist=["Dropout"]).Dropout(
                0.5, rngs=rngs)

        def __call__(self, x):
            return self.drop(x)

    model = MLP(nnx.Rngs(dropout=0))
    model.eval()
    np.testing.assert_array_equal(model(X), X)
    model.train()
    assert not np.array_equal(model(X), X)
