"""The planner (pure): each decision and its reason, for every mode, checked with hypothesis."""

from __future__ import annotations

import stat
from dataclasses import dataclass

from hypothesis import given, strategies as st

from lafs_backup.store import plan
from lafs_backup.store.snapshot import Hit


@dataclass
class S:
    st_mode: int


REG, DIR, LNK = S(stat.S_IFREG | 0o644), S(stat.S_IFDIR | 0o755), S(stat.S_IFLNK | 0o777)
hits = st.builds(Hit, st.just("URI:CHK:x"), st.binary(min_size=32, max_size=32))
modes = st.sampled_from(plan.MODES)


@given(st.one_of(st.none(), hits), modes)
def test_a_file_that_is_gone_or_no_longer_regular_is_skipped(cached, mode):
    assert plan.for_file(None, cached, mode).action == plan.SKIP
    assert plan.for_file(None, cached, mode, "Permission denied").reason == "Permission denied"
    for other in (DIR, LNK):
        d = plan.for_file(other, cached, mode)
        assert d.action == plan.SKIP and "no longer a regular file" in d.reason


@given(st.one_of(st.none(), hits), modes)
def test_only_stat_mode_trusts_the_cache_and_only_with_a_row(cached, mode):
    d = plan.for_file(REG, cached, mode)
    if mode == "stat" and cached is not None:
        assert d.action == plan.UNCHANGED and d.hit is cached and d.change == "unchanged"
        assert str(d).startswith("UNCHANGED: ")
    else:
        assert d.action == plan.READ and d.hit is None
        assert mode in d.reason or mode == "stat"


@given(st.binary(min_size=32, max_size=32), st.one_of(st.none(), hits), st.one_of(st.none(), hits),
       st.booleans(), modes)
def test_content_is_stored_once_and_changes_are_named(sha, known, cached, seen, mode):
    d = plan.for_content(sha, known, cached, seen, mode)
    if mode == "force":
        assert d.action == plan.STORE
    elif known is not None:
        assert d.action == plan.KNOWN and d.hit is known
    else:
        assert d.action == plan.STORE and d.hit is None
    if cached is not None and cached.sha256 == sha:
        assert d.change == "unchanged"
    elif cached is not None or seen:
        assert d.change == "changed"
    else:
        assert d.change == "new"
    # Silent corruption is named only in verify mode, and only under a stat the cache trusted.
    assert (d.problem is not None) == (mode == "verify" and cached is not None and cached.sha256 != sha)


@given(st.one_of(st.none(), hits), modes)
def test_a_directory_is_made_unless_its_exact_body_is_stored(known, mode):
    d = plan.for_directory(known, mode)
    if known is not None and mode != "force":
        assert d.action == plan.KNOWN and d.hit is known
    else:
        assert d.action == plan.STORE and d.hit is None


@dataclass
class F:
    st_mode: int
    st_size: int = 10
    st_mtime_ns: int = 20
    st_ctime_ns: int = 30
    st_ino: int = 40


@given(st.lists(st.tuples(st.sampled_from(["inode", "stateless", "both", "none", "gone", "dir"]), hits),
                max_size=12), modes, st.booleans())
def test_a_batch_of_files_is_decided_as_each_alone_with_at_most_two_questions(files, mode, plain):
    """The row trusted for a stat is the one with its inode, else the one without (a rebuilt cache's);
    a batch asks the cache twice at most, and never for a file that is gone or not regular."""
    rows: dict[bytes, Hit] = {}
    batch, expected = [], []
    for i, (known, hit) in enumerate(files):
        path = b"f%d" % i
        stat_now = None if known == "gone" else F(DIR.st_mode if known == "dir" else REG.st_mode, st_ino=i)
        batch.append((path, stat_now, "Permission denied" if stat_now is None else ""))
        trusted = None
        if known in ("inode", "both"):
            rows[plan.state_key(path, stat_now, plain)] = trusted = hit
        if known in ("stateless", "both"):
            other = Hit("URI:CHK:other", hit.sha256)
            rows[plan.state_key(path, stat_now, plain, inode=False)] = other
            trusted = trusted or other
        expected.append(plan.for_file(stat_now, trusted, mode, "Permission denied") if stat_now is None
                        else plan.for_file(stat_now, trusted, mode))
    asked: list[list[bytes]] = []

    def lookup(keys):
        asked.append(keys)
        return {k: rows[k] for k in keys if k in rows}

    assert plan.for_files(batch, lookup, mode, plain) == expected
    regular = [p for p, s, _ in batch if s is not None and s.st_mode == REG.st_mode]
    assert len(asked) <= 2 and sum(len(a) for a in asked[:1]) == len(regular)
    assert len(set(k for a in asked for k in a)) == sum(len(a) for a in asked)  # no key asked twice
    assert plan.state_key(b"p", F(REG.st_mode), plain) != plan.state_key(b"p", F(REG.st_mode), not plain)
