"""The reporter's sizes and phase two's progress: bytes sent to the grid, an ETA from what is left to send
at the recent rate, and one unit style everywhere.  Progress runs on a ``Clock``: no test here waits."""

from __future__ import annotations

import io
import json
import re

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from lafs_backup.report import RATE_WINDOW, Progress, Reporter, duration_text, left_to_send, size_text

MiB = 1 << 20


class FakeUploader:
    """What progress reads of the uploader: bytes sent so far, bytes of new or changed files being stored."""

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.bytes_storing = 0
        self.in_flight: set[bytes] = set()


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_sizes_have_one_style():
    assert size_text(0) == "0 B"
    assert size_text(785) == "785 B"
    assert size_text(1023) == "1023 B"
    assert size_text(1024) == "1.0 KiB"
    assert size_text(3000005) == "2.9 MiB"
    assert size_text(MiB - 1) == "1.0 MiB"  # (rounded before the unit is chosen: not "1024.0 KiB")
    assert size_text(5 * (1 << 30)) == "5.0 GiB"
    assert size_text(-2048) == "-2.0 KiB"


@given(st.integers(0, 1 << 60))
def test_a_size_reads_back_within_its_precision(n):
    text = size_text(n)
    m = re.fullmatch(r"(\d+)(?:\.(\d))? (B|KiB|MiB|GiB|TiB|PiB)", text)
    assert m, text
    unit = ("B", "KiB", "MiB", "GiB", "TiB", "PiB").index(m.group(3))
    assert (m.group(2) is None) == (unit == 0)
    value = float(m.group(1) + "." + (m.group(2) or "0"))
    assert value < 1024 or unit == 5
    assert abs(value * 1024 ** unit - n) <= 0.05 * 1024 ** unit + 0.5


def test_durations():
    assert duration_text(None) == "?"
    assert duration_text(0) == "0:00"
    assert duration_text(42.4) == "0:42"
    assert duration_text(725) == "12:05"
    assert duration_text(3723) == "1:02:03"


def test_unchanged_files_are_not_bytes_to_send():
    # 10 MiB of files: 6 MiB found unchanged, 4 MiB new and being stored, 1 MiB of it sent.
    assert left_to_send(10 * MiB, done=6 * MiB, storing=4 * MiB, to_store=4 * MiB, deduplicated=0, uploaded=0,
                        compression_saved=0, sent=1 * MiB) == 3 * MiB
    # Content found stored already (deduplicated) is not sent either.
    assert left_to_send(10 * MiB, done=8 * MiB, storing=2 * MiB, to_store=4 * MiB, deduplicated=2 * MiB,
                        uploaded=0, compression_saved=0, sent=0) == 2 * MiB


def test_files_not_come_to_yet_count_in_the_share_seen_so_far():
    # Half the tree decided: a tenth of it new.  The other half is expected to be a tenth new too.
    assert left_to_send(100 * MiB, done=50 * MiB, storing=0, to_store=5 * MiB, deduplicated=0,
                        uploaded=5 * MiB, compression_saved=0, sent=5 * MiB) == 5 * MiB
    # Nothing decided yet: everything may have to be sent.
    assert left_to_send(100 * MiB, 0, 0, 0, 0, 0, 0, 0) == 100 * MiB


def test_compression_so_far_scales_what_is_left():
    # Contents stored so far went onto the wire at half their size: so will the rest.
    assert left_to_send(8 * MiB, done=4 * MiB, storing=4 * MiB, to_store=8 * MiB, deduplicated=0,
                        uploaded=2 * MiB, compression_saved=2 * MiB, sent=2 * MiB) == 2 * MiB


@given(st.integers(0, 1 << 40), st.integers(0, 1 << 40), st.integers(0, 1 << 40), st.integers(0, 1 << 40),
       st.integers(0, 1 << 40), st.integers(0, 1 << 40), st.integers(0, 1 << 40), st.integers(0, 1 << 40))
def test_what_is_left_is_never_negative_nor_more_than_everything(total, done, storing, to_store, dedup, up, saved,
                                                                 sent):
    left = left_to_send(total, done, storing, to_store, dedup, up, saved, sent)
    assert 0 <= left <= max(total, to_store) + storing + to_store


@given(st.integers(0, 1 << 40), st.integers(0, 1 << 40))
def test_nothing_is_left_once_every_file_is_done_and_sent(total, unchanged):
    new = total
    assert left_to_send(new + unchanged, done=new + unchanged, storing=0, to_store=new, deduplicated=0,
                        uploaded=new, compression_saved=0, sent=new) == 0


def test_json_progress_counts_bytes_sent_with_an_eta_from_what_is_left():
    clock, out, up = Clock(), io.StringIO(), FakeUploader()
    rep = Reporter(json_mode=True, out=out)
    p = Progress(rep, clock, total_entries=3, total_bytes=10 * MiB, uploader=up)
    p.start()
    # Phase two decides everything at once: 6 MiB unchanged (done, nothing to send), 4 MiB new.
    s = rep.stats
    s.bytes_done, s.files_unchanged, s.entries_done = 6 * MiB, 2, 2
    s.bytes_to_store, up.bytes_storing = 4 * MiB, 4 * MiB
    up.bytes_sent = 1 * MiB
    clock.advance(1)
    (first,) = lines(out)
    assert first["type"] == "progress"
    assert first["bytes_sent"] == 1 * MiB and first["bytes_to_send"] == 4 * MiB
    assert first["bytes_done"] == 6 * MiB and first["bytes_total"] == 10 * MiB  # (what was decided, as before)
    assert first["rate_bytes_per_second"] == 1 * MiB
    assert first["eta_seconds"] == 3.0  # 3 MiB left at 1 MiB/s; the unchanged 6 MiB count for nothing
    up.bytes_sent = 3 * MiB
    clock.advance(1)
    second = lines(out)[-1]
    assert second["bytes_sent"] == 3 * MiB and second["rate_bytes_per_second"] == int(1.5 * MiB)
    assert second["eta_seconds"] == round(1 * MiB / (1.5 * MiB), 1)
    p.stop()
    assert not clock.getDelayedCalls()


def test_the_eta_is_unknown_while_nothing_moves_not_zero():
    """The reported snag: a rate-limited backup sat at 47% with an ETA of 00:00.  Bytes read (or decided)
    run ahead of the bytes sent; progress follows the bytes sent, and when none move the ETA is unknown."""
    clock, out, up = Clock(), io.StringIO(), FakeUploader()
    rep = Reporter(json_mode=True, out=out)
    p = Progress(rep, clock, total_entries=2, total_bytes=8 * MiB, uploader=up)
    p.start()
    rep.stats.bytes_to_store, up.bytes_storing = 8 * MiB, 8 * MiB
    rep.stats.bytes_read = 8 * MiB  # all of it read already, waiting for the rate limit
    up.bytes_sent = 2 * MiB
    clock.advance(1)
    assert lines(out)[-1]["eta_seconds"] == 3.0
    for _ in range(int(RATE_WINDOW) + 2):  # the rate limit holds everything back
        clock.advance(1)
    stalled = lines(out)[-1]
    assert stalled["bytes_sent"] == 2 * MiB and stalled["bytes_to_send"] == 8 * MiB
    assert stalled["rate_bytes_per_second"] == 0 and stalled["eta_seconds"] is None
    up.bytes_sent = 8 * MiB  # sent; the gateway is placing it
    clock.advance(1)
    done = lines(out)[-1]
    assert done["bytes_to_send"] == done["bytes_sent"] == 8 * MiB and done["eta_seconds"] == 0.0
    p.stop()


def test_the_rate_is_the_recent_one():
    clock, out, up = Clock(), io.StringIO(), FakeUploader()
    rep = Reporter(json_mode=True, out=out)
    p = Progress(rep, clock, 1, 100 * MiB, uploader=up)
    rep.stats.bytes_to_store, up.bytes_storing = 100 * MiB, 100 * MiB
    p.start()
    for _ in range(20):  # 20 s at 4 MiB/s
        up.bytes_sent += 4 * MiB
        clock.advance(1)
    for _ in range(int(RATE_WINDOW) + 1):  # then the link slows to 1 MiB/s
        up.bytes_sent += 1 * MiB
        clock.advance(1)
    last = lines(out)[-1]
    assert last["rate_bytes_per_second"] == 1 * MiB
    assert last["eta_seconds"] == (100 * MiB - up.bytes_sent) / MiB
    p.stop()


def test_the_bar_shows_bytes_sent_in_binary_units_on_the_injected_clock():
    clock, err, up = Clock(), Tty(), FakeUploader()
    rep = Reporter(json_mode=False, out=io.StringIO(), err=err)
    p = Progress(rep, clock, total_entries=4, total_bytes=12 * MiB, uploader=up)
    assert p.enabled
    p.start()
    s = rep.stats
    s.bytes_done, s.files_unchanged, s.entries_done = 8 * MiB, 2, 2
    s.bytes_to_store, up.bytes_storing, up.bytes_sent = 4 * MiB, 4 * MiB, 1 * MiB
    clock.advance(0.5)
    up.bytes_sent = 2 * MiB
    clock.advance(0.5)
    drawn = err.getvalue()
    assert "2.0 MiB of ~4.0 MiB sent, 2.0 MiB/s, ETA 0:01; entries 2/4" in drawn
    assert " 50%|" in drawn
    assert not re.search(r"\d(kB|MB|GB)|[kMG]B/s|it/s", drawn)  # (tqdm's own SI units and rate are not used)
    p.stop()
    assert not clock.getDelayedCalls()


def test_no_progress_when_quiet_or_not_a_terminal():
    clock = Clock()
    for rep in (Reporter(err=io.StringIO()), _quiet(Reporter(err=Tty()))):
        p = Progress(rep, clock, 1, 1)
        p.start()
        assert not p.enabled and not clock.getDelayedCalls()
        p.stop()


def _quiet(rep: Reporter) -> Reporter:
    rep.quiet = True
    return rep


def test_every_summary_gives_sizes_in_the_one_style():
    """No summary prints a raw count of bytes, nor another unit style (restore printed 3000005 where backup
    printed KiB)."""
    texts = {}
    for kind, extra in (("backup", None), ("restore", {"written": 1}), ("verify", {"id": "abcdefab"})):
        err = io.StringIO()
        rep = Reporter(err=err)
        s = rep.stats
        s.bytes_read = s.bytes_written = s.bytes_to_store = 3000005
        s.bytes_sent, s.bytes_uploaded, s.bytes_deduplicated, s.bytes_compression_saved = 3001000, 3000005, 512, 2048
        rep.excluded({"--exclude-larger-than": [2, 5 * (1 << 30)]})
        rep.finish(kind, extra)
        texts[kind] = body = err.getvalue().split("\n", 1)[1]  # (after "KIND finished in 0.0s")
        assert "2.9 MiB" in body, body
        assert not re.search(r"\d{4,}", body), body
        assert not re.search(r"\d ?(kB|MB|GB|bytes)\b", body), body
    assert "2.9 MiB new or changed, 2.9 MiB read, 2.9 MiB sent to the grid" in texts["backup"]
    # What the backup added, in the words ``stats`` uses for the same figure.
    assert "sent to the grid; added: 2.9 MiB (contents and index, after compression)" in texts["backup"]
    assert "5.0 GiB of files" in texts["backup"] and "2.0 KiB" in texts["backup"] and "512 B" in texts["backup"]
    assert "2.9 MiB written" in texts["restore"]


def test_a_backups_json_summary_gives_the_bytes_it_added():
    out = io.StringIO()
    rep = Reporter(json_mode=True, out=out)
    rep.stats.bytes_uploaded = 12345
    rep.finish("backup")
    assert json.loads(out.getvalue())["bytes_added"] == 12345
    out2 = io.StringIO()
    Reporter(json_mode=True, out=out2).finish("restore")
    assert "bytes_added" not in json.loads(out2.getvalue())
