"""Derivatives on the paths the transform matrix's tables do not spell out: the reported
closed-over-input cases against independent formulations (optax, jnp), the inputs that are
refused rather than given a silent zero derivative, and infinite primals under zero tangents.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxops as jo


def _lce_inputs():
    k1, k2 = jax.random.split(jax.random.key(0))
    h = jax.random.normal(k1, (64, 32))
    w = jax.random.normal(k2, (32, 128))
    return h, w, jnp.arange(64) % 128


def _lce_reference(h, w, labels):
    """The materializing formulation in float64 (optax's integer-label cross-entropy)."""
    with jax.enable_x64(True):
        logits = jnp.asarray(h, jnp.float64) @ jnp.asarray(w, jnp.float64)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()


@pytest.mark.parametrize("implementation", [None, "xla", "pallas_interpret"])
def test_linear_cross_entropy_jvp_with_w_closed_over(implementation):
    """The reported case: d/dh alone, w closed over (a symbolic zero tangent) returned
    uninitialized memory (1.5e23, NaN, changing from run to run) on the default path."""
    h, w, labels = _lce_inputs()

    def f(a):
        return jo.linear_cross_entropy(a, w, labels, reduction="sum",
                                       implementation=implementation)

    with jax.enable_x64(True):
        _, want = jax.jvp(lambda a: _lce_reference(a, w, labels), (np.asarray(h, np.float64),),
                          (np.asarray(h, np.float64),))
    for run in (jax.jvp, jax.jit(jax.jvp, static_argnums=0)):
        _, got = run(f, (h,), (h,))
        np.testing.assert_allclose(float(got), float(want), rtol=2e-5)
    jac = jax.jacfwd(f)(h)
    np.testing.assert_allclose(jac, jax.grad(f)(h), rtol=1e-5, atol=1e-6)
    # w alone, h closed over
    g = lambda b: jo.linear_cross_entropy(h, b, labels, reduction="sum",  # noqa: E731
                                          implementation=implementation)
    _, t_w = jax.jvp(g, (w,), (w,))
    np.testing.assert_allclose(float(t_w), float(jnp.sum(jax.grad(g)(w) * w)), rtol=2e-5)


def _weighted_ops():
    x = jnp.asarray(np.random.default_rng(0).uniform(-2, 2, (4, 3)), jnp.float32)
    labels = jnp.array([0, 2, 1, 2])
    weights = jnp.array([1.0, 2.0, 0.5])
    h = jnp.asarray(np.random.default_rng(1).uniform(-2, 2, (4, 5)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(2).uniform(-2, 2, (5, 3)), jnp.float32)
    return {
        "softmax_cross_entropy": (lambda c: jo.softmax_cross_entropy(x, labels, c), "weights"),
        "nll_loss": (lambda c: jo.nll_loss(jax.nn.log_softmax(x), labels, c), "weight"),
        "linear_cross_entropy": (lambda c: jo.linear_cross_entropy(h, w, labels, c),
                                 "weights"),
    }, weights


@pytest.mark.parametrize("op", ["softmax_cross_entropy", "nll_loss", "linear_cross_entropy"])
@pytest.mark.parametrize("mode", ["grad", "jvp", "jacfwd", "linearize", "hessian"])
def test_class_weights_refuse_differentiation(op, mode):
    """Class weights have no derivative in jaxops (as in PyTorch's nll_loss): differentiating
    them raises, naming the op and the input, instead of returning 0."""
    ops, weights = _weighted_ops()
    f, name = ops[op]
    run = {"grad": lambda: jax.grad(f)(weights),
           "jvp": lambda: jax.jvp(f, (weights,), (weights,)),
           "jacfwd": lambda: jax.jacfwd(f)(weights),
           "linearize": lambda: jax.linearize(f, weights),
           "hessian": lambda: jax.hessian(f)(weights)}[mode]
    with pytest.raises(TypeError, match=rf"jaxops.{op}: input '{name}' is not differentiable"
                                        r".*stop_gradient"):
        run()
    # the advice works: a constant weight, and the other inputs still differentiate
    assert jax.grad(lambda c: f(jax.lax.stop_gradient(c)))(weights).tolist() == [0.0] * 3


def test_weights_closed_over_do_not_raise():
    ops, weights = _weighted_ops()
    x = jnp.asarray(np.random.default_rng(0).uniform(-2, 2, (4, 3)), jnp.float32)
    g = jax.grad(lambda x: jo.softmax_cross_entropy(x, jnp.array([0, 2, 1, 2]), weights))(x)
    assert np.isfinite(g).all() and np.abs(g).sum() > 0


def test_targets_differentiate_as_optax():
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.uniform(-4, 4, (5, 3)), jnp.float32)
    t = jnp.asarray(rng.uniform(0, 1, (5, 3)), jnp.float32)
    bce = jax.grad(lambda t: jo.binary_cross_entropy(z, t, reduction="sum"))(t)
    want = jax.grad(lambda t: optax.sigmoid_binary_cross_entropy(z, t).sum())(t)
    np.testing.assert_allclose(bce, want, rtol=1e-6)
    q = jax.nn.softmax(t)
    ce = jax.grad(lambda q: jo.cross_entropy(z, q, from_logits=True, reduction="sum"))(q)
    want = jax.grad(lambda q: optax.softmax_cross_entropy(z, q).sum())(q)
    np.testing.assert_allclose(ce, want, rtol=1e-6)
    _, t_ce = jax.jvp(lambda q: jo.cross_entropy(z, q, from_logits=True, reduction="sum"),
                      (q,), (q,))
    np.testing.assert_allclose(t_ce, jnp.sum(want * q), rtol=1e-6)


def test_clip_bounds_differentiate_as_jnp_clip_away_from_ties():
    x = jnp.linspace(-3, 3, 13) + 0.01
    for lo, hi in ((-1.0, 2.0), (0.5, 0.7)):
        got = jax.grad(lambda a, b: jo.clip(x, a, b).sum(), (0, 1))(lo, hi)
        want = jax.grad(lambda a, b: jnp.clip(x, a, b).sum(), (0, 1))(lo, hi)
        assert got == want


def test_zero_tangent_times_infinite_input_is_not_nan():
    """prelu at +-inf, slope closed over: the slope's tangent is a symbolic zero and is never
    multiplied by x (0 * inf was NaN); the derivative is the slope where x < 0."""
    x = jnp.array([np.inf, -np.inf, 2.0])
    y, t = jax.jvp(lambda x: jo.prelu(x, jnp.float32(0.2)), (x,), (jnp.ones(3),))
    np.testing.assert_array_equal(t, np.float32([1.0, 0.2, 1.0]))
    np.testing.assert_array_equal(jax.grad(lambda x: jo.prelu(x, jnp.float32(.2)).sum())(x),
                                  np.float32([1.0, 0.2, 1.0]))
    # batch norm with its statistics closed over: no 0 * inf from their tangents
    _, t = jax.jvp(lambda s: jo.batch_norm(jnp.ones((2, 3)), s, jnp.zeros(3), jnp.zeros(3),
                                           jnp.ones(3))[0], (jnp.ones(3),), (jnp.ones(3),))
    assert np.isfinite(t).all()


def _gradient_op_cases():
    """(name, op, inputs in float64, attributes) for the gradient ops outside the transform
    matrix's table: JAX differentiates their implementations (second order)."""
    rng = np.random.default_rng(5)

    def u(*shape, lo=-2.0, hi=2.0):
        return rng.uniform(lo, hi, shape)

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    labels = np.array([0, 2, 1, 2, 0, 1], np.int32)
    logp = np.log(softmax(u(6, 3)))
    probs = softmax(u(6, 3))
    return [
        ("batch_norm_gradient[train]", jo.batch_norm_gradient,
         (u(6, 3), u(3), u(3), u(3, lo=0.5), u(6, 3)), {"training": True}),
        ("batch_norm_gradient[infer]", jo.batch_norm_gradient,
         (u(6, 3), u(3), u(3), u(3, lo=0.5), u(6, 3)), {"training": False}),
        ("cross_entropy_gradient", jo.cross_entropy_gradient,
         (u(6, 3, lo=0.1, hi=1.0), probs, np.float64(1.3)), {}),
        ("cross_entropy_gradient[logits]", jo.cross_entropy_gradient,
         (u(6, 3), probs, u(6)), {"from_logits": True, "reduction": "none"}),
        ("binary_cross_entropy_gradient", jo.binary_cross_entropy_gradient,
         (u(6, 3), u(6, 3, lo=0.0, hi=1.0), u(6, 3)), {"reduction": "none"}),
        ("softmax_cross_entropy_gradient", jo.softmax_cross_entropy_gradient,
         (logp, labels, u(3, lo=0.5), np.float64(0.7)), {"ignore_index": 1}),
        ("nll_loss_gradient", jo.nll_loss_gradient,
         (logp, labels, u(3, lo=0.5), u(6)), {"reduction": "none"}),
        ("linear_cross_entropy_gradient", jo.linear_cross_entropy_gradient,
         (u(6, 4), u(4, 3), labels, u(3, lo=0.5), np.float64(0.9)), {"chunk_size": 4}),
    ]


@pytest.mark.parametrize("name,op,xs,attrs", [
    pytest.param(*c, id=c[0], marks=[pytest.mark.slow] if "linear" in c[0] else [])  # 25 s
    for c in _gradient_op_cases()])
def test_gradient_ops_each_input_alone(name, op, xs, attrs, x64):
    """Each float input of a gradient op differentiated alone, the others closed over
    (symbolic zero tangents), against float64 finite differences in both modes and to second
    order; jit(jvp) equals jvp."""
    from jax.test_util import check_grads

    xs = [jnp.asarray(x) for x in xs]
    floats = [i for i, x in enumerate(xs) if jnp.issubdtype(x.dtype, jnp.floating)]
    for i in floats:
        def f(v, i=i):
            args = list(xs)
            args[i] = v
            return op(*args, **attrs)

        check_grads(f, (xs[i],), order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)
        t = jnp.ones_like(xs[i])
        eager = jax.jvp(f, (xs[i],), (t,))[1]
        jitted = jax.jit(lambda v, t, f=f: jax.jvp(f, (v,), (t,))[1])(xs[i], t)
        for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=f"input {i}")


def test_closed_over_inputs_cost_no_matmul():
    """A closed-over input's zero tangent never reaches a matmul: it would cost an N x H x V
    product of zeros, and XLA CPU (jaxlib 0.10.2) miscompiles a dot against a broadcast
    constant (docs/xla_cpu_dot_zero_miscompile.py).  Counted in the jaxpr: d/dh alone has
    fewer dot_generals than d/d(h, w), and d/dw alone likewise."""
    h, w, labels = _lce_inputs()

    def dots(f, *args):
        return str(jax.make_jaxpr(f)(*args)).count("dot_general")

    def f(a, b):
        return jo.linear_cross_entropy(a, b, labels, reduction="sum", implementation="xla")

    both = dots(lambda a, b: jax.jvp(f, (a, b), (a, b))[1], h, w)
    h_alone = dots(lambda a: jax.jvp(lambda a: f(a, w), (a,), (a,))[1], h)
    w_alone = dots(lambda b: jax.jvp(lambda b: f(h, b), (b,), (b,))[1], w)
    assert h_alone < both and w_alone < both, (h_alone, w_alone, both)
