"""Builders the unit tests share: a small source tree, and an uploader over in-memory fakes."""

from __future__ import annotations


from lafs_backup.backup.indexer import Indexer
from lafs_backup.backup.source import LocalSource
from lafs_backup.backup.upload import Settings, Uploader
from lafs_backup.filters import compile_rules
from lafs_backup.report import Reporter
from lafs_backup.store.store import Store, StoreSettings


def tree(root, dirs=3, files=4):
    for d in range(dirs):
        sub = root / f"d{d}" / "deeper"
        sub.mkdir(parents=True)
        for f in range(files):
            (sub / f"f{f}.txt").write_text(f"file {d}/{f} " * 20)
            (root / f"d{d}" / f"g{f}.txt").write_text(f"other {d}/{f} " * 30)
    (root / "link").symlink_to("d0")
    return root


def uploader(root, gw, cache, window=4000, tree="tahoe", **indexing):
    """An uploader of ``root``; ``tree``: where its directories live (``destination.tree``);
    ``indexing``: what its indexer is given (``subtrees``, ``records``...)."""
    src = LocalSource(bytes(root))
    store = Store(gw, cache, 1, StoreSettings(pack_target_size=1 << 16, tree=tree), Reporter().stats, clock=None)
    rep = Reporter()
    store.stats = rep.stats
    from twisted.internet import reactor  # (budgets wake takers in a turn of their own: a running reactor)

    return Uploader(src, store, cache, 1, rep, Settings(window=window), clock=reactor,
                    indexer=Indexer(store, rep.stats, **indexing)), src


async def run(root, gw, cache, **kw):
    up, src = uploader(root, gw, cache, **kw)
    entries = list(src.walk(compile_rules([]), lambda p, m: None, lambda k, m: None))
    return await up.run(entries), up
