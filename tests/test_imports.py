"""Import boundaries are architecture: each I/O library lives in one place, the pure modules do no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "lafs_backup"

#: Library -> the only modules (paths below lafs_backup/) that may import it.
ONLY_IN = {
    # (grid/notify.py: a ping to a monitoring URL, not the gateway: never retried, and its URL, a token, is
    # never logged, where the sender logs every request's URL)
    "treq": {"grid/sender.py", "grid/notify.py"},
    "sqlite3": {"db/database.py"},
    "cffi": {"system/posix1e.py"},
    "xattr": {"system/meta.py"},
    "twisted.internet.reactor": {"cli.py"},
    "twisted.conch": {"manhole.py"},
    "inotify_simple": {"system/inotify.py"},
    "fsspec": {"system/fsspec_fs.py"},
    "msgpack": {"store/index.py"},
    "s3fs": set(),
    "boto3": set(),
    # Tahoe's own client classes (the storage protocol, caps, lease secrets) serve the custodian only.
    "allmydata": {"custodian/secrets.py", "custodian/targets.py", "custodian/join.py", "custodian/leases.py"},
    "foolscap": {"custodian/join.py", "custodian/leases.py"},
    # (sealed records: libsodium's sealed boxes)
    "nacl": {"sealing.py"},
}
#: Modules that decide or describe, and do no I/O: no network, database, process, thread or reactor.
PURE = {"store/plan.py", "filters.py", "encoding.py", "names.py", "retry.py", "caps.py", "backup/queue.py", "store/snapshot.py",
        "store/entry.py", "upkeep/retention.py", "history.py", "config.py", "errors.py", "backup/changes.py",
        "store/index.py", "grid/health.py", "grid/download.py", "read/tally.py", "engine/prune.py",
        "read/standing.py", "engine/metrics.py", "custodian/secrets.py", "custodian/targets.py",
        "derive/rules.py", "derive/recipe.py", "custodian/manifest.py", "custodian/policy.py",
        "custodian/rotation.py", "sealing.py"}
IO_MODULES = {"treq", "sqlite3", "twisted", "cffi", "subprocess", "socket", "threading", "xattr", "urllib"}
#: The ground floor's small pure helpers, the project's one semaphore, and the protocols of the resources
#: the stages are handed (the gateway, the reporter): every layer may import them.
GROUND = {"errors", "log", "slots", "caps", "retry", "filters", "encoding", "protocols", "names", "sealing"}
#: The layers, from the ground up: each package or top-level module (a row) and the project modules
#: its modules may import.  A row names only itself and rows above it in this table, so nothing
#: imports up and no two layers import each other (checked below).  The configuration sits on the
#: ground floor: it compiles the rules the stages follow with modules below it, and no stage imports
#: it.  The engine takes its resources as arguments; the resource opener opens them; the commands
#: (thin verbs) use both; the CLI dispatches to the commands.
LAYERS: dict[str, set[str]] = {
    "log": set(),
    "errors": {"log"},
    "slots": {"errors", "log"},
    "caps": set(),
    "retry": set(),
    "filters": {"errors"},
    "encoding": {"errors"},
    "names": {"errors"},
    "protocols": {"retry"},
    "sealing": set(),
    # (the derive rules and recipes: pure, read by the configuration, the backup and the read commands)
    "derive": {"derive"} | GROUND,
    "config": {"errors", "log", "retry", "filters", "encoding", "derive"},
    "system": {"system"} | GROUND,
    "history": GROUND,
    "report": GROUND,
    "grid": {"grid", "system/paths"} | GROUND,
    # (the custodian's state file is replaced whole, as the metrics file is: system/paths)
    "custodian": {"custodian", "grid/ratelimit", "system/paths"} | GROUND,
    "store": {"store", "system"} | GROUND,
    "db": {"db", "history", "store"} | GROUND,
    "repository": {"__version__"} | GROUND,
    "upkeep": {"upkeep", "grid"} | GROUND,
    # (status gathers the repository's records and the local history: read/status.py)
    "read": {"read", "store", "grid", "system", "report", "history", "db", "config", "derive"} | GROUND,
    "backup": {"backup", "read", "store", "db", "system", "derive"} | GROUND,
    "manhole": {"config"} | GROUND,
    # (the host publishes lease manifests into a custodian's inbox: engine/inbox.py)
    "engine": {"engine", "backup", "read", "store", "db", "history", "repository", "report", "config", "system",
               "grid", "upkeep", "derive", "custodian"} | GROUND,
    "web": {"web", "read", "store", "history", "report"} | GROUND,
    "resources": {"resources", "engine/runtime", "db", "config", "grid", "history", "repository", "report",
                  "system"} | GROUND,
    "commands": {"commands", "resources", "web", "engine", "backup", "read", "store", "db", "history", "repository",
                 "report", "config", "system", "grid", "upkeep", "derive", "custodian"} | GROUND,
    "arguments": {"commands", "__version__"} | GROUND,
    "cli": {"arguments", "commands", "resources", "engine", "manhole", "report", "config", "system"} | GROUND,
    "__main__": {"cli"},
}
#: Names from the package itself (``lafs_backup/__init__.py``, which imports nothing).
PACKAGE_NAMES = {"__version__"}


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


def test_the_layers_are_a_stack():
    above: set[str] = set()
    for row, allowed in LAYERS.items():
        for ok in allowed:
            top = ok.split("/")[0]
            assert top == row or top in above or ok in PACKAGE_NAMES, f"{row} may import {ok}, which is not below it"
        above.add(row)


def test_layers_import_only_what_is_below_them():
    for path in modules():
        top = path.relative_to(PKG).parts[0].removesuffix(".py")
        if top not in LAYERS:
            continue
        for candidates in project_imports(path):
            assert any(dep == ok or dep.startswith(ok + "/") for dep in candidates for ok in LAYERS[top]), \
                f"{name(path)} imports {candidates[-1]}"


def test_the_project_semaphore_is_the_only_user_of_twisteds():
    """DeferredSemaphore wakes each next waiter inside the stack of the one that released: hundreds
    of waiters that finish at once overflow the stack and the run hangs.  ``slots.Slots`` is used."""
    for path in modules():
        if name(path) == "slots.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            used = (node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute)
                    else node.name if isinstance(node, ast.alias) else None)
            assert used is None or not used.endswith("DeferredSemaphore"), name(path)


def test_the_cli_is_the_only_user_of_the_global_reactor():
    for path in modules():
        text = path.read_text()
        if name(path) != "cli.py":
            assert "from twisted.internet import reactor" not in text, name(path)


def test_every_module_opens_with_a_docstring():
    for path in modules():
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{name(path)} has no module docstring"
