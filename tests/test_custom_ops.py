"""Users' own ops: ``jaxops.defop(name=, domain=)`` with a schema read from the signature,
a registered gradient op, and everything a built-in op gets (checks, jit, vmap, both AD
modes, Flax).  The op is the issue's Squareplus (So & Le's squareplus, a softplus without
transcendentals): (x + sqrt(x^2 + b)) / 2, derivative (1 + x / sqrt(x^2 + b)) / 2."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops


@jaxops.defop(name="TestSquareplus", domain="test.ops")
def squareplus(x, *, b=4.0):
    """Squareplus: (x + sqrt(x^2 + b)) / 2."""
    return (x + jnp.sqrt(x * x + b)) / 2


@jaxops.defop(name="TestSquareplusGradient", domain="test.ops")
def squareplus_gradient(x, dy, *, b=4.0):
    return dy * (1 + x / jnp.sqrt(x * x + b)) / 2


@squareplus.defgrad
def _(x, y, dy, *, b):
    return squareplus_gradient(x, dy, b=b)


def _ref(x, b=4.0):
    x = np.asarray(x, np.float64)
    return (x + np.sqrt(x * x + b)) / 2, (1 + x / np.sqrt(x * x + b)) / 2


X = jnp.linspace(-3, 3, 7)


def test_schema_is_read_from_the_signature():
    s = jaxops.schema.get("TestSquareplus")
    assert s is squareplus.schema and s.domain == "test.ops" and s.since_version == 1
    assert [p.name for p in s.inputs] == ["x"] and [p.name for p in s.outputs] == ["Y"]
    (b,) = s.attributes
    assert (b.name, b.type, b.default) == ("b", "float", 4.0)
    assert s.doc.startswith("Squareplus")
    assert jaxops.schema.get("squareplus") is s  # the Python name works too
    assert isinstance(squareplus, jaxops.Op) and squareplus.name == "TestSquareplus"
    out = s.infer(jax.ShapeDtypeStruct((2, 3), jnp.bfloat16), b=1.0)
    assert out == (jax.ShapeDtypeStruct((2, 3), jnp.bfloat16),)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "float64"])
def test_values_and_derivatives_in_every_mode(dtype):
    ctx = jax.enable_x64(True) if dtype == "float64" else jax.enable_x64(False)
    with ctx:
        x = X.astype(dtype)
        y, dy = _ref(x)
        eps = float(jnp.finfo(dtype).eps)
        tol = dict(rtol=8 * eps, atol=8 * eps)
        np.testing.assert_allclose(np.asarray(squareplus(x), np.float64), y, **tol)
        assert squareplus(x).dtype == jnp.dtype(dtype)
        f = lambda x: squareplus(x, b=4.0).sum()  # noqa: E731
        for g in (jax.grad(f)(x), jax.jacfwd(f)(x), jax.jacrev(f)(x),
                  jax.jvp(lambda x: squareplus(x), (x,), (jnp.ones_like(x),))[1],
                  jax.linearize(squareplus, x)[1](jnp.ones_like(x))):
            np.testing.assert_allclose(np.asarray(g, np.float64), dy, **tol)
        xf = np.asarray(x, np.float64)
        d2 = 2.0 / (xf * xf + 4.0) ** 1.5
        h = jax.hessian(f)(x)
        np.testing.assert_allclose(np.diagonal(np.asarray(h, np.float64)), d2,
                                   rtol=32 * eps, atol=32 * eps)


def test_reverse_mode_runs_the_gradient_op_by_name():
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: squareplus(x).sum()))(X))
    assert "squareplus_gradient" in jaxpr


def test_jit_vmap_and_static_attributes():
    np.testing.assert_allclose(jax.jit(squareplus, static_argnames="b")(X, b=1.0),
                               _ref(X, 1.0)[0], rtol=1e-6)
    batched = jax.vmap(squareplus)(jnp.stack([X, -X]))
    np.testing.assert_allclose(batched, np.stack([_ref(X)[0], _ref(-X)[0]]), rtol=1e-6)
    g = jax.vmap(jax.grad(lambda x: squareplus(x).sum()))(jnp.stack([X, -X]))
    np.testing.assert_allclose(g, np.stack([_ref(X)[1], _ref(-X)[1]]), rtol=1e-6)


def test_bad_input_names_the_op():
    with pytest.raises(TypeError, match=r"jaxops.squareplus: input 'x' has dtype int32"):
        squareplus(jnp.arange(3))
    with pytest.raises(TypeError, match=r"jaxops.squareplus: attribute 'b' must be a float"):
        squareplus(X, b="4")
    with pytest.raises(TypeError, match=r"jaxops.squareplus: .*unexpected keyword"):
        squareplus(X, c=1.0)
    assert squareplus(0).dtype == jnp.float32  # a Python int, as jnp takes it


def test_defop_refuses_what_it_cannot_infer():
    with pytest.raises(TypeError, match=r"attribute 'k' needs a default"):
        jaxops.defop(name="TestBadAttr", domain="test.ops")(lambda x, *, k=[1]: x)
    with pytest.raises(ValueError, match=r"input 'y' has default 2"):
        jaxops.defop(name="TestBadInput", domain="test.ops")(lambda x, y=2: x)
    with pytest.raises(TypeError, match=r"name= and domain="):
        jaxops.defop(name="TestNoDomain")
    for domain in ("", "ai.jaxops"):
        with pytest.raises(ValueError, match=r"belongs to ONNX or to jaxops' own ops"):
            jaxops.defop(name="TestOnnxDomain", domain=domain)(lambda x: x)
    with pytest.raises(ValueError, match=r"already registered"):
        jaxops.defop(name="TestSquareplus", domain="test.ops")(lambda x: x)
    assert "TestBadAttr" not in {s.name for s in jaxops.schema.all_schemas()}


def test_two_outputs_and_an_optional_input():
    @jaxops.defop(name="TestScaleShift", domain="test.ops", outputs=("Y", "Scale"))
    def scale_shift(x, shift=None, *, scale=2.0):
        y = x * scale if shift is None else x * scale + shift
        return y, jnp.full((), scale, x.dtype)

    y, s = scale_shift(X)
    np.testing.assert_allclose(y, 2 * X)
    y, _ = scale_shift(X, jnp.ones_like(X), scale=3.0)
    np.testing.assert_allclose(y, 3 * X + 1)
    # no registered gradient: JAX differentiates the implementation
    g = jax.grad(lambda x: scale_shift(x)[0].sum())(X)
    np.testing.assert_allclose(g, 2.0)


def test_in_a_flax_module():
    nnx = pytest.importorskip("flax.nnx")

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(3, 2, rngs=rngs)

        def __call__(self, x):
            return squareplus(self.linear(x), b=1.0)

    model = Block(nnx.Rngs(0))
    x = jnp.ones((4, 3))
    y = model(x)
    np.testing.assert_allclose(y, _ref(model.linear(x), 1.0)[0], rtol=1e-6)
    grads = nnx.grad(lambda m: m(x).sum())(model)
    assert np.isfinite(grads.linear.kernel[...]).all()
