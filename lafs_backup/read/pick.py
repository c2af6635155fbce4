"""Which paths of a snapshot a restore touches: ``--include`` and ``--exclude`` globs (pure decisions).

The globs are backup's (``filters.compile_globs``: gitignore semantics, each option its own layer),
matched against paths from the snapshot's root (``docs/a.pdf``, never ``/docs/a.pdf``), whatever
subtree the restore was asked for.  Each path is in one of three states:

- ``IN``: restored (and, with ``--delete``, what the target holds there and the snapshot does not is
  deleted): no ``--include`` was given, or it or a directory above it matches one, and no
  ``--exclude`` matches it or a directory above it;
- ``OUT``: left alone, in the snapshot and in the target, with all it holds;
- ``MAYBE``: a directory that no ``--include`` matches but that may hold a path one does: it is
  walked, and restored (made, its attributes applied) only when something below it is ``IN``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

from ..filters import IgnoreLayer
from ..store.entry import KIND_DIR
from ..store.snapshot import Node

IN, MAYBE, OUT = "in", "maybe", "out"


@dataclass(frozen=True)
class Pick:
    """The ``--include`` layers (none: everything is included) and the ``--exclude`` layers."""

    include: tuple[IgnoreLayer, ...] = ()
    exclude: tuple[IgnoreLayer, ...] = ()

    @property
    def narrows(self) -> bool:
        """Does it leave anything out (else a restore is the plain, whole one)?"""
        return bool(self.include or self.exclude)

    @property
    def root(self) -> str:
        """The state of the snapshot's root directory."""
        return MAYBE if self.include else IN

    def state(self, rel: bytes, is_dir: bool, parent: str) -> str:
        """The state of the entry ``rel`` (from the snapshot's root, no leading '/') in a directory
        whose state is ``parent``; the reason is logged by the caller."""
        if parent == OUT or any(layer.verdict(rel, is_dir) for layer in self.exclude):
            return OUT
        if parent == IN or any(layer.verdict(rel, is_dir) for layer in self.include):
            return IN
        return MAYBE if is_dir else OUT

    def state_of(self, comps: Sequence[bytes], is_dir: bool) -> str:
        """The state of the path ``comps`` (a PATH argument), from the states of the directories
        above it: an excluded directory excludes all it holds, an included one includes it."""
        state = self.root
        for i in range(1, len(comps) + 1):
            state = self.state(b"/".join(comps[:i]), is_dir or i < len(comps), state)
        return state


#: A directory's children (the reader's ``children``).
ChildrenFn = Callable[[Node], Awaitable[Sequence[Node]]]


class Below:
    """Whether a ``MAYBE`` directory holds anything ``IN`` (so the restore makes it): each is found
    out by one walk of the directories below it, and the answers for the ``MAYBE`` directories met
    on the way are kept until they are asked for (so none is walked twice).  Only the answers of a
    directory that holds something are kept: below one that holds nothing, nothing is asked."""

    def __init__(self, pick: Pick, children: ChildrenFn) -> None:
        self.pick = pick
        self._children = children
        self._known: dict[tuple[bytes, ...], bool] = {}

    async def holds(self, node: Node, parts: Sequence[bytes]) -> bool:
        """Does the ``MAYBE`` directory ``node`` at ``parts`` hold anything ``IN``?"""
        key = tuple(parts)
        if key in self._known:
            return self._known.pop(key)
        found = False
        answers: dict[tuple[bytes, ...], bool] = {}
        for child in await self._children(node):
            path = (*parts, child.name)
            is_dir = child.kind == KIND_DIR
            state = self.pick.state(b"/".join(path), is_dir, MAYBE)
            if state == IN:
                found = True
            elif state == MAYBE:
                answers[path] = await self.holds(child, path)
                found = found or answers[path]
        if found:
            self._known.update(answers)
        return found
