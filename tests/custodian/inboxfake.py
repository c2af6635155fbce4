"""An in-memory gateway with mutable directories, for the custodian's unit tests: the host publishes into
an inbox through it and the custodian reads it and writes its own directory, as on a grid.

Immutable files get well-formed CHK caps (the custodian checks a manifest's cap by its form), directories
well-formed ``URI:DIR2:`` write caps and ``URI:DIR2-RO:`` read caps (the custodian renews their verify
caps), and a listing through a read cap shows no write caps, as Tahoe's does.  ``broken`` names calls
that fail (a GatewayError) until removed from it: ``("download", cap)``, ``("set_children", dircap)``,
``("get_json", cap)``, ``("unlink", dircap)``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from allmydata import uri
from fakes import FakeGateway

from lafs_backup.errors import GatewayError
from lafs_backup.protocols import JSON


def chk_cap(data: bytes) -> str:
    """A well-formed CHK read cap of ``data`` (the same bytes, the same cap)."""
    key = hashlib.sha256(b"key" + data).digest()[:16]
    ueb = hashlib.sha256(b"ueb" + data).digest()
    return uri.CHKFileURI(key, ueb, 2, 3, len(data)).to_string().decode()


def verify_cap(i: int) -> str:
    """The verify cap of an object numbered ``i``."""
    return uri.CHKFileURI(i.to_bytes(16, "big"), bytes(32), 2, 3, 1000 + i).get_verify_cap().to_string().decode()


class InboxGateway(FakeGateway):
    def __init__(self) -> None:
        super().__init__()
        #: Mutable directories: number -> name -> (cap, metadata); a directory's caps -> (number, read-only).
        self.mutable: dict[int, dict[str, tuple[str, dict[str, Any]]]] = {}
        self.dircaps: dict[str, tuple[int, bool]] = {}
        self.writecaps: dict[int, str] = {}
        self.readcaps: dict[int, str] = {}
        self.broken: set[tuple[str, str]] = set()
        #: Every cap listed (get_json), in order.
        self.listed: list[str] = []
        #: Snapshot cap -> the caps its manifest (``t=stream-manifest``) lists.
        self.snapshots: dict[str, list[str]] = {}

    def _break(self, op: str, cap: str) -> None:
        if (op, cap) in self.broken:
            raise GatewayError("GET", "(fake)", 500, "fake failure", reason="a fake fault")

    def _file_cap(self, data: bytes) -> str:
        cap = chk_cap(data)
        self.objects[cap] = data
        return cap

    def _number(self, cap: str) -> tuple[int, bool]:
        return self.dircaps[cap]

    async def mkdir_mutable(self) -> str:
        n = len(self.mutable) + 1
        self.mutable[n] = {}
        node = uri.WriteableSSKFileURI(n.to_bytes(16, "big"), hashlib.sha256(b"%d" % n).digest())
        rw = uri.DirectoryURI(node)
        self.writecaps[n] = rw.to_string().decode()
        self.readcaps[n] = rw.get_readonly().to_string().decode()
        self.dircaps[self.writecaps[n]] = (n, False)
        self.dircaps[self.readcaps[n]] = (n, True)
        return self.writecaps[n]

    async def get_json(self, cap: str, path: Sequence[str] = ()) -> JSON:
        self.listed.append(cap)
        self._break("get_json", cap)
        n, ro = self._number(cap)
        children = {}
        for name, (child, meta) in self.mutable[n].items():
            if child in self.dircaps:
                c = self.dircaps[child][0]
                info = {"ro_uri": self.readcaps[c], "metadata": meta}
                if not ro and not self.dircaps[child][1]:
                    info["rw_uri"] = child
                children[name] = ["dirnode", info]
            else:
                children[name] = ["filenode", {"ro_uri": child, "metadata": meta}]
        top = {"ro_uri": self.readcaps[n], "children": children}
        if not ro:
            top["rw_uri"] = self.writecaps[n]
        return ["dirnode", top]

    async def set_children(self, dircap: str, children: Mapping[str, tuple[str, JSON]],
                           replace: bool = True) -> bool:
        self._break("set_children", dircap)
        n, ro = self._number(dircap)
        assert not ro, "set_children through a read cap"
        for name, (child, meta) in children.items():
            if replace or name not in self.mutable[n]:
                self.mutable[n][name] = (child, dict(meta or {}))
        return True

    async def unlink(self, dircap: str, name: str) -> bool:
        self._break("unlink", dircap)
        n, ro = self._number(dircap)
        assert not ro, "unlink through a read cap"
        return self.mutable[n].pop(name, None) is not None

    async def download(self, cap: str, sink: Callable[[bytes], None],
                       restart: Callable[[], None] | None = None) -> int:
        self._break("download", cap)
        return await super().download(cap, sink, restart)

    async def stream_manifest(self, cap: str, sink: Callable[[bytes], None]) -> None:
        sink(b"".join(json.dumps({"cap": c}).encode() + b"\n" for c in self.snapshots[cap]))

    def names(self, dircap: str) -> dict[str, tuple[str, dict[str, Any]]]:
        """What a directory holds now: name -> (cap, metadata)."""
        return dict(self.mutable[self._number(dircap)[0]])
