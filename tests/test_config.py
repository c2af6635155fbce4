"""Configuration: layering, validation naming key and file, overrides, URL forms."""

from __future__ import annotations

import os

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
    ("operation:\n  threads: 0\n", "operation.threads"),
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


def test_threads_default_to_the_usable_cores_and_at_least_two(tmp_path, monkeypatch):
    """At least 2, and at least 8 for a source read over the network (its reads wait on it)."""
    assert cfg.load([]).operation.threads is None  # (found at run time)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert cfg.threads_for(None) == 2 and cfg.threads_for(None, remote=True) == cfg.REMOTE_THREADS == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    assert cfg.threads_for(None) == 12 and cfg.threads_for(None, remote=True) == 12
    assert cfg.load([], [("operation.threads", 3)]).operation.threads == 3
    assert cfg.threads_for(3, remote=True) == 3


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


# -- hostile configuration: fuzzed through the whole command path --------------------------------

from hypothesis import HealthCheck, event, given, settings, strategies as st  # noqa: E402

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["(", "[a-", "*x", "+(", "-)", "+\\", "tcp:0", "unix:/x", "tcp:1:interface=0.0.0.0", "USR2", "KILL",
     "1/0", "1/3e6:50e6", "x:y", "http://", "https://h:1/", "lz4", "xz", "none", "zstd", "noise", "~/q",
     "/dev/full/q", "/proc/self/q", "\x00", "ssh-ed25519 AAAA", ""])
_SCALAR = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
           | _TEXT)
_VALUE = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(_TEXT, inner, max_size=3), max_leaves=6)
_KEYS = sorted(cfg.SCHEMA) + ["filter.x", "operation.jobz", "manhole", "source", "x.y.z", "grid.nodes.n"]


def _nested(pairs):
    out = {}
    for dotted, value in pairs:
        cur = out
        parts = dotted.split(".")
        for p in parts[:-1]:
            nxt = cur.get(p)
            if not isinstance(nxt, dict):
                nxt = cur[p] = {}
            cur = nxt
        cur[parts[-1]] = value
    return out


def _typed(key):
    """A value of a type the key accepts, with hostile content: gets past the type check."""
    by_type = {int: st.integers(-2**40, 2**40) | st.sampled_from([0, -1, 1, 65535, 65536]),
               float: st.floats(allow_nan=True), str: _TEXT, bool: st.booleans(), type(None): st.none(),
               list: st.lists(_TEXT | st.integers(-5, 5) | st.floats(), max_size=3),
               dict: st.dictionaries(_TEXT | st.integers(-5, 5), _TEXT | st.integers(), max_size=2)}
    return st.one_of(*[by_type[t] for t in cfg.SCHEMA[key]]).map(lambda v: (key, v))


_CONFIGS = st.one_of(
    st.lists(st.tuples(st.sampled_from(_KEYS), _VALUE), max_size=4).map(_nested),
    st.lists(st.sampled_from(sorted(cfg.SCHEMA)).flatmap(_typed), min_size=1, max_size=4).map(_nested),
    st.lists(st.tuples(st.sampled_from(["filter", "destination.encoding.path_filter"]),
                       st.lists(st.sampled_from("+-") .flatmap(lambda s: _TEXT.map(lambda t: s + t))
                                | _SCALAR, max_size=4)), min_size=1, max_size=2).map(_nested),
    _VALUE,
)


def _inside(config, tmp):
    """Absolute paths moved below tmp (except the unwritable ones on purpose): a fuzzed queue or
    result file must not be written anywhere else."""
    if isinstance(config, dict):
        return {k: _inside(v, tmp) for k, v in config.items()}
    if isinstance(config, list):
        return [_inside(v, tmp) for v in config]
    if isinstance(config, str) and config.startswith("/") and not config.startswith(("/dev/full/", "/proc/")):
        return os.path.join(tmp, config.lstrip("/"))
    return config


def _drive(argv, tmp):
    """Run a command in process against a memory reactor (nothing here may need a real one)."""
    import io
    import os

    from twisted.internet.testing import MemoryReactorClock

    from lafs_backup.cli import run

    out, err = io.StringIO(), io.StringIO()
    # Relative and '~' paths in a fuzzed configuration land in tmp, not in the checkout or home.
    old = {k: os.environ.get(k) for k in ("XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "HOME")}
    for k in old:
        os.environ[k] = os.path.join(tmp, k.lower())
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        coro = run(MemoryReactorClock(), argv, out, err)
        try:
            coro.send(None)
        except StopIteration as stop:
            return stop.value, out.getvalue(), err.getvalue()
        coro.close()
        raise AssertionError(f"the command waited on the reactor: {argv}")
    finally:
        os.chdir(cwd)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _assert_clean(code, err):
    from lafs_backup.errors import ExitCode

    assert "Traceback" not in err and "internal error" not in err, err
    assert code in (ExitCode.OK, ExitCode.PARTIAL, ExitCode.USAGE, ExitCode.FAILED), (code, err)
    if code in (ExitCode.USAGE, ExitCode.FAILED):
        errors = [ln for ln in err.splitlines() if ln.startswith("lafs-backup: error: ")]
        assert len(errors) == 1 and "\n" not in errors[0], err


@settings(max_examples=int(os.environ.get("LAFS_BACKUP_FUZZ_EXAMPLES", "300")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=_CONFIGS)
def test_fuzzed_configuration_gives_one_line_errors(tmp_path, config):
    """Wrong types, unknown keys, invalid regexes, odd endpoints: a one-line error, never a traceback.

    Goes through the whole path a real run takes before touching the grid: loading, logging, the
    manhole's settings, filters, encoding rules, rate limits and phase one (--queue-only).
    """
    import tempfile

    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        src = os.path.join(tmp, "src")
        os.mkdir(src)
        with open(os.path.join(src, "f.txt"), "w") as f:
            f.write("x")
        path = os.path.join(tmp, "c.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(_inside(config, tmp), f, allow_unicode=True)
        code, _, err = _drive(["-c", path, "backup", src, "--queue-only"], tmp)
        _assert_clean(code, err)
        event(f"exit {code}")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=80) | st.sampled_from([b"\xff\xfe:", b"a: [", b"a: !!python/object:os.system x",
                                                      b"filter: ['+\xff']", b"source:\n  path: \xc3\x28\n",
                                                      b"{a: 1, a: 2}", b"- 1\n- 2\n", b"&a [*a]"]),
       name=st.binary(min_size=1, max_size=8).filter(lambda b: b"/" not in b and b"\0" not in b
                                                    and b not in (b".", b"..")))
def test_unreadable_configuration_files(tmp_path, raw, name):
    """Bytes that are not YAML or not UTF-8, in files whose names are not UTF-8 either."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        path = os.path.join(os.fsencode(tmp), b"c-" + name)
        with open(path, "wb") as f:
            f.write(raw)
        code, _, err = _drive(["-c", os.fsdecode(path), "dump-config"], tmp)
        _assert_clean(code, err)


def test_non_utf8_paths_in_settings(tmp_path):
    """A path setting naming a non-UTF-8 file (given with -o; YAML text cannot hold one) is used as such."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    queue = os.path.join(os.fsencode(tmp_path), b"queue-\xff")
    code, _, err = _drive(["-o", f"source.queue.path={os.fsdecode(queue)}", "backup",
                           str(src), "--queue-only"], str(tmp_path))
    _assert_clean(code, err)
    assert code == 0 and os.path.exists(queue), err


@pytest.mark.parametrize("text, fragment", [
    ("source:\n  hooks:\n    before: pg_dump mydb > /srv/db.sql\n",
     "source.hooks.before: expected an argument list such as [pg_dump"),
    ("source:\n  hooks:\n    after: [1, 2]\n", "source.hooks.after: expected a list of strings"),
    ("source:\n  hooks:\n    on_failure: ['', x]\n", "source.hooks.on_failure: expected a list of strings"),
    ("source:\n  hooks:\n    before: {sh: x}\n", "source.hooks.before: expected list or string"),
    ("source:\n  hooks:\n    timeout: 0\n", "source.hooks.timeout: expected a positive number"),
    ("source:\n  hooks:\n    timeout: .nan\n", "source.hooks.timeout: expected a positive number"),
    ("source:\n  hooks:\n    timeout: .inf\n", "source.hooks.timeout: expected a positive number"),
    ("source:\n  hooks:\n    befor: [x]\n", "source.hooks.befor: unknown key"),
])
def test_hook_settings_are_checked_and_the_error_names_the_key(tmp_path, text, fragment):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        cfg.load([str(f)])
    assert fragment in str(e.value)


def test_hook_settings_are_read_into_the_record(tmp_path):
    assert cfg.load([]).source.hooks == cfg.HooksConfig((), (), (), 600.0)
    f = tmp_path / "c.yaml"
    f.write_text("source:\n  hooks:\n    before: [sh, -c, 'pg_dump db > /srv/db.sql']\n    timeout: 30\n")
    hooks = cfg.load([str(f)]).source.hooks
    assert hooks.before == ("sh", "-c", "pg_dump db > /srv/db.sql") and hooks.timeout == 30.0 and hooks.any
    assert cfg.load([], [cfg.parse_override("source.hooks.after=[touch, /tmp/done]")]).source.hooks.after == \
        ("touch", "/tmp/done")
