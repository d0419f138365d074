"""The test table: every op with a float64 NumPy reference for its value and its first and
second derivatives, the input domain to sample, and the kinks to keep finite differences
away from.  Adding an op to the transform matrix is one entry here.

Elementwise ops give their partial derivatives elementwise (``d1``, ``d2``); ops that act on
the last axis (softmax) give the per-row Jacobian and Hessian (``jac_row``, ``hess_row``).
Either way the tests see full Jacobians ``J[i]`` (out x input i) and Hessians ``H[i][j]``
(out x input i x input j) over the flattened arrays.

The references are written from the math (SPEC §2.1), not from jaxops code.  Derivatives at
the kinks follow the conventions in the SPEC table; the derivative of a gradient op w.r.t. the
forward output Y is 0 (it only reads Y's sign or range).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

import jaxops as jo

Arrays = tuple[np.ndarray, ...]


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: jax.jit(case)
class Case:
    name: str
    op: Callable
    attrs: dict
    ref: Callable[..., np.ndarray]  # (*inputs) -> output
    d1: Callable[..., Arrays] | None  # (*inputs) -> d out / d input_i, elementwise
    d2: Callable[..., tuple[Arrays, ...]] | None  # (*inputs) -> d2 out / d in_i d in_j
    sample: Callable[[np.random.Generator, tuple[int, ...]], Arrays]
    kinks: tuple[float, ...] = ()
    fixed: tuple[int, ...] = ()  # labels and non-differentiable targets: held fixed in FD
    jac_row: Callable[..., Arrays] | None = None  # (*rows) -> (C, C) per input
    hess_row: Callable[..., tuple[Arrays, ...]] | None = None  # (*rows) -> (C, C, C)

    def __call__(self, *xs):
        return self.op(*xs, **self.attrs)

    def jacobians(self, *xs) -> Arrays:
        """J[i]: d vec(out) / d vec(input i), float64."""
        if self.jac_row is None:
            return tuple(np.diag(d.ravel()) for d in self.d1(*xs))
        per_row = [self.jac_row(*rows) for rows in zip(*(x.reshape(-1, x.shape[-1]) for x in xs),
                                                         strict=True)]
        return tuple(_block_diag([r[i] for r in per_row]) for i in range(len(xs)))

    def hessians(self, *xs) -> tuple[Arrays, ...]:
        """H[i][j]: d2 vec(out) / d vec(input i) d vec(input j), float64."""
        k = range(len(xs))
        if self.hess_row is None:
            d2 = self.d2(*xs)
            return tuple(tuple(_diag3(d2[i][j].ravel()) for j in k) for i in k)
        per_row = [self.hess_row(*rows) for rows in zip(*(x.reshape(-1, x.shape[-1]) for x in xs),
                                                          strict=True)]
        return tuple(tuple(_block_diag([r[i][j] for r in per_row]) for j in k) for i in k)

    def __str__(self):
        attrs = ",".join(f"{k}={v}" for k, v in self.attrs.items())
        return f"{self.name}({attrs})" if attrs else self.name


def _diag3(v):
    h = np.zeros((v.size,) * 3)
    idx = np.arange(v.size)
    h[idx, idx, idx] = v
    return h


def _block_diag(blocks):
    """Block-diagonal over the leading axes of per-row (C, C[, C]) blocks."""
    c, nd = blocks[0].shape[0], blocks[0].ndim
    n = c * len(blocks)
    out = np.zeros((n,) * nd)
    for r, b in enumerate(blocks):
        sl = slice(r * c, (r + 1) * c)
        out[(sl,) * nd] = b
    return out


def _zeros(*xs):
    return np.zeros_like(xs[0])


def _uniform(lo, hi, *points):
    """Uniform samples with the given points (kinks) planted in the first entries."""

    def sample(rng, shape):
        x = rng.uniform(lo, hi, size=shape)
        flat = x.reshape(-1)
        flat[: len(points)] = points
        return (x,)

    return sample


def _with_dy(forward_sample, forward=None):
    """Inputs (y or x, dy) for a gradient op: y = forward(x) when given, else x."""

    def sample(rng, shape):
        (x,) = forward_sample(rng, shape)
        first = forward(x) if forward is not None else x
        return first, rng.uniform(-2, 2, size=shape)

    return sample


def _leaky(x, a):
    return np.where(x >= 0, x, a * x)


def _leaky_slope(s, a):
    # slope from the sign bit of the first input: +0 and positives -> 1, -0 and negatives -> a
    return np.where(np.signbit(s), a, 1.0)


def _softsign(x):
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(x), np.sign(x), x / (1 + np.abs(x)))


def _relu_cases():
    yield Case(
        "relu", jo.relu, {}, lambda x: np.maximum(x, 0),
        lambda x: ((x > 0) * 1.0,), lambda x: ((_zeros(x),),),
        _uniform(-3, 3, 0.0), kinks=(0.0,))
    for n in (6.0, 1.5):
        yield Case(
            "relu_n", jo.relu_n, {"n": n}, lambda x, n=n: np.minimum(np.maximum(x, 0), n),
            lambda x, n=n: (((x > 0) & (x < n)) * 1.0,), lambda x: ((_zeros(x),),),
            _uniform(-3, 8, 0.0, n), kinks=(0.0, n))
    for a in (0.01, -0.5, 0.0):
        yield Case(
            "leaky_relu", jo.leaky_relu, {"alpha": a}, lambda x, a=a: _leaky(x, a),
            lambda x, a=a: (_leaky_slope(x, a),), lambda x: ((_zeros(x),),),
            _uniform(-3, 3, 0.0), kinks=(0.0,))


def _softsign_log_cases():
    yield Case(
        "softsign", jo.softsign, {}, _softsign,
        lambda x: (1 / (1 + np.abs(x)) ** 2,),
        lambda x: ((-2 * np.sign(x) / (1 + np.abs(x)) ** 3,),),
        _uniform(-5, 5, 0.0), kinks=(0.0,))
    yield Case(
        "log", jo.log, {}, np.log, lambda x: (1 / x,), lambda x: ((-1 / x**2,),),
        lambda rng, shape: (np.exp(rng.uniform(-3, 3, size=shape)),))


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _smooth_cases():
    yield Case(
        "sigmoid", jo.sigmoid, {}, _sigmoid,
        lambda x: (_sigmoid(x) * (1 - _sigmoid(x)),),
        lambda x: ((_sigmoid(x) * (1 - _sigmoid(x)) * (1 - 2 * _sigmoid(x)),),),
        _uniform(-6, 6, 0.0))
    yield Case(
        "tanh", jo.tanh, {}, np.tanh, lambda x: (1 - np.tanh(x) ** 2,),
        lambda x: ((-2 * np.tanh(x) * (1 - np.tanh(x) ** 2),),), _uniform(-4, 4, 0.0))
    yield Case(
        "exp", jo.exp, {}, np.exp, lambda x: (np.exp(x),), lambda x: ((np.exp(x),),),
        _uniform(-4, 4, 0.0))


def _smooth_gradient_cases():
    one = lambda y: np.ones_like(y)  # noqa: E731
    yield Case(
        "sigmoid_gradient", jo.sigmoid_gradient, {}, lambda y, dy: dy * y * (1 - y),
        lambda y, dy: (dy * (1 - 2 * y), y * (1 - y)),
        lambda y, dy: ((-2 * dy, 1 - 2 * y), (1 - 2 * y, _zeros(y))),
        _with_dy(_uniform(-6, 6, 0.0), _sigmoid))
    yield Case(
        "tanh_gradient", jo.tanh_gradient, {}, lambda y, dy: dy * (1 - y**2),
        lambda y, dy: (-2 * y * dy, 1 - y**2),
        lambda y, dy: ((-2 * dy, -2 * y), (-2 * y, _zeros(y))),
        _with_dy(_uniform(-4, 4, 0.0), np.tanh))
    yield Case(
        "exp_gradient", jo.exp_gradient, {}, lambda y, dy: dy * y,
        lambda y, dy: (dy, y), lambda y, dy: ((_zeros(y), one(y)), (one(y), _zeros(y))),
        _with_dy(_uniform(-4, 4, 0.0), np.exp))


def _clip_prelu_cases():
    for lo, hi in ((-1.0, 2.0), (2.0, -1.0), (None, 0.5)):
        def ref(x, lo=lo, hi=hi):
            y = x if lo is None else np.maximum(x, lo)
            return np.minimum(y, hi)

        def mask(x, lo=lo, hi=hi):
            return ((True if lo is None else x > lo) & (x < hi)) * 1.0

        kinks = tuple(b for b in (lo, hi) if b is not None)
        yield Case("clip", jo.clip, {"min": lo, "max": hi}, ref, lambda x, m=mask: (m(x),),
                   lambda x: ((_zeros(x),),), _uniform(-3, 3, *kinks), kinks=kinks)
        yield Case("clip_gradient", jo.clip_gradient, {"min": lo, "max": hi},
                   lambda y, dy, m=mask: m(y) * dy, lambda y, dy, m=mask: (_zeros(y), m(y)),
                   lambda y, dy: ((_zeros(y), _zeros(y)), (_zeros(y), _zeros(y))),
                   _with_dy(_uniform(-3, 3, *kinks), ref), kinks=kinks)

    def prelu_sample(rng, shape):
        x = rng.uniform(-3, 3, size=shape)
        x.reshape(-1)[0] = 0.0
        return x, rng.uniform(-1, 1, size=shape)

    neg = lambda x: (x < 0) * 1.0  # noqa: E731
    yield Case(
        "prelu", jo.prelu, {}, lambda x, a: np.where(x >= 0, x, a * x),
        lambda x, a: (np.where(x >= 0, 1.0, a), np.where(x < 0, x, 0.0)),
        lambda x, a: ((_zeros(x), neg(x)), (neg(x), _zeros(x))),
        prelu_sample, kinks=(0.0,))

    def with_dy(rng, shape):
        return (*prelu_sample(rng, shape), rng.uniform(-2, 2, size=shape))

    z3 = lambda x: tuple(tuple(_zeros(x) for _ in range(3)) for _ in range(3))  # noqa: E731

    def d2_dx(x, a, dy):
        h = [list(r) for r in z3(x)]
        h[1][2] = h[2][1] = neg(x)
        return tuple(tuple(r) for r in h)

    def d2_dslope(x, a, dy):
        h = [list(r) for r in z3(x)]
        h[0][2] = h[2][0] = neg(x)
        return tuple(tuple(r) for r in h)

    yield Case(
        "prelu_gradient[dX]", lambda x, a, dy: jo.prelu_gradient(x, a, dy)[0], {},
        lambda x, a, dy: np.where(x < 0, a * dy, dy),
        lambda x, a, dy: (_zeros(x), neg(x) * dy, np.where(x < 0, a, 1.0)), d2_dx,
        with_dy, kinks=(0.0,))
    yield Case(
        "prelu_gradient[dslope]", lambda x, a, dy: jo.prelu_gradient(x, a, dy)[1], {},
        lambda x, a, dy: neg(x) * dy * x,
        lambda x, a, dy: (neg(x) * dy, _zeros(x), neg(x) * x), d2_dslope,
        with_dy, kinks=(0.0,))


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _softmax_cases():
    def jac(x):
        s = _softmax(x)
        return np.diag(s) - np.outer(s, s)

    def sm_hess(x):
        s, j = _softmax(x), jac(x)
        eye = np.eye(len(x))
        # d J[i, j] / d x_k = J[i, k] (d_ij - s_j) - s_i J[j, k]
        return (np.einsum("ik,ij->ijk", j, eye - s[None, :])
                - np.einsum("i,jk->ijk", s, j))

    yield Case("softmax", jo.softmax, {}, _softmax, None, None, _uniform(-3, 3),
               jac_row=lambda x: (jac(x),), hess_row=lambda x: ((sm_hess(x),),))
    yield Case("log_softmax", jo.log_softmax, {},
               lambda x: np.log(_softmax(x)), None, None, _uniform(-3, 3),
               jac_row=lambda x: (np.eye(len(x)) - _softmax(x)[None, :],),
               hess_row=lambda x: ((-np.broadcast_to(jac(x)[None], (len(x),) * 3),),))

    def sg_jac(y, dy):
        eye = np.eye(len(y))
        return (eye * (dy - dy @ y) - np.outer(y, dy), y[:, None] * (eye - y[None, :]))

    def sg_hess(y, dy):
        eye = np.eye(len(y))
        yy = -np.einsum("ij,k->ijk", eye, dy) - np.einsum("ik,j->ijk", eye, dy)
        ydy = np.einsum("ij,ik->ijk", eye, eye - y[None, :]) - np.einsum("i,jk->ijk", y, eye)
        return ((yy, ydy), (ydy.transpose(0, 2, 1), np.zeros_like(yy)))

    def softmax_rows(rng, shape):
        return _softmax(rng.uniform(-3, 3, size=shape)), rng.uniform(-2, 2, size=shape)

    yield Case("softmax_gradient", jo.softmax_gradient, {},
               lambda y, dy: y * (dy - (dy * y).sum(-1, keepdims=True)), None, None,
               softmax_rows, jac_row=sg_jac, hess_row=sg_hess)

    def lg_jac(y, dy):
        eye = np.eye(len(y))
        return (-eye * np.exp(y) * dy.sum(), eye - np.exp(y)[:, None])

    def lg_hess(y, dy):
        eye = np.eye(len(y))
        e = np.exp(y)
        yy = -np.einsum("ij,ik,i->ijk", eye, eye, e) * dy.sum()
        ydy = -np.einsum("ij,i->ij", eye, e)[:, :, None] * np.ones(len(y))[None, None, :]
        return ((yy, ydy), (ydy.transpose(0, 2, 1), np.zeros_like(yy)))

    def log_softmax_rows(rng, shape):
        y, dy = softmax_rows(rng, shape)
        return np.log(y), dy

    yield Case("log_softmax_gradient", jo.log_softmax_gradient, {},
               lambda y, dy: dy - np.exp(y) * dy.sum(-1, keepdims=True), None, None,
               log_softmax_rows, jac_row=lg_jac, hess_row=lg_hess)


def _loss_cases():
    """Losses with reduction="none" (elementwise in two inputs); test_losses.py derives the
    "sum" and "mean" expectations from the same entries."""
    none = {"reduction": "none"}
    z = _zeros
    one = lambda a: np.ones_like(a)  # noqa: E731

    def two(lo_a, hi_a, lo_b, hi_b):
        def sample(rng, shape):
            return rng.uniform(lo_a, hi_a, size=shape), rng.uniform(lo_b, hi_b, size=shape)

        return sample

    yield Case("mse", jo.mse, none, lambda p, t: (p - t) ** 2,
               lambda p, t: (2 * (p - t), -2 * (p - t)),
               lambda p, t: ((2 * one(p), -2 * one(p)), (-2 * one(p), 2 * one(p))),
               two(-3, 3, -3, 3))
    yield Case("mae", jo.mae, none, lambda p, t: np.abs(p - t),
               lambda p, t: (np.sign(p - t), -np.sign(p - t)),
               lambda p, t: ((z(p), z(p)), (z(p), z(p))), two(-3, 3, -3, 3))

    def msle_d2(p, t):
        d = np.log1p(p) - np.log1p(t)
        return ((2 * (1 - d) / (1 + p) ** 2, -2 / ((1 + p) * (1 + t))),
                (-2 / ((1 + p) * (1 + t)), 2 * (1 + d) / (1 + t) ** 2))

    yield Case("msle", jo.msle, none, lambda p, t: (np.log1p(p) - np.log1p(t)) ** 2,
               lambda p, t: (2 * (np.log1p(p) - np.log1p(t)) / (1 + p),
                             -2 * (np.log1p(p) - np.log1p(t)) / (1 + t)),
               msle_d2, two(-0.5, 4, -0.5, 4))

    def hinge_sample(rng, shape):
        return rng.uniform(-3, 3, size=shape), rng.choice([-1.0, 1.0], size=shape)

    active = lambda s, y: ((1 - y * s) > 0) * 1.0  # noqa: E731
    yield Case("hinge", jo.hinge, none, lambda s, y: np.maximum(0, 1 - y * s),
               lambda s, y: (-y * active(s, y), -s * active(s, y)),
               lambda s, y: ((z(s), -active(s, y)), (-active(s, y), z(s))), hinge_sample,
               fixed=(1,))

    def kl_sample(rng, shape):
        return np.log(rng.uniform(0.05, 1, size=shape)), rng.uniform(0.05, 1, size=shape)

    yield Case("kl_divergence", jo.kl_divergence, none,
               lambda lp, q: q * (np.log(q) - lp),
               lambda lp, q: (-q, np.log(q) - lp + 1),
               lambda lp, q: ((z(q), -one(q)), (-one(q), 1 / q)), kl_sample)

    def kl_log_sample(rng, shape):
        lp, q = kl_sample(rng, shape)
        return lp, np.log(q)

    yield Case("kl_divergence", jo.kl_divergence, {"log_target": True, "reduction": "none"},
               lambda lp, lq: np.exp(lq) * (lq - lp),
               lambda lp, lq: (-np.exp(lq), np.exp(lq) * (lq - lp + 1)),
               lambda lp, lq: ((z(lq), -np.exp(lq)), (-np.exp(lq), np.exp(lq) * (lq - lp + 2))),
               kl_log_sample)

    # targets are non-differentiable (Caffe2, ONNX): their partials are 0
    yield Case("binary_cross_entropy", jo.binary_cross_entropy, none,
               lambda x, t: np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x))),
               lambda x, t: (_sigmoid(x) - t, z(x)),
               lambda x, t: ((_sigmoid(x) * (1 - _sigmoid(x)), z(x)), (z(x), z(x))),
               two(-6, 6, 0, 1), fixed=(1,))


def _gradient_cases():
    zero2 = lambda s, dy: ((_zeros(s), _zeros(s)), (_zeros(s), _zeros(s)))  # noqa: E731
    yield Case(
        "relu_gradient", jo.relu_gradient, {}, lambda y, dy: np.where(y > 0, dy, 0.0),
        lambda y, dy: (_zeros(y), (y > 0) * 1.0), zero2,
        _with_dy(_uniform(-3, 3, 0.0), lambda x: np.maximum(x, 0)), kinks=(0.0,))
    yield Case(
        "relu_n_gradient", jo.relu_n_gradient, {"n": 6.0},
        lambda y, dy: np.where((y > 0) & (y < 6), dy, 0.0),
        lambda y, dy: (_zeros(y), ((y > 0) & (y < 6)) * 1.0), zero2,
        _with_dy(_uniform(-3, 8, 0.0, 6.0), lambda x: np.clip(x, 0, 6)), kinks=(0.0, 6.0))
    for a in (0.01, -0.5):
        yield Case(
            "leaky_relu_gradient", jo.leaky_relu_gradient, {"alpha": a},
            lambda s, dy, a=a: _leaky_slope(s, a) * dy,
            lambda s, dy, a=a: (_zeros(s), _leaky_slope(s, a)), zero2,
            _with_dy(_uniform(-3, 3, 0.0, -0.0)), kinks=(0.0,))
    p = lambda x: 1 + np.abs(x)  # noqa: E731
    yield Case(
        "softsign_gradient", jo.softsign_gradient, {}, lambda x, dy: dy / p(x) ** 2,
        lambda x, dy: (-2 * dy * np.sign(x) / p(x) ** 3, 1 / p(x) ** 2),
        lambda x, dy: ((6 * dy * np.sign(x) ** 2 / p(x) ** 4, -2 * np.sign(x) / p(x) ** 3),
                       (-2 * np.sign(x) / p(x) ** 3, _zeros(x))),
        _with_dy(_uniform(-5, 5, 0.0)), kinks=(0.0,))
    yield Case(
        "log_gradient", jo.log_gradient, {}, lambda x, dy: dy / x,
        lambda x, dy: (-dy / x**2, 1 / x),
        lambda x, dy: ((2 * dy / x**3, -1 / x**2), (-1 / x**2, _zeros(x))),
        _with_dy(lambda rng, shape: (np.exp(rng.uniform(-2, 2, size=shape)),)))


def example_args(schema, shape=(7,), dtype="float32", value=0.5):
    """Arguments that satisfy an op's schema: arrays of ``shape`` filled with ``value``,
    scalars for its scalar inputs."""
    import jax.numpy as jnp

    return tuple(jnp.full(() if p.scalar else shape, value, dtype) for p in schema.inputs)


CASES: tuple[Case, ...] = (
    *_relu_cases(), *_softsign_log_cases(), *_smooth_cases(), *_clip_prelu_cases(),
    *_softmax_cases(), *_loss_cases(), *_gradient_cases(), *_smooth_gradient_cases(),
)
