"""Include/exclude rules: ordered '+regex'/'-regex' patterns searched in '/'-rooted relative paths."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..errors import FilterError


@dataclass(frozen=True)
class Rule:
    include: bool
    pattern: "re.Pattern[bytes]"
    text: str


@dataclass(frozen=True)
class Filter:
    """A compiled rule list.  The first matching rule decides; no match includes."""

    rules: tuple[Rule, ...]

    def rule_for(self, relpath: bytes, is_dir: bool) -> Rule | None:
        """The first rule that matches (None: none does, and the entry is included)."""
        if not self.rules:
            return None
        subject = b"/" + relpath + (b"/" if is_dir else b"")
        for rule in self.rules:
            if rule.pattern.search(subject):
                return rule
        return None

    def included(self, relpath: bytes, is_dir: bool) -> bool:
        """Is the entry at ``relpath`` (bytes, relative, no leading '/') included?

        Directories are tested with a trailing '/', so '-/cache/' excludes a
        directory named cache but not a file of that name.
        """
        if not self.rules:
            return True
        subject = b"/" + relpath + (b"/" if is_dir else b"")
        for rule in self.rules:
            if rule.pattern.search(subject):
                return rule.include
        return True


def compile_rules(rules: Iterable[object], source: str = "filter") -> Filter:
    """Compile rule strings; raise :class:`FilterError` for a malformed one.

    Patterns are compiled against bytes (surrogate-escaped UTF-8), so names
    that are not valid UTF-8 are matched too.
    """
    out = []
    for raw in rules:
        if not isinstance(raw, str):
            raise FilterError(repr(raw), "a rule must be a string", source)
        if len(raw) < 1 or raw[0] not in "+-":
            raise FilterError(raw, "a rule must start with '+' (include) or '-' (exclude)", source)
        body = raw[1:]
        try:
            pattern = re.compile(body.encode("utf-8", "surrogateescape"))
        except re.error as e:
            raise FilterError(raw, f"invalid regular expression: {e}", source)
        out.append(Rule(raw[0] == "+", pattern, raw))
    return Filter(tuple(out))


def compile_from_config(rules: Sequence[object]) -> Filter:
    return compile_rules(rules, "configuration key 'filter'")
