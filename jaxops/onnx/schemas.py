"""The jaxops-domain schemas as ``onnx.defs.OpSchema`` records, registered with ONNX so that
``onnx.checker`` and ``onnx.defs.get_schema(name, 1, "ai.jaxops")`` know the ops an exported
model uses (inputs, outputs, attributes with defaults, type constraints)."""

from __future__ import annotations

import onnx.defs
import onnx.helper

import jaxops as jo
from jaxops.schema import JAXOPS_DOMAIN, KEY_TYPE, onnx_type

_D = onnx.defs.OpSchema
_ATTR_TYPES = {"float": _D.AttrType.FLOAT, "int": _D.AttrType.INT, "bool": _D.AttrType.INT,
               "string": _D.AttrType.STRING}


def _param(p) -> _D.FormalParameter:
    return _D.FormalParameter(
        p.name, p.type_param, p.doc,
        param_option=_D.FormalParameterOption.Optional if p.optional else
        _D.FormalParameterOption.Single,
        differentiation_category=_D.DifferentiationCategory.Differentiable if p.differentiable
        else _D.DifferentiationCategory.NonDifferentiable)


def _attribute(a) -> _D.Attribute:
    name = a.onnx_name or a.name
    if a.required or a.default is None:
        return _D.Attribute(name, _ATTR_TYPES[a.type], a.doc, required=a.required)
    default = int(a.default) if a.type == "bool" else a.default
    return _D.Attribute(name, onnx.helper.make_attribute(name, default), a.doc)


def onnx_schema(schema) -> onnx.defs.OpSchema:
    """The ``onnx.defs.OpSchema`` of a jaxops schema."""
    return _D(
        schema.name, schema.domain, schema.since_version, schema.doc,
        inputs=[_param(p) for p in schema.inputs], outputs=[_param(p) for p in schema.outputs],
        # a typed PRNG key has no ONNX type (its raw uint32 form does)
        type_constraints=[(k, [onnx_type(t) for t in v if t != KEY_TYPE], "") for k, v in
                          schema.type_constraints.items()],
        attributes=[_attribute(a) for a in schema.attributes if a.onnx],
    )


def register_jaxops_domain() -> None:
    """Register every jaxops-domain op with ``onnx.defs`` (once; later calls do nothing)."""
    for s in jo.schema.all_schemas():
        if s.domain != JAXOPS_DOMAIN:
            continue
        try:
            onnx.defs.get_schema(s.name, s.since_version, s.domain)
        except onnx.defs.SchemaError:
            onnx.defs.register_schema(onnx_schema(s))
