"""Tags changed after the fact: the change as a value, how changes apply, the rules a tag follows,
the repository's records of them (a fake mutable directory store), and --keep-tag in cleanup."""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st

from lafs_backup.engine import tags as tagging
from lafs_backup.engine.forget import by_name, by_policy
from lafs_backup.errors import SnapshotError, UsageError
from lafs_backup.history import Backup, check_tag
from lafs_backup.repository import Record, Repository, TagChange, retagged
from lafs_backup.upkeep.retention import Policy

DAY = 86400.0


def test_a_change_sets_then_removes_then_adds_keeping_order():
    assert TagChange("w/r", 1, "h", add=("b", "a", "b")).applied(("x",)) == ("x", "b", "a")
    assert TagChange("w/r", 1, "h", remove=("x",)).applied(("x", "y")) == ("y",)
    assert TagChange("w/r", 1, "h", set=("k",)).applied(("x", "y")) == ("k",)
    assert TagChange("w/r", 1, "h", set=()).applied(("x",)) == ()
    assert TagChange("w/r", 1, "h", add=("x",)).applied(("x",)) == ("x",)  # nothing to add


@given(st.lists(st.sampled_from("abcde"), max_size=5), st.lists(st.sampled_from("abcde"), max_size=5),
       st.lists(st.sampled_from("abcde"), max_size=5))
def test_applied_tags_are_a_set_with_the_adds_and_without_the_removes(tags, add, remove):
    add = [t for t in add if t not in remove]
    out = TagChange("w/r", 1, "h", add=tuple(add), remove=tuple(remove)).applied(tuple(tags))
    assert len(out) == len(set(out))
    assert set(out) == (set(tags) - set(remove)) | set(add)


def test_a_change_survives_its_metadata():
    c = TagChange("w/r", 1.25, "h", set=("a", "b"), writer="t", name="n")
    assert TagChange.from_metadata(json.loads(json.dumps(c.metadata())), "t", "n") == c
    assert TagChange.from_metadata({"lafs_backup_record": 1}, "t", "n") is None  # a backup's record
    assert TagChange.from_metadata({"lafs_backup_tags": 99, "target": "x", "time": 1}, "t", "n") is None


def rec(name: str, tags: tuple[str, ...] = ()) -> Record:
    return Record(f"URI:DIR2-CHK:{name}", "h", b"/src", 1.0, 1, tags, writer="w", name=name)


def test_changes_apply_in_time_order_to_the_backup_they_name():
    records = [rec("r1", ("daily",)), rec("r2", ("daily",))]
    changes = [TagChange("w/r1", 20, "b", remove=("keep",), writer="tb", name="2"),
               TagChange("w/r1", 10, "a", add=("keep",), writer="ta", name="1"),
               TagChange("w/r1", 15, "a", set=("keep", "x"), writer="ta", name="3"),
               TagChange("w/gone", 5, "a", add=("y",), writer="ta", name="4")]
    out = retagged(records, changes)
    assert [r.tags for r in out] == [("x",), ("daily",)]
    assert out[1] is records[1]


@pytest.mark.parametrize("bad, why", [("", "empty"), (" a", "blank"), ("a ", "blank"), ("a\nb", "control"),
                                      ("a,b", "','")])
def test_a_tag_is_refused_with_the_reason(bad, why):
    with pytest.raises(UsageError, match=why):
        check_tag(bad)


def test_a_tag_may_hold_most_things():
    for good in ("daily", "env=prod", "a b", "before/upgrade", "ünïcode", "-x"):
        assert check_tag(good) == good


def test_a_change_must_say_one_thing():
    with pytest.raises(UsageError, match="say what to change"):
        tagging.check_change(None, [], [])
    with pytest.raises(UsageError, match="--set replaces every tag"):
        tagging.check_change(["a"], ["b"], [])
    with pytest.raises(UsageError, match="both name a"):
        tagging.check_change(None, ["a"], ["a"])
    tagging.check_change([], [], [])  # an explicit empty set is no tag at all (only through the API)


def backup(i: int, ts: float, tags: tuple[str, ...] = (), recorded: bool = True) -> Backup:
    return Backup(f"w/r{i}" if recorded else f"local:{i}", i, f"URI:DIR2-CHK:{i}", b"/src", "src", ts, host="h",
                  tags=tags, row=i, writer="w" if recorded else None, record=f"r{i}" if recorded else None)


def test_plan_says_before_and_after_and_refuses_what_is_not_recorded():
    change = TagChange("", 1, "", add=("keep",))
    plans = tagging.plan([backup(1, 1, ("keep",)), backup(2, 2)], change)
    assert [(p.before, p.after, p.changed) for p in plans] == [(("keep",), ("keep",), False),
                                                               ((), ("keep",), True)]
    with pytest.raises(SnapshotError, match="not recorded in the repository yet"):
        tagging.plan([backup(3, 3, recorded=False)], change)


def test_keep_tag_keeps_whatever_the_policy_and_says_why():
    everything = [backup(1, 1 * DAY, ("release",)), backup(2, 2 * DAY), backup(3, 3 * DAY, ("release", "x"))]
    v = by_policy(everything, Policy(last=1), ("host", "source"), everything, None, 10 * DAY, lambda b: None,
                  ["release"])
    forget, keep = v.split(everything)
    assert [b.generation for b in forget] == [2]
    assert v.kept["w/r1"] == ["tag release"] and v.kept["w/r3"] == ["last", "tag release"]
    without = by_policy(everything, Policy(last=1), ("host", "source"), everything, None, 10 * DAY,
                        lambda b: None)
    assert sorted(without.reasons) == ["w/r1", "w/r2"]


def test_keep_tag_keeps_a_named_backup_too():
    everything = [backup(1, 1 * DAY, ("release",)), backup(2, 2 * DAY), backup(3, 3 * DAY)]
    v = by_name(everything, [everything[2]], [], True, ("host", "source"), ["release"])
    assert sorted(v.reasons) == ["w/r2", "w/r3"] and v.kept == {"w/r1": ["tag release"]}


class MutableDirs:
    """Tahoe's mutable directories, as much as the repository uses of them: a directory is a dict
    of name -> (cap, metadata).  ``drop`` loses that many writes (as a concurrent writer's would)."""

    def __init__(self) -> None:
        self.dirs: dict[str, dict[str, tuple[str, Any]]] = {}
        self.drop = 0
        self.writes = 0

    async def mkdir_mutable(self) -> str:
        cap = f"URI:DIR2:{len(self.dirs):026d}:{'x' * 52}"
        self.dirs[cap] = {}
        return cap

    async def get_json(self, cap: str, path: Sequence[str] = ()) -> Any:
        children = {name: ["dirnode" if c.startswith("URI:DIR2") else "filenode",
                           {"rw_uri" if c.startswith("URI:DIR2:") else "ro_uri": c, "metadata": m}]
                    for name, (c, m) in self.dirs[cap].items()}
        return ["dirnode", {"children": children}]

    async def set_children(self, dircap: str, children: Mapping[str, tuple[str, Any]], replace: bool = True) -> bool:
        self.writes += 1
        if self.drop:
            self.drop -= 1
            return True
        for name, (cap, meta) in children.items():
            if replace or name not in self.dirs[dircap]:
                self.dirs[dircap][name] = (cap, json.loads(json.dumps(meta)))
        return True

    async def unlink(self, dircap: str, name: str) -> bool:
        return self.dirs[dircap].pop(name, None) is not None


@pytest_twisted.ensureDeferred
async def test_changes_are_recorded_per_machine_read_back_and_forgotten_with_their_backup():
    grid = MutableDirs()
    repo = await Repository.create(grid)  # type: ignore[arg-type]
    first = await repo.add(Record("URI:DIR2-CHK:a", "ann", b"/src", 1.0, 1, ("daily",)))
    second = await repo.add(Record("URI:DIR2-CHK:b", "ann", b"/src", 2.0, 2, ("daily",)))
    target = f"{first.writer}/{first.name}"
    grid.drop = 1  # the first write is lost: it is made again
    await repo.add_changes("ann", [TagChange(target, 10.0, "ann", add=("keep",))])
    # Another machine's change, in a directory of its own: neither can lose the other's.
    await Repository(grid, repo.key).add_changes("bob", [TagChange(target, 11.0, "bob", remove=("daily",))])
    records, changes = await repo.contents()
    assert [r.tags for r in records] == [("daily",), ("daily",)]  # the records themselves are unchanged
    assert len(changes) == 2 and len({c.writer for c in changes}) == 2
    assert [r.tags for r in await Repository(grid, repo.key).records()] == [("keep",), ("daily",)]
    await repo.forget([first], host="ann")
    records, changes = await repo.contents()
    assert [r.name for r in records] == [second.name]
    assert [c.host for c in changes] == ["bob"]  # only this machine's own are removed
