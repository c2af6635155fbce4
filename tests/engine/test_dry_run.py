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
