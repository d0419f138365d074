r"""Gradient clipping on pytrees: :func:`clip_by_value`, :func:`clip_by_norm`,
:func:`clip_by_global_norm` and the :func:`global_norm` they share.

These are not ONNX operators, so they are plain functions, not schema-registered ops: they
take a pytree of gradients (nested dicts, lists, tuples of arrays) and return a pytree of the
same structure.  They are meant to be applied to gradients, not differentiated, but they are
safe under ``jit``, ``vmap``, ``grad`` and forward mode, with no NaN derivatives where the
function is smooth (an all-zero tree included).

Policies:

- Leaves must be float16, bfloat16, float32 or float64 arrays; anything else (integers,
  booleans, complex, ``float0``) raises ``TypeError`` naming the function, the leaf's path and
  its dtype.  Each output leaf has its input leaf's dtype.
- Norms accumulate in float32 (float64 when a leaf is float64), whatever the leaf dtypes, and
  a rescaled leaf is computed in that dtype and rounded once to its own dtype.
- Norms are scaled (as LAPACK's nrm2): the entries are multiplied by a power of two near
  the largest |entry| before squaring and the root is multiplied back, so any norm that is
  finite in the accumulation dtype comes out finite and right, also where the squares
  overflow (1e20 in float32) or underflow (1e-30).  The scaling is exact, so ordinary trees
  get the same norm, to the bit, as the plain sum of squares; derivatives are formed from
  the scaled values and stay finite and right at such magnitudes too.
- Norm clipping: a norm below ``max_norm`` leaves the gradients unchanged, bit for bit.  An
  all-zero tree has norm 0 and is returned unchanged, with finite derivatives (no 0/0).
- A non-finite norm (an entry is NaN or ±inf, or the norm itself exceeds the largest value
  of the accumulation dtype, ~3.4e38 in float32) makes every entry it would rescale NaN,
  and its derivatives NaN.  This is TensorFlow's
  documented ``tf.clip_by_global_norm`` policy ("to signal that an error occurred"): a step
  check such as ``optax.apply_if_finite`` or ``jnp.isfinite`` rejects it.  optax and
  PyTorch's ``clip_grad_norm_`` give NaN for the ±inf entries too, but silently scale the
  finite ones to 0, so an overflowed norm would zero the step without a trace.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxops.ops.activations import clip

__all__ = ["clip_by_global_norm", "clip_by_norm", "clip_by_value", "global_norm"]

PyTree = Any

_FLOAT_DTYPES = tuple(np.dtype(d) for d in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64))
_ALLOWED = "float16, bfloat16, float32 or float64"


# ------------------------------------------------------------------------- argument checks

def _float_leaves(function: str, tree: PyTree) -> PyTree:
    """``tree`` with every leaf as a jax array, or a TypeError naming the offending leaf."""
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    arrays = []
    for path, leaf in path_leaves:
        where = f"leaf {jax.tree_util.keystr(path) or '<root>'}"
        try:
            array = jnp.asarray(leaf)
        except TypeError:
            raise TypeError(
                f"jaxops.{function}: {where} is a {type(leaf).__name__}, not an array; "
                f"gradient trees hold {_ALLOWED} arrays."
            ) from None
        if array.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"jaxops.{function}: {where} has dtype {array.dtype}, but gradient clipping "
                f"accepts {_ALLOWED} leaves. Cast it (leaf.astype(jnp.float32)) or leave it "
                "out of the tree."
            )
        arrays.append(array)
    return jax.tree_util.tree_unflatten(treedef, arrays)


def _scalar(function: str, name: str, value: ArrayLike) -> None:
    if jnp.ndim(value) != 0:
        raise ValueError(
            f"jaxops.{function}: {name} must be a scalar, got shape {jnp.shape(value)}; it "
            "applies to every leaf of the tree."
        )


def _check_max_norm(function: str, max_norm: ArrayLike) -> None:
    """A concrete ``max_norm`` must be a scalar > 0; a traced one is only checked for rank."""
    _scalar(function, "max_norm", max_norm)
    if isinstance(max_norm, jax.core.Tracer):
        return
    value = np.asarray(max_norm)
    if value.dtype.kind not in "iuf" or not value > 0:
        raise ValueError(
            f"jaxops.{function}: max_norm must be a real number > 0, got {max_norm!r}. "
            "To zero the gradients multiply them by 0; to disable clipping pass float('inf')."
        )


# ------------------------------------------------------------------------------- numerics

def _accumulation_dtype(leaves: list[jax.Array]) -> np.dtype:
    """float32, or float64 when some leaf is float64: at least float32, never lower."""
    wide = any(leaf.dtype == jnp.float64 for leaf in leaves)
    return np.dtype(jnp.float64 if wide else jnp.float32)


def _power_of_two_scale(leaves: list[jax.Array], acc: np.dtype) -> jax.Array:
    """The exponent k (an int32 scalar) of a power of two near the largest |entry|, so that
    the entries times 2**-k are below ~4 and their squares neither overflow nor (for the
    largest ones) underflow; 0 when the tree is all zero or holds a NaN or ±inf, whose norm
    needs no scaling (it is 0, NaN or inf).

    Why a power of two, not the maximum itself (LAPACK's classic nrm2 divides by the
    maximum): scaling by 2**-k is exact, so the sum of squares rounds exactly as the
    unscaled one does wherever that one does not overflow or underflow; the norm of an
    ordinary tree is the same to the bit, and only the extreme trees change (from inf or 0
    to their true norm).  k is clamped so that 2**k and 2**-k are normal numbers.
    """
    finfo = jnp.finfo(acc)
    biggest = jnp.zeros((), acc)
    for leaf in leaves:
        biggest = jnp.maximum(biggest, jnp.max(jnp.abs(leaf.astype(acc)), initial=0))
    biggest = jax.lax.stop_gradient(biggest)  # a constant factor: norm(c x) = c norm(x)
    usable = jnp.isfinite(biggest) & (biggest > 0)
    _, exponent = jnp.frexp(jnp.where(usable, biggest, jnp.ones_like(biggest)))
    exponent = jnp.clip(exponent, finfo.minexp + 2, finfo.maxexp - 2)
    return jnp.where(usable, exponent, jnp.zeros_like(exponent))


def _sum_of_squares(leaves: list[jax.Array], acc: np.dtype, unscale: jax.Array) -> jax.Array:
    """The sum of (entry * unscale)**2 over all leaves, in ``acc``."""
    # leaf by leaf, left to right from 0: optax.tree.norm's order, so float32 sums agree
    total = jnp.zeros((), acc)
    for leaf in leaves:
        total = total + jnp.sum(jnp.square(leaf.astype(acc) * unscale))
    return total


def _safe_sqrt(s: jax.Array) -> jax.Array:
    """sqrt(s) whose derivative at s = 0 is 0, not 0 * inf = NaN; NaN and inf pass through."""
    zero = s == 0
    return jnp.where(zero, jnp.zeros_like(s), jnp.sqrt(jnp.where(zero, jnp.ones_like(s), s)))


def _over(a: jax.Array, norm: jax.Array) -> jax.Array:
    """``a / norm`` for a finite nonzero norm, with both scaled by the same power of two
    first (exact), so that no reciprocal of a huge norm is formed: XLA turns ``a / n`` into
    ``a * (1 / n)``, and 1 / 2.8e38 is a float32 subnormal, flushed to 0 on CPU."""
    _, e = jnp.frexp(norm)
    # two factors, each a normal number (2**-128 alone is subnormal in float32), applied by
    # multiplication: linear in ``a``, which may be a tangent (ldexp is not transposable)
    one = jnp.ones((), norm.dtype)
    first, second = jnp.ldexp(one, -(e // 2)), jnp.ldexp(one, e // 2 - e)
    return (a * first * second) / (norm * first * second)


@jax.custom_jvp
def _shrink(x: jax.Array, max_norm: jax.Array, norm: jax.Array) -> jax.Array:
    """``x * (max_norm / norm)``, the factor formed once (``t * (m / n)`` rounds twice, as
    optax's ``t / n * m`` does; XLA rewrites a per-entry ``t / n`` into ``t * (1 / n)``
    anyway).

    Its own derivative because autodiff of ``m / n`` forms ``m / n**2``: at a norm of 2e20
    (float32) n**2 overflows and the derivative loses its ``-x (x . dx) m / n**3`` term,
    at 1e-30 it underflows and gives inf.  Written as ``c (dx - u dn)`` with ``c = m / n``,
    ``u = x / n`` and ``dn = u . dx`` (from the norm), no intermediate leaves the range.
    """
    return _over(x, norm) * max_norm


@_shrink.defjvp
def _shrink_jvp(primals, tangents):
    x, max_norm, norm = primals
    dx, dmax, dnorm = tangents
    unit = _over(x, norm)
    return unit * max_norm, _over(max_norm * (dx - unit * dnorm), norm) + unit * dmax


def _rescale(tree: PyTree, norm: jax.Array, max_norm: jax.Array) -> PyTree:
    """Each leaf unchanged where ``norm < max_norm``, else times ``max_norm / norm`` in the
    norm's dtype and rounded once to its own dtype; all NaN where the norm is not finite.

    The factor's operands are masked to 1 wherever the factor is not used ("double
    where"): at norm = 0, or max_norm = inf, the unused branch would otherwise send
    0 * inf = NaN into reverse mode.  A non-finite norm uses a NaN numerator, so the
    derivatives are NaN too (TensorFlow's "signal an error" policy)."""
    below = norm < max_norm
    finite = jnp.isfinite(norm)
    one = jnp.ones_like(norm)
    numerator = jnp.where(below, one, jnp.where(finite, max_norm, jnp.full_like(norm, jnp.nan)))
    denominator = jnp.where(below | ~finite, one, norm)

    def leaf_fn(leaf):
        shrunk = _shrink(leaf.astype(norm.dtype), numerator, denominator)
        return jnp.where(below, leaf, shrunk.astype(leaf.dtype))

    return jax.tree.map(leaf_fn, tree)


@jax.custom_jvp
def _norm_of(*leaves: jax.Array) -> jax.Array:
    acc = _accumulation_dtype(list(leaves))
    k = _power_of_two_scale(list(leaves), acc)
    one = jnp.ones((), acc)
    return jnp.ldexp(_safe_sqrt(_sum_of_squares(list(leaves), acc, jnp.ldexp(one, -k))), k)


@_norm_of.defjvp
def _norm_of_jvp(primals, tangents):
    """d norm = sum((x / norm) * dx): x / norm lies in [-1, 1] for any finite norm, where
    autodiff of the scaled form multiplies factors near 2**126 and 2**-126 and overflows.
    0 at a zero tree (as the norm's subgradient 0); x / norm in IEEE arithmetic at a
    non-finite norm (0 for finite entries, NaN for the others)."""
    norm = _norm_of(*primals)
    zero = norm == 0
    finite = jnp.isfinite(norm)
    safe = jnp.where(zero | ~finite, jnp.ones_like(norm), norm)
    total = jnp.zeros_like(norm)
    for x, dx in zip(primals, tangents, strict=True):
        xf = x.astype(norm.dtype)
        unit = jnp.where(finite, _over(xf, safe), xf / norm)
        total = total + jnp.sum(unit * dx.astype(norm.dtype))
    return norm, jnp.where(zero, jnp.zeros_like(total), total)


@jax.jit
def _global_norm(tree: PyTree) -> jax.Array:
    """The norm of all leaves together, in the accumulation dtype: 2**k sqrt(sum((x 2**-k)**2))
    with 2**k near the largest |entry|, so any norm that is finite in that dtype comes out
    finite and right (1e20 entries in float32, whose squares overflow; 1e-30 entries, whose
    squares underflow).  k is a constant to autodiff (the norm is homogeneous), so the
    derivative x / norm is formed from the scaled entries and never overflows either."""
    return _norm_of(*jax.tree.leaves(tree))


def _clip_to(tree: PyTree, max_norm: ArrayLike) -> PyTree:
    """``tree`` rescaled by one factor so that its norm is at most ``max_norm``."""
    norm = _global_norm(tree)
    return _rescale(tree, norm, jnp.asarray(max_norm).astype(norm.dtype))


@jax.jit
def _clip_by_global_norm(tree: PyTree, max_norm: ArrayLike) -> PyTree:
    return _clip_to(tree, max_norm)


@jax.jit
def _clip_by_norm(tree: PyTree, max_norm: ArrayLike) -> PyTree:
    return jax.tree.map(lambda leaf: _clip_to(leaf, max_norm), tree)


# ---------------------------------------------------------------------------- public API

def global_norm(tree: PyTree) -> jax.Array:
    r"""The L2 norm of all the entries of a pytree together.

    .. math:: \|g\|_2 = \Big(\sum_{\ell \in \mathrm{leaves}} \sum_i g_{\ell,i}^2\Big)^{1/2}

    Same value as ``optax.global_norm`` / ``optax.tree.norm``, but the sum of squares is
    accumulated in float32 (float64 when a leaf is float64) for every leaf dtype, where optax
    sums bfloat16 leaves in bfloat16.  Its derivative at an all-zero tree is 0 (a
    subgradient), not NaN.  NaN entries give NaN, ±inf entries +inf; so does a norm beyond the
    accumulation dtype's range.  Squares never overflow or underflow on the way: the entries
    are scaled by a power of two first (module docstring), so 1e20 or 1e-30 entries in
    float32 give their true norm.

    Args:
      tree: a pytree of float16, bfloat16, float32 or float64 arrays.

    Returns:
      A scalar in the accumulation dtype: float32, or float64 when some leaf is float64.
      0 for a tree without leaves.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxops.clipping import global_norm
      >>> global_norm({"w": jnp.array([3.0, 0.0]), "b": [jnp.array(4.0)]})
      Array(5., dtype=float32)

    References:
      Pascanu, Mikolov and Bengio, "On the difficulty of training recurrent neural
      networks", ICML 2013 (arXiv:1211.5063).  See also: ``optax.tree.norm``.
    """
    return _global_norm(_float_leaves("global_norm", tree))


def clip_by_global_norm(tree: PyTree, max_norm: ArrayLike) -> PyTree:
    r"""Rescale a whole pytree of gradients so that its global L2 norm is at most ``max_norm``.

    .. math:: \mathrm{clip}(g) = \begin{cases} g & \|g\|_2 < \mathrm{max\_norm} \\
              g \cdot \mathrm{max\_norm} \,/\, \|g\|_2 & \text{otherwise} \end{cases}

    with :math:`\|g\|_2` the :func:`global_norm` of all leaves together, so every leaf is
    scaled by the same factor and the update keeps its direction.  Matches
    ``optax.clip_by_global_norm(max_norm)`` on finite inputs: the same comparison (strict
    ``<``), the same norm for float32/float64 trees, and a factor formed once per tree, which
    agrees with optax's ``g / norm * max_norm`` within two ulps (both round twice).  Returns
    only the clipped tree; call :func:`global_norm` for the norm (under ``jit`` the two share
    one reduction).

    Policies: below ``max_norm`` the tree is returned unchanged, bit for bit; an all-zero tree
    is returned as is, with finite derivatives; a non-finite global norm (a NaN or ±inf entry
    anywhere, or a norm beyond the accumulation dtype's range) makes *every* entry NaN, as
    ``tf.clip_by_global_norm`` does (optax and PyTorch give NaN only for the ±inf entries and
    0 for the others).

    Dtypes: the norm accumulates in float32 (float64 if some leaf is float64); each leaf is
    rescaled in that dtype and rounded once to its own dtype, which it keeps.

    Args:
      tree: a pytree of float16, bfloat16, float32 or float64 arrays.
      max_norm: the largest global norm, a scalar > 0 (checked when concrete; a traced value
        is trusted).  ``float('inf')`` disables clipping of finite trees.

    Returns:
      A pytree with the structure, shapes and dtypes of ``tree``.

    Raises:
      TypeError: a leaf is not a float16/bfloat16/float32/float64 array.
      ValueError: ``max_norm`` is not a scalar, or is concrete and not > 0.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxops.clipping import clip_by_global_norm
      >>> clip_by_global_norm({"w": jnp.array([3.0, 0.0]), "b": jnp.array([4.0])}, 1.0)
      {'b': Array([0.8], dtype=float32), 'w': Array([0.6, 0. ], dtype=float32)}

    References:
      Pascanu, Mikolov and Bengio, "On the difficulty of training recurrent neural
      networks", ICML 2013 (arXiv:1211.5063), Algorithm 1.  See also:
      ``optax.clip_by_global_norm``, ``torch.nn.utils.clip_grad_norm_``,
      ``tf.clip_by_global_norm``.
    """
    _check_max_norm("clip_by_global_norm", max_norm)
    return _clip_by_global_norm(_float_leaves("clip_by_global_norm", tree), max_norm)


def clip_by_norm(tree: PyTree, max_norm: ArrayLike) -> PyTree:
    r"""Rescale each leaf of a pytree independently so that its L2 norm is at most ``max_norm``.

    .. math:: \mathrm{clip}(t) = \begin{cases} t & \|t\|_2 < \mathrm{max\_norm} \\
              t \cdot \mathrm{max\_norm} \,/\, \|t\|_2 & \text{otherwise} \end{cases}
              \quad \text{for every leaf } t

    The norm of a leaf is over all its entries (``tf.clip_by_norm`` with ``axes=None``);
    unlike :func:`clip_by_global_norm`, leaves are scaled by different factors, so the
    update's direction changes.

    Policies, per leaf: below ``max_norm`` a leaf is returned unchanged, bit for bit; an
    all-zero leaf is returned as is, with finite derivatives; a leaf whose norm is not finite
    (a NaN or ±inf entry, or a norm beyond the dtype's range) becomes all NaN, the other leaves
    being unaffected.

    Dtypes: each leaf's norm accumulates in float32 (float64 for a float64 leaf); the leaf is
    rescaled in that dtype and rounded once to its own dtype, which it keeps.

    Args:
      tree: a pytree of float16, bfloat16, float32 or float64 arrays.
      max_norm: the largest norm of a leaf, a scalar > 0 (checked when concrete; a traced
        value is trusted).

    Returns:
      A pytree with the structure, shapes and dtypes of ``tree``.

    Raises:
      TypeError: a leaf is not a float16/bfloat16/float32/float64 array.
      ValueError: ``max_norm`` is not a scalar, or is concrete and not > 0.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxops.clipping import clip_by_norm
      >>> clip_by_norm({"w": jnp.array([3.0, 4.0]), "b": jnp.array([0.5])}, 1.0)
      {'b': Array([0.5], dtype=float32), 'w': Array([0.6, 0.8], dtype=float32)}

    References:
      Mikolov, "Statistical language models based on neural networks", PhD thesis, Brno
      University of Technology, 2012 (per-parameter norm clipping); see also
      ``tf.clip_by_norm``.
    """
    _check_max_norm("clip_by_norm", max_norm)
    return _clip_by_norm(_float_leaves("clip_by_norm", tree), max_norm)


def clip_by_value(
    tree: PyTree, min_value: ArrayLike | None, max_value: ArrayLike | None
) -> PyTree:
    r"""Clip every entry of a pytree to ``[min_value, max_value]``.

    .. math:: \mathrm{clip}(g) = \min(\max(g, \mathrm{min\_value}), \mathrm{max\_value}),
              \qquad \mathrm{clip}'(g) = [\mathrm{min\_value} < g < \mathrm{max\_value}]

    Applies :func:`jaxops.clip` (ONNX Clip-13) to every leaf, so it shares Clip's
    conventions: ``min_value > max_value`` gives ``max_value`` everywhere (as ``jnp.clip``
    and ``optax.clip`` do); the derivative is 0 at both bounds (``jnp.clip`` gives 0.5 at a
    tie); NaN propagates; ``None`` means no bound on that side.  ``optax.clip(delta)`` is
    ``clip_by_value(tree, -delta, delta)``.

    Dtypes: each bound is cast to each leaf's dtype, and each leaf keeps its dtype.

    Args:
      tree: a pytree of float16, bfloat16, float32 or float64 arrays.
      min_value: lower bound, a scalar (may be traced), or None.
      max_value: upper bound, a scalar (may be traced), or None.

    Returns:
      A pytree with the structure, shapes and dtypes of ``tree``.

    Raises:
      TypeError: a leaf is not a float16/bfloat16/float32/float64 array.
      ValueError: a bound is not a scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxops.clipping import clip_by_value
      >>> clip_by_value({"w": jnp.array([-2.0, 0.5, 3.0])}, -1.0, 1.0)
      {'w': Array([-1. ,  0.5,  1. ], dtype=float32)}

    References:
      Mikolov, "Statistical language models based on neural networks", PhD thesis, Brno
      University of Technology, 2012 (element-wise gradient clipping); ONNX Clip-13.  See
      also: ``optax.clip``, ``torch.nn.utils.clip_grad_value_``.
    """
    for name, bound in (("min_value", min_value), ("max_value", max_value)):
        if bound is not None:
            _scalar("clip_by_value", name, bound)
    tree = _float_leaves("clip_by_value", tree)

    def bound_for(bound, leaf):
        if bound is None or type(bound) is float:
            return bound  # a Python float takes the leaf's dtype inside Clip
        return jnp.asarray(bound).astype(leaf.dtype)

    return jax.tree.map(
        lambda leaf: clip(leaf, bound_for(min_value, leaf), bound_for(max_value, leaf)), tree
    )
