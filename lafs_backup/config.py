"""Configuration: layer YAML files over the base config, validate every key, and read it once into
frozen, typed records (:class:`Config`): code below the CLI never looks up a dotted key."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

import yaml

from .derive import rules as derive_rules
from .derive.rules import Rules
from .encoding import EncodingRules, compile_rules
from .errors import ConfigError, UsageError
from .filters import Filter, compile_from_config, parse_if_present, parse_size
from .log import LEVELS
from .retry import RetryPolicy

BASE_CONFIG = Path(__file__).with_name("core.yaml")
#: A value of the configuration as YAML gave it: a scalar, list or mapping, of the types the key's
#: entry in :data:`SCHEMA` allows once merged (a whole file's document: anything until then).
YAMLValue = Any
T = TypeVar("T")

#: The YAML reader: libyaml's when PyYAML was built with it (about six times faster: every command reads
#: the base configuration), else the pure-Python one.  Both read only plain data (safe).  For files (bytes).
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_NUM = (int, float)
_NULL = type(None)

#: Allowed types of every leaf key.  The base config must match this exactly
#: (a test checks it), so a key cannot be documented but unchecked.
SCHEMA: dict[str, tuple[type, ...]] = {
    "source.path": (str, _NULL),
    "source.queue.path": (str, _NULL),
    "source.entry_cache.path": (str, _NULL),
    "source.entry_cache.commit_after.rows": (int,),
    "source.entry_cache.commit_after.seconds": _NUM,
    "source.pick_policy": (str,),
    "source.one_file_system": (bool,),
    "source.exclude_caches": (bool,),
    "source.exclude_if_present": (list,),
    "source.exclude_larger_than": (str, int, _NULL),
    "source.files_from": (list,),
    "source.files_from_verbatim": (list,),
    "source.files_from_raw": (list,),
    "source.ignore_file": (str, _NULL),
    "source.git_ignore": (bool,),
    "source.storage_options": (dict, _NULL),
    # (A string is accepted here only to be refused with a message saying how to write the list.)
    "source.hooks.before": (list, str),
    "source.hooks.after": (list, str),
    "source.hooks.on_failure": (list, str),
    "source.hooks.timeout": _NUM,
    "filter": (list,),
    "destination.url": (str, _NULL),
    "destination.happy": (int, _NULL),
    "destination.lease_days": (int, float, _NULL),
    "destination.copies": (int,),
    "destination.copy_to": (list,),
    "destination.result.print_to_stdout": (bool,),
    "destination.result.append_to_file": (str, _NULL),
    "destination.result.append_to_lafs_dir": (str, _NULL),
    "destination.result.cap_when_sealed": (bool,),
    "destination.pack.max_file_size": (int,),
    "destination.pack.target_size": (int,),
    "destination.tree": (str, _NULL),
    "destination.encoding.method": (str, _NULL),
    "destination.encoding.min_size": (int,),
    "destination.encoding.path_filter": (list,),
    "operation.rate_limit.bytes": (str, int, float, _NULL),
    "operation.rate_limit.objects": (str, int, float, _NULL),
    "grid.dir": (str, _NULL),
    "grid.nodes": (int,),
    "grid.needed": (int,),
    "grid.happy": (int,),
    "grid.start_timeout": _NUM,
    "operation.jobs": (int,),
    "operation.lock_wait": _NUM,
    "operation.window": (int,),
    "operation.threads": (int, _NULL),
    "operation.index_cache": (str, int, _NULL),
    "operation.timeout": (int, float, _NULL),
    "operation.answer_timeout": (int, float, _NULL),
    "operation.retry.attempts": (int,),
    "operation.retry.delay": (list,),
    "http.debug_requests": (bool,),
    "logging.level": (str,),
    "repository.key_file": (str, _NULL),
    "repository.introducer_furl": (str, _NULL),
    "repository.window": (int,),
    "manhole.endpoint": (str, _NULL),
    "manhole.allow_remote": (bool,),
    "manhole.authorized_keys": (str, list, _NULL),
    "manhole.on_signal": (str, _NULL),
    "metrics.enabled": (bool,),
    "metrics.textfile": (str, _NULL),
    "notify.url": (str, _NULL),
    "notify.commands": (list,),
    "notify.timeout": _NUM,
    "watch.settle": _NUM,
    "watch.rescan_interval": _NUM,
    "watch.min_interval": _NUM,
    "watch.max_delay": _NUM,
    "derive.rules": (list,),
    "derive.allowed_programs": (list,),
    "derive.timeout": _NUM,
    "derive.jobs": (int,),
    "derive.batch": (int,),
    "custodian.key_file": (str, _NULL),
    "custodian.state_dir": (str, _NULL),
    "custodian.keep_within": (int, float, _NULL),
    "custodian.grace": _NUM,
    "custodian.poll": _NUM,
    "custodian.quiet_alert": (int, float, _NULL),
    "custodian.renew_every": _NUM,
    "custodian.behind_days": _NUM,
}




#: Keys naming a local file or directory.
_PATH_KEYS = ("source.path", "source.queue.path", "source.entry_cache.path", "metrics.textfile",
              "destination.result.append_to_file", "grid.dir", "manhole.authorized_keys", "repository.key_file",
              "custodian.key_file", "custodian.state_dir")


def _type_names(types: tuple[type, ...]) -> str:
    names = {int: "integer", float: "number", str: "string", bool: "boolean",
             list: "list", dict: "mapping", _NULL: "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _load_yaml(path: str) -> YAMLValue:
    try:
        with open(path, "rb") as f:
            return yaml.load(f, Loader=_Loader)
    except FileNotFoundError:
        raise ConfigError(f"Configuration file {path} does not exist", key="", source=path)
    except OSError as e:
        raise ConfigError(f"Cannot read configuration file {path}: {e.strerror}", key="", source=path)
    except yaml.YAMLError as e:
        raise ConfigError(f"Configuration file {path} is not valid YAML: {e}", key="", source=path)


def merge(base: dict[str, Any], layer: Mapping[str, Any], source: str, prefix: str = "") -> None:
    """Merge ``layer`` into ``base`` in place, validating each key against :data:`SCHEMA`.

    Mappings merge key by key; lists and scalars replace.  Raises
    :class:`ConfigError` naming the dotted key and ``source`` for an unknown
    key or a value of the wrong type.
    """
    if not isinstance(layer, Mapping):
        raise ConfigError(source=source, key=prefix or "(top level)",
                          problem=f"expected a mapping, got {type(layer).__name__}")
    for key, value in layer.items():
        if not isinstance(key, str):
            raise ConfigError(source=source, key=f"{prefix}{key!r}", problem="keys must be strings")
        dotted = prefix + key
        if dotted in SCHEMA:
            types = SCHEMA[dotted]
            # bool is an int in Python; don't let `jobs: true` through.
            ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
            if not ok:
                raise ConfigError(source=source, key=dotted,
                                  problem=f"expected {_type_names(types)}, got {value!r}")
            base[key] = copy.deepcopy(value)
        elif any(k.startswith(dotted + ".") for k in SCHEMA):
            if value is None:
                continue  # "section:" with nothing under it
            sub = base.setdefault(key, {})
            merge(sub, value, source, dotted + ".")
        else:
            raise ConfigError(source=source, key=dotted, problem="unknown key")


def parse_override(item: str) -> tuple[str, YAMLValue]:
    """Parse a ``KEY=VALUE`` command-line override; VALUE is read as YAML."""
    if "=" not in item:
        raise ConfigError(source="command line", key=item, problem="expected KEY=VALUE")
    key, _, raw = item.partition("=")
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None  # (str with surrogates: not libyaml)
    except yaml.YAMLError:
        value = raw
    if list in SCHEMA.get(key, ()) and not isinstance(value, list) and raw.strip().startswith("[") \
            and raw.strip().endswith("]"):
        # A list YAML cannot read, as shells make people write one: regexes with backslashes in
        # double quotes ("-\.bin$"), brackets and stars unquoted ([-*~$, -/tmp/]).
        value = _flow_list(raw.strip()[1:-1])
    return key, value


def _flow_list(text: str) -> list[str]:
    """The items of ``a, "b", 'c'`` as written: split at the commas outside quotes and brackets,
    each quoted item taken literally (a JSON string is decoded)."""
    import json

    items, cur, depth, quote = [], "", 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth <= 0:
            items.append(cur)
            cur = ""
            continue
        cur += ch
    items.append(cur)
    out = []
    for item in (i.strip() for i in items):
        if len(item) >= 2 and item[0] == item[-1] and item[0] in "\"'":
            try:
                decoded = json.loads(item) if item[0] == '"' else None
            except ValueError:
                decoded = None
            item = decoded if isinstance(decoded, str) else item[1:-1]
        if item:
            out.append(item)
    return out


def _nest(dotted: str, value: YAMLValue) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cur = out
    parts = dotted.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def load_tree(files: Iterable[str] = (), overrides: Iterable[tuple[str, YAMLValue]] = ()) -> dict[str, Any]:
    """Return the merged configuration tree: base, then ``files``, then ``overrides``."""
    tree: dict[str, Any] = {}
    merge(tree, _load_yaml(str(BASE_CONFIG)), str(BASE_CONFIG))
    for path in files:
        layer = _load_yaml(path)
        if layer is None:
            continue
        merge(tree, layer, path)
    for key, value in overrides:
        merge(tree, _nest(key, value), "command line")
    _check_values(tree)
    return tree


def get(tree: Mapping[str, Any], dotted: str) -> YAMLValue:
    cur: YAMLValue = tree
    for p in dotted.split("."):
        cur = cur[p]
    return cur


#: Threads at least, by default, for a source read over the network (each read waits on it).
REMOTE_THREADS = 8


def threads_for(configured: int | None, remote: bool = False) -> int:
    """``operation.threads``: as configured, else the cores this process may run on, at least 2, and
    at least :data:`REMOTE_THREADS` when the source is read over the network (``remote``).

    More threads than cores only make them queue for Python's lock (GIL) with the reactor: on 2 cores,
    the first backup of a real tree took 8% longer with 10 (Twisted's default) than with 2.  A remote
    source's reads wait on the network instead, and release the lock meanwhile."""
    if configured is not None:
        return configured
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 2
    return max(REMOTE_THREADS if remote else 2, cores)


def _check_values(tree: Mapping[str, Any]) -> None:
    """Range checks that types alone don't catch."""
    def bad(key: str, problem: str) -> ConfigError:
        return ConfigError(source="configuration", key=key, problem=problem)

    for key in ("operation.jobs", "operation.window", "operation.retry.attempts", "grid.nodes", "repository.window",
                "grid.needed", "grid.happy", "destination.copies"):
        if get(tree, key) < 1:
            raise bad(key, "must be at least 1")
    threads = get(tree, "operation.threads")
    if threads is not None and threads < 1:
        raise bad("operation.threads", "must be at least 1, or null (the usable cores, at least 2)")
    n, k, h = get(tree, "grid.nodes"), get(tree, "grid.needed"), get(tree, "grid.happy")
    if not k <= h <= n:
        raise bad("grid", f"need needed <= happy <= nodes, got needed={k} happy={h} nodes={n}")
    delays = get(tree, "operation.retry.delay")
    if not delays or not all(isinstance(d, (int, float)) and not isinstance(d, bool) and d >= 0
                             for d in delays):
        raise bad("operation.retry.delay", "must be a non-empty list of non-negative numbers")
    for rule in get(tree, "filter"):
        if not isinstance(rule, str):
            raise bad("filter", f"each rule must be a string like '+regex' or '-regex', got {rule!r}")
    for key in ("destination.pack.max_file_size", "destination.encoding.min_size", "operation.lock_wait",
                "watch.settle", "watch.rescan_interval", "watch.min_interval", "watch.max_delay"):
        if get(tree, key) < 0:
            raise bad(key, "must not be negative")
    if get(tree, "destination.tree") not in (None, "index", "tahoe"):
        raise bad("destination.tree", f"must be index or tahoe, got {get(tree, 'destination.tree')!r}")
    if get(tree, "destination.pack.target_size") < 1 << 16:
        raise bad("destination.pack.target_size", "must be at least 65536")
    if get(tree, "logging.level").lower() not in LEVELS:
        raise bad("logging.level", f"must be one of {', '.join(LEVELS)}")
    for key in _PATH_KEYS:
        value = get(tree, key)
        if isinstance(value, str) and "\0" in value:
            raise bad(key, "a path cannot contain a NUL character")
        if isinstance(value, str) and not value:
            raise bad(key, "an empty path; use null for the default")
    options = get(tree, "source.storage_options")
    if options is not None and not all(isinstance(k, str) and k.isidentifier() for k in options):
        raise bad("source.storage_options", "expected a mapping of option names (identifiers) to values")
    for url in get(tree, "destination.copy_to"):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise bad("destination.copy_to", f"each entry must be a gateway's http:// or https:// URL, got {url!r}")
    furl = get(tree, "repository.introducer_furl")
    if furl is not None and not furl.startswith("pb://"):
        raise bad("repository.introducer_furl", "must be a Foolscap FURL (pb://...)")
    url = get(tree, "destination.url")
    if url is not None and not url.startswith(("http://", "https://")):
        raise bad("destination.url", f"must be an http:// or https:// URL, got {url!r}")
    _check_notify(tree)


#: The commands ``notify.commands`` may name: those whose runs are monitored (``engine/monitor.py``).
NOTIFY_COMMANDS = ("backup", "watch", "copy", "check", "cleanup", "rewrite", "tag", "init", "verify")


def _check_notify(tree: Mapping[str, Any]) -> None:
    """``notify``: an http(s) URL with a host (it is not shown whole: it holds a token), known commands,
    a positive timeout."""
    url = get(tree, "notify.url")
    if url is not None:
        scheme, host = url_host(url)
        if scheme not in ("http", "https") or not host:
            shown = f"{scheme}:..." if scheme else "a URL without a scheme"
            raise ConfigError(source="configuration", key="notify.url", problem=(
                f"must be an http:// or https:// URL with a host, such as https://hc-ping.com/UUID, not {shown}"))
    for name in get(tree, "notify.commands"):
        if name not in NOTIFY_COMMANDS:
            raise ConfigError(source="configuration", key="notify.commands", problem=(
                f"{name!r} is not a command that changes state; expected some of {', '.join(NOTIFY_COMMANDS)}"))
    timeout = get(tree, "notify.timeout")
    if not (0 < timeout < float("inf")):
        raise ConfigError(source="configuration", key="notify.timeout",
                          problem=f"expected a positive number of seconds, got {timeout!r}")


def gateway_base(url: str) -> str:
    """Normalise a gateway URL to its base, ending in '/'.

    Accepts both ``http://host:3456/`` and the original tool's
    ``http://host:3456/uri`` form.
    """
    url = url.rstrip("/")
    if url.endswith("/uri"):
        url = url[: -len("/uri")]
    return url + "/"


def retry_policy(tree: Mapping[str, Any]) -> RetryPolicy:
    t = get(tree, "operation.timeout")
    a = get(tree, "operation.answer_timeout")
    return RetryPolicy(
        attempts=get(tree, "operation.retry.attempts"),
        delays=tuple(get(tree, "operation.retry.delay")),
        timeout=float(t) if t and t > 0 else None,
        answer_timeout=float(a) if a and a > 0 else None,
    )


def _index_cache(value: str | int | None) -> int:
    """``operation.index_cache``: a size (``1G``, ``512M``), or 0 or null for no local copies."""
    if value is None:
        return 0
    try:
        return parse_size(value, "operation.index_cache")
    except UsageError as e:
        raise ConfigError(source="configuration", key="operation.index_cache",
                          problem=e.message.split(": ", 1)[-1])


def shown(tree: Mapping[str, Any]) -> dict[str, Any]:
    """The tree as it may be shown (``dump-config``, the manhole's ``config``): storage options, which
    hold credentials, by their names only; ``notify.url``, which holds a token, by its host alone."""
    out = dict(tree)
    options = out.get("source", {}).get("storage_options")
    if options:
        out["source"] = {**out["source"], "storage_options": {k: "<hidden>" for k in options}}
    url = out.get("notify", {}).get("url")
    if url:
        scheme, host = url_host(url)
        out["notify"] = {**out["notify"], "url": f"{scheme}://{host}/<hidden>"}
    return out


def url_host(url: str) -> tuple[str, str]:
    """A URL's scheme and host (with its port), as far as they can be told ("" when not)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", ""
    host = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    return scheme.lower(), host


def dump(tree: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(tree), sort_keys=False, default_flow_style=False)


def expand(path: str | None) -> str | None:
    return os.path.expanduser(path) if path else path


def parse_rate(spec: str | float | int, key: str) -> tuple[float, float]:
    """Parse a token bucket ``interval[:burst]``; ``interval`` may be ``a/b``.  Returns (seconds per
    token, burst)."""
    def num(text: str) -> float:
        if "/" in text:
            a, _, b = text.partition("/")
            return float(a) / float(b)
        return float(text)

    try:
        text = str(spec)
        head, _, tail = text.partition(":")
        interval = num(head)
        burst = num(tail) if tail else max(1.0, 1.0 / interval)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(source="configuration", key=key,
                          problem=f"expected 'interval[:burst]' such as '1/3e6:50e6', got {spec!r}")
    if interval <= 0 or burst <= 0:
        raise ConfigError(source="configuration", key=key, problem="interval and burst must be positive")
    return interval, burst


def pick_policy(tree: Mapping[str, Any]) -> str:
    value = get(tree, "source.pick_policy")
    if value not in PICK_POLICIES:
        raise ConfigError(source="configuration", key="source.pick_policy",
                          problem=f"expected one of {', '.join(PICK_POLICIES)}, got {value!r}")
    return str(value)


# -- the records ----------------------------------------------------------------------------------

PICK_POLICIES = ("alphasort_last", "alphasort_first", "mtime_newest", "mtime_oldest")


@dataclass(frozen=True)
class SelectConfig:
    """What phase one backs up besides the filter rules (see ``backup/select.py``)."""

    one_file_system: bool = False
    exclude_caches: bool = False
    exclude_if_present: tuple[str, ...] = ()
    exclude_larger_than: int | None = None
    files_from: tuple[str, ...] = ()
    files_from_verbatim: tuple[str, ...] = ()
    files_from_raw: tuple[str, ...] = ()
    ignore_file: str | None = ".lafsbackupignore"
    git_ignore: bool = False


@dataclass(frozen=True)
class HooksConfig:
    """``source.hooks``: the argument lists run before a backup, after it, and when it fails (empty:
    none), each within ``timeout`` seconds (see ``engine/hooks.py``)."""

    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    on_failure: tuple[str, ...] = ()
    timeout: float = 600.0

    @property
    def any(self) -> bool:
        return bool(self.before or self.after or self.on_failure)


@dataclass(frozen=True)
class SourceConfig:
    path: str | None
    queue_path: str | None
    cache_path: str | None
    commit_rows: int
    commit_seconds: float
    pick_policy: str = "alphasort_last"
    select: SelectConfig = SelectConfig()
    #: Options of an fsspec source or restore target (credentials, endpoint): never logged.
    storage_options: dict[str, Any] | None = field(default=None, repr=False)
    hooks: HooksConfig = HooksConfig()


@dataclass(frozen=True)
class ResultConfig:
    print_to_stdout: bool
    append_to_file: str | None
    append_to_lafs_dir: str | None
    cap_when_sealed: bool = False


@dataclass(frozen=True)
class DestinationConfig:
    url: str | None
    happy: int | None
    lease_days: float | None
    result: ResultConfig
    pack_max_file_size: int
    pack_target_size: int
    encoding: EncodingRules
    #: How many grids should hold each backup, and the other grids' gateways ``backup`` copies to.
    copies: int = 1
    copy_to: tuple[str, ...] = ()
    #: Where the source's directories live: "index" (in the snapshot index alone) or "tahoe" (one
    #: Tahoe directory each, browsable with Tahoe's own tools).
    tree: str = "index"


@dataclass(frozen=True)
class GridConfig:
    dir: str | None
    nodes: int
    needed: int
    happy: int
    start_timeout: float


@dataclass(frozen=True)
class OperationConfig:
    jobs: int
    window: int
    retry: RetryPolicy
    lock_wait: float
    #: Token buckets (seconds per token, burst): bytes uploaded, requests sent.
    rate_bytes: tuple[float, float] | None
    rate_objects: tuple[float, float] | None
    #: Bytes of local copies of index chunks and immutable directory listings (0: none kept).
    index_cache: int = 0
    #: Threads for blocking work (reading and hashing files, the walk, the cache's files); None: as
    #: :func:`threads_for` finds.
    threads: int | None = None


@dataclass(frozen=True)
class RepositoryConfig:
    key_file: str | None
    introducer_furl: str | None
    window: int = 1


@dataclass(frozen=True)
class ManholeConfig:
    endpoint: str | None
    allow_remote: bool
    authorized_keys: str | list[str] | None
    on_signal: str | None

    @property
    def asked(self) -> bool:
        """Does the configuration ask for a manhole at all (off by default)?"""
        return self.endpoint is not None or self.on_signal is not None


@dataclass(frozen=True)
class WatchConfig:
    """``watch``: seconds of quiet before a round, between full rescans, between two rounds at
    least, and at most from a change to its round while the tree never goes quiet."""

    settle: float = 10.0
    rescan_interval: float = 21600.0
    min_interval: float = 30.0
    max_delay: float = 300.0


@dataclass(frozen=True)
class MonitorConfig:
    """``metrics`` and ``notify``: whether, and where, the metrics file is written (None: in the state
    directory), and the healthchecks.io-style URL pinged around the runs of ``notify_commands``,
    each ping given up after ``notify_timeout`` seconds (see ``engine/monitor.py``)."""

    metrics: bool = True
    textfile: str | None = None
    #: A token, in effect: never logged or shown whole.
    notify_url: str | None = field(default=None, repr=False)
    notify_commands: tuple[str, ...] = ("backup", "watch")
    notify_timeout: float = 10.0


@dataclass(frozen=True)
class DeriveConfig:
    """``derive``: the rules that store a file as the recipe that makes it, the programs this machine
    lets a recipe run (a name looked up in /usr/local/bin, /usr/bin and /bin, or an absolute path),
    each run's time limit, how many run at once, and how many files one run makes at most (see
    ``lafs_backup/derive``)."""

    rules: Rules = Rules(())
    allowed_programs: tuple[str, ...] = ()
    timeout: float = 300.0
    jobs: int = 2
    batch: int = 200


@dataclass(frozen=True)
class CustodianConfig:
    """``custodian``: its key file and state directory (None: the defaults, see ``commands/custodian.py``),
    and its rules, in seconds: keep every backup first seen within ``keep_within`` (None: forever), a
    forget request takes effect ``grace`` after it arrived, the inbox is read every ``poll``, no new
    manifest for ``quiet_alert`` is a warning (None: never), every object renewed once per ``renew_every``,
    a critical alert when a kept backup's earliest lease may end within ``behind``."""

    key_file: str | None = None
    state_dir: str | None = None
    keep_within: float | None = 90 * 86400.0
    grace: float = 30 * 86400.0
    poll: float = 600.0
    quiet_alert: float | None = 3 * 86400.0
    renew_every: float = 7 * 86400.0
    behind: float = 7 * 86400.0


@dataclass(frozen=True)
class Config:
    """The whole configuration, checked: every value the commands use, typed."""

    source: SourceConfig
    filter: Filter
    destination: DestinationConfig
    grid: GridConfig
    operation: OperationConfig
    debug_requests: bool
    log_level: str
    repository: RepositoryConfig
    manhole: ManholeConfig
    watch: WatchConfig
    #: The merged tree itself, for ``dump-config`` and the manhole's ``config``.
    tree: Mapping[str, Any]
    monitor: MonitorConfig = MonitorConfig()
    derive: DeriveConfig = DeriveConfig()
    custodian: CustodianConfig = CustodianConfig()


def _select(tree: Mapping[str, Any]) -> SelectConfig:
    def g(key: str) -> YAMLValue:
        return get(tree, "source." + key)

    def strings(key: str) -> tuple[str, ...]:
        items = g(key)
        for x in items:
            if not isinstance(x, str) or not x or "\0" in x:
                raise ConfigError(source="configuration", key="source." + key, problem="expected a list of "
                                  "non-empty strings, with no NUL character")
        return tuple(items)

    def checked(key: str, parse: Callable[[str], T], value: str) -> T:
        try:
            return parse(value)
        except UsageError as e:
            raise ConfigError(source="configuration", key="source." + key, problem=e.message.split(": ", 1)[-1])

    for item in strings("exclude_if_present"):
        checked("exclude_if_present", parse_if_present, item)
    size = None if g("exclude_larger_than") is None else checked("exclude_larger_than", parse_size,
                                                                 g("exclude_larger_than"))
    name = g("ignore_file")
    if name is not None and (not name or "/" in name):
        raise ConfigError(source="configuration", key="source.ignore_file", problem="expected a file name")
    return SelectConfig(g("one_file_system"), g("exclude_caches"), strings("exclude_if_present"), size,
                        tuple(expand(x) or x for x in strings("files_from")),
                        tuple(expand(x) or x for x in strings("files_from_verbatim")),
                        tuple(expand(x) or x for x in strings("files_from_raw")), name, g("git_ignore"))


def _hooks(tree: Mapping[str, Any]) -> HooksConfig:
    """``source.hooks``, checked: each an argument list of strings whose first names the program."""
    def command(name: str) -> tuple[str, ...]:
        key = "source.hooks." + name
        value = get(tree, key)
        if isinstance(value, str):
            raise ConfigError(source="configuration", key=key, problem=(
                f"expected an argument list such as [pg_dump, --file=/srv/db.sql, mydb], got the string {value!r} "
                "(hooks run without a shell; for one, write [sh, -c, 'the command'])"))
        if value and not (all(isinstance(a, str) and "\0" not in a for a in value) and value[0]):
            raise ConfigError(source="configuration", key=key, problem=(
                "expected a list of strings (the program, then its arguments), with no NUL character, "
                f"got {value!r}"))
        return tuple(value)

    timeout = get(tree, "source.hooks.timeout")
    if not (timeout > 0 and timeout < float("inf")):  # (NaN fails this too)
        raise ConfigError(source="configuration", key="source.hooks.timeout", problem=(
            f"expected a positive number of seconds, got {timeout!r}"))
    return HooksConfig(command("before"), command("after"), command("on_failure"), float(timeout))


def from_tree(tree: Mapping[str, Any]) -> Config:
    """Read a merged, validated tree (:func:`load_tree`) into records.  Filter rules, encoding
    rules and rate limits are compiled here, so a bad one stops the tool before any work."""
    def g(key: str) -> YAMLValue:
        return get(tree, key)

    def rate(key: str) -> tuple[float, float] | None:
        return None if g(key) is None else parse_rate(g(key), key)

    return Config(
        source=SourceConfig(expand(g("source.path")), expand(g("source.queue.path")),
                            expand(g("source.entry_cache.path")), g("source.entry_cache.commit_after.rows"),
                            float(g("source.entry_cache.commit_after.seconds")), pick_policy(tree), _select(tree),
                            g("source.storage_options"), _hooks(tree)),
        filter=compile_from_config(g("filter")),
        destination=DestinationConfig(
            g("destination.url"), g("destination.happy"), g("destination.lease_days"),
            ResultConfig(g("destination.result.print_to_stdout"), expand(g("destination.result.append_to_file")),
                         g("destination.result.append_to_lafs_dir"), g("destination.result.cap_when_sealed")),
            g("destination.pack.max_file_size"), g("destination.pack.target_size"),
            compile_rules(g("destination.encoding.method"), g("destination.encoding.min_size"),
                          g("destination.encoding.path_filter")),
            g("destination.copies"), tuple(gateway_base(u) for u in g("destination.copy_to")),
            _tree_place(tree)),
        grid=GridConfig(expand(g("grid.dir")), g("grid.nodes"), g("grid.needed"), g("grid.happy"),
                        float(g("grid.start_timeout"))),
        operation=OperationConfig(g("operation.jobs"), g("operation.window"), retry_policy(tree),
                                  float(g("operation.lock_wait")), rate("operation.rate_limit.bytes"),
                                  rate("operation.rate_limit.objects"), _index_cache(g("operation.index_cache")),
                                  g("operation.threads")),
        debug_requests=g("http.debug_requests"),
        log_level=g("logging.level"),
        repository=RepositoryConfig(expand(g("repository.key_file")), g("repository.introducer_furl"),
                                    g("repository.window")),
        manhole=ManholeConfig(g("manhole.endpoint"), g("manhole.allow_remote"), g("manhole.authorized_keys"),
                              g("manhole.on_signal")),
        watch=WatchConfig(float(g("watch.settle")), float(g("watch.rescan_interval")), float(g("watch.min_interval")),
                          float(g("watch.max_delay"))),
        tree=tree,
        monitor=MonitorConfig(g("metrics.enabled"), expand(g("metrics.textfile")), g("notify.url"),
                              tuple(g("notify.commands")), float(g("notify.timeout"))),
        derive=_derive(tree),
        custodian=_custodian(tree),
    )


def _custodian(tree: Mapping[str, Any]) -> CustodianConfig:
    """``custodian``, checked: durations in days (``poll`` in seconds), each more than 0."""
    def days(key: str, optional: bool = False) -> float | None:
        value = get(tree, "custodian." + key)
        if value is None and optional:
            return None
        if value is None or not (0 < value < float("inf")):
            raise ConfigError(source="configuration", key="custodian." + key,
                              problem=f"expected a positive number{' or null' if optional else ''}, got {value!r}")
        return float(value) * (1.0 if key == "poll" else 86400.0)

    return CustodianConfig(expand(get(tree, "custodian.key_file")), expand(get(tree, "custodian.state_dir")),
                           days("keep_within", True), days("grace") or 0.0, days("poll") or 0.0,
                           days("quiet_alert", True), days("renew_every") or 0.0, days("behind_days") or 0.0)


def _derive(tree: Mapping[str, Any]) -> DeriveConfig:
    """``derive``, checked: the rules compiled (``derive/rules.py``), the programs named plainly."""
    programs = get(tree, "derive.allowed_programs")
    for p in programs:
        if not isinstance(p, str) or not p or "\0" in p or ("/" in p and not p.startswith("/")):
            raise ConfigError(source="configuration", key="derive.allowed_programs", problem=(
                f"expected program names (gzip) or absolute paths (/usr/bin/gzip), got {p!r}"))
    for key in ("derive.timeout", "derive.jobs", "derive.batch"):
        if not get(tree, key) > 0:
            raise ConfigError(source="configuration", key=key, problem="must be more than 0")
    return DeriveConfig(derive_rules.parse(get(tree, "derive.rules")), tuple(programs),
                        float(get(tree, "derive.timeout")), get(tree, "derive.jobs"), get(tree, "derive.batch"))


def load(files: Iterable[str] = (), overrides: Iterable[tuple[str, YAMLValue]] = ()) -> Config:
    """The configuration of one run: base, then ``files``, then ``overrides``, read into records."""
    return from_tree(load_tree(files, overrides))


def _tree_place(tree: YAMLValue) -> str:
    """``destination.tree``, or its default: in the index, unless packing is off (a plain tree is
    there to be restored with `tahoe cp` alone, so its directories are Tahoe's)."""
    chosen = get(tree, "destination.tree")
    if chosen is not None:
        return str(chosen)
    return "tahoe" if get(tree, "destination.pack.max_file_size") == 0 else "index"
