"""The grids this machine knows, each by an id made from its storage servers: entry caches and recovery
keys are named by it, so a grid is one grid however its gateway is reached.

A gateway tells which storage servers it knows (``GET /?t=json``: each
server's node id, a public key's hash, stable for the server's life; no
secret).  The first time a set of servers is seen, the grid gets the id
``g`` + a digest of that set.  Later, a gateway belongs to a known grid when
more than half of the servers it knows now are that grid's, and the servers
new to it are added: so a gateway that knows only some servers yet (just
started), a grid that grows or replaces its servers a few at a time, and
another URL or port of the same gateway all come to the same id.  A grid
with one server in common with another (a server announced to two
introducers) is still a grid of its own.

The registry (``grids.json`` in the state directory, mode 0600) is written
whole and renamed into place, under a lock, and only when it changes.  It
also remembers digests of the gateway URLs that led to each grid, so that a
command that asks no gateway (``backup --dry-run``, ``--queue-only``) still
finds the grid's cache.  If it is lost, a grid whose servers have not
changed gets its old id again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

#: The registry's format version.
VERSION = 1


@dataclass(frozen=True)
class Grid:
    """A grid this machine knows: its id, its storage servers' node ids, and digests of the gateway
    URLs that last led to it."""

    id: str
    servers: frozenset[str]
    urls: frozenset[str] = frozenset()


def grid_id(servers: Iterable[str]) -> str:
    """The id of a grid first seen with ``servers`` (node ids): ``g`` and 16 hex digits."""
    text = "\n".join(sorted(set(servers)))
    return "g" + hashlib.sha256(b"lafs-backup grid\0" + text.encode()).hexdigest()[:16]


def url_digest(url: str) -> str:
    """How the registry remembers a gateway URL (which may carry a password): a digest."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def identify(servers: Iterable[str], known: Sequence[Grid]) -> Grid:
    """The grid a gateway that knows ``servers`` is on: the known grid holding more than half of them
    (the one holding most, if ever two do), with the others added; else a new grid.

    Pure: the caller saves what changed.  Raises ``ValueError`` for no server
    (a gateway that knows none cannot tell which grid it is on).
    """
    seen = frozenset(servers)
    if not seen:
        raise ValueError("no storage server")
    best = max(known, key=lambda g: len(g.servers & seen), default=None)
    if best is not None and 2 * len(best.servers & seen) > len(seen):
        return dataclasses.replace(best, servers=best.servers | seen)
    new = grid_id(seen)
    taken = {g.id for g in known}
    n = 1
    while new in taken:  # (a set seen before whose grid has lost half of it since: not that grid)
        n += 1
        new = grid_id([*seen, f"#{n}"])
    return Grid(new, seen)


def with_url(known: Sequence[Grid], grid: Grid, url: str) -> list[Grid]:
    """``known`` with ``grid`` in it (replacing its older self), remembered as where ``url`` leads
    (and no other grid as where it leads)."""
    digest = url_digest(url)
    out = [dataclasses.replace(g, urls=g.urls - {digest}) for g in known if g.id != grid.id]
    return [*out, dataclasses.replace(grid, urls=grid.urls | {digest})]


def by_url(known: Sequence[Grid], url: str) -> Grid | None:
    """The grid ``url`` led to last (None: not known)."""
    digest = url_digest(url)
    return next((g for g in known if digest in g.urls), None)


# -- the file --------------------------------------------------------------------------------------

def load(path: str) -> list[Grid]:
    """The grids recorded in ``path`` (none: no file, or not one this version reads)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc: Any = json.load(f)
        return [Grid(str(g["id"]), frozenset(map(str, g["servers"])), frozenset(map(str, g.get("urls", []))))
                for g in doc["grids"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def save(path: str, known: Sequence[Grid]) -> None:
    """Write the registry whole (mode 0600), synced and renamed into place."""
    doc = {"version": VERSION, "grids": [{"id": g.id, "servers": sorted(g.servers), "urls": sorted(g.urls)}
                                         for g in sorted(known, key=lambda g: g.id)]}
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for one read and one write: a blocking wait is short
        yield
    finally:
        os.close(fd)


def record(path: str, servers: Iterable[str], url: str) -> Grid:
    """The grid a gateway at ``url`` that knows ``servers`` is on (see :func:`identify`), recorded
    in the registry at ``path`` (written only when something changed).  Blocking file I/O: call it
    off the reactor thread.  Raises ``ValueError`` for no server."""
    seen = list(servers)
    with _locked(path):
        known = load(path)
        grid = identify(seen, known)
        updated = with_url(known, grid, url)
        if sorted(updated, key=lambda g: g.id) != sorted(known, key=lambda g: g.id):
            save(path, updated)
    return next(g for g in updated if g.id == grid.id)
