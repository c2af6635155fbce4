"""Runs of small files read in a thread (``backup/batch.py``): each file's bytes, hash and stored form, or
the warning the one-file path gives for it."""

from __future__ import annotations

import hashlib
import os

from lafs_backup.backup.batch import read_small_files
from lafs_backup.backup.source import LocalSource
from lafs_backup.encoding import compile_rules
from lafs_backup.store.encode import member_form
from lafs_backup.store.entry import Entry


def _entries(root, names):
    return [Entry.from_stat(n, os.lstat(os.path.join(root, os.fsdecode(n)))) for n in names]


def test_each_file_read_hashed_and_encoded_or_skipped_with_the_one_file_paths_warning(tmp_path):
    text = b"hello, small world\n" * 50  # compressible, above the inline limit
    (tmp_path / "plain").write_bytes(text)
    (tmp_path / "tiny").write_bytes(b"x")
    (tmp_path / "gone").write_bytes(b"soon gone")
    (tmp_path / "link").write_bytes(b"soon a symlink")
    os.mkfifo(tmp_path / "fifo")
    entries = _entries(tmp_path, [b"plain", b"tiny", b"gone", b"link"])
    entries.append(Entry.from_stat(b"fifo", os.lstat(tmp_path / "plain")))  # (the walk saw a file there)
    (tmp_path / "gone").unlink()
    (tmp_path / "link").unlink()
    (tmp_path / "link").symlink_to("plain")
    rules = compile_rules("lz4", 0, [])
    got = read_small_files(LocalSource(bytes(tmp_path)), entries, lambda p, d: member_form(rules, p, d))
    plain, tiny, gone, link, fifo = got
    assert plain.sha == hashlib.sha256(text).digest() and plain.size == len(text) and plain.read == len(text)
    assert plain.enc == "lz4" and len(plain.stored) < len(text) and plain.skipped is None and not plain.moving
    assert plain.st is not None and plain.st.st_size == len(text)
    assert tiny.stored == b"x" and tiny.enc is None  # (an inline cap holds it: never encoded)
    assert gone.st is None and gone.skipped == "skipped: it vanished since the scan"
    assert link.st is None and link.skipped == "skipped: it is no longer a regular file"
    assert fifo.st is None and fifo.skipped == "skipped: it is no longer a regular file"
