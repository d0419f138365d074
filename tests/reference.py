"""The test table: every op with a float64 NumPy reference for its value and its first and
second derivatives, the input domain to sample, and the kinks to keep finite differences
away from.  Adding an op to the transform matrix is one entry here.

Elementwise ops give their partial derivatives elementwise (``d1``, ``d2``); ops that act on
the last axis (softmax) give the per-row Jacobian and Hessian (``jac_row``, ``hess_row``).
Either way the tests see full Jacobians ``J[i]`` (out x input i) and Hessians ``H[i][j]``
(out x input i x input j) over the flattened arrays.

Ops with integer labels, per-channel parameters or reductions over the batch (the labelled
cross-entropies, batch norm: ``STRUCTURED``) give a complex-safe float64 reference ``ref`` and
a closed-form reference VJP ``vjp_ref``; their Jacobians are the complex-step derivatives of
``ref`` (exact to float64 rounding: ``Im f(x + ih) / h`` with ``h = 1e-30`` has no
cancellation) and their weighted Hessians the complex-step derivatives of ``vjp_ref``.

The references are written from the math (SPEC §2.1), not from jaxops code.  Derivatives at
the kinks follow the conventions in the SPEC table; the derivative of a gradient op w.r.t. the
forward output Y is 0 (it only reads Y's sign or range).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax.numpy as jnp
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
    # STRUCTURED cases:
    vjp_ref: Callable[..., Arrays] | None = None  # (*inputs, w) -> w^T J[i] per diff input
    ints: tuple[int, ...] = ()  # integer inputs (labels), int32
    constant: tuple[int, ...] = ()  # inputs never differentiated (labels, class weights)
    unbatched: tuple[int, ...] = ()  # inputs shared by every row under vmap/scan (weights)
    rowwise: bool = True  # output row k depends on input row k only (same under vmap)
    shape: tuple[int, ...] | None = None  # input shape to sample (default: the tests')
    batching: bool = True  # the op takes a row of its inputs (vmap, scan over the rows)
    wrt: tuple[int, ...] | None = None  # differentiate these alone, the others closed over
    # tests/test_numerics.py's tolerance at its finite points, in eps of the dtype: 4, but
    # where a measured derivative formula needs more (said at the row)
    ulps: float = 4.0

    def __call__(self, *xs):
        return self.op(*xs, **self.attrs)

    @property
    def differentiable(self) -> tuple[int, ...]:
        """Every input the op differentiates."""
        return tuple(i for i in range(self.arity) if i not in self.constant + self.ints)

    @property
    def diff(self) -> tuple[int, ...]:
        """The inputs the matrix differentiates (``wrt``, else every differentiable one)."""
        return self.differentiable if self.wrt is None else self.wrt

    def alone(self, wrt: tuple[int, ...]) -> Case:
        """This case differentiated with respect to ``wrt`` only: the other inputs are
        closed over, so JAX gives them symbolic zero tangents."""
        assert set(wrt) < set(self.differentiable), (self, wrt)
        return dataclasses.replace(self, wrt=tuple(wrt))

    def _pick(self, per_input):
        """The entries of a per-differentiable-input sequence that ``diff`` selects."""
        per_input = tuple(per_input)
        return tuple(per_input[self.differentiable.index(i)] for i in self.diff)

    @property
    def arity(self) -> int:
        return len(self.sample(np.random.default_rng(0), self.shape or (8, 3)))

    def jacobians(self, *xs) -> Arrays:
        """J[i]: d vec(out) / d vec(input i), float64, for the differentiated inputs."""
        if self.vjp_ref is not None:
            return tuple(_complex_step(self.ref, xs, i).T for i in self.diff)
        if self.jac_row is None:
            return self._pick(np.diag(d.ravel()) for d in self.d1(*xs))
        per_row = [self.jac_row(*rows) for rows in zip(*(x.reshape(-1, x.shape[-1]) for x in xs),
                                                         strict=True)]
        return self._pick(_block_diag([r[i] for r in per_row]) for i in range(len(xs)))

    def hess_w(self, xs, w) -> list[list[np.ndarray]]:
        """d2 sum(w * out) / d input_i d input_j as (size_i, size_j) matrices (diff inputs)."""
        if self.vjp_ref is not None:
            sizes = [np.size(xs[i]) for i in self.diff]
            ends = np.cumsum(sizes)[:-1]

            def flat_vjp(*a):  # every diff input's w^T J at once: one pass per perturbation
                return np.concatenate([np.ravel(g) for g in self._pick(self.vjp_ref(*a, w))])

            # columns of input j: rows of the (size_j, sum of sizes) complex-step matrix
            per_j = [np.split(_complex_step(flat_vjp, xs, j), ends, axis=1) for j in self.diff]
            return [[per_j[b][a].T for b in range(len(self.diff))]
                    for a in range(len(self.diff))]
        w = np.ravel(w)
        return [[np.einsum("o,oab->ab", w, h) for h in self._pick(row)]
                for row in self._pick(self.hessians(*xs))]

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
        name = f"{self.name}({attrs})" if attrs else self.name
        return name if self.wrt is None else f"{name}[wrt={','.join(map(str, self.wrt))}]"


def _complex_step(f, xs, i, h=1e-30) -> np.ndarray:
    """d vec(f(*xs)) / d vec(xs[i]) as (size_i, out_size), by the complex step."""
    x = np.asarray(xs[i], np.complex128)
    rows = []
    for k in range(x.size):
        xk = x.copy()
        xk.flat[k] += 1j * h
        rows.append(np.imag(np.asarray(f(*xs[:i], xk, *xs[i + 1:]))).ravel() / h)
    return np.array(rows).reshape(x.size, -1)


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
    for a in (1.0, -0.5):
        yield Case(
            "thresholded_relu", jo.thresholded_relu, {"alpha": a},
            lambda x, a=a: np.where(x <= a, 0.0, x), lambda x, a=a: ((x > a) * 1.0,),
            lambda x: ((_zeros(x),),), _uniform(-3, 3, a, 0.0), kinks=(a,))


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


def _dropout_cases():
    """Dropout with a fixed key closed over: linear in x, with the mask drawn as the op and
    Flax define it, jax.random.bernoulli(key, 1 - rate, shape).  STRUCTURED, not elementwise:
    the mask depends on the whole shape (an element alone gets another draw), and under vmap
    a closed-over key gives every row the same mask of the row's shape, which the per-row
    references reproduce (rowwise=False)."""
    import jax

    key = jax.random.key(42)

    def mask(x, rate, training):
        if not training or rate == 0.0:
            return np.ones(np.shape(x))
        if rate == 1.0:
            return np.zeros(np.shape(x))
        m = np.asarray(jax.random.bernoulli(key, 1.0 - rate, np.shape(x)))
        return m / (1.0 - rate)

    for rate, training in ((0.3, True), (1.0, True), (0.5, False)):
        def op(x, rate=rate, training=training):
            return jo.dropout(x, key, rate=rate, training=training)

        yield Case(f"dropout[rate={rate},training={training}]", op, {},
                   lambda x, r=rate, t=training: mask(x, r, t) * x, None, None,
                   _uniform(-3, 3, 0.0), rowwise=False,
                   vjp_ref=lambda x, w, r=rate, t=training: (mask(x, r, t) * w,))


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

    for delta in (1.0, 0.5):
        def huber_sample(rng, shape, delta=delta):
            # d = p - t away from the kinks ±delta, but for d = ±delta exactly (t = 0) in
            # the first entries: the convention there (slope ±delta, curvature 1) is tested
            d = rng.uniform(-3, 3, size=shape)
            d = np.where(np.abs(np.abs(d) - delta) < 0.1, d + 0.2 * np.sign(d), d)
            t = rng.uniform(-2, 2, size=shape)
            t.reshape(-1)[:2], d.reshape(-1)[:2] = 0.0, (delta, -delta)
            return t + d, t

        def huber_ref(p, t, delta=delta):
            d = p - t
            return np.where(np.abs(d) <= delta, 0.5 * d * d, delta * (np.abs(d) - 0.5 * delta))

        def huber_d1(p, t, delta=delta):
            g = np.clip(p - t, -delta, delta)
            return g, -g

        def huber_d2(p, t, delta=delta):
            q = (np.abs(p - t) <= delta) * 1.0
            return (q, -q), (-q, q)

        yield Case("huber_loss", jo.huber_loss, {"delta": delta, "reduction": "none"},
                   huber_ref, huber_d1, huber_d2, huber_sample, kinks=(delta, -delta))

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

    # targets are differentiable (as in optax, PyTorch): the loss is linear in them
    yield Case("binary_cross_entropy", jo.binary_cross_entropy, none,
               lambda x, t: np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x))),
               lambda x, t: (_sigmoid(x) - t, -x),
               lambda x, t: ((_sigmoid(x) * (1 - _sigmoid(x)), -one(x)), (-one(x), z(x))),
               two(-6, 6, 0, 1))


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


# ------------------------------------------------- smooth activations (smooth_activations.py)

_erf = np.vectorize(math.erf, otypes=[float])
_SQRT2PI = math.sqrt(2 * math.pi)
_TANH_K, _TANH_C = math.sqrt(2 / math.pi), 0.044715
_SELU_A, _SELU_G = 1.67326319217681884765625, 1.05070102214813232421875


def _cstep(f, h=1e-30):
    """The derivative of a real-analytic float64 formula ``f``, by the complex step (exact
    to float64 rounding: no cancellation)."""
    return lambda x: np.imag(f(np.asarray(x, np.complex128) + 1j * h)) / h


def _phi(x):
    return np.exp(-x * x / 2) / _SQRT2PI


def _gelu_tanh_parts(x):
    """(p, q, u', u'') with p = (1 + tanh u)/2 = sigmoid(2u), q = (1 - tanh u)/2: so
    1 - tanh^2 u = 4pq and tanh u = p - q, with no 1 +- tanh cancellation (float64 loses
    1e-11 of gelu'(-4.3) to it)."""
    u = _TANH_K * (x + _TANH_C * x**3)
    return (_sigmoid(2 * u), _sigmoid(-2 * u), _TANH_K * (1 + 3 * _TANH_C * x**2),
            6 * _TANH_K * _TANH_C * x)


def _gelu_tanh_d1(x):
    p, q, du, _ = _gelu_tanh_parts(x)
    with np.errstate(invalid="ignore"):  # at +-inf: the limits, 1 and 0
        return np.where(np.isinf(x), (x > 0) * 1.0, p + 2 * x * p * q * du)


def _gelu_tanh_d2(x):
    p, q, du, d2u = _gelu_tanh_parts(x)
    with np.errstate(invalid="ignore"):  # at +-inf: the limit, 0
        return np.where(np.isinf(x), 0.0,
                        4 * p * q * du + 2 * x * p * q * (d2u - 2 * (p - q) * du**2))


def _softplus64(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def _mish_d1(x):
    t, s = np.tanh(np.log1p(np.exp(x))), _sigmoid(x)
    return t + x * s * (1 - t * t)


def _mish_d2(x):
    t, s = np.tanh(np.log1p(np.exp(x))), _sigmoid(x)
    return 2 * s * (1 - t * t) + x * s * (1 - t * t) * ((1 - s) - 2 * t * s)


def _silu_d(x, a):  # 1 - s as sigmoid(-ax): no cancellation where s ~ 1
    s, sn = _sigmoid(a * x), _sigmoid(-a * x)
    return s * (1 + a * x * sn)


def _silu_d2(x, a):
    s, sn = _sigmoid(a * x), _sigmoid(-a * x)
    return a * s * sn * (2 + a * x * (sn - s))


def _hard_swish_d(x):
    return np.where(x >= 3, 1.0, np.where(x > -3, x / 3 + 0.5, 0.0))


#: (name, op, attrs, value, d1, d2, d3, sample, kinks) of the smooth activations; d3 (the
#: derivative of d2) serves their gradient ops' second derivatives.  Where a kink is sampled
#: the derivatives take the side the op documents (the x <= 0 side for the ELUs, the outer
#: pieces for the hard ones).
def _smooth_activation_rows():
    def gelu_exact(x):
        return x * 0.5 * (1 + _erf(x / math.sqrt(2)))

    yield ("gelu", jo.gelu, {}, gelu_exact, lambda x: 0.5 * (1 + _erf(x / math.sqrt(2)))
           + x * _phi(x), lambda x: (2 - x * x) * _phi(x),
           lambda x: (x**3 - 4 * x) * _phi(x), _uniform(-5, 5, 0.0), ())
    yield ("gelu", jo.gelu, {"approximate": "tanh"}, lambda x: x * _gelu_tanh_parts(x)[0],
           _gelu_tanh_d1, _gelu_tanh_d2, _cstep(_gelu_tanh_d2), _uniform(-5, 5, 0.0), ())
    for a in (1.0, 1.702):
        yield ("silu", jo.silu, {} if a == 1.0 else {"alpha": a},
               lambda x, a=a: x * _sigmoid(a * x), lambda x, a=a: _silu_d(x, a),
               lambda x, a=a: _silu_d2(x, a), _cstep(lambda x, a=a: _silu_d2(x, a)),
               _uniform(-6, 6, 0.0), ())
    yield ("softplus", jo.softplus, {}, _softplus64, _sigmoid,
           lambda x: _sigmoid(x) * (1 - _sigmoid(x)),
           lambda x: _sigmoid(x) * (1 - _sigmoid(x)) * (1 - 2 * _sigmoid(x)),
           _uniform(-8, 8, 0.0), ())
    for a in (1.0, 0.5):
        yield ("elu", jo.elu, {} if a == 1.0 else {"alpha": a},
               lambda x, a=a: np.where(x > 0, x, a * np.expm1(x)),
               lambda x, a=a: np.where(x > 0, 1.0, a * np.exp(x)),
               lambda x, a=a: np.where(x > 0, 0.0, a * np.exp(x)),
               lambda x, a=a: np.where(x > 0, 0.0, a * np.exp(x)),
               _uniform(-4, 3, 0.0), (0.0,))
    ga = _SELU_G * _SELU_A
    yield ("selu", jo.selu, {}, lambda x: np.where(x > 0, _SELU_G * x, ga * np.expm1(x)),
           lambda x: np.where(x > 0, _SELU_G, ga * np.exp(x)),
           lambda x: np.where(x > 0, 0.0, ga * np.exp(x)),
           lambda x: np.where(x > 0, 0.0, ga * np.exp(x)), _uniform(-4, 3, 0.0), (0.0,))
    for a in (1.0, 2.0, -1.5):
        yield ("celu", jo.celu, {} if a == 1.0 else {"alpha": a},
               lambda x, a=a: np.where(x > 0, x, a * np.expm1(x / a)),
               lambda x, a=a: np.where(x > 0, 1.0, np.exp(x / a)),
               lambda x, a=a: np.where(x > 0, 0.0, np.exp(x / a) / a),
               lambda x, a=a: np.where(x > 0, 0.0, np.exp(x / a) / a**2),
               _uniform(-3, 3, 0.0), (0.0,))
    # the corners are planted where a x + b is exact (+-2.5 for 0.2); for 1/6, whether
    # (1/6)(-3) + 0.5 rounds to 0 depends on an FMA: the corners only bound the samples
    for a, b, planted in ((0.2, 0.5, (-2.5, 2.5)), (1 / 6, 0.5, ())):
        lo, hi = -b / a, (1 - b) / a
        yield ("hard_sigmoid", jo.hard_sigmoid, {} if a == 0.2 else {"alpha": a, "beta": b},
               lambda x, a=a, b=b: np.clip(a * x + b, 0, 1),
               lambda x, a=a, lo=lo, hi=hi: np.where((x > lo) & (x < hi), a, 0.0),
               lambda x: _zeros(x), lambda x: _zeros(x), _uniform(-4, 4, *planted),
               (lo, hi))
    yield ("hard_swish", jo.hard_swish, {}, lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
           _hard_swish_d, lambda x: np.where((x > -3) & (x < 3), 1 / 3, 0.0),
           lambda x: _zeros(x), _uniform(-5, 5, -3.0, 3.0, 0.0), (-3.0, 3.0))
    yield ("mish", jo.mish, {}, lambda x: x * np.tanh(_softplus64(x)), _mish_d1, _mish_d2,
           _cstep(_mish_d2), _uniform(-5, 5, 0.0), ())
    yield ("log_sigmoid", jo.log_sigmoid, {}, lambda x: -_softplus64(-x),
           lambda x: 1 - _sigmoid(x), lambda x: -_sigmoid(x) * (1 - _sigmoid(x)),
           lambda x: -_sigmoid(x) * (1 - _sigmoid(x)) * (1 - 2 * _sigmoid(x)),
           _uniform(-8, 8, 0.0), ())


# measured at x = +-1 against the float64 references: mish'' 12.9 eps in float32 and mish'
# 4.8 in float64 (the one-division forms of its derivatives cancel a little), silu(1.702)''
# 4.1 eps in float64
_ULPS = {("mish", ()): 16.0, ("silu", (("alpha", 1.702),)): 8.0}


def _smooth_activation_cases():
    for name, op, attrs, ref, d1, d2, _, sample, kinks in _smooth_activation_rows():
        yield Case(name, op, attrs, ref, lambda x, d1=d1: (d1(x),),
                   lambda x, d2=d2: ((d2(x),),), sample, kinks=kinks,
                   ulps=_ULPS.get((name, tuple(attrs.items())), 4.0))


def _reads_x(name, op, attrs, d1, d2, d3, sample, kinks):
    """The gradient op (x, dy) -> dy * d1(x) of a forward op with derivatives d1, d2, d3."""
    return Case(f"{name}_gradient", op, attrs, lambda x, dy: dy * d1(x),
                lambda x, dy: (dy * d2(x), d1(x)),
                lambda x, dy: ((dy * d3(x), d2(x)), (d2(x), _zeros(x))),
                _with_dy(sample), kinks=kinks)


def _reads_y(name, op, attrs, g, g1, g2, forward, sample, kinks=()):
    """The gradient op (y, dy) -> dy * g(y), y = forward(x), with g's derivatives g1, g2."""
    return Case(f"{name}_gradient", op, attrs, lambda y, dy: dy * g(y),
                lambda y, dy: (dy * g1(y), g(y)),
                lambda y, dy: ((dy * g2(y), g1(y)), (g1(y), _zeros(y))),
                _with_dy(sample, forward), kinks=kinks)


def _smooth_activation_gradient_cases():
    rows = {(r[0], tuple(r[2].items())): r for r in _smooth_activation_rows()}
    for (name, _), (_, _, attrs, _, d1, d2, d3, sample, kinks) in rows.items():
        if name in ("gelu", "silu", "hard_swish", "mish", "softplus", "log_sigmoid"):
            yield _reads_x(name, getattr(jo, f"{name}_gradient"), attrs, d1, d2, d3, sample,
                           kinks)
    z = _zeros
    for a in (1.0, 0.5):
        yield _reads_y("elu", jo.elu_gradient, {"alpha": a},
                       lambda y, a=a: np.where(y > 0, 1.0, y + a),
                       lambda y: np.where(y > 0, 0.0, 1.0), z,
                       lambda x, a=a: np.where(x > 0, x, a * np.expm1(x)),
                       _uniform(-4, 3, 0.0), (0.0,))
    ga = _SELU_G * _SELU_A
    yield _reads_y("selu", jo.selu_gradient, {},
                   lambda y: np.where(y > 0, _SELU_G, y + ga),
                   lambda y: np.where(y > 0, 0.0, 1.0), z,
                   lambda x: np.where(x > 0, _SELU_G * x, ga * np.expm1(x)),
                   _uniform(-4, 3, 0.0), (0.0,))
    for a in (2.0, -1.5):
        yield _reads_y("celu", jo.celu_gradient, {"alpha": a},
                       lambda y, a=a: np.where(y > 0, 1.0, 1 + y / a),
                       lambda y, a=a: np.where(y > 0, 0.0, 1 / a), z,
                       lambda x, a=a: np.where(x > 0, x, a * np.expm1(x / a)),
                       _uniform(-3, 3, 0.0), (0.0,))
    yield _reads_y("hard_sigmoid", jo.hard_sigmoid_gradient, {"alpha": 0.2},
                   lambda y: np.where((y > 0) & (y < 1), 0.2, 0.0), z, z,
                   lambda x: np.clip(0.2 * x + 0.5, 0, 1), _uniform(-4, 4, -2.5, 2.5),
                   (0.0, 1.0))


def _glu_halves(x):
    n = x.shape[-1] // 2
    return x[..., :n], x[..., n:]


def _glu_cases():
    """GLU halves its last axis: a STRUCTURED case (complex-step Jacobians of ``ref``)."""
    def sample(rng, shape):
        return (rng.uniform(-4, 4, size=shape),)

    def glu_ref(x):
        a, b = _glu_halves(x)
        return a / (1 + np.exp(-b))

    def glu_vjp(x, w):
        a, b = _glu_halves(x)
        s = _sigmoid(b)
        return (np.concatenate([w * s, w * a * s * (1 - s)], -1),)

    yield Case("glu", jo.glu, {}, glu_ref, None, None, sample, shape=(8, 6), vjp_ref=glu_vjp)

    def sample_dy(rng, shape):
        return (rng.uniform(-4, 4, size=shape),
                rng.uniform(-2, 2, size=(*shape[:-1], shape[-1] // 2)))

    def grad_ref(x, dy):
        a, b = _glu_halves(x)
        s = 1 / (1 + np.exp(-b))
        return np.concatenate([dy * s, dy * a * s * (1 - s)], -1)

    def grad_vjp(x, dy, w):
        a, b = _glu_halves(x)
        wa, wb = _glu_halves(w)
        s = _sigmoid(b)
        ds = s * (1 - s)
        dx = np.concatenate([wb * dy * ds, wa * dy * ds + wb * dy * a * ds * (1 - 2 * s)], -1)
        return dx, wa * s + wb * a * ds

    yield Case("glu_gradient", jo.glu_gradient, {}, grad_ref, None, None, sample_dy,
               shape=(8, 6), vjp_ref=grad_vjp)


# ------------------------------------------------------- STRUCTURED: labels, channels, batch
# References are complex-safe (no abs/max of the differentiated values but through .real),
# written from the ONNX definitions.  Shapes: (N, C, d) = (8, 3, 3), so that one row under
# vmap, (3, 3), is again a valid (N, C) input with C = 3 classes/channels.

_STRUCT_SHAPE = (8, 3, 3)


def _log_softmax1(s):
    m = np.max(s.real, axis=1, keepdims=True)
    return s - m - np.log(np.sum(np.exp(s - m), axis=1, keepdims=True))


def _entry_weights(labels, weights, ignore_index):
    valid = np.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    safe = np.where(valid, labels, 0)
    w = np.ones(labels.shape) if weights is None else weights[safe]
    return np.where(valid, w, 0.0), safe


def _onehot1(safe, c):
    return (safe[:, None] == np.arange(c).reshape((1, c) + (1,) * (safe.ndim - 1))) * 1.0


def _reduce_ref(loss, w, reduction):
    if reduction == "none":
        return loss
    if reduction == "mean":  # jaxops' policy: a fully ignored batch has mean 0
        return loss.sum() / w.sum() if w.sum() else 0 * loss.sum()
    return loss.sum()


def _coef(labels, weights, wout, ignore_index, reduction):
    """d (wout . reduced loss) / d loss_n."""
    w, safe = _entry_weights(labels, weights, ignore_index)
    c = w * wout if reduction == "none" else w * np.ravel(wout)[0]
    if reduction == "mean":
        c = c / w.sum() if w.sum() else 0 * c
    return c, safe


def _labelled_cases():
    def sample(rng, shape, logits=True):
        n, c = shape[0], shape[1]
        s = rng.uniform(-3, 3, size=shape)
        labels = rng.integers(0, c, size=(n, *shape[2:]))
        labels.reshape(-1)[:2] = (1, 1)  # ignore_index=1 occurs, and in the first rows
        return (s if logits else _log_softmax1(s)), labels, rng.uniform(0.5, 2, size=(c,))

    variants = (("none", 1, True), ("mean", 1, True), ("sum", None, False),
                ("mean", None, False))
    for reduction, ignore, weighted in variants:
        attrs = {"ignore_index": ignore, "reduction": reduction}
        wsel = (lambda w: w) if weighted else (lambda w: None)

        def sce(s, t, w, a=attrs, wsel=wsel):
            return jo.softmax_cross_entropy(s, t, wsel(w), **a)

        def sce_ref(s, t, w, ignore=ignore, reduction=reduction, wsel=wsel):
            ew, safe = _entry_weights(t, wsel(w), ignore)
            picked = np.take_along_axis(_log_softmax1(s), safe[:, None], 1)[:, 0]
            return _reduce_ref(-picked * ew, ew, reduction)

        def sce_vjp(s, t, w, wout, ignore=ignore, reduction=reduction, wsel=wsel):
            coef, safe = _coef(t, wsel(w), wout, ignore, reduction)
            return ((np.exp(_log_softmax1(s)) - _onehot1(safe, s.shape[1])) * coef[:, None],)

        yield Case(f"softmax_cross_entropy[{'w' if weighted else ''}]", sce, {},
                   sce_ref, None, None, sample, ints=(1,), constant=(2,), unbatched=(2,),
                   rowwise=False, shape=_STRUCT_SHAPE, vjp_ref=sce_vjp)

        def nll(x, t, w, a=attrs, wsel=wsel):
            return jo.nll_loss(x, t, wsel(w), **a)

        def nll_ref(x, t, w, ignore=ignore, reduction=reduction, wsel=wsel):
            ew, safe = _entry_weights(t, wsel(w), ignore)
            return _reduce_ref(-np.take_along_axis(x, safe[:, None], 1)[:, 0] * ew, ew,
                               reduction)

        def nll_vjp(x, t, w, wout, ignore=ignore, reduction=reduction, wsel=wsel):
            coef, safe = _coef(t, wsel(w), wout, ignore, reduction)
            return (-_onehot1(safe, x.shape[1]) * coef[:, None] + 0 * x,)

        yield Case(f"nll_loss[{'w' if weighted else ''}]", nll, {}, nll_ref, None, None,
                   lambda rng, shape: sample(rng, shape, logits=False), ints=(1,),
                   constant=(2,), unbatched=(2,), rowwise=False, shape=_STRUCT_SHAPE,
                   vjp_ref=nll_vjp)

    # both outputs at once: the loss and log_prob, flattened into one vector
    def sce_both(s, t, w):
        loss, logp = jo.softmax_cross_entropy(s, t, w, ignore_index=1, reduction="none",
                                              return_log_prob=True)
        return jnp.concatenate([loss.ravel(), logp.ravel()])

    def sce_both_ref(s, t, w):
        ew, safe = _entry_weights(t, w, 1)
        logp = _log_softmax1(s)
        loss = -np.take_along_axis(logp, safe[:, None], 1)[:, 0] * ew
        return np.concatenate([loss.ravel(), logp.ravel()])

    def sce_both_vjp(s, t, w, wout):
        nl = t.size
        wl, wp = np.reshape(wout[:nl], t.shape), np.reshape(wout[nl:], s.shape)
        coef, safe = _coef(t, w, wl, 1, "none")
        p = np.exp(_log_softmax1(s))
        d_logp = wp - p * wp.sum(1, keepdims=True)
        return ((p - _onehot1(safe, s.shape[1])) * coef[:, None] + d_logp,)

    yield Case("softmax_cross_entropy[log_prob]", sce_both, {}, sce_both_ref, None, None,
               sample, ints=(1,), constant=(2,),
               unbatched=(2,), rowwise=False, shape=_STRUCT_SHAPE, vjp_ref=sce_both_vjp)


def _labelled_axis_smoothing_cases():
    """The jaxops extensions of the labelled losses: the class axis (axis=-1, (B, T, C) scores
    with (B, T) labels) and softmax_cross_entropy's label smoothing, from PyTorch's documented
    CrossEntropyLoss formula: per entry (1 - eps) w_l (-log p_l) + eps / C sum_c w_c (-log p_c),
    0 where ignored, the mean divided by the summed label weights of the kept entries.  The
    references move the class axis to 1 and use the axis-1 helpers above."""
    def sample(rng, shape, axis, logits=True):
        c = shape[axis]
        s = rng.uniform(-3, 3, size=shape)
        labels = rng.integers(0, c, size=tuple(d for k, d in enumerate(shape)
                                               if k != axis % len(shape)))
        labels.reshape(-1)[:2] = (1, 1)  # ignore_index=1 occurs, and in the first rows
        if not logits:
            s = np.moveaxis(_log_softmax1(np.moveaxis(s, axis, 1)), 1, axis)
        return s, labels, rng.uniform(0.5, 2, size=(c,))

    def ref(s, t, w, *, ignore, reduction, axis, eps, logits=True):
        x = np.moveaxis(s, axis, 1)
        logp = _log_softmax1(x) if logits else x
        ew, safe = _entry_weights(t, w, ignore)
        picked = np.take_along_axis(logp, safe[:, None], 1)[:, 0]
        loss = -picked * ew
        if eps:
            c = x.shape[1]
            wc = np.ones(c) if w is None else w
            kept = np.ones(t.shape) if ignore is None else (t != ignore) * 1.0
            smooth = -np.sum(logp * wc.reshape((1, c) + (1,) * (t.ndim - 1)), axis=1)
            loss = (1 - eps) * loss + eps / c * smooth * kept
        return _reduce_ref(loss, ew, reduction)

    def vjp(s, t, w, wout, *, ignore, reduction, axis, eps, logits=True):
        x = np.moveaxis(s, axis, 1)
        c = x.shape[1]
        coef, safe = _coef(t, w, wout, ignore, reduction)
        onehot = _onehot1(safe, c)
        if not logits:  # nll: d/dx = -onehot * coef
            return (np.moveaxis(-onehot * coef[:, None] + 0 * x, 1, axis),)
        p = np.exp(_log_softmax1(x))
        d = (p - onehot) * coef[:, None]
        if eps:
            wc = np.ones(c) if w is None else w
            # d total / d loss_n without the entry's weight, 0 where ignored
            ew, _ = _entry_weights(t, w, ignore)
            kept = np.ones(t.shape) if ignore is None else (t != ignore) * 1.0
            if reduction == "none":
                g = wout * kept
            elif reduction == "sum":
                g = np.ravel(wout)[0] * kept
            else:
                g = np.ravel(wout)[0] / ew.sum() * kept if ew.sum() else 0 * kept
            smooth = p * wc.sum() - wc.reshape((1, c) + (1,) * (t.ndim - 1))
            d = (1 - eps) * d + eps / c * smooth * g[:, None]
        return (np.moveaxis(d, 1, axis),)

    forms = (  # (op, reduction, ignore_index, weighted, axis, label_smoothing)
        ("sce", "none", 1, True, -1, 0.0), ("sce", "mean", None, False, -1, 0.0),
        ("nll", "none", 1, True, -1, 0.0), ("nll", "mean", 1, False, -1, 0.0),
        ("sce", "mean", 1, True, 1, 0.2), ("sce", "sum", None, True, -1, 0.1),
        ("sce", "none", 1, False, 1, 0.3), ("sce", "mean", None, False, -1, 0.25),
        ("sce", "sum", 1, True, 1, 1.0),
    )
    for op, reduction, ignore, weighted, axis, eps in forms:
        logits = op == "sce"
        kw = dict(ignore=ignore, reduction=reduction, axis=axis, eps=eps, logits=logits)
        wsel = (lambda w: w) if weighted else (lambda w: None)
        attrs = {"ignore_index": ignore, "reduction": reduction, "axis": axis}
        if logits:
            attrs["label_smoothing"] = eps

        def f(s, t, w, attrs=attrs, wsel=wsel, logits=logits):
            fn = jo.softmax_cross_entropy if logits else jo.nll_loss
            return fn(s, t, wsel(w), **attrs)

        def f_ref(s, t, w, kw=kw, wsel=wsel):
            return ref(s, t, wsel(w), **kw)

        def f_vjp(s, t, w, wout, kw=kw, wsel=wsel):
            return vjp(s, t, wsel(w), wout, **kw)

        tag = ",".join(x for x in ("w" if weighted else "", f"axis={axis}",
                                    f"eps={eps}" if logits else "") if x)
        name = "softmax_cross_entropy" if logits else "nll_loss"
        yield Case(f"{name}[{tag}]", f, {}, f_ref, None, None,
                   lambda rng, shape, axis=axis, logits=logits: sample(rng, shape, axis, logits),
                   ints=(1,), constant=(2,), unbatched=(2,), rowwise=False,
                   shape=_STRUCT_SHAPE, vjp_ref=f_vjp)


def _linear_cross_entropy_cases():
    n, hidden, v = 6, 3, 5

    def sample(rng, shape):  # (h, w, labels, class weights); the shape is the op's own
        labels = rng.integers(0, v, size=(n,))
        labels[:2] = (1, 1)  # ignore_index=1 occurs
        return (rng.uniform(-2, 2, (n, hidden)), rng.uniform(-2, 2, (hidden, v)), labels,
                rng.uniform(0.5, 2, (v,)))

    for reduction, ignore, weighted in (("mean", 1, True), ("sum", None, False)):
        wsel = (lambda w: w) if weighted else (lambda w: None)

        def lce(h, w, t, wts, reduction=reduction, ignore=ignore, wsel=wsel):
            return jo.linear_cross_entropy(h, w, t, wsel(wts), ignore_index=ignore,
                                           reduction=reduction, chunk_size=4)

        def lce_ref(h, w, t, wts, reduction=reduction, ignore=ignore, wsel=wsel):
            ew, safe = _entry_weights(t, wsel(wts), ignore)
            picked = np.take_along_axis(_log_softmax1(h @ w), safe[:, None], 1)[:, 0]
            return _reduce_ref(-picked * ew, ew, reduction)

        def lce_vjp(h, w, t, wts, wout, reduction=reduction, ignore=ignore, wsel=wsel):
            coef, safe = _coef(t, wsel(wts), wout, ignore, reduction)
            g = (np.exp(_log_softmax1(h @ w)) - _onehot1(safe, v)) * coef[:, None]
            return g @ w.T, h.T @ g

        yield Case(f"linear_cross_entropy[{'w' if weighted else ''}]", lce, {}, lce_ref,
                   None, None, sample, ints=(2,), constant=(3,), rowwise=False,
                   batching=False, vjp_ref=lce_vjp)


def _clip_bounds_cases():
    """Clip with its bounds as differentiated inputs (scalars): away from the bounds, where
    the complex step sees one branch (the conventions at the bounds: test_numerics)."""
    def clip_ref(x, lo, hi):
        y = np.where(x.real < lo.real, lo, x)
        return np.where(y.real > hi.real, hi, y)

    def clip_vjp(x, lo, hi, wout):
        below, above = x.real < lo.real, x.real > hi.real
        return (np.where(below | above, 0.0, wout), np.sum(np.where(below, wout, 0.0)),
                np.sum(np.where(above, wout, 0.0)))

    def sample(rng, shape):
        x = rng.uniform(-3, 3, size=shape)
        x = np.where(np.abs(np.abs(x) - 1) < 0.05, x + 0.1, x)  # away from the bounds
        return x, np.float64(-1.0), np.float64(1.0)

    yield Case("clip[bounds]", jo.clip, {}, clip_ref, None, None, sample, rowwise=False,
               unbatched=(1, 2), vjp_ref=clip_vjp)


def _cross_entropy_cases():
    def probs(rng, shape):
        p = rng.uniform(0.05, 1, size=shape)
        t = rng.uniform(0, 1, size=shape)
        t.reshape(-1)[:2] = 0.0  # 0 log p = 0
        return p / p.sum(-1, keepdims=True), t / t.sum(-1, keepdims=True)

    def logits(rng, shape):
        p, t = probs(rng, shape)
        return np.log(p) + rng.uniform(-1, 1, size=shape[:-1] + (1,)), t

    for from_logits, sample in ((False, probs), (True, logits)):
        for reduction in ("none", "mean"):
            def ref(x, t, fl=from_logits, reduction=reduction):
                logp = x - np.max(x.real, -1, keepdims=True) if fl else np.log(x)
                if fl:
                    logp = logp - np.log(np.sum(np.exp(logp), -1, keepdims=True))
                loss = -np.sum(np.where(t == 0, 0.0, t * logp), -1)
                return loss if reduction == "none" else loss.mean()

            def vjp(x, t, wout, fl=from_logits, reduction=reduction):
                # the loss is linear in the targets: d/dt = -log p (as optax, PyTorch)
                wo = wout[..., None] if reduction == "none" else np.ravel(wout)[0] / (
                    x.size // x.shape[-1])
                if fl:
                    s = x - np.max(x.real, -1, keepdims=True)
                    logp = s - np.log(np.sum(np.exp(s), -1, keepdims=True))
                    return (np.exp(logp) * t.sum(-1, keepdims=True) - t) * wo, -logp * wo
                return np.where(t == 0, 0.0, -t / x) * wo, -np.log(x) * wo

            yield Case("cross_entropy", jo.cross_entropy,
                       {"from_logits": from_logits, "reduction": reduction}, ref, None, None,
                       sample, rowwise=reduction == "none", vjp_ref=vjp)


def _bn_axes(x):
    """The reduced axes and a (C,) -> broadcastable reshape for x of shape (N, C, ...)."""
    return (0, *range(2, x.ndim)), (lambda v: v.reshape((1, -1) + (1,) * (x.ndim - 2)))


def _bn_ref(x, scale, bias, mean, var, training, momentum=0.9, eps=1e-5):
    axes, ch = _bn_axes(x)
    if training:
        mu = x.mean(axes)
        sigma2 = ((x - ch(mu)) ** 2).mean(axes)
        new_mean, new_var = momentum * mean + (1 - momentum) * mu, (
            momentum * var + (1 - momentum) * sigma2)
    else:
        mu, sigma2, new_mean, new_var = mean, var, mean, var
    y = ch(scale) * (x - ch(mu)) / np.sqrt(ch(sigma2) + eps) + ch(bias)
    return y, new_mean, new_var, mu, sigma2


def _bn_vjp(x, scale, bias, mean, var, wy, wm, wv, training, momentum=0.9, eps=1e-5):
    """Closed-form VJP of (y, new_mean, new_var) with cotangents (wy, wm, wv)."""
    axes, ch = _bn_axes(x)
    _, _, _, mu, sigma2 = _bn_ref(x, scale, bias, mean, var, training, momentum, eps)
    inv = 1 / np.sqrt(sigma2 + eps)
    xhat = (x - ch(mu)) * ch(inv)
    dbias, dscale = wy.sum(axes), (wy * xhat).sum(axes)
    m = x.size // x.shape[1]
    if training:
        dx = ch(scale * inv) * (wy - ch(dbias) / m - xhat * ch(dscale) / m)
        dx = dx + (1 - momentum) * (ch(wm) + 2 * (x - ch(mu)) * ch(wv)) / m
        return dx, dscale, dbias, momentum * wm, momentum * wv
    dmean = -dbias * scale * inv + wm
    dvar = -0.5 * dscale * scale * inv**2 + wv
    return ch(scale * inv) * wy, dscale, dbias, dmean, dvar


def _batch_norm_cases():
    def sample(rng, shape):
        c = shape[1]
        return (rng.normal(0.5, 2, size=shape), rng.uniform(0.5, 2, size=c),
                rng.normal(size=c), rng.normal(size=c), rng.uniform(0.5, 2, size=c))

    for training in (True, False):
        def bn_y(*a, tr=training):
            return jo.batch_norm(*a, training=tr)[0]

        def bn_stats(*a, tr=training):
            _, m, v = jo.batch_norm(*a, training=tr)
            return jnp.concatenate([m, v])

        def y_ref(*a, tr=training):
            return _bn_ref(*a, tr)[0]

        def stats_ref(*a, tr=training):
            return np.concatenate(_bn_ref(*a, tr)[1:3])

        def y_vjp(*a, tr=training):
            *xs, w = a
            c = xs[1].shape[0]
            return _bn_vjp(*xs, w, np.zeros(c), np.zeros(c), tr)

        def stats_vjp(*a, tr=training):
            *xs, w = a
            c = xs[1].shape[0]
            return _bn_vjp(*xs, np.zeros(xs[0].shape), w[:c], w[c:], tr)

        mode = "train" if training else "eval"
        # (N, C, d1, d2) = (8, 3, 3, 4): a row under vmap normalizes over M = 3 * 4 samples
        # (with M = 3, dx is a rank-1 projection whose entries cancel to ~5 eps in float64)
        common = dict(unbatched=(1, 2, 3, 4), rowwise=False, shape=(8, 3, 3, 4))
        yield Case(f"batch_norm[Y,{mode}]", bn_y, {}, y_ref, None, None, sample,
                   vjp_ref=y_vjp, **common)
        yield Case(f"batch_norm[stats,{mode}]", bn_stats, {}, stats_ref, None, None, sample,
                   vjp_ref=stats_vjp, **common)


def _sum_to(g, shape):
    """``g`` summed over the axes along which ``shape`` was broadcast to ``g.shape``."""
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape)
                                      if n == 1 and g.shape[lead + i] != 1)
    return g.sum(axes, keepdims=True).reshape(shape)


def _standardized(x, axes, eps):
    """(x - mean) / sqrt(var + eps) over ``axes`` (population variance), and the 1/sqrt."""
    mu = x.mean(axes, keepdims=True)
    inv = 1 / np.sqrt(((x - mu) ** 2).mean(axes, keepdims=True) + eps)
    return (x - mu) * inv, inv


def _standardized_vjp(xhat, inv, g, axes, centred=True):
    """d/dx of sum(g * xhat) for xhat = (x - mean) r (centred) or x r (RMS), r as above."""
    mean = lambda v: v.mean(axes, keepdims=True)  # noqa: E731
    return inv * ((g - mean(g) if centred else g) - xhat * mean(g * xhat))


def _layer_norm_cases():
    """LayerNormalization-17 and RMSNormalization-23 from their definitions: statistics over
    the axes axis..rank-1 of each sample, parameters broadcast to X (ONNX unidirectional)."""
    def sample(shape_scale, with_bias=True):
        def draw(rng, shape):
            x = rng.normal(0.5, 2, size=shape)
            out = [x, rng.uniform(0.5, 2, size=shape_scale)]
            if with_bias:
                out.append(rng.normal(size=shape_scale))
            return tuple(out)

        return draw

    # (8, 3, 4): a row under vmap, (3, 4), normalizes over the same axes for axis=-1 and -2
    for attrs, scale_shape, with_bias in (({}, (4,), True),
                                          ({"axis": -2, "epsilon": 1e-3}, (3, 1), False)):
        axis, eps = attrs.get("axis", -1), attrs.get("epsilon", 1e-5)

        def ln_ref(x, s, b=None, axis=axis, eps=eps):
            axes = tuple(range(axis % x.ndim, x.ndim))
            y = _standardized(x, axes, eps)[0] * s
            return y if b is None else y + b

        def ln_vjp(x, s, *rest, axis=axis, eps=eps):
            *b, w = rest
            axes = tuple(range(axis % x.ndim, x.ndim))
            xhat, inv = _standardized(x, axes, eps)
            out = (_standardized_vjp(xhat, inv, w * s, axes), _sum_to(w * xhat, s.shape))
            return out + tuple(_sum_to(w, bb.shape) for bb in b)

        yield Case("layer_norm", jo.layer_norm, attrs, ln_ref, None, None,
                   sample(scale_shape, with_bias), vjp_ref=ln_vjp, shape=(8, 3, 4),
                   unbatched=(1, 2) if with_bias else (1,), rowwise=False)

    def rms_ref(x, s, eps=1e-5):
        inv = 1 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
        return x * inv * s

    def rms_vjp(x, s, w, eps=1e-5):
        inv = 1 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
        xhat = x * inv
        return (_standardized_vjp(xhat, inv, w * s, (-1,), centred=False),
                _sum_to(w * xhat, s.shape))

    yield Case("rms_norm", jo.rms_norm, {}, rms_ref, None, None, sample((4,), False),
               vjp_ref=rms_vjp, shape=(8, 3, 4), unbatched=(1,), rowwise=False)


def _group_norm_cases():
    """GroupNormalization-21: per sample, groups of C / G channels (axis 1) with their
    spatial axes; per-channel scale and bias."""
    groups = 2

    def grouped(x):
        return x.reshape(x.shape[0], groups, -1)

    def gn_ref(x, s, b):
        _, ch = _bn_axes(x)
        return _standardized(grouped(x), (2,), 1e-5)[0].reshape(x.shape) * ch(s) + ch(b)

    def gn_vjp(x, s, b, w):
        axes, ch = _bn_axes(x)
        xhat, inv = _standardized(grouped(x), (2,), 1e-5)
        dx = _standardized_vjp(xhat, inv, grouped(w * ch(s)), (2,)).reshape(x.shape)
        return dx, (w * xhat.reshape(x.shape)).sum(axes), w.sum(axes)

    def sample(rng, shape):
        c = shape[1]
        return rng.normal(0.5, 2, size=shape), rng.uniform(0.5, 2, size=c), rng.normal(size=c)

    # (N, C, d1, d2) = (8, 4, 4, 4): a row under vmap, (4, 4, 4), is again (N, C, d) with
    # C = 4 channels, whose groups have 2 * 4 elements (a group of 2 normalizes to +-1
    # whatever x is: its dx cancels to rounding noise)
    yield Case("group_norm", jo.group_norm, {"num_groups": groups}, gn_ref, None, None, sample,
               vjp_ref=gn_vjp, shape=(8, 4, 4, 4), unbatched=(1, 2), rowwise=False)


#: Per-channel/per-class parameters of the ops over axis 1: shape (C,).
_PER_CHANNEL = {"scale", "B", "bias", "input_mean", "input_var", "saved_mean", "saved_var",
                "weights", "weight"}
#: Ops over a channel axis 1 whose per-channel parameters ONNX types as T, like X (so no type
#: parameter tells them apart from the data): named here.
_CHANNEL_OPS = {"GroupNormalization", "GroupNormalizationGradient"}


def structured(schema) -> bool:
    """An op over a class/channel axis 1 whose inputs do not all share one shape."""
    return (schema.name in _CHANNEL_OPS
            or any(p.type_param in ("Tind", "T1") for p in schema.inputs))


def example_attrs(schema) -> dict:
    """Values for an op's required attributes (which have no default) that fit the example
    shapes: ``num_groups=1`` divides any channel count."""
    values = {"num_groups": 1}
    return {a.name: values[a.name] for a in schema.attributes if a.required}


def _loss_shape(schema, shape, attrs):
    """The shape of a loss on inputs of ``shape``: () when reduced, else per entry (labelled:
    without axis 1; over an ``axis``: without the last axis; elementwise: ``shape``)."""
    if attrs.get("reduction", "mean") != "none":
        return ()
    if structured(schema):
        return (shape[0], *shape[2:])
    if any(a.name == "axis" for a in schema.attributes):
        return shape[:-1]
    return shape


#: A PRNG key input (Dropout's): a raw uint32 key, as jax.random.PRNGKey makes.
_RAW_KEY = __import__("jax").ShapeDtypeStruct((2,), "uint32")


def _forward_output_shape(schema, shape, dtype, attrs):
    """The shape of a gradient op's dY: its forward op's output for an input of ``shape``
    (GLU halves an axis), ``shape`` itself for the ops whose output is shaped as the input."""
    import jax

    forward = next((s for s in jo.schema.builtin_schemas() if s.gradient == schema.name), None)
    if forward is None or forward.identical_type_and_shape or len(forward.inputs) != 1:
        return shape
    return forward.infer(jax.ShapeDtypeStruct(shape, dtype), **attrs)[0].shape


def example_avals(schema, shape=(7,), dtype="float32", **attrs):
    """ShapeDtypeStructs that satisfy an op's schema.  Same-shape ops: every tensor input has
    ``shape`` (scalars ()).  Ops over axis 1 (``structured``): the data input has ``shape`` =
    (N, C, ...), labels (N, ...) int32, per-channel inputs (C,), and a gradient op's ``dloss``
    the loss's shape for ``attrs``."""
    import jax

    if not structured(schema):
        dy = _forward_output_shape(schema, shape, dtype, attrs)
        return tuple(
            _RAW_KEY if p.type_param == "K" else jax.ShapeDtypeStruct(
                () if p.scalar else _loss_shape(schema, shape, attrs) if p.name == "dloss"
                else dy if p.name == "dY" else shape, dtype) for p in schema.inputs)
    avals = []
    for p in schema.inputs:
        if p.type_param == "K":
            avals.append(_RAW_KEY)
        elif p.type_param == "Tind":
            avals.append(jax.ShapeDtypeStruct((shape[0], *shape[2:]), "int32"))
        elif p.name in _PER_CHANNEL:
            avals.append(jax.ShapeDtypeStruct((shape[1],), dtype))
        elif p.name == "dloss":
            avals.append(jax.ShapeDtypeStruct(_loss_shape(schema, shape, attrs), dtype))
        else:
            avals.append(jax.ShapeDtypeStruct(shape, dtype))
    return tuple(avals)


def example_args(schema, shape=(7,), dtype="float32", value=0.5, **attrs):
    """Arguments that satisfy an op's schema (``example_avals``) filled with ``value`` (labels
    with class 1)."""
    import jax.numpy as jnp

    return tuple(jnp.full(a.shape, 1 if a.dtype == jnp.int32 else value, a.dtype)
                 for a in example_avals(schema, shape, dtype, **attrs))


CASES: tuple[Case, ...] = (
    *_relu_cases(), *_softsign_log_cases(), *_smooth_cases(), *_clip_prelu_cases(),
    *_softmax_cases(), *_loss_cases(), *_gradient_cases(), *_smooth_gradient_cases(),
    *_smooth_activation_cases(), *_smooth_activation_gradient_cases(),
)

STRUCTURED: tuple[Case, ...] = (
    *_labelled_cases(), *_labelled_axis_smoothing_cases(), *_cross_entropy_cases(),
    *_batch_norm_cases(), *_linear_cross_entropy_cases(), *_clip_bounds_cases(),
    *_layer_norm_cases(), *_group_norm_cases(), *_dropout_cases(), *_glu_cases(),
)
