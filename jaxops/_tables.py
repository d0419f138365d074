"""The README's operator table, generated from the schema registry.

``python -m jaxops._tables`` prints the table; ``python -m jaxops._tables --write`` rewrites
it in README.md, between the ``<!-- ops-table:start -->`` and ``<!-- ops-table:end -->``
markers (``tests/test_docs_tables.py`` keeps the two equal).

Every column that is a fact of an op's schema is read from it: the function, op_type,
version and domain, the inputs (optional, scalar, integer, not differentiable), the
attributes with their defaults, the registered gradient op with its inputs and outputs, and
the input/output pairs that may share a buffer, and the two cells of prose (the formula in
the README's notation, the derivative's convention at the kink) from the schema's
``formula`` and ``convention`` fields, written in the op's own block.

    >>> from jaxops import _tables
    >>> print(_tables.operator_rows()[0])
    | `relu` | Relu-14 | max(0, x) | `X` | — | `relu_gradient`(Y, dY) | `X` → `Y` | 0 at x = 0 |
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxops import schema
from jaxops.schema import FLOAT_TYPES, OpSchema

START = "<!-- ops-table:start -->"
END = "<!-- ops-table:end -->"
COMMAND = "python -m jaxops._tables --write"

HEADER = (
    "| function | op_type (domain) | y = | inputs | attributes | gradient op | in place "
    "| at the kink |\n"
    "|---|---|---|---|---|---|---|---|"
)


def forward_schemas() -> tuple[OpSchema, ...]:
    """jaxops' own ops that are not some op's gradient op, in registration order (the
    family modules' order in ``jaxops/__init__.py``, then each module's)."""
    forward = schema.builtin_forward_schemas()
    bare = [s.name for s in forward if not (s.formula and s.convention)]
    if bare:
        raise ValueError(
            f"{bare}: a built-in op's schema needs formula= and convention= (the table's "
            f"'y =' and 'at the kink' cells), then run {COMMAND}."
        )
    return forward


def _code(name: str) -> str:
    return f"`{name}`"


def _default(value) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _inputs(s: OpSchema) -> str:
    cells = []
    for p in s.inputs:
        notes = []
        if p.optional:
            notes.append("optional")
        if p.scalar:
            notes.append("scalar")
        if not set(s.type_constraints[p.type_param]) & set(FLOAT_TYPES):
            notes.append("int")
        elif not p.differentiable:
            notes.append("not differentiable")
        cells.append(_code(p.name) + (f" ({', '.join(notes)})" if notes else ""))
    return ", ".join(cells)


def _attributes(s: OpSchema) -> str:
    return ", ".join(
        f"`{a.name}` (required)" if a.required else f"`{a.name}={_default(a.default)}`"
        for a in s.attributes
    ) or "—"


def _gradient(s: OpSchema) -> str:
    if s.gradient is None:
        return "autodiff"
    g = schema.get(s.gradient)
    outs = ", ".join(p.name for p in g.outputs)
    call = f"{_code(g.function)}({', '.join(p.name for p in g.inputs)})"
    return call if len(g.outputs) == 1 else f"{call} → ({outs})"


def _inplace(s: OpSchema) -> str:
    if not s.allow_inplace:
        return "—"
    pairs = ", ".join(f"{_code(s.inputs[i].name)} → {_code(s.outputs[o].name)}"
                      for i, o in s.allow_inplace)
    return pairs + (" (attribute-dependent)" if s.inplace_condition is not None else "")


def _op_type(s: OpSchema) -> str:
    domain = f" ({s.domain})" if s.domain else ""
    return f"{s.name}-{s.since_version}{domain}"


def operator_rows() -> list[str]:
    """One Markdown table row per forward op."""
    rows = []
    for s in forward_schemas():
        cells = (_code(s.function), _op_type(s), s.formula, _inputs(s), _attributes(s),
                 _gradient(s), _inplace(s), s.convention)
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def operator_table() -> str:
    """The README's operator table (header and rows), without the markers."""
    return "\n".join([HEADER, *operator_rows()])


def section(text: str, path: str = "README.md") -> str:
    """The text between the markers of ``text`` (``path`` names it in the error)."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"{path} needs one {START} line followed by one {END} line.")
    return text[text.index(START) + len(START):text.index(END)].strip("\n")


def rewrite(text: str, path: str = "README.md") -> str:
    """``text`` with the table between its markers regenerated."""
    section(text, path)  # the markers are there, once each
    head, rest = text.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{operator_table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxops._tables", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--write", nargs="?", const="README.md", metavar="PATH",
                        help="rewrite the table between the markers of PATH (README.md)")
    args = parser.parse_args(argv)
    if args.write is None:
        print(operator_table())
        return 0
    path = Path(args.write)
    old = path.read_text(encoding="utf-8")
    new = rewrite(old, str(path))
    if new != old:
        path.write_text(new, encoding="utf-8")
    print(f"{path}: {'rewritten' if new != old else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
