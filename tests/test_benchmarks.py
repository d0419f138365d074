"""Smoke test of the benchmark suite: --quick on tiny sizes writes well-formed results, and a
deliberately wrong op fails the run before anything is timed."""

import json

import jax.numpy as jnp
import pytest

import jaxops as jo
from benchmarks.__main__ import run
from benchmarks.cases import BENCHES, Bench
from benchmarks.harness import CorrectnessError

MODES = ("fwd", "bwd", "fwd+bwd")


def test_quick_run_writes_results(tmp_path):
    out = tmp_path / "quick"
    run(["--quick", "--ops", "relu,log_gradient", "--dtype", "float32,bfloat16",
         "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    assert {"date", "platform", "device_kind", "cpu_model", "jax", "jaxlib", "xla_flags"} <= set(
        data["meta"])
    assert data["copy"]["Bps"] > 0 and data["copy"]["donated_Bps"] > 0
    records = data["results"]
    assert len(records) == 2 * 2 * 2  # ops x dtypes x quick sizes
    for r in records:
        assert r["compiles_while_timing"] == 0
        for impl in ("jaxops", "reference"):
            for mode in MODES:
                assert r[f"{impl}.{mode}.compiles"] == 1
                assert r[f"{impl}.{mode}.p20_s"] <= r[f"{impl}.{mode}.median_s"] <= r[
                    f"{impl}.{mode}.p80_s"]
                assert r[f"{impl}.{mode}.gbps"] > 0
        for mode in (*MODES, "fwd_donated"):
            assert r[f"ratio.{mode}"] > 0
        assert r["schema.bytes"] == r["jaxops.fwd.xla_bytes"]
    header = out.with_suffix(".csv").read_text().splitlines()[0].split(",")
    assert "ratio.fwd+bwd" in header and "jaxops.fwd.compile_s" in header
    table = out.with_suffix(".md").read_text()
    assert table.count("\n| relu |") == 4 and "Copy bandwidth" in table
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_wrong_op_fails_the_run(tmp_path):
    wrong = Bench("relu", lambda x: jo.relu(x) * jnp.float32(1.01), BENCHES["relu"].reference,
                  BENCHES["relu"].make_inputs, "Relu")
    with pytest.raises(CorrectnessError, match="relu fwd float32: max \\|jaxops - reference\\|"):
        run(["--quick", "--ops", "relu", "--out", str(tmp_path / "x")], benches={"relu": wrong})
    assert not (tmp_path / "x.json").exists()


def test_fused_quick_run_checks_and_writes_results(tmp_path):
    from benchmarks import fused

    results = fused.main(["--quick", "--out", str(tmp_path)])
    assert {r["op"] for r in results} >= {"softmax", "log_softmax", "softmax_cross_entropy",
                                          "linear_cross_entropy", "batch_norm", "layer_norm",
                                          "rms_norm", "group_norm", "huber_loss", "dropout"}
    for r in results:
        assert r["variants"][r["reference"]]["fwd+bwd"]["speedup_vs_reference"] == 1.0
    assert (tmp_path / "fused-cpu.md").read_text().startswith("# Fused ops")


def test_dispatch_overhead_run_writes_results(tmp_path):
    from benchmarks import dispatch

    out = dispatch.run(["--reps", "2", "--calls", "20", "--out", str(tmp_path / "d")])
    assert {r["op"] for r in out["rows"]} == set(dispatch.CASES)
    assert all(r["jaxops_us"] > 0 and r["jax_nn_us"] > 0 for r in out["rows"])
    assert (tmp_path / "d.md").read_text().startswith("# Eager call overhead")
