"""python -m benchmarks.dispatch [--reps 15] [--calls 2000] [--out benchmarks/results/dispatch-cpu]

Eager call overhead: the time of one op call on an 8-element array (so the work itself is
negligible), jaxops against the jax.nn function a user would call instead, interleaved in
one process (median over ``--reps`` batches of ``--calls`` calls each, after warm-up).  The
goal (issue "Open the registry") is jaxops within 1.5x of jax.nn; reported, never asserted.
Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp

import jaxops
from benchmarks import report

# (label, jaxops call, jax.nn call): attribute-free, with an attribute, and a two-input op
CASES = {
    "sigmoid": (lambda x: jaxops.sigmoid(x), lambda x: jax.nn.sigmoid(x)),
    "tanh": (lambda x: jaxops.tanh(x), lambda x: jnp.tanh(x)),
    "relu": (lambda x: jaxops.relu(x), lambda x: jax.nn.relu(x)),
    "leaky_relu(alpha=0.1)": (lambda x: jaxops.leaky_relu(x, alpha=0.1),
                              lambda x: jax.nn.leaky_relu(x, negative_slope=0.1)),
    "softmax(axis=-1)": (lambda x: jaxops.softmax(x, axis=-1),
                         lambda x: jax.nn.softmax(x, axis=-1)),
}


def _per_call(fn, x, calls):
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(x)
    jax.block_until_ready(fn(x))
    return (time.perf_counter() - t0) / (calls + 1) * 1e6


def run(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dispatch", description=__doc__)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--out", default="benchmarks/results/dispatch-cpu")
    args = parser.parse_args(argv)
    x = jnp.linspace(-2.0, 2.0, 8)
    rows = []
    for label, (ours, theirs) in CASES.items():
        for f in (ours, theirs):  # warm-up: compile and fill the caches
            jax.block_until_ready(f(x))
        a, b = [], []
        for _ in range(args.reps):  # interleaved, so drift hits both alike
            a.append(_per_call(ours, x, args.calls))
            b.append(_per_call(theirs, x, args.calls))
        rows.append({"op": label, "jaxops_us": statistics.median(a),
                     "jax_nn_us": statistics.median(b),
                     "ratio": statistics.median(a) / statistics.median(b)})
    meta = report.metadata(["python -m benchmarks.dispatch", *(argv or [])])
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["# Eager call overhead (8-element float32 array)", "",
             f"{meta.get('device_kind', '')}, jax {meta.get('jax', '')}, "
             f"{meta.get('date', '')}; median of {args.reps} x {args.calls} calls, "
             "interleaved.", "",
             "| op | jaxops (us) | jax.nn (us) | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['op']} | {r['jaxops_us']:.1f} | {r['jax_nn_us']:.1f} | {r['ratio']:.2f} |"
              for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    run()
