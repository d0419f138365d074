"""Pallas kernels of the fused hot paths (SPEC 2.3).

Kernels are private building blocks: the public ops register them as their ``"pallas"``
implementation (``op.defimpl``) next to the XLA implementation, in the op's own module.
Backend-specific code lives in one file per backend: :mod:`jaxops.kernels.triton`.
"""
