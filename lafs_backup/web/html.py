"""The dashboard's HTML: escaping, addresses and the page frame (pure).

Every text that reaches a page goes through :func:`esc` (file names are
hostile input), and every address through :func:`href`: paths are
percent-encoded bytes, so a name that is not UTF-8 has an address too.
"""

from __future__ import annotations

import html
import urllib.parse
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from ..names import shown

#: The stylesheet's address (served by the dashboard itself: nothing is fetched from elsewhere).
STYLE = "/style.css"

CSS = b"""\
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
header{background:#23395d;color:#fff;padding:.5em 1em;display:flex;gap:1.5em;align-items:baseline}
header a{color:#fff;text-decoration:none}header b{font-size:1.1em;margin-right:1em}
main{padding:1em 1.5em;max-width:80em}
h1{font-size:1.4em;margin:.3em 0 .6em}h2{font-size:1.15em;margin:1.2em 0 .4em}
table{border-collapse:collapse;background:#fff}
th,td{border-bottom:1px solid #ddd;padding:.25em .7em;text-align:left;vertical-align:top}
th{background:#eef1f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,monospace;font-size:.95em}
.ok{color:#1a7f37}.warning{color:#9a6700}.critical{color:#cf222e}.unknown{color:#6e7781}
.badge{display:inline-block;padding:.1em .6em;border-radius:.8em;color:#fff;font-weight:600}
.badge.ok{background:#1a7f37}.badge.warning{background:#bf8700}.badge.critical{background:#cf222e}
.badge.unknown{background:#6e7781}
form.filters{display:flex;gap:1em;align-items:end;margin:.5em 0 1em}
form.filters label{display:flex;flex-direction:column;font-size:.9em}
.crumbs a{text-decoration:none}.muted{color:#6e7781}
svg.chart{background:#fff;border:1px solid #ddd;max-width:100%;height:auto}
svg .bar{fill:#3b6fb6}svg .axis{stroke:#888;stroke-width:1}svg text{font:11px sans-serif;fill:#333}
svg .late{fill:#cf222e}svg .soon{fill:#bf8700}svg .fine{fill:#1a7f37}svg .now{stroke:#cf222e;stroke-dasharray:4 3}
ul.warnings li{margin:.2em 0}
"""


def esc(text: object) -> str:
    """``text`` safe in an element's content and in a quoted attribute."""
    return html.escape(str(text), quote=True)


def name_text(raw: bytes) -> str:
    """A name or path of a snapshot as one printable line (``names.shown``), escaped."""
    return esc(shown(raw))


def quote_path(raw: bytes) -> str:
    """A snapshot path's bytes as an address's path (percent-encoded, ``/`` kept)."""
    return urllib.parse.quote(raw, safe="/")


def href(path: str, query: Mapping[str, str | None] | None = None) -> str:
    """An address on the dashboard: ``path`` (already quoted) and the query's non-empty values."""
    q = {k: v for k, v in (query or {}).items() if v}
    return esc(path + ("?" + urllib.parse.urlencode(q) if q else ""))


def backup_url(short_id: str, view: str, raw: bytes = b"") -> str:
    """The address of one view (``tree``, ``file``, ``raw``, ``tar``) of a path in a backup."""
    return f"/b/{urllib.parse.quote(short_id, safe='')}/{view}/{quote_path(raw)}"


def link(url: str, text: str, cls: str = "") -> str:
    """``<a>``: ``url`` from :func:`href` (escaped), ``text`` already escaped."""
    return f'<a href="{url}"' + (f' class="{esc(cls)}"' if cls else "") + f">{text}</a>"


@dataclass
class Table:
    """A table: headers, and rows of cells already escaped (a cell ``("n", html)`` is a number)."""

    head: list[str]
    rows: list[list[str | tuple[str, str]]] = field(default_factory=list)

    def render(self) -> str:
        out = ["<table><thead><tr>", *(f"<th>{esc(h)}</th>" for h in self.head), "</tr></thead><tbody>"]
        for row in self.rows:
            out.append("<tr>")
            for cell in row:
                if isinstance(cell, tuple):
                    out.append(f'<td class="{esc(cell[0])}">{cell[1]}</td>')
                else:
                    out.append(f"<td>{cell}</td>")
            out.append("</tr>")
        out.append("</tbody></table>")
        return "".join(out)


def select(name: str, label: str, choices: Iterable[tuple[str, str]], chosen: str | None) -> str:
    """A ``<select>`` of (value, text) pairs, with an empty "any" first."""
    opts = ['<option value="">any</option>']
    for value, text in choices:
        sel = " selected" if value == chosen else ""
        opts.append(f'<option value="{esc(value)}"{sel}>{esc(text)}</option>')
    return f'<label>{esc(label)}<select name="{esc(name)}">{"".join(opts)}</select></label>'


NAV = (("/", "Status"), ("/backups", "Backups"), ("/diff", "Diff"), ("/leases", "Leases"))


def page(title: str, body: str) -> bytes:
    """A whole page: ``title`` (plain text) and ``body`` (HTML already escaped)."""
    nav = "".join(link(url, esc(text)) for url, text in NAV)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<meta name=\"referrer\" content=\"no-referrer\"><title>{esc(title)} · lafs-backup</title>"
            f"<link rel=\"stylesheet\" href=\"{STYLE}\"></head><body>"
            f"<header><b>lafs-backup</b>{nav}</header><main>{body}</main></body></html>\n").encode(
                "utf-8", "backslashreplace")  # (a name that is not UTF-8 is shown by names.shown first)


def error_page(code: int, message: str) -> bytes:
    """A page that says what went wrong (``message``: plain text)."""
    return page(f"{code}", f"<h1>{code}</h1><p>{esc(message)}</p>")
