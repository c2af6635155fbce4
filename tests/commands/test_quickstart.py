"""The README's quick start, run as written: every command of its code blocks, read from README.md when the
test runs (so the quick start cannot go stale), against the embedded grid the first backup makes by itself;
the outputs it shows compared, in shape, with what the commands print now; and the systemd units it ships
checked (``systemd-analyze verify`` where it works, a strict syntax check of our own always).

The commands run in bash, as a user would paste them, with ``lafs-backup`` on ``PATH``.  What cannot be
the same here is adapted, each in one place below: paths outside the home directory (a USB stick, /etc,
a mount point) move into the test's directory (:data:`PLACES`), the machines of a section are homes of
their own on this machine (:class:`Machine`), and the commands that would change this machine (systemctl)
or run until Ctrl-C (mount) are handled by :data:`HANDLED`, each saying how and why.  A command new in
the README is run as written: one that cannot be needs an entry here.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

from conftest import ROOT, cli_env, json_lines
from treecompare import differences

README = ROOT / "README.md"


# -- reading the quick start ---------------------------------------------------------------------------

@dataclass
class Command:
    section: str
    machine: str
    text: str
    #: The output the README shows for it (a "$ " command), one line each.
    shown: list[str] = field(default_factory=list)


@dataclass
class QuickStart:
    commands: list[Command]
    #: The YAML snippets (```yaml blocks), for ``-c``.
    yaml: list[str]


def quick_start(text: str) -> QuickStart:
    """The commands of the README's "## Quick start" section, in order: its indented code blocks (a
    block with "$ " lines holds commands and their output; any other holds commands alone, a trailing
    backslash going on to the next line, and a "# machine N: ..." comment switching to that machine);
    each "### " section on a machine of its own when its title says so (see :func:`machine_of`)."""
    start = text.index("\n## Quick start\n")
    end = text.index("\n## ", start + 1)
    commands: list[Command] = []
    snippets: list[str] = []
    section = ""
    block: list[str] = []
    fence: list[str] | None = None

    def flush() -> None:
        machine = machine_of(section)
        lines = [ln[4:] for ln in block]
        block.clear()
        if any(ln.startswith("$ ") for ln in lines):
            for ln in lines:
                if ln.startswith("$ "):
                    commands.append(Command(section, machine, ln[2:].strip()))
                elif ln.strip() and commands:
                    commands[-1].shown.append(ln)
            return
        pending = ""
        for ln in lines:
            if m := re.match(r"\s*# machine (\d+):", ln):
                machine = f"machine {m.group(1)}"
            if not ln.strip() or ln.lstrip().startswith("#"):
                continue
            pending += ln.strip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            commands.append(Command(section, machine, pending))
            pending = ""
        assert not pending, f"a command ends in a backslash: {pending!r}"

    for line in text[start:end].splitlines()[1:] + [""]:
        if fence is not None:
            if line.startswith("```"):
                snippets.append("\n".join(fence) + "\n")
                fence = None
            else:
                fence.append(line)
            continue
        if line.startswith("    ") or (block and not line.strip()):
            block.append(line if line.strip() else "    ")
            continue
        if block:
            flush()
        if line.startswith("```yaml"):
            fence = []
        elif line.startswith("### "):
            section = line[4:].strip()
    return QuickStart(commands, snippets)


def machine_of(section: str) -> str:
    """The quick start happens on one machine, but for the sections about another one."""
    return "new machine" if "new machine" in section else "machine 1"


# -- where the commands run --------------------------------------------------------------------------------

#: Paths of the README that are not the user's to write here, and where they are for the test.
PLACES = {
    "/media/usb": "usb",                         # a USB stick
    "/mnt/backups": "mnt",                       # a mount point
    "/etc/systemd/system": "etc/systemd/system",  # where the units are installed
    "/etc/lafs-backup": "etc/lafs-backup",       # the configuration the units read
    "/var/lib/lafs-backup": "var/lib/lafs-backup",
}


@dataclass
class Machine:
    """One of the README's machines: a home of its own (its state, its embedded grid or joined nodes), on
    this machine, with ``lafs-backup`` on its PATH and a working directory holding the checkout's ``config/``
    (the README's ``cp config/...`` lines run from a checkout)."""

    name: str
    home: Path
    bin: Path
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.cwd = self.home / "checkout"
        self.cwd.mkdir(exist_ok=True)
        (self.cwd / "config").symlink_to(ROOT / "config")
        self.env = {**cli_env(self.home), "HOME": str(self.home), "COLUMNS": "200",
                    "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}"}

    def bash(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", command], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def start(self, command: str) -> subprocess.Popen:
        return subprocess.Popen(["bash", "-c", "exec " + command], cwd=self.cwd, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                text=True)


def wrapper(at: Path) -> Path:
    """A directory with ``lafs-backup`` in it: this checkout's, run by this Python (as the install puts it)."""
    at.mkdir(parents=True)
    exe = at / "lafs-backup"
    exe.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(ROOT))} exec {shlex.quote(sys.executable)} "
                   f"-m lafs_backup \"$@\"\n")
    exe.chmod(0o755)
    # The database the README dumps is not here: its client programs are stand-ins, pg_dump writing a
    # dump of its database that psql, given it back, keeps beside the home (see _dump_restored).
    for name, script in (("pg_dump", 'printf -- "-- PostgreSQL database dump of %s\\nCREATE TABLE notes(body text);\\n'
                                     'INSERT INTO notes VALUES (\'first row\');\\n" "${@: -1}"'),
                         ("psql", 'cat > "$HOME/psql-$1.sql"')):
        (at / name).write_text(f"#!/bin/bash\nset -e\n{script}\n")
        (at / name).chmod(0o755)
    return at


def docs_tree(home: Path) -> Path:
    """The ~/docs the quick start backs up: the names its commands use are there."""
    docs = home / "docs"
    (docs / "notes" / "2026").mkdir(parents=True)
    (docs / "notes" / "2026" / "a.txt").write_text("a note of 2026\n")
    (docs / "notes" / "2026" / "b.txt").write_text("another\n" * 100)
    (docs / "notes" / "todo.md").write_text("- keep the recovery key off this machine\n")
    (docs / "report-2026.pdf").write_bytes(os.urandom(300_000))
    (docs / "scratch.tmp").write_text("left out by --exclude '*.tmp'\n")
    (docs / "photos").mkdir()
    for i in range(20):
        (docs / "photos" / f"img-{i:02d}.jpg").write_bytes(os.urandom(20_000 + i))
    os.symlink("notes/todo.md", docs / "todo-link")
    return docs


# -- comparing what the README shows with what the commands print ------------------------------------------

def shape(line: str, home: Path) -> str:
    """A line of output with what differs from run to run made alike: the home directory (the README's is
    /home/me), the host name (the README's is ann), caps, times, ids, numbers, units and plurals."""
    line = re.sub(rf"\b{re.escape(socket.gethostname())}\b", "ann", line.replace(str(home), "/home/me"))
    line = re.sub(r"URI:[A-Z0-9-]+:\S*", "CAP", line)
    line = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "TIME", line)
    line = re.sub(r"\b[0-9a-f]{8}\b", "ID", line)
    line = re.sub(r"\d+(\.\d+)?", "N", line)
    line = re.sub(r"\bN (B|KiB|MiB|GiB|TiB)\b", "N UNIT", line)
    line = re.sub(r"\bN (\w+)ies\b", r"N \1y", line)
    line = re.sub(r"\bN (\w+?)s\b", r"N \1", line)
    return " ".join(line.split())


def assert_shown(c: Command, got: subprocess.CompletedProcess, home: Path) -> None:
    """Every line the README shows for ``c`` is a line it prints now (in shape)."""
    printed = {shape(ln, home) for ln in (got.stdout + got.stderr).splitlines()}
    for line in c.shown:
        assert shape(line, home) in printed, (f"the README shows, for '{c.text}':\n  {line}\nbut it prints:\n"
                                              + got.stdout + got.stderr)


# -- the systemd units -------------------------------------------------------------------------------------

#: The sections and keys a unit of ours may use (systemd.unit(5), .service(5), .exec(5), .kill(5), .timer(5)).
UNIT_KEYS = {
    "Unit": {"Description", "Documentation", "Wants", "Requires", "After", "Before", "ConditionPathExists"},
    "Service": {"Type", "ExecStart", "ExecStartPre", "SuccessExitStatus", "Nice", "IOSchedulingClass",
                "KillSignal", "TimeoutStopSec", "Restart", "RestartSec", "User", "Group", "Environment"},
    "Timer": {"OnCalendar", "RandomizedDelaySec", "Persistent", "OnBootSec", "Unit"},
    "Install": {"WantedBy", "RequiredBy"},
}


def check_unit(path: Path) -> list[list[str]]:
    """A unit file parsed strictly (no key twice, known sections and keys); a service's ExecStart runs
    lafs-backup with arguments its parser takes, a timer's service is beside it.  Returns the
    ExecStart commands, split."""
    from lafs_backup.arguments import parse

    p = configparser.ConfigParser(strict=True, interpolation=None, delimiters=("=",), comment_prefixes=("#", ";"),
                                  empty_lines_in_values=False, default_section="\0none")
    p.optionxform = str  # type: ignore[assignment,method-assign]  (systemd's keys are case-sensitive)
    p.read_string(path.read_text(), source=str(path))
    kind = path.suffix[1:]
    assert set(p.sections()) <= set(UNIT_KEYS), (path, p.sections())
    assert p.has_section("Unit") and p.get("Unit", "Description"), path
    for s in p.sections():
        unknown = set(p[s]) - UNIT_KEYS[s]
        assert not unknown, (path, s, unknown)
    commands = []
    if kind == "service":
        starts = [v for k, v in p["Service"].items() if k.startswith("ExecStart")]
        assert starts and p.has_option("Service", "ExecStart"), path
        for v in starts:
            argv = shlex.split(v)
            assert argv[0].startswith("/") and argv[0].endswith("/lafs-backup"), (path, v)
            parse(argv[1:])  # (raises UsageError for what lafs-backup would refuse)
            commands.append(argv)
        assert p.get("Service", "Type") in ("oneshot", "simple", "exec"), path
    elif kind == "timer":
        assert p.has_option("Timer", "OnCalendar"), path
        assert re.fullmatch(r"(\w{3} )?[*\d-]+ [*\d:]+", p.get("Timer", "OnCalendar")), path
        assert (path.with_suffix(".service")).exists(), f"{path} has no service beside it"
        assert p.get("Install", "WantedBy") == "timers.target", path
    else:
        raise AssertionError(f"{path}: not a unit the quick start ships")
    return commands


def systemd_analyze_works(at: Path) -> bool:
    """Whether ``systemd-analyze verify`` runs here (CI has no systemd running, and may have no
    systemd-analyze at all): it must pass a good unit and refuse a bad one."""
    if shutil.which("systemd-analyze") is None:
        return False
    at.mkdir(parents=True)
    (at / "good.service").write_text("[Unit]\nDescription=good\n[Service]\nType=oneshot\nExecStart=/bin/true\n")
    (at / "bad.service").write_text("[Unit]\nDescription=bad\n[Srvice]\nExecStart=/bin/true\n")
    try:
        good = subprocess.run(["systemd-analyze", "verify", "--man=no", str(at / "good.service")],
                              capture_output=True, text=True, timeout=60)
        bad = subprocess.run(["systemd-analyze", "verify", "--man=no", str(at / "bad.service")],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return good.returncode == 0 and not good.stderr.strip() and bad.returncode != 0


def verify_units(units: list[Path], exe: Path, scratch: Path) -> str:
    """Check the units the quick start installed: our own syntax check always, and systemd's own where it
    works (their ExecStart pointed at an lafs-backup that exists here).  Says which checked them."""
    for u in units:
        check_unit(u)
    if not systemd_analyze_works(scratch / "probe"):
        return "our own syntax check (systemd-analyze is missing or does not work here)"
    copies = scratch / "units"
    copies.mkdir(parents=True)
    for u in units:
        (copies / u.name).write_text(u.read_text().replace("/usr/local/bin/lafs-backup", str(exe)))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in copies.iterdir())],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stdout + r.stderr
    return "systemd-analyze verify and our own syntax check"


# -- the run -----------------------------------------------------------------------------------------------

class Run:
    """The quick start's commands, run in order on their machines."""

    def __init__(self, tmp: Path, grid_url: str, readme: QuickStart) -> None:
        self.tmp = tmp
        self.bin = wrapper(tmp / "bin")
        self.machines: dict[str, Machine] = {}
        self.readme = readme
        #: README text -> what it is here (see PLACES; the other grid; the README's ids and host names).
        self.subst: dict[str, str] = {k: str(tmp / v) for k, v in PLACES.items()}
        self.subst["http://127.0.0.1:3456/"] = grid_url  # "a grid you already have": the session's grid
        for name in ("box1.example.lan", "box2.example.lan"):
            self.subst[name] = "127.0.0.1"  # every machine is this one
        self.subst["oldbox"] = socket.gethostname()  # the old machine's name: this one's
        for p in PLACES.values():
            (tmp / p).mkdir(parents=True, exist_ok=True)
        #: What was not run as written, and why.
        self.handled: list[tuple[str, str]] = []
        self.outputs: dict[str, subprocess.CompletedProcess] = {}

    def machine(self, name: str) -> Machine:
        if name not in self.machines:
            home = self.tmp / name.replace(" ", "-") / "home"
            if name == "machine 1":
                home = self.tmp / "me"  # (the README's /home/me: the new machine restores it)
                self.subst["/home/me"] = str(home)
            m = self.machines[name] = Machine(name, home, self.bin)
            if name in ("machine 1", "machine 3"):  # (the machines that back up their ~/docs)
                docs_tree(m.home)
        return self.machines[name]

    def adapt(self, text: str) -> str:
        for k, v in sorted(self.subst.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(k, v)
        return text

    def run(self, c: Command) -> None:
        m = self.machine(c.machine)
        text = self.adapt(c.text)
        for pattern, (why, handle) in HANDLED.items():
            if re.match(pattern, c.text):
                self.handled.append((c.text, why))
                if handle is not None:
                    handle(self, m, c, text)
                return
        if c.text.startswith("export "):
            name, _, value = text[len("export "):].partition("=")
            got = m.bash(f"printf %s {value}")
            m.env[name] = got.stdout
            return
        got = m.bash(text)
        self.outputs[c.text] = got
        want = next((codes for pattern, codes in EXIT_CODES.items() if re.match(pattern, c.text)), (0,))
        assert got.returncode in want, (f"'{c.text}' (run as '{text}') on {c.machine} exited {got.returncode}:\n"
                                        + got.stdout + got.stderr)
        assert_shown(c, got, m.home)
        for pattern, after in AFTER.items():
            if re.match(pattern, c.text):
                after(self, m, got)

    def stop_everything(self) -> None:
        """Stop every node any machine started (embedded grids, joined nodes, recovery gateways)."""
        for m in self.machines.values():
            for state in (m.home / "data").rglob("grid.json"):
                m.bash(f"lafs-backup grid down --dir {shlex.quote(str(state.parent))}", timeout=120)


# -- the commands not run as written ---------------------------------------------------------------------

def _mount(run: Run, m: Machine, c: Command, text: str) -> None:
    """``mount`` serves until Ctrl-C: started, looked into, then given Ctrl-C (SIGINT)."""
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0 or shutil.which("fusermount3") is None:
        run.handled[-1] = (c.text, "not run: a FUSE mount needs /dev/fuse, fusermount3 and root here")
        return
    mnt = Path(shlex.split(text, comments=True)[-1])
    p = m.start(text)
    try:
        deadline = time.monotonic() + 120
        while not (mnt / "snapshots" / "latest").exists():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the mount did not appear"
            time.sleep(0.2)
        latest = mnt / "snapshots" / "latest"
        assert (latest / "notes" / "todo.md").read_text() == (m.home / "docs" / "notes" / "todo.md").read_text()
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    assert p.returncode in (0, 130), err
    assert not os.path.ismount(mnt), err


def _enable_timers(run: Run, m: Machine, c: Command, text: str) -> None:
    """``systemctl enable --now`` would install the timers on this machine (it needs systemd running, as
    root).  Instead: the units copied to /etc/systemd/system (here: PLACES) are verified, and each service a
    timer names runs its ExecStart once, as the timer would start it, with /etc/lafs-backup/config.yaml
    edited as the README says ("then edit it": the source, and the embedded grid rather than a gateway)."""
    units_dir = run.tmp / PLACES["/etc/systemd/system"]
    timers = [units_dir / t for t in text.split()[3:]]
    units = sorted(units_dir.glob("lafs-backup*.*"))
    assert timers and all(t in units for t in timers), (timers, units)
    run.handled[-1] = (c.text, f"not run (it would change this machine's systemd); the units were checked with "
                               f"{verify_units(units, run.bin / 'lafs-backup', run.tmp / 'systemd')}, and each "
                               "timer's service ran its ExecStart once")
    conf = run.tmp / PLACES["/etc/lafs-backup"] / "config.yaml"
    tree = yaml.safe_load(conf.read_text())
    tree["source"]["path"] = str(m.home / "docs")
    del tree["destination"]["url"], tree["destination"]["happy"]  # (the embedded grid's)
    tree["destination"]["result"]["append_to_file"] = str(run.tmp / PLACES["/var/lib/lafs-backup"] / "results.txt")
    conf.write_text(yaml.safe_dump(tree))
    for t in timers:
        for argv in check_unit(t.with_suffix(".service")):
            got = m.bash(run.adapt(shlex.join(["lafs-backup", *argv[1:]])))
            assert got.returncode == 0, (t.name, argv, got.stdout + got.stderr)


#: Commands handled rather than run as written: a pattern of the README's text -> (why, what is done).
HANDLED: dict[str, tuple[str, Callable[[Run, Machine, Command, str], None] | None]] = {
    r"lafs-backup mount ": ("run in the background, looked into, then stopped with Ctrl-C", _mount),
    r"systemctl daemon-reload$": ("not run: it would reload this machine's systemd (the units are checked with "
                                  "the next command)", None),
    r"systemctl enable --now ": ("handled by _enable_timers", _enable_timers),
}

#: Exit codes other than 0 that a command ends with as the README runs it.
EXIT_CODES = {
    r"lafs-backup diff ": (1,),  # 1: differences found (the second backup left *.tmp out)
}


def _furl_written(run: Run, m: Machine, got: subprocess.CompletedProcess) -> None:
    assert (m.cwd / "grid.furl").read_text().startswith("pb://")
    for other in ("machine 2", "machine 3"):  # (the file goes from machine 1 to the others)
        shutil.copy(m.cwd / "grid.furl", run.machine(other).cwd / "grid.furl")


def _joined(run: Run, m: Machine, got: subprocess.CompletedProcess) -> None:
    url = got.stdout.strip().splitlines()[-1] if got.stdout.strip() else ""
    if m.name == "machine 3":  # a gateway: its URL, for the next command's placeholder
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), got.stdout + got.stderr
        run.subst["http://127.0.0.1:<port printed by join>/"] = url


def _ids_listed(run: Run, m: Machine, got: subprocess.CompletedProcess) -> None:
    """The README's example ids (in its list output) stand for the backups of the same generations here."""
    shown = next(c for c in run.readme.commands if c.text == "lafs-backup list" and c.shown).shown
    real = {int(g): i for i, g in re.findall(r"^([0-9a-f]{8})\s+(\d+)\s", got.stdout, re.M)}
    for example_id, gen in re.findall(r"^([0-9a-f]{8})\s+(\d+)\s", "\n".join(shown), re.M):
        run.subst[example_id] = real[int(gen)]


def _listen_said(run: Run, m: Machine, got: subprocess.CompletedProcess) -> None:
    """Machine 1's grid was made by the quick start's first backup, without --listen: 'grid up --listen'
    leaves it as it is, and says so (every machine is this one here, so loopback reaches it)."""
    assert "--listen applies when a grid is made" in got.stderr, got.stderr


#: What to do after a command ran: a pattern of the README's text -> a check or a note for later commands.
def _dump_restored(run: Run, m: Machine, got: subprocess.CompletedProcess) -> None:
    """The stream backed up from pg_dump came back whole, into psql."""
    dumped = m.bash("pg_dump mydb").stdout
    assert dumped.startswith("-- PostgreSQL database dump of mydb")
    assert (m.home / "psql-mydb_restored.sql").read_text() == dumped


AFTER: dict[str, Callable[[Run, Machine, subprocess.CompletedProcess], None]] = {
    r"lafs-backup dump latest mydb.sql .*\| psql ": _dump_restored,
    r"lafs-backup grid up --listen ": _listen_said,
    r"lafs-backup grid furl > grid.furl": _furl_written,
    r"(LAFS_BACKUP_FURL=.* )?lafs-backup grid join": _joined,
    r"lafs-backup list$": _ids_listed,
}


# -- the test ----------------------------------------------------------------------------------------------

def test_the_readme_parses_into_the_quick_start_it_shows():
    qs = quick_start(README.read_text())
    texts = [c.text for c in qs.commands]
    assert texts[0] == "lafs-backup backup ~/docs" and qs.commands[0].shown
    assert any(t.startswith("cp config/lafs-backup.service ") and t.endswith("/etc/systemd/system/") for t in texts)
    assert {c.machine for c in qs.commands} >= {"machine 1", "new machine", "machine 2", "machine 3"}
    assert len(qs.yaml) >= 1


def test_the_quick_start_runs_as_written(grid, tmp_path):
    qs = quick_start(README.read_text())
    run = Run(tmp_path, grid.url, qs)
    try:
        for c in qs.commands:
            if c.machine == "new machine" and "machine 1" in run.machines and not (run.tmp / "kept").exists():
                # The old machine is gone: its files with it (kept aside here, to compare the restore with).
                docs = run.machines["machine 1"].home / "docs"
                shutil.copytree(docs, run.tmp / "kept", symlinks=True)
                shutil.rmtree(docs)
            run.run(c)
        # What the commands did, beyond their exit codes.
        me = run.machines["machine 1"].home
        assert (me / "restored" / "notes" / "2026" / "a.txt").read_text() == "a note of 2026\n"
        assert not (me / "restored" / "scratch.tmp").exists()  # (the backup restored by id left *.tmp out)
        assert (run.machines["machine 1"].cwd / "todo.md").read_bytes() == (me / "docs" / "notes" / "todo.md").read_bytes()
        assert (run.tmp / "usb" / "lafs-backup.key").read_text().startswith("lafs-backup-key-v1:")
        assert differences(run.tmp / "kept", me / "docs") == []  # the new machine restored the old one's docs
        diffed = next(got for text, got in run.outputs.items() if text.startswith("lafs-backup diff "))
        assert "- /scratch.tmp" in diffed.stdout.splitlines(), diffed.stdout
        # "its first backup rebuilds the entry cache ... uploads only what changed": nothing did.
        again = next(got for text, got in run.outputs.items() if text.startswith("lafs-backup backup /home/me/docs"))
        assert "  contents: 0 stored, " in again.stderr, again.stderr
        listed = json_lines(run.machines["new machine"].bash("lafs-backup --json list").stdout)
        # (what cleanup kept, and more since; and the database dumps, streams of their own source)
        assert {b["source"] for b in listed} == {str(me / "docs"), str(me / "code"), "stdin://mydb.sql"}, listed
        # The pyc of the derived files' example is stored as its recipe, and `ls -l` says how it is made.
        derived = next(got for text, got in run.outputs.items() if "derive-examples.yaml backup" in text)
        assert "  derived: 1 file stored as recipes" in derived.stderr, derived.stderr
        shown = next(got for text, got in run.outputs.items() if "derive-examples.yaml ls -l" in text)
        assert re.search(r"hello\.cpython-3\d+\.pyc  \[derived: pyc, python3\.\d+ from hello/hello\.py\]", shown.stdout)
        # The custodian's pass renewed what the host had backed up.
        renewed = next(got for text, got in run.outputs.items() if text.startswith("lafs-backup custodian pass"))
        assert re.search(r"renewed ([1-9]\d*) of \1 objects", renewed.stderr), renewed.stderr
        for snippet in qs.yaml:  # each configuration snippet is one lafs-backup reads
            f = tmp_path / "snippet.yaml"
            f.write_text(run.adapt(snippet))
            got = run.machines["machine 1"].bash(f"lafs-backup -c {shlex.quote(str(f))} --json dump-config")
            assert got.returncode == 0, got.stderr
            want = yaml.safe_load(run.adapt(snippet))
            have = json.loads(got.stdout)
            assert _as_set(want, have) == want, (snippet, have)
    finally:
        run.stop_everything()
    for command, why in run.handled:
        print(f"not run as written: {command!r}: {why}")
    ran = set(run.outputs) | {c for c, _ in run.handled} | {c.text for c in qs.commands if c.text.startswith("export ")}
    assert ran == {c.text for c in qs.commands}


def _as_set(want: object, have: object) -> object:
    """``have`` cut down to the keys ``want`` sets, at every depth (a snippet sets some keys of a section)."""
    if isinstance(want, dict) and isinstance(have, dict):
        return {k: _as_set(v, have.get(k)) for k, v in want.items()}
    return have


def test_the_shipped_units_pass_the_syntax_check_and_a_broken_one_does_not(tmp_path):
    units = sorted(ROOT.glob("config/*.service")) + sorted(ROOT.glob("config/*.timer"))
    assert {u.name for u in units} >= {"lafs-backup.service", "lafs-backup.timer", "lafs-backup-check.service",
                                       "lafs-backup-check.timer", "lafs-backup-cleanup.service",
                                       "lafs-backup-cleanup.timer", "lafs-backup-watch.service"}
    for u in units:
        check_unit(u)
    good = (ROOT / "config" / "lafs-backup.service").read_text()
    for broken in (good.replace("[Service]", "[Srvice]"), good.replace("ExecStart=", "ExecStrat="),
                   good.replace("ExecStart=/usr/local/bin/lafs-backup", "ExecStart=/usr/bin/true"),
                   good.replace(" backup", " bakup"), good + "Nice=5\n"):
        (tmp_path / "lafs-backup.service").write_text(broken)
        with pytest.raises(Exception):
            check_unit(tmp_path / "lafs-backup.service")
