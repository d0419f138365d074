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
from jaxops.testing import opcheck


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
    with pytest.raises(TypeError, match=r"test\.ops\.squareplus: input 'x' has dtype int32"):
        squareplus(jnp.arange(3))
    with pytest.raises(TypeError, match=r"test\.ops\.squareplus: attribute 'b' must be a float"):
        squareplus(X, b="4")
    with pytest.raises(TypeError, match=r"test\.ops\.squareplus: .*unexpected keyword"):
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


# ---------------------------------------------------------------- reviewer's defects
@pytest.fixture
def user_op():
    """``user_op(name, fn, **defop_kwargs)``: a user op, unregistered after the test."""
    made = []

    def make(name, fn, **kwargs):
        op = jaxops.defop(name=name, domain=kwargs.pop("domain", "t.ops"), **kwargs)(fn)
        made.append(name)
        return op

    yield make
    for name in made:
        jaxops.schema.unregister(name)


def _half_up(x):
    x = x.astype(jnp.float32) if x.dtype in (jnp.float16, jnp.bfloat16) else x
    return jnp.tanh(x)


def test_an_output_dtype_other_than_the_schemas_is_refused(user_op):
    half_up = user_op("TestHalfUp", _half_up)
    assert half_up(X).dtype == jnp.float32  # T = float32: as declared
    with pytest.raises(TypeError, match=r"t\.ops\._half_up: output 'Y' has dtype float32, "
                                        r"but the schema declares it T, which is float16"):
        half_up(X.astype(jnp.float16))
    with pytest.raises(AssertionError, match=r"- dtypes: float16 inputs: TypeError: "
                                             r"t\.ops\._half_up: output 'Y' has dtype float32"):
        opcheck(half_up, X, onnx=False)


@pytest.mark.parametrize("attr", ["s", "in_avals", "self", "schema", "attrs", "domain",
                                  "name", "n_out", "inputs", "values", "dy"])
def test_an_attribute_may_take_any_name(user_op, attr):
    ns = {}
    exec(f"def scaled(x, *, {attr}=2.0):\n    return x * {attr}", ns)
    op = user_op(f"TestAttr_{attr}", ns["scaled"])
    np.testing.assert_allclose(op(X), 2 * X)
    np.testing.assert_allclose(op(X, **{attr: 3.0}), 3 * X)
    np.testing.assert_allclose(jax.jit(op)(X), 2 * X)
    assert op.schema.infer(jax.ShapeDtypeStruct((7,), jnp.float32), **{attr: 3.0})
    np.testing.assert_allclose(jax.grad(lambda x: op(x, **{attr: 3.0}).sum())(X), 3.0)


def test_an_attribute_named_implementation_is_refused_before_registering():
    with pytest.raises(ValueError, match=r"'implementation' is reserved.*rename"):
        jaxops.defop(name="TestImplAttr", domain="t.ops")(
            lambda x, *, implementation=1.0: x)
    assert "TestImplAttr" not in {s.name for s in jaxops.schema.all_schemas()}


def test_a_failing_defop_leaves_no_schema(monkeypatch):
    import jaxops._op as _op

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(_op.Op, "__init__", broken)
    with pytest.raises(RuntimeError, match="boom"):
        jaxops.defop(name="TestBroken", domain="t.ops")(lambda x: x)
    assert "TestBroken" not in {s.name for s in jaxops.schema.all_schemas()}


def test_errors_name_a_user_op_by_its_domain(user_op):
    def relu(x):
        return jnp.maximum(x, 0)

    op = user_op("TestMyRelu2", relu)
    with pytest.raises(TypeError, match=r"^t\.ops\.relu: input 'x' has dtype int32"):
        op(jnp.arange(3))
    with pytest.raises(TypeError, match=r"^jaxops\.relu: input 'X' has dtype int32"):
        jaxops.relu(jnp.arange(3))  # a built-in op keeps jaxops.<function>


def test_a_clash_names_the_holder_and_suggests_another_name():
    with pytest.raises(ValueError, match=r"'Relu' is already registered.*unique across "
                                         r"domains.*jaxops\.relu \(domain ai\.onnx\).*"
                                         r"another name"):
        jaxops.defop(name="Relu", domain="t.ops")(lambda x: x)


def test_a_required_attribute_prints_as_required(user_op):
    def scale(x, *, k: float):
        return x * k

    op = user_op("TestRequiredK", scale)
    text = str(op.schema)
    assert "k: float (required)" in text and "= None" not in text
    with pytest.raises(TypeError, match=r"missing a required argument: 'k'"):
        op(X)


def test_defgrad_checks_the_gradients_signature(user_op):
    def mul(x, w, *, beta=1.0):
        return x * w * beta

    op = user_op("TestMulSig", mul)
    with pytest.raises(TypeError, match=r"t\.ops\.mul.*defgrad.*beta"):
        op.defgrad(lambda x, w, y, dy: (dy * w, dy * x))
    with pytest.raises(TypeError, match=r"t\.ops\.mul.*defgrad.*4 positional"):
        op.defgrad(lambda x, y, dy, *, beta: dy)


def test_defgrad_checks_the_returned_cotangents(user_op):
    def mul(x, w, *, beta=1.0):
        return x * w * beta

    op = user_op("TestMulCount", mul)
    op.defgrad(lambda x, w, y, dy, *, beta: dy * w * beta)  # one cotangent for two inputs
    with pytest.raises(ValueError, match=r"t\.ops\.mul: the registered gradient returned 1 "
                                         r"cotangent, expected 2 \(for 'x', 'w'"):
        jax.grad(lambda x: op(x, X).sum())(X)

    op2 = user_op("TestMulShape", mul)
    op2.defgrad(lambda x, w, y, dy, *, beta: (dy.sum(), dy * x))
    with pytest.raises(ValueError, match=r"t\.ops\.mul: the registered gradient's cotangent "
                                         r"for 'x' has shape \(\) and dtype float32, expected "
                                         r"\(7,\) and float32"):
        jax.grad(lambda x: op2(x, X).sum())(X)
