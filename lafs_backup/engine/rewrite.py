"""Rewriting snapshots without some paths (``rewrite --exclude``): new snapshots that reuse every
untouched object and directory, recorded with their originals' time, host, source and tags.

A snapshot is walked from its root through the reader (directories from its index, where it has
one).  An entry the globs match is left out with all it holds; a directory that lost something is
made again (a Tahoe directory, or in a tree kept in the index alone its new record, named by its
body), and so is each directory above it: everything else keeps its cap.  The new index reuses
every chunk of the old one that holds no record of a changed or removed directory; the others are
written again without those records, the changed directories' new records in their place.  The new
``objects`` directory links only the packs and objects the kept files use, so ``check`` renews
exactly them: what only the removed files used is no longer renewed, and the storage servers drop
it once its leases lapse (immutable shares cannot be deleted).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from ..derive import recipe
from ..errors import GatewayError, SnapshotError, UsageError
from ..history import Backup
from ..protocols import GatewayLike
from ..read.pick import IN, OUT, Pick
from ..read.reader import Reader
from ..report import Reporter
from ..store.index import BadIndex, chunk_bytes
from ..store.protocols import WriterLike
from ..store.snapshot import (INDEX, INDEX_TREE, OBJECTS, TREE, BadSnapshot, body_names, canonical_json, dir_id, index_body,
                              index_caps, is_dir_id, objects_body)
from ..store.store import Writer
from . import prune

if TYPE_CHECKING:
    from ..db.local_history import LocalHistory
    from ..repository import Repository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Removed:
    """A path a rewrite leaves out (from the snapshot's root): a file (its size), or a directory
    (the files it holds, and their bytes)."""

    path: bytes
    is_dir: bool
    size: int
    files: int


@dataclass
class Rewritten:
    """What rewriting one snapshot made: the new snapshot's cap (None: nothing matched, or a dry
    run), what it left out, and what it wrote."""

    cap: str | None
    removed: list[Removed] = field(default_factory=list)
    dirs_made: int = 0
    chunks_made: int = 0
    chunks_reused: int = 0
    objects_dropped: int = 0

    @property
    def removed_bytes(self) -> int:
        return sum(r.size for r in self.removed)

    @property
    def removed_files(self) -> int:
        return sum(r.files for r in self.removed)


class Rewriter:
    """Rewrites snapshots read through ``reader`` without what ``pick``'s ``--exclude`` layers match,
    storing what changed through ``gw`` (a dry run stores nothing)."""

    def __init__(self, gw: GatewayLike, reader: Reader, pick: Pick, dry_run: bool = False) -> None:
        self.gw = gw
        self.reader = reader
        self.pick = pick
        self.dry_run = dry_run
        self.out: WriterLike = Writer(gw)

    async def snapshot(self, cap: str) -> Rewritten:
        """Rewrite snapshot ``cap``; raises :class:`SnapshotError` for one that cannot be read."""
        tree, _ = await self.reader.root(cap)
        walk = _Walk(self, tree_in_index=is_dir_id(tree.cap))
        try:
            new_tree = await walk.directory(tree.cap, [])
        except BadSnapshot as e:
            raise SnapshotError(what="(given)", problem=str(e))
        walk.check_recipes()
        done = Rewritten(None, walk.removed, walk.dirs_made)
        if new_tree == tree.cap or self.dry_run:
            return done
        listing = await self.gw.get_json(cap)
        try:
            children = dict(listing[1]["children"])
        except (IndexError, KeyError, TypeError, ValueError):
            raise SnapshotError(what="(given)", problem="its root is not a directory listing")
        edges = {e.key: e for e in prune.edges_of(listing)}
        root = edges[TREE]
        meta = dict(root.metadata)
        if is_dir_id(tree.cap):
            meta[INDEX_TREE] = new_tree
            edges[TREE] = prune.Edge(TREE, root.name, root.ntype, root.cap, meta)
        else:
            edges[TREE] = root.with_cap(new_tree)
        if OBJECTS in children:
            objects = await self._objects(edges[OBJECTS].cap, walk.used, done)
            if objects is None:
                del edges[OBJECTS]
            else:
                edges[OBJECTS] = edges[OBJECTS].with_cap(objects)
        if INDEX in children:
            index = await self._index(edges[INDEX].cap, walk, done)
            if index is None:
                if is_dir_id(tree.cap):
                    raise SnapshotError(what="(given)", problem="its index, which alone holds its directories, "
                                                                "could not be read whole")
                del edges[INDEX]
            else:
                edges[INDEX] = edges[INDEX].with_cap(index)
        done.cap = await self.out.mkdir(canonical_json({k: e.json() for k, e in edges.items()}))
        return done

    async def _objects(self, cap: str, used: set[str], done: Rewritten) -> str | None:
        """The new ``objects`` directory: the old one's links the kept files use (None: none)."""
        linked = {e.key: e.cap for e in prune.edges_of(await self.gw.get_json(cap))}
        kept = prune.objects_kept(linked, used)
        if kept is None:
            return cap
        done.objects_dropped = len(linked) - len(kept[0]) - len(kept[1])
        if not (kept[0] or kept[1]):
            return None
        return await self.out.mkdir(objects_body(*kept))

    async def _index(self, cap: str, walk: "_Walk", done: Rewritten) -> str | None:
        """The new index directory: each old chunk kept or written again without the records of
        directories the new tree does not hold (None: a chunk could not be read)."""
        remade = dict(walk.remade)
        chunks: list[str] = []
        for chunk in index_caps(await self.gw.get_json(cap)):
            try:
                records = await self.reader.chunk_records(chunk)
            except (BadIndex, GatewayError) as e:
                log.warning("the rewritten snapshot gets no index: %s", e if isinstance(e, BadIndex) else e.reason)
                return None
            kept = prune.chunk_kept(records, walk.live, remade)
            for old, _, _ in records:
                remade.pop(old, None)  # (placed once)
            if kept is None:
                chunks.append(chunk)
                done.chunks_reused += 1
            elif kept:
                chunks.append(await self._chunk(kept, done))
        rest = [rec for recs in remade.values() for rec in recs]
        if rest:  # directories the old index did not hold (it held only some)
            chunks.append(await self._chunk(rest, done))
        if not chunks:
            return None
        return await self.out.mkdir(index_body(chunks))

    async def _chunk(self, records: Sequence[tuple[str, bytes, bytes | None]], done: Rewritten) -> str:
        raw = chunk_bytes([[c, b, n if n is not None else body_names(b)] for c, b, n in records])
        made, _ = await self.out.index_chunk(raw)
        done.chunks_made += 1
        return made


class _Walk:
    """One walk of a snapshot's tree: what it removes, the directories it makes again, every
    directory of the new tree (``live``), and the objects the kept files use."""

    def __init__(self, rw: Rewriter, tree_in_index: bool) -> None:
        self.rw = rw
        self.tree_in_index = tree_in_index
        self.removed: list[Removed] = []
        self.live: set[str] = set()
        self.used: set[str] = set()
        #: Old directory cap -> the (cap, body, names) records of what it became.
        self.remade: dict[str, list[tuple[str, bytes, bytes]]] = {}
        self.dirs_made = 0
        #: (input path, derived file) of each kept file stored as its recipe (``derive``).
        self.needed: list[tuple[bytes, bytes]] = []

    def check_recipes(self) -> None:
        """Refuse a rewrite that removes an input of a derived file it keeps: that file could no longer
        be made again.  Raises :class:`UsageError` naming the derived files."""
        removed = [(r.path, r.is_dir) for r in self.removed]
        orphans = sorted({out for inp, out in self.needed
                          if any(inp == p or (is_dir and inp.startswith(p + b"/")) for p, is_dir in removed)})
        if orphans:
            shown = ", ".join(o.decode("utf-8", "backslashreplace") for o in orphans[:5])
            more = f" and {len(orphans) - 5} more" if len(orphans) > 5 else ""
            raise UsageError(f"the rewrite would remove inputs of derived files it keeps ({shown}{more}), which "
                             "could then not be made again; exclude those files too")

    async def directory(self, cap: str, parts: list[bytes]) -> str:
        """The cap of directory ``cap`` (at ``parts``) in the new tree: its own when it loses nothing."""
        edges = prune.edges_of(await self.rw.reader.raw_listing(cap))
        kept: list[prune.Edge] = []
        changed = False
        for e in edges:
            path = [*parts, e.name]
            if self.rw.pick.state(b"/".join(path), e.is_dir, IN) == OUT:
                self.removed.append(await self._measure(e, path))
                changed = True
                continue
            if e.is_dir:
                new = await self.directory(e.cap, path)
                if new != e.cap:
                    e, changed = e.with_cap(new), True
            else:
                self.used.update(prune.objects_of(e, self.tree_in_index))
                self._recipe_inputs(e, b"/".join(path))
            kept.append(e)
        if not changed:
            self.live.add(cap)
            return cap
        body = prune.body_of(kept)
        if is_dir_id(cap):
            made = dir_id(body)
        elif self.rw.dry_run:
            made = "(dry run) " + dir_id(body)
        else:
            made = await self.rw.out.mkdir(body)
        self.dirs_made += 1
        self.live.add(made)
        self.remade.setdefault(cap, []).append((made, body, body_names(body)))
        log.debug("directory %r made again without what it lost", b"/".join(parts))
        return made

    def _recipe_inputs(self, e: prune.Edge, rel: bytes) -> None:
        try:
            made = recipe.of(e.metadata)
        except recipe.BadRecipe:
            return  # (its restore fails on its own; nothing a rewrite can lose)
        if made is not None:
            self.needed.extend((i.path.encode("utf-8"), rel) for i in made.inputs)

    async def _measure(self, e: prune.Edge, path: list[bytes]) -> Removed:
        """What a removed entry held: a file's size, or a directory's files and bytes."""
        rel = b"/".join(path)
        log.debug("removed: %r", rel)
        if not e.is_dir:
            return Removed(rel, False, e.size, 1)
        size = files = 0
        todo = [e.cap]
        while todo:
            for child in prune.edges_of(await self.rw.reader.raw_listing(todo.pop())):
                if child.is_dir:
                    todo.append(child.cap)
                else:
                    size, files = size + child.size, files + 1
        return Removed(rel, True, size, files)


async def record(repo: Repository, cache: LocalHistory | None, b: Backup, made: Rewritten, host: str) -> Backup:
    """Record ``made``, the rewrite of backup ``b``, with ``b``'s time, host, source, generation and
    tags, and a ``rewritten_from`` note (``b``'s short id) in its summary: in the repository, under
    this machine's (``host``) directory for the source, and, when ``b`` is this machine's own, in
    ``cache`` too.  Returns it as recorded."""
    import hashlib

    from ..repository import Record, record_name, volume_for, writer_name

    assert made.cap is not None
    summary: dict[str, Any] = {**b.summary, "rewritten_from": b.short_id, "removed_files": made.removed_files,
                               "removed_bytes": made.removed_bytes}
    name = f"{record_name(b.ts, b.generation)}.r{hashlib.sha256(made.cap.encode()).hexdigest()[:8]}"
    writer = writer_name(host, b.source, repo.key)  # (its newest volume this machine knows of, as a backup's record)
    placed = await repo.add(Record(made.cap, b.host or host, b.source, b.ts, b.generation, b.tags, summary,
                                   writer=volume_for(writer, cache.held(writer) if cache is not None else {}),
                                   name=name))
    if cache is not None and b.row is not None:
        row = cache.record_backup(b.generation, made.cap, b.source, b.name, b.ts, host=b.host, tags=b.tags,
                                  summary=summary)
        assert row.row is not None
        cache.set_recorded(row.row, placed.writer, placed.name)
        if placed.box is not None:  # (a sealed repository's: the custodian gets it with the next backup's)
            import json

            cache.set_sealed(row.row, json.dumps({"writer": placed.writer, "name": placed.name, "box": placed.box}))
    return Backup(f"{placed.writer}/{placed.name}", b.generation, made.cap, b.source, b.name, b.ts,
                  host=b.host, tags=b.tags, summary=summary, writer=placed.writer, record=placed.name)


def removed_json(r: Removed) -> dict[str, Any]:
    """A removed path as the ``--json`` listing shows it."""
    return {"path": r.path.decode("utf-8", "backslashreplace"), "dir": r.is_dir, "bytes": r.size, "files": r.files}


async def rewrite_backups(rep: Reporter, gw: GatewayLike, repo: Repository | None, cache: LocalHistory,
                          backups: Sequence[Backup], pick: Pick, host: str, dry_run: bool = False,
                          forget: bool = False, jobs: int = 4) -> dict[str, Any]:
    """Rewrite ``backups`` without what ``pick`` excludes, saying what each loses; record each new one
    (:func:`record`) and, with ``forget``, forget its original (``engine.forget``).  A backup where
    nothing matches is left alone.  A dry run stores and records nothing.  The caller holds the
    entry cache's lock.  Returns the summary."""
    from ..history import as_json
    from ..report import plural, size_text
    from .forget import forget as forgetting
    from .inbox import publish_manifest

    if not dry_run and repo is None:
        raise UsageError("there is no repository on this grid yet (no backup was made): nothing to rewrite")
    # A rerun after a kill between recording a rewrite and forgetting its original finds it recorded.
    recorded = {r.cap for r in await repo.records()} if repo is not None else set()
    reader = Reader(gw, jobs=jobs)
    rewriter = Rewriter(gw, reader, pick, dry_run)
    totals = {"rewritten": 0, "unchanged": 0, "forgotten": 0, "removed_files": 0, "removed_bytes": 0,
              "directories_made": 0, "index_chunks_made": 0, "index_chunks_reused": 0, "objects_unlinked": 0}
    try:
        for b in backups:
            info = as_json(b)
            what = f"{b.short_id} (generation {b.generation}, {info['time']}, {info['source']})"
            made = await rewriter.snapshot(b.cap)
            if not made.removed:
                totals["unchanged"] += 1
                rep.emit(f"unchanged: {what}: nothing in it matches; it is left alone",
                         {"type": "unchanged", "id": b.short_id, "generation": b.generation})
                continue
            for r in made.removed:
                shown = r.path.decode("utf-8", "backslashreplace") + ("/" if r.is_dir else "")
                held = f", {plural(r.files, 'file')}" if r.is_dir else ""
                rep.emit(f"{'would remove' if dry_run else 'removed'}: {shown} ({size_text(r.size)}{held})",
                         {"type": "removed", "id": b.short_id, "dry_run": dry_run, **removed_json(r)})
            totals["removed_files"] += made.removed_files
            totals["removed_bytes"] += made.removed_bytes
            if dry_run:
                rep.emit(f"(dry run) {what}: {plural(made.removed_files, 'file')} ({size_text(made.removed_bytes)}) "
                         "would be removed; nothing is written",
                         {"type": "would_rewrite", "id": b.short_id, "generation": b.generation,
                          "files": made.removed_files, "bytes": made.removed_bytes})
                continue
            assert repo is not None and made.cap is not None
            if made.cap in recorded:
                rep.emit(f"recorded already: {what}: its rewrite is recorded (by an earlier run)",
                         {"type": "recorded_already", "id": b.short_id, "generation": b.generation,
                          "cap": None if repo.key.sealed else made.cap})
            else:
                new = await record(repo, cache, b, made, host)
                recorded.add(made.cap)
                if not repo.key.sealed:  # (a sealed repository's rewrite goes to the custodian with the next backup)
                    await publish_manifest(rep, gw, repo.key.writecap, new)  # (when a custodian's inbox is configured)
                _said(rep, what, b, new, made, repo.key.sealed)
            totals["rewritten"] += 1
            totals["directories_made"] += made.dirs_made
            totals["index_chunks_made"] += made.chunks_made
            totals["index_chunks_reused"] += made.chunks_reused
            totals["objects_unlinked"] += made.objects_dropped
            if forget:
                await forgetting([b], cache, repo, gw, host)
                totals["forgotten"] += 1
                rep.emit(f"forgot: {b.short_id}", {"type": "forget", "id": b.short_id, "generation": b.generation,
                                                   "reason": "rewritten"})
    finally:
        reader.close()
    return totals


def _said(rep: Reporter, what: str, b: Backup, new: Backup, made: Rewritten, sealed: bool = False) -> None:
    """Say what rewriting ``b`` into ``new`` did (``sealed``: a sealed repository's, whose caps are not said)."""
    from ..report import plural, size_text

    rep.emit(f"rewritten: {what} -> {new.short_id}: {plural(made.removed_files, 'file')} "
             f"({size_text(made.removed_bytes)}) removed; {plural(made.dirs_made, 'directory', 'directories')} "
             f"and {plural(made.chunks_made, 'index chunk')} written, {made.chunks_reused} reused",
             {"type": "rewritten", "id": b.short_id, "new_id": new.short_id, "generation": b.generation,
              "cap": None if sealed else new.cap, "files": made.removed_files, "bytes": made.removed_bytes,
              "directories_made": made.dirs_made, "index_chunks_made": made.chunks_made,
              "index_chunks_reused": made.chunks_reused, "objects_unlinked": made.objects_dropped})
