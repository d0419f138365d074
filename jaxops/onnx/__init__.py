"""ONNX interop: :func:`export` jaxops programs to ONNX, :func:`import_model` ONNX graphs as JAX
functions.  Needs the optional extra ``pip install 'jaxops[onnx]'`` (onnx, onnxruntime).

Example:
  >>> import jax.numpy as jnp, jaxops
  >>> from jaxops import onnx as jonnx
  >>> model = jonnx.export(lambda x: jaxops.relu_n(x, n=1.0), jnp.zeros(3))
  >>> [n.op_type for n in model.graph.node]
  ['ReluN']
  >>> f = jonnx.import_model(model)
  >>> f(jnp.array([-1.0, 0.5, 3.0]))
  Array([0. , 0.5, 1. ], dtype=float32)
"""

try:
    import onnx  # noqa: F401
except ImportError as e:
    raise ImportError(
        "jaxops.onnx needs ONNX, an optional dependency of jaxops: pip install 'jaxops[onnx]'"
    ) from e

from jaxops.onnx.exporter import DEFAULT_OPSET as DEFAULT_OPSET, export as export
from jaxops.onnx.importer import import_model as import_model
from jaxops.onnx.schemas import register_jaxops_domain as _register

_register()  # onnx.checker and onnx.defs know the ai.jaxops ops from here on
