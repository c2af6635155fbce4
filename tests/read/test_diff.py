"""diff between snapshots and against the live source, against the real grid."""

from __future__ import annotations

import json
import os

from conftest import json_lines

from lafs_backup.read.diff import compare_meta


def test_compare_meta_names_each_aspect():
    a = {"type": "file", "mode": 0o100644, "uid": 1, "gid": 1, "mtime_ns": 5, "xattrs": {"user.a": "eA=="}}
    assert compare_meta(a, dict(a), False) == ()
    b = dict(a, mode=0o100600, uid=2, mtime_ns=6, xattrs={})
    assert compare_meta(a, b, True) == ("content", "mode", "owner", "mtime", "xattr")
    assert compare_meta({"type": "symlink", "target": "x"}, {"type": "symlink", "target": "y"}, None) == (
        "link target",)


def _tree(root):
    (root / "d").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha " * 30)
    (root / "b.txt").write_bytes(b"beta " * 30)
    (root / "d" / "c.txt").write_bytes(b"gamma " * 30)
    os.symlink("a.txt", root / "l")


def test_diff_two_snapshots_and_live(lb, tmp_path):
    src = tmp_path / "src"
    _tree(src)
    lb("backup", str(src), check=True)
    r = lb("diff", "latest", "--live")
    assert r.code == 0 and r.out == "", r.out + r.err

    old = 1_600_000_000_000_000_000
    os.utime(src / "b.txt", ns=(old, old))  # only the mtime
    with open(src / "a.txt", "ab") as f:
        f.write(b"more")
    os.chmod(src / "d" / "c.txt", 0o600)
    (src / "new.txt").write_bytes(b"new " * 20)
    os.unlink(src / "l")
    os.symlink("b.txt", src / "l")
    os.setxattr(src / "d" / "c.txt", "user.tag", b"x")

    live = lb("diff", "latest", "--live")
    assert live.code == 1
    lb("backup", str(src), check=True)
    r = lb("diff", "1", "2")
    assert r.code == 1, r.err
    lines = set(r.out.splitlines())
    assert "M /a.txt (content, mtime)" in lines
    assert "M /b.txt (mtime)" in lines
    assert "M /d/c.txt (mode, xattr)" in lines
    assert "+ /new.txt" in lines
    assert any(ln.startswith("M /l (") and "link target" in ln for ln in lines)
    assert not any(ln.startswith("- ") for ln in lines)
    assert set(live.out.splitlines()) - {ln for ln in live.out.splitlines() if ln.startswith("M / ")} == \
        lines - {ln for ln in lines if ln.startswith("M / ")}

    os.unlink(src / "new.txt")
    j = lb("diff", "2", "1", "--json")
    recs = [json.loads(x) for x in j.out.splitlines()]
    ids = {b["generation"]: b["id"] for b in json_lines(lb("list", "--json", check=True).out)}
    assert {"type": "removed", "path": "/new.txt", "changed": [], "from": ids[2], "to": ids[1]} in recs
    assert lb("diff", "2", "2").code == 0
    assert lb("diff", "latest").code == 2  # neither OTHER nor --live: a usage error


def test_diff_live_follows_the_filter_rules(lb, tmp_path):
    from conftest import make_tree

    src = make_tree(tmp_path / "src", small=10, medium=0, large=0)
    (src / "cache").mkdir()
    (src / "cache" / "junk.bin").write_bytes(b"j" * 500)
    conf = tmp_path / "f.yaml"
    conf.write_text("filter:\n  - '-^/cache/'\n")
    lb("-c", str(conf), "backup", str(src), check=True)
    r = lb("-c", str(conf), "diff", "latest", "--live")
    assert r.code == 0 and r.out == "", r.out  # the excluded directory is not "added"
    (src / "new.txt").write_text("n" * 100)
    r = lb("-c", str(conf), "diff", "latest", "--live")
    assert r.code == 1 and r.out.splitlines() == ["M / (mtime)", "+ /new.txt"], r.out


def test_every_difference_names_both_snapshots_by_their_one_id(lb, tmp_path):
    """Whatever form each side is named in (id, start of an id, generation, latest, cap), each JSON
    record carries the two ids 'list' shows; the text output's lines stay pasteable paths, and its
    report on stderr names both sides."""
    src = tmp_path / "src"
    _tree(src)
    lb("backup", str(src), check=True)
    (src / "new.txt").write_text("new\n")
    lb("backup", str(src), check=True)
    first, second = json_lines(lb("list", "--json", check=True).out)
    for a, b in ((first["id"], second["id"]), (first["id"][:5], "latest"), ("1", second["id"][:4]),
                 (first["cap"], second["cap"])):
        r = lb("--json", "diff", a, b, "--source", str(src))
        assert r.code == 1, r.err
        recs = json_lines(r.out)
        assert recs and all((x["from"], x["to"]) == (first["id"], second["id"]) for x in recs), (a, b, recs)
        assert {"type": "added", "path": "/new.txt", "changed": [], "from": first["id"], "to": second["id"]} in recs
    r = lb("diff", "2", "1", check=False)
    assert "- /new.txt" in r.out.splitlines()
    assert f"comparing {second['id']} (generation 2, {second['time']}) with {first['id']} (generation 1, " \
           f"{first['time']})" in r.err
    assert f"2 differences between {second['id']} and {first['id']}" in r.err

    # --live: the other side is the source as it is now.
    (src / "newer.txt").write_text("newer\n")
    r = lb("--json", "diff", second["id"], "--live")
    assert r.code == 1
    assert {"type": "added", "path": "/newer.txt", "changed": [], "from": second["id"], "to": "live"} in \
        json_lines(r.out)
    r = lb("diff", "latest", "--live", "--source", str(src))
    assert "+ /newer.txt" in r.out.splitlines() and f"comparing {second['id']} (generation 2" in r.err
    assert "with its source as it is now" in r.err
