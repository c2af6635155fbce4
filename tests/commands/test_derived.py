"""Derived files read back through the real CLI on the real local grid: a backup with a gzip rule stores the
reproducible .gz files as recipes; restore, dump and verify make them again with the real gzip and check
them, and fail, naming the files, when this machine does not allow the program."""

from __future__ import annotations

import gzip
import http.client
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import cli_env, json_lines
from treecompare import differences

T0 = 1_600_000_000
RULES = """\
derive:
  allowed_programs: [{allowed}]
  rules:
    - name: gzip
      path: '(?P<stem>.+)\\.gz'
      inputs: ['{{stem}}']
      program: gzip
      args: ['-n', '-k', '-{{level}}']
      each: ['{{in0}}']
      variants: [{{level: 9}}, {{level: 6}}]
"""


def source(root: Path) -> Path:
    """Two .gz files gzip -n makes again (levels 9 and 6), one it does not (Python's gzip module, with a
    name and a time in its header), their inputs, and a plain file."""
    (root / "docs" / "sub").mkdir(parents=True)
    (root / "docs" / "a.txt").write_bytes(b"alpha text, compressible\n" * 800)
    (root / "docs" / "sub" / "b.log").write_bytes(b"beta log line %d\n" * 600)
    (root / "docs" / "c.csv").write_bytes(b"1,2,3\n" * 900)
    (root / "plain.bin").write_bytes(os.urandom(5000))
    subprocess.run(["gzip", "-n", "-9", "-k", "a.txt"], cwd=root / "docs", check=True)
    subprocess.run(["gzip", "-n", "-6", "-k", "b.log"], cwd=root / "docs" / "sub", check=True)
    with open(root / "docs" / "c.csv.gz", "wb") as f:
        f.write(gzip.compress((root / "docs" / "c.csv").read_bytes(), mtime=T0))
    os.chmod(root / "docs" / "a.txt.gz", 0o600)
    for p in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        os.utime(p, ns=(T0 * 10**9, T0 * 10**9 + 123456789))
    return root


def conf(tmp_path: Path, allowed: str = "gzip") -> str:
    path = tmp_path / f"derive-{allowed or 'none'}.yaml"
    path.write_text(RULES.format(allowed=allowed))
    return str(path)


@pytest.fixture
def backed_up(lb, tmp_path: Path) -> Path:
    src = source(tmp_path / "src")
    r = lb("--json", "-c", conf(tmp_path), "backup", str(src), check=True)
    summary = [x for x in json_lines(r.out) if x.get("type") == "summary"][-1]
    assert summary["derived"] == 2, summary
    return src


def restore(lb, tmp_path: Path, src: Path, target: Path, *args: str, allowed: str = "gzip"):
    return lb("--json", "-c", conf(tmp_path, allowed), "restore", "latest", "--source", str(src),
              "--target", str(target), *args)


def summary_of(out: str) -> dict:
    return [x for x in json_lines(out) if x.get("type") == "summary"][-1]


def test_the_backup_keeps_recipes_and_the_restore_is_identical(lb, backed_up, tmp_path):
    src = backed_up
    listed = {x["path"]: x for x in json_lines(lb("--json", "ls", "-R", "latest", "--source", str(src),
                                                  check=True).out)}
    assert listed["docs/a.txt.gz"].get("derived") and listed["docs/sub/b.log.gz"].get("derived")
    assert not listed["docs/c.csv.gz"].get("derived")  # gzip -n does not make Python's bytes
    r = restore(lb, tmp_path, src, tmp_path / "out")
    assert r.code == 0, r.err
    assert differences(src, tmp_path / "out") == []
    assert summary_of(r.out)["failed"] == 0


def test_without_the_program_allowed_the_restore_fails_naming_the_files(lb, backed_up, tmp_path):
    src = backed_up
    r = restore(lb, tmp_path, src, tmp_path / "out", allowed="")
    assert r.code == 1, r.err
    error = [line for line in r.err.splitlines() if line.startswith("lafs-backup: error:")]
    assert len(error) == 1 and "2 derived file(s) could not be made again" in error[0]
    assert "docs/a.txt.gz" in error[0] and "docs/sub/b.log.gz" in error[0] and "--skip-derived" in error[0]
    warnings = [x for x in json_lines(r.out) if x.get("type") == "warning"]
    assert sorted(w["path"] for w in warnings) == ["docs/a.txt.gz", "docs/sub/b.log.gz"]
    assert all("rule gzip" in w["message"] and "derive.allowed_programs" in w["message"] for w in warnings)
    assert summary_of(r.out)["derived_failed"] == 2
    out = tmp_path / "out"
    assert not (out / "docs" / "a.txt.gz").exists() and not list(out.rglob(".lafs-restore-*"))
    assert (out / "docs" / "c.csv.gz").read_bytes() == (src / "docs" / "c.csv.gz").read_bytes()

    # --skip-derived restores the rest, and says what it left out.
    r = restore(lb, tmp_path, src, tmp_path / "rest", "--skip-derived", allowed="")
    assert r.code == 0, r.err
    assert summary_of(r.out)["derived_skipped"] == 2
    left = {str(p.relative_to(tmp_path / "rest")) for p in (tmp_path / "rest").rglob("*")}
    assert left == {str(p.relative_to(src)) for p in src.rglob("*")} - {"docs/a.txt.gz", "docs/sub/b.log.gz"}
    r = lb("-c", conf(tmp_path, ""), "restore", "latest", "--source", str(src), "--target", str(tmp_path / "t"),
           "--skip-derived")
    assert "derived files: 2 left out (--skip-derived)" in r.err


def test_one_derived_path_is_restored_alone_its_inputs_never_in_the_target(lb, backed_up, tmp_path):
    src = backed_up
    r = restore(lb, tmp_path, src, tmp_path / "one", "docs/sub/b.log.gz")
    assert r.code == 0, r.err
    out = tmp_path / "one"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["docs", "docs/sub", "docs/sub/b.log.gz"]
    assert (out / "docs" / "sub" / "b.log.gz").read_bytes() == (src / "docs" / "sub" / "b.log.gz").read_bytes()
    assert os.stat(out / "docs" / "sub" / "b.log.gz").st_mtime_ns == os.stat(src / "docs" / "sub" / "b.log.gz").st_mtime_ns


def test_dump_gives_a_derived_file_s_exact_bytes_alone_and_in_a_tar(grid, home, backed_up, tmp_path):
    src = backed_up

    def dump(path: str, dest: Path, allowed: str = "gzip") -> subprocess.CompletedProcess:
        """``dump`` with its stdout in ``dest`` (bytes, as a shell redirection gives them)."""
        with open(dest, "wb") as f:
            return subprocess.run([sys.executable, "-m", "lafs_backup", "--url", grid.url, "-c", conf(tmp_path, allowed),
                                   "dump", "latest", path, "--source", str(src)], env=cli_env(home), stdout=f,
                                  stderr=subprocess.PIPE, text=True, timeout=300, stdin=subprocess.DEVNULL)

    out = tmp_path / "a.txt.gz"
    dumped = dump("docs/a.txt.gz", out)
    assert dumped.returncode == 0, dumped.stderr
    assert out.read_bytes() == (src / "docs" / "a.txt.gz").read_bytes()
    tar = tmp_path / "docs.tar"
    assert dump("docs", tar).returncode == 0
    with tarfile.open(tar) as t:
        member = t.extractfile("docs/sub/b.log.gz")
        assert member is not None and member.read() == (src / "docs" / "sub" / "b.log.gz").read_bytes()
    # Without the program allowed: nothing is written, and the exit code says so.
    refused = dump("docs/a.txt.gz", tmp_path / "none.gz", allowed="")
    assert refused.returncode == 1 and (tmp_path / "none.gz").read_bytes() == b""
    assert "rule gzip" in refused.stderr and "nothing was written" in refused.stderr


def test_verify_checks_recipes_and_remake_runs_them(lb, backed_up, tmp_path):
    src = backed_up
    r = lb("--json", "verify", "latest", "--source", str(src))
    assert r.code == 0, r.err
    s = summary_of(r.out)
    assert s["derived_checked"] == 2 and s["derived_remade"] == 0
    r = lb("--json", "-c", conf(tmp_path), "verify", "latest", "--source", str(src), "--remake")
    assert r.code == 0, r.err
    s = summary_of(r.out)
    assert s["derived_checked"] == 2 and s["derived_remade"] == 2


def test_a_tampered_recipe_in_a_copied_snapshot_is_caught_by_the_hash(lb, grid, tmp_path):
    """A copy of a backup (``destination.tree: tahoe``: plain Tahoe directories) whose recipe for
    a.txt.gz names level 6 where the file was made at 9: it runs (this machine's rule has that
    variant) and its bytes are refused."""
    src = source(tmp_path / "src")
    config = conf(tmp_path)
    Path(config).write_text(Path(config).read_text() + "destination:\n  tree: tahoe\n")
    lb("-c", config, "backup", str(src), check=True)
    cap = [x for x in json_lines(lb("--json", "list", check=True).out) if x.get("source") == str(src)][-1]["cap"]
    url = grid.url.rstrip("/")

    def listing(c: str) -> dict:
        with urllib.request.urlopen(f"{url}/uri/{c}?t=json") as f:
            return json.load(f)[1]["children"]

    def mkdir(children: dict) -> str:
        body = json.dumps({k: [t, {"ro_uri": i.get("ro_uri"), "metadata": i.get("metadata", {})}]
                           for k, (t, i) in children.items()}).encode()
        req = urllib.request.Request(f"{url}/uri?t=mkdir-immutable", data=body, method="POST")
        with urllib.request.urlopen(req) as f:
            return f.read().decode().strip()

    root = listing(cap)
    tree = listing(root["tree"][1]["ro_uri"])
    docs = listing(tree["docs"][1]["ro_uri"])
    recipe = docs["a.txt.gz"][1]["metadata"]["derived"]
    assert recipe["variant"] == {"level": "9"}
    recipe.update(variant={"level": "6"}, args=["-n", "-k", "-6"])
    tree["docs"][1]["ro_uri"] = mkdir(docs)
    root["tree"][1]["ro_uri"] = mkdir(tree)
    root.pop("index", None)  # (the copy's directories are read from the grid)
    copied = mkdir(root)
    r = lb("--json", "-c", config, "restore", copied, "--target", str(tmp_path / "out"))
    assert r.code == 1, r.err
    warnings = [x for x in json_lines(r.out) if x.get("type") == "warning"]
    assert [(w["path"], w["message"]) for w in warnings] == [
        ("docs/a.txt.gz", "derived file (rule gzip): remade bytes differ from the recorded ones; not restored")]
    assert not (tmp_path / "out" / "docs" / "a.txt.gz").exists()
    assert (tmp_path / "out" / "docs" / "sub" / "b.log.gz").read_bytes() == \
        (src / "docs" / "sub" / "b.log.gz").read_bytes()


@pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                    reason="a FUSE mount needs /dev/fuse and root here (CI runs as root)")
def test_the_mount_makes_each_backup_s_derived_files_from_its_own_inputs_once(lb, grid, home, tmp_path):
    src = source(tmp_path / "src")
    (src / "big.bin").write_bytes(os.urandom(3 << 20))  # its .gz is above what the mount keeps in memory
    subprocess.run(["gzip", "-n", "-9", "-k", "big.bin"], cwd=src, check=True)
    config = conf(tmp_path)
    lb("-c", config, "backup", str(src), check=True)
    first = {p: (src / p).read_bytes() for p in ("docs/a.txt.gz", "big.bin.gz")}
    (src / "docs" / "a.txt").write_bytes(b"the second backup's text\n" * 900)
    os.unlink(src / "docs" / "a.txt.gz")
    subprocess.run(["gzip", "-n", "-9", "-k", "a.txt"], cwd=src / "docs", check=True)
    lb("-c", config, "backup", str(src), check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "lafs_backup", "--url", grid.url, "-c", config, "--debug", "mount",
                          str(mnt)], env=cli_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (mnt / "snapshots").exists():
            assert p.poll() is None, p.communicate()[1]
            assert time.monotonic() < deadline, "the mount did not appear"
            time.sleep(0.1)
        old, new = sorted(s for s in os.listdir(mnt / "snapshots") if s != "latest")
        for snap, want in ((old, first), (new, {p: (src / p).read_bytes() for p in first})):
            for path, data in want.items():
                with open(mnt / "snapshots" / snap / path, "rb") as f:  # read in pieces, from the end first
                    f.seek(len(data) // 2)
                    tail = f.read()
                    f.seek(0)
                    head = b"".join(iter(lambda: f.read(65536), b""))
                assert head == data and tail == data[len(data) // 2:], (snap, path)
        assert first["docs/a.txt.gz"] != (src / "docs" / "a.txt.gz").read_bytes()
    finally:
        p.send_signal(15)
        _out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    # Each backup's a.txt.gz made once (big.bin.gz is the same file in both: known by its hash, made once).
    runs = [line for line in err.decode().splitlines() if "derive: running" in line]
    assert len(runs) == 3, runs


def test_the_dashboard_downloads_a_derived_file_made_again(lb, grid, home, backed_up, tmp_path):
    src = backed_up
    short_id = lb("list", check=True).out.split()[0]
    p = subprocess.Popen([sys.executable, "-m", "lafs_backup", "--url", grid.url, "-c", conf(tmp_path), "web",
                          "--port", "0"], env=cli_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, text=True)
    try:
        url = urllib.parse.urlsplit(p.stdout.readline().strip())
        token = urllib.parse.parse_qs(url.query)["token"][0]

        def get(path: str, cookie: str = "") -> http.client.HTTPResponse:
            c = http.client.HTTPConnection("127.0.0.1", url.port, timeout=120)
            c.request("GET", path, headers={"Cookie": cookie} if cookie else {})
            r = c.getresponse()
            r.body = r.read()  # type: ignore[attr-defined]
            c.close()
            return r

        login = get(f"/?token={token}")  # (as a browser opening the printed URL: a cookie)
        cookie = login.getheader("Set-Cookie").split(";")[0]
        assert login.status == 303, login.status

        def download(path: str) -> tuple[int, bytes]:
            r = get(path, cookie)
            return r.status, r.body  # type: ignore[attr-defined]

        status, body = download(f"/b/{short_id}/raw/docs/a.txt.gz")
        assert status == 200 and body == (src / "docs" / "a.txt.gz").read_bytes()
        status, body = download(f"/b/{short_id}/tar/docs/sub")
        assert status == 200
        with tarfile.open(fileobj=io.BytesIO(body)) as t:
            member = t.extractfile("sub/b.log.gz")
            assert member is not None and member.read() == (src / "docs" / "sub" / "b.log.gz").read_bytes()
    finally:
        p.send_signal(15)
        p.communicate(timeout=30)
    assert p.returncode == 0


def test_a_python_package_with_hash_pycs_and_gz_copies_round_trips_with_the_shipped_rules(lb, tmp_path):
    """The shipped examples (config/derive-examples.yaml) on a Python package: its checked-hash pycs,
    compiled by this machine's Python 3, and its .gz copies are recipes; a .gz another compressor
    wrote is bytes; the restore is identical, and `ls -l` says how each derived file is made."""
    exe = "/usr/bin/python3"
    tag = subprocess.run([exe, "-c", "import sys; print(sys.implementation.cache_tag)"], capture_output=True,
                         text=True, check=True).stdout.strip()
    src = tmp_path / "src"
    pkg = src / "pkg"
    (pkg / "data").mkdir(parents=True)
    for name in ("__init__", "core", "util"):
        (pkg / f"{name}.py").write_text(f'"""{name}."""\n\ndef {name.strip("_")}(x):\n    return [x] * 3\n')
    subprocess.run([exe, "-m", "compileall", "-q", "--invalidation-mode", "checked-hash", str(pkg)], check=True)
    for i in range(3):
        (pkg / "data" / f"table{i}.csv").write_bytes(b"%d,alpha,beta\n" % i * 700)
        subprocess.run(["gzip", "-n", "-9", "-k", f"table{i}.csv"], cwd=pkg / "data", check=True)
    (pkg / "data" / "other.csv").write_bytes(b"gamma\n" * 900)
    (pkg / "data" / "other.csv.gz").write_bytes(gzip.compress((pkg / "data" / "other.csv").read_bytes(),
                                                              mtime=T0))
    examples = str(Path(__file__).resolve().parents[2] / "config" / "derive-examples.yaml")
    r = lb("--json", "-c", examples, "backup", str(src), check=True)
    s = summary_of(r.out)
    pycs = sorted(str(p.relative_to(src)) for p in src.rglob("*.pyc"))
    assert len(pycs) == 3 and s["derived"] == 3 + 3, s
    assert s["derived_not"] == {"the rule's program makes other bytes": 1}
    listed = {x["path"]: x for x in json_lines(lb("--json", "ls", "-R", "latest", check=True).out)}
    assert all(listed[p]["derived"]["rule"] == "pyc" and listed[p]["derived"]["variant"] == {"mode": "CHECKED_HASH"}
               for p in pycs)
    assert "derived" not in listed["pkg/data/other.csv.gz"]
    long = lb("-c", examples, "ls", "-l", "latest", "pkg/__pycache__", check=True).out
    assert f"core.{tag}.pyc  [derived: pyc, python3.{tag.removeprefix('cpython-3')} from pkg/core.py]" in long
    out = tmp_path / "out"
    r = lb("--json", "-c", examples, "restore", "latest", "--target", str(out))
    assert r.code == 0, r.err
    assert differences(src, out) == []
