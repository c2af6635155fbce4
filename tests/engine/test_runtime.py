"""The runtime: blocking work runs in the reactor's thread pool (inline under a reactor without
threads, as a test's Clock), and a reporter method called from a thread runs on the reactor."""

from __future__ import annotations

import io
import threading

import pytest_twisted
from twisted.internet.task import Clock

from lafs_backup.engine.runtime import Runtime
from lafs_backup.report import Reporter


def rep() -> Reporter:
    return Reporter(out=io.StringIO(), err=io.StringIO())


@pytest_twisted.ensureDeferred
async def test_blocking_work_runs_off_the_reactor_thread():
    from twisted.internet import reactor

    rt = Runtime(reactor, rep())
    here = threading.get_ident()
    there = await rt.in_thread(threading.get_ident)
    assert there != here


@pytest_twisted.ensureDeferred
async def test_a_reactor_without_threads_runs_it_inline():
    rt = Runtime(Clock(), rep())
    assert await rt.in_thread(threading.get_ident) == threading.get_ident()
    calls: list[str] = []
    assert rt.threadsafe(calls.append) == calls.append  # nothing to hop over


@pytest_twisted.ensureDeferred
async def test_a_call_from_a_thread_lands_on_the_reactor_thread():
    from twisted.internet import reactor

    rt = Runtime(reactor, rep())
    seen: list[int] = []
    hop = rt.threadsafe(lambda: seen.append(threading.get_ident()))
    await rt.in_thread(hop)
    await rt.sleep(0.05)
    assert seen == [threading.get_ident()]
