"""Filter rules: ordering, directory trailing slash, default include, bad rules."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from lafs_backup.errors import FilterError
from lafs_backup.filters import compile_rules


def test_first_match_wins_and_default_is_include():
    f = compile_rules([r"+/\.git/config$", r"+/\.git/info/", r"-/\.git/", r"-^/tmp/"])
    assert f.included(b"proj/.git/config", False)
    assert f.included(b"proj/.git/info", True)
    assert f.included(b"proj/.git/info/exclude", False)
    assert not f.included(b"proj/.git", True)
    assert not f.included(b"proj/.git/objects", True)
    assert not f.included(b"tmp", True)
    assert f.included(b"sub/tmp", True)  # anchored at the root only
    assert f.included(b"README", False)


def test_directories_are_tested_with_a_trailing_slash():
    f = compile_rules(["-/cache/$"])
    assert not f.included(b"a/cache", True)
    assert f.included(b"a/cache", False)  # a file named cache stays


def test_undecodable_names_are_matched_as_bytes():
    f = compile_rules(["-\\.bak$"])
    assert not f.included(b"\xff\xfe.bak", False)
    assert f.included(b"\xff\xfe.txt", False)


@pytest.mark.parametrize("rule, problem", [
    ("no-prefix", "must start with"),
    ("", "must start with"),
    ("+[unclosed", "invalid regular expression"),
    ("-(?i", "invalid regular expression"),
])
def test_bad_rules_name_the_rule(rule, problem):
    with pytest.raises(FilterError) as e:
        compile_rules(["+ok", rule])
    assert problem in str(e.value) and repr(rule) in str(e.value)


def test_non_string_rule_is_refused():
    with pytest.raises(FilterError):
        compile_rules([["500", "x"]])


@given(st.lists(st.text(max_size=20), max_size=5), st.binary(max_size=40), st.booleans())
def test_any_rule_list_either_compiles_or_fails_cleanly(rules, path, is_dir):
    try:
        f = compile_rules(rules)
    except FilterError:
        return
    assert f.included(path.replace(b"\0", b""), is_dir) in (True, False)
