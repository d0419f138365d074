"""The operator mechanism: reverse mode runs the registered gradient op, forward mode is
its transpose, attributes are static and compile once, and allow_inplace is real."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import example_args, example_attrs, structured

import jaxops as jo
from benchmarks.harness import count_compiles  # one compile counter for tests and benchmarks
from jaxops import defop
from jaxops.schema import OpSchema, Parameter

OPS_WITH_GRADIENT = [
    s for s in jo.schema.builtin_schemas() if s.gradient is not None
    and s.name != "LinearCrossEntropyLoss"  # matrices, not one shape: tests/kernels_wip.py
]


def _jit_names(jaxpr) -> set[str]:
    """Names of every jit call in a jaxpr, recursively (custom_jvp bodies included)."""
    names = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("jit", "pjit"):
            names.add(eqn.params["name"])
        for v in eqn.params.values():
            for sub in v if isinstance(v, tuple) else (v,):
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(sub, "eqns"):
                    names |= _jit_names(sub)
    return names


@pytest.mark.parametrize("s", OPS_WITH_GRADIENT, ids=lambda s: s.name)
def test_reverse_mode_calls_registered_gradient_op(s):
    op = functools.partial(getattr(jo, s.function), **example_attrs(s))
    grad_fn = jo.schema.get(s.gradient).function
    args = example_args(s, (8, 3, 2) if structured(s) else (8,))
    first = lambda y: y[0] if isinstance(y, tuple) else y  # noqa: E731  (batch_norm's Y)
    fwd = jax.make_jaxpr(op)(*args).jaxpr
    rev = jax.make_jaxpr(jax.grad(lambda *a: first(op(*a)).sum()))(*args).jaxpr
    assert grad_fn not in _jit_names(fwd)
    assert grad_fn in _jit_names(rev), _jit_names(rev)


def _fake_op(scale):
    """An op whose registered gradient is deliberately not the derivative of its forward."""
    schema = OpSchema(
        name="Fake", function="fake", doc="y = x, gradient registered as scale * dy",
        inputs=(Parameter("X"),), outputs=(Parameter("Y"),),
    )

    @defop(schema)
    def fake(x):
        return x * 1

    @fake.defgrad
    def _(x, y, dy):
        return dy * scale

    return fake


def test_derivatives_come_from_registered_gradient_not_from_forward():
    fake = _fake_op(3.0)
    x = jnp.arange(4.0)
    np.testing.assert_array_equal(jax.grad(lambda x: fake(x).sum())(x), 3.0)
    np.testing.assert_array_equal(jax.jvp(fake, (x,), (jnp.ones(4),))[1], 3.0)
    np.testing.assert_array_equal(jax.jacfwd(fake)(x), 3.0 * np.eye(4))
    np.testing.assert_array_equal(jax.linearize(fake, x)[1](jnp.ones(4)), 3.0)


def test_attribute_change_recompiles_once_and_same_value_never():
    x = jnp.linspace(-3, 9, 7)
    jo.relu_n(x, n=6.0)  # warm
    with count_compiles() as c:
        jo.relu_n(x, n=6.0)
        jo.relu_n(x, n=6)  # int 6 is the same attribute value
        jo.relu_n(x)  # the default is 6.0 too
    assert len(c) == 0
    with count_compiles() as c:
        jo.relu_n(x, n=2.5)
        jo.relu_n(x, n=2.5)
    assert len(c) == 1
    np.testing.assert_array_equal(jo.relu_n(x, n=2.5), np.clip(np.asarray(x), 0, 2.5))


def test_attribute_change_under_jit_and_grad():
    x = jnp.linspace(-3, 3, 7)
    g = jax.jit(jax.grad(lambda x, a: jo.leaky_relu(x, alpha=a).sum()), static_argnums=1)
    g(x, 0.1)
    with count_compiles() as c:
        g(x, 0.1)
    assert len(c) == 0
    np.testing.assert_allclose(g(x, -0.5), np.where(np.asarray(x) >= 0, 1.0, -0.5))


INPLACE = [s for s in jo.schema.builtin_schemas() if s.allow_inplace]
NOT_INPLACE = [s for s in OPS_WITH_GRADIENT if not s.allow_inplace]


def _args(s, shape=(256, 256)):
    return example_args(s, shape)


@pytest.mark.parametrize("s", INPLACE, ids=lambda s: s.name)
def test_inplace_reuses_the_donated_buffer(s):
    op = getattr(jo, s.function)
    args = _args(s)
    (i, _), = s.allow_inplace
    compiled = jax.jit(op, donate_argnums=i).lower(*args).compile()
    stats = compiled.memory_analysis()
    assert stats.alias_size_in_bytes == args[i].nbytes
    # and op.inplace really hands the input's buffer to the output
    pointer = args[i].unsafe_buffer_pointer()
    out = op.inplace(*args)
    assert args[i].is_deleted()
    assert out.unsafe_buffer_pointer() == pointer


@pytest.mark.parametrize("s", NOT_INPLACE, ids=lambda s: s.name)
def test_ops_whose_gradient_reads_x_refuse_inplace(s):
    op = getattr(jo, s.function)
    with pytest.raises(ValueError, match=f"jaxops.{s.function} may not run in place"):
        op.inplace(*_args(s))
    gradient = jo.schema.get(s.gradient)
    assert gradient.inputs[0].name != "Y"  # the reason: its gradient op reads the input


def test_schema_inplace_flags_follow_the_gradient_inputs():
    for s in OPS_WITH_GRADIENT:
        reads_y = jo.schema.get(s.gradient).inputs[0].name == "Y"
        assert bool(s.allow_inplace) == reads_y, s.name


def test_leaky_relu_inplace_only_for_positive_alpha():
    x = jnp.full((8,), -2.0)
    np.testing.assert_allclose(jo.leaky_relu.inplace(x, alpha=0.5), -1.0)
    with pytest.raises(ValueError, match="alpha=-0.5 <= 0 its gradient reads X"):
        jo.leaky_relu.inplace(jnp.ones(8), alpha=-0.5)


def test_fast_and_full_call_paths_share_one_compilation():
    """A NumPy input takes the full path (checks before the jit), a JAX array the fast one;
    both reach the same jit cache entry, so the second spelling compiles nothing."""
    x = np.linspace(-3, 3, 7, dtype=np.float32)
    y = jnp.asarray(x)
    jo.relu_n(x, n=4.0)  # full path: compiles
    with count_compiles() as c:
        jo.relu_n(y, n=4.0)  # fast path
        jo.relu_n(y, n=4)
    assert len(c) == 0
