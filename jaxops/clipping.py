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
- Norm clipping: a norm below ``max_norm`` leaves the gradients unchanged, bit for bit.  An
  all-zero tree has norm 0 and is returned unchanged, with finite derivatives (no 0/0).
- A non-finite norm (an entry is NaN or ±inf, or the float32 sum of squares overflows,
  entries beyond ~1.8e19) makes every entry it would rescale NaN.  This is TensorFlow's
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


def _sum_of_squares(leaves: list[jax.Array], acc: np.dtype) -> jax.Array:
    # leaf by leaf, left to right from 0: optax.tree.norm's order, so float32 sums agree
    total = jnp.zeros((), acc)
    for leaf in leaves:
        total = total + jnp.sum(jnp.square(leaf.astype(acc)))
    return total


def _safe_sqrt(s: jax.Array) -> jax.Array:
    """sqrt(s) whose derivative at s = 0 is 0, not 0 * inf = NaN; NaN and inf pass through."""
    zero = s == 0
    return jnp.where(zero, jnp.zeros_like(s), jnp.sqrt(jnp.where(zero, jnp.ones_like(s), s)))


def _scale(norm: jax.Array, max_norm: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(norm < max_norm, max_norm / norm), the factor being NaN when the norm is not finite.

    The denominator is masked to 1 wherever the factor is not used ("double where"): at
    norm = 0 the unused branch would otherwise send 0 * (1/0) = NaN into the derivative.
    The factor is formed once per tree (or leaf), not once per entry: ``t * (m / n)`` rounds
    twice, as optax's ``t / n * m`` does, and XLA rewrites a per-entry ``t / n`` into
    ``t * (1 / n)`` anyway.
    """
    below = norm < max_norm
    finite = jnp.isfinite(norm)
    safe_norm = jnp.where(below | ~finite, jnp.ones_like(norm), norm)
    scale = jnp.where(finite, max_norm / safe_norm, jnp.full_like(norm, jnp.nan))
    return below, scale


def _rescale(leaf: jax.Array, below: jax.Array, scale: jax.Array) -> jax.Array:
    """``leaf`` unchanged if ``below``, else ``leaf * scale`` rounded once to its dtype."""
    return jnp.where(below, leaf, (leaf.astype(scale.dtype) * scale).astype(leaf.dtype))


@jax.jit
def _global_norm(tree: PyTree) -> jax.Array:
    """The norm of all leaves together, in the accumulation dtype."""
    leaves = jax.tree.leaves(tree)
    return _safe_sqrt(_sum_of_squares(leaves, _accumulation_dtype(leaves)))


def _clip_to(tree: PyTree, max_norm: ArrayLike) -> PyTree:
    """``tree`` rescaled by one factor so that its norm is at most ``max_norm``."""
    norm = _global_norm(tree)
    below, scale = _scale(norm, jnp.asarray(max_norm).astype(norm.dtype))
    return jax.tree.map(lambda leaf: _rescale(leaf, below, scale), tree)


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
    subgradient), not NaN.  NaN entries give NaN, ±inf entries +inf; so does a float32 sum of
    squares that overflows.

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
    anywhere, or an overflowed sum of squares) makes *every* entry of the result NaN, as
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
    (a NaN or ±inf entry, or an overflowed sum of squares) becomes all NaN, the other leaves
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
