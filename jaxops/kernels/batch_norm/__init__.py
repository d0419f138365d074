"""The Pallas kernels of batch_norm and batch_norm_gradient (training mode), and how they
are differentiated (:mod:`jaxops.kernels` states the rules; :mod:`jaxops.ops.normalization`
keeps the ops).

Training mode only (inference is one elementwise pass, which XLA fuses).  The kernels do the
reductions: the batch statistics in one pass over x, and the backward's sum(dy),
sum(dy * xhat) in one pass over (x, dy); the normalization and dx are elementwise XLA.

* ``batch_norm_gradient``'s kernel is linear in dy, declared with its transpose (the tangent
  of y, an XLA formula); its twin is the op's XLA implementation.
* ``batch_norm`` declares its own linearization (``jvp=``): the batch statistics are kept
  from the forward (the XLA path's registered gradient recomputes them), differentiated as
  their XLA twin :func:`jaxops.ops.normalization.moments`, and the tangent of y is the
  transpose of ``batch_norm_gradient``'s kernel, so reverse mode runs that kernel: x and dy
  are read twice in all.

On an explicitly sharded batch each device reduces its shard and the partial results are
combined over the mesh axes (psum), so the statistics are the global batch's.

Backend code: :mod:`jaxops.kernels.batch_norm.triton`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxops._ad import with_twin_derivative
from jaxops._numerics import upcast
from jaxops.kernels.batch_norm import triton
from jaxops.kernels.sharding import per_channel_reduction
from jaxops.ops.normalization import (
    backward,
    batch_norm,
    batch_norm_gradient,
    moments,
    normalize,
    per_channel,
    reduce_axes,
    running,
)


def _supports(*, training, **attrs):
    return None if training else ("training=False (inference is one elementwise pass, "
                                  "which XLA fuses)")


def _kernel_moments(x, *, interpret):
    """Batch mean and population variance (compute dtype) by the statistics kernel."""

    def local(x, axes):
        shift = upcast(x[0].reshape(x.shape[1], -1)[:, 0])  # near the channel's data
        if axes:
            shift = jax.lax.pmean(shift, axes)  # one shift for every shard
        mean, var = triton.batch_norm_statistics(x, shift, interpret=interpret)
        if axes:  # equal shard sizes: the merged variance is a mean of shifted variances
            total = jax.lax.pmean(mean, axes)
            var = jax.lax.pmean(var + jnp.square(mean - total), axes)
            mean = total
        return mean + shift, var

    return per_channel_reduction(local, x)


def _kernel_sums(x, dy, mu, inv, *, interpret):
    def local(x, dy, mu, inv, axes):
        sums = triton.batch_norm_sums(x, dy, mu, inv, interpret=interpret)
        return tuple(jax.lax.psum(v, axes) for v in sums) if axes else sums

    return per_channel_reduction(local, x, dy, mu, inv)


# --------------------------------------------------------------------- batch_norm_gradient

def _batch_norm_gradient_pallas(x, scale, saved_mean, saved_var, dy, *, epsilon, training,
                                interpret):
    mu = upcast(saved_mean)
    inv = jax.lax.rsqrt(upcast(saved_var) + epsilon)
    dx, dscale, dbias = backward(x, scale, mu, inv, dy,
                                 sums=functools.partial(_kernel_sums, interpret=interpret))
    zeros = jnp.zeros_like(saved_mean)  # training: the statistics are functions of x
    return dx, dscale, dbias, zeros, zeros


def _batch_norm_gradient_transpose(x, scale, saved_mean, saved_var, tx, tscale, tbias, tmean,
                                   tvar, *, epsilon, training, interpret):
    """The transpose of the backward in dy: the tangent of y for tangents of x, scale, B
    (None: a symbolic zero, whose term is skipped).  dmean and dvar, 0 in training mode,
    add nothing."""
    nd, axes = x.ndim, reduce_axes(x)
    mu = upcast(saved_mean)
    inv = jax.lax.rsqrt(upcast(saved_var) + epsilon)
    xhat = (upcast(x) - per_channel(mu, nd)) * per_channel(inv, nd)
    terms = []
    if tx is not None:
        t = upcast(tx)
        centred = (t - per_channel(jnp.mean(t, axis=axes), nd)
                   - xhat * per_channel(jnp.mean(t * xhat, axis=axes), nd))
        terms.append(per_channel(upcast(scale) * inv, nd) * centred)
    if tscale is not None:
        terms.append(xhat * per_channel(upcast(tscale), nd))
    if tbias is not None:
        terms.append(jnp.broadcast_to(per_channel(upcast(tbias), nd), x.shape))
    if not terms:
        return (jnp.zeros(x.shape, x.dtype),)
    return (sum(terms[1:], terms[0]).astype(x.dtype),)


batch_norm_gradient.defimpl("pallas", transpose=_batch_norm_gradient_transpose,
                            supports=_supports)(_batch_norm_gradient_pallas)


# ------------------------------------------------------------------------------ batch_norm

def _batch_norm_pallas(x, scale, bias, mean, var, *, epsilon, momentum, training, interpret):
    mu, sigma2 = _kernel_moments(x, interpret=interpret)
    return (normalize(x, scale, bias, mu, sigma2, epsilon),
            *running(mean, var, mu, sigma2, momentum))


def _batch_norm_pallas_jvp(primals, tangents, *, epsilon, momentum, training, interpret):
    x, scale, bias, mean, var = primals
    tx, tscale, tbias, tmean, tvar = tangents
    statistics = with_twin_derivative(functools.partial(_kernel_moments, interpret=interpret),
                                      moments)
    mu, sigma2 = statistics(x)
    # the tangent of y: the transpose of the gradient op's kernel (None: a symbolic zero
    # tangent, that input is not differentiated)
    wrt = [k for k, t in enumerate((tx, tscale, tbias)) if t is not None]
    if not wrt:
        ty = jnp.zeros_like(x)
    else:
        implementation = "pallas_interpret" if interpret else "pallas"

        def gradient(dy):
            outs = batch_norm_gradient(x, scale, mu, sigma2, dy, epsilon=epsilon,
                                       training=True, implementation=implementation)
            return tuple(outs[k] for k in wrt)

        (ty,) = jax.linear_transpose(gradient, x)(tuple((tx, tscale, tbias)[k] for k in wrt))
    # the running statistics' tangents (linear in tx; JAX transposes them)
    axes = reduce_axes(x)
    zero = jnp.zeros(mean.shape, upcast(x).dtype)
    if tx is None:
        t_mu = t_sigma2 = zero
    else:
        tf = upcast(tx)
        t_mu = jnp.mean(tf, axis=axes)
        t_sigma2 = 2 * jnp.mean((upcast(x) - per_channel(mu, x.ndim)) * tf, axis=axes)
    t_running = running(zero.astype(mean.dtype) if tmean is None else tmean,
                        zero.astype(var.dtype) if tvar is None else tvar,
                        t_mu, t_sigma2, momentum)
    return ((normalize(x, scale, bias, mu, sigma2, epsilon),
             *running(mean, var, mu, sigma2, momentum)), (ty, *t_running))


batch_norm.defimpl("pallas", jvp=_batch_norm_pallas_jvp,
                   supports=_supports)(_batch_norm_pallas)
