"""Encoding rules (pure): which files the store compresses, and with which method, as the configuration
says (``destination.encoding``); compiled once by ``config.py``, followed by the store."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from .errors import ConfigError

LZ4 = "lz4"
XZ = "xz"
METHODS = (LZ4, XZ)


@dataclass(frozen=True)
class Rule:
    compress: bool
    min_size: int | None
    pattern: "re.Pattern[bytes]"


@dataclass(frozen=True)
class EncodingRules:
    """Decides per file whether to compress, like the original tool's xz filter.

    Rules are tried in order against the '/'-rooted relative path:
    ``'+re'`` compresses a matching file of at least ``min_size`` bytes,
    ``'-re'`` never compresses it, ``[N, 're']`` compresses it from N bytes.
    A path that matches no rule is compressed from ``min_size``.
    """

    method: str | None
    min_size: int
    rules: tuple[Rule, ...] = ()

    def choose(self, relpath: bytes, size: int) -> str | None:
        if self.method is None:
            return None
        subject = b"/" + relpath
        for r in self.rules:
            if r.pattern.search(subject):
                if not r.compress:
                    return None
                return self.method if size >= (r.min_size if r.min_size is not None else self.min_size) else None
        return self.method if size >= self.min_size else None


def compile_rules(method: str | None, min_size: int, raw: Iterable[Any]) -> EncodingRules:
    """Build :class:`EncodingRules`; raise :class:`ConfigError` naming a bad rule."""
    key = "destination.encoding.path_filter"
    if method not in (None, "none", *METHODS):
        raise ConfigError(source="configuration", key="destination.encoding.method",
                          problem=f"must be lz4, xz or none, not {method!r}")
    rules = []
    for item in raw:
        size: int | None = None
        text = item
        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], int) and isinstance(item[1], str):
            size, text = item[0], "+" + item[1]
        if not isinstance(text, str) or not text or text[0] not in "+-":
            raise ConfigError(source="configuration", key=key,
                              problem=f"each rule is '+regex', '-regex' or [size, 'regex'], not {item!r}")
        try:
            pattern = re.compile(text[1:].encode("utf-8", "surrogateescape"))
        except re.error as e:
            raise ConfigError(source="configuration", key=key, problem=f"invalid regex in {item!r}: {e}")
        rules.append(Rule(text[0] == "+", size, pattern))
    return EncodingRules(None if method in (None, "none") else method, min_size, tuple(rules))
