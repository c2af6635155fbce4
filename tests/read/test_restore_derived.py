"""Restore and verify of derived files over an in-memory gateway: a snapshot the store made, whose .gz edges are then
turned into recipes (as a backup with ``derive.rules`` writes them); real gzip runs remake them."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from builders import run
from fakes import FakeCache, FakeGateway
from lafs_backup.derive import rules as derive_rules
from lafs_backup.derive.recipe import KEY
from lafs_backup.read.browse import Browser
from lafs_backup.read.locate import Paths
from lafs_backup.read.reader import Reader
from lafs_backup.read.remake import Remaker, lookup_in
from lafs_backup.read.restore import Restorer
from lafs_backup.read.verify import Verifier
from lafs_backup.report import Reporter
from lafs_backup.system.programs import Programs, Runner
from treecompare import differences

GZIP = {"name": "gzip", "path": r"(?P<stem>.+)\.gz", "inputs": ["{stem}"], "program": "gzip",
        "args": ["-n", "-k", "-{level}"], "each": ["{in0}"], "variants": [{"level": 9}, {"level": 6}]}
T0 = 1_600_000_000


def source(root: Path) -> Path:
    """a.txt and its gzip -n -9 copy, a level-6 one in a subdirectory, and a plain file."""
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha text\n" * 500)
    (root / "sub" / "b.log").write_bytes(b"beta log line\n" * 800)
    (root / "plain.bin").write_bytes(os.urandom(3000))
    subprocess.run(["gzip", "-n", "-9", "-k", "a.txt"], cwd=root, check=True)
    subprocess.run(["gzip", "-n", "-6", "-k", "b.log"], cwd=root / "sub", check=True)
    os.chmod(root / "a.txt.gz", 0o600)
    for p in [root / "a.txt", root / "a.txt.gz", root / "sub" / "b.log", root / "sub" / "b.log.gz",
              root / "plain.bin", root / "sub"]:
        os.utime(p, (T0, T0 + 7))
    return root


def recipe_of(rules: derive_rules.Rules, path: str, level: int, meta: dict[str, Any]) -> dict[str, Any]:
    """The recipe a backup records for ``path`` (its input's edge metadata: ``meta``)."""
    rule = rules.by_name("gzip")
    assert rule is not None
    variant = [v["level"] for v in rule.variants].index(str(level))
    job = rule.jobs(path, "/src")[variant]
    return {"rule": "gzip", "variant": {"level": str(level)}, "root": "/src", "program": "gzip",
            "version": {"path": "/usr/bin/gzip", "sha256": "0" * 64}, "args": list(job.args),
            "each": list(job.each),
            "inputs": [{"path": job.inputs[0], "sha256": meta["sha256"], "size": meta["size"],
                        "mode": meta["mode"] & 0o7777, "mtime_ns": meta["mtime_ns"]}],
            "outputs": list(job.outputs), "made_at": job.made_at, "output": 0}


async def derived_snapshot(root: Path, change: dict[str, Any] | None = None) -> tuple[str, FakeGateway]:
    """A snapshot of ``root`` whose .gz files are edges of recipes (no bytes); ``change``: fields of
    every recipe altered (a tampered snapshot)."""
    gw = FakeGateway()
    cap, _ = await run(root, gw, FakeCache())
    rules = derive_rules.parse([GZIP])
    levels = {"a.txt.gz": 9, "sub/b.log.gz": 6}

    async def rewrite(dircap: str, prefix: str) -> None:
        body = json.loads(gw.dirs[dircap])
        for name, (kind, info) in body.items():
            path = prefix + name
            if kind == "dirnode":
                await rewrite(info["ro_uri"], path + "/")
            elif path in levels:
                meta = {k: v for k, v in info["metadata"].items() if k not in ("pack", "object", "enc")}
                meta[KEY] = {**recipe_of(rules, path, levels[path], body[name[:-3]][1]["metadata"]), **(change or {})}
                body[name] = ["filenode", {"ro_uri": "URI:LIT:", "metadata": meta}]
        gw.dirs[dircap] = json.dumps(body).encode()  # (the fake does not hold a directory to its cap)

    tree = (await gw.get_json(cap))[1]["children"]["tree"][1]["ro_uri"]
    await rewrite(tree, "")
    return cap, gw


def restorer(gw: FakeGateway, cap: str, target: Path, allowed: tuple[str, ...] = ("gzip",),
             **kw: Any) -> tuple[Restorer, Reporter]:
    # (the index holds the directories as stored: these are read from the grid, as rewritten)
    reader = Reader(gw, use_index=False, clock=reactor)
    reader.remaker = Remaker(reader, derive_rules.parse([GZIP]), Programs(allowed), Runner(60),
                             lambda fn, *a: deferToThread(fn, *a), lookup_in(Paths(Browser(reader)), cap))
    rep = Reporter(err=open(os.devnull, "w"))
    return Restorer(reader, rep, str(target), owners=False, clock=reactor, **kw), rep


@pytest_twisted.ensureDeferred
async def test_derived_files_are_restored_identical_in_content_and_metadata(tmp_path):
    src = source(tmp_path / "src")
    cap, gw = await derived_snapshot(src)
    listing = json.loads(gw.dirs[(await gw.get_json(cap))[1]["children"]["tree"][1]["ro_uri"]])
    assert listing["a.txt.gz"][1]["ro_uri"] == "URI:LIT:" and KEY in listing["a.txt.gz"][1]["metadata"]
    r, rep = restorer(gw, cap, tmp_path / "out")
    await r.run(cap)
    assert differences(src, tmp_path / "out") == []
    assert r.unmade == [] and rep.stats.warnings == rep.stats.problems == 0
    assert r.reader.remaker.runs.started  # (made again, not read)


@pytest_twisted.ensureDeferred
async def test_skip_derived_restores_everything_else_and_counts_them(tmp_path):
    src = source(tmp_path / "src")
    cap, gw = await derived_snapshot(src)
    r, rep = restorer(gw, cap, tmp_path / "out", allowed=(), skip_derived=True)
    await r.run(cap)
    assert r.counts.derived_skipped == 2 and r.counts.failed == 0 and r.unmade == []
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*")) == [
        "a.txt", "plain.bin", "sub", "sub/b.log"]
    assert rep.stats.warnings == 0


@pytest_twisted.ensureDeferred
async def test_a_program_not_allowed_here_fails_the_files_naming_them_and_nothing_wrong_is_left(tmp_path):
    src = source(tmp_path / "src")
    cap, gw = await derived_snapshot(src)
    r, rep = restorer(gw, cap, tmp_path / "out", allowed=())
    await r.run(cap)
    assert sorted(p for p, _ in r.unmade) == [b"a.txt.gz", b"sub/b.log.gz"]
    assert all("rule gzip" in why and "derive.allowed_programs" in why for _, why in r.unmade)
    assert r.counts.derived_failed == 2 and r.counts.failed == 2 and rep.stats.warnings == 2
    assert not (tmp_path / "out" / "a.txt.gz").exists()
    assert (tmp_path / "out" / "a.txt").read_bytes() == (src / "a.txt").read_bytes()
    assert not list((tmp_path / "out").rglob(".lafs-restore-*"))


@pytest_twisted.ensureDeferred
async def test_one_path_is_made_from_inputs_that_never_reach_the_target(tmp_path):
    src = source(tmp_path / "src")
    cap, gw = await derived_snapshot(src)
    r, _ = restorer(gw, cap, tmp_path / "out")
    await r.run(cap, [b"sub/b.log.gz"])
    assert [str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*")] == ["sub", "sub/b.log.gz"]
    got = tmp_path / "out" / "sub" / "b.log.gz"
    assert got.read_bytes() == (src / "sub" / "b.log.gz").read_bytes()
    assert os.stat(got).st_mtime_ns == os.stat(src / "sub" / "b.log.gz").st_mtime_ns


@pytest_twisted.ensureDeferred
async def test_a_tampered_recipe_is_caught(tmp_path):
    src = source(tmp_path / "src")
    # Other arguments than this machine's rule gives: refused before anything runs.
    cap, gw = await derived_snapshot(src, {"args": ["-n", "-k", "-1"]})
    r, _ = restorer(gw, cap, tmp_path / "out")
    await r.run(cap)
    assert len(r.unmade) == 2 and all("differs from what rule 'gzip'" in why for _, why in r.unmade)
    assert r.reader.remaker.runs.started == []
    # The rule's other variant, with the same arguments as it renders: runs, and the hash decides.
    cap, gw = await derived_snapshot(src, {"variant": {"level": "6"}, "args": ["-n", "-k", "-6"]})
    r, _ = restorer(gw, cap, tmp_path / "out2")
    await r.run(cap)
    assert [p for p, why in r.unmade if why.endswith("remade bytes differ from the recorded ones")] == [b"a.txt.gz"]
    assert (tmp_path / "out2" / "sub" / "b.log.gz").read_bytes() == (src / "sub" / "b.log.gz").read_bytes()
    assert not (tmp_path / "out2" / "a.txt.gz").exists()
    assert hashlib.sha256((src / "a.txt.gz").read_bytes()).hexdigest() != hashlib.sha256(
        subprocess.run(["gzip", "-n", "-6", "-c"], input=(src / "a.txt").read_bytes(), capture_output=True).stdout
    ).hexdigest()


def verifier(gw: FakeGateway, cap: str, remake: bool = False, allowed: tuple[str, ...] = ("gzip",)
             ) -> tuple[Verifier, Reporter]:
    async def deep_check(cap: str, sink: Any, add_lease: bool = True, repair: bool = False,
                         verify: bool = False) -> None:
        sink(b'{"type": "stats", "stats": {}}\n')
    gw.stream_deep_check = deep_check  # type: ignore[method-assign]
    reader = Reader(gw, use_index=False, clock=reactor)
    lookup = lookup_in(Paths(Browser(reader)), cap)
    if remake:
        reader.remaker = Remaker(reader, derive_rules.parse([GZIP]), Programs(allowed), Runner(60),
                                 lambda fn, *a: deferToThread(fn, *a), lookup)
    rep = Reporter(err=open(os.devnull, "w"))
    return Verifier(gw, reader, rep, clock=reactor, lookup=lookup, remake=remake), rep


@pytest_twisted.ensureDeferred
async def test_verify_checks_recipes_and_their_inputs_without_running_anything(tmp_path):
    src = source(tmp_path / "src")
    cap, gw = await derived_snapshot(src)
    v, rep = verifier(gw, cap)
    await v.run(cap)
    assert rep.stats.problems == 0 and v.derived_checked == 2 and v.derived_remade == 0
    assert v.files_read == 3  # (the stored files: a.txt, sub/b.log, plain.bin)
    # An input whose recorded hash is not the one its recipe names: a problem, still without a run.
    cap, gw = await derived_snapshot(src, {"inputs": [{"path": "a.txt", "sha256": "1" * 64, "size": 5500,
                                                       "mode": 0o644, "mtime_ns": 0}]})
    v, rep = verifier(gw, cap)
    await v.run(cap)
    assert rep.stats.problems == 2 and v.derived_checked == 0


@pytest_twisted.ensureDeferred
async def test_verify_remake_runs_the_recipes_and_compares_the_hashes(tmp_path):
    src = source(tmp_path / "src")
    cap, gw = await derived_snapshot(src)
    v, rep = verifier(gw, cap, remake=True)
    await v.run(cap)
    assert rep.stats.problems == 0 and v.derived_checked == 2 and v.derived_remade == 2
    assert v.reader.remaker.runs.started
    # The rule's other level, as a tampered snapshot would record it: the hash tells.
    cap, gw = await derived_snapshot(src, {"variant": {"level": "6"}, "args": ["-n", "-k", "-6"]})
    v, rep = verifier(gw, cap, remake=True)
    await v.run(cap)
    assert rep.stats.problems == 1 and v.derived_checked == 2 and v.derived_remade == 1
