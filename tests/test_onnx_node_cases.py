"""The onnx package's own node test cases (``onnx.backend.test.case.node``) through
``jaxops.onnx.import_model``, for every standard op jaxops implements.

Each case is a one-node model with input and expected output tensors, written by the ONNX
authors from the operator's specification: an independent reference for the importer's
mapping of a node (its attributes, defaults, optional inputs and opset-dependent semantics)
onto the jaxops op.  An op added to the registry is tested here with no edit: the cases are
selected by the node's op_type.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

import jaxops as jo
from jaxops import onnx as jonnx


@functools.cache
def _all_cases() -> tuple:
    with warnings.catch_warnings():  # the case generators overflow casts on purpose
        warnings.simplefilter("ignore")
        import onnx.backend.test.case.node as node_cases

        return tuple(node_cases.collect_testcases(None))


def _standard_ops() -> set[str]:
    return {s.name for s in jo.schema.builtin_schemas() if s.domain == ""}


def _cases() -> list:
    ops = _standard_ops()
    return [c for c in _all_cases()
            if len(c.model.graph.node) == 1 and c.model.graph.node[0].op_type in ops]


#: Cases whose node jaxops does not run, each with the reason; strict, so a case that starts
#: passing must leave this list.
EXPECTED_FAILURES = {
    "test_clip_default_int8_min": "jaxops.clip is float-only; ONNX Clip also takes integers",
    "test_clip_default_int8_max": "jaxops.clip is float-only; ONNX Clip also takes integers",
    "test_clip_default_int8_inbounds": "jaxops.clip is float-only; ONNX Clip also takes "
                                       "integers",
}

CASES = _cases()


def _param(case):
    reason = EXPECTED_FAILURES.get(case.name)
    marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
    return pytest.param(case, id=case.name, marks=marks)


def test_every_standard_op_has_node_cases():
    covered = {c.model.graph.node[0].op_type for c in CASES}
    # ops the onnx package has no single-node case for
    assert _standard_ops() - covered == set()


def test_expected_failures_are_cases():
    assert set(EXPECTED_FAILURES) <= {c.name for c in CASES}


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_node_case_imports_and_matches(case):
    model = jonnx.import_model(case.model)
    for inputs, outputs in case.data_sets:
        got = model(*inputs)
        got = got if isinstance(got, tuple | list) else (got,)
        assert len(got) >= len(outputs)
        for g, want in zip(got, outputs, strict=False):
            g = np.asarray(g)
            assert g.dtype == want.dtype and g.shape == want.shape, (g.dtype, g.shape)
            # the case's own tolerance (ONNX's runner uses rtol 1e-3, atol 1e-7 by default),
            # no looser than float32 rounding of the jaxops computation
            np.testing.assert_allclose(g, want, rtol=max(case.rtol, 1e-5),
                                       atol=max(case.atol, 1e-6))
