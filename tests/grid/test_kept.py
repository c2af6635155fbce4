"""Local copies of immutable objects (grid/kept.py): private, checked, bounded."""

import os
import stat

from lafs_backup.grid.kept import LARGEST, KeptReads


def test_a_copy_comes_back_and_is_private(tmp_path):
    kept = KeptReads(str(tmp_path / "kept"), 1 << 20)
    kept.put("URI:CHK:a:b:2:3:5", b"hello")
    assert kept.get("URI:CHK:a:b:2:3:5") == b"hello"
    assert kept.get("URI:CHK:other:b:2:3:5") is None
    assert stat.S_IMODE(os.stat(tmp_path / "kept").st_mode) == 0o700
    files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "kept") for f in fs]
    assert len(files) == 1 and stat.S_IMODE(os.stat(files[0]).st_mode) == 0o600
    # Named by the cap's hash: the cap itself is nowhere on disk.
    assert all(b"URI:" not in open(f, "rb").read() and "URI" not in f for f in files)


def test_a_damaged_copy_is_dropped_not_used(tmp_path):
    kept = KeptReads(str(tmp_path), 1 << 20)
    kept.put("URI:CHK:x", b"the bytes of an index chunk")
    [path] = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
    with open(path, "r+b") as f:
        f.seek(40)
        f.write(b"X")
    assert kept.get("URI:CHK:x") is None
    assert not os.path.exists(path)


def test_the_least_recently_used_go_first(tmp_path):
    kept = KeptReads(str(tmp_path), 1000)
    for i in range(4):
        kept.put(f"URI:CHK:{i}", bytes([i]) * 200)
        path = kept._path(f"URI:CHK:{i}")
        os.utime(path, (1000 + i, 1000 + i))
    os.utime(kept._path("URI:CHK:0"), (2000, 2000))  # used last
    kept.put("URI:CHK:4", b"4" * 200)  # 5 x 232 bytes: past the limit
    left = [i for i in range(5) if kept.get(f"URI:CHK:{i}") is not None]
    assert 0 in left and 4 in left and 1 not in left
    assert sum(os.path.getsize(kept._path(f"URI:CHK:{i}")) for i in left) <= 750


def test_nothing_is_kept_when_off_or_too_large(tmp_path):
    off = KeptReads(str(tmp_path / "off"), 0)
    off.put("URI:CHK:a", b"data")
    assert off.get("URI:CHK:a") is None and not (tmp_path / "off").exists()
    big = KeptReads(str(tmp_path / "big"), 1 << 30)
    big.put("URI:CHK:b", b"\0" * (LARGEST + 1))
    assert big.get("URI:CHK:b") is None


def test_an_unwritable_place_keeps_nothing_and_raises_nothing(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    kept = KeptReads(str(tmp_path / "file" / "below"), 1 << 20)
    kept.put("URI:CHK:a", b"data")
    assert kept.get("URI:CHK:a") is None
