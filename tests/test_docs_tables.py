"""The README's operator table is the one generated from the schema registry, and the
generator reads every fact it prints from the schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import jaxops as jo
from jaxops import _tables
from jaxops.schema import Attribute, OpSchema, Parameter

README = Path(__file__).parent.parent / "README.md"


def test_readme_operator_table_is_generated_from_the_schemas():
    assert _tables.section(README.read_text(encoding="utf-8")) == _tables.operator_table(), (
        f"README.md's operator table differs from the schemas; run `{_tables.COMMAND}`."
    )


def test_every_builtin_forward_op_has_one_row():
    rows = _tables.operator_rows()
    functions = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    gradient_ops = {s.gradient for s in jo.schema.builtin_schemas() if s.gradient}
    want = {f"`{s.function}`" for s in jo.schema.builtin_schemas()
            if s.name not in gradient_ops}
    assert sorted(functions) == sorted(want)
    assert len(functions) == len(set(functions))


def test_row_reads_the_schema():
    # a made-up schema whose row shows each fact the generator reads
    s = OpSchema(
        name="Fake", function="fake", doc="", domain="example.ops", since_version=3,
        inputs=(Parameter("X"), Parameter("labels", type_param="Tind", differentiable=False),
                Parameter("w", optional=True, differentiable=False),
                Parameter("lo", optional=True, scalar=True)),
        outputs=(Parameter("Y"),),
        type_constraints={"T": ("float32",), "Tind": ("int32",)},
        attributes=(Attribute("k", "int", required=True), Attribute("mode", "string", "sum"),
                    Attribute("eps", "float", 1e-3)),
        allow_inplace=((0, 0),), inplace_condition=lambda **_: None, gradient=None,
    )
    assert _tables._op_type(s) == "Fake-3 (example.ops)"
    assert _tables._inputs(s) == ("`X`, `labels` (int), `w` (optional, not differentiable), "
                                  "`lo` (optional, scalar)")
    assert _tables._attributes(s) == '`k` (required), `mode="sum"`, `eps=0.001`'
    assert _tables._gradient(s) == "autodiff"
    assert _tables._inplace(s) == "`X` → `Y` (attribute-dependent)"
    assert _tables._gradient(jo.schema.get("PRelu")) == (
        "`prelu_gradient`(X, slope, dY) → (dX, dslope)")
    assert _tables._attributes(jo.schema.get("Relu")) == "—"


def test_a_builtin_op_without_its_prose_is_named(monkeypatch):
    import dataclasses

    bare = dataclasses.replace(jo.schema.get("Tanh"), convention="")
    schemas = tuple(bare if s.name == "Tanh" else s for s in jo.schema.builtin_schemas(sort=False))
    monkeypatch.setattr(_tables.schema, "builtin_schemas", lambda sort=True: schemas)
    with pytest.raises(ValueError, match=r"\['Tanh'\].*formula= and convention=.*--write"):
        _tables.operator_table()


def test_rows_follow_registration_order():
    # families together, as the ops modules declare them (not alphabetical)
    functions = [row.split(" | ")[0].removeprefix("| ") for row in _tables.operator_rows()]
    assert functions.index("`relu`") < functions.index("`tanh`") < functions.index("`softmax`")


def test_user_ops_are_not_in_the_table():
    @jo.defop(name="TablesTestSquare", domain="tests.tables")
    def tables_test_square(x):
        return x * x

    try:
        assert "tables_test_square" not in _tables.operator_table()
    finally:
        jo.schema.unregister("TablesTestSquare")


def test_rewrite_replaces_only_the_marked_section():
    text = f"intro\n{_tables.START}\nstale\n{_tables.END}\noutro\n"
    new = _tables.rewrite(text)
    assert new == f"intro\n{_tables.START}\n{_tables.operator_table()}\n{_tables.END}\noutro\n"
    assert _tables.rewrite(new) == new
    with pytest.raises(ValueError, match="needs one <!-- ops-table:start -->"):
        _tables.rewrite("no markers here")
    with pytest.raises(ValueError, match="needs one"):
        _tables.rewrite(f"{_tables.END}\n{_tables.START}\n")


def test_command_prints_and_writes(tmp_path):
    printed = subprocess.run([sys.executable, "-m", "jaxops._tables"], capture_output=True,
                             text=True, check=True).stdout
    assert printed == _tables.operator_table() + "\n"
    doc = tmp_path / "doc.md"
    doc.write_text(f"# t\n{_tables.START}\nold\n{_tables.END}\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "jaxops._tables", "--write", str(doc)],
                         capture_output=True, text=True, check=True).stdout
    assert "rewritten" in out
    assert _tables.section(doc.read_text(encoding="utf-8")) == _tables.operator_table()
