"""The remaker: a derived file read back is made again by its rule's program (real gzip runs) from its
inputs, read through the reader from a fake snapshot, and checked before a byte of it is handed out."""

from __future__ import annotations

import hashlib
import subprocess
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread

from fakes import FakeGateway
from lafs_backup.derive import rules as derive_rules
from lafs_backup.derive.recipe import KEY, Input, Recipe
from lafs_backup.read.reader import Content, Reader
from lafs_backup.read.remake import Remaker
from lafs_backup.store.snapshot import Node
from lafs_backup.system.programs import Programs, Runner

ROOT = "/srv/data"
MTIME = 1_600_000_000_000_000_000
GZIP = {"name": "gzip", "path": r"(?P<stem>.+)\.gz", "inputs": ["{stem}"], "program": "gzip",
        "args": ["-n", "-k", "-{level}"], "each": ["{in0}"], "variants": [{"level": 9}, {"level": 6}]}
#: Each x.txt is also made from x.txt.gz: with the gzip rule, a cycle.
GUNZIP = {"name": "gunzip", "path": r"(?P<stem>.+)\.txt", "inputs": ["{stem}.txt.gz"], "program": "gzip",
          "args": ["-d", "-k"], "each": ["{in0}"]}
#: A copy of a file (of a derived one: made from it once it is made).
COPY = {"name": "copy", "path": r"(?P<stem>.+)\.bak", "inputs": ["{stem}"], "program": "cp", "args": ["{in0}", "{out}"]}
#: One run, two files: the .gz and a copy of it.
PAIR = {"name": "pair", "path": r"(?P<stem>.+)\.gz", "inputs": ["{stem}"], "also": ["{stem}.gz.copy"],
        "program": "sh", "args": ["-c", 'gzip -n -9 -k "$0" && cp "$0.gz" "$1"', "{in0}", "{out1}"]}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def in_thread(fn: Any, *args: Any) -> Deferred:
    return deferToThread(fn, *args)


def gzipped(data: bytes, level: int = 9) -> bytes:
    return subprocess.run(["gzip", "-n", f"-{level}", "-c"], input=data, capture_output=True, check=True).stdout


class Snapshot:
    """A fake snapshot: files by path (relative to the source root), stored or derived."""

    def __init__(self, rules: list[dict]) -> None:
        self.gw = FakeGateway()
        self.rules = derive_rules.parse(rules)
        self.nodes: dict[str, Node] = {}
        self.lookups: list[str] = []

    def file(self, path: str, data: bytes) -> Node:
        node = Node(path.rsplit("/", 1)[-1].encode(), "f", self.gw._file_cap(data),
                    {"type": "file", "mode": 0o100640, "mtime_ns": MTIME, "size": len(data), "sha256": sha(data)})
        self.nodes[path] = node
        return node

    def derived(self, path: str, data: bytes, variant: int = 0, output: int = 0, **change: Any) -> Node:
        """The edge of ``path``, made by the first rule matching it from the files recorded already;
        ``data``: its bytes as recorded; ``change``: fields of the recipe altered."""
        by = next(r for r in self.rules.rules if r.pattern.fullmatch(path))
        job = by.jobs(path, ROOT)[variant]
        inputs = tuple(Input(p, self.nodes[p].metadata["sha256"], self.nodes[p].metadata["size"], 0o640, MTIME)
                       for p in job.inputs)
        fields = dict(rule=job.rule, variant=dict(by.variants[variant]), root=ROOT, program=job.program,
                      version={"path": "/usr/bin/" + job.program, "sha256": "0" * 64}, args=job.args, each=job.each,
                      inputs=inputs, outputs=job.outputs, made_at=job.made_at, output=0)
        fields.update(change)
        recipe = Recipe(**fields).at(output)
        node = Node(recipe.path.rsplit("/", 1)[-1].encode(), "f", "URI:LIT:",
                    {"type": "file", "mode": 0o100644, "mtime_ns": MTIME, "size": len(data), "sha256": sha(data),
                     KEY: recipe.to_json()})
        self.nodes[recipe.path] = node
        return node

    async def lookup(self, path: str) -> Node | None:
        self.lookups.append(path)
        return self.nodes.get(path)

    def remaker(self, allowed: tuple[str, ...] = ("gzip",), jobs: int = 2, batch: int = 200, **kw: Any) -> Remaker:
        reader = Reader(self.gw, clock=reactor)
        remaker = Remaker(reader, self.rules, Programs(allowed), Runner(60), in_thread, self.lookup, jobs=jobs,
                          batch=batch, **kw)
        reader.remaker = remaker
        return remaker


async def read(remaker: Remaker, node: Node) -> tuple[Content, bytes]:
    parts: list[bytes] = []
    got = await remaker.reader.content(node, parts.append)
    return got, b"".join(parts)


@pytest_twisted.ensureDeferred
async def test_a_gzip_file_is_made_again_byte_for_byte_through_the_reader():
    snap = Snapshot([GZIP])
    text = b"hello derived world\n" * 2000  # above what is staged from memory
    snap.file("docs/a.txt", text)
    node = snap.derived("docs/a.txt.gz", gzipped(text))
    remaker = snap.remaker()
    got, data = await read(remaker, node)
    assert got.matches is True and got.problem is None
    assert data == gzipped(text) and got.sha256 == sha(data) and got.size == len(data)
    assert snap.lookups == ["docs/a.txt"]
    assert remaker.runs.started == [1]


@pytest_twisted.ensureDeferred
async def test_the_second_variant_is_the_one_its_recipe_records():
    snap = Snapshot([GZIP])
    snap.file("a", b"level six " * 300)
    node = snap.derived("a.gz", gzipped(b"level six " * 300, 6), variant=1)
    got, data = await read(snap.remaker(), node)
    assert got.matches is True and data == gzipped(b"level six " * 300, 6)


@pytest_twisted.ensureDeferred
async def test_files_asked_together_are_one_run_batch_files_at_most():
    snap = Snapshot([GZIP])
    nodes = []
    for i in range(5):
        snap.file(f"f{i}", b"file %d " % i * 100)
        nodes.append(snap.derived(f"f{i}.gz", gzipped(b"file %d " % i * 100)))
    remaker = snap.remaker(batch=2)
    assert (await read(remaker, nodes[0]))[0].matches  # (the program is found once, in a thread)
    results = await gatherResults([Deferred.fromCoroutine(read(remaker, n)) for n in nodes])
    assert [got.matches for got, _ in results] == [True] * 5
    assert [data for _, data in results] == [gzipped(b"file %d " % i * 100) for i in range(5)]
    assert remaker.runs.started == [1, 2, 2, 1]

    together = snap.remaker(batch=200)
    assert (await read(together, nodes[0]))[0].matches
    results = await gatherResults([Deferred.fromCoroutine(read(together, n)) for n in nodes])
    assert all(got.matches for got, _ in results)
    assert together.runs.started == [1, 5]


@pytest_twisted.ensureDeferred
async def test_one_run_serves_every_output_of_a_recipe_asked_meanwhile():
    snap = Snapshot([PAIR])
    snap.file("x", b"pair " * 500)
    gz = gzipped(b"pair " * 500)
    first = snap.derived("x.gz", gz)
    second = snap.derived("x.gz", gz, output=1)
    assert second.metadata[KEY]["output"] == 1 and snap.nodes["x.gz.copy"] is second
    remaker = snap.remaker(allowed=("sh",))
    (a, da), (b, db) = await gatherResults([Deferred.fromCoroutine(read(remaker, n)) for n in (first, second)])
    assert a.matches and b.matches and da == db == gz
    assert remaker.runs.started == [1]


@pytest_twisted.ensureDeferred
async def test_a_program_this_machine_does_not_allow_is_never_run():
    snap = Snapshot([GZIP])
    snap.file("a.txt", b"text " * 100)
    node = snap.derived("a.txt.gz", gzipped(b"text " * 100))
    remaker = snap.remaker(allowed=())
    got, data = await read(remaker, node)
    assert got.matches is False and data == b""
    assert "rule gzip" in got.mismatch and "derive.allowed_programs" in got.mismatch
    assert remaker.runs.started == [] and snap.lookups == []


@pytest_twisted.ensureDeferred
async def test_a_tampered_recipe_is_refused_before_anything_runs():
    snap = Snapshot([GZIP])
    snap.file("a.txt", b"text " * 100)
    # Arguments this machine's rule does not give (a repository cannot choose them).
    node = snap.derived("a.txt.gz", gzipped(b"text " * 100), args=("-n", "-k", "--rsyncable"))
    remaker = snap.remaker()
    got, data = await read(remaker, node)
    assert got.matches is False and data == b"" and "differs from what rule 'gzip'" in got.mismatch
    # A rule this machine does not have.
    other = snap.derived("a.txt.gz", gzipped(b"text " * 100), rule="mystery")
    got, _ = await read(remaker, other)
    assert "no derive rule named 'mystery'" in got.mismatch
    # A damaged recipe.
    broken = Node(b"b.gz", "f", "URI:LIT:", {"type": "file", "size": 3, "sha256": "0" * 64, KEY: {"rule": 1}})
    got, _ = await read(remaker, broken)
    assert got.matches is False and "recipe is damaged" in got.mismatch
    assert remaker.runs.started == []


@pytest_twisted.ensureDeferred
async def test_bytes_that_differ_from_the_recorded_ones_never_reach_the_sink():
    snap = Snapshot([GZIP])
    snap.file("a.txt", b"text " * 100)
    node = snap.derived("a.txt.gz", gzipped(b"other text " * 100))  # recorded: another file's bytes
    remaker = snap.remaker()
    got, data = await read(remaker, node)
    assert data == b"" and got.matches is False
    assert got.mismatch == "derived file (rule gzip): remade bytes differ from the recorded ones"
    assert got.sha256 == sha(gzipped(b"text " * 100))
    assert remaker.runs.started == [1]


@pytest_twisted.ensureDeferred
async def test_an_input_not_in_the_snapshot_as_recorded_fails_the_file():
    snap = Snapshot([GZIP])
    snap.file("a.txt", b"text " * 100)
    node = snap.derived("a.txt.gz", gzipped(b"text " * 100))
    snap.file("a.txt", b"changed " * 100)  # the snapshot holds other bytes there
    got, data = await read(snap.remaker(), node)
    assert data == b"" and got.mismatch == ("derived file (rule gzip): input a.txt is not in this snapshot as "
                                            "the recipe recorded it")
    del snap.nodes["a.txt"]
    got, _ = await read(snap.remaker(), node)
    assert "input a.txt is not in this snapshot" in got.mismatch


@pytest_twisted.ensureDeferred
async def test_an_input_that_reads_back_damaged_fails_the_file():
    snap = Snapshot([GZIP])
    data = b"text " * 100
    snap.file("a.txt", data)
    node = snap.derived("a.txt.gz", gzipped(data))
    snap.gw.objects[snap.nodes["a.txt"].cap] = data.upper()  # the grid gives other bytes
    got, out = await read(snap.remaker(), node)
    assert out == b"" and "input a.txt cannot be read back" in got.mismatch


@pytest_twisted.ensureDeferred
async def test_a_derived_input_is_made_first_to_a_bounded_depth():
    snap = Snapshot([GZIP, COPY])
    text = b"twice " * 400
    snap.file("a", text)
    snap.derived("a.gz", gzipped(text))
    node = snap.derived("a.gz.bak", gzipped(text))
    remaker = snap.remaker(allowed=("gzip", "cp"))
    got, data = await read(remaker, node)
    assert got.matches and data == gzipped(text)
    assert snap.lookups == ["a.gz", "a"] and remaker.runs.started == [1, 1]
    got, data = await read(snap.remaker(allowed=("gzip", "cp"), depth=1), node)
    assert data == b"" and "made from derived files more than 1 deep" in got.mismatch


@pytest_twisted.ensureDeferred
async def test_a_cycle_of_recipes_is_refused():
    snap = Snapshot([GZIP, GUNZIP])
    text = b"round " * 100
    snap.file("a.txt", text)
    gz = snap.derived("a.txt.gz", gzipped(text))
    snap.derived("a.txt", text)  # a.txt from a.txt.gz, which is made from a.txt
    assert snap.nodes["a.txt"].metadata[KEY]["rule"] == "gunzip"
    assert snap.nodes["a.txt"].metadata[KEY]["inputs"][0]["sha256"] == gz.metadata["sha256"]
    got, data = await read(snap.remaker(), gz)
    assert data == b"" and got.matches is False and "it is made from itself" in got.mismatch


@pytest_twisted.ensureDeferred
async def test_a_reader_without_a_remaker_says_it_cannot_make_a_derived_file():
    snap = Snapshot([GZIP])
    snap.file("a.txt", b"text " * 100)
    node = snap.derived("a.txt.gz", gzipped(b"text " * 100))
    parts: list[bytes] = []
    got = await Reader(snap.gw).content(node, parts.append)
    assert parts == [] and got.matches is False
    assert got.mismatch == "a derived file (rule gzip): this command cannot make it again"


@pytest_twisted.ensureDeferred
async def test_a_failed_batch_runs_each_file_it_did_not_make_alone():
    # Copies each file but those named bad*, and then fails.
    script = 'st=0; for f; do case "$f" in bad*) st=3;; *) cp "$f" "$f.out";; esac; done; exit $st'
    snap = Snapshot([{"name": "out", "path": r"(?P<stem>.+)\.out", "inputs": ["{stem}"], "program": "sh",
                      "args": ["-c", script, "sh"], "each": ["{in0}"]}])
    nodes = []
    for name in ("g0", "g1", "bad", "g2"):
        snap.file(name, name.encode() * 10)
        nodes.append(snap.derived(f"{name}.out", name.encode() * 10))
    remaker = snap.remaker(allowed=("sh",))
    assert (await read(remaker, nodes[0]))[0].matches
    results = await gatherResults([Deferred.fromCoroutine(read(remaker, n)) for n in nodes])
    assert [got.matches for got, _ in results] == [True, True, False, True]
    assert [data for _, data in results] == [b"g0" * 10, b"g1" * 10, b"", b"g2" * 10]
    assert results[2][0].mismatch == "derived file (rule out): exit status 3"
    assert remaker.runs.started == [1, 4, 1]  # (the batch's files it made are served: their hash decides)


@pytest_twisted.ensureDeferred
async def test_a_file_the_program_does_not_make_fails_alone():
    snap = Snapshot([GZIP])
    snap.file("g", b"good " * 50)
    good = snap.derived("g.gz", gzipped(b"good " * 50))
    # gzip leaves a file named .gz as it is (and says so), and goes on with the others.
    snap.file("c.gz", b"not gzip " * 50)
    bad = snap.derived("c.gz.gz", gzipped(b"not gzip " * 50))
    remaker = snap.remaker()
    assert (await read(remaker, good))[0].matches
    (g, _), (c, data) = await gatherResults([Deferred.fromCoroutine(read(remaker, n)) for n in (good, bad)])
    assert g.matches and data == b"" and c.mismatch == "derived file (rule gzip): the program did not make it"
    assert remaker.runs.started == [1, 2]
