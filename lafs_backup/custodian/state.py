"""The custodian's local state: every backup it observed (by its own clock), the forget requests, its
renewals (the last full pass, where the slow rotation stands, and when each range of storage indexes was
last renewed), and its local copies of the manifests; one JSON file, replaced whole at each change.

It holds no cap that reads a backup's data: the manifests' read caps (a manifest lists verify caps),
and the verify caps inside the manifest copies.  The inbox's and its own directory's caps stay in the key
file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import LafsBackupError
from ..system.paths import replacing
from .manifest import Manifest
from .rotation import END, Rotation, Span

#: The state file's format.
FORMAT = 1
STATE = "state.json"
STATUS = "status.json"
MANIFESTS = "manifests"


class StateError(LafsBackupError):
    """The custodian's state {path} cannot be used: {problem}"""


@dataclass
class Seen:
    """One backup the custodian observed: where (its writer's folder, its record's name), its manifest
    (a read cap of that file), its size, and the times by the custodian's own clock that it was first
    seen, found gone from the inbox, and forgotten (a forget request honoured); ``refused``: why its
    manifest was not accepted (then nothing of it is kept)."""

    folder: str
    record: str
    manifest: str
    size: int
    seen: float
    vanished: float | None = None
    forgotten: float | None = None
    refused: str | None = None
    #: Linked into the custodian's own directory.
    copied: bool = False
    #: When its objects joined the renewal (each one new to the custodian was renewed then; None: not
    #: yet, or its chain did not resolve), and the lowest and highest position of their storage indexes
    #: (hex; None: not known yet, or it references none).  Added with the slow rotation.
    joined: float | None = None
    span: list[str] | None = None
    #: A sealed repository's record of the backup, as its manifest's envelope carried it when first seen:
    #: a box only the recovery key opens (the custodian keeps it in its own directory, beside the manifest).
    box: str | None = None

    def positions(self) -> tuple[int, int] | None:
        """The lowest and highest position of its objects' storage indexes (None: not known)."""
        return None if not self.span else (int(self.span[0], 16), int(self.span[1], 16))

    @property
    def key(self) -> str:
        return f"{self.folder}/{self.record}"


@dataclass
class Forget:
    """A forget request: the backup it names, when it arrived, and when it took effect (None: pending)."""

    folder: str
    record: str
    seen: float
    honoured: float | None = None
    #: When the owner's cancel was seen (the recovery key's, in the owner's directory): it never takes effect.
    cancelled: float | None = None

    @property
    def pending(self) -> bool:
        return self.honoured is None and self.cancelled is None

    @property
    def key(self) -> str:
        return f"{self.folder}/{self.record}"


@dataclass
class Pass:
    """A renewal pass: when it started and ended, objects renewed, and the storage indexes of the objects
    found with fewer shares than they were made with (``short``) or with fewer than rebuild them
    (``lost``), and answers missing (a server down or silent)."""

    started: float
    finished: float
    backups: int
    objects: int
    renewed: int
    requests: int
    short: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    unanswered: int = 0
    #: The kept backups whose chain of local manifest copies did not resolve: their objects were not
    #: renewed in this pass (added after the first release of the format; absent: none).
    unresolved: list[str] = field(default_factory=list)
    #: Did the servers say which shares they hold (a census)?  A pass without one renews with one
    #: ``add_lease`` per object and server, and says nothing of shares.  (Absent: passes before the
    #: slow rotation, which all took a census.)
    census: bool = True


@dataclass
class Tick:
    """One turn of the slow rotation: when it started and ended, the share of the round it covered
    (``lo`` to ``hi``, fractions of the space of storage indexes), the objects renewed (``joining`` of
    them the new objects of backups that joined), those some server holds, the requests sent, the
    answers missing, the objects found short or lost, and whether it ended the round (``wrapped``) or
    was a full pass (``full``: the first turn, when no rotation stood yet)."""

    started: float
    finished: float
    lo: float
    hi: float
    objects: int
    joining: int
    renewed: int
    requests: int
    unanswered: int = 0
    short: int = 0
    lost: int = 0
    wrapped: bool = False
    full: bool = False


@dataclass
class Complete:
    """The last complete renewal of everything kept: a full pass, or a round of the rotation (each
    object renewed between ``started`` and ``finished``)."""

    started: float
    finished: float
    by: str


@dataclass
class State:
    backups: dict[str, Seen] = field(default_factory=dict)
    forgets: dict[str, Forget] = field(default_factory=dict)
    #: When a new manifest last arrived (None: never), and when this custodian first ran.
    last_new: float | None = None
    started: float | None = None
    last_pass: Pass | None = None
    #: The first pass that failed since the last complete one (None: none failed), and why the last one did.
    failing_since: float | None = None
    failure: str | None = None
    #: Manifests in the inbox that could not be read (a gateway or grid error, tried again at each
    #: reading of the inbox): their key -> when that first happened.  Nothing else is recorded of them.
    unreadable: dict[str, float] = field(default_factory=dict)
    #: The slow rotation (None: it has not begun; its first turn is a full pass), when each range of
    #: storage indexes was last renewed (a span per slice: never a time per object), the last turn,
    #: and the last complete renewal of everything.
    rotation: Rotation | None = None
    spans: list[Span] = field(default_factory=list)
    last_tick: Tick | None = None
    complete: Complete | None = None
    #: What the renewals found, as they stand: the storage indexes of the objects with fewer shares
    #: than they were made with (``short``) or than rebuild them (``lost``), by the last census of each;
    #: the kept backups whose chain did not resolve; the answers missing in the last renewal.
    short: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)
    unanswered: int = 0

    def json(self) -> dict[str, Any]:
        r = self.rotation
        return {"lafs_backup_custodian": FORMAT, "backups": [dataclasses.asdict(b) for b in self.backups.values()],
                "forgets": [dataclasses.asdict(f) for f in self.forgets.values()], "last_new": self.last_new,
                "started": self.started, "failing_since": self.failing_since, "failure": self.failure,
                "unreadable": dict(self.unreadable),
                "last_pass": dataclasses.asdict(self.last_pass) if self.last_pass else None,
                "rotation": None if r is None else {"started": r.started, "at": format(r.at, "x")},
                "spans": [[format(s.end, "x"), s.time] for s in self.spans],
                "last_tick": dataclasses.asdict(self.last_tick) if self.last_tick else None,
                "complete": dataclasses.asdict(self.complete) if self.complete else None,
                "short": self.short, "lost": self.lost, "unresolved": self.unresolved,
                "unanswered": self.unanswered}

    @classmethod
    def from_json(cls, body: Any) -> "State":
        if not isinstance(body, dict) or body.get("lafs_backup_custodian") != FORMAT:
            raise ValueError("not a custodian state")
        backups = [Seen(**b) for b in body.get("backups", [])]
        forgets = [Forget(**f) for f in body.get("forgets", [])]
        lp = body.get("last_pass")
        unreadable = body.get("unreadable") or {}
        if not isinstance(unreadable, dict):
            raise TypeError("not a custodian state")
        last_pass = Pass(**lp) if lp else None
        st = cls({b.key: b for b in backups}, {f.key: f for f in forgets}, body.get("last_new"),
                 body.get("started"), last_pass, body.get("failing_since"),
                 body.get("failure"), {str(k): float(v) for k, v in unreadable.items()})
        if "spans" not in body:
            # A state from before the slow rotation: its last pass renewed everything it kept then, and
            # its findings stand until the rotation's census replaces them.
            if last_pass is not None:
                st.spans = [Span(END, last_pass.started)]
                for b in st.backups.values():
                    if b.seen <= last_pass.started and b.refused is None:
                        b.joined = last_pass.started
                st.short, st.lost = list(last_pass.short), list(last_pass.lost)
                st.unresolved, st.unanswered = list(last_pass.unresolved), last_pass.unanswered
                st.complete = Complete(last_pass.started, last_pass.finished, "pass")
            return st
        r, lt, c = body.get("rotation"), body.get("last_tick"), body.get("complete")
        st.rotation = None if r is None else Rotation(float(r["started"]), int(r["at"], 16))
        st.spans = [Span(int(end, 16), None if t is None else float(t)) for end, t in body["spans"]]
        st.last_tick = Tick(**lt) if lt else None
        st.complete = Complete(**c) if c else None
        st.short, st.lost = list(body.get("short", [])), list(body.get("lost", []))
        st.unresolved, st.unanswered = list(body.get("unresolved", [])), int(body.get("unanswered", 0))
        return st


class StateDir:
    """The custodian's state directory (made 0700): the state file, the status file, and the local copies
    of the manifests (named by a digest of their caps)."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.join(path, MANIFESTS), mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)

    def load(self) -> State:
        """The state (a new one when there is none yet)."""
        path = os.path.join(self.path, STATE)
        try:
            with open(path, encoding="utf-8") as f:
                return State.from_json(json.load(f))
        except FileNotFoundError:
            return State()
        except (OSError, ValueError, TypeError) as e:
            raise StateError(path=path, problem=getattr(e, "strerror", None) or str(e)) from None

    def save(self, state: State) -> None:
        with replacing(os.path.join(self.path, STATE)) as f:
            json.dump(state.json(), f, indent=1, sort_keys=True)

    def write_status(self, body: dict[str, Any]) -> str:
        """Replace the status file with ``body``; returns its path."""
        path = os.path.join(self.path, STATUS)
        with replacing(path) as f:
            json.dump(body, f, indent=1, sort_keys=True)
        return path

    def _manifest_path(self, cap: str) -> str:
        return os.path.join(self.path, MANIFESTS, hashlib.sha256(cap.encode("ascii")).hexdigest()[:32] + ".json")

    def manifest(self, cap: str) -> Manifest | None:
        """The local copy of the manifest ``cap`` (None: none)."""
        try:
            with open(self._manifest_path(cap), "rb") as f:
                return Manifest.decode(f.read())
        except FileNotFoundError:
            return None

    def keep_manifest(self, cap: str, m: Manifest) -> None:
        """Keep a local copy of a manifest (accepted: verify caps only)."""
        with replacing(self._manifest_path(cap)) as f:
            f.write(m.encode().decode("ascii"))
