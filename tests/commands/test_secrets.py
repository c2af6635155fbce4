"""Reliability, scenario 8: Tahoe caps are bearer secrets.

A full backup, check, verify, diff, cleanup and restore at ``--noise``, plus
failing runs whose gateway answers quote caps, against the real grid: no
cap appears in anything they print, except the outputs whose job is to give
one (backup's result line when print_to_stdout is on, ``list``).  Every file
holding a cap is mode 0600.  With http.debug_requests on, the same scan does
find caps: it is not blind.
"""

from __future__ import annotations

import re
import stat
import urllib.request

import pytest
from conftest import json_lines, make_tree, run_cli
from faultproxy import FaultProxy
from treecompare import differences

pytestmark = pytest.mark.slow

CAP = re.compile(r"URI:[A-Z0-9-]+:")


def caps_in(text: str) -> list[str]:
    return CAP.findall(text)


def mutable_dir(url: str) -> str:
    req = urllib.request.Request(url + "uri?t=mkdir", method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read().decode().strip()


def test_no_cap_in_any_output_or_log(grid, tmp_path):
    src = make_tree(tmp_path / "src", small=120, medium=2, large=1)
    (src / "long-link").symlink_to("x" * 200)  # a symlink target stored as its own object
    home = tmp_path / "home"
    result_file = tmp_path / "results" / "backups.txt"
    conf = tmp_path / "c.yaml"
    conf.write_text(
        "destination:\n"
        "  happy: 3\n"
        "  result:\n"
        "    print_to_stdout: false\n"
        f"    append_to_file: {result_file}\n"
        f"    append_to_lafs_dir: {mutable_dir(grid.url)}\n"
        "  pack:\n    max_file_size: 65536\n    target_size: 65536\n")
    lb = ["--url", grid.url, "-c", str(conf), "--noise"]
    outputs: dict[str, str] = {}

    def run(name: str, *args: str, code: int = 0) -> None:
        r = run_cli([*lb, *args], home)
        assert r.code == code, (name, r.err)
        outputs[name] = r.out + r.err

    run("backup 1", "backup", str(src))
    (src / "new.txt").write_text("changed\n")
    run("backup 2", "backup", str(src))
    run("check", "check")
    run("verify", "verify", "latest")
    run("diff", "diff", "1", "2", code=1)  # 1: differences found
    run("restore", "restore", "latest", "--target", str(tmp_path / "out"))
    assert differences(src, tmp_path / "out") == []
    run("cleanup", "cleanup", "--keep-last", "1")
    run("list (no --json)", "list")  # prints caps by design: scanned apart below

    # Failures whose gateway answers quote caps (as Tahoe's tracebacks do), at --noise too.
    def echo(method: str, path: str, n: int) -> str | None:
        return "500-echo" if method in ("GET", "POST") or (method == "PUT" and n % 2) else None

    latest = json_lines(run_cli(["--url", grid.url, "list", "--json"], home, check=True).out)[-1]["cap"]
    with FaultProxy(grid.url, echo) as proxy:
        fast = ["-o", "operation.retry.attempts=2", "-o", "operation.retry.delay=[0]"]
        r = run_cli(["--url", proxy.url, "-c", str(conf), "--noise", *fast, "restore", latest,
                     "--target", str(tmp_path / "out2")], home)
        assert r.code == 3, r.err
        outputs["restore through a failing gateway"] = r.out + r.err
        (src / "newer.txt").write_text("more\n")
        r = run_cli(["--url", proxy.url, "-c", str(conf), "--noise", *fast, "backup", str(src)], home)
        assert r.code == 3, r.err
        outputs["backup through a failing gateway"] = r.out + r.err
        assert any("UnrecoverableFileError" in o for o in outputs.values())  # the echo was seen
        assert proxy.injected("500-echo") >= 4

    # The recovery key: printed by 'key' alone, one line on stdout; kept in a 0600 file; nowhere else.
    k = run_cli(["--url", grid.url, "key"], home, check=True)
    assert k.out.startswith("lafs-backup-key-v1:") and k.out.count("\n") == 1 and k.err == ""
    (keyfile,) = (home / "state" / "lafs-backup" / "repositories").glob("*.key")
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    assert "made a repository on the grid" in outputs["backup 1"] and str(keyfile) in outputs["backup 1"]
    for name, text in outputs.items():
        assert "lafs-backup-key-v1:" not in text and k.out.strip() not in text, name
        if name.startswith("list"):
            continue
        assert caps_in(text) == [], f"{name} printed a cap: {caps_in(text)[:3]}"
        assert "Traceback" not in text or "UnrecoverableFileError" in text, name
    # 'list' is how a user gets the caps of their backups: it shows them, and nothing else does.
    assert caps_in(outputs["list (no --json)"])

    # Files that hold caps are 0600, and they are the only files that hold caps.
    holding = []
    for f in [*home.rglob("*"), *result_file.parent.rglob("*")]:
        if f.is_file() and caps_in(f.read_bytes().decode("latin-1")):
            holding.append(f)
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    names = {f.name for f in holding}
    assert "backups.txt" in names and any(n.startswith("entry-cache.") for n in names), names
    for f in home.rglob("*"):
        if f.is_file() and (f.name.startswith("entry-cache.") or f.parent.name == "queues"):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_insecure_request_logging_does_show_caps(grid, tmp_path):
    """The scan above can fail: with debug_requests on, request URLs (and their caps) are logged."""
    src = make_tree(tmp_path / "src", small=10, medium=1, large=0)
    home = tmp_path / "home"
    lb = ["--url", grid.url, "-o", "destination.result.print_to_stdout=false", "--noise"]
    r = run_cli([*lb, "backup", str(src)], home, check=True)
    assert caps_in(r.out + r.err) == []
    r = run_cli([*lb, "-o", "http.debug_requests=true", "restore", "latest", "--target",
                 str(tmp_path / "out")], home, check=True)
    assert caps_in(r.err), "debug_requests should log request URLs with their caps"
    listed = json_lines(run_cli(["--url", grid.url, "list", "--json"], home, check=True).out)
    assert listed and all(b["cap"].startswith("URI:DIR2-CHK:") for b in listed)
