"""The transform matrix: every op x dtype x transform, values and derivatives against the
float64 NumPy references of tests/reference.py.

Tolerances are in units of the dtype's epsilon (``eps``): the ops compute half precision in
float32 and round once, each transform adds at most a rounding or two (the cotangent product,
the sum over inputs in jvp and grad-of-grad), so ``TOL_ULPS`` eps bounds the error with
margin.  Largest errors measured over the whole matrix (|error| / max(|ref|, 1)), first
order: 0.7 eps bfloat16, 0.8 eps float16, 2.5 eps float32, 3 eps float64 (7.7 eps for the
mse jvp, whose two terms of size ~18 cancel: within 4 eps of the terms, see ``scale``);
second order: up to 8 eps (tanh'' in float64, see TOL_ULPS_SECOND_ORDER).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from reference import CASES, Case

DTYPES = ("float32", "bfloat16", "float16", "float64")
TOL_ULPS = 4
# Second derivatives of the ops whose gradient op reads Y (tanh'' = -2y(1-y^2)) inherit the
# cancellation of 1 - y^2 near |y| = 1: measured up to 8 eps (tanh'' in float64).
TOL_ULPS_SECOND_ORDER = 16
SECOND_ORDER = ("grad_grad", "hessian")
SHAPE = (8, 3)  # leading 8: one row per device in the sharded case


def _eps(dtype):
    return float(jnp.finfo(dtype).eps)


def _context(dtype):
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def _inputs(case: Case, dtype, seed=0):
    """Inputs in ``dtype`` and the same values in float64 for the reference, plus a
    cotangent ``w`` and tangents/second cotangents ``ts``."""
    rng = np.random.default_rng(seed)
    raw = case.sample(rng, SHAPE)
    xs = tuple(jnp.asarray(r, dtype) for r in raw)
    xs64 = tuple(np.asarray(x, np.float64) for x in xs)
    w = jnp.asarray(rng.uniform(-2, 2, SHAPE), dtype)
    ts = tuple(jnp.asarray(rng.uniform(-2, 2, SHAPE), dtype) for _ in raw)
    return xs, xs64, w, ts


def _close(actual, expected, dtype, what, ulps=TOL_ULPS, scale=1.0):
    """|actual - expected| <= ulps eps (|expected| + max(scale, 1)); ``scale`` is the size of
    the terms a reference sums (a jvp adds J_i t_i over inputs), so cancellation between
    them is not held against the op."""
    tol = ulps * _eps(dtype)
    actual = np.asarray(actual, np.float64)
    bound = tol * (np.abs(expected) + np.maximum(scale, 1.0))
    err = np.abs(actual - expected)
    bad = ~(err <= bound) & ~(np.isnan(actual) & np.isnan(expected))
    assert actual.shape == np.shape(expected), (what, actual.shape, np.shape(expected))
    assert not bad.any(), (
        f"{what}: {bad.sum()} of {bad.size} off; worst at {np.argwhere(bad)[0].tolist()}: "
        f"got {actual[bad][0]!r}, want {np.asarray(expected)[bad][0]!r}, "
        f"error/eps {float(np.max(err[bad] / _eps(dtype))):.1f}")


def _f64(a):
    return np.asarray(a, np.float64)


def _flat(a):
    return _f64(a).ravel()


def _vjp_ref(case, xs64, w):
    """w^T J[i], shaped like input i."""
    return [(_flat(w) @ j).reshape(x.shape) for j, x in
            zip(case.jacobians(*xs64), xs64, strict=True)]


class Summed(np.ndarray):
    """A reference that is a sum of terms, carrying the size of those terms (``scale``)."""


def _summed(total, terms_abs):
    out = np.asarray(total).view(Summed)
    out.scale = terms_abs
    return out


def _jvp_ref(case, xs64, ts):
    """sum_i J[i] t_i, shaped like the output."""
    jacs = case.jacobians(*xs64)
    out = sum(j @ _flat(t) for j, t in zip(jacs, ts, strict=True))
    size = sum(np.abs(j) @ np.abs(_flat(t)) for j, t in zip(jacs, ts, strict=True))
    shape = xs64[0].shape
    return _summed(out.reshape(shape), size.reshape(shape))


def _hess_w(case, xs64, w):
    """d2 sum(w * out) / d input_i d input_j, as (size_i, size_j) matrices."""
    return [[np.einsum("o,oab->ab", _flat(w), h) for h in row] for row in case.hessians(*xs64)]


def _weighted_loss(case, w):
    return lambda *xs: jnp.sum(case(*xs) * w)


def _argnums(xs):
    return tuple(range(len(xs)))


def _pairs(computed, expected):
    return list(zip(computed, expected, strict=True))


# Each transform returns (computed, expected) pairs, computed from jaxops, expected from the
# float64 reference.
def t_jit(case, xs, xs64, w, ts):
    return [(jax.jit(case)(*xs), case.ref(*xs64))]


def t_vmap(case, xs, xs64, w, ts):
    return [(jax.vmap(case)(*xs), case.ref(*xs64))]


def t_grad(case, xs, xs64, w, ts):
    g = jax.grad(_weighted_loss(case, w), argnums=_argnums(xs))(*xs)
    return _pairs(g, _vjp_ref(case, xs64, w))


def t_vjp(case, xs, xs64, w, ts):
    y, vjp_fn = jax.vjp(case, *xs)
    return [(y, case.ref(*xs64)), *_pairs(vjp_fn(w), _vjp_ref(case, xs64, w))]


def t_grad_grad(case, xs, xs64, w, ts):
    argnums = _argnums(xs)
    first = jax.grad(_weighted_loss(case, w), argnums=argnums)

    def second(*xs):
        return sum(jnp.sum(g * t) for g, t in zip(first(*xs), ts, strict=True))

    g2 = jax.grad(second, argnums=argnums)(*xs)
    hw = _hess_w(case, xs64, w)
    expected = [
        _summed(sum(_flat(ts[i]) @ hw[i][j] for i in argnums).reshape(xs64[j].shape),
                sum(np.abs(_flat(ts[i])) @ np.abs(hw[i][j]) for i in argnums)
                .reshape(xs64[j].shape))
        for j in argnums
    ]
    return _pairs(g2, expected)


def t_jvp(case, xs, xs64, w, ts):
    y, t_out = jax.jvp(case, xs, ts)
    return [(y, case.ref(*xs64)), (t_out, _jvp_ref(case, xs64, ts))]


def t_linearize(case, xs, xs64, w, ts):
    y, f_lin = jax.linearize(case, *xs)
    return [(y, case.ref(*xs64)), (f_lin(*ts), _jvp_ref(case, xs64, ts))]


def _t_jacobian(jac):
    def t(case, xs, xs64, w, ts):
        jacs = jac(case, argnums=_argnums(xs))(*xs)
        shape = xs64[0].shape
        return _pairs(jacs, [j.reshape(shape + x.shape) for j, x in
                             zip(case.jacobians(*xs64), xs64, strict=True)])

    return t


def t_hessian(case, xs, xs64, w, ts):
    argnums = _argnums(xs)
    h = jax.hessian(_weighted_loss(case, w), argnums=argnums)(*xs)
    hw = _hess_w(case, xs64, w)
    return [(h[i][j], hw[i][j].reshape(xs64[i].shape + xs64[j].shape))
            for i in argnums for j in argnums]


def t_vmap_grad(case, xs, xs64, w, ts):
    def row_loss(*args):
        *row, w_row = args
        return jnp.sum(case(*row) * w_row)

    g = jax.vmap(jax.grad(row_loss, argnums=_argnums(xs)))(*xs, w)
    return _pairs(g, _vjp_ref(case, xs64, w))


def t_grad_vmap(case, xs, xs64, w, ts):
    g = jax.grad(lambda *xs: jnp.sum(jax.vmap(case)(*xs) * w), argnums=_argnums(xs))(*xs)
    return _pairs(g, _vjp_ref(case, xs64, w))


def t_scan(case, xs, xs64, w, ts):
    def loss(*xs):
        def body(carry, row):
            *row_xs, w_row = row
            y = case(*row_xs)
            return carry + jnp.sum(y * w_row).astype(jnp.float32), y

        total, ys = jax.lax.scan(body, jnp.float32(0), (*xs, w))
        return total, ys

    g, ys = jax.grad(loss, argnums=_argnums(xs), has_aux=True)(*xs)
    return [(ys, case.ref(*xs64)), *_pairs(g, _vjp_ref(case, xs64, w))]


def t_checkpoint(case, xs, xs64, w, ts):
    g = jax.grad(jax.checkpoint(_weighted_loss(case, w)), argnums=_argnums(xs))(*xs)
    return _pairs(g, _vjp_ref(case, xs64, w))


def t_sharded(case, xs, xs64, w, ts):
    mesh = jax.make_mesh((8,), ("d",))
    sharding = jax.sharding.NamedSharding(mesh, jax.P("d"))
    xs_s = tuple(jax.device_put(x, sharding) for x in xs)
    w_s = jax.device_put(w, sharding)

    @jax.jit
    def run(*args):
        *xs, w = args
        return case(*xs), jax.grad(_weighted_loss(case, w), argnums=_argnums(xs))(*xs)

    y, g = run(*xs_s, w_s)
    assert y.sharding.is_equivalent_to(sharding, y.ndim), y.sharding
    return [(y, case.ref(*xs64)), *_pairs(g, _vjp_ref(case, xs64, w))]


TRANSFORMS = {
    "jit": t_jit,
    "vmap": t_vmap,
    "grad": t_grad,
    "grad_grad": t_grad_grad,
    "vjp": t_vjp,
    "jvp": t_jvp,
    "jacfwd": _t_jacobian(jax.jacfwd),
    "jacrev": _t_jacobian(jax.jacrev),
    "hessian": t_hessian,
    "linearize": t_linearize,
    "vmap_grad": t_vmap_grad,
    "grad_vmap": t_grad_vmap,
    "scan": t_scan,
    "checkpoint": t_checkpoint,
    "sharded": t_sharded,
}


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_transform_matrix(case, dtype, transform):
    with _context(dtype):
        xs, xs64, w, ts = _inputs(case, dtype)
        for k, (computed, expected) in enumerate(TRANSFORMS[transform](case, xs, xs64, w, ts)):
            assert computed.dtype == jnp.dtype(dtype), (k, computed.dtype)
            ulps = TOL_ULPS_SECOND_ORDER if transform in SECOND_ORDER else TOL_ULPS
            scale = getattr(expected, "scale", 1.0)
            _close(computed, np.asarray(expected), dtype,
                   f"{case} {dtype} {transform} output {k}", ulps, scale)


def _away_from_kinks(case, seed=1):
    """Float64 inputs at least 0.05 from every kink (finite differences step 1e-3ish)."""
    rng = np.random.default_rng(seed)
    raw = list(case.sample(rng, SHAPE))
    for k in case.kinks:
        raw[0] = np.where(np.abs(raw[0] - k) < 0.05, raw[0] + 0.1, raw[0])
    return tuple(jnp.asarray(r, jnp.float64) for r in raw)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_finite_differences(case, x64):
    xs = _away_from_kinks(case)
    free = [i for i in range(len(xs)) if i not in case.fixed]

    def f(*free_xs):
        args = list(xs)
        for i, v in zip(free, free_xs, strict=True):
            args[i] = v
        return case(*args)

    check_grads(f, tuple(xs[i] for i in free), order=2, modes=("fwd", "rev"))
