"""Remote sources: fsspec file systems walked and read as a Source (memory://, and S3 through moto on loopback)."""

from __future__ import annotations

import errno
import hashlib
import itertools
import time
from datetime import datetime, timezone

import pytest

fsspec = pytest.importorskip("fsspec")
from fsspec.implementations.memory import MemoryFile  # noqa: E402

from lafs_backup.filters import compile_rules  # noqa: E402
from lafs_backup.backup.fsspec_source import FsspecSource, Identity, child_name, identity_of, label_of, to_ns  # noqa: E402
from lafs_backup.backup.select import Selection  # noqa: E402
from lafs_backup.errors import UsageError  # noqa: E402
from lafs_backup.store.snapshot import file_key  # noqa: E402

_roots = itertools.count()


@pytest.fixture
def mem():
    """A fresh root in the (process-wide) memory file system, removed afterwards."""
    fs = fsspec.filesystem("memory")
    root = f"/t{next(_roots)}-{time.monotonic_ns()}"
    yield fs, root
    for key in [k for k in fs.store if k.startswith(root + "/")]:
        del fs.store[key]
    fs.pseudo_dirs[:] = [d for d in fs.pseudo_dirs if not d.startswith(root)]


def put(fs, root: str, files: dict[str, bytes]) -> None:
    for key, data in files.items():
        fs.pipe(f"memory://{root}/{key}", data)


def walk(src: FsspecSource, flt=None):
    warnings: list[tuple[bytes, str]] = []
    notes: list[tuple[str, str]] = []
    sel = flt if flt is not None else Selection()
    out = list(src.walk(sel, lambda p, m: warnings.append((p, m)), lambda k, m: notes.append((k, m))))
    return out, warnings


def test_walk_order_children_first_root_last_names_as_bytes(mem):
    fs, root = mem
    put(fs, root, {"a/b/c.txt": b"c", "a/b2": b"bb", "a-c": b"x", "B": b"upper", "a/b/a": b"1", "z/y/x/w": b"deep"})
    src = FsspecSource(f"memory://{root}/", {})
    assert src.label == f"memory://{root}".encode()  # as given, without the trailing slash
    entries, warnings = walk(src)
    assert warnings == []
    assert [(e.kind, e.path) for e in entries] == [
        ("f", b"B"), ("f", b"a/b/a"), ("f", b"a/b/c.txt"), ("d", b"a/b"), ("f", b"a/b2"), ("d", b"a"),
        ("f", b"a-c"), ("f", b"z/y/x/w"), ("d", b"z/y/x"), ("d", b"z/y"), ("d", b"z"), ("d", b"")]


def test_entries_invent_no_owner_and_implied_directories_take_their_newest_object(mem):
    fs, root = mem
    put(fs, root, {"d/old": b"o", "d/e/older": b"1"})
    time.sleep(0.002)
    put(fs, root, {"d/e/new": b"new!", "d/new2": b"2"})
    entries, _ = walk(FsspecSource(f"memory://{root}", {}))
    by = {e.path: e for e in entries}
    f, d, e, top = by[b"d/old"], by[b"d"], by[b"d/e"], by[b""]
    assert (f.mode, f.size, f.uid, f.gid, f.dev, f.nlink) == (0o100644, 1, 0, 0, 0, 1)
    assert (d.mode, d.size, d.kind) == (0o040755, 0, "d")
    for x in entries:
        assert x.extra("owner") == b"none" and x.extra("user") is None and x.extra("group") is None
        assert x.ctime_ns == x.mtime_ns
    # the newest object directly inside, filtered out or not; none: 0
    assert f.mtime_ns < by[b"d/e/new"].mtime_ns == e.mtime_ns and by[b"d/new2"].mtime_ns == d.mtime_ns
    assert top.mtime_ns == 0
    assert f.mtime_ns == to_ns(fs.info(f"{root}/d/old")["created"])
    # phase two sees the same directory times as the walk (an implied directory reports none),
    # in the same process (remembered) or in another (one listing)
    src = FsspecSource(f"memory://{root}", {})
    list(src.walk(compile_rules([r"-/new2$"]), lambda p, m: None, lambda k, m: None))
    fresh = FsspecSource(f"memory://{root}", {})
    for s in (src, fresh):
        assert s.lstat(b"d").st_mtime_ns == d.mtime_ns and s.lstat(b"d/old").st_mtime_ns == f.mtime_ns
        assert s.lstat(b"d/e").st_mtime_ns == e.mtime_ns and s.lstat(b"").st_mtime_ns == 0


def test_filter_rules_and_selection_options_apply(mem):
    fs, root = mem
    put(fs, root, {"keep/a.txt": b"a", "keep/b.tmp": b"b", "cache/big": b"x" * 100, "big.bin": b"y" * 50,
                   "small.bin": b"z", "proj/.gitignore": b"*.o\n", "proj/m.o": b"o", "proj/m.c": b"c"})
    tmp_rule = r"-\.tmp$"
    sel = Selection(filter=compile_rules([r"-/cache/$", tmp_rule]), larger_than=10,
                    ignore_names=(b".gitignore",))
    entries, warnings = walk(FsspecSource(f"memory://{root}", {}), sel)
    assert warnings == []
    assert {e.path for e in entries} == {b"keep/a.txt", b"keep", b"small.bin", b"proj/.gitignore", b"proj/m.c",
                                         b"proj", b""}
    counts = sel.excluded.counts
    assert counts["filter rule '-/cache/$'"] == [1, 0]  # a directory is one entry, never entered
    assert counts[f"filter rule {tmp_rule!r}"] == [1, 1]
    assert counts["--exclude-larger-than"] == [1, 50]
    assert counts["ignore file proj/.gitignore"] == [1, 1]
    # the rules alone (a Filter, not a Selection) work too
    only = list(FsspecSource(f"memory://{root}", {}).walk(compile_rules([r"-/proj/"]), lambda p, m: None,
                                                           lambda k, m: None))
    assert not any(e.path.startswith(b"proj") for e in only) and only[-1].path == b""


def test_a_changed_object_changes_the_stat_key(mem):
    fs, root = mem
    put(fs, root, {"f": b"one"})
    src = FsspecSource(f"memory://{root}", {})
    st = src.lstat(b"f")
    key = file_key(b"f", st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    st_again = src.lstat(b"f")
    assert file_key(b"f", st_again.st_size, st_again.st_mtime_ns, st_again.st_ctime_ns, st_again.st_ino) == key
    time.sleep(0.002)
    put(fs, root, {"f": b"two"})  # same size: the time tells
    st2 = src.lstat(b"f")
    assert st2.st_size == st.st_size and st2.st_mtime_ns > st.st_mtime_ns
    assert file_key(b"f", st2.st_size, st2.st_mtime_ns, st2.st_ctime_ns, st2.st_ino) != key
    # where the store gives an ETag or a version, the inode follows them
    a = identity_of({"ETag": '"0123456789abcdef0123456789abcdef"'}, True, False)
    b = identity_of({"ETag": '"0123456789abcdef0123456789abcdee"'}, True, False)
    v = identity_of({"ETag": '"0123456789abcdef0123456789abcdef"', "VersionId": "v2"}, True, True)
    assert len({a.ino, b.ino, v.ino}) == 3 and a.ino == Identity(a.etag).ino and 0 < a.ino < 1 << 63
    assert Identity().ino == 0
    with pytest.raises(FileNotFoundError):
        src.lstat(b"nope")


def test_pread_reads_exact_ranges(mem):
    fs, root = mem
    data = bytes(range(256)) * 40
    put(fs, root, {"d/blob": data})
    src = FsspecSource(f"memory://{root}", {})
    f = src.open(b"d/blob")
    try:
        assert f.fstat().st_size == len(data)
        assert f.pread(10, 0) == data[:10]
        assert f.pread(1000, 5000) == data[5000:6000]
        assert f.pread(100, len(data) - 7) == data[-7:]
        assert f.pread(5, len(data)) == b"" and f.pread(5, len(data) + 10) == b""
    finally:
        f.close()
    with pytest.raises(OSError) as e:
        src.open(b"d")
    assert e.value.errno == errno.EISDIR
    with pytest.raises(FileNotFoundError):
        src.open(b"d/gone")


def test_awkward_keys_are_skipped_with_a_warning(mem):
    fs, root = mem
    # keys as an object store has them, which the memory file system's own API would refuse or normalise
    for key, data in {"ok": b"1", "x/../y": b"2", "a//b": b"3", "./dot": b"4", "n\0ul": b"5",
                      "dm/": b"", "dm/in": b"6", "full/": b"data", "/lead": b"7"}.items():
        fs.store[f"{root}/{key}"] = MemoryFile(fs, f"{root}/{key}", data)
    entries, warnings = walk(FsspecSource(f"memory://{root}", {}))
    assert [e.path for e in entries] == [b"a", b"dm/in", b"dm", b"full", b"ok", b"x", b""]
    warned = {p: m for p, m in warnings}
    assert set(warned) == {b"/", b"a/", b"x/..", b".", b"n\0ul", b"full/"}, warnings
    assert "'..'" in warned[b"x/.."] and "empty path component" in warned[b"a/"] and "NUL" in warned[b"n\0ul"]
    assert "holds data" in warned[b"full/"]
    # (an object named like a key prefix, "f" and "f/g", is tested on S3: the memory file system cannot hold both)


def test_an_unusable_source_is_a_usage_error_without_secrets(mem):
    fs, root = mem
    put(fs, root, {"file": b"x"})
    with pytest.raises(UsageError, match="no such"):
        list(FsspecSource(f"memory://{root}/missing", {}).walk(Selection(), lambda p, m: None, lambda k, m: None))
    with pytest.raises(UsageError, match="not a directory"):
        list(FsspecSource(f"memory://{root}/file", {}).walk(Selection(), lambda p, m: None, lambda k, m: None))
    with pytest.raises(UsageError) as e:
        FsspecSource("nosuchproto://bucket/x", {"secret": "hunter2-secret"})
    assert "hunter2" not in str(e.value)
    assert label_of("sftp://me:pw@host/dir/") == b"sftp://host/dir"
    assert label_of("s3://bucket/prefix/?versionId=1") == b"s3://bucket/prefix"


def test_pure_helpers():
    assert child_name("b/p", "b/p/x", "file") == ("x", None)
    assert child_name("b/p", "b/p/x/", "directory") == ("x", None)
    assert child_name("b/p", "b/p", "directory") == (None, None)
    assert child_name("b/p", "b/p/", "file") == (None, None)  # a directory marker
    assert child_name("b/p", "b/p/", "directory")[1] is not None
    dt = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)
    assert to_ns(dt) == to_ns(dt.timestamp()) == to_ns("2026-01-02T03:04:05.123456Z") == 1767323045123456000
    multi = identity_of({"ETag": '"0123456789abcdef0123456789abcdef-2"'}, True, False)
    assert multi.md5 == "" and multi.etag.endswith("-2")
    assert identity_of({"ETag": '"0123456789abcdef0123456789abcdef"'}, False, False).md5 == ""
    assert identity_of({"md5Hash": "1B2M2Y8AsgTpgAmY7PhCfg=="}, False, False).md5 == hashlib.md5(b"").hexdigest()
    assert identity_of({"ETag": "e", "VersionId": "v"}, True, False).version == ""  # not a versioned listing


# -- S3, through moto's server on loopback -----------------------------------------------------

def test_s3_walk_etags_md5s_and_reads(s3):
    client, options = s3
    client.create_bucket(Bucket="bkt")
    objects = {f"p/dir{i % 5}/obj{i:02d}": f"content {i}".encode() * (i + 1) for i in range(45)}
    objects.update({"p/a b/c%20d": b"spaces and percent", "p/\u00fcn\u00ef": b"unicode name", "p/x/../y": b"dot-dot",
                    "p/top": b"top level", "p/f": b"an object", "p/f/g": b"below a prefix of that name",
                    "p/dm/": b"", "p/dm/in": b"in a directory with a marker object"})
    for key, body in objects.items():
        client.put_object(Bucket="bkt", Key=key, Body=body)
    part = 5 << 20
    big = bytes(range(256)) * (2 * part // 256) + b"tail"
    mpu = client.create_multipart_upload(Bucket="bkt", Key="p/multi")
    parts = []
    for n, chunk in enumerate((big[:part], big[part:]), 1):
        r = client.upload_part(Bucket="bkt", Key="p/multi", PartNumber=n, UploadId=mpu["UploadId"], Body=chunk)
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
    client.complete_multipart_upload(Bucket="bkt", Key="p/multi", UploadId=mpu["UploadId"],
                                     MultipartUpload={"Parts": parts})

    src = FsspecSource("s3://bkt/p/", options)
    assert src.label == b"s3://bkt/p"
    entries, warnings = walk(src)
    by = {e.path: e for e in entries}
    files = {e.path for e in entries if e.kind == "f"}
    assert files == {k[2:].encode() for k in objects if k not in ("p/x/../y", "p/f", "p/dm/")} | {b"multi"}
    assert b"a b/c%20d" in files and "\u00fcn\u00ef".encode() in files and b"a b" in by
    assert sorted(p for p, _ in warnings) == [b"f", b"x/.."], warnings
    assert by[b"f"].kind == "d" and by[b"dm"].kind == "d"
    assert entries[-1].path == b"" and all(by[e.parent].kind == "d" for e in entries if e.path)

    multi = by[b"multi"]
    assert multi.size == len(big) and b"-" in multi.extra("etag") and multi.extra("md5") is None
    single = by[b"dir3/obj08"]
    assert single.extra("md5") == hashlib.md5(objects["p/dir3/obj08"]).hexdigest().encode()
    assert single.extra("etag") == single.extra("md5") and single.extra("owner") == b"none"
    assert single.ino != 0 and single.mtime_ns > 0

    st = src.lstat(b"dir3/obj08")
    assert (st.st_size, st.st_ino, st.st_mtime_ns) == (single.size, single.ino, single.mtime_ns)
    f = src.open(b"multi")
    try:
        assert f.pread(100, part - 50) == big[part - 50:part + 50]
        assert f.pread(1 << 20, len(big) - 10) == big[-10:]
    finally:
        f.close()

    # the same size, new content: a new ETag, so a new inode and stat key; a file opened before holds
    # the version it opened, bytes and state alike (a private copy), never a mix of two
    f = src.open(b"top")
    old = f.pread(100, 0)
    client.put_object(Bucket="bkt", Key="p/top", Body=b"TOP LEVEL")
    try:
        assert f.pread(100, 0) == old == b"top level" and f.fstat().st_ino == by[b"top"].ino
    finally:
        f.close()
    # lstat answers from the walk's listing (no request per unchanged object); ask() asks the store now.
    assert src.lstat(b"top").st_ino == by[b"top"].ino
    st2 = src.ask(b"top")
    assert st2.st_size == by[b"top"].size and st2.st_ino != by[b"top"].ino
    g = src.open(b"top")
    assert g.pread(100, 0) == b"TOP LEVEL"
    g.close()


def test_s3_unusable_sources_are_usage_errors_without_credentials(s3):
    client, options = s3
    client.create_bucket(Bucket="other")
    client.put_object(Bucket="other", Key="obj", Body=b"x")
    secret = {**options, "secret": "s3cr3t-never-shown"}
    for url, why in (("s3://nobucket/p", "no such"), ("s3://other/obj", "not a directory"),
                     ("s3://other/nothing-here", "no such")):
        with pytest.raises(UsageError, match=why) as e:
            list(FsspecSource(url, secret).walk(Selection(), lambda p, m: None, lambda k, m: None))
        assert "s3cr3t" not in str(e.value) and url.rstrip("/") in str(e.value)


def test_a_directory_that_cannot_be_listed_is_skipped_with_a_warning(mem, monkeypatch):
    fs, root = mem
    put(fs, root, {"good/a": b"1", "bad/b": b"2", "c": b"3"})
    src = FsspecSource(f"memory://{root}", {"token": "tok-en-secret"})
    real_ls = src.fs.ls

    def flaky(path, **kw):
        if path.endswith("/bad"):
            raise RuntimeError("503 SlowDown after retries (token tok-en-secret)")  # not an OSError
        return real_ls(path, **kw)

    monkeypatch.setattr(src.fs, "ls", flaky)
    entries, warnings = walk(src)
    assert [e.path for e in entries] == [b"c", b"good/a", b"good", b""]
    assert [p for p, _ in warnings] == [b"bad"]
    assert "SlowDown" in warnings[0][1] and "tok-en-secret" not in warnings[0][1]
