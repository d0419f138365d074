"""Timing, memory, cost and bandwidth of one benchmark case, jaxops against its reference.

Honest-benchmark rules (STYLE.md): compile outside the timed loop (AOT ``lower().compile()``,
timed separately), ``block_until_ready``, arguments passed to the compiled executable (never
closed over), warm-up, jaxops and reference interleaved in one loop, median with p20/p80,
and the result checked against the reference before anything is timed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxops as jo
from benchmarks.cases import Bench

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
# allclose tolerances per dtype: the references compute half precision in that precision
# (jax.nn), jaxops in float32, so they may differ by a few ulps of the output dtype.
RTOL = {"float32": 1e-5, "float64": 1e-12, "bfloat16": 3e-2, "float16": 4e-3}


class CorrectnessError(AssertionError):
    """The jaxops op disagrees with its reference: the run is invalid."""


@contextlib.contextmanager
def count_compiles():
    events: list[float] = []

    def listener(event, duration, **kwargs):
        if event == COMPILE_EVENT:
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _percentiles(times: list[float]) -> dict[str, float]:
    q = np.percentile(times, [20, 50, 80])
    return {"p20_s": float(q[0]), "median_s": float(q[1]), "p80_s": float(q[2])}


def time_interleaved(runs: dict[str, Callable[[], object]], reps: int, warmup: int = 2):
    """Median/p20/p80 seconds of each zero-argument callable, calls interleaved."""
    for _ in range(warmup):
        for run in runs.values():
            jax.block_until_ready(run())
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(reps):
        for k, run in runs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(run())
            times[k].append(time.perf_counter() - t0)
    return {k: _percentiles(v) for k, v in times.items()}


def _check(name, what, got, want, dtype):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        g64, w64 = np.asarray(g, np.float64), np.asarray(w, np.float64)
        if not np.allclose(g64, w64, rtol=RTOL[dtype], atol=RTOL[dtype], equal_nan=True):
            worst = float(np.nanmax(np.abs(g64 - w64)))
            raise CorrectnessError(f"{name} {what} {dtype}: max |jaxops - reference| = {worst:g}")


def _modes(fn, inputs, g):
    """The three timed programs of one implementation, as (jitted fn, args)."""
    _, vjp_fn = jax.vjp(fn, *inputs)  # residuals live in vjp_fn, a pytree: passed, not closed
    return {
        "fwd": (jax.jit(fn), inputs),
        "bwd": (jax.jit(lambda f, g: f(g)), (vjp_fn, g)),
        "fwd+bwd": (jax.jit(lambda g, *xs: (lambda y, f: (y, f(g)))(*jax.vjp(fn, *xs))),
                    (g, *inputs)),
    }


def _ideal_bytes(k: int, nbytes: int) -> dict[str, int]:
    """Bytes an ideal implementation moves for k inputs of nbytes each, one output."""
    return {"fwd": (k + 1) * nbytes, "bwd": (2 + k) * nbytes, "fwd+bwd": (2 * k + 2) * nbytes}


def copy_bandwidth(nbytes: int, reps: int, donate: bool) -> float:
    """Bytes/s of ``x * s`` (read + write) on an nbytes float32 array."""
    n = nbytes // 4
    f = jax.jit(lambda x, s: x * s, donate_argnums=(0,) if donate else ())
    state = {"x": jnp.ones((n,), jnp.float32)}
    s = jnp.float32(1.0)
    compiled = f.lower(state["x"], s).compile()

    def run():
        out = compiled(state["x"], s)
        if donate:
            state["x"] = out
        return out

    t = time_interleaved({"copy": run}, reps)["copy"]["median_s"]
    return 2 * nbytes / t


def measure(bench: Bench, n: int, dtype: str, reps: int, donation: bool) -> dict:
    """Everything the report needs for one (op, size, dtype)."""
    schema = jo.schema.get(bench.schema)
    inputs = bench.make_inputs(jax.random.key(0), n, dtype)
    g = jax.random.uniform(jax.random.key(1), (n,), dtype, -1, 1)
    nbytes = n * jnp.dtype(dtype).itemsize
    impls = {"jaxops": bench.op, "reference": bench.reference}

    record: dict = {"op": bench.name, "dtype": dtype, "n": n, "bytes_per_tensor": nbytes}
    jax.clear_caches()  # compile times and counts from scratch
    runs, outputs = {}, {}
    for impl, fn in impls.items():
        for mode, (jitted, args) in _modes(fn, inputs, g).items():
            with count_compiles() as compiles:
                t0 = time.perf_counter()
                compiled = jitted.lower(*args).compile()
                compile_s = time.perf_counter() - t0
                outputs[impl, mode] = jax.block_until_ready(compiled(*args))
            mem = compiled.memory_analysis()
            record[f"{impl}.{mode}.compile_s"] = compile_s
            record[f"{impl}.{mode}.compiles"] = len(compiles)
            record[f"{impl}.{mode}.temp_bytes"] = int(mem.temp_size_in_bytes)
            record[f"{impl}.{mode}.peak_bytes"] = int(
                mem.argument_size_in_bytes + mem.output_size_in_bytes
                + mem.temp_size_in_bytes - mem.alias_size_in_bytes
            )
            if mode == "fwd":
                xla = compiled.cost_analysis()
                record[f"{impl}.fwd.xla_flops"] = float(xla.get("flops", 0.0))
                record[f"{impl}.fwd.xla_bytes"] = float(xla.get("bytes accessed", 0.0))
            runs[f"{impl}.{mode}"] = (lambda c=compiled, a=args: c(*a))

    # correctness before any timing: values and cotangents of the very executables timed
    for mode in ("fwd", "bwd", "fwd+bwd"):
        _check(bench.name, mode, outputs["jaxops", mode], outputs["reference", mode], dtype)

    if donation and schema.allow_inplace:
        (i, _), = schema.allow_inplace
        for impl, fn in impls.items():
            f = jax.jit(fn, donate_argnums=i)
            state = {"args": [jnp.array(x) for x in inputs]}
            compiled = f.lower(*state["args"]).compile()

            def run(c=compiled, s=state, i=i):
                out = c(*s["args"])
                s["args"][i] = out  # the output is the next call's (donated) input
                return out

            runs[f"{impl}.fwd_donated"] = run

    with count_compiles() as late:
        timings = time_interleaved(runs, reps)
    record["compiles_while_timing"] = len(late)
    for key, t in timings.items():
        for stat, v in t.items():
            record[f"{key}.{stat}"] = v
    ideal = _ideal_bytes(len(inputs), nbytes)
    for mode in ("fwd", "bwd", "fwd+bwd", "fwd_donated"):
        if f"jaxops.{mode}.median_s" not in record:
            continue
        record[f"ratio.{mode}"] = record[f"jaxops.{mode}.median_s"] / record[
            f"reference.{mode}.median_s"]
        b = ideal["fwd" if mode == "fwd_donated" else mode]
        for impl in impls:
            record[f"{impl}.{mode}.gbps"] = b / record[f"{impl}.{mode}.median_s"] / 1e9
    cost = schema.cost(*(jax.ShapeDtypeStruct((n,), dtype) for _ in inputs))
    record["schema.flops"] = cost.flops
    record["schema.bytes"] = cost.bytes_accessed
    stats = jax.devices()[0].memory_stats()
    if stats:
        record["device.peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
    return record
