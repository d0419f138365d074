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

from jaxops.onnx.exporter import (
    DEFAULT_OPSET as DEFAULT_OPSET,
    export as export,
    supported_exports as supported_exports,
)
from jaxops.onnx.importer import (
    MAX_IMPORT_OPSET as MAX_IMPORT_OPSET,
    MIN_IMPORT_OPSET as MIN_IMPORT_OPSET,
    import_model as import_model,
    supported_imports as supported_imports,
)
from jaxops.onnx.schemas import register_jaxops_domain as _register

_register()  # onnx.checker and onnx.defs know the ai.jaxops ops from here on


def support_table() -> str:
    """The ONNX op types and versions ``export`` writes and ``import_model`` runs, as
    Markdown (what docs/onnx.md lists; a test keeps the two equal)."""
    exports, imports = supported_exports(), supported_imports()
    lines = [f"Export (default opset {DEFAULT_OPSET}; `op-version`):", ""]
    for domain, ops in exports.items():
        lines.append(f"- **{domain}**: " + ", ".join(f"{op}-{v}" for op, v in ops.items()))
    lines += ["", f"Import (ai.onnx opsets {MIN_IMPORT_OPSET} to "
              f"{MAX_IMPORT_OPSET}; the versions of each op in that range):", ""]
    for domain, ops in imports.items():
        lines.append(f"- **{domain}**: " + ", ".join(
            f"{op} ({', '.join(map(str, v))})" for op, v in ops.items()))
    return "\n".join(lines)
