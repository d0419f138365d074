"""The smooth activations against jax.nn (values and derivatives, with the documented
differences), their kink conventions, large inputs, bad attributes, and their ONNX export
where the opset lacks the op (Swish-24 at opset 22)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime as ort
import pytest

import jaxops as jo
import jaxops.onnx as jonnx
from jaxops import schema
from jaxops.schema import OpSchema, Parameter

X = jnp.asarray(np.random.default_rng(0).uniform(-6, 6, 64).astype(np.float32))

# (jaxops op, jax.nn's function with the same semantics)
SAME_AS_JAX_NN = {
    "gelu": (jo.gelu, partial(jax.nn.gelu, approximate=False)),  # jax.nn: tanh by default
    "silu": (jo.silu, jax.nn.silu),
    "softplus": (jo.softplus, jax.nn.softplus),
    "elu": (jo.elu, jax.nn.elu),
    "elu_alpha": (partial(jo.elu, alpha=0.5), partial(jax.nn.elu, alpha=0.5)),
    "selu": (jo.selu, jax.nn.selu),
    "celu": (partial(jo.celu, alpha=2.0), partial(jax.nn.celu, alpha=2.0)),
    "hard_sigmoid": (partial(jo.hard_sigmoid, alpha=1 / 6), jax.nn.hard_sigmoid),
    "hard_swish": (jo.hard_swish, jax.nn.hard_swish),
    "mish": (jo.mish, jax.nn.mish),
    "log_sigmoid": (jo.log_sigmoid, jax.nn.log_sigmoid),
    "glu": (jo.glu, jax.nn.glu),
    "glu_axis0": (partial(jo.glu, axis=0), partial(jax.nn.glu, axis=0)),
}


@pytest.mark.parametrize("name", SAME_AS_JAX_NN)
def test_values_and_gradients_match_jax_nn(name):
    op, ref = SAME_AS_JAX_NN[name]
    x = X.reshape(8, 8)
    np.testing.assert_allclose(op(x), ref(x), rtol=2e-6, atol=2e-7)
    w = jnp.asarray(np.random.default_rng(1).normal(size=np.shape(ref(x))), jnp.float32)
    g = jax.grad(lambda x: jnp.sum(op(x) * w))(x)
    np.testing.assert_allclose(g, jax.grad(lambda x: jnp.sum(ref(x) * w))(x), rtol=2e-6,
                               atol=2e-6)


def test_documented_differences_from_jax_nn():
    x = jnp.array([-2.0, -0.5, 0.5, 2.0])
    # gelu: jax.nn defaults to the tanh form, jaxops (ONNX, PyTorch) to the exact erf form
    assert not np.allclose(jo.gelu(x), jax.nn.gelu(x), rtol=1e-4)
    np.testing.assert_allclose(jo.gelu(x, approximate="tanh"), jax.nn.gelu(x), rtol=1e-6)
    # hard_sigmoid: ONNX's slope 0.2, jax.nn's 1/6
    np.testing.assert_allclose(jo.hard_sigmoid(x), jnp.clip(0.2 * x + 0.5, 0, 1))
    assert not np.allclose(jo.hard_sigmoid(x), jax.nn.hard_sigmoid(x))
    # selu: ONNX's float32 constants; in float64 jax.nn's differ by ~3e-8
    with jax.enable_x64(True):
        x64 = x.astype(jnp.float64)
        diff = np.max(np.abs(jo.selu(x64) - jax.nn.selu(x64)))
        assert 0 < diff < 1e-7
    # celu'': the x <= 0 side at 0 (1/alpha); jax.nn's maximum/minimum ties give 1/(4 alpha)
    d2 = jax.grad(jax.grad(partial(jo.celu, alpha=2.0)))
    assert float(d2(0.0)) == 0.5
    assert float(jax.grad(jax.grad(partial(jax.nn.celu, alpha=2.0)))(0.0)) == 0.125


def _d(f, order, x):
    for _ in range(order):
        f = jax.grad(f)
    return float(f(jnp.float32(x)))


@pytest.mark.parametrize("f, x, d1, d2", [
    (jo.elu, 0.0, 1.0, 1.0),
    (partial(jo.elu, alpha=0.5), 0.0, 0.5, 0.5),  # the x <= 0 side, as jax.nn and PyTorch
    (partial(jo.elu, alpha=0.5), -0.0, 0.5, 0.5),
    (jo.selu, 0.0, np.float32(1.67326319217681884765625 * 1.05070102214813232421875),
     np.float32(1.67326319217681884765625 * 1.05070102214813232421875)),
    (partial(jo.celu, alpha=2.0), 0.0, 1.0, 0.5),
    (partial(jo.celu, alpha=-1.5), 0.0, 1.0, np.float32(-1 / 1.5)),
    (jo.hard_sigmoid, -2.5, 0.0, 0.0),  # both corners: 0, as clip and jax.nn
    (jo.hard_sigmoid, 2.5, 0.0, 0.0),
    (partial(jo.hard_sigmoid, alpha=1 / 6), 3.0, 0.0, 0.0),
    (jo.hard_swish, -3.0, 0.0, 0.0),  # the outer pieces, as jax.nn (PyTorch: -1/2, 3/2)
    (jo.hard_swish, 3.0, 1.0, 0.0),
    (jo.hard_swish, 0.0, 0.5, 1 / 3),
    (jo.softplus, 0.0, 0.5, 0.25),
    (jo.mish, 0.0, 0.6, 0.64),
    (jo.gelu, 0.0, 0.5, 0.7978846),
])
def test_derivative_conventions_at_the_kinks(f, x, d1, d2):
    assert _d(f, 1, x) == pytest.approx(d1, rel=1e-6)
    assert _d(f, 2, x) == pytest.approx(d2, rel=1e-6, abs=1e-7)
    # forward mode agrees with reverse mode at the kink
    assert float(jax.jvp(f, (jnp.float32(x),), (jnp.float32(1),))[1]) == pytest.approx(
        d1, rel=1e-6)


ELEMENTWISE = [jo.gelu, partial(jo.gelu, approximate="tanh"), jo.silu,
               partial(jo.silu, alpha=2.0), jo.softplus, jo.elu, jo.selu, jo.celu,
               partial(jo.celu, alpha=0.5), jo.hard_sigmoid, jo.hard_swish, jo.mish,
               jo.log_sigmoid]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("f", ELEMENTWISE, ids=lambda f: getattr(f, "func", f).__name__)
def test_large_inputs_stay_finite(f, dtype):
    """softplus(1e4), mish(-1e4), gelu(-40), log_sigmoid(-1e4): finite values, first and
    second derivatives (float16 tops out at 65504: 1e4 fits)."""
    x = jnp.asarray([-1e4, -88.0, -40.0, 40.0, 88.0, 1e4], dtype)
    y = f(x)
    assert y.dtype == x.dtype
    for order in range(3):
        g = f
        for _ in range(order):
            g = jax.grad(lambda v, g=g: jnp.sum(g(v)).astype(jnp.float32))
        assert np.all(np.isfinite(np.asarray(g(x), np.float32))), (order, g(x))


def test_large_input_values():
    big = jnp.float32(1e4)
    assert float(jo.softplus(big)) == 1e4 and float(jax.grad(jo.softplus)(big)) == 1.0
    assert float(jo.softplus(-big)) == 0.0
    assert float(jo.log_sigmoid(-big)) == -1e4 and float(jax.grad(jo.log_sigmoid)(-big)) == 1
    assert float(jo.mish(-big)) == 0.0 and float(jax.grad(jo.mish)(big)) == 1.0
    assert float(jo.gelu(jnp.float32(-40.0))) == 0.0
    assert float(jax.grad(jo.gelu)(jnp.float32(-40.0))) == 0.0
    # the tanh form's tail keeps its relative accuracy (jax.nn's 1 + tanh cancels to 0)
    x = jnp.float32(-5.18951)
    assert float(jax.grad(partial(jo.gelu, approximate="tanh"))(x)) == pytest.approx(
        -4.395792717900302e-07, rel=1e-5)


def test_half_precision_is_computed_in_float32():
    x = jnp.linspace(-8, 8, 101, dtype=jnp.float32).astype(jnp.bfloat16)
    for f in ELEMENTWISE:
        want = f(x.astype(jnp.float32)).astype(jnp.bfloat16)
        np.testing.assert_array_equal(f(x), want)


@pytest.mark.parametrize("call, error, match", [
    (lambda: jo.glu(jnp.ones((2, 5))), ValueError,
     r"jaxops.glu: input 'X' has shape \(2, 5\), whose axis 1 .* odd size 5"),
    (lambda: jo.glu(jnp.ones((2, 4)), axis=2), ValueError,
     r"jaxops.glu: attribute 'axis'=2 is out of range for an input of rank 2"),
    (lambda: jo.glu_gradient(jnp.ones((2, 4)), jnp.ones((2, 4))), ValueError,
     r"jaxops.glu_gradient: input 'dY' must have the shape of Glu's output \(2, 2\)"),
    (lambda: jo.elu(jnp.ones(3), alpha=-1.0), ValueError,
     r"jaxops.elu: attribute 'alpha': must be finite and >= 0: EluGradient reads Y"),
    (lambda: jo.selu(jnp.ones(3), alpha=-1.0), ValueError, r"jaxops.selu: attribute 'alpha'"),
    (lambda: jo.celu(jnp.ones(3), alpha=0.0), ValueError,
     r"jaxops.celu: attribute 'alpha': must be finite and nonzero"),
    (lambda: jo.gelu(jnp.ones(3), approximate="exact"), ValueError,
     r"jaxops.gelu: attribute 'approximate': must be 'none' .* or 'tanh'"),
    (lambda: jo.gelu(jnp.ones(3), approximate=True), TypeError,
     r"jaxops.gelu: attribute 'approximate' must be a string"),
    (lambda: jo.mish(jnp.arange(3)), TypeError, r"jaxops.mish: input 'X' has dtype int32"),
])
def test_bad_inputs_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_inplace_only_where_the_gradient_op_reads_y():
    reads_y = {"Elu", "Selu", "Celu", "HardSigmoid"}
    for name in ("Gelu", "Swish", "Mish", "HardSwish", "Glu", "Softplus", "LogSigmoid",
                 *reads_y):
        s = schema.get(name)
        assert bool(s.allow_inplace) == (name in reads_y), name
        assert schema.get(s.gradient).inputs[0].name == ("Y" if name in reads_y else "X")
    x = jnp.linspace(-3, 3, 8)
    np.testing.assert_allclose(jo.elu.inplace(x + 0), jo.elu(x))


def _run_ort(model, *args):
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: np.asarray(a) for i, a in zip(session.get_inputs(), args,
                                                                    strict=True)})


@pytest.mark.parametrize("opset", [22, 24])
def test_silu_exports_as_swish_where_the_opset_has_it(opset):
    """Swish-24 at opset 24; before, silu's implementation in standard ops (its stable
    sigmoid a / (1 + exp(-|x|)): Abs, Neg, Exp, Add, Div, Where, Mul), inlined."""
    x = X.reshape(8, 8)
    model = jonnx.export(jo.silu, x, opset=opset)
    ops = {n.op_type for n in model.graph.node} - {"Identity", "Constant"}
    assert ops == ({"Swish"} if opset >= 24 else
                   {"Abs", "Neg", "Exp", "Add", "Div", "Where", "Mul", "GreaterOrEqual"})
    assert all(n.domain == "" for n in model.graph.node) and not model.functions
    np.testing.assert_allclose(_run_ort(model, x)[0], jo.silu(x), rtol=2e-6, atol=2e-6)
    # and its gradient, as the ai.jaxops SwishGradient node
    grad = jax.grad(lambda x: jnp.sum(jo.silu(x, alpha=1.5) * x))
    model = jonnx.export(grad, x, opset=opset)
    assert "SwishGradient" in {n.op_type for n in model.graph.node}
    np.testing.assert_allclose(_run_ort(model, x)[0], grad(x), rtol=2e-6, atol=2e-6)


def test_celu_before_opset_28_and_gelu_before_20_are_written_out():
    x = X.reshape(8, 8)
    for f, op_type in ((partial(jo.celu, alpha=2.0), "Celu"), (jo.gelu, "Gelu"),
                       (partial(jo.gelu, approximate="tanh"), "Gelu")):
        model = jonnx.export(f, x, opset=18)
        assert op_type not in {n.op_type for n in model.graph.node}
        np.testing.assert_allclose(_run_ort(model, x)[0], f(x), rtol=2e-6, atol=2e-6)


def test_export_without_a_translation_says_which_opset_to_use():
    s = schema.register(OpSchema(
        name="Erf", function="test_erf_inverse", since_version=13, doc="not Erf at all",
        inputs=(Parameter("input"),), outputs=(Parameter("output"),)))
    try:
        op = jo.defop(s)(lambda x: jax.lax.erf_inv(x))
        with pytest.raises(NotImplementedError,
                           match=r"Erf in opset 12 is version 9, but jaxops.test_erf_inverse "
                                 r"follows Erf-13, .*'erf_inv'.*export with opset >= 13"):
            jonnx.export(op, jnp.ones(3), opset=12)
    finally:
        schema.unregister("Erf")


@pytest.mark.parametrize("shape, axis", [((3, 0), -1), ((0, 4), -1), ((0, 4), 0)])
def test_glu_of_empty_inputs(shape, axis):
    x = jnp.zeros(shape)
    np.testing.assert_array_equal(jo.glu(x, axis=axis), jax.nn.glu(x, axis=axis))
    g = jax.grad(lambda x: jnp.sum(jo.glu(x, axis=axis)))(x)
    assert g.shape == shape
