"""jaxops.testing.opcheck: every built-in op passes it, and it catches broken ops.

The built-in sweep takes minutes (every op, several attribute sets, nine checks each), so
it is marked slow; the default run keeps one example per op family.  The broken ops are
made with the same mechanism as jaxops' own, in a test-only domain and never registered,
so that tests iterating over ``jaxops.schema.all_schemas()`` do not see them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from opcheck_examples import examples

import jaxops as jo
from jaxops import defop
from jaxops.schema import OpSchema, Parameter
from jaxops.testing import CHECKS, OpcheckReport, opcheck

EXAMPLES = {e.name: e for e in examples()}

# One example per op family (module of jaxops/ops), a gradient op, scalar inputs, omitted
# optional inputs: the default run.  The rest run under -m slow.
DEFAULT = {
    "softsign", "leaky_relu_gradient,alpha=-0.5", "log", "softmax", "mse,reduction=none",
    "clip[bounds]", "softmax_cross_entropy[mean,ignore=1,weighted]",
    "batch_norm[training=False]", "linear_cross_entropy[sum,ignore=None]",
    "nll_loss_gradient[mean,ignore=1,weighted]", "layer_norm",
}


def _params():
    for name in EXAMPLES:
        marks = [] if name in DEFAULT else [pytest.mark.slow]
        yield pytest.param(name, marks=marks, id=name)


def test_every_builtin_op_has_an_example():
    public = {s.function for s in jo.schema.builtin_schemas()}
    assert public <= {e.function for e in EXAMPLES.values()}
    assert DEFAULT <= set(EXAMPLES)


@pytest.mark.parametrize("name", list(_params()))
def test_builtin_op_passes_opcheck(name):
    e = EXAMPLES[name]
    report = opcheck(e.op, *e.inputs, **e.attrs)
    assert report.ok and set(report.passed) == set(CHECKS), str(report)


# ------------------------------------------------------------------ ops made to be broken

TEST_DOMAIN = "test.opcheck"  # never registered: all_schemas() does not list these


def _schema(name, n_inputs=1, infer_fn=None, differentiable=(True,)):
    inputs = tuple(Parameter(f"X{k}", differentiable=d)
                   for k, d in zip(range(n_inputs), differentiable, strict=True))
    return OpSchema(name=name, function=f"opcheck_{name.lower()}", doc="a test op",
                    domain=TEST_DOMAIN, inputs=inputs, outputs=(Parameter("Y"),),
                    infer_fn=infer_fn)


def _square(name, vjp, infer_fn=None, impl=None):
    """x**2 with the given registered gradient ``vjp(x, y, dy)``."""

    @defop(_schema(name, infer_fn=infer_fn))
    def op(x):
        return x * x if impl is None else impl(x)

    op.defgrad(vjp)
    return op


X = np.array([[-1.5, 0.5, 2.0], [0.75, -0.25, 1.25]])


def _failed(op, **kwargs) -> str:
    """The AssertionError's summary (the lines before the report)."""
    with pytest.raises(AssertionError) as info:
        opcheck(op, X, onnx=False, **kwargs)
    return str(info.value).split("\n\n")[0]


def test_a_correct_user_op_passes():
    square = _square("Square", lambda x, y, dy: 2 * x * dy)
    report = opcheck(square, X, onnx=False)
    assert isinstance(report, OpcheckReport) and report.ok
    assert report.not_applicable == {"onnx": "onnx=False"}
    assert set(report.passed) == set(CHECKS) - {"onnx"}
    assert report["gradient"].max_ratio < 1e-2  # FD agrees far inside the tolerance
    assert "passed" in str(report)


def test_a_user_op_without_an_onnx_body_fails_the_onnx_check_not_skips_it():
    square = _square("SquareForOnnx", lambda x, y, dy: 2 * x * dy)
    try:
        report = opcheck(square, X)
    except AssertionError as e:  # until user ops get derived ONNX bodies
        assert "- onnx: jaxops.onnx.export raised NotImplementedError" in str(e)
    else:
        assert report["onnx"].status == "passed"


def test_wrong_registered_gradient_is_caught_in_both_modes():
    summary = _failed(_square("BadGrad", lambda x, y, dy: 3 * x * dy))
    assert "- gradient: reverse mode (vjp) w.r.t. 'X0' vs finite differences" in summary
    assert "forward mode (jvp) of output 0 w.r.t. 'X0' vs finite differences" in summary
    # the second-derivative check differentiates the registered gradient (3 x dy) and
    # compares with differences of that same gradient: consistent, so it passes
    assert "1 of 9 checks failed" in summary


def test_wrong_second_derivative_is_caught():
    # first derivative right, but stop_gradient hides its own derivative: d2 = 0, not 2 dy
    op = _square("BadSecond", lambda x, y, dy: 2 * jax.lax.stop_gradient(x) * dy)
    summary = _failed(op)
    assert "1 of 9 checks failed" in summary
    assert "- second_derivatives: d2/dX0 dX0 (jvp of grad) vs finite differences" in summary
    assert "jax.hessian w.r.t. 'X0'" in summary and "(vjp of grad)" in summary


def test_wrong_infer_fn_is_caught():
    def infer(schema, avals):
        return (jax.ShapeDtypeStruct(avals[0].shape[:1], avals[0].dtype),)

    summary = _failed(_square("BadInfer", lambda x, y, dy: 2 * x * dy, infer_fn=infer))
    assert "- schema: schema.infer gives [((2,), 'float32')], jax.eval_shape gives " \
           "[((2, 3), 'float32')]" in summary
    assert "- dtypes: float16 inputs: outputs [((2, 3), 'float16')], schema.infer says " \
           "[((2,), 'float16')]" in summary


def test_output_dtype_other_than_the_input_dtype_is_caught():
    op = _square("BadDtype", lambda x, y, dy: 2 * x * dy,
                 impl=lambda x: (x * x).astype(jnp.float32))
    summary = _failed(op)
    assert "- dtypes: float16 inputs: outputs [((2, 3), 'float32')], schema.infer says " \
           "[((2, 3), 'float16')]" in summary
    assert "bfloat16 inputs" in summary and "float64" not in summary.split("- dtypes")[0]


def test_op_that_cannot_be_vmapped_is_caught():
    def host_square(x):  # a host callback with no batching rule
        return jax.pure_callback(lambda a: np.asarray(a * a, a.dtype),
                                 jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    op = _square("Unbatchable", lambda x, y, dy: 2 * x * dy, impl=host_square)
    summary = _failed(op)
    assert "1 of 9 checks failed" in summary
    assert "- vmap: raised NotImplementedError: vmap is only supported" in summary


def test_nondifferentiable_input_without_a_registered_gradient_is_refused_too():
    """No registered gradient: JAX differentiates the implementation, but not in X1, which
    the schema marks non-differentiable (the mechanism refuses it, as opcheck checks); this
    was a silent derivative of the gradient ops' weights before."""
    @defop(_schema("SilentZero", 2, differentiable=(True, False)))
    def op(x, scale):
        return x * scale

    with pytest.raises(TypeError, match=r"input 'X1' is not differentiable"):
        jax.jvp(lambda s: op(X, s), (X + 3,), (X,))
    np.testing.assert_allclose(jax.grad(lambda x: op(x, X + 3).sum())(X), X + 3)
    report = opcheck(op, X, X + 3, onnx=False)
    assert report.ok and "alone" in report.passed


def test_failures_are_collected_not_stopped_at_the_first():
    def infer(schema, avals):
        return (jax.ShapeDtypeStruct((), avals[0].dtype),)

    summary = _failed(_square("BadTwice", lambda x, y, dy: -x * dy, infer_fn=infer))
    assert "3 of 9 checks failed" in summary
    for check in ("schema", "dtypes", "gradient"):
        assert f"- {check}:" in summary
    assert "jvp_vjp" not in summary and "- vmap" not in summary


def test_nondifferentiable_input_refused_by_a_registered_gradient_passes():
    @defop(_schema("Scaled", 2, differentiable=(True, False)))
    def op(x, scale):
        return x * scale

    op.defgrad(lambda x, scale, y, dy: dy * scale)
    report = opcheck(op, X, X + 3, onnx=False)
    assert "non-differentiable 'X1' refused" in report["alone"].detail


def test_opcheck_refuses_what_is_not_a_jaxops_op():
    with pytest.raises(TypeError, match="opcheck checks jaxops ops, which carry an op.schema"):
        opcheck(jnp.sin, X)
    with pytest.raises(TypeError, match="3 example inputs, but Softsign takes 1"):
        opcheck(jo.softsign, X, X, X)


def test_a_gradient_op_without_an_example_gets_one_from_its_forward_op():
    import opcheck_examples

    (relu,) = [e for e in EXAMPLES.values() if e.function == "relu"][:1]
    (derived,) = opcheck_examples._gradient_ops_of((relu,), np.random.default_rng(0))
    assert derived.function == "relu_gradient"
    y, dy = derived.inputs
    x = relu.inputs[0]
    np.testing.assert_array_equal(y[x > 0], x[x > 0])  # Y = relu(X), moved off its kink 0
    assert np.all(np.abs(y) >= opcheck_examples.MARGIN)
    assert dy.shape == y.shape
    assert opcheck(derived.op, *derived.inputs, **derived.attrs).ok
