"""The dashboard's pure parts: escaping, addresses, charts, the attachment header (no grid)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from lafs_backup.web.html import Table, backup_url, esc, href, name_text, page, select
from lafs_backup.web.server import content_disposition
from lafs_backup.web.svg import Lease, Point, lease_chart, margin_class, sizes_chart

HOSTILE = "<script>alert('x')</script>\"q'&amp;"


def test_text_and_attributes_are_escaped():
    out = page(HOSTILE, Table([HOSTILE], [[esc(HOSTILE)]]).render() + select("s", HOSTILE, [(HOSTILE, HOSTILE)],
                                                                               HOSTILE)).decode()
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert '"q' not in out.replace('"q"', "")  # every quote of the name is an entity
    assert name_text(b"<b>\xff\"") == "&lt;b&gt;\\xff&quot;"


@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b))
def test_a_path_of_any_bytes_has_an_address_that_gives_it_back(name):
    import urllib.parse

    url = backup_url("0123abcd", "file", b"dir/" + name)
    assert re.fullmatch(r"[A-Za-z0-9/%._~-]+", url)
    assert urllib.parse.unquote_to_bytes(url.split("/file/", 1)[1]) == b"dir/" + name


def test_href_drops_empty_values_and_escapes_the_ampersand():
    assert href("/backups", {"host": "a&b", "tag": None, "source": ""}) == "/backups?host=a%26b"
    assert href("/diff", {"a": "1", "b": "2"}) == "/diff?a=1&amp;b=2"


@given(st.text(min_size=1, max_size=30))
def test_the_attachment_header_is_ascii_and_one_line(name):
    h = content_disposition(name)
    assert h.isascii() and b"\r" not in h and b"\n" not in h
    plain = re.search(rb'filename="([^"]*)"', h)
    assert plain is not None and b'"' not in plain.group(1) and b";" not in plain.group(1)


def test_charts_draw_a_bar_per_backup_and_escape_labels():
    svg = sizes_chart([Point(1_700_000_000 + i * 86400, 1000 * (i + 1), HOSTILE) for i in range(5)])
    assert svg.count('<rect class="bar"') == 5 and "<script>" not in svg and "style=" not in svg
    assert sizes_chart([]) == ""
    now = 1_700_000_000.0
    svg = lease_chart([Lease("a", now + 3 * 86400), Lease("b", now + 10 * 86400), Lease(HOSTILE, now + 30 * 86400),
                       Lease("gone", now - 86400)], now)
    assert [m for m in re.findall(r'<rect class="(\w+)"', svg)] == ["late", "soon", "fine", "late"]
    assert "<script>" not in svg
    assert [margin_class(d) for d in (-1, 6.9, 7, 13.9, 14)] == ["late", "late", "soon", "soon", "fine"]
