"""A dry run plans every file without a gateway or a cache: what would be uploaded, deduplicated
within the run, or inline."""

from __future__ import annotations

import io
import json

import pytest_twisted

from lafs_backup import config as cfg
from lafs_backup.engine.backup import SelectArgs, local_source, selection
from lafs_backup.engine.dry_run import dry_run
from lafs_backup.engine.runtime import Runtime
from lafs_backup.report import Reporter


@pytest_twisted.ensureDeferred
async def test_a_dry_run_without_a_cache_plans_from_the_files_alone(tmp_path):
    from twisted.internet import reactor

    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "one.bin").write_bytes(b"x" * 5000)
    (src / "a" / "same.bin").write_bytes(b"x" * 5000)  # the same content: stored once
    (src / "tiny.txt").write_text("small")  # 55 bytes or less: inline
    (src / "link").symlink_to("a")
    out = io.StringIO()
    rep = Reporter(json_mode=True, out=out, err=io.StringIO())
    conf = cfg.load([], [])
    source = local_source(conf, rep, str(src))
    code = await dry_run(Runtime(reactor, rep), conf, source, selection(conf, SelectArgs(), source.label), "stat",
                         None)
    lines = out.getvalue().splitlines()
    plan = json.loads(lines[-1])
    assert code == 0 and plan["type"] == "dry-run"
    assert (plan["files"], plan["dirs"], plan["symlinks"]) == (3, 2, 1)
    assert (plan["files_to_upload"], plan["files_deduplicated"], plan["files_inline"]) == (1, 1, 1)
    assert plan["bytes_to_upload"] == 5000 and plan["bytes_deduplicated"] == 5000


def test_the_dry_run_asks_the_planner_as_phase_two_does(tmp_path):
    """Unchanged by its stat (with its inode, or without it as a rebuilt cache knows it), known
    content, content an earlier file of the run stores, and ``--mode force``, which reuses nothing."""
    import hashlib

    from fakes import FakeCache
    from lafs_backup.backup.source import LocalSource
    from lafs_backup.engine.dry_run import Plan, _plan_file
    from lafs_backup.filters import compile_rules
    from lafs_backup.store.snapshot import Hit, content_key, file_key

    src = tmp_path / "src"
    src.mkdir()
    for name, data in (("same", b"u" * 100), ("rebuilt", b"r" * 100), ("known", b"k" * 100), ("new", b"n" * 100),
                       ("again", b"n" * 100)):
        (src / name).write_bytes(data)
    source = LocalSource(bytes(src))
    files = {e.path: e for e in source.walk(compile_rules([]), lambda p, m: None, lambda k, m: None) if e.kind == "f"}
    cache = FakeCache()
    e = files[b"same"]
    cache.rows[file_key(e.path, e.size, e.mtime_ns, e.ctime_ns, e.ino)] = Hit("URI:CHK:s", b"\0" * 32)
    e = files[b"rebuilt"]
    cache.rows[file_key(e.path, e.size, e.mtime_ns, e.ctime_ns, None)] = Hit("URI:CHK:r", b"\0" * 32)
    cache.rows[content_key(hashlib.sha256(b"k" * 100).digest())] = Hit("URI:CHK:k", b"\0" * 32)

    def planned(mode: str) -> Plan:
        p = Plan()
        seen: set[bytes] = set()
        for path in (b"same", b"rebuilt", b"known", b"new", b"again"):
            _plan_file(p, files[path], cache, source, mode, False, seen, lambda p, m: None, True)
        return p

    p = planned("stat")
    assert (p.files, p.files_unchanged, p.files_read, p.files_deduplicated, p.files_to_upload) == (5, 2, 3, 2, 1)
    assert p.to_upload == ["new"]
    p = planned("force")
    assert (p.files_unchanged, p.files_deduplicated, p.files_to_upload) == (0, 0, 5)
