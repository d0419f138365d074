"""Export the demo's trained classifier to ONNX, run it in onnxruntime, import it back as a JAX
function and fine-tune it one step with ``jax.grad``.

    python examples/onnx_roundtrip.py [--epochs 40] [--out classifier.onnx]

Steps: train ``examples/train_classifier.py``'s MLP (jaxops BatchNorm, ReLU, LeakyReLU), switch
it to inference (running statistics), ``jaxops.onnx.export`` it (BatchNormalization, Relu,
LeakyRelu and MatMul/Add nodes), check that onnxruntime's predictions and logits match JAX's,
``jaxops.onnx.import_model`` it back and take one gradient step on the imported parameters
(the float initializers) with ``jaxops.softmax_cross_entropy``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import numpy as np
import onnxruntime as ort

import jaxops as jo
from jaxops import onnx as jonnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import train_classifier  # noqa: E402  (the demo, next to this file)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--out", default="classifier.onnx")
    args = parser.parse_args(argv)

    trained = train_classifier.main(["--epochs", str(args.epochs), "--points",
                                     str(args.points), "--out", ""])
    model = trained["model"]
    model.eval()
    x, y = train_classifier.spirals(args.points, noise=0.05, seed=0)
    x_test, y_test = x[: len(y) // 4], y[: len(y) // 4]

    onnx_model = jonnx.export(lambda x: model(x), x_test, input_names=["points"],
                              output_names=["logits"], dynamic_axes={0: {0: "batch"}})
    if args.out:
        pathlib.Path(args.out).write_bytes(onnx_model.SerializeToString())
    ops = sorted({n.op_type for n in onnx_model.graph.node})
    print(f"exported {len(onnx_model.graph.node)} nodes ({', '.join(ops)}), "
          f"{len(onnx_model.graph.initializer)} initializers")

    session = ort.InferenceSession(onnx_model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (ort_logits,) = session.run(None, {"points": x_test})
    jax_logits = np.asarray(model(x_test))
    logit_error = float(np.max(np.abs(ort_logits - jax_logits)))
    agree = float(np.mean(ort_logits.argmax(-1) == jax_logits.argmax(-1)))
    ort_accuracy = float(np.mean(ort_logits.argmax(-1) == y_test))
    (few,) = session.run(None, {"points": x_test[:7]})  # the batch axis is symbolic
    np.testing.assert_allclose(few, ort_logits[:7], rtol=1e-5, atol=1e-5)
    print(f"onnxruntime: accuracy {ort_accuracy:.2%}, predictions agree with JAX on "
          f"{agree:.2%}, max |logit difference| {logit_error:.2e}")

    imported = jonnx.import_model(onnx_model)
    params = imported.params

    def loss(p):
        return jo.softmax_cross_entropy(imported(x_test, params=p), y_test)

    before, grads = jax.value_and_grad(loss)(params)
    tuned = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
    after = float(loss(tuned))
    print(f"imported into JAX: loss {float(before):.4f} -> {after:.4f} after one gradient step "
          f"on its {len(params)} parameter arrays")
    return {"logit_error": logit_error, "agree": agree, "ort_accuracy": ort_accuracy,
            "loss_before": float(before), "loss_after": after, "ops": ops}


if __name__ == "__main__":
    main()
