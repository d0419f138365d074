"""The examples run (at a small size) and say what they claim."""

import importlib.util
import pathlib

import numpy as np

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_log_op_example(capsys):
    out = _load("log_op_example").main()
    x = np.asarray(out["x"], np.float64)
    np.testing.assert_allclose(out["y"], np.log(x), rtol=1e-6)
    np.testing.assert_allclose(out["dx"], 1 / x, rtol=1e-6)
    np.testing.assert_array_equal(out["dx"], out["direct"])
    np.testing.assert_allclose(out["d2"], -1 / x**2, rtol=1e-6)
    assert "Log-13 (domain 'ai.onnx') = jaxops.log" in capsys.readouterr().out


def test_softsign_derivatives_writes_png(tmp_path):
    png = tmp_path / "softsign.png"
    out = _load("softsign_derivatives").main(["--out", str(png), "--points", "201"])
    assert out["err1"] < 1e-6 and out["err2"] < 1e-6
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
