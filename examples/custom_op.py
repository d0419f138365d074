"""A user's own op with jaxops' mechanism: Squareplus (So & Le, 2021), a smooth ReLU without
transcendentals, with its gradient op, differentiated in both modes, checked by
``jaxops.testing.opcheck``, used in a Flax model and exported to ONNX.

    python examples/custom_op.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import jaxops
from jaxops.testing import opcheck


@jaxops.defop(name="Squareplus", domain="example.ops")
def squareplus(x, *, b=4.0):
    """Squareplus: (x + sqrt(x^2 + b)) / 2."""
    return (x + jnp.sqrt(x * x + b)) / 2


@jaxops.defop(name="SquareplusGradient", domain="example.ops")
def squareplus_gradient(x, dy, *, b=4.0):
    """dX = dY (1 + x / sqrt(x^2 + b)) / 2."""
    return dy * (1 + x / jnp.sqrt(x * x + b)) / 2


@squareplus.defgrad
def _(x, y, dy, *, b):
    return squareplus_gradient(x, dy, b=b)


def main(argv=None) -> dict:
    x = jnp.linspace(-3.0, 3.0, 7)
    print(jaxops.schema.get("Squareplus"))
    y = squareplus(x, b=1.0)
    grad = jax.grad(lambda x: squareplus(x).sum())(x)  # runs squareplus_gradient
    _, tangent = jax.jvp(squareplus, (x,), (jnp.ones_like(x),))  # forward mode, same rule
    hess = jax.hessian(lambda x: squareplus(x).sum())(x)  # second order: JAX differentiates
    print("y      ", y)                                     # the gradient op
    print("dy/dx  ", grad)
    out = {"x": x, "y": y, "grad": grad, "tangent": tangent, "hessian": hess,
           "jaxpr": str(jax.make_jaxpr(jax.grad(lambda x: squareplus(x).sum()))(x))}
    out["report"] = opcheck(squareplus, x.reshape(1, 7), b=1.0)  # AssertionError if broken
    print(out["report"])
    try:  # the onnx extra
        import onnxruntime as ort

        from jaxops import onnx as jonnx
    except ImportError:
        return out
    model = jonnx.export(lambda x: squareplus(x, b=1.0), x)
    print([(n.domain, n.op_type) for n in model.graph.node])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ort_y,) = session.run(None, {session.get_inputs()[0].name: jax.device_get(x)})
    out["model"], out["onnxruntime"] = model, ort_y
    out["imported"] = jonnx.import_model(model)(x)
    return out


if __name__ == "__main__":
    main()
