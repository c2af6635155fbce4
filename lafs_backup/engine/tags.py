"""Tagging backups after the fact: each backup's new tags (a pure decision), recorded in the
repository as tag changes of their own, never by rewriting a backup's record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from ..errors import SnapshotError, UsageError
from ..history import Backup

if TYPE_CHECKING:
    from ..db.local_history import LocalHistory
    from ..repository import Repository, TagChange


@dataclass(frozen=True)
class Retag:
    """One backup's tags before and after a ``tag`` command (the same: nothing is recorded for it)."""

    backup: Backup
    before: tuple[str, ...]
    after: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return self.before != self.after


def check_change(set_: Sequence[str] | None, add: Sequence[str], remove: Sequence[str]) -> None:
    """:class:`UsageError` for a change that says nothing, or says two things at once."""
    if set_ is None and not add and not remove:
        raise UsageError("say what to change: --add TAG, --remove TAG or --set TAG (each repeatable)")
    if set_ is not None and (add or remove):
        raise UsageError("--set replaces every tag: give it alone, not with --add or --remove")
    both = sorted(set(add) & set(remove))
    if both:
        raise UsageError(f"--add and --remove both name {', '.join(both)}")


def plan(chosen: Sequence[Backup], change: TagChange) -> list[Retag]:
    """What ``change`` (its ``target`` unused) makes of each chosen backup's tags.  Raises
    :class:`SnapshotError` for a backup the repository does not record yet (nothing to name)."""
    out = []
    for b in chosen:
        if not (b.writer and b.record):
            raise SnapshotError(what=b.short_id, problem="this backup is not recorded in the repository yet (the "
                                                         "next backup of its source records it): tag it then")
        out.append(Retag(b, b.tags, change.applied(b.tags)))
    return out


async def record(repo: Repository, host: str, change: TagChange, plans: Sequence[Retag]) -> list[TagChange]:
    """Record ``change`` for every planned backup whose tags it changes, in ``host``'s own
    directory of the repository; returns the changes recorded."""
    import dataclasses

    todo = [dataclasses.replace(change, target=p.backup.id, host=host) for p in plans if p.changed]
    return await repo.add_changes(host, todo) if todo else []


def keep_own(history: LocalHistory, plans: Sequence[Retag]) -> None:
    """A sealed repository's host cannot read its tag changes back from the repository: it keeps the tags
    of its own backups (those with a row in ``history``) as the changes left them."""
    for p in plans:
        if p.changed and p.backup.row is not None:
            history.set_tags(p.backup.row, p.after)
