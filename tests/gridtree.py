"""A snapshot's directories as the grid holds them, read with nothing but HTTP: for tests that look
at what a backup stored."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request


def listing(url: str, cap: str, path: str = "") -> dict:
    u = url + "uri/" + urllib.parse.quote(cap) + ("/" + path if path else "") + "?t=json"
    return json.load(urllib.request.urlopen(u))[1]["children"]


def edges(url: str, cap: str, path: str) -> dict:
    """The children of the directory at ``path`` in snapshot ``cap``, wherever its directories live:
    Tahoe directories, or the records of the snapshot index alone (read here as any reader would:
    the chunks linked from its index directory, each record checked against its name)."""
    from lafs_backup.store.index import records
    from lafs_backup.store.snapshot import INDEX_TREE, dir_id, index_caps

    root = listing(url, cap)
    tree = root["tree"][1]
    if INDEX_TREE not in tree.get("metadata", {}):
        return listing(url, tree["ro_uri"], path)
    bodies = {}
    for chunk in index_caps([None, {"children": listing(url, root["index"][1]["ro_uri"])}]):
        data = urllib.request.urlopen(url + "uri/" + chunk).read()
        for name, body, _names in records(data):
            assert dir_id(body) == name
            bodies[name] = json.loads(body)
    here = bodies[tree["metadata"][INDEX_TREE]]
    for part in filter(None, path.split("/")):
        here = bodies[here[part][1]["ro_uri"]]
    return here
