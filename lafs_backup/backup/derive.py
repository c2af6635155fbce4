"""Phase two's first stage, when ``derive.rules`` are set: prove which files of the queue are remade,
byte for byte, by their rule's program from other files of the same backup.

For each regular file a rule matches, whose inputs are regular files of the queue, the program runs
in an empty scratch directory holding only the inputs, each with the mode and modification time
the walk saw (``system/programs.py``).  A file the run makes exactly (same SHA-256) is recorded as its
recipe and no byte of it is stored; any other is stored as usual, and the summary counts why.  Runs
of a rule with ``each`` make many files at once (``derive.batch``), ``derive.jobs`` runs at a time,
each variant tried on the files the ones before it did not make.

A proof is remembered (``db/proofs.py``) under the key of what it depends on: the rule's definition,
the program's SHA-256, and the state (path, size, times, inode) of each input and output.  A backup
in which none of these changed runs nothing.

The recipe names its inputs' hashes as the proof read them.  Phase two stores the inputs themselves
a moment later: :class:`InputCheck` compares the hashes it records, and an input that changed in
between (or was not stored) fails the recipes that use it, and the backup is made again without
them (:class:`InputsChanged`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime

from ..derive.recipe import KEY, MAX_DEPTH, Input, Recipe, is_root
from ..derive.rules import STDOUT, Job, Rule, Rules, argv
from ..protocols import InThread
from ..slots import Slots
from ..store.entry import Entry, unescape
from ..store.snapshot import Child, edge_metadata, file_key
from ..system.paths import open_beneath
from ..system.programs import Program, ProgramError, Programs, Runner, Staged
from .queue import parse_entry

log = logging.getLogger(__name__)

_OUTPUT_DIFFERS = "the rule's program makes other bytes"
_NOT_MADE = "the program did not make the file"
_FAILED = "the program failed: "
#: Failures that the same inputs, output and program would meet again: remembered like proofs (a
#: time limit reached, or a file changed meanwhile, is tried again next time).
_LASTING = (_OUTPUT_DIFFERS, _NOT_MADE)


class InputsChanged(Exception):
    """Inputs of proven recipes changed between their proof and their storing: the outputs named are
    to be stored as bytes, in a new attempt of phase two."""

    def __init__(self, outputs: Iterable[bytes]) -> None:
        self.outputs = frozenset(outputs)
        super().__init__(f"{len(self.outputs)} derived files' inputs changed during the backup")


@dataclass(frozen=True)
class Proven:
    """A file the backup records as its recipe (``recipe``: its ``derived`` edge metadata)."""

    recipe: dict[str, Any]
    sha256: str
    size: int


@dataclass
class Proofs:
    """What the stage found: the files proven, the input hashes their recipes rely on, and why the
    others a rule matched are stored as bytes."""

    edges: dict[bytes, Proven] = field(default_factory=dict)
    inputs: dict[bytes, str] = field(default_factory=dict)
    #: input path -> the outputs whose recipes use it.
    users: dict[bytes, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    not_derived: Counter[str] = field(default_factory=Counter)
    ran: int = 0

    def add(self, path: bytes, proven: Proven, recipe: Recipe) -> None:
        self.edges[path] = proven
        for i in recipe.inputs:
            p = i.path.encode("utf-8")
            self.inputs[p] = i.sha256
            self.users[p].append(path)

    def without(self, paths: Iterable[bytes]) -> "Proofs":
        """These proofs but those of ``paths`` (stored as bytes after all)."""
        gone = set(paths)
        out = Proofs(not_derived=self.not_derived, ran=self.ran)
        for path, proven in self.edges.items():
            if path not in gone:
                out.edges[path] = proven
                for i in proven.recipe["inputs"]:
                    p = i["path"].encode("utf-8")
                    out.inputs[p] = i["sha256"]
                    out.users[p].append(path)
        return out


def unsafe_dirs(proofs: Proofs) -> frozenset[bytes]:
    """The directories the next walk must not keep whole: those holding a derived file with an input
    outside them (an edit of that input would leave the kept recipe naming the old one).  Pure."""
    out: set[bytes] = set()
    for path, proven in proofs.edges.items():
        inputs = [i["path"].encode("utf-8") for i in proven.recipe["inputs"]]
        d = path.rpartition(b"/")[0]
        while d:
            if any(not i.startswith(d + b"/") for i in inputs):
                out.add(d)
            d = d.rpartition(b"/")[0]
    return frozenset(out)


def unsafe_chains(inputs: Mapping[bytes, Sequence[bytes]], limit: int) -> dict[bytes, str]:
    """The derived files (``inputs``: each one's inputs) that must be stored as bytes after all, and why:
    those made, through other derived files, from themselves (none of them could ever be made again),
    and those made through more than ``limit`` derived files (deeper than a read goes).  Pure."""
    bad: dict[bytes, str] = {}
    while True:
        def deps(p: bytes) -> list[bytes]:
            return [i for i in inputs[p] if i in inputs and i not in bad]

        depth: dict[bytes, int] = {}
        found: dict[bytes, str] = {}
        for start in inputs:
            if start in depth or start in bad:
                continue
            stack = [(start, iter(deps(start)))]
            on = {start}
            while stack:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    stack.pop()
                    on.discard(node)
                    depth[node] = 1 + max((depth.get(i, 0) for i in deps(node)), default=0)
                elif nxt in on:  # a cycle: every file on it, from nxt to node
                    at = [n for n, _ in stack]
                    for member in at[at.index(nxt):]:
                        found[member] = "its recipe would be made from itself"
                elif nxt not in depth:
                    stack.append((nxt, iter(deps(nxt))))
                    on.add(nxt)
        # (Those one too deep alone: every deeper file is made through one of them, and is shallow again
        # once they are bytes.)
        found.update({p: f"it would be made through more than {limit} derived files"
                      for p, d in depth.items() if d == limit + 1 and p not in found})
        if not found:
            return bad
        bad.update(found)


class _Candidate:
    """A file a rule matches: its queue entry, and its runs, one per variant, made when first asked."""

    def __init__(self, entry: Entry, rule: Rule, values: dict[str, str]) -> None:
        self.entry, self.rule, self._values = entry, rule, values
        self._jobs: dict[int, Job | None] = {}
        #: The queue's entries of its inputs and of the other outputs of its run (filled in the second pass).
        self.found: dict[str, Entry] = {}
        self.reason: str | None = None

    @property
    def variants(self) -> int:
        return len(self.rule.variants)

    def job(self, variant: int) -> Job | None:
        if variant not in self._jobs:
            self._jobs[variant] = self.rule.render(self._values, variant)
        return self._jobs[variant]


def proof_key(digest: str, program: Program, root: bytes, entries: Sequence[Entry]) -> bytes:
    """The key a proof is remembered under: the rule's definition, the program, the source's path (the
    rules' ``{root}``: a pyc names its source by it), and the state of each input and output (their
    paths, sizes, times, inodes and modes)."""
    h = hashlib.sha256(b"proof\0%s\0%s\0%s\0" % (digest.encode(), program.sha256.encode(), root))
    for e in entries:
        h.update(file_key(e.path, e.size, e.mtime_ns, e.ctime_ns, e.ino) + b"%d" % e.mode)
    return h.digest()


class Prover:
    """The stage: ``run(qpath)`` gives the :class:`Proofs` of one queue.  ``root`` is the directory the
    files are read in, ``label`` the source's path as backups record it (the rules' ``{root}``: a pyc
    names its source by the path it was compiled at); ``remembered``/``remember`` read and record
    proofs (``db/proofs.py``)."""

    def __init__(self, rules: Rules, programs: Programs, runner: Runner, root: bytes, label: bytes,
                 in_thread: InThread, clock: IReactorTime,
                 remembered: Callable[[Iterable[bytes]], dict[bytes, dict[str, Any]]],
                 remember: Callable[[list[tuple[bytes, dict[str, Any]]]], None],
                 jobs: int = 2, batch: int = 200, demoted: frozenset[bytes] = frozenset()) -> None:
        self.rules, self.programs, self.runner, self.root = rules, programs, runner, root
        self.label = label
        self.in_thread, self._remembered, self._remember = in_thread, remembered, remember
        self.slots = Slots(jobs, clock)
        self.batch = max(1, batch)
        self.demoted = demoted
        self.proofs = Proofs()
        self._new: list[tuple[bytes, dict[str, Any]]] = []

    async def run(self, qpath: str) -> Proofs:
        try:
            root_text = self.label.decode("utf-8")
        except UnicodeError:
            return self.proofs  # (a root no rule can name)
        if not is_root(root_text):
            return self.proofs  # (a source recorded by no absolute path: a stream, a bucket)
        cands = await self.in_thread(self._scan, qpath, root_text)
        if not cands:
            return self.proofs
        todo = self._from_memory(cands)
        await self._prove(todo)
        if self._new:
            self._remember(self._new)
        unsafe = unsafe_chains({p: [i["path"].encode("utf-8") for i in e.recipe["inputs"]]
                                for p, e in self.proofs.edges.items()}, MAX_DEPTH)
        if unsafe:
            self.proofs = self.proofs.without(unsafe)
            for path, reason in unsafe.items():
                self._not(path, reason)
        return self.proofs

    # -- the queue ------------------------------------------------------------------------------
    def _scan(self, qpath: str, root: str) -> dict[bytes, _Candidate]:
        """Two passes over the queue: the files the rules match, then the entries they need (a line is
        parsed only when its path is one of these)."""
        cands: dict[bytes, _Candidate] = {}
        for path, line in _file_lines(qpath):
            if path in self.demoted:
                continue
            found = self.rules.first(path, root)
            if found is not None:
                c = _Candidate(parse_entry(line), *found)
                if c.job(0) is not None:
                    cands[path] = c
        needed: set[bytes] = set()
        for c in cands.values():
            job = c.job(0)
            assert job is not None
            needed.update(p.encode("utf-8") for p in job.inputs + job.outputs[1:])
        entries = {path: parse_entry(line) for path, line in _file_lines(qpath) if path in needed} if needed else {}
        for c in cands.values():
            job = c.job(0)
            assert job is not None
            for p in job.inputs + job.outputs[1:]:
                e = entries.get(p.encode("utf-8"))
                if e is None:
                    c.reason = f"{'an input' if p in job.inputs else 'another output'} is not in this backup"
                    break
                c.found[p] = e
        return cands

    # -- proofs remembered ------------------------------------------------------------------------
    def _from_memory(self, cands: dict[bytes, _Candidate]) -> list[tuple[_Candidate, Program, bytes]]:
        keyed: list[tuple[_Candidate, Program, bytes]] = []
        found: dict[str, Program | str] = {}  # (a program's name -> it, or why it cannot run)
        for c in cands.values():
            if c.reason is not None:
                self._not(c.entry.path, c.reason)
                continue
            job = c.job(0)
            assert job is not None
            program = found.get(job.program)
            if program is None:
                try:
                    program = found[job.program] = self.programs.find(job.program)
                except ProgramError as e:
                    program = found[job.program] = e.reason
            if isinstance(program, str):
                self._not(c.entry.path, program)
                continue
            states = [c.found[p] for p in job.inputs] + [c.entry] + [c.found[p] for p in job.outputs[1:]]
            keyed.append((c, program, proof_key(c.rule.digest, program, self.label, states)))
        known = self._remembered([k for _, _, k in keyed])
        todo = []
        for c, program, key in keyed:
            raw = known.get(key)
            if raw is not None and isinstance(raw.get("fail"), str):
                self._not(c.entry.path, raw["fail"])
                continue
            if raw is not None and self._take(c, program, raw):
                continue
            todo.append((c, program, key))
        return todo

    def _take(self, c: _Candidate, program: Program, raw: dict[str, Any]) -> bool:
        """Use a remembered proof: the recipe made again from its job, the queue's entries and the hashes
        the row keeps (a row this stage wrote; anything else in it is proven again)."""
        try:
            variant, shas, outs = int(raw["variant"]), list(raw["inputs"]), [tuple(o) for o in raw["outputs"]]
        except (KeyError, TypeError, ValueError):
            return False
        job = c.job(variant) if 0 <= variant < c.variants else None
        if job is None or raw.get("program") != program.path or len(shas) != len(job.inputs) or \
                len(outs) != len(job.outputs):
            return False
        self._add(self._recipe(job, program, shas, c), outs)
        return True

    def _recipe(self, job: Job, program: Program, shas: list[str], c: _Candidate) -> Recipe:
        inputs = tuple(Input(p, sha, c.found[p].size, stat.S_IMODE(c.found[p].mode), c.found[p].mtime_ns)
                       for p, sha in zip(job.inputs, shas))
        return Recipe(job.rule, dict(c.rule.variants[job.variant]), self.label.decode("utf-8"), job.program,
                      {"path": program.path, "sha256": program.sha256}, job.args, job.each, inputs, job.outputs,
                      job.made_at)

    # -- proving -----------------------------------------------------------------------------------
    async def _prove(self, todo: list[tuple[_Candidate, Program, bytes]]) -> None:
        """Each variant in turn on the files the ones before did not make, in batches."""
        variant = 0
        while todo:
            groups: dict[object, list[tuple[_Candidate, Program, bytes]]] = defaultdict(list)
            failed: list[tuple[_Candidate, Program, bytes]] = []
            for item in todo:
                job = item[0].job(variant)
                if job is None:  # (this variant's paths leave the root: the next one may not)
                    failed.append(item)
                    continue
                key = job.batch_key
                groups[key if key is not None else id(item)].append(item)
            runs = []
            for items in groups.values():
                for i in range(0, len(items), self.batch):
                    runs.append(self._batch(items[i:i + self.batch], variant))
            for result in await gatherResults([Deferred.fromCoroutine(r) for r in runs]):
                failed.extend(result)
            variant += 1
            todo = []
            for item in failed:
                if variant < item[0].variants:
                    todo.append(item)
                    continue
                reason = item[0].reason or _OUTPUT_DIFFERS
                if reason in _LASTING:
                    self._new.append((item[2], {"fail": reason}))
                self._not(item[0].entry.path, reason)

    async def _batch(self, items: list[tuple[_Candidate, Program, bytes]], variant: int
                     ) -> list[tuple[_Candidate, Program, bytes]]:
        """One run for ``items``; those it did not make, back."""
        self.proofs.ran += 1
        made = await self.slots.run(self.in_thread, self._run, items, variant)
        failed = []
        for (c, program, key), result in zip(items, made):
            if isinstance(result, str) and result.startswith(_FAILED) and len(items) > 1:
                # (the run failed, and made not this file: the file may be what failed it, or not)
                failed.extend(await self._batch([(c, program, key)], variant))
                continue
            if isinstance(result, str):
                c.reason = result
                failed.append((c, program, key))
                continue
            recipe, outs = result
            # (What the job, the entries and the key do not say: the rest is made again from them.)
            self._new.append((key, {"variant": variant, "program": program.path,
                                    "inputs": [i.sha256 for i in recipe.inputs], "outputs": outs}))
            self._add(recipe, outs)
        return failed

    def _add(self, recipe: Recipe, outs: list[tuple[str, int]]) -> None:
        for i, (sha, size) in enumerate(outs):
            self.proofs.add(recipe.outputs[i].encode("utf-8"), Proven(recipe.at(i).to_json(), sha, size), recipe)

    def _run(self, items: list[tuple[_Candidate, Program, bytes]], variant: int
             ) -> list[tuple[Recipe, list[tuple[str, int]]] | str]:
        """(In a thread.) Run the program once for ``items`` and compare what it made with the files."""
        jobs = [j for c, _, _ in items if (j := c.job(variant)) is not None]
        assert len(jobs) == len(items)  # (grouped by a variant each item has)
        program = items[0][1]
        staged: dict[str, Staged] = {}
        fds: list[int] = []
        out: list[tuple[Recipe, list[tuple[str, int]]] | str] = []
        try:
            for (c, _, _), job in zip(items, jobs):
                for p in job.inputs:
                    if p not in staged:
                        e = c.found[p]
                        fds.append(open_beneath(self.root, e.path, os.O_RDONLY | os.O_CLOEXEC))
                        # (copied through the descriptor opened beneath the root, never through a symlink)
                        staged[p] = Staged(p, f"/proc/self/fd/{fds[-1]}", mode=stat.S_IMODE(e.mode),
                                           mtime_ns=e.mtime_ns)
            stdout = jobs[0].made_at == STDOUT
            wanted = [j.made_at for j in jobs if j.made_at != STDOUT] + [o for j in jobs for o in j.outputs[1:]]
            with self.runner.run(program, argv(jobs), list(staged.values()), wanted, capture_stdout=stdout) as ran:
                for (c, _, _), job in zip(items, jobs):
                    out.append(self._compare(c, job, program, ran))
        except OSError as e:
            return [f"an input cannot be read: {e.strerror}"] * len(items)
        finally:
            for fd in fds:
                os.close(fd)
        return out

    def _compare(self, c: _Candidate, job: Job, program: Program, ran: Any) -> tuple[Recipe, list[tuple[str, int]]] | str:
        """The recipe of what ``ran`` made of ``c`` (a run that failed for another file of its batch may
        still have made this one: the hash decides), or why not."""
        made = [ran.stdout_sha256 if job.made_at == STDOUT else ran.outputs.get(job.made_at)]
        made += [ran.outputs.get(o) for o in job.outputs[1:]]
        if ran.error is not None and (job.made_at == STDOUT or None in made):
            return _FAILED + ran.error
        entries = [c.entry] + [c.found[o] for o in job.outputs[1:]]
        outs: list[tuple[str, int]] = []
        for e, got in zip(entries, made):
            if got is None:
                return _NOT_MADE
            have = _hash_file(self.root, e)
            if have is None:
                return "the file changed while it was proven"
            if have != got:
                return _OUTPUT_DIFFERS
            outs.append(have)
        shas = [ran.inputs.get(p) for p in job.inputs]
        if None in shas:
            return "an input was not staged"
        return self._recipe(job, program, shas, c), outs

    def _not(self, path: bytes, reason: str) -> None:
        log.info("%r is stored as bytes: %s", path, reason)
        self.proofs.not_derived[reason] += 1


def _hash_file(root: bytes, e: Entry) -> tuple[str, int] | None:
    """(sha256, size) of a file still as the walk saw it (None: it changed, or went)."""
    try:
        fd = open_beneath(root, e.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        before = os.fstat(fd)
        if not _same(before, e):
            return None
        h = hashlib.sha256()
        n = 0
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
            n += len(chunk)
        if not _same(os.fstat(fd), e) or n != e.size:
            return None
        return h.hexdigest(), n
    finally:
        os.close(fd)


def _same(st: os.stat_result, e: Entry) -> bool:
    return stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns, st.st_ino) == (e.size, e.mtime_ns, e.ino)


def _file_lines(qpath: str) -> Iterable[tuple[bytes, str]]:
    """(path, line) of each regular file of the queue, read line by line and not parsed."""
    with open(qpath, "r", encoding="utf-8", newline="\n") as f:
        for line in f:
            if line.startswith("f\t"):
                text = line[2:line.index("\t", 2)]
                yield (unescape(text) if "\\" in text else text.encode("utf-8")), line.rstrip("\n")


class InputCheck:
    """Phase two's side of the proofs: the edges of proven files, and the check that each input was
    stored with the hash its recipes rely on."""

    def __init__(self, proofs: Proofs, pointer: str) -> None:
        """``pointer``: where recipe edges point (``Store.pointer``)."""
        self.proofs = proofs
        self._pointer = pointer
        self.broken: set[bytes] = set()

    def edge(self, e: Entry) -> Child | None:
        """The edge of a proven file: its metadata, its bytes' hash and size, and its recipe (None: the
        file is stored as bytes)."""
        proven = self.proofs.edges.get(e.path)
        if proven is None:
            return None
        meta = edge_metadata(e, proven.size, e.mtime_ns, e.ctime_ns, proven.sha256)
        meta[KEY] = proven.recipe
        return Child(e.name, self._pointer, meta)

    def stored(self, e: Entry, result: object) -> object:
        """Look at what phase two made of ``e`` (an edge, or a Deferred of one); pass it on."""
        want = self.proofs.inputs.get(e.path)
        if want is None:
            return result
        if isinstance(result, Deferred):
            def look(r: object) -> object:
                self._look(e.path, want, r)
                return r
            result.addCallback(look)
        else:
            self._look(e.path, want, result)
        return result

    def _look(self, path: bytes, want: str, r: object) -> None:
        got = r.metadata.get("sha256") if isinstance(r, Child) else None
        if got != want:
            log.info("%r changed between the proof of its derived files and its storing", path)
            self.broken.update(self.proofs.users.get(path, ()))
