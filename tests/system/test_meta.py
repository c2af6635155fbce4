"""Capturing an entry's attributes in phase one: what is asked of the file system, and how often."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from lafs_backup.system import meta
from lafs_backup.system.meta import Capturer


class CountingListxattr:
    """``os.listxattr`` as the capturer calls it, counted; ``refuse`` makes it answer ENOTSUP."""

    def __init__(self, refuse: bool) -> None:
        self.calls: list[bytes] = []
        self.refuse = refuse
        self._real = os.listxattr

    def __call__(self, path: bytes, *, follow_symlinks: bool = True) -> list[str]:
        assert follow_symlinks is False  # (a symlink's own attributes, never its target's)
        self.calls.append(path)
        if self.refuse:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return self._real(path, follow_symlinks=False)


def make_tree(tmp_path: Path) -> list[Path]:
    files = [tmp_path / f"f{i}" for i in range(5)]
    for f in files:
        f.write_bytes(b"x")
    (tmp_path / "d").mkdir()
    (tmp_path / "l").symlink_to("f0")
    return files + [tmp_path / "d", tmp_path / "l"]


def test_a_file_system_without_xattrs_is_asked_once_per_file_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = CountingListxattr(refuse=True)
    monkeypatch.setattr(meta.os, "listxattr", fake)
    cap = Capturer(lambda key, msg: None)
    for p in make_tree(tmp_path):
        extras, problems = cap.extras(os.fsencode(p), os.lstat(p))
        assert problems == ()  # (unsupported is not a problem: there is nothing to capture)
        assert [k for k, _ in extras] in (["user", "group"], ["user"], ["group"], [])
    # One call for the first regular file, one for the directory, one for the symlink.
    assert len(fake.calls) == 3


def test_a_file_system_with_xattrs_is_asked_for_each_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = CountingListxattr(refuse=False)
    monkeypatch.setattr(meta.os, "listxattr", fake)
    cap = Capturer(lambda key, msg: None)
    entries = make_tree(tmp_path)
    for p in entries:
        cap.extras(os.fsencode(p), os.lstat(p))
    assert len(fake.calls) == len(entries)


def test_other_listing_errors_are_warnings_and_asked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def denied(path: bytes, *, follow_symlinks: bool = True) -> list[str]:
        calls.append(path)
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(meta.os, "listxattr", denied)
    cap = Capturer(lambda key, msg: None)
    files = make_tree(tmp_path)[:2]
    for p in files:
        _, problems = cap.extras(os.fsencode(p), os.lstat(p))
        assert problems == (f"cannot list extended attributes: {os.strerror(errno.EACCES)}",)
    assert len(calls) == 2


def test_user_xattrs_hard_links_and_owners_are_captured(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    try:
        os.setxattr(f, "user.b", b"2")
        os.setxattr(f, "user.a", b"1")
    except OSError as e:
        pytest.skip(f"no user xattrs here: {e.strerror}")
    os.link(f, tmp_path / "g")
    st = os.lstat(f)
    cap = Capturer(lambda key, msg: None)
    extras, problems = cap.extras(os.fsencode(f), st)
    assert problems == ()
    keys = [k for k, _ in extras]
    assert keys[-3:] == ["hardlink", "x:user.a", "x:user.b"]  # (xattrs in name order, after the rest)
    assert dict(extras)["hardlink"] == b"%d:%d" % (st.st_dev, st.st_ino)
    assert dict(extras)["x:user.a"] == b"1"
    # A second entry of the same owner, without xattrs, gets the same owner extras, and only those.
    h = tmp_path / "h"
    h.write_bytes(b"y")
    plain, _ = cap.extras(os.fsencode(h), os.lstat(h))
    assert list(plain) == [(k, v) for k, v in extras if k in ("user", "group")]
