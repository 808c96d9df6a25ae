"""The shape of the tree, checked: file and function sizes, and which packages may import which.

Dependencies run one way (issue 13): face -> api -> compare -> (methods, metrics) -> modules -> formats
-> core. The import rules are read from the source (AST), so an import inside a function counts as
much as one at the top; only ``if TYPE_CHECKING:`` blocks are left out (they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "lowbit"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
# Line-for-line ports of reference code, kept in the reference's shape so the two read side by side.
PORTS = {
    "formats/ggml/kcommon.py::make_qkx2_quants": "llama.cpp ggml-quants.c make_qkx2_quants",
}

CORE = ("tensor.py", "spec.py", "grid.py", "bitpack.py", "registry.py", "errors.py")
_ABOVE_MODULES = ("lowbit.methods", "lowbit.metrics", "lowbit.compare", "lowbit.api", "lowbit.pipeline",
                  "lowbit.cli", "lowbit.writers", "lowbit.qat")
# (what the rule covers, which files, the packages they must not import)
RULES = [
    ("methods/", lambda rel: rel.startswith("methods/"),
     ("lowbit.compare", "lowbit.api", "lowbit.writers", "lowbit.cli", "lowbit.pipeline", "lowbit.metrics",
      "lowbit.qat", "lowbit.loaders.dispatch")),
    ("metrics/", lambda rel: rel.startswith("metrics/"),
     ("lowbit.methods", "lowbit.compare", "lowbit.api", "lowbit.pipeline", "lowbit.cli", "lowbit.qat")),
    ("modules/", lambda rel: rel.startswith("modules/"), _ABOVE_MODULES),
    ("formats/", lambda rel: rel.startswith("formats/"), _ABOVE_MODULES),
    ("core", lambda rel: rel in CORE, ("lowbit.formats", "lowbit.modules", "lowbit.methods")),
    ("compare/", lambda rel: rel.startswith("compare/"), ("lowbit.api", "lowbit.cli")),
    ("pipeline/ and qat/", lambda rel: rel.startswith(("pipeline/", "qat/")),
     ("lowbit.api", "lowbit.cli", "lowbit.compare")),
    ("api.py", lambda rel: rel == "api.py", ("lowbit.cli",)),
    # (the checkpoint loader reads the method registry, to refuse a record from a newer lowbit)
    ("loaders/ and calib/", lambda rel: rel.startswith(("loaders/", "calib/")),
     ("lowbit.metrics", "lowbit.pipeline", "lowbit.compare", "lowbit.api", "lowbit.cli", "lowbit.qat")),
]


def source_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(SRC).as_posix()


def module_name(path: Path) -> str:
    parts = ["lowbit", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# --- sizes ------------------------------------------------------------------------------------------
def function_sizes(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, int]]:
    """(qualified name, lines) of every function and method, nested ones included (``Class.method``)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node.end_lineno - node.lineno + 1
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield from function_sizes(node, prefix + node.name + ".")
        else:
            yield from function_sizes(node, prefix)


def all_function_sizes() -> dict[str, int]:
    return {f"{rel(p)}::{name}": n for p in source_files() for name, n in function_sizes(ast.parse(p.read_text()))}


def test_no_file_over_the_size_limit() -> None:
    big = {rel(p): n for p in source_files() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    report = "\n".join(f"  src/lowbit/{f}: {n} lines" for f, n in sorted(big.items(), key=lambda kv: -kv[1]))
    print(report)
    assert not big, f"{len(big)} file(s) over {MAX_FILE_LINES} lines; split them:\n{report}"


def test_no_function_over_the_size_limit() -> None:
    sizes = all_function_sizes()
    long = {k: n for k, n in sizes.items() if n > MAX_FUNCTION_LINES and k not in PORTS}
    report = "\n".join(f"  src/lowbit/{k}: {n} lines" for k, n in sorted(long.items(), key=lambda kv: -kv[1]))
    print(report)
    assert not long, f"{len(long)} function(s) over {MAX_FUNCTION_LINES} lines; split them:\n{report}"


def test_size_allowlist_names_real_long_ports() -> None:
    """Each allowlisted port exists and still needs the exemption (else the entry is stale: drop it)."""
    sizes = all_function_sizes()
    stale = {k: sizes.get(k) for k in PORTS if sizes.get(k, 0) <= MAX_FUNCTION_LINES}
    assert not stale, f"PORTS entries that are gone (None) or now fit: {stale}"


def test_function_sizes_count_methods_and_nested_functions() -> None:
    src = "class A:\n    def m(self):\n        def inner():\n            pass\n        return 1\n\ndef f():\n    pass\n"
    assert dict(function_sizes(ast.parse(src))) == {"A.m": 4, "A.m.inner": 2, "f": 2}


# --- import direction -------------------------------------------------------------------------------
def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _is_module(name: str) -> bool:
    path = SRC.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _lazy_verbs() -> dict[str, str]:
    """lowbit/__init__.py's lazily imported names -> the module that ``from lowbit import NAME`` loads."""
    tree = ast.parse((SRC / "__init__.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import that can run: top level, in functions, in classes;
    ``from pkg import name`` counts as ``pkg.name`` when that is a module (or a lazy verb of lowbit's)."""
    lazy = _lazy_verbs()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    yield from visit_one(sub)
                continue
            yield from visit_one(child)

    def visit_one(node: ast.AST) -> Iterator[tuple[str, int]]:
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package upward
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                if base == "lowbit" and a.name in lazy:
                    yield lazy[a.name], node.lineno
                elif _is_module(full):
                    yield full, node.lineno
                else:
                    yield base, node.lineno
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) or getattr(node.func, "id", None)) == "import_module"):
            yield node.args[0].value, node.lineno
        yield from visit(node)

    yield from visit(tree)


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations() -> list[str]:
    found = []
    for path in source_files():
        r = rel(path)
        rules = [forbidden for _, covers, forbidden in RULES if covers(r)]
        if not rules:
            continue
        tree = ast.parse(path.read_text())
        for name, line in imports(tree, module_name(path), path.name == "__init__.py"):
            for forbidden in rules:
                bad = next((f for f in forbidden if _matches(name, f)), None)
                if bad is not None:
                    found.append(f"src/lowbit/{r}: imports {name} (line {line}; {bad} is above it)")
    return sorted(set(found))


def test_every_rule_covers_some_file() -> None:
    files = [rel(p) for p in source_files()]
    empty = [what for what, covers, _ in RULES if not any(covers(f) for f in files)]
    assert not empty, f"import rules that match no file (a renamed package?): {empty}"


def test_imports_run_one_way() -> None:
    found = violations()
    report = "\n".join(f"  {v}" for v in found)
    print(report)
    assert not found, f"{len(found)} import(s) against the dependency direction:\n{report}"


def test_import_walker_sees_what_runs_and_skips_type_checking() -> None:
    src = textwrap.dedent("""
        from typing import TYPE_CHECKING
        import lowbit.api
        from lowbit import compare, make_config, errors
        from . import base
        from ..metrics import run
        if TYPE_CHECKING:
            from lowbit.writers import gguf
        else:
            import lowbit.cli
        def f():
            from lowbit.pipeline.run import quantize
            importlib.import_module("lowbit.qat")
        class C:
            import lowbit.loaders.dispatch
    """)
    got = [name for name, _ in imports(ast.parse(src), "lowbit.methods.x", is_package=False)]
    assert "lowbit.writers.gguf" not in got and "lowbit.writers" not in got
    for want in ("lowbit.api", "lowbit.compare", "lowbit.api", "lowbit.errors", "lowbit.methods.base",
                 "lowbit.metrics.run", "lowbit.cli", "lowbit.pipeline.run", "lowbit.qat", "lowbit.loaders.dispatch"):
        assert want in got, (want, got)
    assert _matches("lowbit.api", "lowbit.api") and _matches("lowbit.compare.run", "lowbit.compare")
    assert not _matches("lowbit.apix", "lowbit.api")


# --- what importing a package really loads ----------------------------------------------------------
RUNTIME = [
    ("lowbit.methods", ("lowbit.compare", "lowbit.api", "lowbit.writers", "lowbit.metrics", "lowbit.pipeline",
                        "lowbit.qat", "lowbit.cli")),
    ("lowbit.metrics", ("lowbit.methods", "lowbit.compare", "lowbit.api", "lowbit.pipeline", "lowbit.cli",
                        "lowbit.qat")),
]


@pytest.mark.parametrize("package, forbidden", RUNTIME, ids=[p for p, _ in RUNTIME])
def test_importing_a_package_loads_nothing_above_it(package: str, forbidden: tuple[str, ...]) -> None:
    code = (f"import sys, {package}\n"
            f"bad = sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in {forbidden!r}))\n"
            "print('\\n'.join(bad))\n"
            "sys.exit(1 if bad else 0)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    print(res.stdout)
    assert res.returncode == 0, f"import {package} loads:\n{res.stdout}{res.stderr[-2000:]}"
