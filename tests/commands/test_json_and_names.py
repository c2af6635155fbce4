"""Against the real local grid: printed names paste back into PATH arguments, and each command's
JSON has its documented shape (lines for streams, one document for a summary)."""

from __future__ import annotations

import json
import os

from conftest import json_lines, run_cli


def test_printed_names_paste_back_and_json_shapes(grid, lb, home, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    os.makedirs(os.fsencode(src) + b"/d\xe9j\xe0")
    contents = {b"caf\xe9.txt": b"latin-1 name\n", b"back\\slash": b"a backslash\n",
                b"d\xe9j\xe0/new\nline": b"a newline\n", b"plain.txt": b"plain\n"}
    for name, data in contents.items():
        with open(os.fsencode(src) + b"/" + name, "wb") as f:
            f.write(data)
    backup = lb("--json", "backup", str(src), check=True)
    assert json_lines(backup.out)[-1]["type"] == "summary"

    listed = lb("ls", "-R", "latest", "--source", str(src), check=True).out.splitlines()
    assert "caf\\xe9.txt" in listed and "back\\\\slash" in listed and "d\\xe9j\\xe0/new\\x0aline" in listed
    for line in listed:
        if line.endswith("/"):
            assert lb("ls", "latest", line, "--source", str(src), check=True).out
            continue
        raw = line.encode("utf-8")  # (as printed: ASCII escapes)
        got = run_cli(["--url", grid.url, "dump", "latest", line, "--source", str(src)], home, check=True).out
        assert got.encode() == contents[[k for k in contents if _shown(k) == raw][0]]
        assert lb("ls", "latest", line, "--source", str(src), check=True).out.strip() == line

    # list --json: a backup a line; a filter that matches nothing says so, and how many there are.
    rows = json_lines(lb("list", "--json", check=True).out)
    assert len(rows) == 1 and rows[0]["type"] == "backup" and rows[0]["id"]
    r = lb("list", "--host", "nosuch", check=True)
    assert "no backups match --host nosuch (1 backup recorded; see 'lafs-backup list')" in r.err

    verified = json.loads(lb("verify", "latest", "--source", str(src), "--json", check=True).out.splitlines()[-1])
    assert verified["id"] == rows[0]["id"] and verified["files_read"] == len(contents)

    config = json.loads(lb("--json", "dump-config", check=True).out)
    assert isinstance(config, dict) and "destination" in config
    status = json.loads(run_cli(["--json", "grid", "status", "--dir", str(grid.dir)], home, check=True).out)
    assert status["type"] == "grid" and len(status["connected_servers"]) >= status["happy"]

    dry = lb("cleanup", "--keep-last", "1", "--dry-run", check=True).out.splitlines()
    assert dry[0].startswith("(dry run) 0 backups would be forgotten, 1 kept")


def _shown(raw: bytes) -> bytes:
    from lafs_backup.names import shown

    return shown(raw).encode("utf-8")
