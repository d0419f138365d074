"""Gradient clipping on pytrees (jaxops.clipping): against float64 NumPy references computed
from the same (rounded) inputs, against optax, at zero, at non-finite norms, under the
transforms, and with bad inputs."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxops.clipping import clip_by_global_norm, clip_by_norm, clip_by_value, global_norm

DTYPES = ("float32", "bfloat16", "float16", "float64")
# nested dicts, lists and tuples; leaves of several ranks, a scalar among them
SHAPES = {"a": (3, 4), "b": [(5,), ((2, 3, 2), ())], "c": {"d": (7,), "e": (1, 1, 1)}}
# Max relative error of a clipped entry, in eps of its dtype (float32 / bfloat16 / float16 /
# float64).  vs float64: the norm is a float32 sum (float64 for float64), then two roundings
# (factor, product) for float32/float64, one (the final cast) for half dtypes; measured over
# 50 seeds at max_norm 0.37: 1.59 / 0.49 / 0.48 / 1.89.  vs optax (which rounds the factor
# differently and computes half-precision norms in their own dtype): 1.17 / 1.98 / 1.94 / 1.28.
TOL_REF = {"float32": 3.0, "bfloat16": 1.0, "float16": 1.0, "float64": 3.0}
TOL_OPTAX = {"float32": 3.0, "bfloat16": 4.0, "float16": 4.0, "float64": 3.0}


def _ctx(dtype):
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def _is_shape(s):
    return isinstance(s, tuple) and all(isinstance(i, int) for i in s)


def _tree(dtype, seed=0, scale=10.0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(scale * rng.standard_normal(s), dtype), SHAPES, is_leaf=_is_shape
    )


def _f64(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _norm64(tree):
    return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2)
                             for x in jax.tree.leaves(tree))))


def _rel_err(out, ref):
    """Max over entries of |out - ref| / |ref|, in eps of out's dtypes; checks structure."""
    assert jax.tree.structure(out) == jax.tree.structure(ref)
    worst = 0.0
    for o, r in zip(jax.tree.leaves(out), jax.tree.leaves(ref), strict=True):
        r = np.asarray(r, np.float64)
        finfo = jnp.finfo(o.dtype)
        err = np.abs(np.asarray(o, np.float64) - r) / np.maximum(np.abs(r), float(finfo.tiny))
        worst = max(worst, float(np.max(err, initial=0.0)) / float(finfo.eps))
    return worst


def _same_bits(a, b):
    return (jax.tree.structure(a) == jax.tree.structure(b)) and all(
        x.dtype == y.dtype and x.shape == y.shape
        and np.asarray(x).tobytes() == np.asarray(y).tobytes()
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _dtypes(tree):
    return [x.dtype for x in jax.tree.leaves(tree)]


def _optax_global(tree, max_norm):
    tx = optax.clip_by_global_norm(max_norm)
    return jax.jit(lambda t: tx.update(t, tx.init(t))[0])(tree)


# -------------------------------------------------------------------------- global norm

@pytest.mark.parametrize("dtype", DTYPES)
def test_global_norm_accumulates_in_at_least_float32(dtype):
    with _ctx(dtype):
        tree = _tree(dtype)
        norm = global_norm(tree)
        acc = jnp.float64 if dtype == "float64" else jnp.float32
        assert norm.shape == () and norm.dtype == acc
        # 38 squares summed in float32: within 1e-6 whatever the leaf dtype (optax returns the
        # norm of a half-precision tree in its dtype: off by up to 5e-3 on these trees)
        tol = 1e-14 if dtype == "float64" else 1e-6
        np.testing.assert_allclose(float(norm), _norm64(tree), rtol=tol)
        if dtype in ("bfloat16", "float16"):
            # (1 + eps)^2 is exact in float32, not in the leaf's dtype: squaring before the
            # upcast would give sqrt(1 + 2 eps) != 1 + eps
            x = 1.0 + float(jnp.finfo(dtype).eps)
            assert float(global_norm([jnp.array([x], dtype)])) == x
        if dtype in ("float32", "float64"):
            np.testing.assert_allclose(float(norm), float(jax.jit(optax.tree.norm)(tree)),
                                       rtol=2 * float(jnp.finfo(dtype).eps))


# ------------------------------------------------------------------ clip_by_global_norm

@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_by_global_norm_vs_float64_and_optax(dtype):
    max_norm = 0.37
    with _ctx(dtype):
        for seed in range(3):
            tree = _tree(dtype, seed)
            out = clip_by_global_norm(tree, max_norm)
            assert _dtypes(out) == _dtypes(tree)
            norm = _norm64(tree)
            assert norm > max_norm
            ref = jax.tree.map(lambda x, n=norm: x * (max_norm / n), _f64(tree))
            assert _rel_err(out, ref) <= TOL_REF[dtype]
            assert _rel_err(out, _optax_global(tree, max_norm)) <= TOL_OPTAX[dtype]
            # the clipped tree has norm max_norm, to the output dtype's precision
            np.testing.assert_allclose(_norm64(out), max_norm, rtol=2 * jnp.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", DTYPES)
def test_below_threshold_is_returned_bit_for_bit(dtype):
    with _ctx(dtype):
        tree = _tree(dtype)
        norm = _norm64(tree)
        assert _same_bits(clip_by_global_norm(tree, 1.5 * norm), tree)
        assert _same_bits(clip_by_global_norm(tree, float("inf")), tree)
        largest_leaf = max(np.sqrt(np.sum(x ** 2)) for x in jax.tree.leaves(_f64(tree)))
        assert _same_bits(clip_by_norm(tree, 1.5 * largest_leaf), tree)
        # and just above the threshold, the tree is rescaled (this test can see a change)
        assert not _same_bits(clip_by_global_norm(tree, 0.5 * norm), tree)


def test_mixed_dtypes_keep_their_dtypes():
    tree = {"h": jnp.array([3.0], jnp.float16), "b": jnp.array([4.0], jnp.bfloat16),
            "f": jnp.array([12.0], jnp.float32)}
    assert global_norm(tree).dtype == jnp.float32 and float(global_norm(tree)) == 13.0
    out = clip_by_global_norm(tree, 1.3)
    assert _dtypes(out) == _dtypes(tree)
    assert _rel_err(out, {"h": np.array([0.3]), "b": np.array([0.4]), "f": np.array([1.2])}) <= 1.0
    with jax.enable_x64(True):
        tree = {"b": jnp.array([3.0], jnp.bfloat16), "d": jnp.array([4.0], jnp.float64)}
        assert global_norm(tree).dtype == jnp.float64
        assert _dtypes(clip_by_global_norm(tree, 1.0)) == [jnp.bfloat16, jnp.float64]


# -------------------------------------------------------------------------- clip_by_norm

@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_by_norm_rescales_each_leaf_on_its_own(dtype):
    with _ctx(dtype):
        tree = _tree(dtype)
        leaf_norms = [float(np.sqrt(np.sum(x ** 2))) for x in jax.tree.leaves(_f64(tree))]
        max_norm = float(np.median(leaf_norms))  # some leaves above, some below
        out = clip_by_norm(tree, max_norm)
        assert _dtypes(out) == _dtypes(tree)
        below = above = 0
        for o, x, n in zip(jax.tree.leaves(out), jax.tree.leaves(tree), leaf_norms, strict=True):
            if n < max_norm:
                below += 1
                assert _same_bits(o, x)
            else:
                above += 1
                assert _rel_err(o, np.asarray(x, np.float64) * (max_norm / n)) <= TOL_REF[dtype]
        assert below and above


# ------------------------------------------------------------------------- clip_by_value

@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_by_value_matches_optax_and_numpy(dtype):
    with _ctx(dtype):
        tree = _tree(dtype, scale=2.0)
        out = clip_by_value(tree, -1.5, 1.5)
        assert _dtypes(out) == _dtypes(tree)
        tx = optax.clip(1.5)
        assert _same_bits(out, tx.update(tree, tx.init(tree))[0])
        ref = jax.tree.map(lambda x: np.clip(x, -1.5, 1.5), _f64(tree))
        assert _rel_err(out, ref) == 0.0
        # one-sided, and array bounds (cast to each leaf's dtype), on a smaller subtree
        sub = tree["b"]
        assert _rel_err(clip_by_value(sub, None, 0.0),
                        jax.tree.map(lambda x: np.minimum(x, 0.0), _f64(sub))) == 0.0
        assert _same_bits(clip_by_value(sub, jnp.float32(-1.5), np.float64(1.5)), out["b"])


def test_clip_by_value_min_above_max_gives_max_and_zero_gradient_at_bounds():
    tree = {"a": jnp.array([-3.0, -1.0, 0.0, 1.0, 3.0])}
    np.testing.assert_array_equal(clip_by_value(tree, 2.0, 1.0)["a"], np.ones(5))
    g = jax.grad(lambda t: clip_by_value(t, -1.0, 1.0)["a"].sum())(tree)["a"]
    np.testing.assert_array_equal(g, [0.0, 0.0, 1.0, 0.0, 0.0])  # Clip-13: 0 at both bounds
    nan = clip_by_value({"a": jnp.array([jnp.nan, 5.0])}, -1.0, 1.0)["a"]
    assert np.isnan(nan[0]) and nan[1] == 1.0


# ---------------------------------------------------------------------------------- zero

@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("clip_fn", [clip_by_global_norm, clip_by_norm], ids=lambda f: f.__name__)
def test_zero_tree_is_unchanged_with_finite_derivatives(clip_fn, dtype):
    tree = {"a": jnp.zeros((3, 4), dtype), "b": [jnp.zeros((), dtype), jnp.zeros(5, dtype)]}
    assert _same_bits(clip_fn(tree, 1.0), tree)
    w = jnp.arange(12.0, dtype=dtype).reshape(3, 4)

    def loss(t):
        return jnp.sum(clip_fn(t, 1.0)["a"] * w)

    # near 0 the clip is the identity, so d loss / d tree is w on "a" and 0 elsewhere
    want = jax.tree.map(jnp.zeros_like, tree)
    want["a"] = w
    assert _same_bits(jax.jit(jax.grad(loss))(tree), want)
    _, tangent = jax.jit(jax.jvp, static_argnums=0)(loss, (tree,),
                                                    (jax.tree.map(jnp.ones_like, tree),))
    assert float(tangent) == float(w.astype(jnp.float32).sum())
    assert _same_bits(jax.jit(jax.grad(global_norm))(tree), jax.tree.map(jnp.zeros_like, tree))


# ---------------------------------------------------------------------------- non-finite

@pytest.mark.parametrize("bad, norm", [(np.nan, np.nan), (np.inf, np.inf), (-np.inf, np.inf),
                                       (3e38, np.inf)],  # the norm itself > float32's max
                         ids=["nan", "inf", "-inf", "overflow"])
def test_nonfinite_norm_makes_the_clipped_entries_nan(bad, norm):
    tree = {"a": jnp.array([1.0, bad, bad if bad == 3e38 else 0.0]),
            "b": [jnp.array([3.0, 4.0])]}
    got = float(global_norm(tree))
    assert (np.isnan(got) and np.isnan(norm)) or got == norm
    for leaf in jax.tree.leaves(clip_by_global_norm(tree, 1.0)):  # every entry of every leaf
        assert np.all(np.isnan(leaf))
    out = clip_by_norm(tree, 1.0)  # only the leaf whose norm is non-finite
    assert np.all(np.isnan(out["a"]))
    np.testing.assert_allclose(out["b"][0], [0.6, 0.8], rtol=1e-7)


def test_bfloat16_overflow_of_the_float32_norm_is_nan_not_zero():
    tree = {"a": jnp.array([3e38, 3e38, 1.0], jnp.bfloat16)}  # finite in bfloat16
    assert float(global_norm(tree)) == np.inf
    assert np.all(np.isnan(np.asarray(clip_by_global_norm(tree, 1.0)["a"], np.float32)))


# ---------------------------------------------------------------------------- transforms

def test_jit_with_traced_max_norm_equals_eager():
    tree = _tree("float32")
    for fn in (clip_by_global_norm, clip_by_norm):
        assert _same_bits(jax.jit(fn)(tree, 3.0), fn(tree, 3.0))
    assert _same_bits(jax.jit(clip_by_value)(tree, -1.0, 1.0), clip_by_value(tree, -1.0, 1.0))


def test_vmap_clips_each_example_and_each_max_norm():
    batch = {"w": jnp.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]]), "b": jnp.ones((3, 1))}
    out = jax.vmap(lambda t: clip_by_global_norm(t, 1.0))(batch)
    for i in range(3):
        example = jax.tree.map(lambda x, i=i: x[i], batch)
        assert _same_bits(jax.tree.map(lambda x, i=i: x[i], out),
                          clip_by_global_norm(example, 1.0))
    norms = jax.vmap(clip_by_global_norm, in_axes=(None, 0))({"w": jnp.array([3.0, 4.0])},
                                                            jnp.array([1.0, 10.0]))["w"]
    np.testing.assert_allclose(norms, [[0.6, 0.8], [3.0, 4.0]], rtol=1e-7)
    per_leaf = jax.vmap(clip_by_norm, in_axes=(0, None))(batch, 1.0)
    np.testing.assert_allclose(per_leaf["w"], [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]], rtol=1e-7)
    np.testing.assert_allclose(jax.vmap(global_norm)(batch), np.sqrt([26.0, 1.25, 1.0]), rtol=1e-7)


def test_derivatives_above_the_threshold_match_the_analytic_jacobian(x64):
    g = jnp.asarray(np.random.default_rng(1).standard_normal(6), jnp.float64)
    m = 0.5
    n = float(np.linalg.norm(g))
    # d(m g / |g|)/dg = m (I / n - g g^T / n^3)
    want = m * (np.eye(6) / n - np.outer(g, g) / n ** 3)
    for clip_fn in (clip_by_global_norm, clip_by_norm):
        def f(x, clip_fn=clip_fn):
            return clip_fn({"g": x}, m)["g"]

        np.testing.assert_allclose(jax.jit(jax.jacrev(f))(g), want, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(jax.jit(jax.jacfwd(f))(g), want, rtol=1e-12, atol=1e-15)
    tx = optax.clip_by_global_norm(m)
    g_optax = jax.jit(jax.grad(lambda t: jnp.sum(tx.update(t, None)[0]["a"] ** 3)))
    g_ours = jax.jit(jax.grad(lambda t: jnp.sum(clip_by_global_norm(t, m)["a"] ** 3)))
    tree = _tree("float64")
    assert _rel_err(g_ours(tree), g_optax(tree)) <= 64  # entries near 0 lose digits


# --------------------------------------------------------------------------- edge inputs

@pytest.mark.parametrize("empty", [{}, [], (), None, {"a": []}], ids=repr)
def test_empty_trees(empty):
    assert clip_by_global_norm(empty, 1.0) == empty
    assert clip_by_norm(empty, 1.0) == empty
    assert clip_by_value(empty, -1.0, 1.0) == empty
    norm = global_norm(empty)
    assert norm.dtype == jnp.float32 and float(norm) == 0.0


BAD = [
    (lambda: clip_by_global_norm({"a": [jnp.ones(2), jnp.arange(3)]}, 1.0), TypeError,
     r"jaxops.clip_by_global_norm: leaf \['a'\]\[1\] has dtype int32, but gradient clipping "
     r"accepts float16, bfloat16, float32 or float64"),
    (lambda: clip_by_norm({"w": jnp.ones(2, bool)}, 1.0), TypeError,
     r"clip_by_norm: leaf \['w'\] has dtype bool"),
    (lambda: clip_by_value((jnp.ones(2), jnp.ones(2, jnp.complex64)), 0.0, 1.0), TypeError,
     r"clip_by_value: leaf \[1\] has dtype complex64"),
    (lambda: global_norm(jnp.arange(3)), TypeError, r"global_norm: leaf <root> has dtype int32"),
    (lambda: global_norm({"s": "abc"}), TypeError, r"global_norm: leaf \['s'\] is a str"),
    (lambda: clip_by_global_norm({"a": jnp.ones(2)}, 0.0), ValueError,
     r"clip_by_global_norm: max_norm must be a real number > 0, got 0.0"),
    (lambda: clip_by_norm({"a": jnp.ones(2)}, -1), ValueError, r"max_norm must be .* got -1\."),
    (lambda: clip_by_norm({"a": jnp.ones(2)}, float("nan")), ValueError, r"got nan"),
    (lambda: clip_by_global_norm({"a": jnp.ones(2)}, jnp.ones(2)), ValueError,
     r"max_norm must be a scalar, got shape \(2,\)"),
    (lambda: clip_by_value({"a": jnp.ones(2)}, jnp.zeros(2), 1.0), ValueError,
     r"clip_by_value: min_value must be a scalar, got shape \(2,\)"),
]


@pytest.mark.parametrize("call, error, match", BAD, ids=[m[:40] for _, _, m in BAD])
def test_bad_inputs_raise_with_a_message(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_traced_max_norm_is_not_checked():
    # a traced max_norm cannot be checked at trace time; a positive one works under jit/grad
    tree = {"a": jnp.array([3.0, 4.0])}
    d = jax.grad(lambda m: clip_by_global_norm(tree, m)["a"].sum())(1.0)
    np.testing.assert_allclose(d, 1.4, rtol=1e-6)  # d/dm (m * (3 + 4) / 5)


# ------------------------------------------------------------- extreme magnitudes (scaling)
# Norms are scaled by a power of two near the largest entry, so any norm that is finite in
# the accumulation dtype is finite and right, however its squares would over- or underflow.
# Per dtype: (huge entry, max_norm below its norms), (tiny entry, max_norm below its norms).
EXTREMES = {
    "float32": ((1e20, 1.0), (1e-30, 1e-31)),  # squares overflow / underflow float32
    "bfloat16": ((1e30, 1.0), (1e-30, 1e-31)),  # ditto, in the float32 accumulation
    "float16": ((2e4, 1.0), (6e-8, 1e-8)),  # 3 * 2e4 is near float16's max; 6e-8 subnormal
    "float64": ((1e200, 1.0), (1e-200, 1e-201)),
}


def _extreme_tree(dtype, case):
    if case in ("huge", "tiny"):
        v = EXTREMES[dtype][case == "tiny"][0]
        a, b = [v, -2 * v, 0.0, 0.5 * v], [[3 * v]]
    else:
        bad = {"zero": 0.0, "inf": np.inf, "nan": np.nan}[case]
        a, b = [0.0, bad, 0.0, 0.0], [[0.0]]
    return {"a": jnp.asarray(a, dtype), "b": [jnp.asarray(b, dtype)]}


def _hypot(tree):
    """The float64 norm of the (rounded) entries, scaled as math.hypot does (no overflow)."""
    import math
    return math.hypot(*(float(v) for x in jax.tree.leaves(tree)
                        for v in np.asarray(x, np.float64).ravel()))


# float32 in the default run (about 8 s a case); the other dtypes behind the slow marker
@pytest.mark.parametrize("case", ["huge", "tiny", "zero", "inf", "nan"])
@pytest.mark.parametrize("dtype", [d if d == "float32" else pytest.param(d, marks=pytest.mark.slow)
                                   for d in DTYPES])
def test_norms_of_extreme_trees_and_their_derivatives(dtype, case):
    with _ctx(dtype):
        tree = _extreme_tree(dtype, case)
        max_norm = EXTREMES[dtype][case == "tiny"][1] if case in ("huge", "tiny") else 1.0
        flat = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])
        n = _hypot(tree)
        acc = jnp.float64 if dtype == "float64" else jnp.float32
        eps = float(jnp.finfo(acc).eps)
        norm = global_norm(tree)
        assert norm.dtype == acc
        if np.isnan(n):
            assert np.isnan(float(norm))
        else:
            np.testing.assert_allclose(float(norm), n, rtol=2 * eps)
        # d|x| = x / |x| in IEEE arithmetic: 0 at a zero tree (the subgradient), x / inf = 0
        # and inf / inf = NaN at an inf entry, NaN everywhere with a NaN entry
        with np.errstate(invalid="ignore"):
            want_grad = flat / n if n else np.zeros_like(flat)
        grad = np.concatenate([np.asarray(g, np.float64).ravel()
                               for g in jax.tree.leaves(jax.jit(jax.grad(global_norm))(tree))])
        np.testing.assert_allclose(grad, want_grad, rtol=4 * float(jnp.finfo(dtype).eps),
                                   atol=float(jnp.finfo(dtype).eps) if n else 0)
        ones = jax.tree.map(jnp.ones_like, tree)
        _, t_norm = jax.jit(jax.jvp, static_argnums=0)(global_norm, (tree,), (ones,))
        with np.errstate(invalid="ignore"):
            want_t = float(np.sum(want_grad)) if np.isfinite(n) else np.nan
        np.testing.assert_allclose(float(t_norm), want_t, rtol=8 * eps, atol=4 * eps)

        # clipping: with w the cotangent and t the tangent, d clip = c (I - u u^T) with
        # c = max_norm / n and u = x / n when n >= max_norm; the identity below it
        w = jax.tree.map(lambda x: jnp.asarray(
            np.arange(1, x.size + 1, dtype=np.float64).reshape(x.shape), dtype), tree)
        wf = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(w)])
        for clip_fn in (clip_by_global_norm, clip_by_norm):
            out = clip_fn(tree, max_norm)
            assert _dtypes(out) == _dtypes(tree)
            loss = jax.jit(lambda t, clip_fn=clip_fn: sum(
                jnp.sum(o.astype(acc) * v.astype(acc))
                for o, v in zip(jax.tree.leaves(clip_fn(t, max_norm)), jax.tree.leaves(w),
                                strict=True)))
            g = np.concatenate([np.asarray(x, np.float64).ravel()
                                for x in jax.tree.leaves(jax.grad(loss)(tree))])
            _, t_loss = jax.jvp(loss, (tree,), (w,))
            if not np.isfinite(n):  # "b" (all 0) is finite on its own for clip_by_norm
                nan_leaves = out if clip_fn is clip_by_global_norm else out["a"]
                for leaf in jax.tree.leaves(nan_leaves):
                    assert np.all(np.isnan(np.asarray(leaf, np.float64)))
                assert np.all(np.isnan(g[:4])) and np.isnan(float(t_loss))
                if clip_fn is clip_by_norm:
                    assert _same_bits(out["b"], tree["b"]) and g[4] == wf[4]
                else:
                    assert np.isnan(g[4])
                continue
            if case == "zero":  # unchanged, and the identity's derivatives
                assert _same_bits(out, tree)
                np.testing.assert_array_equal(g, wf)
                assert float(t_loss) == float(np.sum(wf * wf))
                continue
            if clip_fn is clip_by_norm:  # one norm per leaf: compare leaf by leaf below
                for o, x in zip(jax.tree.leaves(out), jax.tree.leaves(tree), strict=True):
                    nx = _hypot(x)
                    ref = np.asarray(x, np.float64) * (max_norm / nx if nx >= max_norm else 1)
                    assert _rel_err(o, ref) <= TOL_REF[dtype]
                continue
            assert n >= max_norm
            c, u = max_norm / n, flat / n
            assert _rel_err(out, jax.tree.map(lambda x, c=c: np.asarray(x, np.float64) * c,
                                              tree)) <= TOL_REF[dtype]
            want_g = c * (wf - u * np.dot(u, wf))  # symmetric: also the jvp along w
            tol = 8 * float(jnp.finfo(dtype).eps) * c * np.max(np.abs(wf))
            np.testing.assert_allclose(g, want_g, rtol=0, atol=tol)
            np.testing.assert_allclose(float(t_loss), np.dot(wf, want_g), rtol=16 * eps,
                                       atol=tol * np.sum(np.abs(wf)))
