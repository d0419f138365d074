"""What is benchmarked: each jaxops op with its reference formulation and inputs.

One entry per op.  The reference is what a JAX user would write without jaxops (jax.nn where
it has the op, else plain jnp); it is also the correctness oracle before timing.  Adding an
op (as the operator set grows) is one entry here.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

import jaxops as jo


@dataclasses.dataclass(frozen=True, eq=False)
class Bench:
    name: str
    op: Callable  # the jaxops op (attributes bound)
    reference: Callable
    make_inputs: Callable[[jax.Array, int, str], tuple]  # (key, n, dtype) -> inputs
    schema: str  # op_type, for cost inference and allow_inplace
    elementwise: bool = True


def _uniform(lo, hi, arity=1, avoid_zero=False):
    def make(key, n, dtype):
        keys = jax.random.split(key, arity)
        xs = tuple(jax.random.uniform(k, (n,), dtype, lo, hi) for k in keys)
        if avoid_zero:  # an exact 0 (likely at 2^24 samples) sits on a kink convention
            xs = (jnp.where(xs[0] == 0, jnp.ones((), dtype), xs[0]), *xs[1:])
        return xs

    return make


BENCHES: dict[str, Bench] = {
    b.name: b
    for b in (
        Bench("relu", jo.relu, jax.nn.relu, _uniform(-3, 3), "Relu"),
        Bench("relu_n", jo.relu_n, jax.nn.relu6, _uniform(-3, 9), "ReluN"),
        Bench("leaky_relu", jo.leaky_relu, jax.nn.leaky_relu, _uniform(-3, 3), "LeakyRelu"),
        Bench("softsign", jo.softsign, jax.nn.soft_sign, _uniform(-5, 5), "Softsign"),
        Bench("log", jo.log, jnp.log, _uniform(0.1, 10), "Log"),
        Bench("sigmoid", jo.sigmoid, jax.nn.sigmoid, _uniform(-6, 6), "Sigmoid"),
        Bench("tanh", jo.tanh, jnp.tanh, _uniform(-4, 4), "Tanh"),
        Bench("exp", jo.exp, jnp.exp, _uniform(-4, 4), "Exp"),
        Bench("relu_gradient", jo.relu_gradient,
              lambda y, dy: jnp.where(y > 0, dy, 0), _uniform(-1, 1, 2), "ReluGradient"),
        Bench("relu_n_gradient", jo.relu_n_gradient,
              lambda y, dy: jnp.where((y > 0) & (y < 6), dy, 0), _uniform(-1, 7, 2),
              "ReluNGradient"),
        Bench("leaky_relu_gradient", jo.leaky_relu_gradient,
              lambda y, dy: jnp.where(y >= 0, dy, 0.01 * dy), _uniform(-1, 1, 2),
              "LeakyReluGradient"),
        Bench("softsign_gradient", jo.softsign_gradient,
              # jnp's abs'(0) = 1 gives d/dx = -2 dy at x = 0; jaxops' convention is 0
              lambda x, dy: dy / jnp.square(1 + jnp.abs(x)), _uniform(-5, 5, 2, True),
              "SoftsignGradient"),
        Bench("log_gradient", jo.log_gradient, lambda x, dy: dy / x, _uniform(0.1, 10, 2),
              "LogGradient"),
        Bench("sigmoid_gradient", jo.sigmoid_gradient, lambda y, dy: dy * y * (1 - y),
              _uniform(0, 1, 2), "SigmoidGradient"),
        Bench("tanh_gradient", jo.tanh_gradient, lambda y, dy: dy * (1 - y * y),
              _uniform(-1, 1, 2), "TanhGradient"),
        Bench("exp_gradient", jo.exp_gradient, lambda y, dy: dy * y, _uniform(0, 5, 2),
              "ExpGradient"),
        # smooth activations: jax.nn's function (PyTorch's definitions where jax.nn's
        # defaults differ: gelu's erf form, hard_sigmoid with jax.nn's slope 1/6)
        Bench("gelu", jo.gelu, lambda x: jax.nn.gelu(x, approximate=False), _uniform(-5, 5),
              "Gelu"),
        Bench("gelu_tanh", functools.partial(jo.gelu, approximate="tanh"),
              lambda x: jax.nn.gelu(x, approximate=True), _uniform(-5, 5), "Gelu"),
        Bench("silu", jo.silu, jax.nn.silu, _uniform(-6, 6), "Swish"),
        Bench("softplus", jo.softplus, jax.nn.softplus, _uniform(-8, 8), "Softplus"),
        Bench("elu", jo.elu, jax.nn.elu, _uniform(-4, 4, avoid_zero=True), "Elu"),
        Bench("selu", jo.selu, jax.nn.selu, _uniform(-4, 4, avoid_zero=True), "Selu"),
        Bench("celu", jo.celu, jax.nn.celu, _uniform(-4, 4, avoid_zero=True), "Celu"),
        Bench("hard_sigmoid", functools.partial(jo.hard_sigmoid, alpha=1 / 6),
              jax.nn.hard_sigmoid, _uniform(-5, 5), "HardSigmoid"),
        Bench("hard_swish", jo.hard_swish, jax.nn.hard_swish, _uniform(-5, 5), "HardSwish"),
        Bench("mish", jo.mish, lambda x: x * jnp.tanh(jax.nn.softplus(x)), _uniform(-5, 5),
              "Mish"),
        Bench("log_sigmoid", jo.log_sigmoid, jax.nn.log_sigmoid, _uniform(-8, 8),
              "LogSigmoid"),
        Bench("glu", jo.glu, jax.nn.glu, _uniform(-4, 4), "Glu", elementwise=False),
    )
}
