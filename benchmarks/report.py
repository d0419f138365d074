"""Machine-readable results (JSON, CSV), the markdown table and the bandwidth plot."""

from __future__ import annotations

import csv
import datetime
import json
import os
import pathlib
import platform

import jax
import jaxlib

# Targets from the benchmark issue (reported, never asserted in tests).
ELEMENTWISE_RATIO = 1.02  # fwd and fwd+bwd time vs the jax.nn/jnp equivalent
DONATED_COPY_FRACTION = 0.9  # achieved / copy bandwidth with donation at >= 256 MiB


def metadata(args) -> dict:
    device = jax.devices()[0]
    cpu = platform.processor() or ""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "command": " ".join(args),
    }


def write_json(path, meta, copy, records):
    path.write_text(json.dumps({"meta": meta, "copy": copy, "results": records}, indent=1))


def write_csv(path, records):
    keys = sorted({k for r in records for k in r})
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(records)


def _mib(b):
    return f"{b / 2**20:g} MiB"


def _fmt(v, spec=".2f"):
    return "—" if v is None else format(v, spec)


def off_target(r, copy) -> list[str]:
    """Why a record misses its targets (empty: on target)."""
    misses = []
    for mode in ("fwd", "fwd+bwd"):
        if r[f"ratio.{mode}"] > ELEMENTWISE_RATIO:
            misses.append(f"{mode} {r[f'ratio.{mode}']:.2f}×")
    if r["bytes_per_tensor"] >= 2**28 and "jaxops.fwd_donated.gbps" in r:
        frac = r["jaxops.fwd_donated.gbps"] * 1e9 / copy["donated_Bps"]
        if frac < DONATED_COPY_FRACTION:
            misses.append(f"donated {frac:.2f} of copy")
    return misses


def markdown(meta, copy, records) -> str:
    lines = [
        f"Device: {meta['platform']} / {meta['device_kind']} ({meta['cpu_model']}, "
        f"{meta['cpu_count']} cores); jax {meta['jax']}, jaxlib {meta['jaxlib']}; "
        f"{meta['date']}; `{meta['command']}`.",
        "",
        f"Copy bandwidth (`x * s`, {_mib(copy['bytes'])} float32): "
        f"{copy['Bps'] / 1e9:.2f} GB/s without donation, {copy['donated_Bps'] / 1e9:.2f} GB/s "
        "with donation.",
        "",
        "Ratios are jaxops / reference median time (< 1: jaxops faster). GB/s is ideal bytes "
        "over jaxops' median time; *of copy* divides it by the copy bandwidth of the same run "
        "(donated fwd by the donated copy). Temp is XLA's compiled temp memory, jaxops / "
        "reference, fwd+bwd.",
        "",
        "| op | dtype | size | fwd | bwd | fwd+bwd | fwd GB/s (of copy) | donated fwd GB/s "
        "(of copy) | compile ms j/r | temp j/r | flops schema/XLA | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        fwd_gbps = r["jaxops.fwd.gbps"]
        donated = r.get("jaxops.fwd_donated.gbps")
        donated_s = "n/a (gradient reads X)" if donated is None else (
            f"{donated:.2f} ({donated * 1e9 / copy['donated_Bps']:.2f}), "
            f"ratio {r['ratio.fwd_donated']:.2f}")
        misses = off_target(r, copy)
        lines.append(
            f"| {r['op']} | {r['dtype']} | {_mib(r['bytes_per_tensor'])} "
            f"| {r['ratio.fwd']:.2f} | {r['ratio.bwd']:.2f} | {r['ratio.fwd+bwd']:.2f} "
            f"| {fwd_gbps:.2f} ({fwd_gbps * 1e9 / copy['Bps']:.2f}) | {donated_s} "
            f"| {r['jaxops.fwd.compile_s'] * 1e3:.0f}/{r['reference.fwd.compile_s'] * 1e3:.0f} "
            f"| {r['jaxops.fwd+bwd.temp_bytes']}/{r['reference.fwd+bwd.temp_bytes']} "
            f"| {r['schema.flops']:g}/{r['jaxops.fwd.xla_flops']:g} "
            f"| {'off: ' + ', '.join(misses) if misses else 'met'} |"
        )
    return "\n".join(lines) + "\n"


def plot(path, copy, records):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = sorted({(r["op"], r["dtype"]) for r in records})
    fig, ax = plt.subplots(figsize=(9, 5.5), constrained_layout=True)
    for i, (op, dtype) in enumerate(ops):
        rs = sorted((r for r in records if (r["op"], r["dtype"]) == (op, dtype)),
                    key=lambda r: r["bytes_per_tensor"])
        x = [r["bytes_per_tensor"] for r in rs]
        color = f"C{i % 10}"
        ax.plot(x, [r["jaxops.fwd.gbps"] for r in rs], "-o", color=color, ms=3,
                label=f"{op} {dtype}")
        ax.plot(x, [r["reference.fwd.gbps"] for r in rs], ":", color=color)
    ax.axhline(copy["Bps"] / 1e9, color="k", lw=1.5, label="copy bandwidth")
    ax.axhline(copy["donated_Bps"] / 1e9, color="k", ls="--", lw=1, label="copy, donated")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bytes per tensor")
    ax.set_ylabel("achieved GB/s, fwd (solid: jaxops, dotted: reference)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=100)
    plt.close(fig)
