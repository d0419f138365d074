"""Flax modules for the jaxops operators: ``jaxops.flax.nnx`` and ``jaxops.flax.linen``.

Both hold the same layers (``ReLU``, ``ReluN``, ``LeakyReLU``, ``PReLU``, ``Softsign``,
``Sigmoid``, ``Tanh``, ``Softmax``, ``BatchNorm``), each a thin module around the jaxops op so
that the op's registered gradient is what Flax differentiates.  The activations are made from
their ops' schemas by ``module_for``, which does the same for any op of one array input and
static attributes (yours too); ``PReLU`` and ``BatchNorm`` are written out.

Flax is an optional extra: ``import jaxops`` never imports it; ``import jaxops.flax`` needs
``pip install 'jaxops[flax]'``.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxops.flax import nnx as jnnx
  >>> from flax import nnx
  >>> model = nnx.Sequential(jnnx.ReluN(n=1.0), jnnx.Softsign())
  >>> model(jnp.array([-1.0, 3.0]))
  Array([0. , 0.5], dtype=float32)
"""

try:
    import flax  # noqa: F401
except ImportError as e:
    raise ImportError(
        "jaxops.flax needs Flax, an optional dependency of jaxops: "
        "pip install 'jaxops[flax]'"
    ) from e

from jaxops.flax import linen as linen, nnx as nnx
