"""Pallas kernels of the fused hot paths (SPEC 2.3): one package per fused op.

Layout::

    kernels/<op>/__init__.py   the op-level glue: the kernel's ``op.defimpl("pallas", ...)``
                               registration, its XLA twin and how it is differentiated
    kernels/<op>/triton.py     the backend-specific Pallas code (Triton); a future backend
                               goes beside it (``mosaic_gpu.py``, ``tpu.py``)
    kernels/_triton_tiles.py   what the Triton kernels share (row tiles, block plans)
    kernels/sharding.py        kernels on sharded arrays, per shard

The packages are :mod:`~jaxops.kernels.softmax` (softmax, log_softmax and their gradient
ops), :mod:`~jaxops.kernels.softmax_cross_entropy`, :mod:`~jaxops.kernels.batch_norm` (and its
gradient op) and :mod:`~jaxops.kernels.linear_cross_entropy` (which runs
softmax_cross_entropy's Triton kernel per chunk and has no backend code of its own).  The
op module :mod:`jaxops.ops.<family>` keeps each op's schema, XLA implementation, registered
gradient and gradient op, and names its kernel package in its docstring.

Import direction: a kernel package imports its op module (and registers on the op when
imported); the op module never imports its kernel package.  :mod:`jaxops` imports every
kernel package, and importing any ``jaxops.ops.<family>`` imports :mod:`jaxops` first, so
an op always has its kernel.  The graph has no cycle, and a backend
module (``triton.py``) knows nothing of ops, schemas or autodiff.

How a kernel is differentiated is declared in its ``defimpl`` call and nowhere else, by one
of (``jaxops.Op.defimpl`` has the signatures):

* nothing: through the op's registered gradient, like the XLA implementation (forward mode
  its transpose; reverse mode the gradient op, which inherits the implementation and runs
  its own kernel) -- softmax, log_softmax;
* ``transpose=``: the kernel is linear in the op's last input (a gradient op's ``dY``);
  reverse mode runs the kernel, forward mode the declared transpose, and derivatives in the
  other inputs are the XLA implementation's -- batch_norm_gradient;
* ``jvp=``: the op's own linearization, for a fused kernel that computes its gradient in the
  forward pass -- softmax_cross_entropy, batch_norm, linear_cross_entropy.  The kernel
  outputs a rule uses are differentiated as their XLA twin
  (``jaxops._ad.with_twin_derivative``), and a linear part that should run a gradient op's
  kernel in reverse mode is that gradient op's transpose (``jax.linear_transpose``).

``jaxops._ad.linear_pair``, the primitive behind ``transpose=``, is used by the mechanism
(:mod:`jaxops._op`), with one exception: softmax_gradient and log_softmax_gradient pair their
kernel on the (rows, C) view themselves, because an op-level pair would hold the reshape back
to the op's layout, and its outputs do not carry the operands' sharding (a class axis sharded
over a mesh axis came back gathered; :mod:`jaxops.kernels.softmax`).
"""
