"""``jaxops.onnx.export`` leaves the function it exports alone.

Export traces ``fn`` in recording mode, where each op is one ``jaxops_op`` equation.  JAX
caches traces (``jit``, ``checkpoint``, the ops' own ``jit``); these tests pin that a trace
made in one mode is never reused in the other: a function behaves the same after it was
exported (jvp, vmap, grad, hessian, jit), an export is the same whether or not the function
ran before, and one thread exporting does not change what another computes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops as jo

jonnx = pytest.importorskip("jaxops.onnx")

X = jnp.linspace(-2.0, 2.0, 7, dtype=jnp.float32)
T = jnp.linspace(0.5, 1.5, 7, dtype=jnp.float32)
XS = jnp.stack([X, -X, X * 0.5])


def _softsign_twice() -> Callable:
    # a new Python function each time: JAX keys its trace caches by the function wrapped, so
    # two jax.jit of one function share them
    return lambda x: jo.softsign(x) * 2.0


def _nested_jit() -> Callable:
    inner = jax.jit(lambda x: jo.softsign(x))
    return lambda x: inner(x) * 2.0


# Each factory makes a fresh function, so no test sees another's caches; every one computes
# softsign(x) * 2 and exports as the same two nodes.
FUNCTIONS = {
    "jit": lambda: jax.jit(_softsign_twice()),
    "nested_jit": _nested_jit,
    "jit_of_nested_jit": lambda: jax.jit(_nested_jit()),
    "jit_of_checkpoint": lambda: jax.jit(jax.checkpoint(_softsign_twice())),
}
GRAPH = ["Softsign", "Mul"]


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _uses(f) -> dict[str, np.ndarray]:
    """What users do with ``f``: each transform's result (raises where one fails)."""

    def total(x):
        return f(x).sum()

    return {
        "call": f(X),
        "jit": jax.jit(f)(X),
        "jvp": jax.jvp(f, (X,), (T,))[1],
        "vmap": jax.vmap(f)(XS),
        "grad": jax.grad(total)(X),
        "hessian": jax.hessian(total)(X),
        "linearize": jax.linearize(f, X)[1](T),
    }


def _assert_same_uses(got, want):
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=0, err_msg=name)


def _has_recorded_op(f) -> bool:
    """Whether an ordinary trace of ``f`` contains recording-mode equations."""
    return "jaxops_op" in str(jax.make_jaxpr(f)(X))


@pytest.mark.parametrize("make", FUNCTIONS.values(), ids=FUNCTIONS.keys())
def test_export_then_use_behaves_as_never_exported(make):
    f = make()
    assert _ops(jonnx.export(f, X)) == GRAPH
    assert not _has_recorded_op(f)
    _assert_same_uses(_uses(f), _uses(make()))


@pytest.mark.parametrize("make", FUNCTIONS.values(), ids=FUNCTIONS.keys())
def test_use_then_export_records_the_ops(make):
    f = make()
    _uses(f)  # fills every cache an ordinary trace fills
    assert _ops(jonnx.export(f, X)) == GRAPH
    assert _ops(jonnx.export(f, X)) == GRAPH  # and a second export reuses the recording


def test_op_itself_exported_then_used():
    """The op's own ``jit`` (one per op) keeps ordinary and recorded traces apart too.  A
    regression guard: on the thread-local flag this already held, since a recorded call never
    reaches the op's ``jit``."""
    assert _ops(jonnx.export(jo.softsign, X)) == ["Softsign"]
    want = {"jvp": jax.jvp(lambda x: jo.softsign(x) + 0.0, (X,), (T,))[1]}
    np.testing.assert_allclose(jax.jvp(jo.softsign, (X,), (T,))[1], want["jvp"], rtol=1e-6)
    assert _ops(jonnx.export(jo.softsign, X)) == ["Softsign"]


def _loss() -> Callable:
    return lambda x: jo.softsign(x).sum()


def test_training_graph_export_does_not_change_the_gradient_function():
    grad = jax.jit(jax.grad(_loss()))
    assert _ops(jonnx.export(grad, X)) == ["SoftsignGradient"]
    # forward mode through the exported gradient function: a hessian-vector product
    hvp = jax.jvp(grad, (X,), (T,))[1]
    want = jax.jvp(jax.jit(jax.grad(_loss())), (X,), (T,))[1]
    np.testing.assert_allclose(hvp, want, rtol=1e-6)
    # softsign'' = -2 sign(x) / (1 + |x|)^3
    np.testing.assert_allclose(hvp, -2 * jnp.sign(X) / (1 + jnp.abs(X)) ** 3 * T, rtol=1e-5)


def test_training_graph_export_after_the_gradient_ran():
    grad = jax.jit(jax.grad(_loss()))
    grad(X)
    jax.jvp(grad, (X,), (T,))
    assert _ops(jonnx.export(grad, X)) == ["SoftsignGradient"]


def test_checkpointed_gradient_exports_and_still_runs():
    grad = jax.jit(jax.grad(jax.checkpoint(_loss())))
    want = jax.grad(_loss())(X)
    assert "SoftsignGradient" in _ops(jonnx.export(grad, X))
    np.testing.assert_allclose(grad(X), want, rtol=1e-6)
    np.testing.assert_allclose(jax.jvp(grad, (X,), (T,))[1],
                               jax.jvp(jax.grad(_loss()), (X,), (T,))[1], rtol=1e-6)


ROUNDS = 20


def test_one_thread_exports_while_another_differentiates():
    f = jax.jit(_softsign_twice())
    want = np.asarray(jax.jvp(jax.jit(_softsign_twice()), (X,), (T,))[1])
    start = threading.Barrier(2)

    def exporter():
        start.wait()
        return [_ops(jonnx.export(f, X)) for _ in range(ROUNDS)]

    def differentiator():
        start.wait()
        return [np.asarray(jax.jvp(f, (X,), (T,))[1]) for _ in range(ROUNDS)]

    with ThreadPoolExecutor(2) as pool:
        graphs, tangents = pool.submit(exporter), pool.submit(differentiator)
        graphs, tangents = graphs.result(timeout=300), tangents.result(timeout=300)
    assert graphs == [GRAPH] * ROUNDS
    for t in tangents:
        np.testing.assert_allclose(t, want, rtol=1e-6)
