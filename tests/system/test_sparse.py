"""Sparse files: holes found with SEEK_DATA/SEEK_HOLE, the data read as one concatenation, laid out again."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from lafs_backup.system import sparse
from lafs_backup.system.sparse import MIN_HOLE, ExtentView, Layout, Unfold

MiB = 1 << 20


def make_sparse(path: Path, size: int, extents: list[tuple[int, int]], seed: int = 1) -> bytes:
    """A file of ``size`` bytes with random data at ``extents`` (holes elsewhere); its content."""
    data = bytearray(size)
    with open(path, "wb") as f:
        f.truncate(size)
        for i, (off, n) in enumerate(extents):
            chunk = hashlib.sha256(b"%d:%d" % (seed, i)).digest() * (n // 32 + 1)
            f.seek(off)
            f.write(chunk[:n])
            data[off:off + n] = chunk[:n]
    return bytes(data)


def holes_supported(tmp_path: Path) -> bool:
    p = tmp_path / "probe"
    with open(p, "wb") as f:
        f.truncate(4 * MiB)
        f.seek(2 * MiB)
        f.write(b"x" * 4096)
    fd = os.open(p, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_DATA) > 0
    except OSError:
        return False
    finally:
        os.close(fd)


def test_extents_of_a_sparse_file_and_its_data_as_one_concatenation(tmp_path):
    if not holes_supported(tmp_path):
        pytest.skip("this file system does not report holes")
    p = tmp_path / "f"
    extents = [(1 * MiB, 256 << 10), (10 * MiB, 512 << 10), (60 * MiB, 256 << 10)]
    content = make_sparse(p, 64 * MiB, extents)
    fd = os.open(p, os.O_RDONLY)
    try:
        layout = sparse.data_extents(fd, 64 * MiB)
        assert layout == Layout(64 * MiB, tuple(extents))
        assert layout.data_size == MiB
        view = ExtentView(_Fd(fd), layout)
        data = b"".join(content[o:o + n] for o, n in extents)
        assert view.pread(MiB + 10, 0) == data  # across every extent, short at the end
        assert view.pread(100, (256 << 10) - 50) == data[(256 << 10) - 50:(256 << 10) + 50]
        assert view.pread(10, MiB) == b""
        sha = hashlib.sha256(data).hexdigest()
        assert sparse.matches(fd, layout, sha)
        assert sparse.holds(fd, {"size": 64 * MiB, "sha256": sha, "extents": layout.as_json()})
        assert not sparse.holds(fd, {"size": 64 * MiB, "sha256": sha})  # read dense, it is other content
        assert sparse.holds(fd, {"size": 64 * MiB, "sha256": hashlib.sha256(content).hexdigest()})
    finally:
        os.close(fd)
    # Data where the layout says hole: not the recorded content, though the data hashes the same.
    with open(p, "r+b") as f:
        f.seek(30 * MiB)
        f.write(b"\1")
    fd = os.open(p, os.O_RDONLY)
    try:
        assert not sparse.matches(fd, layout, sha)
    finally:
        os.close(fd)


def test_a_dense_file_or_small_holes_have_no_layout(tmp_path):
    if not holes_supported(tmp_path):
        pytest.skip("this file system does not report holes")
    dense = tmp_path / "dense"
    dense.write_bytes(os.urandom(2 * MiB))
    small_hole = tmp_path / "small-hole"
    make_sparse(small_hole, 2 * MiB, [(0, MiB - 8192), (MiB, MiB)])  # an 8 KiB hole is kept as zeros
    trailing = tmp_path / "trailing"
    make_sparse(trailing, 8 * MiB, [(0, MiB)])
    got = {}
    for p in (dense, small_hole, trailing):
        fd = os.open(p, os.O_RDONLY)
        try:
            got[p.name] = sparse.data_extents(fd, p.stat().st_size)
        finally:
            os.close(fd)
    assert got["dense"] is None
    assert got["small-hole"] is None
    assert got["trailing"] == Layout(8 * MiB, ((0, MiB),))


def test_fragmented_files_are_merged_to_at_most_max_extents():
    found = [(i * 2 * MIN_HOLE, MIN_HOLE) for i in range(sparse.MAX_EXTENTS * 3)]
    layout = sparse._merged(found[-1][0] + MIN_HOLE + 10 * MiB, found)
    assert layout is not None and len(layout.extents) <= sparse.MAX_EXTENTS
    covered = [(o, o + n) for o, n in layout.extents]
    assert all(any(a <= o and o + n <= b for a, b in covered) for o, n in found)  # every byte of data kept
    assert sparse._merged(4 * MIN_HOLE, [(0, MIN_HOLE), (MIN_HOLE + 100, 2 * MIN_HOLE)]) is None  # holes too small


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self.fd, n, offset)


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def pread(self, n: int, offset: int) -> bytes:
        return self.data[offset:offset + n]


@st.composite
def layouts(draw: st.DrawFn) -> tuple[Layout, bytes]:
    """A layout and the logical content it describes (random data at its extents)."""
    pos, extents = 0, []
    for _ in range(draw(st.integers(0, 6))):
        pos += draw(st.integers(0, 300))
        n = draw(st.integers(1, 300))
        extents.append((pos, n))
        pos += n
    size = pos + draw(st.integers(0, 300))
    content = bytearray(size)
    for o, n in extents:
        content[o:o + n] = draw(st.binary(min_size=n, max_size=n))
    return Layout(size, tuple(extents)), bytes(content)


@given(layouts(), st.lists(st.integers(1, 97), min_size=1, max_size=20), st.booleans())
def test_data_read_through_a_view_and_unfolded_is_the_content(case, cuts, with_holes):
    layout, content = case
    data = ExtentView(_Bytes(content), layout).pread(layout.data_size + 5, 0)
    assert len(data) == layout.data_size
    out = bytearray()
    holes: list[int] = []

    def hole(n: int) -> None:
        holes.append(n)
        out.extend(bytes(n))

    unfold = Unfold(layout, out.extend, hole if with_holes else None)
    i = 0
    for c in cuts * (len(data) // sum(cuts) + 1):  # fed in chunks of any length
        unfold.feed(data[i:i + c])
        i += c
    unfold.finish()
    assert bytes(out) == content and unfold.overflow == 0
    assert sum(holes) == (layout.size - layout.data_size if with_holes else 0)
    assert sparse.checked(layout.size, layout.as_json()) == layout
    assert sparse.from_cache(sparse.as_cap(layout), layout.size) == layout


def test_bad_layouts_are_refused():
    for raw in ([[10, 5], [12, 5]], [[0, 0]], [[95, 10]], [[-1, 3]], "x", [[1.5, 2]]):
        with pytest.raises(ValueError):
            sparse.checked(100, raw)
    assert sparse.layout_of({"size": 10}) is None
    assert sparse.from_cache("URI:CHK:x", 100) is None
    assert sparse.from_cache(sparse.as_cap(Layout(100, ((0, 1),))), 99) is None  # another size


def test_restore_writes_holes_and_blocks_of_zeros_as_holes(tmp_path):
    from lafs_backup.read.leaves import _SparseSink

    content = (os.urandom(100_000) + bytes(3 * MiB) + os.urandom(5000) + bytes(70_000) + os.urandom(10)
               + bytes(2 * MiB))
    for cut in (4000, 65536, 300_001, len(content)):  # chunks of any size, aligned or not
        p = tmp_path / f"out{cut}"
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            sink = _SparseSink(fd)
            sink.write(b"junk" * 2000)
            sink.restart()  # (a download started over)
            for at in range(0, len(content), cut):
                sink.write(content[at:at + cut])
            sink.hole(MiB)  # a recorded hole at the end
            sink.close()
        finally:
            os.close(fd)
        assert p.read_bytes() == content + bytes(MiB)
        if holes_supported(tmp_path):
            assert p.stat().st_blocks * 512 < MiB  # not the 6 MiB of zeros
