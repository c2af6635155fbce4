"""The derive rules and recipes (pure): what a rule matches, how it renders, what the configuration refuses."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, strategies as st

from lafs_backup import config
from lafs_backup.derive import recipe as recipes
from lafs_backup.derive.recipe import BadRecipe, Input, Recipe, matches_rule
from lafs_backup.derive.rules import STDOUT, argv, parse
from lafs_backup.errors import ConfigError

GZIP = {"name": "gzip", "path": r"(?P<stem>.+)\.gz", "inputs": ["{stem}"], "program": "gzip",
        "args": ["-n", "-k", "-{level}"], "each": ["{in0}"], "variants": [{"level": 9}, {"level": 6}]}
PYC = {"name": "pyc", "path": r"(?P<dir>(?:.*/)?)__pycache__/(?P<mod>[^/.]+)\.cpython-3(?P<minor>\d+)\.pyc",
       "inputs": ["{dir}{mod}.py"], "program": "python3.{minor}", "args": ["-c", "code", "{mode}"],
       "each": ["{in0}", "{out}", "{root}/{in0}"], "variants": [{"mode": "TIMESTAMP"}]}


def test_a_rule_renders_its_runs_per_variant():
    rules = parse([GZIP])
    jobs = rules.jobs(b"docs/a.txt.gz", "/src")
    assert [j.args for j in jobs] == [("-n", "-k", "-9"), ("-n", "-k", "-6")]
    assert jobs[0].inputs == ("docs/a.txt",) and jobs[0].outputs == ("docs/a.txt.gz",)
    assert jobs[0].made_at == "docs/a.txt.gz" and jobs[0].each == ("docs/a.txt",)
    assert argv([jobs[0], rules.jobs(b"b.gz", "/src")[0]]) == ["-n", "-k", "-9", "docs/a.txt", "b"]
    assert rules.jobs(b"docs/a.txt", "/src") is None


def test_the_pyc_example_names_its_source_beside_pycache_and_its_path_at_compile_time():
    job = parse([PYC]).jobs(b"pkg/sub/__pycache__/mod.cpython-311.pyc", "/srv/app")[0]
    assert job.program == "python3.11"
    assert job.inputs == ("pkg/sub/mod.py",)
    assert job.each == ("pkg/sub/mod.py", "pkg/sub/__pycache__/mod.cpython-311.pyc", "/srv/app/pkg/sub/mod.py")
    top = parse([PYC]).jobs(b"__pycache__/m.cpython-312.pyc", "/r")[0]
    assert top.inputs == ("m.py",) and top.program == "python3.12"


def test_relative_inputs_and_the_first_matching_rule():
    rel = {**GZIP, "name": "rel", "path": r"(?:.*/)?(?P<n>[^/]+)\.z", "inputs": ["./{n}", "../shared/{n}"]}
    rules = parse([rel, GZIP])
    assert rules.jobs(b"a/b/x.z", "/")[0].inputs == ("a/b/x", "a/shared/x")
    # a path that would leave the source root makes no recipe
    assert rules.jobs(b"x.z", "/") is None
    first = parse([{**GZIP, "name": "first", "inputs": ["{stem}.orig"]}, GZIP])
    assert first.jobs(b"a.gz", "/")[0].inputs == ("a.orig",)


def test_a_file_that_is_its_own_input_makes_no_recipe():
    rules = parse([{**GZIP, "inputs": ["{stem}.gz"]}])
    assert rules.jobs(b"a.gz", "/") is None


@pytest.mark.parametrize("bad, words", [
    ({**GZIP, "colour": 1}, "unknown field 'colour'"),
    ({k: v for k, v in GZIP.items() if k != "program"}, "no 'program'"),
    ({**GZIP, "path": "(unclosed"}, "not a valid regular expression"),
    ({**GZIP, "args": ["-{levle}"]}, "names {levle}"),
    ({**GZIP, "inputs": ["{in0}"]}, "names {in0}"),
    ({**GZIP, "output": "stdout"}, "prints its output"),
    ({**GZIP, "variants": [{"level": 9}, {"lvl": 6}]}, "same names"),
    ({**GZIP, "inputs": []}, "at least 1"),
    ({**GZIP, "name": "a b"}, "short name"),
])
def test_the_configuration_refuses_a_bad_rule_naming_it(bad, words):
    with pytest.raises(ConfigError) as e:
        parse([bad])
    assert words in str(e.value)
    assert "derive.rules" in str(e.value)


def test_two_rules_of_one_name_and_bad_programs_are_refused():
    with pytest.raises(ConfigError, match="a second rule is named 'gzip'"):
        parse([GZIP, GZIP])
    tree = config.load_tree(overrides=[("derive.allowed_programs", ["bin/gzip"])])
    with pytest.raises(ConfigError, match="derive.allowed_programs"):
        config.from_tree(tree)


def test_the_configuration_reads_the_shipped_examples():
    conf = config.load(["config/derive-examples.yaml"])
    assert [r.name for r in conf.derive.rules.rules] == ["gzip", "pyc", "pyc-opt"]
    assert "gzip" in conf.derive.allowed_programs
    assert conf.derive.rules.jobs(b"x/__pycache__/y.cpython-311.pyc", "/r") is not None


def _recipe(**over) -> Recipe:
    job = parse([GZIP]).jobs(b"d/a.gz", "/src")[0]
    base = dict(rule="gzip", variant={"level": "9"}, root="/src", program="gzip",
                version={"path": "/usr/bin/gzip", "sha256": "0" * 64}, args=job.args, each=job.each,
                inputs=(Input("d/a", "ab" * 32, 3, 0o644, 5),), outputs=job.outputs, made_at=job.made_at)
    base.update(over)
    return Recipe(**base)


def test_a_recipe_round_trips_through_its_edge_metadata():
    r = _recipe()
    again = recipes.of({"derived": yaml.safe_load(yaml.safe_dump(r.to_json()))})
    assert again == r
    assert recipes.of({"size": 3}) is None
    assert matches_rule(r, parse([GZIP])) is None


def test_a_recipe_whose_root_is_not_an_absolute_path_is_damaged():
    for root in ("relative/src", "/a/../b", "", "//x", "/a/"):
        raw = _recipe().to_json()
        raw["root"] = root
        with pytest.raises(BadRecipe):
            recipes.of({"derived": raw})


@given(st.sampled_from(["../x", "/etc/passwd", "a/../../b", "", "a//b", "./a"]))
def test_a_recipe_whose_paths_leave_the_root_is_damaged(path):
    raw = _recipe().to_json()
    raw["inputs"][0]["path"] = path
    with pytest.raises(BadRecipe):
        recipes.of({"derived": raw})


def test_a_recipe_this_machine_would_not_run_says_why():
    rules = parse([GZIP])
    assert "has no derive rule named 'other'" in matches_rule(_recipe(rule="other"), rules)
    tampered = _recipe(args=("-n", "-k", "-9", "--suffix=.x"))
    assert "the recipe differs" in matches_rule(tampered, rules)
    assert "the recipe differs" in matches_rule(_recipe(program="sh"), rules)
    assert "the recipe differs" in matches_rule(_recipe(variant={"level": "1"}), rules)
    assert matches_rule(_recipe(variant={"level": "6"}, args=("-n", "-k", "-6")), rules) is None


def test_stdout_runs_are_never_batched():
    rules = parse([{**GZIP, "args": ["-n", "-c", "-{level}", "{in0}"], "each": [], "output": "stdout"}])
    job = rules.jobs(b"a.gz", "/")[0]
    assert job.made_at == STDOUT and job.batch_key is None
