"""Dtype policy shared by the op implementations."""

import jax
import jax.numpy as jnp


def upcast(x: jax.Array) -> jax.Array:
    """``x`` in float32 when it is float16/bfloat16, else unchanged.

    Half-precision inputs are computed in float32 and rounded once at the end, so an
    op's error is one rounding of the output dtype, not one per intermediate.
    """
    if x.dtype in (jnp.float16, jnp.bfloat16):
        return x.astype(jnp.float32)
    return x
