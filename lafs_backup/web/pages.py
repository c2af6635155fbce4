"""What each address of the dashboard answers: pages rendered from the backups' records and the
reader, and downloads written by the same code as ``dump``.

Backups are addressed by their short id (as ``list`` prints it) and paths by
their bytes: no cap reaches a page or an address.  A directory page reads
that directory alone: the root and the directories on its path, from the few
index chunks that hold them (``read.locate``), not the whole index; a tar of
a directory loads the chunks that hold its subtree.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import IO, Awaitable, Callable, Mapping, Sequence

from twisted.internet.interfaces import IReactorTime

from ..errors import SnapshotError
from ..history import Backup, iso
from ..names import shown
from ..read.browse import TYPE_NAMES, Browser, Item
from ..read.dump import write_file, write_tar
from ..read.locate import Paths
from ..read.reader import Reader
from ..read.remake import Remaker, lookup_in
from ..read.standing import StatusReport, leases
from ..report import plural, size_text
from ..store.entry import KIND_DIR, KIND_FILE
from . import overview
from .html import Table, backup_url, esc, href, link, name_text, page, select
from .svg import Point, sizes_chart

log = logging.getLogger(__name__)

#: Entries a directory page shows at once (``?from=N`` pages through the rest).
PAGE_ROWS = 1000


@dataclass(frozen=True)
class Page:
    """An HTML answer."""

    body: bytes
    code: int = 200


@dataclass(frozen=True)
class Download:
    """A streamed answer: ``write(out)`` writes its bytes; False when they turned out wrong (the
    server then breaks the connection, so the browser does not keep a bad file)."""

    filename: str
    content_type: str
    size: int | None
    write: Callable[[IO[bytes]], Awaitable[bool]]


class NotFound(Exception):
    """What the address names is not there."""


Query = Mapping[str, Sequence[str]]


def one(query: Query, key: str) -> str | None:
    """A query parameter's first value (None: absent or empty)."""
    values = query.get(key) or []
    return values[0] if values and values[0] else None


class Dashboard:
    """The pages, over the backups ``listing()`` returns (asked again after ``refresh`` seconds),
    the reader and browser the tree pages share, and ``fresh_reader()`` for a diff (each its own).

    ``status()``: the status report (``read.status.gather`` at the clock's time).  ``remaker``
    makes a derived file downloaded again, from its inputs in the same backup (None: it cannot be
    downloaded).
    """

    def __init__(self, clock: IReactorTime, listing: Callable[[], Awaitable[list[Backup]]], reader: Reader,
                 browser: Browser, fresh_reader: Callable[[], Reader], lease_days: float | None,
                 status: Callable[[], Awaitable[StatusReport]], refresh: float = 30.0,
                 remaker: Remaker | None = None) -> None:
        self.clock = clock
        self._listing = listing
        self.reader = reader
        self.browser = browser
        self.fresh_reader = fresh_reader
        self.lease_days = lease_days
        self.status = status
        self._refresh = refresh
        self._backups: list[Backup] | None = None
        self._fetched = 0.0
        self.paths = Paths(browser)
        self.remaker = remaker

    async def backups(self) -> list[Backup]:
        """Every finished backup, oldest first (listed again once ``refresh`` seconds have passed)."""
        now = self.clock.seconds()
        if self._backups is None or now - self._fetched > self._refresh:
            self._backups = sorted(await self._listing(), key=lambda b: (b.ts, b.id))
            self._fetched = now
        return self._backups

    async def backup(self, short_id: str) -> Backup:
        for b in await self.backups():
            if b.short_id == short_id and b.sealed:
                raise NotFound(f"backup {short_id} is sealed: beyond this host's window (repository.window), only "
                               "the recovery key reads it")
            if b.short_id == short_id:
                return b
        raise NotFound(f"no backup {short_id} is recorded")

    # -- routing ----------------------------------------------------------------------------------
    async def answer(self, path: bytes, query: Query) -> Page | Download:
        """The answer for the (unquoted) address ``path``; raises :class:`NotFound`."""
        parts = path.split(b"/", 4)
        if path in (b"/", b""):
            return Page(await overview.status(self))
        if path == b"/backups":
            return Page(await self.backups_page(query))
        if path == b"/leases":
            return Page(await overview.leases(self))
        if path == b"/diff":
            return Page(await overview.diff(self, one(query, "a"), one(query, "b")))
        if len(parts) >= 4 and parts[1] == b"b" and parts[3] in (b"tree", b"file", b"raw", b"tar"):
            b = await self.backup(parts[2].decode("ascii", "replace"))
            rel = b"/".join(p for p in (parts[4] if len(parts) > 4 else b"").split(b"/") if p and p != b".")
            view = parts[3].decode()
            try:
                item = await self.lookup(b.cap, rel, whole=view == "tar")
            except SnapshotError as e:
                raise NotFound(f"{shown(rel) or '/'}: {e.details.get('problem') or e}")
            if view == "raw":
                return self.file_download(b, item)
            if view == "tar":
                return self.tar_download(b, item)
            if item.kind == KIND_DIR and view == "tree":
                start = one(query, "from")
                return Page(await self.tree_page(b, item, int(start) if start and start.isdigit() else 0))
            return Page(self.file_page(b, item))
        raise NotFound("no such page")

    async def lookup(self, cap: str, rel: bytes, whole: bool = False) -> Item:
        """The entry at ``rel`` of snapshot ``cap`` (``whole``: its subtree will be read, for a tar),
        found through the few index chunks on its path where that works (``read.locate``).
        Raises :class:`SnapshotError`."""
        return await self.paths.lookup(cap, rel, below=whole)

    # -- the list of backups ----------------------------------------------------------------------
    async def backups_page(self, query: Query) -> bytes:
        everything = await self.backups()
        host, source, tag = one(query, "host"), one(query, "source"), one(query, "tag")
        chosen = [b for b in everything if (host is None or (b.host or "") == host)
                  and (source is None or b.source_text == source) and (tag is None or tag in b.tags)]
        ends = {x.id: x.expires for x in leases(everything, self.lease_days)}
        form = ('<form class="filters" method="get" action="/backups">'
                + select("host", "host", [(h, h or "(none)") for h in sorted({b.host or "" for b in everything})],
                         host)
                + select("source", "source", [(s, s) for s in sorted({b.source_text for b in everything})], source)
                + select("tag", "tag", [(t, t) for t in sorted({t for b in everything for t in b.tags})], tag)
                + '<button type="submit">Show</button></form>')
        table = Table(["id", "gen", "time", "host", "source", "tags", "files", "read", "added", "leases end"])
        for b in reversed(chosen):
            s = b.summary
            end = ends.get(b.short_id)
            table.rows.append([
                link(backup_url(b.short_id, "tree"), f"<code>{esc(b.short_id)}</code>"), ("n", esc(b.generation)),
                esc(iso(b.ts)), esc(b.host or "-"), esc(b.source_text), esc(", ".join(b.tags)),
                ("n", esc(s.get("files", "-"))), ("n", _size(s.get("bytes_read"))),
                ("n", _size(s.get("bytes_uploaded"))), esc(iso(end) if end is not None else "never")])
        points = [Point(b.ts, int(b.summary.get("bytes_uploaded") or 0), f"{b.short_id} {iso(b.ts)}")
                  for b in chosen if isinstance(b.summary.get("bytes_uploaded"), int)]
        chart = f"<h2>Bytes added by each backup</h2>{sizes_chart(points)}" if points else ""
        shown = f"{plural(len(chosen), 'backup')}" + (f" of {len(everything)}" if len(chosen) != len(everything)
                                                        else "")
        return page("Backups", f"<h1>Backups</h1>{form}<p>{esc(shown)}</p>{table.render()}{chart}")

    # -- a backup's tree --------------------------------------------------------------------------
    def _crumbs(self, b: Backup, item: Item) -> str:
        out = [link(href("/backups"), "backups"), link(backup_url(b.short_id, "tree"), f"<code>{esc(b.short_id)}</code>")]
        parts = [p for p in item.path.split(b"/") if p]
        for i, part in enumerate(parts):
            out.append(link(backup_url(b.short_id, "tree", b"/".join(parts[:i + 1])), name_text(part)))
        return '<p class="crumbs">' + " / ".join(out) + "</p>"

    def _about(self, b: Backup) -> str:
        return (f'<p class="muted">backup <code>{esc(b.short_id)}</code> (generation {esc(b.generation)}) of '
                f"{esc(b.source_text)} on {esc(b.host or '-')}, {esc(iso(b.ts))}"
                + (f"; tags: {esc(', '.join(b.tags))}" if b.tags else "") + "</p>")

    async def tree_page(self, b: Backup, item: Item, start: int = 0) -> bytes:
        children = sorted(await self.browser.children(item), key=lambda c: (c.kind != KIND_DIR, c.path))
        table = Table(["name", "type", "size", "mode", "modified"])
        for c in children[start:start + PAGE_ROWS]:
            name = name_text(c.node.name) + ("/" if c.kind == KIND_DIR else "")
            view = "tree" if c.kind == KIND_DIR else "file"
            table.rows.append([link(backup_url(b.short_id, view, c.path), name),
                               esc(TYPE_NAMES.get(c.kind, c.kind)),
                               ("n", esc(size_text(c.size())) if c.kind == KIND_FILE else ""),
                               f"<code>{c.st_mode() & 0o7777:04o}</code>", esc(_mtime(c))])
        more = []
        if start > 0:
            more.append(link(href(backup_url(b.short_id, "tree", item.path), {"from": str(max(0, start - PAGE_ROWS))}),
                             "previous"))
        if start + PAGE_ROWS < len(children):
            more.append(link(href(backup_url(b.short_id, "tree", item.path), {"from": str(start + PAGE_ROWS)}),
                             "next"))
        title = name_text(item.path) if item.path else "/"
        count = f"{plural(len(children), 'entry', 'entries')}" + (
            f", {start + 1}–{min(len(children), start + PAGE_ROWS)} shown" if len(children) > PAGE_ROWS else "")
        body = (f"<h1>{title}</h1>{self._about(b)}{self._crumbs(b, item)}"
                f"<p>{esc(count)} · {link(backup_url(b.short_id, 'tar', item.path), 'download as tar')}</p>"
                f"{table.render()}<p>{' · '.join(more)}</p>")
        return page(f"{b.short_id} {shown(item.path) or '/'}", body)

    def file_page(self, b: Backup, item: Item) -> bytes:
        facts = item.json()
        table = Table(["", ""])
        facts["mode"] = f"{facts['mode']:04o}"
        facts["modified"] = _mtime(item)
        facts.pop("mtime_ns", None)
        facts["path"] = shown(item.path)
        for key, value in facts.items():
            if key != "path_b64":
                table.rows.append([esc(key), f"<code>{esc(value)}</code>"])
        actions = ""
        if item.kind == KIND_FILE:
            actions = f"<p>{link(backup_url(b.short_id, 'raw', item.path), 'download')} ({esc(size_text(item.size()))})</p>"
        body = (f"<h1>{name_text(item.node.name)}</h1>{self._about(b)}{self._crumbs(b, item)}{actions}"
                f"{table.render()}")
        return page(f"{b.short_id} {shown(item.path)}", body)

    # -- downloads --------------------------------------------------------------------------------
    def file_download(self, b: Backup, item: Item) -> Download:
        if item.kind != KIND_FILE:
            raise NotFound(f"{shown(item.path) or '/'} is a {TYPE_NAMES.get(item.kind, item.kind)}, not a file")

        async def write(out: IO[bytes]) -> bool:
            content = await write_file(self.reader, item, out, self._remaker_for(b))
            if content.matches is False:
                log.warning("web: %s %r: %s", b.short_id, item.path, content.mismatch)
            return content.matches is not False

        return Download(os.fsdecode(item.node.name), "application/octet-stream", item.size(), write)

    def tar_download(self, b: Backup, item: Item) -> Download:
        if item.kind != KIND_DIR:
            raise NotFound(f"{shown(item.path)} is not a directory")
        name = os.fsdecode(item.node.name) if item.path else b.short_id

        async def write(out: IO[bytes]) -> bool:
            def problem(path: bytes, message: str) -> None:
                log.warning("web: %s tar: %r: %s", b.short_id, path, message)

            await write_tar(self.browser, self.reader, item, out, problem, lambda k, m: None, self._remaker_for(b))
            return True

        return Download(name + ".tar", "application/x-tar", None, write)

    def _remaker_for(self, b: Backup) -> Remaker | None:
        """What makes the derived files of backup ``b`` again (their inputs found in it)."""
        return self.remaker.at(lookup_in(self.paths, b.cap)) if self.remaker is not None else None


def _size(n: object) -> str:
    return esc(size_text(n)) if isinstance(n, int) else "-"


def _mtime(item: Item) -> str:
    ns = item.int_meta("mtime_ns")
    return iso(ns / 1e9) if ns else "-"
