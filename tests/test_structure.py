"""The package's import structure: modules own their privates (docs in /work/shared/STYLE.md).

A leading underscore is a promise about who may use a name:

* ``_name`` defined in a module is that module's own; no other module imports it (or reaches
  it as ``module._name``).  What several modules share lives in a module that exports it
  under a public name (e.g. :mod:`jaxops.ops.loss_machinery`).
* A private module or subpackage ``pkg._mod`` belongs to its package ``pkg``: any module
  inside ``pkg`` may import it and its public names (``jaxops._op`` serves all of jaxops,
  ``jaxops.flax._common`` the Flax wrappers), nothing outside may.
* A package's ``__init__`` may re-export a private name of a module inside that package.

The check reads the source with :mod:`ast` (nothing is imported), so it also sees modules that
need optional dependencies.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import jaxops

PACKAGE_DIR = pathlib.Path(jaxops.__file__).parent

# (importing module, imported dotted name) -> why the exception is acceptable.  Empty: every
# module keeps to the rule.  An entry that no longer matches a violation fails the test below,
# so the list cannot go stale.
ALLOWED: dict[tuple[str, str], str] = {}


def _is_private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(path: pathlib.Path) -> bool:
    return path.name == "__init__.py"


def _is_module(dotted: str) -> bool:
    """Whether ``dotted`` (``jaxops.x.y``) names a module or package of jaxops."""
    rel = pathlib.Path(*dotted.split(".")[1:])
    return (PACKAGE_DIR / rel).with_suffix(".py").is_file() or (
        PACKAGE_DIR / rel / "__init__.py").is_file()


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _violation(importer: str, importer_is_package: bool, dotted: str) -> str | None:
    """Why ``importer`` may not use ``dotted`` (a jaxops module, or a name in one), or None."""
    parts = dotted.split(".")
    for i in range(1, len(parts)):
        if not _is_private(parts[i]):
            continue
        owner = ".".join(parts[:i])  # the module or package the private part belongs to
        if _is_module(".".join(parts[: i + 1])):
            # a private module: its package's, so every module inside the package may use it
            if not _inside(importer, owner):
                return f"private module {'.'.join(parts[:i + 1])} of {owner}, used outside it"
        elif importer != owner and not (importer_is_package and _inside(owner, importer)):
            return f"private name {parts[i]!r} of {owner}"
    return None


def _resolve_from(importer: str, importer_is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if importer_is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def violations(source: str, importer: str, importer_is_package: bool = False):
    """(line, dotted name, reason) for every private name of another jaxops module that
    ``source`` (the module ``importer``) imports, or reaches as an attribute of an imported
    jaxops module."""
    found = []
    modules: dict[str, str] = {}  # local name -> the jaxops module it is bound to

    def check(line, dotted):
        reason = _violation(importer, importer_is_package, dotted)
        if reason:
            found.append((line, dotted, reason))

    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _resolve_from(importer, importer_is_package, node)
            if base.split(".")[0] != "jaxops":
                continue
            for alias in node.names:
                dotted = f"{base}.{alias.name}"
                check(node.lineno, dotted)
                if _is_module(dotted):
                    modules[alias.asname or alias.name] = dotted
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "jaxops":
                    continue
                check(node.lineno, alias.name)
                if alias.asname:
                    modules[alias.asname] = alias.name
                else:
                    modules[alias.name.split(".")[0]] = alias.name.split(".")[0]
    for node in ast.walk(tree):
        # the outermost attribute chain on a module name: jo.ops.cross_entropy._picked
        if isinstance(node, ast.Attribute):
            chain, inner = [], node
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in modules:
                dotted = ".".join([modules[inner.id], *reversed(chain)])
                if any(_is_private(p) for p in chain):
                    check(node.lineno, dotted)
    return sorted(set(found))


def _package_violations():
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        importer = _module_name(path)
        for line, dotted, reason in violations(path.read_text(), importer, _is_package(path)):
            out[(importer, dotted)] = f"{path.relative_to(PACKAGE_DIR.parent)}:{line}: {reason}"
    return out


def test_no_module_imports_another_modules_private_names():
    found = {k: v for k, v in _package_violations().items() if k not in ALLOWED}
    assert not found, "private names used across modules (export them from a shared module):\n" \
        + "\n".join(found.values())


def test_allowances_are_still_needed():
    stale = set(ALLOWED) - set(_package_violations())
    assert not stale, f"ALLOWED lists imports that no longer happen; remove them: {stale}"


def test_the_walk_sees_the_whole_package():
    names = {_module_name(p) for p in PACKAGE_DIR.rglob("*.py")}
    assert {"jaxops", "jaxops.ops.cross_entropy", "jaxops.ops.loss_machinery",
            "jaxops.flax._common", "jaxops.kernels.batch_norm.triton",
            "jaxops.onnx.importer"} <= names


# The checker itself, on sources that break the rule and sources that keep it: a structure
# test that cannot fail would pass on any package.
@pytest.mark.parametrize("importer, source", [
    ("jaxops.ops.linear_cross_entropy", "from jaxops.ops.cross_entropy import _picked"),
    ("jaxops.ops.linear_cross_entropy", "from jaxops.ops.cross_entropy import (\n    x,\n    _y)"),
    ("jaxops.ops.linear_cross_entropy", "from .cross_entropy import _picked"),
    ("jaxops.ops.losses", "from jaxops.flax import _common"),
    ("jaxops.ops.losses", "from jaxops.flax._common import feature_axis"),
    ("jaxops.ops.losses", "import jaxops.flax._common"),
    ("jaxops.ops.losses", "from jaxops.ops import cross_entropy\ncross_entropy._picked(1, 2)"),
    ("jaxops.ops.losses", "import jaxops as jo\njo.ops.cross_entropy._picked(1, 2)"),
    ("jaxops.onnx.exporter", "from jaxops._op import _CURRENT"),
])
def test_checker_flags(importer, source):
    assert violations(source, importer)


@pytest.mark.parametrize("importer, is_package, source", [
    ("jaxops.ops.losses", False, "from __future__ import annotations"),
    ("jaxops.ops.losses", False, "from jaxops._op import defop"),
    ("jaxops.ops.losses", False, "from jaxops.ops.loss_machinery import reduce"),
    ("jaxops.flax.nnx", False, "from jaxops.flax import _common"),
    ("jaxops.flax.nnx", False, "from . import _common\n_common.feature_axis"),
    ("jaxops.ops.losses", False, "import jaxops as jo\njo.relu.__wrapped__"),
    ("jaxops.ops", True, "from jaxops.ops.cross_entropy import _picked as _picked"),
])
def test_checker_allows(importer, is_package, source):
    assert not violations(source, importer, is_package)


# ------------------------------------------------------------------- kernels by op
# jaxops/kernels/__init__.py: one package per fused op, its glue in __init__.py, its Pallas
# code in one module per backend; kernel packages import their op modules, never the reverse.

KERNELS_DIR = PACKAGE_DIR / "kernels"
BACKENDS = ("triton",)


def _imported_modules(path: pathlib.Path) -> set[str]:
    importer, out = _module_name(path), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = _resolve_from(importer, _is_package(path), node)
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def _kernel_packages():
    return sorted(p for p in KERNELS_DIR.iterdir() if (p / "__init__.py").is_file())


def test_kernel_packages_each_register_and_have_backend_code():
    packages = _kernel_packages()
    assert {p.name for p in packages} >= {"softmax", "softmax_cross_entropy", "batch_norm",
                                          "linear_cross_entropy"}
    for package in packages:
        glue = (package / "__init__.py").read_text()
        assert ".defimpl(" in glue, f"{package.name}: its glue registers no kernel"
        backends = [b for b in BACKENDS if (package / f"{b}.py").is_file()]
        uses = {m for m in _imported_modules(package / "__init__.py")
                if any(m.endswith(f".{b}") for b in BACKENDS)}
        assert backends or uses, f"{package.name}: no backend module, and uses none"


def test_only_backend_modules_import_pallas():
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        backend = path.stem in BACKENDS or path.stem in {f"_{b}_tiles" for b in BACKENDS}
        if not backend:
            pallas = {m for m in _imported_modules(path) if "pallas" in m.split(".")}
            assert not pallas, f"{path}: Pallas outside a backend module ({pallas})"


def test_backend_modules_know_nothing_of_ops_or_autodiff():
    for path in sorted(KERNELS_DIR.rglob("*.py")):
        if path.stem in BACKENDS:
            bad = {m for m in _imported_modules(path) if m.startswith(
                ("jaxops.ops", "jaxops._op", "jaxops._ad", "jaxops.schema"))}
            assert not bad, f"{path}: a backend module imports {bad}"


def test_op_modules_do_not_import_their_kernels():
    for path in sorted((PACKAGE_DIR / "ops").glob("*.py")):
        kernel_packages = {f"jaxops.kernels.{p.name}" for p in _kernel_packages()}
        bad = {m for m in _imported_modules(path)
               if any(_inside(m, k) for k in kernel_packages)}
        assert not bad, f"{path}: imports its kernel package {bad} (the reverse is the rule)"
