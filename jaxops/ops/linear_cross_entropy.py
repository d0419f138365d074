"""The LM-head loss ``softmax_cross_entropy(h @ w, labels)`` without the N x V logits.

``h`` (N, H) are the last hidden states, ``w`` (H, V) the output projection.  Materialized,
the logits and their gradient take 2 N V floats (8 GiB in float32 at N = 8192, V = 131072);
here the tokens go through in chunks of ``chunk_size`` rows (a ``lax.scan``), so only
``chunk_size x V`` logits exist at a time and peak memory does not grow with N V.

* Forward: per chunk, ``z = h_c @ w`` (accumulated in float32), the loss ``logsumexp(z) -
  z[label]``.
* The registered gradient op (:func:`linear_cross_entropy_gradient`) recomputes each chunk's
  logits and accumulates ``dh = G w^T`` and ``dw += h_c^T G`` with ``G = softmax(z) -
  onehot``, scaled by each entry's weight and ``dloss``.  It is linear in ``dloss`` with a
  declared transpose (the forward-mode tangent, another chunked scan), so reverse mode runs
  the chunked gradient and forward mode the chunked tangent; neither stacks per-chunk
  residuals (:mod:`jaxops._ad`).  Cost: 4 passes of N H V multiply-adds (forward, recompute,
  dh, dw) against 3 for the materializing formulation -- the price of O(chunk V) memory, as in
  Apple's Cut Cross-Entropy.
* ``implementation="pallas"`` computes the gradient during the forward pass (Liger-Kernel's
  fused linear cross-entropy): per chunk the fused softmax cross-entropy kernel writes the loss
  and ``G`` in one pass over the logits, ``dh`` and ``dw`` are accumulated right away, and the
  backward only scales them by ``dloss``: 3 passes.  It supports ``reduction`` "mean" and
  "sum" (a per-entry ``dloss`` cannot be applied after ``dw`` is summed).  That path, and how
  it is differentiated, is :mod:`jaxops.kernels.linear_cross_entropy`; it shares this
  module's chunked scans (``loss_scan``, ``gradient_scan``, ``xla_rows``).

Semantics (labels, ``ignore_index``, class weights, reductions, a fully ignored batch) are
those of :func:`jaxops.softmax_cross_entropy` with classes on the last axis of the logits.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from jax.typing import ArrayLike

from jaxops import schema
from jaxops._ad import linear_pair
from jaxops._numerics import upcast
from jaxops._op import defop
from jaxops.kernels.sharding import padded_spec, row_axes
from jaxops.ops.cross_entropy import cross_entropy_rows_xla, softmax_cross_entropy_gradient
from jaxops.ops.loss_machinery import (
    IGNORE_INDEX,
    LABELLED_TYPES,
    REDUCTION,
    check_dloss_shape,
    labels_in_range,
    labels_parameter,
    loss_coefficient,
    loss_shape,
    reduce_entries,
    weights_parameter,
)
from jaxops.schema import JAXOPS_DOMAIN, XLA_AND_PALLAS, Attribute, Cost, OpSchema, Parameter

#: bytes of float32 logits per chunk when ``chunk_size`` is None
_CHUNK_BYTES = 64 * 2**20

_CHUNK = Attribute(
    "chunk_size", "int", None, onnx=False,
    doc="tokens per chunk (None: as many as keep a chunk's float32 logits near 64 MiB)",
    check=lambda c: None if c is None or c >= 1 else "must be >= 1 (or None).")


def _chunk(h, v: int, chunk_size: int | None) -> int:
    """Rows per chunk: ``chunk_size`` (or ~64 MiB of float32 logits), at most N, rounded up
    to a multiple of the shards of a batch-sharded ``h``."""
    if chunk_size is None:
        chunk_size = max(8, _CHUNK_BYTES // (4 * max(v, 1)))
    chunk = max(1, min(chunk_size, h.shape[0]))
    shards = math.prod(jax.typeof(h).sharding.mesh.shape[a] for a in row_axes(h))
    return -(-chunk // shards) * shards


def _check(s: OpSchema, h, w, labels, weights):
    f = s.function
    if len(h.shape) != 2 or len(w.shape) != 2 or h.shape[1] != w.shape[0]:
        raise ValueError(f"jaxops.{f}: inputs 'h' (N, H) and 'w' (H, V) must be matrices with "
                         f"h.shape[1] == w.shape[0], got {h.shape} and {w.shape}.")
    if labels.shape != (h.shape[0],):
        raise ValueError(f"jaxops.{f}: input 'labels' must have shape ({h.shape[0]},), one per "
                         f"row of h, got {labels.shape}.")
    if weights is not None and weights.shape != (w.shape[1],):
        raise ValueError(f"jaxops.{f}: input 'weights' must have shape ({w.shape[1]},), one "
                         f"per class, got {weights.shape}.")
    if h.dtype != w.dtype:
        raise TypeError(f"jaxops.{f}: inputs 'h' and 'w' must have one dtype, got {h.dtype} "
                        f"and {w.dtype}.")


def _infer(s: OpSchema, in_avals, *, reduction, **attrs):
    h, w, labels, weights = in_avals
    _check(s, h, w, labels, weights)
    return (jax.ShapeDtypeStruct(loss_shape(labels.shape, reduction), h.dtype),)


def _gradient_infer(s: OpSchema, in_avals, *, reduction, **attrs):
    h, w, labels, weights, dloss = in_avals
    (loss,) = _infer(s, in_avals[:4], reduction=reduction)
    check_dloss_shape(s, dloss, loss.shape, reduction)
    return (jax.ShapeDtypeStruct(h.shape, h.dtype), jax.ShapeDtypeStruct(w.shape, w.dtype))


def _cost(matmuls: int):
    def cost(in_avals, out_avals, **attrs):
        h, w = in_avals[:2]
        (n, d), v = h.shape, w.shape[1]
        read = sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize
                   for a in in_avals if a is not None)
        written = sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in out_avals)
        return Cost(2 * matmuls * n * d * v + 5 * n * v, n * v + n, read, written)

    return cost


# ------------------------------------------------------------------------- the chunking

def _chunks(h, labels, chunk):
    """h (N, H) and labels as (chunks, chunk, ...): chunk ``c`` holds rows ``c, c + chunks,
    c + 2 chunks, ...`` (strided), so a batch sharded in contiguous blocks stays sharded
    within every chunk and every device works on every step of the scan.  N is padded to
    whole chunks; the padding rows (h = 0, label -1) are dropped by :func:`_unchunk`."""
    return _strided(h, chunk, 0), _strided(labels, chunk, -1)


def _strided(x, chunk, fill):
    n = x.shape[0]
    chunks = -(-n // chunk)
    x = jnp.pad(x, [(0, chunks * chunk - n)] + [(0, 0)] * (x.ndim - 1), constant_values=fill)
    spec = padded_spec(x)
    out = None if spec[0] is None else NamedSharding(jax.typeof(x).sharding.mesh,
                                                     P(spec[0], None, *spec[1:]))
    return jnp.swapaxes(jax.lax.reshape(x, (chunk, chunks, *x.shape[1:]), out_sharding=out),
                        0, 1)


def _unchunk(rows, n):
    rows = jnp.swapaxes(rows, 0, 1)
    spec = padded_spec(rows)
    out = None if spec[0] is None else NamedSharding(jax.typeof(rows).sharding.mesh,
                                                     P(spec[0], *spec[2:]))
    return jax.lax.reshape(rows, (rows.shape[0] * rows.shape[1], *rows.shape[2:]),
                           out_sharding=out)[:n]


def _logits(hc, w):
    return jnp.matmul(hc, w, preferred_element_type=upcast(hc).dtype)


def xla_rows(ignore_index):
    """Each chunk's step in XLA: logits -> (per-row loss, G = softmax - onehot)."""
    return functools.partial(cross_entropy_rows_xla, ignore_index=ignore_index)


def loss_scan(h, w, labels, rows, chunk_size):
    """Per-row loss (compute dtype), chunk by chunk; ``rows(z, labels)[0]`` is the loss."""
    n = h.shape[0]
    hc, lc = _chunks(h, labels, _chunk(h, w.shape[1], chunk_size))

    def body(carry, xs):
        return carry, rows(_logits(xs[0], w), xs[1])[0]

    _, loss = jax.lax.scan(body, None, (hc, lc))
    return _unchunk(loss, n)


def gradient_scan(h, w, labels, coef, rows, chunk_size):
    """(per-row loss, dh, dw) for per-entry coefficients ``coef`` = d total / d loss_n:
    ``rows(z, labels) -> (loss, G)`` on each chunk, ``dh = (coef G) w^T``, ``dw += h^T (coef
    G)``."""
    n = h.shape[0]
    chunk = _chunk(h, w.shape[1], chunk_size)
    hc, lc = _chunks(h, labels, chunk)
    cc = _strided(coef, chunk, 0)  # padding rows: 0

    def body(dw, xs):
        hx, lx, cx = xs
        loss, g = rows(_logits(hx, w), lx)
        dz = upcast(g) * cx[:, None]
        dh = jnp.matmul(dz, upcast(w).T).astype(h.dtype)
        # a sum over the chunk's rows: sharded rows reduce to w's sharding
        hs = jax.typeof(hx).sharding
        out = (NamedSharding(hs.mesh, P(*jax.typeof(w).sharding.spec))
               if hs.spec[:1] not in ((), (None,)) else None)
        return dw + jnp.matmul(upcast(hx).T, dz, out_sharding=out), (loss, dh)

    dw, (loss, dh) = jax.lax.scan(body, jnp.zeros(w.shape, upcast(w).dtype), (hc, lc, cc))
    return _unchunk(loss, n), _unchunk(dh, n), dw.astype(w.dtype)


# ------------------------------------------------------------------ LinearCrossEntropyLoss

LINEAR_CROSS_ENTROPY = schema.register(OpSchema(
    name="LinearCrossEntropyLoss", function="linear_cross_entropy", domain=JAXOPS_DOMAIN,
    doc="loss = softmax_cross_entropy(h @ w, labels) over the last axis, computed in chunks "
        "of tokens without materializing the logits.",
    inputs=(Parameter("h", doc="hidden states, shape (N, H)"),
            Parameter("w", doc="output projection, shape (H, V)"),
            labels_parameter(dtype_advice=""), weights_parameter()),
    outputs=(Parameter("output", doc="the loss: shape (N,) for 'none', else ()"),),
    attributes=(IGNORE_INDEX, REDUCTION, _CHUNK),
    type_constraints=LABELLED_TYPES, elementwise=False, identical_type_and_shape=False,
    value_check=lambda h, w, labels, weights=None, *, ignore_index, **attrs: labels_in_range(
        w, labels, ignore_index=ignore_index),  # w (H, V) has the classes on axis 1
    gradient="LinearCrossEntropyLossGradient", infer_fn=_infer, cost_fn=_cost(1),
    implementations=XLA_AND_PALLAS,
    # measured on an H100: 1.12-1.26x faster than the chunked XLA path at equal memory
    # (benchmarks/results/fused-gpu.md, docs/kernels.md)
    default_implementation={"cuda": "pallas"},
    formula="softmax_cross_entropy(h @ w, labels), chunked: no N×V logits",
    convention="fully ignored → 0",
))


@defop(LINEAR_CROSS_ENTROPY)
def linear_cross_entropy(
    h: ArrayLike, w: ArrayLike, labels: ArrayLike, weights: ArrayLike | None = None, *,
    ignore_index: int | None = None, reduction: str = "mean", chunk_size: int | None = None,
) -> jax.Array:
    r"""Cross-entropy of the logits ``h @ w`` without materializing them.

    .. math:: \ell_n = -w_{l_n} \log \mathrm{softmax}(h_n W)_{l_n}

    Equal to ``softmax_cross_entropy(h @ w, labels, weights, ...)`` (classes last), with
    memory O(chunk_size x V) instead of O(N x V) in the forward and the backward pass.

    Args:
      h: (N, H) float array (hidden states).
      w: (H, V) float array of h's dtype (the LM head).
      labels: (N,) int32/int64 classes in ``[0, V)`` or ``ignore_index``.
      weights: optional (V,) class weights.
      ignore_index: label value to skip (static), or None.
      reduction: "none" | "sum" | "mean".
      chunk_size: tokens per chunk (static); None keeps a chunk's logits near 64 MiB.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> h, w = jnp.eye(2), jnp.array([[0.0, 20.0], [0.0, 0.0]])
      >>> jaxops.linear_cross_entropy(h, w, jnp.array([1, 0]), reduction="none")
      Array([0.       , 0.6931472], dtype=float32)

    References:
      Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models" (2024);
      Liger-Kernel's FusedLinearCrossEntropy.
    """
    loss = loss_scan(h, w, labels, xla_rows(ignore_index), chunk_size)
    return reduce_entries(loss, labels, weights, w.shape[1], ignore_index=ignore_index,
                          reduction=reduction).astype(h.dtype)


@linear_cross_entropy.defonnx
def _linear_cross_entropy_onnx(b, h, w, labels, weights, *, ignore_index, reduction, **unused):
    """The logits materialized (an ONNX graph has no chunked loop worth its cost; the
    implementation's scan has no ONNX translation)."""
    z = b.op("MatMul", h, w)
    attrs = {"reduction": reduction} | ({} if ignore_index is None else
                                        {"ignore_index": ignore_index})
    return b.op("SoftmaxCrossEntropyLoss", z, labels, *([weights] if weights else []), **attrs)


@linear_cross_entropy.defgrad
def _linear_cross_entropy_vjp(h, w, labels, weights, loss, dloss, **attrs):
    return linear_cross_entropy_gradient(h, w, labels, weights, dloss, **attrs)


# -------------------------------------------------------------- LinearCrossEntropyLossGradient

def _tangent_scan(h, w, labels, th, tw, *, ignore_index, chunk_size):
    """Per-row <G_n, th_n w + h_n tw>: the tangent of each row's loss.  A tangent that is
    None (a symbolic zero: that input is not differentiated) has no term and no matmul."""
    n = h.shape[0]
    chunk = _chunk(h, w.shape[1], chunk_size)
    hc, lc = _chunks(h, labels, chunk)
    tc = None if th is None else _chunks(th, labels, chunk)[0]

    def body(carry, xs):
        hx, lx, tx = xs
        _, g = cross_entropy_rows_xla(_logits(hx, w), lx, ignore_index=ignore_index)
        tz = [_logits(tx, w) if tx is not None else None,
              _logits(hx, tw) if tw is not None else None]
        return carry, sum(jnp.sum(g * t, axis=1) for t in tz if t is not None)

    _, rows = jax.lax.scan(body, None, (hc, lc, tc))
    return _unchunk(rows, n)


@functools.cache
def _gradient_pair(ignore_index, reduction, chunk_size, has_weights):
    # the pair's operands are arrays: no class weights travel as an empty array
    def apply(h, w, labels, weights, dloss):
        coef, _ = loss_coefficient(labels, weights if has_weights else None, dloss,
                                   w.shape[1], ignore_index=ignore_index, reduction=reduction)
        coef = jnp.broadcast_to(coef, labels.shape)
        _, dh, dw = gradient_scan(h, w, labels, coef, xla_rows(ignore_index), chunk_size)
        return dh, dw

    def transpose(h, w, labels, weights, th, tw):
        rows = _tangent_scan(h, w, labels, th, tw, ignore_index=ignore_index,
                             chunk_size=chunk_size)
        return (reduce_entries(rows, labels, weights if has_weights else None, w.shape[1],
                               ignore_index=ignore_index, reduction=reduction).astype(h.dtype),)

    return linear_pair(apply, transpose, name="linear_cross_entropy_gradient_scan")


LINEAR_CROSS_ENTROPY_GRADIENT = schema.register(OpSchema(
    name="LinearCrossEntropyLossGradient", function="linear_cross_entropy_gradient",
    domain=JAXOPS_DOMAIN,
    doc="(dh, dw) of LinearCrossEntropyLoss: G = softmax(h @ w) - onehot(labels), scaled by "
        "weights[labels] * dloss over the reduction; dh = G w^T, dw = h^T G, chunked.",
    inputs=(Parameter("h", doc="hidden states, shape (N, H)"),
            Parameter("w", doc="output projection, shape (H, V)"),
            labels_parameter(dtype_advice=""), weights_parameter(differentiable=True),
            Parameter("dloss", doc="gradient w.r.t. the loss")),
    outputs=(Parameter("dh", doc="gradient w.r.t. h"), Parameter("dw", doc="gradient w.r.t. w")),
    attributes=(IGNORE_INDEX, REDUCTION, _CHUNK), type_constraints=LABELLED_TYPES,
    elementwise=False, identical_type_and_shape=False, infer_fn=_gradient_infer,
    cost_fn=_cost(3),
))


@defop(LINEAR_CROSS_ENTROPY_GRADIENT)
def linear_cross_entropy_gradient(
    h: ArrayLike, w: ArrayLike, labels: ArrayLike, weights: ArrayLike | None,
    dloss: ArrayLike, *, ignore_index: int | None = None, reduction: str = "mean",
    chunk_size: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""Gradient op of :func:`linear_cross_entropy`: ``(dh, dw)``, chunked like the loss.

    Example:
      >>> import jax.numpy as jnp, jaxops
      >>> dh, dw = jaxops.linear_cross_entropy_gradient(
      ...     jnp.eye(2), jnp.zeros((2, 2)), jnp.array([0, 1]), None, jnp.float32(1.0))
      >>> dw
      Array([[-0.25,  0.25],
             [ 0.25, -0.25]], dtype=float32)
    """
    pair = _gradient_pair(ignore_index, reduction, chunk_size, weights is not None)
    wts = weights if weights is not None else jnp.zeros((0,), h.dtype)
    return pair((h, w, labels, wts), (dloss,))


@linear_cross_entropy_gradient.defonnx
def _linear_cross_entropy_gradient_onnx(b, h, w, labels, weights, dloss, *, ignore_index,
                                        reduction, **unused):
    logp = b.op("LogSoftmax", b.op("MatMul", h, w), axis=1)
    dz = softmax_cross_entropy_gradient.onnx_body(b, logp, labels, weights, dloss,
                                                  ignore_index=ignore_index, reduction=reduction)
    return (b.op("MatMul", dz, b.op("Transpose", w, perm=[1, 0])),
            b.op("MatMul", b.op("Transpose", h, perm=[1, 0]), dz))
