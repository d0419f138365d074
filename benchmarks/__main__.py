"""python -m benchmarks [--ops relu,log] [--dtype float32] [--sizes 16,20,24,26] [--quick]
[--out benchmarks/results/cpu]

Writes OUT.json, OUT.csv, OUT.md and OUT.png; exits non-zero if any op disagrees with its
reference (benchmarks.harness.CorrectnessError).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from benchmarks import report
from benchmarks.cases import BENCHES
from benchmarks.harness import copy_bandwidth, measure


def _progress(i, total, label):
    width = 30
    done = int(width * i / total)
    sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {i}/{total} {label:<40}")
    sys.stderr.flush()


def run(argv=None, benches=None) -> tuple[dict, dict, list[dict]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--ops", default=",".join(BENCHES), help="comma-separated op names")
    parser.add_argument("--dtype", default="float32", help="comma-separated dtypes")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated log2 element counts (default 12,16,20,24,26)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repetitions")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--no-donation", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/cpu")
    args = parser.parse_args(argv)

    benches = benches or BENCHES
    names = args.ops.split(",")
    unknown = [n for n in names if n not in benches]
    if unknown:
        parser.error(f"unknown ops {unknown}; known: {', '.join(benches)}")
    sizes = [int(s) for s in (args.sizes or ("8,10" if args.quick else "12,16,20,24,26"))
             .split(",")]
    reps = args.reps or (3 if args.quick else 20)
    dtypes = args.dtype.split(",")
    copy_bytes = 2**12 if args.quick else 2**28  # >= 256 MiB for the real thing

    meta = report.metadata(sys.argv if argv is None else ["python -m benchmarks", *argv])
    copy = {
        "bytes": copy_bytes,
        "Bps": copy_bandwidth(copy_bytes, reps, donate=False),
        "donated_Bps": copy_bandwidth(copy_bytes, reps, donate=True),
    }
    todo = [(benches[n], 2**s, d) for n in names for d in dtypes for s in sizes]
    records = []
    for i, (bench, n, dtype) in enumerate(todo):
        _progress(i, len(todo), f"{bench.name} {dtype} 2^{n.bit_length() - 1}")
        # fewer repetitions for the largest sizes: each call moves >= 1 GiB there
        r = reps if n < 2**24 else max(3, reps // 4)
        records.append(measure(bench, n, dtype, r, donation=not args.no_donation))
    _progress(len(todo), len(todo), "done")
    sys.stderr.write("\n")

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report.write_json(out.with_suffix(".json"), meta, copy, records)
    report.write_csv(out.with_suffix(".csv"), records)
    table = report.markdown(meta, copy, records)
    out.with_suffix(".md").write_text(table)
    report.plot(out.with_suffix(".png"), copy, records)
    print(table)
    return meta, copy, records


if __name__ == "__main__":
    run()
