"""The seeds' log_op_example: Log applied elementwise, its registered gradient, its schema.

    python examples/log_op_example.py
"""

import jax
import jax.numpy as jnp

import jaxops as jo


def main() -> dict:
    x = jnp.array([0.5, 1.0, 2.0, jnp.e, 10.0])
    y = jo.log(x)
    # reverse mode runs the registered gradient op LogGradient: dX = dY / X
    dx = jax.grad(lambda x: jo.log(x).sum())(x)
    direct = jo.log_gradient(x, jnp.ones_like(x))
    # forward mode and second derivatives come from the same registration
    d2 = jax.vmap(jax.hessian(jo.log))(x)

    print("x              ", x)
    print("log(x)         ", y)
    print("d log / dx     ", dx, "(registered gradient op; 1/x)")
    print("log_gradient   ", direct)
    print("d2 log / dx2   ", d2, "(-1/x^2)")
    print("\nschema:\n" + str(jo.schema.get("Log")))
    print("\ngradient schema:\n" + str(jo.schema.get("LogGradient")))
    cost = jo.schema.get("Log").cost(jax.ShapeDtypeStruct(x.shape, x.dtype))
    print(f"\ncost of one call: {cost}")
    return {"y": y, "dx": dx, "direct": direct, "d2": d2, "x": x}


if __name__ == "__main__":
    main()
