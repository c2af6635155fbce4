"""Configuration: layering, validation naming key and file, overrides, URL forms."""

from __future__ import annotations

import yaml
import pytest

from lafs_backup import config as cfg
from lafs_backup.errors import ConfigError


def leaves(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from leaves(v, prefix + k + ".")
        else:
            yield prefix + k


def test_base_config_documents_exactly_the_schema():
    with open(cfg.BASE_CONFIG) as f:
        base = yaml.safe_load(f)
    assert set(leaves(base)) == set(cfg.SCHEMA)
    text = cfg.BASE_CONFIG.read_text()
    for key in cfg.SCHEMA:  # every key has a comment line right above it or its section
        assert key.split(".")[-1] + ":" in text


def test_layers_merge_and_later_files_win(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("operation:\n  jobs: 3\n  retry:\n    attempts: 2\nfilter: ['-a']\n")
    b.write_text("operation:\n  jobs: 4\nfilter: ['-b']\n")
    tree = cfg.load_tree([str(a), str(b)])
    assert cfg.get(tree, "operation.jobs") == 4
    assert cfg.get(tree, "operation.retry.attempts") == 2  # merged, not replaced
    assert cfg.get(tree, "operation.retry.delay") == [1, 3, 10, 30]
    assert cfg.get(tree, "filter") == ["-b"]  # lists replace
    tree = cfg.load_tree([str(a), str(b)], [("operation.jobs", 9)])
    assert cfg.get(tree, "operation.jobs") == 9  # the command line wins


@pytest.mark.parametrize("text, key", [
    ("operation:\n  jobz: 3\n", "operation.jobz"),
    ("operation:\n  jobs: three\n", "operation.jobs"),
    ("operation:\n  jobs: true\n", "operation.jobs"),
    ("destination:\n  result:\n    print_to_stdout: 1\n", "destination.result.print_to_stdout"),
    ("bogus: 1\n", "bogus"),
    ("source: [1]\n", "source"),
])
def test_bad_keys_and_types_name_key_and_file(tmp_path, text, key):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        cfg.load_tree([str(f)])
    assert key in str(e.value) and str(f) in str(e.value)


@pytest.mark.parametrize("text, fragment", [
    ("operation:\n  jobs: 0\n", "operation.jobs"),
    ("grid:\n  needed: 3\n  happy: 2\n", "needed <= happy"),
    ("destination:\n  url: ftp://x\n", "destination.url"),
    ("operation:\n  retry:\n    delay: []\n", "operation.retry.delay"),
    ("filter: [3]\n", "filter"),
])
def test_value_checks(tmp_path, text, fragment):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        cfg.load_tree([str(f)])


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        cfg.load_tree([str(tmp_path / "nope.yaml")])
    f = tmp_path / "x.yaml"
    f.write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        cfg.load_tree([str(f)])
    f.write_bytes(b"\xff\xfe: 1\n")
    with pytest.raises(ConfigError):
        cfg.load_tree([str(f)])


def test_empty_file_and_empty_section_are_fine(tmp_path):
    f = tmp_path / "e.yaml"
    f.write_text("")
    g = tmp_path / "g.yaml"
    g.write_text("operation:\n")
    assert cfg.load_tree([str(f), str(g)]) == cfg.load_tree([])


def test_overrides_parse_yaml_values():
    assert cfg.parse_override("operation.jobs=4") == ("operation.jobs", 4)
    assert cfg.parse_override("filter=['-x']") == ("filter", ["-x"])
    with pytest.raises(ConfigError):
        cfg.parse_override("novalue")


@pytest.mark.parametrize("url", ["http://h:3456", "http://h:3456/", "http://h:3456/uri", "http://h:3456/uri/"])
def test_gateway_url_forms(url):
    assert cfg.gateway_base(url) == "http://h:3456/"


def test_retry_policy_repeats_last_delay():
    p = cfg.retry_policy(cfg.load_tree([]))
    assert [p.delay(i) for i in range(1, 7)] == [1, 3, 10, 30, 30, 30]


def test_shipped_example_config_is_valid():
    example = cfg.BASE_CONFIG.resolve().parent / "example.yaml"
    tree = cfg.load_tree([str(example)])
    assert cfg.get(tree, "source.path") == "/home"
    assert cfg.get(tree, "destination.happy") == 7
