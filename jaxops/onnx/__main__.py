"""``python -m jaxops.onnx``: print the ONNX support table (docs/onnx.md holds a copy)."""

from jaxops.onnx import support_table

print(support_table())
