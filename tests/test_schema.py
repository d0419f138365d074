"""jaxops.schema: the registry, fidelity to onnx.defs, signatures, inference and cost."""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnx.defs
import pytest
from reference import example_attrs, example_avals, structured

import jaxops as jo
from jaxops.schema import onnx_type

SCHEMAS = jo.schema.builtin_schemas()
# ops on (N, H) @ (H, V) matrices: not one-shape inputs; shapes and costs checked below
MATRIX_OPS = {"LinearCrossEntropyLoss", "LinearCrossEntropyLossGradient"}
SHAPED = [s for s in SCHEMAS if s.name not in MATRIX_OPS]
ONNX_SCHEMAS = [s for s in SCHEMAS if s.inherit_onnx_schema]
SEED_OPS = {"Relu", "ReluN", "LeakyRelu", "Softsign", "Log"}
# ops that split an axis in halves: an odd size is refused
HALVING = {"Glu", "GluGradient"}


def test_registry_lists_every_op_and_gradient_op():
    names = {s.name for s in SCHEMAS}
    assert SEED_OPS | {f"{n}Gradient" for n in SEED_OPS} <= names
    for s in SCHEMAS:
        assert jo.schema.get(s.name) is s
        assert callable(getattr(jo, s.function)), s.function
        if s.gradient is not None:
            assert jo.schema.get(s.gradient).domain == jo.schema.JAXOPS_DOMAIN
    with pytest.raises(KeyError, match="no jaxops op 'Nope'; no registered name is close. "
                                       r"jaxops.schema.all_schemas\(\) lists every op"):
        jo.schema.get("Nope")


@pytest.mark.parametrize("s", ONNX_SCHEMAS, ids=lambda s: s.name)
def test_schema_matches_onnx_defs(s):
    ref = onnx.defs.get_schema(s.name, s.since_version, s.domain)
    assert ref.since_version == s.since_version
    assert ref.domain == s.domain
    assert [p.name for p in ref.inputs] == [p.name for p in s.inputs]
    assert [p.name for p in ref.outputs] == [p.name for p in s.outputs]
    assert [p.type_str for p in ref.inputs] == [p.type_param for p in s.inputs]
    assert [p.option == onnx.defs.OpSchema.FormalParameterOption.Optional for p in ref.inputs] == [
        p.optional for p in s.inputs
    ]
    # jaxops-only attributes (onnx=False) are ONNX's optional outputs; onnx_name renames
    onnx_attrs = {a.onnx_name or a.name: a for a in s.attributes if a.onnx}
    assert set(ref.attributes) == set(onnx_attrs)
    for name, a in onnx_attrs.items():
        ra = ref.attributes[name]
        # ONNX has no bool attributes: a flag is an INT 0/1
        assert ra.type.name.lower() == ("int" if a.type == "bool" else a.type)
        assert ra.required == a.required
        if a.default is None:  # "absent" (ignore_index): ONNX has no default either
            assert ra.default_value.type == onnx.AttributeProto.UNDEFINED
        elif a.type == "string":
            assert onnx.helper.get_attribute_value(ra.default_value).decode() == a.default
        elif not a.required:
            # ONNX stores float defaults as float32
            assert np.float32(onnx.helper.get_attribute_value(ra.default_value)) == np.float32(
                a.default
            )
    ref_tc = {t.type_param_str: set(t.allowed_type_strs) for t in ref.type_constraints}
    assert set(ref_tc) == set(s.type_constraints)
    for param, dtypes in s.type_constraints.items():
        # jaxops accepts the float types only (its ops are differentiable): a subset of ONNX's
        assert {onnx_type(d) for d in dtypes} <= ref_tc[param]


def test_non_onnx_ops_live_in_the_jaxops_domain():
    for s in SCHEMAS:
        if not s.inherit_onnx_schema:
            assert s.domain == jo.schema.JAXOPS_DOMAIN and s.since_version == 1, s.name
            with pytest.raises(onnx.defs.SchemaError):
                onnx.defs.get_schema(s.name, onnx.defs.onnx_opset_version(), "")


@pytest.mark.parametrize("s", SCHEMAS, ids=lambda s: s.name)
def test_function_signature_matches_schema(s):
    params = list(inspect.signature(getattr(jo, s.function)).parameters.values())
    positional = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    keyword = [p for p in params if p.kind is p.KEYWORD_ONLY]
    assert len(positional) == len(s.inputs)
    # the attributes, then ``implementation=`` (which every op takes; not an attribute)
    assert [p.name for p in keyword] == [a.name for a in s.attributes] + ["implementation"]
    # a required attribute (num_groups) has no default in the signature either
    assert [p.default for p in keyword] == [
        inspect.Parameter.empty if a.required else a.default for a in s.attributes] + [None]
    assert len(params) == len(positional) + len(keyword)


SHAPES = [(), (7,), (3, 5, 2)]


def _same_shape_attrs(s):
    """Attributes under which every tensor input has one shape (no reduction to a scalar),
    and the required ones (reference.example_attrs)."""
    attrs = example_attrs(s)
    if any(a.name == "reduction" for a in s.attributes):
        attrs["reduction"] = "none"
    return attrs


def test_matrix_ops_infer_matches_eval_shape():
    h, w = jax.ShapeDtypeStruct((45, 16), jnp.float32), jax.ShapeDtypeStruct((16, 260), jnp.float32)
    t, d = jax.ShapeDtypeStruct((45,), jnp.int32), jax.ShapeDtypeStruct((), jnp.float32)
    for name, avals in [("LinearCrossEntropyLoss", (h, w, t, None)),
                        ("LinearCrossEntropyLossGradient", (h, w, t, None, d))]:
        s = jo.schema.get(name)
        traced = jax.eval_shape(getattr(jo, s.function), *avals)
        traced = traced if isinstance(traced, tuple) else (traced,)
        assert [(a.shape, a.dtype) for a in s.infer(*avals)] == [(a.shape, a.dtype)
                                                                  for a in traced]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("s", SHAPED, ids=lambda s: s.name)
def test_infer_matches_eval_shape(s, shape):
    if shape == () and not structured(s) and any(a.name == "axis" for a in s.attributes):
        with pytest.raises(ValueError, match="out of range for an input of rank 0"):
            s.infer(*(jax.ShapeDtypeStruct((), jnp.float32) for _ in s.inputs))
        return
    attrs = _same_shape_attrs(s)
    if s.name in HALVING and shape[-1] % 2:  # GLU splits the last axis into two halves
        with pytest.raises(ValueError, match=f"axis {len(shape) - 1} .* has odd size"):
            s.infer(*(jax.ShapeDtypeStruct(shape, jnp.float32) for _ in s.inputs))
        return
    if structured(s) and len(shape) < 2:  # (N, C, ...) needed: a clear error instead
        avals = [jax.ShapeDtypeStruct(shape, jnp.float32 if p.type_param != "Tind" else
                                      jnp.int32) for p in s.inputs]
        with pytest.raises(ValueError, match=r"must have shape \(N, C, d1, \.\.\.\)"):
            s.infer(*avals, **attrs)
        return
    for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
        avals = example_avals(s, shape, dtype, **attrs)
        inferred = s.infer(*avals, **attrs)
        traced = jax.eval_shape(functools.partial(getattr(jo, s.function), **attrs), *avals)
        traced = traced if isinstance(traced, tuple) else (traced,)
        assert [(a.shape, a.dtype) for a in inferred] == [(a.shape, a.dtype) for a in traced]


def test_infer_rejects_mismatched_shapes():
    message = r"input 'dY' must have the shape of 'Y' \(3,\), got \(4,\)"
    with pytest.raises(ValueError, match=message):
        jo.schema.get("ReluGradient").infer(
            jax.ShapeDtypeStruct((3,), jnp.float32), jax.ShapeDtypeStruct((4,), jnp.float32)
        )


# XLA counts one flop per elementwise HLO (compare, select, max, abs, ...); Caffe2 counts the
# arithmetic an op needs (Relu: 0, as a comparison).  So flops may differ by a few per element:
# the tolerance is FLOP_SLACK per element, plus, for half-precision inputs, one convert per
# input and output (computing in float32; XLA counts a convert as a flop).  Bytes and
# transcendentals must agree exactly.
FLOP_SLACK = 4


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("s", SHAPED, ids=lambda s: s.name)
def test_cost_matches_xla_cost_analysis(s, dtype):
    n = 4096
    attrs = _same_shape_attrs(s)
    avals = example_avals(s, (256, 16) if structured(s) else (n,), dtype, **attrs)
    cost = s.cost(*avals, **attrs)
    op = functools.partial(getattr(jo, s.function), **attrs)
    xla = jax.jit(op).lower(*avals).compile().cost_analysis()
    if s.elementwise:
        assert cost.bytes_accessed == xla["bytes accessed"]
    else:
        # XLA:CPU counts every pass of an unfused row reduction (max, sum, normalize) and the
        # converts; Caffe2's ideal counts one read and one write.  Measured: up to 6.5x for
        # softmax, 10.1x for bfloat16 softmax_cross_entropy (log_softmax's passes, the
        # float32 copy and the label gather), 12.7x for bfloat16 group_norm_gradient (the
        # recomputed statistics' passes over a float32 copy), 1.0x-4.9x for the others.
        assert cost.bytes_accessed <= xla["bytes accessed"] <= 13 * cost.bytes_accessed
    assert cost.transcendentals == xla.get("transcendentals", 0.0)
    converts = len(s.inputs) + len(s.outputs) if dtype == jnp.bfloat16 else 0
    slack = (FLOP_SLACK + converts) * n
    assert abs(cost.flops - xla.get("flops", 0.0)) <= slack, (cost.flops, xla["flops"])


def test_schema_printout_names_everything():
    text = str(jo.schema.get("LeakyRelu"))
    for needle in ("LeakyRelu-16", "jaxops.leaky_relu", "alpha: float = 0.01",
                   "T in {float16, bfloat16, float32, float64}", "allow_inplace: [(0, 0)]",
                   "gradient: LeakyReluGradient", "'xla'"):
        assert needle in text
