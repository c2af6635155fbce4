"""The ``derive`` rules and which files they match (pure).

A rule says that a file is made by a program from other files::

    - name: gzip
      path: '(?P<stem>.+)\\.gz'       # the whole path, relative to the source root
      inputs: ['{stem}']              # from the source root ('./x', '../x': from the file's directory)
      program: gzip                   # a name from derive.allowed_programs
      args: ['-n', '-k', '-{level}']  # once per run
      each: ['{in0}']                 # once per file, for a run that makes many files
      variants: [{level: 9}, {level: 6}]

Templates take the pattern's named groups, a variant's values, and ``path``, ``dir``, ``name`` (the
file's), ``root`` (the source root), ``in0``.. (the inputs), ``out`` (the file) and ``out1``.. (the
other files the same run makes, from ``also``).  A run happens in an empty scratch directory that
holds the inputs at their paths; the program leaves each output at its path there (``output:
stdout``: the one output is what it prints).  Every template is checked when the configuration is
read, so a rule that names an unknown field stops the tool before any work.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import string
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from ..errors import ConfigError

KEY = "derive.rules"
STDOUT = "stdout"
_FIELDS = {"name", "path", "inputs", "program", "args", "each", "output", "also", "variants"}
_BUILTIN = {"path", "dir", "name", "root"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


@dataclass(frozen=True)
class Job:
    """One way to make one file: a rule rendered for it with one of its variants."""

    rule: str
    #: The program's name, as ``derive.allowed_programs`` must list it.
    program: str
    #: Arguments given once per run, then ``each`` once per file of the run.
    args: tuple[str, ...]
    each: tuple[str, ...]
    #: Inputs and outputs, as paths relative to the source root (the first output is the file matched).
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    #: Where the first output appears: its path in the scratch directory, or :data:`STDOUT`.
    made_at: str
    variant: int = 0

    @property
    def batch_key(self) -> tuple[str, str, tuple[str, ...]] | None:
        """Jobs with the same key may share one run (``each`` given for each); None: a run of its own."""
        if not self.each or self.made_at == STDOUT:
            return None
        return (self.rule, self.program, self.args)


def argv(jobs: Sequence[Job]) -> list[str]:
    """The arguments (after the program) of one run making ``jobs`` (one job, or a batch of one key)."""
    out = list(jobs[0].args)
    for job in jobs:
        out.extend(job.each)
    return out


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern[str]
    inputs: tuple[str, ...]
    program: str
    args: tuple[str, ...]
    each: tuple[str, ...]
    output: str
    also: tuple[str, ...]
    variants: tuple[Mapping[str, str], ...]
    #: The SHA-256 of the rule's definition: a proof made under another definition is not reused.
    digest: str

    def jobs(self, path: str, root: str) -> list[Job] | None:
        """The ways to make ``path`` (one per variant), or None if the rule does not match it."""
        values = self.values(path, root)
        if values is None:
            return None
        jobs = [self.render(values, i) for i in range(len(self.variants))]
        return None if any(j is None for j in jobs) else jobs  # type: ignore[return-value]

    def values(self, path: str, root: str) -> dict[str, str] | None:
        """The template fields for ``path`` before any variant (None: the rule does not match it)."""
        m = self.pattern.fullmatch(path)
        if m is None:
            return None
        d, _, name = path.rpartition("/")
        values: dict[str, str] = {"path": path, "dir": d, "name": name, "root": root}
        values.update({k: v or "" for k, v in m.groupdict().items()})
        values["\0dir"] = d
        return values

    def render(self, base: Mapping[str, str], variant: int) -> Job | None:
        """The run of variant ``variant`` for the fields ``base`` (:meth:`values`); None: its paths
        leave the source root, or name the file itself."""
        path, d = base["path"], base["\0dir"]
        values = {**base, **self.variants[variant]}
        try:
            inputs = tuple(_resolve(t.format_map(values), d) for t in self.inputs)
            also = tuple(_resolve(t.format_map(values), d) for t in self.also)
        except ValueError:
            return None
        if path in inputs or len(set(inputs)) != len(inputs) or set(also) & ({path} | set(inputs)):
            return None
        values.update({f"in{j}": p for j, p in enumerate(inputs)})
        values.update({"out": path, **{f"out{j + 1}": p for j, p in enumerate(also)}})
        return Job(self.name, self.program.format_map(values), tuple(a.format_map(values) for a in self.args),
                   tuple(a.format_map(values) for a in self.each), inputs, (path,) + also,
                   STDOUT if self.output == STDOUT else _resolve(self.output.format_map(values), d), variant)


def _resolve(rendered: str, directory: str) -> str:
    """A rendered input or output path, relative to the source root: 'x' and '/x' are the root's x,
    './x' and '../x' are relative to ``directory``.  Raises ValueError for a path that leaves the
    root or names nothing."""
    relative = rendered.startswith(("./", "../"))
    joined = posixpath.join(directory, rendered) if relative else rendered.lstrip("/")
    norm = posixpath.normpath(joined) if joined else ""
    if norm in ("", ".") or norm.startswith("../") or norm == ".." or norm.startswith("/") or "\0" in norm:
        raise ValueError(rendered)
    return norm


class Rules:
    """The ordered rules of ``derive.rules``: the first whose pattern matches a path decides it."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def by_name(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)

    def jobs(self, path: bytes, root: str) -> list[Job] | None:
        """The ways to make ``path`` by the first rule matching it (None: no rule, or a name that is not
        UTF-8, which no rule can name)."""
        found = self.first(path, root)
        if found is None:
            return None
        rule, values = found
        return rule.jobs(values["path"], root)

    def first(self, path: bytes, root: str) -> tuple[Rule, dict[str, str]] | None:
        """The first rule matching ``path``, and its fields (:meth:`Rule.values`)."""
        try:
            text = path.decode("utf-8")
        except UnicodeDecodeError:
            return None
        for rule in self.rules:
            values = rule.values(text, root)
            if values is not None:
                return rule, values
        return None


def parse(items: object) -> Rules:
    """``derive.rules`` read and checked: raises :class:`ConfigError` naming the rule and the problem."""
    if not isinstance(items, list):
        raise ConfigError(source="configuration", key=KEY, problem="expected a list of rules")
    rules: list[Rule] = []
    for i, item in enumerate(items):
        rule = _rule(item, i)
        if any(r.name == rule.name for r in rules):
            raise _bad(f"{KEY}[{i}]", f"a second rule is named {rule.name!r}")
        rules.append(rule)
    return Rules(rules)


def _bad(key: str, problem: str) -> ConfigError:
    return ConfigError(source="configuration", key=key, problem=problem)


def _rule(item: object, i: int) -> Rule:
    where = f"{KEY}[{i}]"
    if not isinstance(item, dict):
        raise _bad(where, "expected a mapping with name, path, inputs and program")
    unknown = set(item) - _FIELDS
    if unknown:
        raise _bad(where, f"unknown field {sorted(map(str, unknown))[0]!r} (fields: {', '.join(sorted(_FIELDS))})")
    for key in ("name", "path", "inputs", "program"):
        if key not in item:
            raise _bad(where, f"it has no {key!r}")
    name = item["name"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _bad(where + ".name", f"expected a short name of letters, digits, '.', '_', '+' or '-', got {name!r}")
    where = f"{KEY}[{name}]"
    try:
        pattern = re.compile(_text(item["path"], where + ".path"))
    except re.error as e:
        raise _bad(where + ".path", f"not a valid regular expression: {e}")

    def strings(key: str, least: int = 0) -> tuple[str, ...]:
        value = item.get(key, [])
        if not isinstance(value, list) or len(value) < least or not all(isinstance(v, (str, int)) for v in value):
            raise _bad(f"{where}.{key}", "expected a list of strings" + (f" (at least {least})" if least else ""))
        return tuple(str(v) for v in value)

    inputs, args, each, also = strings("inputs", 1), strings("args"), strings("each"), strings("also")
    program = _text(item["program"], where + ".program")
    output = _text(item.get("output", "{out}"), where + ".output")
    if output == STDOUT and (each or also):
        raise _bad(where + ".output", "a run that prints its output makes one file: it cannot have 'each' or 'also'")
    raw_variants = item.get("variants", [{}])
    if not isinstance(raw_variants, list) or not raw_variants or not all(
            isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, (str, int)) and not isinstance(x, bool)
                                        for k, x in v.items()) for v in raw_variants):
        raise _bad(where + ".variants", "expected a non-empty list of mappings of names to strings or numbers")
    variants = tuple({k: str(x) for k, x in v.items()} for v in raw_variants)
    groups = set(pattern.groupindex)
    keys = set(variants[0])
    if any(set(v) != keys for v in variants):
        raise _bad(where + ".variants", "every variant must give the same names")
    paths = groups | _BUILTIN | keys
    ins = {f"in{j}" for j in range(len(inputs))}
    outs = {"out"} | {f"out{j + 1}" for j in range(len(also))}
    for key, templates, known in (("inputs", inputs, paths - {"root"}), ("also", also, paths - {"root"}),
                                  ("program", (program,), groups | keys), ("args", args, paths | ins | outs),
                                  ("each", each, paths | ins | outs), ("output", (output,), paths | ins | outs)):
        for t in templates:
            _check_template(t, known, f"{where}.{key}")
    digest = hashlib.sha256(json.dumps(
        [pattern.pattern, inputs, program, args, each, output, also, variants], sort_keys=True).encode()).hexdigest()
    return Rule(name, pattern, inputs, program, args, each, output, also, variants, digest)


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(key, f"expected a non-empty string, got {value!r}")
    return value


def _check_template(template: str, known: set[str], key: str) -> None:
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise _bad(key, f"{template!r} is not a valid template: {e}")
    for f in fields:
        if f not in known:
            raise _bad(key, f"{template!r} names {{{f}}}, which is not one of {', '.join(sorted(known))}")
