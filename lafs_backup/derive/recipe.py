"""A recipe as a snapshot's edge records it (pure).

A derived file's edge carries its usual metadata (mode, times, owner, ``size`` and ``sha256`` of its
bytes) and, under ``derived``, how to make it::

    {"rule": "pyc", "variant": {"mode": "TIMESTAMP"}, "root": "/srv/app",
     "program": "python3.11", "version": {"path": "/usr/bin/python3.11", "sha256": "..."},
     "args": [...], "each": [...],
     "inputs": [{"path": "pkg/x.py", "sha256": "...", "size": 120, "mode": 33188, "mtime_ns": ...}],
     "outputs": ["pkg/__pycache__/x.cpython-311.pyc"], "made_at": "pkg/__pycache__/x.cpython-311.pyc",
     "output": 0}

Paths are relative to the source root.  ``outputs`` are every file the run makes (``output`` says which
one this edge is); ``made_at`` is where the first appears in the scratch directory (or ``stdout``).  The
edge points at no content: its bytes are made again from the inputs, which are files of the same
snapshot, and checked against ``sha256`` before anyone sees them.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Mapping

from .rules import STDOUT, Job, Rules

KEY = "derived"
#: How many derived files deep a file may be made through others (a backup stores deeper ones as bytes).
MAX_DEPTH = 8
_HEX64 = re.compile(r"[0-9a-f]{64}")


def is_root(path: str) -> bool:
    """Is ``path`` a source's path a recipe may name (``{root}``): absolute, normalized, no NUL?"""
    return path.startswith("/") and posixpath.normpath(path) == path and "\0" not in path and \
        not path.startswith("//")


@dataclass(frozen=True)
class Input:
    """An input as the proof used it: its bytes' hash, and the metadata its scratch copy had."""

    path: str
    sha256: str
    size: int
    mode: int
    mtime_ns: int


@dataclass(frozen=True)
class Recipe:
    rule: str
    variant: Mapping[str, str]
    root: str
    program: str
    #: The program the proof ran: its path and the SHA-256 of its executable.
    version: Mapping[str, str]
    args: tuple[str, ...]
    each: tuple[str, ...]
    inputs: tuple[Input, ...]
    outputs: tuple[str, ...]
    made_at: str
    #: Which of ``outputs`` this edge is.
    output: int = 0

    @property
    def job(self) -> Job:
        """The run this recipe records (its variant index is not kept: ``variant`` holds its values)."""
        return Job(self.rule, self.program, self.args, self.each, tuple(i.path for i in self.inputs),
                   self.outputs, self.made_at)

    @property
    def path(self) -> str:
        """The file this edge is."""
        return self.outputs[self.output]

    @property
    def run_key(self) -> str:
        """The same for every edge one run makes (the outputs of one multi-output recipe)."""
        return hashlib.sha256(json.dumps([self.program, self.args, self.each, [_input(i) for i in self.inputs],
                                          self.outputs, self.made_at]).encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "variant": dict(self.variant), "root": self.root, "program": self.program,
                "version": dict(self.version), "args": list(self.args), "each": list(self.each),
                "inputs": [_input(i) for i in self.inputs], "outputs": list(self.outputs),
                "made_at": self.made_at, "output": self.output}

    def at(self, output: int) -> "Recipe":
        """The same recipe for another of its outputs."""
        return Recipe(self.rule, self.variant, self.root, self.program, self.version, self.args, self.each,
                      self.inputs, self.outputs, self.made_at, output)


def _input(i: Input) -> dict[str, Any]:
    return {"path": i.path, "sha256": i.sha256, "size": i.size, "mode": i.mode, "mtime_ns": i.mtime_ns}


class BadRecipe(ValueError):
    """A recipe that cannot be read (damaged, or not one this version writes)."""


def of(metadata: Mapping[str, Any]) -> Recipe | None:
    """The recipe an edge records, or None for an edge of stored bytes.  Raises :class:`BadRecipe`."""
    raw = metadata.get(KEY)
    if raw is None:
        return None
    try:
        assert isinstance(raw, dict)
        inputs = tuple(Input(_path(i["path"]), _hex(i["sha256"]), _int(i["size"]), _int(i["mode"]),
                             _int(i["mtime_ns"])) for i in raw["inputs"])
        outputs = tuple(_path(p) for p in raw["outputs"])
        made_at = raw["made_at"]
        assert made_at == STDOUT or _path(made_at)
        variant = raw.get("variant", {})
        assert isinstance(variant, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in variant.items())
        version = raw.get("version", {})
        assert isinstance(version, dict)
        root = _str(raw["root"])
        assert is_root(root), "its root is not an absolute path"
        recipe = Recipe(_str(raw["rule"]), variant, root, _str(raw["program"]),
                        {k: str(v) for k, v in version.items()}, _strs(raw["args"]), _strs(raw["each"]),
                        inputs, outputs, made_at, _int(raw.get("output", 0)))
        assert inputs and outputs and recipe.output < len(outputs)
        return recipe
    except (AssertionError, KeyError, TypeError, ValueError) as e:
        raise BadRecipe(f"the recipe is damaged ({e or type(e).__name__})") from None


def _str(v: object) -> str:
    assert isinstance(v, str)
    return v


def _strs(v: object) -> tuple[str, ...]:
    assert isinstance(v, list) and all(isinstance(x, str) for x in v)
    return tuple(v)


def _int(v: object) -> int:
    assert isinstance(v, int) and not isinstance(v, bool) and v >= 0
    return v


def _hex(v: object) -> str:
    assert isinstance(v, str) and _HEX64.fullmatch(v)
    return v


def _path(v: object) -> str:
    """A relative path that stays below the root."""
    assert isinstance(v, str) and v and not v.startswith("/") and "\0" not in v
    assert all(part not in ("", ".", "..") for part in v.split("/"))
    return v


def matches_rule(recipe: Recipe, rules: Rules) -> str | None:
    """Why this machine's rules would not make ``recipe`` (None: its own rule of that name, with the
    recorded variant and root, renders exactly this run).  A restore runs only such recipes: a
    repository cannot choose the arguments an allowed program runs with."""
    rule = rules.by_name(recipe.rule)
    if rule is None:
        return f"this machine's configuration has no derive rule named {recipe.rule!r}"
    values = rule.values(recipe.outputs[0], recipe.root)
    if values is None:
        return f"rule {recipe.rule!r} of this machine's configuration does not match {recipe.outputs[0]}"
    want = recipe.job
    for i, variant in enumerate(rule.variants):
        if dict(variant) == dict(recipe.variant):
            job = rule.render(values, i)
            if job is not None and (job.program, job.args, job.each, job.inputs, job.outputs, job.made_at) == (
                    want.program, want.args, want.each, want.inputs, want.outputs, want.made_at):
                return None
            break
    return (f"the recipe differs from what rule {recipe.rule!r} of this machine's configuration makes "
            "(the recipe was changed, or the rule was)")
