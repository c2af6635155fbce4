"""Large files over a slow link: timeouts follow the bytes; downloads resume; restore never leaves
wrong content under a file's name."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest

from conftest import run_cli
from slowlink import SlowLink
from treecompare import differences

pytestmark = pytest.mark.slow

RATE = 2_000_000  # bytes per second, each way
TIMEOUT = ["-o", "operation.timeout=2"]  # far less than a whole transfer takes


def test_a_big_file_crosses_a_slow_link_both_ways(grid, home, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.img").write_bytes(os.urandom(12 << 20))  # 6 s at 2 MB/s: thrice the timeout
    (src / "note.txt").write_text("a small file beside it\n" * 10)
    with SlowLink(grid.url, RATE) as link:
        r = run_cli(["--url", link.url, *TIMEOUT, "--json", "backup", str(src)], home, timeout=300)
        assert r.code == 0, r.err
        assert "timed out" not in r.err
    cap = json.loads(r.out.splitlines()[-1])["cap"]
    # The download is cut in the middle once: the retry asks for the rest, not the whole file.
    with SlowLink(grid.url, RATE, cut_after=5 << 20) as link:
        out = tmp_path / "out"
        r = run_cli(["--url", link.url, *TIMEOUT, "-o", "operation.retry.delay=[0.2]", "restore", cap,
                     "--target", str(out)], home, timeout=300)
        assert r.code == 0, r.err
        assert link.cuts == 1
        resumed = [int(x.split("=")[1].rstrip("-")) for x in link.ranges if x.startswith("bytes=")]
        assert resumed and (4 << 20) < resumed[0] <= (5 << 20), link.ranges
        assert link.bytes_down < (12 << 20) * 1.2  # the first 5 MiB came only once
    assert differences(src, out) == []


def _post(url: str, data: bytes, query: str = "") -> str:
    req = urllib.request.Request(url + "uri" + query, data=data, method="POST" if query else "PUT")
    with urllib.request.urlopen(req) as resp:
        return resp.read().decode()


def test_content_that_does_not_match_its_sha256_is_a_problem_and_never_placed(grid, home, tmp_path):
    """A snapshot whose file holds other bytes than its recorded SHA-256 says (as a damaged
    or forged grid would serve): the restore reports it (exit 6) and writes no such file."""
    body = b"these are not the bytes that were backed up\n" * 4
    fcap = _post(grid.url, body)
    meta = {"lafs_backup": 1, "type": "file", "mode": 0o100644, "uid": 0, "gid": 0, "mtime_ns": 0,
            "ctime_ns": 0, "size": len(body), "sha256": "0" * 64}
    good = {"lafs_backup": 1, "type": "file", "mode": 0o100644, "uid": 0, "gid": 0, "mtime_ns": 0,
            "ctime_ns": 0, "size": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
    tree = _post(grid.url, json.dumps({"bad.txt": ["filenode", {"ro_uri": fcap, "metadata": meta}],
                                       "good.txt": ["filenode", {"ro_uri": "URI:LIT:mfrgg", "metadata": good}]}
                                      ).encode(), "?t=mkdir-immutable")
    root = _post(grid.url, json.dumps({"tree": ["dirnode", {"ro_uri": tree, "metadata": {
        "lafs_backup": 1, "type": "dir", "mode": 0o40755, "uid": 0, "gid": 0, "mtime_ns": 0,
        "ctime_ns": 0}}]}).encode(), "?t=mkdir-immutable")
    out = tmp_path / "out"
    (out).mkdir()
    (out / "bad.txt").write_text("what was here before\n")
    r = run_cli(["--url", grid.url, "restore", root, "--target", str(out)], home)
    assert r.code == 6, r.err
    assert "problem: bad.txt: its content does not match the SHA-256" in r.err, r.err
    assert (out / "bad.txt").read_text() == "what was here before\n"  # not replaced by wrong bytes
    assert (out / "good.txt").read_bytes() == b"abc"
    assert sorted(p.name for p in out.iterdir()) == ["bad.txt", "good.txt"]  # no partial file left
