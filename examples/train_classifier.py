"""Train an MLP classifier with jaxops ops in Flax NNX, on five interleaved spirals.

    python examples/train_classifier.py [--epochs 40] [--out train_classifier.png]

The data set is made here (no download): five spiral arms in the plane, 1,000 points each,
with Gaussian noise (the arms touch near the centre); a quarter is held out for testing.  The
model is ``Linear(2, 128) -> BatchNorm -> ReLU -> Linear(128, 128) -> BatchNorm -> LeakyReLU
-> Linear(128, 5)``
built from ``jaxops.flax.nnx`` modules (batch norm is ``jaxops.batch_norm``: batch statistics
while training, the running ones for evaluation).  Each step computes
``jaxops.softmax_cross_entropy`` on the logits, clips the gradients with
``jaxops.clip_by_global_norm`` and applies Adam (optax).  A progress bar shows the loss; at the
end the script prints the test accuracy and writes a PNG of the loss curve and the decision
regions.  With the defaults it reaches 95% test accuracy in 40 epochs (measured 95.1% on 1,250
test points, 2.2 s of training on 2 CPU cores; ``main`` returns the numbers).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import jaxops as jo
from jaxops.flax import nnx as jnnx

CLASSES = 5


def spirals(n_per_class: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Points on ``CLASSES`` interleaved spiral arms, shuffled: (x (N, 2) float32, y (N,))."""
    rng = np.random.default_rng(seed)
    r = np.linspace(0.05, 1.0, n_per_class)
    xs, ys = [], []
    for c in range(CLASSES):
        theta = 4.5 * r + 2 * np.pi * c / CLASSES
        pts = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
        xs.append(pts + rng.normal(0, noise, pts.shape))
        ys.append(np.full(n_per_class, c))
    x, y = np.concatenate(xs), np.concatenate(ys)
    order = rng.permutation(len(y))
    return x[order].astype(np.float32), y[order].astype(np.int32)


class MLP(nnx.Module):
    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.layers = nnx.Sequential(
            nnx.Linear(2, hidden, rngs=rngs), jnnx.BatchNorm(hidden, rngs=rngs), jnnx.ReLU(),
            nnx.Linear(hidden, hidden, rngs=rngs), jnnx.BatchNorm(hidden, rngs=rngs),
            jnnx.LeakyReLU(alpha=0.1), nnx.Linear(hidden, CLASSES, rngs=rngs),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.layers(x)


@nnx.jit(static_argnames="max_norm")
def train_step(model: MLP, optimizer: nnx.Optimizer, x, y, max_norm: float):
    def loss_fn(m):
        return jo.softmax_cross_entropy(m(x), y)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, jo.clip_by_global_norm(grads, max_norm))
    return loss, jo.global_norm(grads)


@nnx.jit
def predict(model: MLP, x):
    return jnp.argmax(model(x), axis=-1)


def plot(path, losses, model, x, y):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    steps = np.arange(1, len(losses) + 1)
    ax1.semilogy(steps, losses, lw=0.6, alpha=0.5, label="per step")
    window = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    ax1.semilogy(steps[window - 1:], smooth, lw=1.5, label=f"mean of {window}")
    ax1.set(xlabel="step", ylabel="softmax cross-entropy", title="training loss")
    ax1.legend()
    g = np.linspace(-1.3, 1.3, 200, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    regions = np.asarray(predict(model, np.stack([gx.ravel(), gy.ravel()], 1)))
    ax2.contourf(gx, gy, regions.reshape(gx.shape), levels=np.arange(CLASSES + 1) - 0.5,
                 alpha=0.25, cmap="viridis")
    ax2.scatter(x[:, 0], x[:, 1], c=y, s=4, cmap="viridis")
    ax2.set(title="test points and decision regions", aspect="equal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--max-norm", type=float, default=1.0)
    parser.add_argument("--points", type=int, default=1000, help="per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="train_classifier.png")
    args = parser.parse_args(argv)

    x, y = spirals(args.points, noise=0.05, seed=args.seed)
    n_test = len(y) // 4
    x_test, y_test, x_train, y_train = x[:n_test], y[:n_test], x[n_test:], y[n_test:]

    model = MLP(128, rngs=nnx.Rngs(args.seed))
    schedule = optax.cosine_decay_schedule(args.lr, args.epochs * (len(y_train) // args.batch))
    optimizer = nnx.Optimizer(model, optax.adam(schedule), wrt=nnx.Param)
    rng = np.random.default_rng(args.seed + 1)
    losses, clipped = [], 0
    start = time.perf_counter()
    with tqdm(range(args.epochs), desc="training", unit="epoch") as bar:
        for _ in bar:
            model.train()
            order = rng.permutation(len(y_train))
            for i in range(len(y_train) // args.batch):
                idx = order[i * args.batch:(i + 1) * args.batch]
                loss, norm = train_step(model, optimizer, x_train[idx], y_train[idx],
                                        args.max_norm)
                losses.append(float(loss))
                clipped += float(norm) > args.max_norm
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
    seconds = time.perf_counter() - start

    model.eval()
    train_acc = float(np.mean(np.asarray(predict(model, x_train)) == y_train))
    test_acc = float(np.mean(np.asarray(predict(model, x_test)) == y_test))
    print(f"{len(losses)} steps in {seconds:.1f} s; gradients clipped in {clipped} steps; "
          f"final loss {np.mean(losses[-10:]):.4f}")
    print(f"accuracy: train {train_acc:.2%}, test {test_acc:.2%} ({len(y_test)} test points)")
    if args.out:
        plot(args.out, losses, model, x_test, y_test)
        print(f"wrote {args.out}")
    return {"losses": losses, "train_accuracy": train_acc, "test_accuracy": test_acc,
            "seconds": seconds, "clipped_steps": clipped, "model": model}


if __name__ == "__main__":
    main()
