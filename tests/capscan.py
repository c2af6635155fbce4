"""Every cap a home's files hold (keys decoded), and every cap and byte reachable from them through the
grid: what a thief of those files could read."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from lafs_backup.repository import RepoKey

CAP = re.compile(rb"URI:[A-Z0-9-]+:[A-Za-z0-9:_-]+")


def _get(url: str, cap: str, query: str = "") -> bytes | None:
    try:
        with urllib.request.urlopen(f"{url}uri/{urllib.parse.quote(cap)}{query}", timeout=60) as r:
            return r.read()
    except urllib.error.HTTPError:
        return None


def reach(url: str, start: set[str]) -> tuple[set[str], list[bytes]]:
    """Every cap reachable through directories from ``start``, and the bytes of every file among them
    that the gateway reads (verify caps read nothing)."""
    seen: set[str] = set()
    contents: list[bytes] = []
    todo = list(start)
    while todo:
        cap = todo.pop()
        if cap in seen:
            continue
        seen.add(cap)
        if cap.startswith("URI:DIR2") or cap.startswith("URI:DIR2-"):
            listing = _get(url, cap, "?t=json")
            if listing is None:
                continue
            try:
                kids = json.loads(listing)[1]["children"]
            except (ValueError, KeyError, IndexError, TypeError):
                continue
            for _, info in kids.values():
                todo += [c for c in (info.get("rw_uri"), info.get("ro_uri")) if c]
                todo += [m.decode() for m in CAP.findall(json.dumps(info.get("metadata") or {}).encode())]
        elif "Verifier" not in cap:
            data = _get(url, cap)
            if data is not None:
                contents.append(data)
                todo += [m.decode() for m in CAP.findall(data)]
    return seen, contents


def caps_on_disk(home: Path) -> set[str]:
    """Every cap in every file below ``home``, keys (base64) decoded."""
    out: set[str] = set()
    for p in home.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            out |= {m.decode() for m in CAP.findall(data)}
            for k in re.findall(rb"lafs-backup-key-v[12]:[A-Za-z0-9_-]+", data):
                key = RepoKey.decode(k.decode())
                out |= {c for c in (key.writecap, key.custodian) if c}
    return out


