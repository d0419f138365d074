"""Pallas kernels (jaxops.kernels) through the ops' per-platform dispatch.

On a CPU machine every kernel runs in Pallas' interpreter (``implementation=
"pallas_interpret"``: the kernel body executes), and is lowered for CUDA with
``jax.export`` at the benchmark shapes, so a GPU lowering error fails CI.  On a GPU the same
tests run the compiled kernels (``implementation="pallas"``).  References: the XLA twin and
float64 numpy.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from reference import _bn_ref, _bn_vjp

import jaxops as jo

ON_GPU = jax.default_backend() == "gpu"
PALLAS = "pallas" if ON_GPU else "pallas_interpret"
TOL = {jnp.float32: 2e-6, jnp.bfloat16: 1e-2, jnp.float16: 2e-3}
# ragged: rows and classes that are not multiples of the blocks; one row wider than a chunk
SHAPES = [(7, 5), (70, 33), (3, 5000)]


def _np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isneginf(m), 0, m)
    total = np.sum(np.exp(x - m), axis=-1, keepdims=True)
    return x - m - np.log(np.where(total == 0, 1, total))  # a masked row: -inf, not NaN


def _close(a, b, tol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def _logits(shape, dtype, seed=0):
    x = jax.random.normal(jax.random.key(seed), shape, jnp.float32) * 3
    return x.at[0].set(-jnp.inf).astype(dtype)  # a fully masked row


# ------------------------------------------------------------------ softmax / log_softmax

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op", [jo.softmax, jo.log_softmax])
def test_row_kernels_match_float64_and_the_xla_twin(op, shape, dtype):
    x = _logits(shape, dtype)
    got = op(x, implementation=PALLAS)
    assert got.dtype == dtype
    ref = _np_log_softmax(x)
    ref = ref if op is jo.log_softmax else np.exp(ref)
    finite = np.isfinite(ref)
    _close(np.where(finite, got, 0), np.where(finite, ref, 0), TOL[dtype])
    assert np.array_equal(np.isneginf(got), np.isneginf(ref))  # log 0 = -inf, never NaN
    _close(got, op(x, implementation="xla"), TOL[dtype])
    # the gradient ops' kernels (backward), against the XLA gradient ops
    y = jnp.where(jnp.isneginf(got), jnp.zeros((), dtype), got) if op is jo.softmax else got
    dy = jax.random.normal(jax.random.key(1), shape).astype(dtype)
    grad_op = jo.softmax_gradient if op is jo.softmax else jo.log_softmax_gradient
    _close(grad_op(y, dy, implementation=PALLAS), grad_op(y, dy, implementation="xla"),
           TOL[dtype])


@pytest.mark.parametrize("op", [jo.softmax, jo.log_softmax])
@pytest.mark.parametrize("axis", [-1, 1])
def test_row_kernels_under_every_transform(op, axis):
    x = jax.random.normal(jax.random.key(0), (3, 6, 40))
    probe = jax.random.normal(jax.random.key(1), x.shape)

    def loss(impl):
        return lambda x: jnp.sum(jnp.sin(op(x, axis=axis, implementation=impl)) * probe)

    ours, xla = loss(PALLAS), loss("xla")
    _close(jax.grad(ours)(x), jax.grad(xla)(x), 1e-5)
    t = jax.random.normal(jax.random.key(2), x.shape)
    _close(jax.jvp(ours, (x,), (t,))[1], jax.jvp(xla, (x,), (t,))[1], 1e-5)
    _close(jax.vmap(jax.grad(ours))(x[None].repeat(2, 0)), jax.vmap(jax.grad(xla))(
        x[None].repeat(2, 0)), 1e-5)
    small = x[:1, :3, :4]
    h = [jax.hessian(lambda s, f=f: f(jnp.pad(s, ((0, 2), (0, 3), (0, 36)))))(small)
         for f in (ours, xla)]
    _close(h[0], h[1], 1e-5)


def test_reverse_mode_runs_the_backward_kernel():
    x = jax.random.normal(jax.random.key(0), (4, 9))
    jaxpr = str(jax.make_jaxpr(jax.grad(
        lambda x: jo.log_softmax(x, implementation=PALLAS)[0, 0]))(x))
    assert "log_softmax_gradient_kernel" in jaxpr and "pallas_call" in jaxpr


# ------------------------------------------------------------------ softmax cross-entropy

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_fused_cross_entropy_matches_the_xla_op(shape, dtype, reduction, weighted):
    x = _logits(shape, dtype)
    # the fully masked row 0 is ignored too (its loss would be inf: test_..._edges checks it)
    labels = jax.random.randint(jax.random.key(2), shape[:1], 0, shape[1]).at[-1].set(-100)
    labels = labels.at[0].set(-100)
    w = jax.random.uniform(jax.random.key(3), shape[1:], jnp.float32).astype(dtype) \
        if weighted else None

    def loss(impl):
        return jax.jit(jax.value_and_grad(lambda x: jnp.sum(jnp.sin(jo.softmax_cross_entropy(
            x, labels, w, ignore_index=-100, reduction=reduction,
            implementation=impl).astype(jnp.float32)))))

    (v, g), (v_ref, g_ref) = loss(PALLAS)(x), loss("xla")(x)
    tol = 3e-2 if dtype == jnp.bfloat16 else 1e-5
    _close(v, v_ref, tol)
    _close(g, g_ref, tol)
    assert np.all(np.asarray(g[-1], np.float32) == 0)  # the ignored row


def test_fused_cross_entropy_float64_reference_and_edges():
    x = np.asarray(_logits((6, 300), jnp.float32))
    labels = np.array([3, 0, 299, -100, 7, 150])
    loss = jo.softmax_cross_entropy(jnp.asarray(x), jnp.asarray(labels), ignore_index=-100,
                                    reduction="none", implementation=PALLAS)
    ref = -np.take_along_axis(_np_log_softmax(x), np.maximum(labels, 0)[:, None], 1)[:, 0]
    ref[3] = 0.0
    assert np.isposinf(loss[0]) and np.isposinf(ref[0])  # fully masked row: -log 0
    _close(loss[1:], ref[1:], 2e-6)
    # a fully ignored batch: 0 with zero gradients, not NaN
    ignored = jnp.full((6,), -100)
    v, g = jax.value_and_grad(lambda s: jo.softmax_cross_entropy(
        s, ignored, ignore_index=-100, implementation=PALLAS))(jnp.asarray(x))
    assert v == 0 and not np.any(g)
    # an out-of-range label inside jit: NaN, as in the XLA op
    bad = jax.jit(lambda s: jo.softmax_cross_entropy(s, jnp.asarray(labels).at[1].set(300),
                                                     ignore_index=-100, reduction="none",
                                                     implementation=PALLAS))(jnp.asarray(x))
    assert np.isnan(bad[1]) and np.isfinite(bad[2])


def test_fused_cross_entropy_forward_mode_and_second_order():
    x = jax.random.normal(jax.random.key(0), (5, 7))
    labels = jnp.array([0, 6, 2, 2, 1])

    def loss(impl):
        return lambda s: jo.softmax_cross_entropy(s, labels, implementation=impl)

    t = jax.random.normal(jax.random.key(1), x.shape)
    _close(jax.jvp(loss(PALLAS), (x,), (t,))[1], jax.jvp(loss("xla"), (x,), (t,))[1], 1e-6)
    _close(jax.hessian(loss(PALLAS))(x), jax.hessian(loss("xla"))(x), 1e-6)
    _close(jax.vmap(jax.grad(loss(PALLAS)))(x[None].repeat(3, 0)),
           jax.vmap(jax.grad(loss("xla")))(x[None].repeat(3, 0)), 1e-6)


# ------------------------------------------------------------------- linear cross-entropy

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("implementation", ["xla", PALLAS])
@jax.default_matmul_precision("highest")  # GPUs default float32 matmuls to TF32 (1e-4)
def test_linear_cross_entropy_matches_the_materialized_loss(reduction, weighted,
                                                           implementation):
    if implementation != "xla" and reduction == "none":
        with pytest.raises(ValueError, match="reduction='none'"):
            jo.linear_cross_entropy(jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.array([0, 1]),
                                    reduction="none", implementation=implementation)
        return
    n, h, v = 45, 16, 260  # 45 rows in chunks of 8: a ragged last chunk
    hs = jax.random.normal(jax.random.key(0), (n, h))
    w = jax.random.normal(jax.random.key(1), (h, v)) * 0.3
    labels = jax.random.randint(jax.random.key(2), (n,), 0, v).at[::6].set(-100)
    cw = jax.random.uniform(jax.random.key(3), (v,)) if weighted else None

    def loss(f):
        return lambda hs, w: jnp.sum(jnp.sin(f(hs, w)))

    ours = loss(lambda hs, w: jo.linear_cross_entropy(
        hs, w, labels, cw, ignore_index=-100, reduction=reduction, chunk_size=8,
        implementation=implementation))
    ref = loss(lambda hs, w: jo.softmax_cross_entropy(hs @ w, labels, cw, ignore_index=-100,
                                                      reduction=reduction))
    _close(ours(hs, w), ref(hs, w), 1e-5)
    for a, b in zip(jax.grad(ours, (0, 1))(hs, w), jax.grad(ref, (0, 1))(hs, w), strict=True):
        _close(a, b, 1e-5)
    th, tw = hs[::-1], w[:, ::-1]
    _close(jax.jvp(ours, (hs, w), (th, tw))[1], jax.jvp(ref, (hs, w), (th, tw))[1], 1e-4)


def test_linear_cross_entropy_float64_hessian_and_ignored_batch():
    with jax.enable_x64(True):
        hs = jax.random.normal(jax.random.key(0), (4, 3), jnp.float64)
        w = jax.random.normal(jax.random.key(1), (3, 6), jnp.float64)
        labels = jnp.array([0, 5, 2, 1])
        for impl in ("xla", PALLAS):
            got = jax.hessian(lambda w, impl=impl: jo.linear_cross_entropy(
                hs, w, labels, chunk_size=3, implementation=impl))(w)
            want = jax.hessian(lambda w: jo.softmax_cross_entropy(hs @ w, labels))(w)
            _close(got, want, 1e-12)
        ignored = jnp.full((4,), -1)
        for impl in ("xla", PALLAS):
            v, (dh, dw) = jax.value_and_grad(lambda hs, w, impl=impl: jo.linear_cross_entropy(
                hs, w, ignored, ignore_index=-1, implementation=impl), (0, 1))(hs, w)
            assert v == 0 and not np.any(dh) and not np.any(dw)


def test_linear_cross_entropy_memory_does_not_grow_with_n_times_v():
    """The issue's target: N=8192, H=1024, V=65536 float32, compiled temp memory of
    value_and_grad below 1/8 of the materializing reference's (compile only)."""
    n, h, v = 8192, 1024, 65536
    args = (jax.ShapeDtypeStruct((n, h), jnp.float32), jax.ShapeDtypeStruct((h, v), jnp.float32),
            jax.ShapeDtypeStruct((n,), jnp.int32))

    def temp(f):
        compiled = jax.jit(jax.value_and_grad(f, (0, 1))).lower(*args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    chunked = temp(lambda hs, w, t: jo.linear_cross_entropy(hs, w, t, implementation="xla"))
    materialized = temp(lambda hs, w, t: jo.softmax_cross_entropy(hs @ w, t))
    assert chunked * 8 < materialized, (chunked / 2**20, materialized / 2**20)


@pytest.mark.parametrize("ours,theirs", [(jo.softmax, jax.nn.softmax),
                                         (jo.log_softmax, jax.nn.log_softmax)],
                         ids=["softmax", "log_softmax"])
def test_softmax_xla_twins_fuse_like_jax_nn(ours, theirs):
    """The XLA paths' compiled temp memory (loss of the forward, compile only) is no more
    than jax.nn's at a realistic shape: a ``where`` on the row max or sum once kept XLA CPU
    from fusing exp into the reductions (a 512 MiB temporary, 5x the time; the fused
    benchmark's CPU results).  At small shapes both forms fuse alike."""
    args = (jax.ShapeDtypeStruct((4096, 32768), jnp.float32),) * 2

    def temp(f):
        loss = jax.jit(lambda x, probe: jnp.sum(f(x) * probe))
        return loss.lower(*args).compile().memory_analysis().temp_size_in_bytes

    assert temp(lambda x: ours(x, implementation="xla")) <= temp(theirs)


# ------------------------------------------------------------------------- batch norm

BN_SHAPES = [(7, 5), (3, 70, 33), (2, 3, 4, 5), (300, 2, 9), (5, 130, 1), (16, 3, 5000)]


def _bn_inputs(shape, dtype, seed=0):
    c = shape[1]
    k = jax.random.split(jax.random.key(seed), 5)
    x = (jax.random.normal(k[0], shape) * 2 + 1).astype(dtype)
    return (x, jax.random.uniform(k[1], (c,), minval=0.5, maxval=2),
            jax.random.normal(k[2], (c,)), jax.random.normal(k[3], (c,)),
            jax.random.uniform(k[4], (c,), minval=0.5, maxval=2))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batch_norm_kernels_match_float64_and_the_xla_twin(shape, dtype):
    """Training forward (y, running statistics) and the gradient op's kernel; half-precision
    activations with float32 statistics and parameters."""
    xs = _bn_inputs(shape, dtype)
    got = jo.batch_norm(*xs, training=True, implementation=PALLAS)
    xla = jo.batch_norm(*xs, training=True, implementation="xla")
    ref = _bn_ref(*(np.asarray(a, np.float64) for a in xs), True)
    tol = TOL[dtype]
    for g, x, r in zip(got, xla, ref[:3], strict=True):
        assert g.dtype == x.dtype
        _close(g, r, tol * 4)  # y: the rounding of x to half precision, times ~1/std
        _close(g, x, tol)
    dy = jax.random.normal(jax.random.key(7), shape).astype(dtype)
    mu, sigma2 = (jnp.asarray(r, jnp.float32) for r in ref[3:])
    grads = jo.batch_norm_gradient(xs[0], xs[1], mu, sigma2, dy, training=True,
                                   implementation=PALLAS)
    want = jo.batch_norm_gradient(xs[0], xs[1], mu, sigma2, dy, training=True,
                                  implementation="xla")
    c = shape[1]
    f64 = _bn_vjp(*(np.asarray(a, np.float64) for a in xs), np.asarray(dy, np.float64),
                  np.zeros(c), np.zeros(c), True)
    for g, w, r in zip(grads[:3], want[:3], f64[:3], strict=True):
        assert g.dtype == w.dtype
        _close(g, w, tol)
        scale = np.max(np.abs(r))
        _close(np.asarray(g, np.float64) / scale, r / scale, tol * 4)
    assert not np.any(grads[3]) and not np.any(grads[4])  # training: no running-stat path


def test_batch_norm_statistics_kernel_keeps_small_variances():
    """Mean 1e4, std 1e-2 in float32 over 38 programs (one tile each): their partial
    statistics are merged on a shifted scale, so the variance is right to float32 rounding
    (merging unshifted means lost 2% here).  Merges inside a program: the next test."""
    rng = np.random.default_rng(0)
    x = (1e4 + 1e-2 * rng.normal(size=(300, 4, 70))).astype(np.float32)
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    _, mean, var = jo.batch_norm(x, ones, zeros, zeros, ones, momentum=0.0, training=True,
                                 implementation=PALLAS)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2)), rtol=1e-7)
    np.testing.assert_allclose(var, x64.var(axis=(0, 2)), rtol=1e-5)


@pytest.mark.parametrize("shape", [(37, 3, 70), (5, 2, 5000)], ids=str)
def test_batch_norm_kernels_merge_many_tiles_per_program(shape, monkeypatch):
    """Few programs (``_PROGRAMS = 2``), so each walks several tiles: (37, 3, 70) has 3 row
    blocks per program and a block past the end of N; (5, 2, 5000) walks 10 tiles, two along
    S.  Mean 1e4, std 1e-2: the in-kernel merges must work on the shifted scale."""
    from jaxops.kernels.batch_norm import triton

    monkeypatch.setattr(triton, "_PROGRAMS", 2)
    for f in (triton.batch_norm_statistics, triton.batch_norm_sums):
        f.clear_cache()  # retrace with the patched block plan
    rng = np.random.default_rng(0)
    x = (1e4 + 1e-2 * rng.normal(size=shape)).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    interpret = not ON_GPU
    shift = jnp.asarray(x[0, :, 0])
    mean, var = triton.batch_norm_statistics(jnp.asarray(x), shift, interpret=interpret)
    x64, axes = x.astype(np.float64), (0, 2)
    np.testing.assert_allclose(np.float64(mean) + x64[0, :, 0], x64.mean(axes), rtol=1e-9)
    np.testing.assert_allclose(var, x64.var(axes), rtol=1e-5)
    mu, inv = x64.mean(axes).astype(np.float32), (1 / np.sqrt(x64.var(axes))).astype(np.float32)
    sum_dy, sum_dy_xhat = triton.batch_norm_sums(jnp.asarray(x), jnp.asarray(dy), mu, inv,
                                                 interpret=interpret)
    xhat = (x64 - mu.astype(np.float64)[None, :, None]) * inv.astype(np.float64)[None, :, None]
    _close(sum_dy, dy.astype(np.float64).sum(axes), 1e-4)
    want = (dy * xhat).sum(axes)
    _close(np.asarray(sum_dy_xhat, np.float64) / np.abs(want).max(), want / np.abs(want).max(),
           1e-5)
    for f in (triton.batch_norm_statistics, triton.batch_norm_sums):
        f.clear_cache()  # no trace with the patched plan outlives the test


def test_batch_norm_kernels_under_every_transform():
    xs = _bn_inputs((6, 5, 7, 3), jnp.float32)
    probe = jax.random.normal(jax.random.key(3), xs[0].shape)

    def loss(impl):
        def f(x, scale, bias, mean, var):
            y, new_mean, new_var = jo.batch_norm(x, scale, bias, mean, var, training=True,
                                                 implementation=impl)
            return jnp.sum(jnp.sin(y) * probe) + jnp.sum(new_mean * new_var)
        return f

    ours, xla = loss(PALLAS), loss("xla")
    every = tuple(range(5))
    for a, b in zip(jax.grad(ours, every)(*xs), jax.grad(xla, every)(*xs), strict=True):
        _close(a, b, 1e-5)
    tangents = tuple(jax.random.normal(jax.random.key(9 + i), a.shape) for i, a in
                     enumerate(xs))
    _close(jax.jvp(ours, xs, tangents)[1], jax.jvp(xla, xs, tangents)[1], 1e-5)
    _close(jax.hessian(ours, 1)(*xs), jax.hessian(xla, 1)(*xs), 1e-5)
    stacked = jnp.stack([xs[0], 2 * xs[0] - 1])
    axes = (0, None, None, None, None)
    _close(jax.vmap(jax.grad(ours), axes)(stacked, *xs[1:]),
           jax.vmap(jax.grad(xla), axes)(stacked, *xs[1:]), 1e-5)
    _close(jax.jit(jax.grad(lambda s: jnp.sum(jax.vmap(ours, axes)(s, *xs[1:]))))(stacked),
           jax.grad(lambda s: jnp.sum(jax.vmap(xla, axes)(s, *xs[1:])))(stacked), 1e-5)


def test_batch_norm_inference_stays_on_xla():
    xs = _bn_inputs((4, 3), jnp.float32)
    with pytest.raises(ValueError, match=r"jaxops.batch_norm: implementation='pallas_interp"
                                         r"ret' does not support training=False"):
        jo.batch_norm(*xs, implementation="pallas_interpret")
    jaxpr = str(jax.make_jaxpr(lambda *a: jo.batch_norm(*a, training=True))(*xs))
    assert "pallas_call" not in jaxpr  # no benchmark has made the kernel a default


# ------------------------------------------------------------------------------ dispatch

def test_the_default_is_xla_without_a_benchmarked_kernel():
    x = jnp.ones((4, 8))
    for f in (lambda x: jo.softmax(x), lambda x: jo.softmax_cross_entropy(x, jnp.zeros(4, int))):
        assert "pallas_call" not in str(jax.make_jaxpr(f)(x))
        exported = jax.export.export(jax.jit(f), platforms=["cuda"])(x)  # no kernel in it
        assert "triton" not in exported.mlir_module()


def test_linear_cross_entropy_defaults_to_its_kernel_on_cuda_only():
    """The benchmarked default (docs/kernels.md): the kernel on CUDA, the chunked XLA scan on
    CPU, from one jitted function; reduction='none', which the kernel path does not
    support, stays on XLA everywhere."""
    s = jax.ShapeDtypeStruct
    args = s((64, 32), jnp.bfloat16), s((32, 1000), jnp.bfloat16), s((64,), jnp.int32)

    def kernels(platform, reduction):
        f = jax.grad(lambda h, w, t: jo.linear_cross_entropy(
            h, w, t, reduction=reduction).sum().astype(jnp.float32), (0, 1))
        exported = jax.export.export(jax.jit(f), platforms=[platform],
                                     disabled_checks=_CHECKS)(*args)
        return exported.mlir_module().count("__gpu$xla.gpu.triton")

    assert kernels("cuda", "mean") == 1 and kernels("cpu", "mean") == 0
    assert kernels("cuda", "none") == 0


@pytest.mark.skipif(ON_GPU, reason="the error is for platforms without the kernel")
def test_pallas_where_unavailable_is_a_clear_error():
    with pytest.raises(ValueError, match=r"jaxops.softmax: implementation='pallas' runs on cuda, "
                                         r"but this call is compiled for cpu"):
        jo.softmax(jnp.ones((2, 3)), implementation="pallas")
    with pytest.raises(ValueError, match="compiled for cpu"):  # also in its gradient
        jax.jit(jax.grad(lambda x: jo.log_softmax(x, implementation="pallas")[0, 0]))(
            jnp.ones((2, 3)))


def test_bad_implementation_arguments():
    with pytest.raises(ValueError, match=r"jaxops.relu: implementation='pallas' is not "
                                         r"registered; Relu has 'xla'"):
        jo.relu(jnp.ones(3), implementation="pallas")
    with pytest.raises(ValueError, match="implementation='triton' is not registered"):
        jo.softmax(jnp.ones((2, 3)), implementation="triton")
    with pytest.raises(ValueError, match="does not support return_log_prob=True"):
        jo.softmax_cross_entropy(jnp.ones((2, 3)), jnp.zeros(2, int), return_log_prob=True,
                                 implementation=PALLAS)


CUDA_SHAPES = [(4096, 32768, jnp.bfloat16), (1000, 5000, jnp.float32)]
_CHECKS = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]


@pytest.mark.parametrize("n,c,dtype", CUDA_SHAPES)
def test_every_kernel_lowers_for_cuda(n, c, dtype):
    """The real Triton lowering, without a GPU: forward and backward of every kernel."""
    s = jax.ShapeDtypeStruct
    x, labels = s((n, c), dtype), s((n,), jnp.int32)

    def count(f, *args):
        exported = jax.export.export(jax.jit(f), platforms=["cuda"],
                                     disabled_checks=_CHECKS)(*args)
        return exported.mlir_module().count("__gpu$xla.gpu.triton")

    for op in (jo.softmax, jo.log_softmax):
        fwd_bwd = jax.value_and_grad(
            lambda x, op=op: jnp.sum(op(x, implementation="pallas").astype(jnp.float32)))
        assert count(fwd_bwd, x) == 2  # the forward and the backward kernel
    sce = jax.value_and_grad(lambda x, t: jo.softmax_cross_entropy(
        x, t, implementation="pallas").astype(jnp.float32))
    assert count(sce, x, labels) == 1  # one fused kernel: loss and gradient
    lce = jax.value_and_grad(lambda hs, w, t: jo.linear_cross_entropy(
        hs, w, t, implementation="pallas").astype(jnp.float32), (0, 1))
    assert count(lce, s((n, 256), dtype), s((256, c), dtype), labels) == 1


@pytest.mark.parametrize("shape,dtype", [((64, 256, 56, 56), jnp.bfloat16),
                                         ((16384, 4096), jnp.float32), ((7, 5, 3), jnp.float16)],
                         ids=str)
def test_batch_norm_kernels_lower_for_cuda(shape, dtype):
    """At the benchmark's shapes: the statistics kernel in the forward, the sums kernel in
    the backward, nothing else."""
    s = jax.ShapeDtypeStruct
    x, vector = s(shape, dtype), s((shape[1],), jnp.float32)

    def count(f):
        exported = jax.export.export(jax.jit(f), platforms=["cuda"],
                                     disabled_checks=_CHECKS)(x, vector)
        return exported.mlir_module().count("__gpu$xla.gpu.triton")

    def loss(x, scale):
        y = jo.batch_norm(x, scale, scale, scale, scale, training=True,
                          implementation="pallas")[0]
        return jnp.sum(y.astype(jnp.float32))

    assert count(loss) == 1
    assert count(jax.value_and_grad(loss, (0, 1))) == 2


def test_vmapped_batch_norm_kernels_lower_for_cuda():
    """Under vmap the reductions run Pallas' batching rule on each shard: one more grid axis
    (grid_z = the batch), the whole batch in one kernel."""
    s = jax.ShapeDtypeStruct
    f = jax.vmap(jax.grad(lambda x, scale: jnp.sum(jo.batch_norm(
        x, scale, scale, scale, scale, training=True, implementation="pallas")[0].astype(
            jnp.float32)), (0, 1)))
    text = jax.export.export(jax.jit(f), platforms=["cuda"], disabled_checks=_CHECKS)(
        s((3, 64, 32, 49), jnp.bfloat16), s((3, 32), jnp.float32)).mlir_module()
    calls = [line for line in text.splitlines() if "__gpu$xla.gpu.triton" in line]
    assert len(calls) == 2
    assert all("grid_z = 3" in c and "tensor<3x64x32x49xbf16>" in c for c in calls)


# --------------------------------------------------------------------- sharded inputs
# Explicit sharding (jax.make_mesh's default axis type): each device runs the kernel on its
# shard under shard_map (jaxops.kernels.sharding).

EIGHT = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices (on CPU: the "
                                                          "forced host devices, conftest.py)")


def _sharded(mesh, x, *spec):
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec(*spec)))


def _per_shard(f, *args):
    """Whether the jaxpr's first kernel is inside a shard_map (a necessary condition; the
    CUDA lowering test below shows the per-shard shapes)."""
    text = str(jax.make_jaxpr(f)(*args))
    return "shard_map" in text and text.index("shard_map") < text.index("pallas_call")


@EIGHT
@pytest.mark.parametrize("op", [jo.softmax, jo.log_softmax])
def test_row_kernels_on_sharded_rows(op):
    """Rows sharded over 'data', the normalized axis over 'model' (gathered first): values,
    grad, jvp and vmap over the sharded axis match the unsharded XLA op."""
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    x0 = jax.random.normal(jax.random.key(0), (8, 6, 40))
    probe = jax.random.normal(jax.random.key(1), x0.shape)

    def loss(impl, probe=probe):
        return lambda x: jnp.sum(jnp.sin(op(x, implementation=impl)) * probe)

    with jax.set_mesh(mesh):
        x = _sharded(mesh, x0, "data", None, "model")
        ours, xla = loss(PALLAS), loss("xla")
        assert _per_shard(jax.grad(ours), x)
        v, g = jax.jit(jax.value_and_grad(ours))(x)
        assert jax.typeof(g).sharding.spec == jax.typeof(x).sharding.spec
        # vmap over the sharded axis
        batched = jax.jit(jax.vmap(jax.grad(loss(PALLAS, probe[0]))))(x)
        tangent = jax.jit(lambda x: jax.jvp(ours, (x,), (x,))[1])(x)
    v_ref, g_ref = jax.value_and_grad(xla)(x0)
    _close(v, v_ref, 1e-5)
    _close(g, g_ref, 1e-5)
    _close(batched, jax.vmap(jax.grad(loss("xla", probe[0])))(x0), 1e-5)
    _close(tangent, jax.jvp(xla, (x0,), (x0,))[1], 1e-5)


@EIGHT
def test_softmax_cross_entropy_kernel_on_sharded_rows():
    mesh = jax.make_mesh((8,), ("data",))
    scores0 = jax.random.normal(jax.random.key(0), (16, 40, 3)) * 3
    labels0 = (jnp.arange(48).reshape(16, 3) * 7) % 40
    labels0 = labels0.at[2].set(-100)  # ignored entries on one shard
    weights = jax.random.uniform(jax.random.key(1), (40,))

    def loss(impl):
        return lambda x, t: jo.softmax_cross_entropy(x, t, weights, ignore_index=-100,
                                                     implementation=impl)

    scores, labels = _sharded(mesh, scores0, "data"), _sharded(mesh, labels0, "data")
    assert _per_shard(jax.grad(loss(PALLAS)), scores, labels)
    v, g = jax.jit(jax.value_and_grad(loss(PALLAS)))(scores, labels)
    v_ref, g_ref = jax.value_and_grad(loss("xla"))(scores0, labels0)
    _close(v, v_ref, 1e-5)
    _close(g, g_ref, 1e-5)
    assert g.sharding.is_equivalent_to(scores.sharding, 3)


@EIGHT
@pytest.mark.parametrize("implementation", [None, "xla", PALLAS])
def test_linear_cross_entropy_on_a_sharded_batch(implementation):
    """The chunked scan keeps the batch sharded (strided chunks); the kernel runs per shard.
    ``None`` traces the CUDA default's kernel branch too (lax.platform_dependent)."""
    mesh = jax.make_mesh((8,), ("data",))
    labels0 = jnp.arange(16) % 40
    hs0 = jax.random.normal(jax.random.key(1), (16, 8))
    w = jax.random.normal(jax.random.key(2), (8, 40))
    labels, hs = _sharded(mesh, labels0, "data"), _sharded(mesh, hs0, "data")
    v, (dh, dw) = jax.jit(jax.value_and_grad(lambda hs, w: jo.linear_cross_entropy(
        hs, w, labels, chunk_size=4, implementation=implementation), (0, 1)))(hs, w)
    v_ref, (dh_ref, dw_ref) = jax.value_and_grad(
        lambda hs, w: jo.softmax_cross_entropy(hs @ w, labels0), (0, 1))(hs0, w)
    _close(v, v_ref, 1e-5)
    _close(dh, dh_ref, 1e-5)
    _close(dw, dw_ref, 1e-5)
    assert dh.sharding.is_equivalent_to(hs.sharding, 2)


@EIGHT
@pytest.mark.parametrize("spec", [("data", "model"), ("data", None, "model")], ids=str)
def test_batch_norm_kernels_on_a_sharded_batch(spec):
    """Each device reduces its shard; the partial statistics and sums are combined over the
    mesh axes that split N (and the spatial axis), so they are the global batch's."""
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    xs0 = _bn_inputs((16, 6, 10), jnp.float32)
    probe = jax.random.normal(jax.random.key(3), xs0[0].shape)

    def loss(impl):
        def f(*xs):
            y, new_mean, new_var = jo.batch_norm(*xs, training=True, implementation=impl)
            return jnp.sum(jnp.sin(y) * probe) + jnp.sum(new_mean * new_var), (new_mean,
                                                                                new_var)
        return f

    channels = spec[1]
    with jax.set_mesh(mesh):
        x = _sharded(mesh, xs0[0], *spec)
        vectors = [_sharded(mesh, v, channels) for v in xs0[1:]]
        (v, stats), grads = jax.jit(jax.value_and_grad(loss(PALLAS), range(5), has_aux=True))(
            x, *vectors)
        assert jax.typeof(grads[0]).sharding.spec == jax.typeof(x).sharding.spec
    (v_ref, stats_ref), grads_ref = jax.value_and_grad(loss("xla"), range(5),
                                                       has_aux=True)(*xs0)
    _close(v, v_ref, 1e-5)
    for a, b in zip((*stats, *grads), (*stats_ref, *grads_ref), strict=True):
        _close(a, b, 1e-5)


@EIGHT
def test_replicated_inputs_under_an_explicit_mesh():
    """Unsharded inputs inside ``jax.set_mesh``: the kernel runs whole on every device."""
    mesh = jax.make_mesh((8,), ("data",))
    x = jax.random.normal(jax.random.key(0), (5, 33))
    with jax.set_mesh(mesh):
        got = jax.jit(jax.grad(
            lambda x: jnp.sum(jo.log_softmax(x, implementation=PALLAS)[:, 0])))(x)
    _close(got, jax.grad(lambda x: jnp.sum(jo.log_softmax(x)[:, 0]))(x), 1e-5)


# Automatic sharding (AxisType.Auto: jit with NamedSharding inputs): the kernel is a
# custom_partitioning call, and XLA's partitioner lowers it per shard at compile time.

AUTO = (jax.sharding.AxisType.Auto,) * 2


@pytest.fixture
def kernel_shapes(monkeypatch):
    """The operand shapes of every kernel traced from now on (the caches are cleared, so
    the per-shard function partitioning lowers is traced too, after the global ones)."""
    from jax.experimental import pallas as pl

    shapes, pallas_call = [], pl.pallas_call

    def spy(*args, **kwargs):
        kernel = pallas_call(*args, **kwargs)

        def call(*operands):
            shapes.append(tuple(o.shape for o in operands))
            return kernel(*operands)

        return call

    jax.clear_caches()
    monkeypatch.setattr(pl, "pallas_call", spy)
    yield shapes
    jax.clear_caches()  # no traces of the spy outlive the test


@contextlib.contextmanager
def _partitioner(shardy: bool):
    old = jax.config.jax_use_shardy_partitioner
    jax.config.update("jax_use_shardy_partitioner", shardy)
    try:
        yield
    finally:
        jax.config.update("jax_use_shardy_partitioner", old)


def _first_operands(shapes):
    return [s[0] for s in shapes]


def _fresh(shapes):
    """Forget the traced kernels (a cached trace is not seen again)."""
    jax.clear_caches()
    shapes.clear()


@EIGHT
@pytest.mark.parametrize("op,shardy", [(jo.softmax, True), (jo.log_softmax, True),
                                       (jo.softmax, False)], ids=["softmax", "log_softmax",
                                                                  "softmax-gspmd"])
def test_row_kernels_under_automatic_sharding(op, shardy, kernel_shapes):
    """Rows over 'data', the normalized axis over 'model' (gathered): each device's kernel
    takes its 48 / 4 rows, also under vmap over a sharded batch axis (2 / 2 x 12 rows);
    values, grad, vmap(grad) and jvp match the unsharded XLA op.  GSPMD (the partitioner
    before Shardy) asks the op for its output sharding instead of reading a rule."""
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=AUTO)
    x0 = jax.random.normal(jax.random.key(0), (8, 6, 40))
    probe = jax.random.normal(jax.random.key(1), x0.shape)

    def loss(impl):
        return lambda x: jnp.sum(jnp.sin(op(x, implementation=impl)) * probe)

    x = _sharded(mesh, x0, "data", None, "model")
    stacked = _sharded(mesh, jnp.stack([x0, 2 * x0]), "model", "data")
    with _partitioner(shardy):
        v, g = jax.jit(jax.value_and_grad(loss(PALLAS)))(x)
        # the forward kernel (x) and the backward one (y, dy), each on 12 of 48 rows
        assert {((12, 40),), ((12, 40), (12, 40))} <= set(kernel_shapes)
        _fresh(kernel_shapes)
        batched = jax.jit(jax.vmap(jax.grad(loss(PALLAS))))(stacked)
        assert {((12, 40),), ((12, 40), (12, 40))} <= set(kernel_shapes)
        tangent = jax.jit(lambda x: jax.jvp(loss(PALLAS), (x,), (x,))[1])(x)
    v_ref, g_ref = jax.value_and_grad(loss("xla"))(x0)
    _close(v, v_ref, 1e-5)
    _close(g, g_ref, 1e-5)
    assert g.sharding.spec[0] == "data"
    _close(batched, jax.vmap(jax.grad(loss("xla")))(jnp.stack([x0, 2 * x0])), 1e-5)
    _close(tangent, jax.jvp(loss("xla"), (x0,), (x0,))[1], 1e-5)


@EIGHT
def test_cross_entropy_kernels_under_automatic_sharding(kernel_shapes):
    """softmax_cross_entropy (48 rows over 8 devices: 6 per kernel) and the chunked
    linear_cross_entropy (each chunk of 16 rows: 2 per device) against the unsharded XLA
    ops."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=AUTO[:1])
    scores0 = jax.random.normal(jax.random.key(0), (16, 40, 3)) * 3
    labels0 = ((jnp.arange(48).reshape(16, 3) * 7) % 40).at[2].set(-100)
    weights = jax.random.uniform(jax.random.key(1), (40,))

    def sce(impl):
        return lambda x, t: jo.softmax_cross_entropy(x, t, weights, ignore_index=-100,
                                                     implementation=impl)

    scores, labels = _sharded(mesh, scores0, "data"), _sharded(mesh, labels0, "data")
    v, g = jax.jit(jax.value_and_grad(sce(PALLAS)))(scores, labels)
    assert ((6, 40), (6,)) in kernel_shapes
    v_ref, g_ref = jax.value_and_grad(sce("xla"))(scores0, labels0)
    _close(v, v_ref, 1e-5)
    _close(g, g_ref, 1e-5)

    hs0 = jax.random.normal(jax.random.key(2), (64, 8))
    w = jax.random.normal(jax.random.key(3), (8, 40))
    t0 = jnp.arange(64) % 40
    _fresh(kernel_shapes)
    v, (dh, dw) = jax.jit(jax.value_and_grad(lambda hs, w, t: jo.linear_cross_entropy(
        hs, w, t, chunk_size=16, implementation=PALLAS), (0, 1)))(
        _sharded(mesh, hs0, "data"), w, _sharded(mesh, t0, "data"))
    assert ((2, 40), (2,)) in kernel_shapes  # 16 rows of a chunk / 8 devices
    v_ref, (dh_ref, dw_ref) = jax.value_and_grad(
        lambda hs, w: jo.softmax_cross_entropy(hs @ w, t0), (0, 1))(hs0, w)
    _close(v, v_ref, 1e-5)
    _close(dh, dh_ref, 1e-5)
    _close(dw, dw_ref, 1e-5)


@EIGHT
@pytest.mark.parametrize("spec,local,shardy", [
    (("data", "model"), (4, 3, 10), True), (("data", None, "model"), (4, 6, 5), True),
    (("data", "model"), (4, 3, 10), False)], ids=["NC", "NS", "NC-gspmd"])
def test_batch_norm_kernels_under_automatic_sharding(spec, local, shardy, kernel_shapes,
                                                     monkeypatch):
    """Each device reduces its shard, combined over the axes that split N and the spatial
    axis; vmap over a sharded batch axis keeps it sharded; an N that the partitioner splits
    unevenly (a slice of 10 of 16 rows over 4 devices) is gathered, not padded into the
    sums."""
    from jaxops.kernels import sharding

    per_shard, blocks = sharding._per_shard, []  # each per-shard call's x, batch axes included

    def spy(local, batch, axes):
        fn = per_shard(local, batch, axes)
        return lambda x, *args: (blocks.append(x.shape), fn(x, *args))[1]

    monkeypatch.setattr(sharding, "_per_shard", spy)
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=AUTO)
    xs0 = _bn_inputs((16, 6, 10), jnp.float32)
    probe = jax.random.normal(jax.random.key(3), xs0[0].shape)

    def loss(impl, rows=16):
        def f(*xs):
            y, new_mean, new_var = jo.batch_norm(xs[0][:rows], *xs[1:], training=True,
                                                 implementation=impl)
            return jnp.sum(jnp.sin(y) * probe[:rows]) + jnp.sum(new_mean * new_var)
        return f

    x = _sharded(mesh, xs0[0], *spec)
    for rows in (16, 10):
        with _partitioner(shardy):
            v, grads = jax.jit(jax.value_and_grad(loss(PALLAS, rows), range(5)))(
                x, *xs0[1:])
        v_ref, grads_ref = jax.value_and_grad(loss("xla", rows), range(5))(*xs0)
        # a sum of 960 float32 terms of size ~1 in another order (measured: 1.2e-5 apart;
        # y itself is within 1 ulp of the XLA op's)
        _close(v, v_ref, 1e-4)
        for a, b in zip(grads, grads_ref, strict=True):
            _close(a, b, 1e-5)
        assert (local if rows == 16 else (10, *local[1:])) in _first_operands(kernel_shapes)
        _fresh(kernel_shapes)  # N=10: whole, the other axes split

    stacked = jnp.stack([xs0[0], 3 * xs0[0] + 1])
    with _partitioner(shardy):
        got = jax.jit(jax.vmap(jax.grad(loss(PALLAS)), (0, None, None, None, None)))(
            _sharded(mesh, stacked, "model", "data"), *xs0[1:])
    assert (4, 6, 10) in _first_operands(kernel_shapes)
    assert (1, 4, 6, 10) in blocks  # per device: a batch of 1 (of 2), 16 / 4 rows
    _close(got, jax.vmap(jax.grad(loss("xla")), (0, None, None, None, None))(
        stacked, *xs0[1:]), 1e-5)


@EIGHT
def test_sharded_kernels_lower_for_cuda_per_shard():
    """Cross-lowered for 8 GPUs, the kernel sees one shard: (64 / 8) rows."""
    mesh = jax.make_mesh((8,), ("data",))
    rows = NamedSharding(mesh, PartitionSpec("data"))
    x = jax.ShapeDtypeStruct((64, 1000), jnp.bfloat16, sharding=rows)
    labels = jax.ShapeDtypeStruct((64,), jnp.int32, sharding=rows)
    f = jax.value_and_grad(lambda x, t: jo.softmax_cross_entropy(
        x, t, implementation="pallas").astype(jnp.float32))
    text = jax.export.export(jax.jit(f), platforms=["cuda"], disabled_checks=_CHECKS)(
        x, labels).mlir_module()
    calls = [line for line in text.splitlines() if "__gpu$xla.gpu.triton" in line]
    assert len(calls) == 1 and "(tensor<8x1000xbf16>, tensor<8xi32>)" in calls[0]
    bn = jax.grad(lambda x, s: jo.batch_norm(x, s, s, s, s, training=True,
                                             implementation="pallas")[0].astype(
                                                 jnp.float32).sum(), (0, 1))
    x = jax.ShapeDtypeStruct((64, 32, 49), jnp.bfloat16, sharding=rows)
    scale = jax.ShapeDtypeStruct((32,), jnp.float32)
    text = jax.export.export(jax.jit(bn), platforms=["cuda"], disabled_checks=_CHECKS)(
        x, scale).mlir_module()
    calls = [line for line in text.splitlines() if "__gpu$xla.gpu.triton" in line]
    assert len(calls) == 2 and all("tensor<8x32x49xbf16>" in c for c in calls)


def test_explicitly_sharded_kernels_lower_without_devices():
    """AOT lowering for an AbstractMesh (no devices): the gradient pair's equation does not
    ask for devices unless it holds a custom_partitioning call (automatic sharding)."""
    mesh = jax.sharding.AbstractMesh((8,), ("data",),
                                     axis_types=(jax.sharding.AxisType.Explicit,))
    x = jax.ShapeDtypeStruct((64, 1000), jnp.float32,
                             sharding=NamedSharding(mesh, PartitionSpec("data")))
    f = jax.jit(jax.grad(lambda x: jnp.sum(jo.log_softmax(x, implementation="pallas"))))
    text = f.trace(x).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 2  # forward and backward kernels
