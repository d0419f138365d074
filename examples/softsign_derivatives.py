"""Softsign with its first and second derivatives from jax.grad, checked against the closed
forms and plotted to a PNG (the seeds' Softsign plotting snippet, in JAX).

    python examples/softsign_derivatives.py [--out softsign.png] [--points 2001]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import jaxops as jo


def derivatives(x: jax.Array):
    d1 = jax.vmap(jax.grad(jo.softsign))(x)
    d2 = jax.vmap(jax.grad(jax.grad(jo.softsign)))(x)
    return jo.softsign(x), d1, d2


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="softsign.png")
    parser.add_argument("--points", type=int, default=2001)
    args = parser.parse_args(argv)

    x = jnp.linspace(-10.0, 10.0, args.points)
    y, d1, d2 = derivatives(x)
    x64 = np.asarray(x, np.float64)
    closed_d1 = 1 / (1 + np.abs(x64)) ** 2
    closed_d2 = -2 * np.sign(x64) / (1 + np.abs(x64)) ** 3
    err1 = float(np.max(np.abs(np.asarray(d1) - closed_d1)))
    err2 = float(np.max(np.abs(np.asarray(d2) - closed_d2)))
    print(f"max |softsign'  - 1/(1+|x|)^2|         = {err1:.2e}")
    print(f"max |softsign'' - -2 sign(x)/(1+|x|)^3| = {err2:.2e}")
    assert err1 < 1e-6 and err2 < 1e-6, (err1, err2)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5), constrained_layout=True)
    for ax, values, closed, title in (
        (axes[0], y, None, "softsign(x) = x / (1 + |x|)"),
        (axes[1], d1, closed_d1, "first derivative"),
        (axes[2], d2, closed_d2, "second derivative"),
    ):
        ax.plot(x, values, label="jaxops + jax.grad")
        if closed is not None:
            ax.plot(x[::40], closed[::40], "o", ms=3, label="closed form")
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(args.out, dpi=100)
    plt.close(fig)
    print(f"wrote {args.out}")
    return {"err1": err1, "err2": err2, "out": args.out}


if __name__ == "__main__":
    main()
