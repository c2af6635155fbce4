"""Phase two's setting of Python's cycle collector is put back as it was, and is left to the outermost block."""

from __future__ import annotations

import gc

import pytest

from lafs_backup.backup.collector import FULL_EVERY, rare_full_collections


def test_freezes_and_spaces_full_collections_then_restores():
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    kept = [object(), [1, 2]]  # alive at the start: frozen within the block
    with rare_full_collections():
        assert gc.get_threshold() == (before[0], before[1], FULL_EVERY)
        assert gc.get_freeze_count() > frozen
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert kept


def test_restores_when_the_block_raises():
    before = gc.get_threshold()
    with pytest.raises(RuntimeError):
        with rare_full_collections():
            raise RuntimeError("phase two failed")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_nested_block_leaves_it_to_the_outer_one():
    before = gc.get_threshold()
    with rare_full_collections():
        with rare_full_collections():
            assert gc.get_threshold()[2] == FULL_EVERY
        # The inner block ended: the outer one's setting stands.
        assert gc.get_threshold()[2] == FULL_EVERY
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before


def test_collects_cycles_made_within_the_block():
    class Node:
        pass

    with rare_full_collections():
        a, b = Node(), Node()
        a.other, b.other = b, a  # type: ignore[attr-defined]
        del a, b
        assert gc.collect() >= 2  # (young garbage is still found)


def test_trimming_runs_in_its_thread_within_the_block_only():
    import threading

    from lafs_backup.backup.collector import trimming

    calls: list[str] = []
    three = threading.Event()

    def trim_fn() -> None:
        calls.append(threading.current_thread().name)
        if len(calls) == 3:
            three.set()

    with trimming(0.001, trim_fn):
        assert three.wait(30)  # (an event, not a duration: it came three times)
    done = len(calls)
    assert done >= 3 and set(calls) == {"lafs-backup heap trim"}
    assert not any(t.name == "lafs-backup heap trim" for t in threading.enumerate())  # (stopped and joined)
    assert len(calls) == done
    with pytest.raises(RuntimeError):
        with trimming(0.001, trim_fn):
            raise RuntimeError("phase two failed")
    assert not any(t.name == "lafs-backup heap trim" for t in threading.enumerate())
