"""Import boundaries are architecture: treq, sqlite3, the global reactor each live in one place."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "lafs_backup"

ONLY_IN = {
    "treq": {"gateway.py"},
    "sqlite3": {"cache.py"},
    "cffi": {"posix1e.py"},
    "xattr": {"meta.py"},
    "twisted.internet.reactor": {"cli.py"},
}
PURE = {"filters.py", "queue.py", "snapshot.py", "entry.py", "config.py", "errors.py"}
IO_MODULES = {"treq", "sqlite3", "twisted", "cffi", "subprocess", "socket"}


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_boundaries():
    for path in PKG.glob("*.py"):
        found = imports(path)
        for mod, allowed in ONLY_IN.items():
            users = {m for m in found if m == mod or m.startswith(mod + ".")}
            assert not users or path.name in allowed, f"{path.name} imports {mod}"


def test_pure_modules_do_no_io_imports():
    for name in PURE:
        found = imports(PKG / name)
        bad = {m for m in found if m.split(".")[0] in IO_MODULES}
        assert not bad, f"{name} imports {bad}"


def test_every_module_opens_with_a_docstring():
    for path in PKG.glob("*.py"):
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{path.name} has no module docstring"
