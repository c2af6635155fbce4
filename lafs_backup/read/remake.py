"""Derived files read back: every read of a file stored as its recipe runs the recipe's program again,
on its inputs read from the same snapshot, and hands out the bytes only once they are the ones recorded.

A repository cannot make this machine run code: a recipe runs only if its program is in this machine's
``derive.allowed_programs`` and this machine's rule of the recipe's name renders exactly the recorded
run (``derive.recipe.matches_rule``).  Each input must be a regular file of the same snapshot with the
hash the recipe recorded; it is read through the reader (a derived input is itself made again first,
to a bounded depth, a cycle refused) and staged in an empty scratch directory with its recorded mode
and time (``system/programs.py``).  The SHA-256 and size of what the run made are compared with the
edge's before the first byte reaches the caller's sink: a failure is a :class:`Content` that does not
match, whose ``mismatch`` names the rule and says why.

Reads that arrive together and share a rule's batch key are one process (``derive.batch`` files at
most); ``derive.jobs`` processes run at once, and while they run the next requests gather.  One run
of a recipe with several outputs serves each of them asked for while it is pending or running.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from ..config import DeriveConfig
from ..derive.recipe import KEY, MAX_DEPTH, BadRecipe, Input, Recipe, matches_rule, of
from ..derive.rules import STDOUT, Job, Rules, argv
from ..errors import SnapshotError
from ..protocols import InThread
from ..slots import Slots
from ..store.entry import KIND_FILE
from ..store.snapshot import Node
from ..system.programs import NotAllowed, Program, ProgramError, Programs, Ran, Runner, Staged
from .locate import Paths
from .reader import Content, Reader

log = logging.getLogger(__name__)

#: Finds a node of the snapshot being read by its path relative to the source root (None: not there).
Lookup = Callable[[str], Awaitable[Node | None]]

#: An input up to this size is staged from memory; a larger one from a private temporary file.
MEMORY = 128 << 10
#: How deep derived files may be made from derived files.
DEPTH = MAX_DEPTH
_CHUNK = 1 << 20


def lookup_in(paths: Paths, cap: str, keep: int = 256) -> Lookup:
    """The lookup of snapshot ``cap``'s files, through ``paths`` (the few index chunks on the way
    to each, where its tree lives in its index alone).  The entries of the last ``keep`` directories
    looked in are kept: the inputs of a directory's derived files are mostly in one or two."""
    dirs: OrderedDict[str, dict[bytes, Node]] = OrderedDict()

    async def lookup(path: str) -> Node | None:
        parent, _, name = path.rpartition("/")
        kids = dirs.get(parent)
        if kids is None:
            try:
                item = await paths.lookup(cap, parent.encode("utf-8"))
                kids = {c.node.name: c.node for c in await paths.browser.children(item)}
            except SnapshotError:
                return None
            dirs[parent] = kids
            if len(dirs) > keep:
                dirs.popitem(last=False)
        else:
            dirs.move_to_end(parent)
        return kids.get(name.encode("utf-8"))
    return lookup


def make(reader: Reader, conf: DeriveConfig, in_thread: InThread, lookup: Lookup | None = None,
         tmpdir: str | None = None) -> Remaker:
    """The remaker of a command reading through ``reader``, with this machine's ``derive`` settings.
    With ``lookup`` (the files of the one snapshot the command reads) it is set as the reader's:
    every derived file the reader is asked for is made again.  Without, it serves each snapshot
    through :meth:`Remaker.at` (a mount, the dashboard)."""
    remaker = Remaker(reader, conf.rules, Programs(conf.allowed_programs), Runner(conf.timeout, tmpdir), in_thread,
                      lookup or _nowhere, jobs=conf.jobs, batch=conf.batch, tmpdir=tmpdir)
    if lookup is not None:
        reader.remaker = remaker
    return remaker


async def _nowhere(path: str) -> Node | None:
    """The lookup of a remaker not given a snapshot: it finds nothing."""
    return None


class Remaker:
    """Makes derived files of one snapshot again (see the module's docstring).

    ``lookup`` finds the snapshot's files; ``reader`` reads them; ``programs`` and ``rules`` decide
    what may run; ``runner`` runs it, in a thread (``in_thread``), ``jobs`` runs at once, up to
    ``batch`` files a run.  ``clock`` (None: the reader's) is the reactor batches gather on.
    """

    def __init__(self, reader: Reader, rules: Rules, programs: Programs, runner: Runner, in_thread: InThread,
                 lookup: Lookup, jobs: int = 2, batch: int = 200, clock: IReactorTime | None = None,
                 tmpdir: str | None = None, depth: int = DEPTH) -> None:
        self.reader = reader
        self.rules = rules
        self.programs = programs
        self.lookup = lookup
        self.runs = _Runs(runner, in_thread, jobs, batch, clock if clock is not None else reader.clock)
        self._in_thread = in_thread
        self._found: dict[str, Program | ProgramError] = {}
        self._tmpdir = tmpdir
        self._depth = depth

    def at(self, lookup: Lookup) -> Remaker:
        """The same remaker for another snapshot (found by ``lookup``): its runs, their slots and
        batches, and the programs found, shared."""
        other = copy.copy(self)
        other.lookup = lookup
        return other

    async def content(self, node: Node, sink: Callable[[bytes], object],
                      restart: Callable[[], None] = lambda: None,
                      hole: Callable[[int], object] | None = None) -> Content:
        """Make the derived file ``node`` again and feed its bytes to ``sink``, as
        :meth:`Reader.content` does a stored file's (``restart`` is never called: nothing is fed
        before the whole output was checked).  A file that cannot be made, or not as recorded, is a
        :class:`Content` that does not match, saying why; ``sink`` then got nothing."""
        return await self._content(node, sink, ())

    async def _content(self, node: Node, sink: Callable[[bytes], object], chain: tuple[str, ...]) -> Content:
        size, sha = node.metadata.get("size"), node.metadata.get("sha256")
        recorded = size if isinstance(size, int) else None
        wanted = sha if isinstance(sha, str) else None

        def failed(why: str) -> Content:
            log.info("cannot remake %r: %s", node.name, why)
            return Content(0, "", recorded, wanted, problem=why)

        try:
            recipe = of(node.metadata)
        except BadRecipe as e:
            return failed(f"a derived file: {e}; it cannot be made again")
        if recipe is None:  # (not a derived file after all: read as any other)
            return await self.reader.content(node, sink)
        rule = f"derived file (rule {recipe.rule})"
        if wanted is None or recorded is None:
            return failed(f"{rule}: no SHA-256 and size are recorded to check it against")
        try:
            program = await self._program(recipe.program)
        except ProgramError as e:
            hint = " (add it there to remake this file)" if isinstance(e, NotAllowed) else ""
            return failed(f"{rule}: {e.reason}{hint}")
        why = matches_rule(recipe, self.rules)
        if why is not None:
            return failed(f"{rule}: {why}; it is not run")
        if recipe.path in chain:
            return failed(f"{rule}: it is made from itself ({' -> '.join(chain + (recipe.path,))})")
        if len(chain) >= self._depth:
            return failed(f"{rule}: it is made from derived files more than {self._depth} deep")
        held: list[_Held] = []
        try:
            staged = []
            for i in recipe.inputs:
                found = await self.lookup(i.path)
                if found is None or not _holds(found, i):
                    return failed(f"{rule}: input {i.path} is not in this snapshot as the recipe recorded it")
                buf = _Held(self._tmpdir)
                held.append(buf)
                if KEY in found.metadata:
                    got = await self._content(found, buf.write, chain + (recipe.path,))
                else:
                    got = await self.reader.content(found, buf.write, buf.restart)
                if got.matches is not True or got.sha256 != i.sha256:
                    return failed(f"{rule}: input {i.path} cannot be read back: {got.mismatch}")
                staged.append(buf.staged(i.path, i.mode, i.mtime_ns))

            def serve(ran: Ran | None, error: str | None) -> Content:
                return self._serve(recipe, rule, ran, error, sink, recorded, wanted, failed)

            result: Content = await self.runs.run(recipe, program, staged, serve)
            return result
        finally:
            for buf in held:
                buf.close()

    def _serve(self, recipe: Recipe, rule: str, ran: Ran | None, error: str | None, sink: Callable[[bytes], object],
               recorded: int, wanted: str, failed: Callable[[str], Content]) -> Content:
        """(While the run's scratch directory is there.)  Check what the run made of ``recipe``'s
        file, then feed it to ``sink``."""
        where = recipe.made_at if recipe.output == 0 else recipe.path
        made = None
        if ran is not None:
            made = ran.stdout_sha256 if where == STDOUT else ran.outputs.get(where)
        if made != (wanted, recorded):
            if made is None or error is not None:
                return failed(f"{rule}: {error or 'the program did not make it'}")
            return Content(made[1], made[0], recorded, wanted,
                           problem=f"{rule}: remade bytes differ from the recorded ones")
        assert ran is not None
        # Copied out of the scratch directory and checked again before the first byte is fed: nothing the
        # program left running could change what the caller gets after the check.
        with tempfile.SpooledTemporaryFile(max_size=MEMORY * 64, dir=self._tmpdir) as copy:
            h = hashlib.sha256()
            n = 0
            with ran.open(where) as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                    n += len(chunk)
                    copy.write(chunk)
            if (h.hexdigest(), n) != (wanted, recorded):
                return Content(n, h.hexdigest(), recorded, wanted,
                               problem=f"{rule}: remade bytes changed after the run; they are not used")
            copy.seek(0)
            while chunk := copy.read(_CHUNK):
                sink(chunk)
        return Content(n, h.hexdigest(), recorded, wanted)

    async def _program(self, name: str) -> Program:
        """The allowed program ``name`` (found once: its executable is hashed in a thread)."""
        hit = self._found.get(name)
        if hit is None:
            try:
                hit = await self._in_thread(self.programs.find, name)
            except ProgramError as e:
                hit = e
            self._found[name] = hit
        if isinstance(hit, ProgramError):
            raise hit
        return hit


async def recipe_problem(node: Node, lookup: Lookup) -> str | None:
    """What is wrong with the derived file ``node`` without running anything (None: nothing): its
    recipe must be one this version reads, its hash and size recorded, and each of its inputs a file
    of the snapshot (found by ``lookup``) with the hash and size the recipe recorded."""
    try:
        recipe = of(node.metadata)
    except BadRecipe as e:
        return f"a derived file: {e}"
    if recipe is None:
        return None
    rule = f"derived file (rule {recipe.rule})"
    if not isinstance(node.metadata.get("sha256"), str) or not isinstance(node.metadata.get("size"), int):
        return f"{rule}: no SHA-256 and size are recorded to check it against"
    for i in recipe.inputs:
        if not _holds(await lookup(i.path), i):
            return f"{rule}: input {i.path} is not in this snapshot as the recipe recorded it"
    return None


def _holds(found: Node | None, i: Input) -> bool:
    """Is ``found`` the input ``i`` as its recipe recorded it (a file of that hash and size)?"""
    return (found is not None and found.kind == KIND_FILE and found.metadata.get("sha256") == i.sha256
            and found.metadata.get("size") == i.size)


class _Held:
    """An input's bytes as they are read: in memory up to :data:`MEMORY` bytes, then in a private
    temporary file (removed by :meth:`close`)."""

    def __init__(self, tmpdir: str | None) -> None:
        self._tmpdir = tmpdir
        self._parts: list[bytes] = []
        self._size = 0
        self._fd: int | None = None
        self._path: str | None = None

    def write(self, chunk: bytes) -> None:
        if self._fd is None and self._size + len(chunk) > MEMORY:
            self._fd, self._path = tempfile.mkstemp(prefix="lafs-backup-input-", dir=self._tmpdir)
            for part in self._parts:
                self._put(part)
            self._parts = []
        if self._fd is not None:
            self._put(chunk)
        else:
            self._parts.append(bytes(chunk))
            self._size += len(chunk)

    def _put(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def restart(self) -> None:
        self._parts = []
        self._size = 0
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)

    def staged(self, path: str, mode: int, mtime_ns: int) -> Staged:
        if self._path is not None:
            return Staged(path, self._path, mode=mode & 0o7777, mtime_ns=mtime_ns)
        return Staged(path, "", data=b"".join(self._parts), mode=mode & 0o7777, mtime_ns=mtime_ns)

    def close(self) -> None:
        self._parts = []
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._path is not None:
            try:
                os.unlink(self._path)
            except OSError:
                pass
            self._path = None


#: Called once per file asked of a run, while its scratch directory is there: the run (None: it
#: could not be started) and its error.
Serve = Callable[[Ran | None, str | None], Any]


@dataclass(eq=False)
class _Run:
    """One recipe's run (its ``run_key``), and the reads waiting on it."""

    key: str
    job: Job
    program: Program
    staged: Sequence[Staged]
    group: object = None
    waiters: list[tuple[Serve, Deferred[Any]]] = field(default_factory=list)

    @property
    def outputs(self) -> list[str]:
        """Where its files are in the scratch directory (stdout is not among them)."""
        return ([self.job.made_at] if self.job.made_at != STDOUT else []) + list(self.job.outputs[1:])


class _Runs:
    """The runs of a remaker: gathered by batch key (``batch`` at most in one process, flushed when
    full or at the next reactor turn with a free slot), ``jobs`` at once."""

    def __init__(self, runner: Runner, in_thread: InThread, jobs: int, batch: int, clock: IReactorTime) -> None:
        self._runner = runner
        self._in_thread = in_thread
        self._slots = Slots(max(1, jobs), clock)
        self._batch = max(1, batch)
        self._clock = clock
        #: Runs not yet served, by run key: a read of one of their files joins them.
        self._open: dict[str, _Run] = {}
        #: Runs waiting for a slot, by group (a batch key, or the run itself), and the workers that
        #: will take them.
        self._pending: dict[object, list[_Run]] = {}
        self._workers: dict[object, int] = {}
        self._flush_call: IDelayedCall | None = None
        #: Processes started, and the files each was asked for (for the tests and the log).
        self.started: list[int] = []

    def run(self, recipe: Recipe, program: Program, staged: Sequence[Staged], serve: Serve) -> Deferred[Any]:
        """What ``serve`` returns once the run of ``recipe`` has made its files (the run shared with
        the reads of its other outputs, and batched with others of its key)."""
        run = self._open.get(recipe.run_key)
        if run is None:
            job = recipe.job
            run = self._open[recipe.run_key] = _Run(recipe.run_key, job, program, staged)
            run.group = (job.batch_key, program.path) if job.batch_key is not None else run
            self._queue(run)
        d: Deferred[Any] = Deferred()
        run.waiters.append((serve, d))
        return d

    def _queue(self, run: _Run) -> None:
        pending = self._pending.setdefault(run.group, [])
        pending.append(run)
        if len(pending) >= self._batch:
            self._spawn(run.group)
        elif self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        for group in list(self._pending):
            self._spawn(group)

    def _spawn(self, group: object) -> None:
        """Enough workers waiting for a slot to take every pending run of ``group``."""
        need = -(-len(self._pending.get(group, ())) // self._batch) - self._workers.get(group, 0)
        for _ in range(need):
            self._workers[group] = self._workers.get(group, 0) + 1
            Deferred.fromCoroutine(self._worker(group))

    async def _worker(self, group: object) -> None:
        await self._slots.acquire()
        try:
            self._workers[group] -= 1
            if not self._workers[group]:
                del self._workers[group]
            runs = self._take(group)
            if runs:
                await self._go(runs)
        finally:
            self._slots.release()

    def _take(self, group: object) -> list[_Run]:
        """Up to ``batch`` pending runs of ``group`` that can share a scratch directory (no input
        staged two ways, no output made twice); the others stay pending."""
        pending = self._pending.pop(group, [])
        taken: list[_Run] = []
        inputs: dict[str, Staged] = {}
        outputs: set[str] = set()
        left = []
        for run in pending:
            ins, outs = {s.path for s in run.staged}, set(run.job.outputs)
            clash = (any(inputs.get(s.path, s) != s for s in run.staged) or bool(outputs & outs)
                     or bool(outs & (ins | set(inputs))) or bool(ins & outputs))
            if len(taken) >= self._batch or clash:
                left.append(run)
                continue
            taken.append(run)
            inputs.update((s.path, s) for s in run.staged)
            outputs.update(run.job.outputs)
        if left:
            self._pending[group] = left
            self._spawn(group)
        return taken

    async def _go(self, runs: list[_Run]) -> None:
        """One process for ``runs``; each waiter served while its files are there.  A batch that
        failed runs again, each file alone, the runs of which it made not every file."""
        jobs = [r.job for r in runs]
        staged = list({s.path: s for r in runs for s in r.staged}.values())
        outputs = [o for r in runs for o in r.outputs]
        self.started.append(len(runs))
        log.debug("one run of rule %s for %d files", runs[0].job.rule, len(runs))
        cm = self._runner.run(runs[0].program, argv(jobs), staged, outputs, capture_stdout=jobs[0].made_at == STDOUT)
        done: list[tuple[Deferred[Any], Any]] = []
        again: list[_Run] = []
        error: str | None
        try:
            ran: Ran | None = await self._in_thread(cm.__enter__)
        except Exception as e:  # (an input that cannot be staged, no room for a scratch directory)
            ran, error, entered = None, f"it could not be run: {getattr(e, 'strerror', None) or e}", False
        else:
            assert ran is not None
            error, entered = ran.error, True
        try:
            for r in runs:
                if (ran is not None and ran.error is not None and len(runs) > 1
                        and any(ran.outputs.get(o) is None for o in r.outputs)):
                    again.append(r)
                    continue
                if self._open.get(r.key) is r:
                    del self._open[r.key]
                for serve, d in r.waiters:
                    try:
                        done.append((d, serve(ran, error)))
                    except Exception:
                        done.append((d, Failure()))
        finally:
            if entered:
                try:
                    await self._in_thread(cm.__exit__, None, None, None)
                except Exception as e:
                    log.warning("derive: a scratch directory could not be removed: %s", e)
        for r in again:
            r.group = r  # (alone, so never in a batch again)
            self._queue(r)
        for d, result in done:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

