"""Derived files at backup time: proofs made by running the rule's program, remembered, checked
against the inputs phase two stores; and, on the real grid, a backup that stores recipes."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import Clock

from lafs_backup.backup.derive import InputCheck, Proofs, Proven, Prover
from lafs_backup.backup.queue import write_queue
from lafs_backup.backup.scan import scan
from lafs_backup.derive.recipe import Input, Recipe
from lafs_backup.derive.rules import parse
from lafs_backup.filters import Filter
from lafs_backup.store.entry import Entry
from lafs_backup.store.snapshot import Child
from lafs_backup.system.programs import Programs, Runner

from conftest import json_lines

GZIP = {"name": "gzip", "path": r"(?P<stem>.+)\.gz", "inputs": ["{stem}"], "program": "gzip",
        "args": ["-n", "-k", "-{level}"], "each": ["{in0}"], "variants": [{"level": 9}, {"level": 6}]}


def _gzip_tree(root: Path) -> dict[str, bytes]:
    """Text files, copies made by `gzip -n` at levels 9 and 6, and one made by Python's gzip with a
    time in its header (which `gzip -n` never writes: no recipe)."""
    (root / "d").mkdir(parents=True)
    made = {}
    for i, level in ((1, 9), (2, 6), (3, None)):
        text = "".join(f"line {j} of file {i}\n" for j in range(2000 * i)).encode()
        (root / f"d/f{i}.txt").write_bytes(text)
        if level is None:
            data = gzip.compress(text, mtime=1234567)
            (root / f"d/f{i}.txt.gz").write_bytes(data)
        else:
            os.system(f"gzip -n -{level} -k {root}/d/f{i}.txt")
            data = (root / f"d/f{i}.txt.gz").read_bytes()
        made[f"d/f{i}.txt.gz"] = data
    (root / "lonely.gz").write_bytes(gzip.compress(b"no input beside it"))
    return made


def _prover(root: Path, memory: dict, rules=(GZIP,), allowed=("gzip",), demoted=frozenset()) -> Prover:
    def remember(rows):
        memory.update(rows)

    return Prover(parse(list(rules)), Programs(list(allowed)), Runner(30), os.fsencode(root), os.fsencode(root),
                  _inline, Clock(), lambda keys: {k: memory[k] for k in keys if k in memory}, remember,
                  jobs=2, batch=50, demoted=demoted)


async def _inline(fn, *args):
    return fn(*args)


def _queue(root: Path, at: Path) -> str:
    write_queue(str(at), os.fsencode(root), scan(str(root), Filter([]), lambda p, m: None))
    return str(at)


def _prove(prover: Prover, qpath: str) -> Proofs:
    d = ensureDeferred(prover.run(qpath))
    out: list = []
    d.addBoth(out.append)
    assert out, "the prover did not finish"
    if isinstance(out[0], BaseException) or hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def test_the_prover_keeps_recipes_that_remake_the_file_and_says_why_not_for_the_others(tmp_path):
    root = tmp_path / "src"
    made = _gzip_tree(root)
    memory: dict = {}
    proofs = _prove(_prover(root, memory), _queue(root, tmp_path / "q"))
    assert set(proofs.edges) == {b"d/f1.txt.gz", b"d/f2.txt.gz"}
    for path, proven in proofs.edges.items():
        data = made[path.decode()]
        assert proven.sha256 == hashlib.sha256(data).hexdigest() and proven.size == len(data)
        assert proven.recipe["inputs"][0]["path"] == path.decode()[:-3]
        assert proven.recipe["version"]["sha256"] == hashlib.sha256(Path("/usr/bin/gzip").read_bytes()).hexdigest()
    assert proofs.edges[b"d/f2.txt.gz"].recipe["variant"] == {"level": "6"}
    assert proofs.not_derived == {"the rule's program makes other bytes": 1, "an input is not in this backup": 1}
    assert proofs.inputs[b"d/f1.txt"] == hashlib.sha256((root / "d/f1.txt").read_bytes()).hexdigest()
    assert len(memory) == 3  # (the two proofs, and that the rule does not make f3.txt.gz)

    # Nothing changed: the proofs are remembered, the program is not run again.
    again = _prove(_prover(root, memory), _queue(root, tmp_path / "q"))
    assert again.ran == 0 and again.edges == proofs.edges and again.not_derived == proofs.not_derived

    # An input changed: that file is proven again (and no longer made by the rule); the other is not.
    (root / "d/f2.txt").write_bytes(b"changed\n")
    third = _prove(_prover(root, memory), _queue(root, tmp_path / "q"))
    assert set(third.edges) == {b"d/f1.txt.gz"} and third.ran >= 1


def test_a_program_not_allowed_or_files_demoted_are_stored_as_bytes(tmp_path):
    root = tmp_path / "src"
    _gzip_tree(root)
    proofs = _prove(_prover(root, {}, allowed=()), _queue(root, tmp_path / "q"))
    assert not proofs.edges
    assert any("derive.allowed_programs" in reason for reason in proofs.not_derived)
    demoted = _prove(_prover(root, {}, demoted=frozenset({b"d/f1.txt.gz"})), _queue(root, tmp_path / "q"))
    assert set(demoted.edges) == {b"d/f2.txt.gz"}


def _system_python() -> tuple[str, str]:
    """The machine's Python 3 (Debian's python3, which .ci/run installs): its path and cache tag."""
    import subprocess
    exe = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    assert exe, "the test needs a python3 in /usr/bin (Debian's python3)"
    tag = subprocess.run([exe, "-c", "import sys; print(sys.implementation.cache_tag)"], capture_output=True,
                         text=True, check=True).stdout.strip()
    return exe, tag


def test_the_pyc_examples_remake_timestamp_checked_hash_and_optimized_pycs(tmp_path):
    import subprocess
    import yaml
    rules = yaml.safe_load(Path("config/derive-examples.yaml").read_text())["derive"]["rules"]
    exe, tag = _system_python()
    root = tmp_path / "src"
    (root / "pkg").mkdir(parents=True)
    made = {"a": ("TIMESTAMP", 0, ""), "b": ("CHECKED_HASH", 0, ""), "c": ("TIMESTAMP", 2, ".opt-2")}
    for name, (mode, level, opt) in made.items():
        src = root / f"pkg/{name}.py"
        src.write_text(f'"""doc"""\nVALUE = {name!r}\n\ndef f():\n    assert VALUE\n    return VALUE * 2\n')
        subprocess.run([exe, "-c", "import sys, py_compile as p; p.compile(sys.argv[1], cfile=sys.argv[2], "
                        "dfile=sys.argv[1], doraise=True, optimize=int(sys.argv[4]), "
                        "invalidation_mode=p.PycInvalidationMode[sys.argv[3]])",
                        str(src), str(root / f"pkg/__pycache__/{name}.{tag}{opt}.pyc"), mode, str(level)], check=True)
    program = "python3." + tag.removeprefix("cpython-3")
    proofs = _prove(_prover(root, {}, rules=rules, allowed=(program,)), _queue(root, tmp_path / "q"))
    assert set(proofs.edges) == {f"pkg/__pycache__/{n}.{tag}{made[n][2]}.pyc".encode() for n in made}
    assert proofs.edges[f"pkg/__pycache__/b.{tag}.pyc".encode()].recipe["variant"] == {"mode": "CHECKED_HASH"}
    assert proofs.edges[f"pkg/__pycache__/c.{tag}.opt-2.pyc".encode()].recipe["rule"] == "pyc-opt"
    assert not proofs.not_derived


def _entry(path: bytes) -> Entry:
    return Entry("f", path, 0o100644, 0, 0, 3, 1, 1, 1, 1, 1)


def test_an_input_stored_with_another_hash_breaks_the_recipes_that_use_it():
    recipe = Recipe("gzip", {"level": "9"}, "/s", "gzip", {}, (), (), (Input("a", "ab" * 32, 3, 0o644, 1),),
                    ("a.gz",), "a.gz")
    proofs = Proofs()
    proofs.add(b"a.gz", Proven(recipe.to_json(), "cd" * 32, 9), recipe)
    check = InputCheck(proofs, "URI:LIT:")
    edge = check.edge(_entry(b"a.gz"))
    assert edge is not None and edge.cap == "URI:LIT:" and edge.metadata["sha256"] == "cd" * 32
    assert edge.metadata["derived"]["inputs"][0]["path"] == "a"
    assert check.edge(_entry(b"b")) is None
    same = Child(b"a", "URI:CHK:x", {"sha256": "ab" * 32})
    assert check.stored(_entry(b"a"), same) is same and not check.broken
    later: Deferred = Deferred()
    assert check.stored(_entry(b"a"), later) is later
    later.callback(Child(b"a", "URI:CHK:y", {"sha256": "ef" * 32}))
    assert check.broken == {b"a.gz"}
    left_out = InputCheck(proofs, "URI:LIT:")
    left_out.stored(_entry(b"a"), succeed(None).result)
    assert left_out.broken == {b"a.gz"}


# -- the real grid ---------------------------------------------------------------------------------------

def _conf(tmp_path: Path, rules=(GZIP,), allowed=("gzip",)) -> str:
    at = tmp_path / "derive.yaml"
    at.write_text(json.dumps({"derive": {"rules": list(rules), "allowed_programs": list(allowed)}}))
    return str(at)


def test_a_backup_stores_recipes_instead_of_bytes_on_the_grid(lb, tmp_path):
    root = tmp_path / "src"
    _gzip_tree(root)
    conf = _conf(tmp_path)
    r = lb("-c", conf, "--json", "backup", str(root), check=True)
    summary = [x for x in json_lines(r.out) if x.get("type") == "summary"][0]
    assert summary["derived"] == 2
    assert summary["bytes_derived"] == sum((root / f"d/f{i}.txt.gz").stat().st_size for i in (1, 2))
    assert summary["derived_not"] == {"the rule's program makes other bytes": 1, "an input is not in this backup": 1}
    # The same tree without rules: the walk keeps no subtree of the last backup (made with rules), and
    # stores the .gz files' bytes.
    plain = lb("--json", "backup", str(root), check=True)
    plain_summary = [x for x in json_lines(plain.out) if x.get("type") == "summary"][0]
    assert plain_summary["derived"] == 0 and plain_summary["subtrees_kept"] == 0
    assert not any("derived" in x for x in json_lines(lb("ls", "--json", "-R", "latest", check=True).out))
    listed = {x["path"]: x for x in json_lines(lb("-c", conf, "ls", "--json", "-R", "1", check=True).out)}
    assert "derived" in listed["d/f1.txt.gz"] and "derived" in listed["d/f2.txt.gz"]
    assert "derived" not in listed["d/f3.txt.gz"] and "derived" not in listed["lonely.gz"]
    assert listed["d/f1.txt.gz"]["sha256"] == hashlib.sha256((root / "d/f1.txt.gz").read_bytes()).hexdigest()
    long = lb("-c", conf, "ls", "-l", "1", "d", check=True).out
    assert "f1.txt.gz  [derived: gzip, gzip from d/f1.txt]" in long


def test_rewrite_refuses_to_remove_an_input_a_kept_recipe_needs(lb, tmp_path):
    root = tmp_path / "src"
    _gzip_tree(root)
    conf = _conf(tmp_path)
    lb("-c", conf, "backup", str(root), check=True)
    r = lb("-c", conf, "rewrite", "latest", "--exclude", "/d/f1.txt")
    assert r.code == 2, r.err
    assert "would remove inputs of derived files it keeps (d/f1.txt.gz)" in r.err
    both = lb("-c", conf, "rewrite", "latest", "--exclude", "/d/f1.txt", "--exclude", "/d/f1.txt.gz")
    assert both.code == 0, both.err


SPLIT = {"name": "halves", "path": r"(?P<stem>.+)\.partaa", "inputs": ["{stem}"], "program": "split",
         "args": ["-n", "2", "{in0}", "{stem}.part"], "also": ["{stem}.partab"]}


def test_one_run_proves_every_file_it_makes(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "data").write_bytes(bytes(range(256)) * 40)
    os.system(f"cd {root} && split -n 2 data data.part")
    proofs = _prove(_prover(root, {}, rules=[SPLIT], allowed=["split"]), _queue(root, tmp_path / "q"))
    assert set(proofs.edges) == {b"data.partaa", b"data.partab"} and proofs.ran == 1
    a, b = proofs.edges[b"data.partaa"].recipe, proofs.edges[b"data.partab"].recipe
    assert (a["output"], b["output"]) == (0, 1) and a["outputs"] == b["outputs"] == ["data.partaa", "data.partab"]
    assert proofs.edges[b"data.partab"].sha256 == hashlib.sha256((root / "data.partab").read_bytes()).hexdigest()
    # The second file changed: the run no longer makes both, and neither is a recipe.
    (root / "data.partab").write_bytes(b"other")
    again = _prove(_prover(root, {}, rules=[SPLIT], allowed=["split"]), _queue(root, tmp_path / "q"))
    assert not again.edges and again.not_derived == {"the rule's program makes other bytes": 1}


def test_diff_counts_a_file_stored_as_bytes_then_as_its_recipe_as_unchanged(lb, tmp_path):
    root = tmp_path / "src"
    _gzip_tree(root)
    lb("backup", str(root), check=True)
    lb("-c", _conf(tmp_path), "backup", str(root), check=True)
    listed = {x["path"]: x for x in json_lines(lb("ls", "--json", "-R", "latest", check=True).out)}
    assert "derived" in listed["d/f1.txt.gz"]
    r = lb("diff", "1", "2", check=True)
    assert "f1.txt.gz" not in r.out and "f2.txt.gz" not in r.out, r.out


def test_recipes_made_from_themselves_or_too_deep_are_found():
    from lafs_backup.backup.derive import unsafe_chains
    # gzip makes a.txt.gz from a.txt, and gunzip a.txt from a.txt.gz: neither could ever be made again.
    cycle = unsafe_chains({b"a.txt.gz": [b"a.txt"], b"a.txt": [b"a.txt.gz"], b"b.gz": [b"b"]}, 8)
    assert cycle == {b"a.txt.gz": "its recipe would be made from itself", b"a.txt": "its recipe would be made from itself"}
    chain = {f"f{i}".encode(): [f"f{i + 1}".encode()] for i in range(12)}  # f0 from f1 ... f11 from f12 (bytes)
    deep = unsafe_chains(chain, 8)
    # f4..f11 are at most 8 deep; f3 would be 9: stored as bytes, and then f0..f2 are shallow again
    assert set(deep) == {b"f3"} and "more than 8" in deep[b"f3"]
    assert unsafe_chains({b"x.gz": [b"x"]}, 8) == {}


def test_the_walk_never_keeps_a_directory_whose_recipes_read_outside_it():
    from lafs_backup.backup.derive import unsafe_dirs
    recipe = Recipe("r", {}, "/s", "p", {}, (), (), (Input("src/x.c", "ab" * 32, 1, 0o644, 1),),
                    ("build/obj/x.o",), "build/obj/x.o")
    near = Recipe("pyc", {}, "/s", "p", {}, (), (), (Input("pkg/m.py", "ab" * 32, 1, 0o644, 1),),
                  ("pkg/__pycache__/m.pyc",), "pkg/__pycache__/m.pyc")
    proofs = Proofs()
    proofs.add(b"build/obj/x.o", Proven(recipe.to_json(), "cd" * 32, 1), recipe)
    proofs.add(b"pkg/__pycache__/m.pyc", Proven(near.to_json(), "cd" * 32, 1), near)
    assert unsafe_dirs(proofs) == {b"build", b"build/obj", b"pkg/__pycache__"}


def test_a_proof_made_under_another_root_is_not_reused(tmp_path):
    root = tmp_path / "src"
    _gzip_tree(root)
    memory: dict = {}
    _prove(_prover(root, memory), _queue(root, tmp_path / "q"))
    moved = Prover(parse([GZIP]), Programs(["gzip"]), Runner(30), os.fsencode(root), b"/elsewhere/src", _inline,
                   Clock(), lambda keys: {k: memory[k] for k in keys if k in memory}, memory.update)
    again = _prove(moved, _queue(root, tmp_path / "q"))
    assert again.ran > 0 and all(p.recipe["root"] == "/elsewhere/src" for p in again.edges.values())


def test_a_batch_that_fails_for_one_file_still_proves_the_others(tmp_path):
    root = tmp_path / "src"
    _gzip_tree(root)
    os.system(f"cd {root}/d && cp f1.txt bad.txt && gzip -n -9 -k bad.txt")
    picky = {**GZIP, "program": "sh", "args": ["-c", 'for f; do case $f in *bad*) exit 1;; esac; '
                                                     'gzip -n -9 -k "$f"; done', "sh"], "variants": [{}]}
    proofs = _prove(_prover(root, {}, rules=[picky], allowed=["sh"]), _queue(root, tmp_path / "q"))
    assert set(proofs.edges) == {b"d/f1.txt.gz"}  # (f2 was made at level 6: other bytes)
    assert proofs.not_derived["the program failed: exit status 1"] == 1


def test_an_input_outside_a_kept_directory_is_seen_when_it_changes(lb, tmp_path):
    """build/ holds x.gz made from src/x: when src/x changes, build/ is walked again (it is never kept
    whole), x.gz is proven again, found to be other bytes, and stored as bytes: the restore is identical."""
    root = tmp_path / "tree"
    (root / "src").mkdir(parents=True)
    (root / "build").mkdir()
    (root / "src" / "x").write_bytes(b"source text\n" * 500)
    os.system(f"gzip -n -9 -c {root}/src/x > {root}/build/x.gz")
    rule = {**GZIP, "path": r"build/(?P<n>[^/]+)\.gz", "inputs": ["src/{n}"], "args": ["-n", "-9", "-c", "{in0}"],
            "each": [], "output": "stdout", "variants": [{}]}
    conf = _conf(tmp_path, rules=[rule])
    first = [x for x in json_lines(lb("-c", conf, "--json", "backup", str(root), check=True).out)
             if x.get("type") == "summary"][0]
    assert first["derived"] == 1
    (root / "src" / "x").write_bytes(b"edited source, not built again\n" * 400)
    second = [x for x in json_lines(lb("-c", conf, "--json", "backup", str(root), check=True).out)
              if x.get("type") == "summary"][0]
    assert second["derived"] == 0 and second["derived_not"] == {"the rule's program makes other bytes": 1}
    out = tmp_path / "out"
    lb("-c", conf, "restore", "latest", "--target", str(out), check=True)
    assert (out / "build" / "x.gz").read_bytes() == (root / "build" / "x.gz").read_bytes()
    assert (out / "src" / "x").read_bytes() == (root / "src" / "x").read_bytes()
