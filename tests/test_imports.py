"""Import boundaries are architecture: each I/O library lives in one place, the pure modules do no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "lafs_backup"

#: Library -> the only modules (paths below lafs_backup/) that may import it.
ONLY_IN = {
    "treq": {"grid/gateway.py"},
    "sqlite3": {"cache.py"},
    "cffi": {"system/posix1e.py"},
    "xattr": {"system/meta.py"},
    "twisted.internet.reactor": {"cli.py"},
    "twisted.conch": {"manhole.py"},
    "inotify_simple": {"system/inotify.py"},
    "fsspec": {"system/remotefs.py"},
    "msgpack": {"store/index.py"},
    "s3fs": set(),
    "boto3": set(),
}
#: Modules that decide or describe, and do no I/O: no network, database, process, thread or reactor.
PURE = {"backup/plan.py", "backup/filters.py", "backup/queue.py", "store/snapshot.py", "store/entry.py",
        "upkeep/retention.py", "history.py", "config.py", "errors.py", "backup/changes.py",
        "store/index.py"}
IO_MODULES = {"treq", "sqlite3", "twisted", "cffi", "subprocess", "socket", "threading", "xattr", "urllib"}
#: Packages and what they may import from the project: the layers.
LAYERS = {
    "store": {"store", "errors", "log", "backup/plan", "system/paths"},
    "backup": {"backup", "store", "errors", "log", "system", "cache", "read/reader"},
    "read": {"read", "store", "errors", "log", "system", "report", "backup/filters", "upkeep/check"},
    "upkeep": {"upkeep", "errors", "log"},
    "grid": {"grid", "errors", "log", "config", "store/snapshot", "system/paths"},
    "system": {"system", "errors"},
}


def modules() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def name(path: Path) -> str:
    return str(path.relative_to(PKG))


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def project_imports(path: Path) -> list[tuple[str, ...]]:
    """Project modules imported by ``path``, as paths below lafs_backup/: for each name imported,
    the module it comes from and, in case it is a submodule, module/name."""
    here = path.relative_to(PKG).parent.parts
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = list(here[:len(here) - (node.level - 1)]) if node.level > 1 else list(here)
            mod = "/".join(base + (node.module.split(".") if node.module else []))
            for a in node.names:
                out.append(tuple(x for x in (mod, f"{mod}/{a.name}".lstrip("/")) if x))
    return out


def test_libraries_live_in_one_place():
    for path in modules():
        found = imports(path)
        for mod, allowed in ONLY_IN.items():
            users = {m for m in found if m == mod or m.startswith(mod + ".")}
            assert not users or name(path) in allowed, f"{name(path)} imports {mod}"


def test_pure_modules_do_no_io_imports():
    for mod in PURE:
        found = imports(PKG / mod)
        bad = {m for m in found if m.split(".")[0] in IO_MODULES}
        assert not bad, f"{mod} imports {bad}"


def test_layers_import_only_what_is_below_them():
    for path in modules():
        top = path.relative_to(PKG).parts[0]
        if top not in LAYERS:
            continue
        for candidates in project_imports(path):
            assert any(dep == ok or dep.startswith(ok + "/") for dep in candidates for ok in LAYERS[top]), \
                f"{name(path)} imports {candidates[-1]}"


def test_the_cli_is_the_only_user_of_the_global_reactor():
    for path in modules():
        text = path.read_text()
        if name(path) != "cli.py":
            assert "from twisted.internet import reactor" not in text, name(path)


def test_every_module_opens_with_a_docstring():
    for path in modules():
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{name(path)} has no module docstring"
