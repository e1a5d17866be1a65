"""The package layout follows the data path, and imports only go one way:
the sans-IO core imports nothing else of wlproxy, ``io`` only the core, the
halves neither the VM glue nor the tools, and nothing but the tools (and the
command line's lazy dispatch) imports the tools."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "wlproxy"

# package -> the wlproxy packages (first component under wlproxy) it may import
ALLOWED = {
    "core": {"core", "_codec", "logs"},
    "io": {"core", "io", "_codec", "logs"},
    "halves": {"core", "io", "halves", "_codec", "logs", "cli"},
    "vm": {"core", "io", "halves", "vm", "_codec", "logs", "cli", "policycli", "__init__"},
    "tools": {"core", "io", "halves", "vm", "tools", "_codec", "logs", "cli", "__init__"},
}


def _imports(path: Path) -> set[str]:
    """The wlproxy packages a module imports, as their first component under wlproxy."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "wlproxy":  # a module, or a name of the package itself
                names = [f"wlproxy.{a.name}" if (PKG / a.name).is_dir() or (PKG / f"{a.name}.py").exists()
                         or a.name == "_codec" else "wlproxy" for a in node.names]
            else:
                names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for n in names:
            parts = n.split(".")
            if parts[0] == "wlproxy":
                out.add(parts[1] if len(parts) > 1 else "__init__")
    return out


@pytest.mark.parametrize("pkg", sorted(ALLOWED))
def test_imports_go_one_way(pkg: str) -> None:
    bad = {}
    for f in sorted((PKG / pkg).rglob("*.py")):
        extra = _imports(f) - ALLOWED[pkg]
        if extra:
            bad[str(f.relative_to(PKG))] = sorted(extra)
    assert not bad, f"imports against the layout: {bad}"


def test_the_checker_sees_imports() -> None:
    assert {"core", "io", "halves"} <= _imports(PKG / "halves" / "host.py")
    assert _imports(PKG / "cli.py") <= {"__init__", "logs"}  # subcommands are imported by name, when they run


def test_old_flat_modules_are_gone() -> None:
    flat = {p.stem for p in PKG.glob("*.py")}
    assert flat == {"__init__", "__main__", "cli", "logs", "policycli"}
