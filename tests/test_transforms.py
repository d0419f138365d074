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
from reference import CASES, STRUCTURED, Case

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
    """Inputs in ``dtype`` (labels int32) and the same values in float64 for the reference,
    plus a cotangent ``w`` shaped like the output and tangents/second cotangents ``ts`` for
    the differentiated inputs."""
    rng = np.random.default_rng(seed)
    raw = case.sample(rng, case.shape or SHAPE)
    xs = tuple(jnp.asarray(r, jnp.int32 if i in case.ints else dtype)
               for i, r in enumerate(raw))
    xs64 = tuple(np.asarray(x) if i in case.ints else np.asarray(x, np.float64)
                 for i, x in enumerate(xs))
    w = jnp.asarray(rng.uniform(-2, 2, np.shape(case.ref(*xs64))), dtype)
    ts = tuple(jnp.asarray(rng.uniform(-2, 2, xs[i].shape), dtype) for i in case.diff)
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


def _diff_shapes(case, xs64):
    return [xs64[i].shape for i in case.diff]


class Summed(np.ndarray):
    """A reference that is a sum of terms, carrying the size of those terms (``scale``)."""


def _summed(total, terms_abs):
    out = np.asarray(total).view(Summed)
    out.scale = terms_abs
    return out


def _vjp_ref(case, xs64, w):
    """w^T J[i], shaped like differentiated input i.  For the STRUCTURED ops it sums over
    many outputs (batch norm's dscale over the whole batch): |w|^T |J[i]| is the size of its
    terms.  The elementwise and row-wise ops keep the plain bound (their sums have one term
    or a row's worth, and pass at 4 eps without it)."""
    out = []
    for j, shape in zip(case.jacobians(*xs64), _diff_shapes(case, xs64), strict=True):
        size = np.abs(_flat(w)) @ np.abs(j) if case.vjp_ref is not None else np.ones(j.shape[1])
        out.append(_summed((_flat(w) @ j).reshape(shape), size.reshape(shape)))
    return out


def _jvp_ref(case, xs64, ts):
    """sum_i J[i] t_i, shaped like the output."""
    jacs = case.jacobians(*xs64)
    out = sum(j @ _flat(t) for j, t in zip(jacs, ts, strict=True))
    size = sum(np.abs(j) @ np.abs(_flat(t)) for j, t in zip(jacs, ts, strict=True))
    shape = np.shape(case.ref(*xs64))
    return _summed(out.reshape(shape), size.reshape(shape))


def _on_diff(case, xs):
    """``case`` as a function of its differentiated inputs (the others held at ``xs``), and
    those inputs."""

    def f(*d):
        args = list(xs)
        for i, v in zip(case.diff, d, strict=True):
            args[i] = v
        return case(*args)

    return f, tuple(xs[i] for i in case.diff)


def _weighted(f, w):
    return lambda *xs: jnp.sum(f(*xs) * w)


def _argnums(xs):
    return tuple(range(len(xs)))


def _pairs(computed, expected):
    return list(zip(computed, expected, strict=True))


def _in_axes(case):
    return tuple(None if i in case.unbatched else 0 for i in range(case.arity))


def _rows(case, xs):
    """The per-row inputs of a vmap/scan over the leading axis (unbatched inputs shared)."""
    n = xs[0].shape[0]
    return [tuple(x if i in case.unbatched else x[k] for i, x in enumerate(xs))
            for k in range(n)]


def _row_refs(case, xs64, w):
    """(stacked outputs, per-row cotangents of the diff inputs) of row-by-row application:
    batched inputs' cotangents stack, unbatched ones are listed per row."""
    if case.rowwise:
        return case.ref(*xs64), _vjp_ref(case, xs64, w), None
    rows = _rows(case, xs64)
    outs = np.stack([case.ref(*r) for r in rows])
    per_row = [_vjp_ref(case, r, w[k]) for k, r in enumerate(rows)]
    return outs, per_row, rows


def _w_rows(case, xs64, w):
    """The output cotangent of a row-by-row map: ``w`` itself for row-wise ops, else one
    drawn for the stacked per-row outputs."""
    if case.rowwise:
        return w
    shape = (xs64[0].shape[0], *np.shape(case.ref(*_rows(case, xs64)[0])))
    return jnp.asarray(np.random.default_rng(7).uniform(-2, 2, shape), w.dtype)


def _row_grads(case, xs64, w, summed):
    """Expected cotangents of the diff inputs for a row-wise map: stacked for batched inputs;
    for unbatched ones, summed over rows (grad of vmap, scan) or stacked (vmap of grad)."""
    outs, per_row, rows = _row_refs(case, xs64, np.asarray(w, np.float64))
    if rows is None:
        return outs, per_row
    grads = []
    for k, i in enumerate(case.diff):
        g = np.stack([np.asarray(r[k]) for r in per_row])
        size = np.stack([r[k].scale for r in per_row])
        if i in case.unbatched and summed:
            g, size = g.sum(0), size.sum(0)
        grads.append(_summed(g, size))
    return outs, grads


# Each transform returns (computed, expected) pairs, computed from jaxops, expected from the
# float64 reference.
def t_jit(case, xs, xs64, w, ts):
    return [(jax.jit(case)(*xs), case.ref(*xs64))]


def t_vmap(case, xs, xs64, w, ts):
    outs, _ = _row_grads(case, xs64, _w_rows(case, xs64, w), summed=False)
    return [(jax.vmap(case, in_axes=_in_axes(case))(*xs), outs)]


def t_grad(case, xs, xs64, w, ts):
    f, d = _on_diff(case, xs)
    g = jax.grad(_weighted(f, w), argnums=_argnums(d))(*d)
    return _pairs(g, _vjp_ref(case, xs64, w))


def t_vjp(case, xs, xs64, w, ts):
    f, d = _on_diff(case, xs)
    y, vjp_fn = jax.vjp(f, *d)
    return [(y, case.ref(*xs64)), *_pairs(vjp_fn(w), _vjp_ref(case, xs64, w))]


def t_grad_grad(case, xs, xs64, w, ts):
    f, d = _on_diff(case, xs)
    argnums = _argnums(d)
    first = jax.grad(_weighted(f, w), argnums=argnums)

    def second(*d):
        return sum(jnp.sum(g * t) for g, t in zip(first(*d), ts, strict=True))

    g2 = jax.grad(second, argnums=argnums)(*d)
    hw = case.hess_w(xs64, np.asarray(w, np.float64))
    shapes = _diff_shapes(case, xs64)
    expected = [
        _summed(sum(_flat(ts[i]) @ hw[i][j] for i in argnums).reshape(shapes[j]),
                sum(np.abs(_flat(ts[i])) @ np.abs(hw[i][j]) for i in argnums)
                .reshape(shapes[j]))
        for j in argnums
    ]
    return _pairs(g2, expected)


def t_jvp(case, xs, xs64, w, ts):
    f, d = _on_diff(case, xs)
    y, t_out = jax.jvp(f, d, ts)
    return [(y, case.ref(*xs64)), (t_out, _jvp_ref(case, xs64, ts))]


def t_linearize(case, xs, xs64, w, ts):
    f, d = _on_diff(case, xs)
    y, f_lin = jax.linearize(f, *d)
    return [(y, case.ref(*xs64)), (f_lin(*ts), _jvp_ref(case, xs64, ts))]


def _t_jacobian(jac):
    def t(case, xs, xs64, w, ts):
        f, d = _on_diff(case, xs)
        jacs = jac(f, argnums=_argnums(d))(*d)
        out = np.shape(case.ref(*xs64))
        return _pairs(jacs, [j.reshape(out + shape) for j, shape in
                             zip(case.jacobians(*xs64), _diff_shapes(case, xs64), strict=True)])

    return t


def t_hessian(case, xs, xs64, w, ts):
    f, d = _on_diff(case, xs)
    argnums = _argnums(d)
    h = jax.hessian(_weighted(f, w), argnums=argnums)(*d)
    hw = case.hess_w(xs64, np.asarray(w, np.float64))
    shapes = _diff_shapes(case, xs64)
    return [(h[i][j], hw[i][j].reshape(shapes[i] + shapes[j]))
            for i in argnums for j in argnums]


def _row_loss(case):
    """sum(case(*row) * w_row) as a function of (all inputs of a row..., w_row)."""
    def loss(*args):
        *row, w_row = args
        return jnp.sum(case(*row) * w_row)

    return loss


def t_vmap_grad(case, xs, xs64, w, ts):
    w = _w_rows(case, xs64, w)
    g = jax.vmap(jax.grad(_row_loss(case), argnums=case.diff),
                 in_axes=(*_in_axes(case), 0))(*xs, w)
    return _pairs(g, _row_grads(case, xs64, w, summed=False)[1])


def t_grad_vmap(case, xs, xs64, w, ts):
    w = _w_rows(case, xs64, w)

    def loss(*xs):
        return jnp.sum(jax.vmap(case, in_axes=_in_axes(case))(*xs) * w)

    g = jax.grad(loss, argnums=case.diff)(*xs)
    return _pairs(g, _row_grads(case, xs64, w, summed=True)[1])


def t_scan(case, xs, xs64, w, ts):
    w = _w_rows(case, xs64, w)
    batched = [i for i in range(len(xs)) if i not in case.unbatched]

    def loss(*xs):
        def body(carry, row):
            *row_xs, w_row = row
            args = list(xs)
            for i, r in zip(batched, row_xs, strict=True):
                args[i] = r
            y = case(*args)
            return carry + jnp.sum(y * w_row).astype(jnp.float32), y

        total, ys = jax.lax.scan(body, jnp.float32(0), (*(xs[i] for i in batched), w))
        return total, ys

    g, ys = jax.grad(loss, argnums=case.diff, has_aux=True)(*xs)
    outs, grads = _row_grads(case, xs64, w, summed=True)
    return [(ys, outs), *_pairs(g, grads)]


def t_checkpoint(case, xs, xs64, w, ts):
    f, d = _on_diff(case, xs)
    g = jax.grad(jax.checkpoint(_weighted(f, w)), argnums=_argnums(d))(*d)
    return _pairs(g, _vjp_ref(case, xs64, w))


def t_sharded(case, xs, xs64, w, ts):
    mesh = jax.make_mesh((8,), ("d",))
    rows = jax.sharding.NamedSharding(mesh, jax.P("d"))
    replicated = jax.sharding.NamedSharding(mesh, jax.P())
    xs_s = tuple(jax.device_put(x, replicated if i in case.unbatched else rows)
                 for i, x in enumerate(xs))
    w_s = jax.device_put(w, rows if case.rowwise else replicated)

    @jax.jit
    def run(*args):
        *xs, w = args
        f, d = _on_diff(case, xs)
        return case(*xs), jax.grad(_weighted(f, w), argnums=_argnums(d))(*d)

    y, g = run(*xs_s, w_s)
    if case.rowwise:
        assert y.sharding.is_equivalent_to(rows, y.ndim), y.sharding
    return [(y, case.ref(*xs64)), *_pairs(g, _vjp_ref(case, xs64, w))]


def t_jit_jvp(case, xs, xs64, w, ts):
    f, d = _on_diff(case, xs)
    y, t_out = jax.jit(lambda d, ts: jax.jvp(f, d, ts))(d, ts)
    return [(y, case.ref(*xs64)), (t_out, _jvp_ref(case, xs64, ts))]


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


# transforms that map the op over the rows of its inputs (an op that needs whole matrices,
# linear_cross_entropy, takes no row)
BATCHING = ("vmap", "vmap_grad", "grad_vmap", "scan", "sharded")


def _matrix(cases, transforms, dtypes, slow_dtypes=(), slow_transforms=()):
    return [pytest.param(c, d, t, id=f"{c}-{d}-{t}",
                         marks=[pytest.mark.slow] if d in slow_dtypes or t in slow_transforms
                         else [])
            for c in cases for d in (*dtypes, *slow_dtypes) for t in transforms
            if c.batching or t not in BATCHING]


# The default run covers float32 in the transforms each of which reaches a path no other
# takes (jit, vmap, reverse and forward mode, second order, grad of vmap); the transforms
# built of these (grad_grad, jacfwd, jacrev, linearize, vmap_grad, scan, checkpoint,
# sharded) and float64 and the half-precision dtypes run behind the slow marker (CI runs
# both: make test, make test-slow).  With the ops of the "transformers" issue the full
# float32 matrix alone took 14 of the default run's minutes on 2 cores.
SLOW_TRANSFORMS = ("grad_grad", "jacfwd", "jacrev", "linearize", "vmap_grad", "scan",
                   "checkpoint", "sharded")


# The half-precision dtypes test the ops' arithmetic (float32 inside, one rounding out), which
# the transforms that compose others do not change: they run with the transforms of the
# default run.
HALF_TRANSFORMS = tuple(t for t in TRANSFORMS if t not in SLOW_TRANSFORMS)


@pytest.mark.parametrize(("case", "dtype", "transform"),
                         _matrix(CASES + STRUCTURED, TRANSFORMS, ("float32",),
                                 slow_dtypes=("float64",), slow_transforms=SLOW_TRANSFORMS)
                         + _matrix(CASES + STRUCTURED, HALF_TRANSFORMS, (),
                                   slow_dtypes=("bfloat16", "float16")))
def test_transform_matrix(case, dtype, transform):
    _check_transform(case, dtype, transform)


# Each input differentiated alone (and, past two inputs, all but one), the others closed
# over: JAX passes them symbolic zero tangents, a path the full matrix never takes
# (linear_cross_entropy's jvp returned uninitialized memory on it).  jvp, jit(jvp), grad and
# hessian in float32 in the default run, and in float64 behind the slow marker; linearize,
# jacfwd and jacrev in float32 and float64 behind it.  (Which tangents are symbolic zeros does
# not depend on the dtype; the half-precision arithmetic is the full matrix's.)
ALONE_TRANSFORMS = ("jvp", "jit_jvp", "grad", "hessian")  # default run: float32
ALONE_SLOW_TRANSFORMS = ("linearize", "jacfwd", "jacrev")  # float32 and float64: slow


def _subsets(case):
    d = case.differentiable
    if len(d) < 2:
        return []
    alone = [(i,) for i in d]
    all_but_one = [tuple(j for j in d if j != i) for i in d] if len(d) > 2 else []
    return alone + all_but_one


ALONE = [c.alone(wrt) for c in CASES + STRUCTURED for wrt in _subsets(c)]


@pytest.mark.parametrize(("case", "dtype", "transform"),
                         _matrix(ALONE, ALONE_TRANSFORMS, ("float32",), slow_dtypes=("float64",))
                         + [pytest.param(*p.values, marks=pytest.mark.slow, id=p.id)
                            for p in _matrix(ALONE, ALONE_SLOW_TRANSFORMS, ("float32",),
                                             slow_dtypes=("float64",))])
def test_each_input_alone(case, dtype, transform):
    _check_transform(case, dtype, transform)


def _check_transform(case, dtype, transform):
    with _context(dtype):
        xs, xs64, w, ts = _inputs(case, dtype)
        run = {**TRANSFORMS, "jit_jvp": t_jit_jvp}[transform]
        for k, (computed, expected) in enumerate(run(case, xs, xs64, w, ts)):
            assert computed.dtype == jnp.dtype(dtype), (k, computed.dtype)
            ulps = TOL_ULPS_SECOND_ORDER if transform in SECOND_ORDER else TOL_ULPS
            scale = getattr(expected, "scale", 1.0)
            _close(computed, np.asarray(expected), dtype,
                   f"{case} {dtype} {transform} output {k}", ulps, scale)


def _away_from_kinks(case, seed=1):
    """Float64 inputs at least 0.05 from every kink (finite differences step 1e-3ish)."""
    rng = np.random.default_rng(seed)
    raw = list(case.sample(rng, case.shape or SHAPE))
    for k in case.kinks:
        raw[0] = np.where(np.abs(raw[0] - k) < 0.05, raw[0] + 0.1, raw[0])
    return tuple(jnp.asarray(r, jnp.int32 if i in case.ints else jnp.float64)
                 for i, r in enumerate(raw))


@pytest.mark.parametrize("case", CASES + STRUCTURED, ids=str)
def test_finite_differences(case, x64):
    xs = _away_from_kinks(case)
    free = [i for i in case.diff if i not in case.fixed]

    def f(*free_xs):
        args = list(xs)
        for i, v in zip(free, free_xs, strict=True):
            args[i] = v
        return case(*args)

    check_grads(f, tuple(xs[i] for i in free), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("case", STRUCTURED, ids=str)
def test_closed_form_vjp_matches_complex_step(case):
    """The closed-form reference VJPs (whose complex step gives the Hessians) agree with the
    complex-step Jacobians of the reference values: the two references are consistent."""
    rng = np.random.default_rng(3)
    xs = tuple(np.asarray(r) if i in case.ints else np.asarray(r, np.float64)
               for i, r in enumerate(case.sample(rng, case.shape or SHAPE)))
    w = rng.uniform(-2, 2, np.shape(case.ref(*xs)))
    for got, j, x in zip(case.vjp_ref(*xs, w), case.jacobians(*xs),
                         [xs[i] for i in case.diff], strict=True):
        np.testing.assert_allclose(np.ravel(got), np.ravel(w) @ j, rtol=1e-12, atol=1e-12)
        assert np.shape(got) == x.shape
