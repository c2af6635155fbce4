"""What a backup leaves out, as the user writes it (pure): include/exclude rules (ordered '+regex'/'-regex'
patterns searched in '/'-rooted relative paths), and the values of the exclusion options (sizes, marker files).

The configuration compiles them once (``config.py``); phase one (``backup/select.py``, ``backup/scan.py``)
and ``diff`` (``read/diff.py``) apply them.  The globs of ``--exclude`` and of ignore files
(:func:`compile_globs`, gitignore semantics) are compiled here too: backup's selection and restore's
``--include``/``--exclude`` (``read/pick.py``) share them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from .errors import FilterError, UsageError


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
        # A rule is a regex; a glob ('*.bin') is for --exclude or an ignore file, and says so.
        hint = "; a glob such as '*.bin' is given with --exclude or in an ignore file" if "*" in raw else ""
        if len(raw) < 1 or raw[0] not in "+-":
            raise FilterError(raw, f"a rule must start with '+' (include) or '-' (exclude){hint}", source)
        body = raw[1:]
        try:
            pattern = re.compile(body.encode("utf-8", "surrogateescape"))
        except re.error as e:
            raise FilterError(raw, f"invalid regular expression: {e}{hint}", source)
        out.append(Rule(raw[0] == "+", pattern, raw))
    return Filter(tuple(out))


def compile_from_config(rules: Sequence[object]) -> Filter:
    return compile_rules(rules, "configuration key 'filter'")


# -- globs: --exclude, ignore files, restore's --include ---------------------------------------
@dataclass(frozen=True)
class IgnoreLayer:
    """One ignore file (or the globs of one command-line option): its patterns apply to the subtree
    of the directory ``base``; with ``fold``, case-insensitively."""

    base: bytes
    spec: object  # pathspec.GitIgnoreSpec
    label: str
    fold: bool = False

    def verdict(self, rel: bytes, is_dir: bool) -> bool | None:
        """True: ignored; False: re-included by a ``!`` pattern; None: no pattern matches."""
        sub = rel[len(self.base) + 1:] if self.base else rel
        name = os.fsdecode(sub) + ("/" if is_dir else "")
        if self.fold:
            name = name.lower()
        return self.spec.check_file(name).include  # type: ignore[attr-defined]


def compile_globs(lines: Sequence[str], label: str, fold: bool = False, base: bytes = b"") -> IgnoreLayer:
    """Gitignore-style patterns, as an ignore file in ``base`` holds them (``--exclude`` and its
    kin: the source root): a pattern with a ``/`` (other than a trailing one) is anchored there,
    one without matches a name at any depth, ``dir/`` only directories, ``!`` re-includes; ``#``
    starts a comment.  With ``fold``, matching ignores case.  Raises :class:`UsageError` for a
    pattern that is not a glob."""
    import pathspec

    if fold:
        lines = [ln.lower() for ln in lines]
    try:
        spec = pathspec.GitIgnoreSpec.from_lines(lines)
    except (ValueError, TypeError) as e:  # (pathspec's GitWildMatchPatternError is a ValueError)
        raise UsageError(f"{label}: {e}") from None
    return IgnoreLayer(base, spec, label, fold)


# -- the values of the exclusion options ---------------------------------------------------------
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.I)


def parse_size(text: str | int, what: str = "--exclude-larger-than") -> int:
    """``500M``, ``2G``, ``1.5GiB``, ``4096``: bytes (units are powers of 1024)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise UsageError(f"{what}: a size cannot be negative")
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise UsageError(f"{what}: {text!r} is not a size (a number with an optional unit K, M, G or T: "
                         "'500M', '2G')")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def parse_if_present(text: str) -> tuple[bytes, bytes | None]:
    """``NAME`` or ``NAME:HEADER``: the marker file, and what it must start with."""
    name, sep, header = text.partition(":")
    if not name or "/" in name or name in (".", ".."):
        raise UsageError(f"--exclude-if-present: {text!r} does not start with a file name")
    return os.fsencode(name), (header.encode("utf-8", "surrogateescape") if sep else None)
