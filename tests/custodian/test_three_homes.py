"""Issue 29's whole story on the real grid, with three homes on this machine (the backup host, the
custodian, a new machine) and the storage servers' share files read back:

1. the host makes a sealed repository and three backups, deleting a large file between the first and
   the second; the custodian runs;
2. the compromised host, holding only its own files and its grid access, can neither read the deleted
   file nor list the first backup;
3. it attacks: it asks to forget the three backups, unlinks every record and manifest it can reach, adds
   ten fake backups dated before the real ones, and stops renewing;
4. the custodian says so at once (exit code and status file), still keeps all three with the forgets
   pending, after one full pass holds a lease of its own on every share of every object of all three,
   and never held a cap that reads any of them;
5. the owner cancels the forgets with the recovery key, and a new machine with the recovery key alone
   restores all three backups identically.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from allmydata.storage.common import si_a2b
from capscan import caps_on_disk, reach
from conftest import json_lines, run_cli
from test_leases import ours
from treecompare import differences

from lafs_backup.custodian.keyfile import read_key
from lafs_backup.grid.local import GridSpec, LocalGrid
from lafs_backup.repository import Record, RepoKey, record_name, seal_entry

pytestmark = pytest.mark.slow


def web(url: str, cap: str, method: str = "GET", query: str = "t=json", data: bytes | None = None) -> bytes:
    req = urllib.request.Request(f"{url}uri/{urllib.parse.quote(cap)}{'?' + query if query else ''}",
                                 data=data, method=method)
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read()


def children(url: str, cap: str) -> dict:
    return json.loads(web(url, cap))[1]["children"]


def manifest_of(url: str, snap: str) -> list[dict]:
    return [json.loads(line) for line in web(url, snap, "POST", "t=stream-manifest").decode().splitlines()
            if line.startswith("{")]


def test_a_compromised_host_can_neither_read_nor_destroy_the_history(grid, tmp_path: Path):
    lb = ["--url", grid.url]
    host, cust, new, usb = (tmp_path / n for n in ("host", "custodian", "new", "usb"))
    usb.mkdir()
    rec, ckey = usb / "recovery.key", usb / "custodian.key"
    furl = LocalGrid(GridSpec(str(grid.dir))).furl()
    run_cli([*lb, "init", "--sealed", "--recovery-key", str(rec), "--custodian-key", str(ckey), "--introducer", furl],
            host, check=True)
    custodian = [*lb, "custodian", "--key", str(ckey)]

    # 1. Three backups, the large file deleted between the first and the second; a copy of each state.
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    big = b"deleted between the first and the second backup\n" + bytes(range(256)) * 6000
    (src / "a" / "big.bin").write_bytes(big)
    states = []
    for i in range(3):
        (src / "a" / "night.txt").write_text(f"night {i}\n" * 40)
        (src / f"added-{i}.txt").write_text(f"file {i}\n" * 30)
        if i == 1:
            (src / "a" / "big.bin").unlink()
        run_cli([*lb, "backup", str(src)], host, check=True)
        states.append(tmp_path / f"state-{i}")
        subprocess.run(["cp", "-a", str(src), str(states[-1])], check=True)
    r = run_cli([*custodian, "check"], cust)
    assert r.code in (0, 1), r.err + r.out
    real = json_lines(run_cli([*lb, "--repo", str(rec), "--json", "list"], new, check=True).out)
    assert len(real) == 3
    roots = [b["cap"] for b in real]

    # 2. The compromised host: nothing it holds reaches the first backup's root or the deleted file's bytes.
    r = run_cli([*lb, "ls", real[0]["id"]], host)
    assert r.code != 0 and "sealed" in r.err
    seen, contents = reach(grid.url, caps_on_disk(host))
    assert not seen & set(roots[:2])
    assert not any(big[:4096] in data for data in contents)

    # 3. The attack, with the host's files and grid access only.
    attack = time.time()
    run_cli([*lb, "cleanup", *[b["id"] for b in real]], host, check=True)  # forget requests, records unlinked
    hostkey = RepoKey.decode(next((host / "state").rglob("*.key")).read_text())
    inbox = json.loads(next((host / "state").rglob("inbox.*.json")).read_text())["inbox"]
    writers = children(grid.url, hostkey.writecap)["writers"][1]["rw_uri"]
    for d in [e[1]["rw_uri"] for e in children(grid.url, writers).values()] + \
             [e[1]["rw_uri"] for n, e in children(grid.url, inbox).items() if n != "forget"]:
        for name in children(grid.url, d):
            web(grid.url, f"{d}/{name}", "DELETE", "")
    fakes = {}
    for i in range(10):
        ts = real[0]["timestamp"] - 86400 * (30 + i)
        fake = Record(f"URI:LIT:{'a' * 20}{i}", "attacker", b"/fake", ts, 1000 + i)
        name = record_name(ts, 1000 + i)
        fakes[name] = seal_entry(hostkey, fake.cap, fake.metadata(), "fakes", name)
    with urllib.request.urlopen(urllib.request.Request(f"{grid.url}uri?t=mkdir", method="POST")) as made:
        fake_dir = made.read().decode()
    web(grid.url, fake_dir, "POST", "t=set_children", json.dumps(
        {n: ["filenode", {"ro_uri": c, "metadata": m}] for n, (c, m) in fakes.items()}).encode())
    web(grid.url, f"{writers}/fakes", "PUT", "t=uri", fake_dir.encode())

    # 4. The custodian notices at its next reading, keeps all three with the forgets pending, and renews.
    r = run_cli([*custodian, "check", "--json"], cust)
    assert r.code == 2, r.err + r.out
    status = json_lines(r.out)[-1]
    assert {a["topic"] for a in status["alerts"]} >= {"vanished", "forget"}
    kept = [k["backup"] for k in status["kept"]]
    assert len(kept) == 3 and sorted(f["backup"] for f in status["pending_forgets"]) == sorted(kept)
    state_dir = next(p.parent for p in cust.rglob("status.json"))
    assert json.loads((state_dir / "status.json").read_text())["code"] == 2
    r = run_cli([*custodian, "pass"], cust)  # (its exit code is the report's level: critical, as above)
    assert r.code == 2 and re.search(r"renewed (\d+) of \1 objects of 3 backups", r.err), r.err
    key = read_key(str(ckey))
    secret = tmp_path / "lease-secret"
    secret.write_text(key.secret)
    objects = {o["storage-index"] for snap in roots for o in manifest_of(grid.url, snap) if o.get("storage-index")}
    assert len(objects) > 5
    for name in objects:
        ends = ours(grid, secret, si_a2b(name.encode()))  # (share file -> expiries of the custodian's leases)
        assert len(ends) == 3 and all(e and max(e) > attack + 30 * 86400 for e in ends.values()), name
    # It never held a cap that reads a backup: none of its files names an object any of the three reach.
    readable = {o["cap"] for snap in roots for o in manifest_of(grid.url, snap) if o.get("cap")}
    assert readable and not caps_on_disk(cust) & readable

    # 5. The owner cancels the forgets; the custodian honours the cancel at its next reading.
    mine = json_lines(run_cli([*lb, "--repo", str(rec), "--json", "list"], new, check=True).out)
    assert {b["id"] for b in real} <= {b["id"] for b in mine} and len(mine) == 13  # (the ten fakes list too)
    run_cli([*lb, "--repo", str(rec), "custodian", "cancel", *[b["id"] for b in real]], new, check=True)
    r = run_cli([*custodian, "check", "--json"], cust)
    status = json_lines(r.out)[-1]
    assert status["pending_forgets"] == [] and len(status["kept"]) == 3
    for b, state in zip(real, states):
        out = tmp_path / f"restored-{b['generation']}"
        run_cli([*lb, "--repo", str(rec), "restore", b["id"], "--target", str(out)], new, check=True)
        assert differences(state, out) == []
    assert (tmp_path / f"restored-{real[0]['generation']}" / "a" / "big.bin").read_bytes() == big
    shutil.rmtree(states[0])
