"""The examples run (at a small size) and say what they claim."""

import importlib.util
import pathlib

import jax
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


def test_archery_loss_goes_down(capsys):
    out = _load("archery").main(["--epochs", "30"])
    losses = out["losses"]
    assert len(losses) == 30 and not out["dead_at_start"]
    # SGD on one sample shrinks the miss by ~2.5% per step: 30 steps leave ~0.22 of the loss
    assert out["final_loss"] < 0.3 * losses[0]
    assert np.all(np.diff(losses) < 0)  # monotone on a single example with a small step
    printed = capsys.readouterr().out
    assert "Epoch 0, Loss:" in printed and "Epoch 29, Loss:" in printed
    assert f"final loss {out['final_loss']:.6f}" in printed


def test_archery_dead_relu_start_is_reported(capsys):
    out = _load("archery").main(["--epochs", "3", "--seed", "0"])
    assert out["dead_at_start"]
    assert out["losses"] == [out["losses"][0]] * 3  # no gradient through a dead ReLU
    assert "started dead" in capsys.readouterr().out


def test_train_classifier_learns_and_writes_png(tmp_path, capsys):
    png = tmp_path / "curve.png"
    # optax's schedules mix int step counts with floats: standard promotion for its code
    # (jaxops ops themselves run under the suite's strict promotion everywhere else)
    with jax.numpy_dtype_promotion("standard"):
        out = _load("train_classifier").main(["--epochs", "6", "--points", "300",
                                              "--out", str(png)])
    losses = out["losses"]
    # 5 classes: chance is 20% accuracy and a loss of log 5 = 1.61
    assert np.mean(losses[:5]) > 1.0 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert out["test_accuracy"] > 0.6 and out["train_accuracy"] > 0.6
    assert out["clipped_steps"] > 0  # clip_by_global_norm is exercised
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy: train" in capsys.readouterr().out


def test_onnx_roundtrip_exports_runs_imports_and_fine_tunes(tmp_path, capsys):
    path = tmp_path / "classifier.onnx"
    with jax.numpy_dtype_promotion("standard"):  # optax's schedule (see above)
        out = _load("onnx_roundtrip").main(["--epochs", "3", "--points", "200",
                                            "--out", str(path)])
    assert {"BatchNormalization", "Relu", "LeakyRelu", "MatMul"} <= set(out["ops"])
    assert out["agree"] == 1.0 and out["logit_error"] < 1e-4
    assert out["loss_after"] < out["loss_before"]
    assert path.stat().st_size > 10_000
    assert "onnxruntime: accuracy" in capsys.readouterr().out


def test_custom_op_example(capsys):
    import jaxops

    try:
        out = _load("custom_op").main()
    finally:  # the example registers its ops: take them out for the tests that follow
        for name in ("Squareplus", "SquareplusGradient"):
            jaxops.schema.unregister(name)
    x = np.asarray(out["x"], np.float64)
    np.testing.assert_allclose(out["y"], (x + np.sqrt(x * x + 1)) / 2, rtol=1e-6)
    np.testing.assert_allclose(out["grad"], (1 + x / np.sqrt(x * x + 4)) / 2, rtol=1e-6)
    np.testing.assert_allclose(out["tangent"], out["grad"], rtol=1e-6)
    np.testing.assert_allclose(np.diagonal(out["hessian"]), 2 / (x * x + 4) ** 1.5, rtol=1e-5)
    assert "squareplus_gradient" in out["jaxpr"] and out["report"].ok
    assert [(n.domain, n.op_type) for n in out["model"].graph.node] == [
        ("example.ops", "Squareplus")]
    np.testing.assert_allclose(out["onnxruntime"], out["y"], rtol=1e-6)
    np.testing.assert_allclose(out["imported"], out["y"], rtol=1e-6)
    assert "Squareplus-1 (domain 'example.ops')" in capsys.readouterr().out
