"""``jaxops.onnx.export(..., dynamic_axes=...)``: the forms users write (jaxops' own, and
``torch.onnx.export``'s by-name and list forms) run in onnxruntime at two sizes; the forms
that do not say which input and axis are refused with the accepted forms and an example."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxops as jo

jonnx = pytest.importorskip("jaxops.onnx")
ort = pytest.importorskip("onnxruntime")

RNG = np.random.default_rng(0)
W = jnp.asarray(RNG.normal(size=(3, 2)), jnp.float32)


def _run_ort(model, *args):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feeds = {i.name: np.asarray(a) for i, a in zip(session.get_inputs(), args, strict=True)}
    return session.run(None, feeds)


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _net(x):
    return jo.softmax(jo.relu(x) @ W)


def _mse(p, t):
    return jo.mse(p, t, reduction="none")


def _outer(a, b):  # (n, 3) and (3, m): two independent dynamic sizes
    return jo.tanh(a) @ b


def _normal(*shape):
    return jnp.asarray(RNG.normal(size=shape), jnp.float32)


# (id, fn, example shapes, export keywords, input dims, output dims, shapes to run at)
ACCEPTED = [
    ("by_position", _net, [(4, 3)], dict(dynamic_axes={0: {0: "batch"}}),
     [["batch", 3]], [["batch", 2]], [[(1, 3)], [(7, 3)]]),
    ("by_name", _net, [(4, 3)], dict(input_names=["x"], dynamic_axes={"x": {0: "batch"}}),
     [["batch", 3]], [["batch", 2]], [[(1, 3)], [(7, 3)]]),
    ("default_name", _net, [(4, 3)], dict(dynamic_axes={"input_0": {0: "batch"}}),
     [["batch", 3]], [["batch", 2]], [[(1, 3)], [(7, 3)]]),
    ("list_of_axes", _net, [(4, 3)], dict(input_names=["x"], dynamic_axes={"x": [0]}),
     [["x_dim0", 3]], [["x_dim0", 2]], [[(1, 3)], [(7, 3)]]),
    ("negative_axis", _net, [(4, 3)], dict(dynamic_axes={0: {-2: "batch"}}),
     [["batch", 3]], [["batch", 2]], [[(1, 3)], [(7, 3)]]),
    ("one_symbol_two_inputs", _mse, [(4, 3), (4, 3)],
     dict(input_names=["p", "t"], dynamic_axes={"p": {0: "n"}, "t": {0: "n"}}),
     [["n", 3], ["n", 3]], [["n", 3]], [[(1, 3), (1, 3)], [(7, 3), (7, 3)]]),
    ("independent_lists", _outer, [(4, 3), (3, 5)], dict(dynamic_axes={0: [0], 1: [1]}),
     [["input_0_dim0", 3], [3, "input_1_dim1"]], [["input_0_dim0", "input_1_dim1"]],
     [[(1, 3), (3, 6)], [(7, 3), (3, 2)]]),
    ("output_named_like_pytorch", _net, [(4, 3)],
     dict(input_names=["x"], output_names=["y"],
          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}),
     [["batch", 3]], [["batch", 2]], [[(1, 3)], [(7, 3)]]),
    ("output_relabelled", _net, [(4, 3)],
     dict(output_names=["y"], dynamic_axes={0: {0: "batch"}, "y": [0]}),
     [["batch", 3]], [["batch", 2]], [[(1, 3)], [(7, 3)]]),
    ("output_own_label", _net, [(4, 3)],
     dict(output_names=["y"], dynamic_axes={0: {0: "batch"}, "y": {0: "rows"}}),
     [["batch", 3]], [["rows", 2]], [[(1, 3)], [(7, 3)]]),
]


@pytest.mark.parametrize("fn, shapes, kwargs, in_dims, out_dims, runs",
                         [case[1:] for case in ACCEPTED], ids=[case[0] for case in ACCEPTED])
def test_accepted_forms_run_at_two_sizes(fn, shapes, kwargs, in_dims, out_dims, runs):
    model = jonnx.export(fn, *(_normal(*s) for s in shapes), **kwargs)
    assert [_dims(i) for i in model.graph.input] == in_dims
    assert [_dims(o) for o in model.graph.output] == out_dims
    for run_shapes in runs:
        args = [_normal(*s) for s in run_shapes]
        (got,) = _run_ort(model, *args)
        np.testing.assert_allclose(got, fn(*args), rtol=2e-6, atol=2e-6)


FORMS = r"dynamic_axes=\{0: \{0: 'batch'\}\} or \{'input_0': \[0\]\}"

# (id, dynamic_axes, error, message)
REFUSED = [
    ("bare_symbol", {0: "batch"}, TypeError,
     r"dynamic_axes\[0\] is 'batch'.*" + FORMS + r".*A name alone does not say which axis: "
     r"for axis 0, \{0: \{0: 'batch'\}\}"),
    ("bare_symbol_by_name", {"input_0": "batch"}, TypeError,
     r"dynamic_axes\['input_0'\] is 'batch'.*" + FORMS),
    ("list_not_dict", [0], TypeError, r"dynamic_axes is \[0\]; .*" + FORMS),
    ("float_key", {0.5: [0]}, TypeError, r"has the key 0\.5; .*" + FORMS),
    ("named_axis", {0: {"rows": "batch"}}, TypeError,
     r"dynamic_axes\[0\] names axis 'rows'; axes are ints\. .*" + FORMS),
    ("unknown_name", {"x": [0]}, ValueError,
     r"names 'x', which is neither an input \('input_0'\) nor an output \('output_0'\)\. .*"
     + FORMS),
    ("same_input_twice", {0: [0], "input_0": [0]}, ValueError,
     r"names input 0 \('input_0'\) twice, by position and by name"),
    ("same_axis_twice", {0: {0: "a", -2: "b"}}, ValueError,
     r"dynamic_axes\[0\] names axis 0 twice"),
    ("axis_out_of_range", {0: [-3]}, ValueError,
     r"dynamic_axes\[0\] names axis -3, but input 0 has shape \(4, 3\)"),
    ("static_output_axis", {0: {0: "batch"}, "output_0": {1: "classes"}}, ValueError,
     r"makes axis 1 of output 'output_0' \(shape \(batch, 2\)\) dynamic, but its size does "
     r"not depend on a dynamic input axis"),
]


@pytest.mark.parametrize("dynamic_axes, error, message", [case[1:] for case in REFUSED],
                         ids=[case[0] for case in REFUSED])
def test_refused_forms_say_what_is_accepted(dynamic_axes, error, message):
    with pytest.raises(error, match=f"^jaxops.onnx.export: .*{message}"):
        jonnx.export(_net, _normal(4, 3), dynamic_axes=dynamic_axes)


def test_list_form_names_each_axis_so_shared_sizes_need_the_dict_form():
    """PyTorch's list form names every (input, axis) apart: JAX then cannot prove that two
    batch axes agree, and the op says so; one symbol in the dict form is one size."""
    p = t = _normal(4, 3)
    with pytest.raises(ValueError, match=r"must have the shape of 'predictions' "
                                         r"\(input_0_dim0, 3\), got \(input_1_dim0, 3\)"):
        jonnx.export(_mse, p, t, dynamic_axes={0: [0], 1: [0]})
    jonnx.export(_mse, p, t, dynamic_axes={0: {0: "n"}, 1: {0: "n"}})


def test_one_symbol_for_axes_of_different_example_sizes_is_refused():
    """Found by review: the model was written and failed on its own example in onnxruntime."""
    x = jnp.arange(12.0).reshape(4, 3)
    with pytest.raises(ValueError, match=r"axis 1 of 'input_0' \(size 3\) and axis 0 of "
                                         r"'input_0' \(size 4\) both 'b', but one symbol is "
                                         r"one size"):
        jonnx.export(lambda x: jo.relu(x + x.T), x, dynamic_axes={0: {0: "b", 1: "b"}})


def test_independent_symbols_combined_by_the_function_say_what_to_do():
    x = jnp.ones((4, 3))
    with pytest.raises(TypeError, match=r"(?s)tracing the function with dynamic axes "
                                        r"'input_0_dim0', 'input_1_dim0' failed: .*need the "
                                        r"same symbol"):
        jonnx.export(lambda x, y: jo.relu(x) + y, x, x,
                     dynamic_axes={"input_0": [0], "input_1": [0]})
