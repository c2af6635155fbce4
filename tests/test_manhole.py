"""The SSH manhole: settings, host key, authentication, and live sessions with OpenSSH against a real backup."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import cli_env, make_tree, run_cli
from treecompare import differences
from twisted.conch.ssh import keys
from twisted.conch.ssh.common import NS
from twisted.cred.portal import Portal
from twisted.internet.task import Clock

from lafs_backup import config as cfg
from lafs_backup import manhole
from lafs_backup.errors import ConfigError


def keypair(path: Path) -> tuple[Path, str]:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)], check=True)
    return path, (path.parent / (path.name + ".pub")).read_text().strip()


def tree_with(**manhole_keys: object) -> cfg.ManholeConfig:
    return cfg.load(overrides=[(f"manhole.{k}", v) for k, v in manhole_keys.items()]).manhole


# -- settings, pure ---------------------------------------------------------------------

@pytest.mark.parametrize("endpoint, local", [
    ("tcp:8022:interface=127.0.0.1", True),
    ("tcp:0:interface=127.0.0.5", True),
    ("tcp6:8022:interface=\\:\\:1", True),
    ("tcp:8022:interface=localhost", True),
    ("unix:/run/lafs-backup/manhole", True),
    ("tcp:8022", False),
    ("8022", False),
    ("tcp:8022:interface=0.0.0.0", False),
    ("tcp:8022:interface=192.168.1.4", False),
    ("tcp6:8022", False),
    ("tcp:8022:interface=example.org", False),
    ("systemd:domain=INET:index=0", False),
])
def test_loopback_judgement(endpoint, local):
    assert manhole.is_loopback(endpoint) is local


def test_off_by_default():
    assert manhole.settings(cfg.load().manhole) is None


def test_remote_listener_needs_allow_remote(tmp_path):
    _, pub = keypair(tmp_path / "k")
    with pytest.raises(ConfigError, match="manhole.endpoint.*beyond loopback.*allow_remote"):
        manhole.settings(tree_with(endpoint="tcp:8022", authorized_keys=[pub]))
    s = manhole.settings(tree_with(endpoint="tcp:8022", authorized_keys=[pub], allow_remote=True))
    assert s is not None and s.endpoint == "tcp:8022" and len(s.keys) == 1


def test_key_settings_errors(tmp_path):
    key, pub = keypair(tmp_path / "k")
    ep = "tcp:0:interface=127.0.0.1"
    with pytest.raises(ConfigError, match="manhole.authorized_keys.*no key may log in"):
        manhole.settings(tree_with(endpoint=ep))
    with pytest.raises(ConfigError, match="cannot read .*missing"):
        manhole.settings(tree_with(endpoint=ep, authorized_keys=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match=r"line 2\).*not an OpenSSH public key"):
        manhole.settings(tree_with(endpoint=ep, authorized_keys=[pub, "ssh-ed25519 garbage"]))
    with pytest.raises(ConfigError, match="private key"):
        manhole.settings(tree_with(endpoint=ep, authorized_keys=str(key)))
    with pytest.raises(ConfigError, match="no public key found"):
        manhole.settings(tree_with(endpoint=ep, authorized_keys=["# only a comment"]))
    with pytest.raises(ConfigError, match="on_signal.*needs manhole.endpoint"):
        manhole.settings(tree_with(on_signal="USR2"))
    with pytest.raises(ConfigError, match="on_signal.*SIGTERM is reserved"):
        manhole.settings(tree_with(endpoint=ep, authorized_keys=[pub], on_signal="TERM"))
    with pytest.raises(ConfigError, match="on_signal.*no such signal"):
        manhole.settings(tree_with(endpoint=ep, authorized_keys=[pub], on_signal="USR9"))
    f = tmp_path / "authorized_keys"
    f.write_text(f"# admins\n\n{pub}\n")
    s = manhole.settings(tree_with(endpoint=ep, authorized_keys=str(f), on_signal="sigusr2"))
    assert s is not None and s.signum == signal.SIGUSR2
    assert s.keys[0].blob() == keys.Key.fromString(pub.encode()).blob()


def test_bad_manhole_config_fails_the_command_before_any_work(tmp_path, home):
    src = tmp_path / "src"
    src.mkdir()
    r = run_cli(["--url", "http://127.0.0.1:9/", "-o", "manhole.endpoint=tcp:8022", "backup", str(src)], home)
    assert r.code == 2, r.err
    assert "manhole.endpoint" in r.err and "Traceback" not in r.err


def test_host_key_generated_once_private_and_kept(tmp_path):
    state = tmp_path / "state"
    k1 = manhole.host_key(str(state))
    path = state / manhole.HOST_KEY_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not k1.isPublic() and k1.sshType() == b"ssh-ed25519"
    k2 = manhole.host_key(str(state))
    assert k2.blob() == k1.blob()
    other = manhole.host_key(str(tmp_path / "elsewhere"))
    assert other.blob() != k1.blob()  # per installation: nothing shipped, nothing shared
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        manhole.host_key(str(state))


# -- namespace helpers ------------------------------------------------------------------

class FakeAttempt:
    def __init__(self, started: float, name: str, record: list[str]) -> None:
        self.started, self.name, self.record = started, name, record
        self.what = f"PUT /{name}"

    def expire(self) -> None:
        self.record.append(self.name)


def test_debug_timeouts_expire_in_flight_attempts():
    expired: list[str] = []
    attempts = [FakeAttempt(2.0, "b", expired), FakeAttempt(1.0, "a", expired)]
    op = SimpleNamespace(gateway=SimpleNamespace(inflight=set()))
    t = manhole.Timeouts(op)
    assert len(t) == 0 and "no request in flight" in repr(t) and t() == 0
    op.gateway.inflight = set(attempts)
    assert len(t) == 2
    t[0]()  # the oldest first
    assert expired == ["a"]
    assert t("/b") == 1
    assert expired == ["a", "b"]
    assert t() == 2
    assert expired == ["a", "b", "a", "b"]


def test_log_level_helper():
    root = logging.getLogger()
    old = root.level
    try:
        assert manhole.log_level("debug") == "debug"
        assert root.level == logging.DEBUG
        assert manhole.log_level("noise") == "noise"
        assert manhole.log_level() == "noise"
        with pytest.raises(ValueError, match="log level must be one of"):
            manhole.log_level("loud")
    finally:
        root.setLevel(old)


def test_password_login_refused_and_logged(tmp_path, caplog):
    """A client that sends a password anyway (OpenSSH won't: it is never offered) is refused."""
    _, pub = keypair(tmp_path / "k")
    checker = manhole.KeyChecker((keys.Key.fromString(pub.encode()),))
    ua = manhole._UserAuth()
    ua.clock = Clock()
    ua.transport = SimpleNamespace(peer_name="127.0.0.1:4242", isEncrypted=lambda direction: True,
                                   factory=SimpleNamespace(portal=Portal(SimpleNamespace(), [checker])))
    ua.serviceStarted()
    assert ua.supportedAuthentications == [b"publickey"]
    caplog.set_level(logging.INFO, logger="lafs_backup.manhole")
    failures = []
    ua.tryAuth(b"password", b"admin", b"\x00" + NS(b"hunter2")).addErrback(failures.append)
    assert len(failures) == 1
    assert "refused password login as 'admin' from 127.0.0.1:4242" in caplog.text
    assert "hunter2" not in caplog.text
    ua.serviceStopped()


# -- live sessions over OpenSSH ----------------------------------------------------------

class Run:
    """A lafs-backup run in the background, its stderr collected line by line."""

    def __init__(self, args: list[str], home: Path) -> None:
        self.p = subprocess.Popen([sys.executable, "-m", "lafs_backup", *args], env=cli_env(home),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  stdin=subprocess.DEVNULL)
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        for line in self.p.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, after: int = 0, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, "".join(self.lines[after:]))
            if m:
                return m
            assert self.p.poll() is None or self._t.is_alive(), f"run ended:\n{self.log}"
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in:\n{self.log}")

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        out = self.p.stdout.read()
        self.p.wait(timeout)
        self._t.join(10)
        return self.p.returncode, out


def ssh(port: int, key: Path | None, known_hosts: Path, script: str, *extra: str) -> subprocess.CompletedProcess:
    """Run ``script`` (REPL lines) in a session; the session ends when its input does."""
    args = ["ssh", "-T", "-F", "/dev/null", "-p", str(port), "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=20", "-o", "IdentitiesOnly=yes", *extra]
    if key is not None:
        args += ["-i", str(key)]
    return subprocess.run([*args, "admin@127.0.0.1"], input=script.replace("\n", "\r").encode(),
                          capture_output=True, timeout=60)


def known_hosts_for(home: Path, port: int, dest: Path) -> Path:
    """The host key the run must present: the one stored in its state directory."""
    hk = home / "state" / "lafs-backup" / manhole.HOST_KEY_NAME
    assert stat.S_IMODE(hk.stat().st_mode) == 0o600
    pub = subprocess.run(["ssh-keygen", "-y", "-f", str(hk)], capture_output=True, text=True, check=True).stdout
    dest.write_text(f"[127.0.0.1]:{port} {pub}")
    return dest


def slow_backup_config(tmp_path: Path, keyline: str, **extra: str) -> Path:
    """A manhole on a random loopback port; requests paced so that the run lasts a while."""
    conf = tmp_path / "manhole.yaml"
    lines = ["manhole:", "  endpoint: 'tcp:0:interface=127.0.0.1'", "  authorized_keys:", f"    - '{keyline}'"]
    lines += [f"  {k}: {v}" for k, v in extra.items()]
    lines += ["logging:", "  level: info", "operation:", "  jobs: 4", "  rate_limit:", "    objects: '1/5:1'",
              "destination:", "  pack:", "    max_file_size: 1"]
    conf.write_text("\n".join(lines) + "\n")
    return conf


def test_live_session_on_a_running_backup(grid, home, tmp_path):
    key, pub = keypair(tmp_path / "admin")
    stranger, _ = keypair(tmp_path / "stranger")
    src = make_tree(tmp_path / "src", small=60, medium=2, large=1)
    (src / "big.bin").write_bytes(os.urandom(24 << 20))
    conf = slow_backup_config(tmp_path, pub)
    run = Run(["--url", grid.url, "-c", str(conf), "backup", str(src)], home)
    port = int(run.wait_for(r"manhole: listening on 127\.0\.0\.1:(\d+)").group(1))
    kh = known_hosts_for(home, port, tmp_path / "known_hosts")
    run.wait_for(r"phase one: \d+ entries")  # the manhole answers during the walk too; here, the uploads

    # An authorized key reads the live progress of the running backup.
    s = ssh(port, key, kh, 'p = op.progress\nprint("P", op.command, p["entries_done"], p["entries_total"])\n'
                           'seen = 41\n')
    assert s.returncode == 0, s.stderr
    m = re.search(rb"P backup (\d+) (\d+)", s.stdout)
    assert m, s.stdout
    done, total = int(m.group(1)), int(m.group(2))
    assert total > 60 and 0 <= done < total
    # The namespace persists between connections.
    s = ssh(port, key, kh, 'print("S", seen + 1)\n')
    assert re.search(rb"S 42", s.stdout), s.stdout
    # exit() leaves the session like Ctrl-D: no traceback, here or in the backup's log.
    s = ssh(port, key, kh, 'exit()\nprint("after exit")\n')
    assert s.returncode == 0 and b"leaving the manhole" in s.stdout and b"after exit" not in s.stdout, s

    # An unknown key is refused, and so is a login by password.
    s = ssh(port, stranger, kh, "print(1)\n")
    assert s.returncode == 255 and b"Permission denied (publickey)" in s.stderr
    s = ssh(port, None, kh, "print(1)\n", "-o", "PubkeyAuthentication=no",
            "-o", "PreferredAuthentications=password,keyboard-interactive")
    assert s.returncode == 255 and b"Permission denied (publickey)" in s.stderr

    # Force the in-flight uploads to time out: they are cancelled and retried.
    forced = 0
    deadline = time.monotonic() + 90
    while not forced:
        assert time.monotonic() < deadline, run.log
        assert run.p.poll() is None, "the backup ended before a request could be forced to time out"
        s = ssh(port, key, kh, 'print("T", debug_timeouts("PUT"))\n')
        m = re.search(rb"T (\d+)", s.stdout)
        assert m, (s.stdout, s.stderr)
        forced = int(m.group(1))
        time.sleep(0.1)

    code, out = run.finish()
    assert code == 0, run.log
    log = run.log
    assert "timed out (forced from the manhole); retry" in log
    assert "Traceback" not in log and "SystemExit" not in log
    fp_admin = manhole.fingerprint(keys.Key.fromString(pub.encode()))
    fp_stranger = manhole.fingerprint(keys.Key.fromString((tmp_path / "stranger.pub").read_bytes()))
    assert re.search(rf"accepted key {re.escape(fp_admin)} for 'admin' from 127\.0\.0\.1:\d+", log)
    assert re.search(rf"refused key {re.escape(fp_stranger)} for 'admin' from 127\.0\.0\.1:\d+", log)
    assert len(re.findall(r"manhole: connection from 127\.0\.0\.1:\d+\n", log)) >= 5
    assert "URI:" not in log

    dest = tmp_path / "restored"
    run_cli(["--url", grid.url, "restore", out.strip(), "--target", str(dest)], home, check=True)
    assert differences(src, dest) == []


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_signal_opens_and_closes_the_listener(grid, home, tmp_path):
    key, pub = keypair(tmp_path / "admin")
    src = make_tree(tmp_path / "src", small=60, medium=1, large=0)
    conf = slow_backup_config(tmp_path, pub, on_signal="USR2")
    run = Run(["--url", grid.url, "-c", str(conf), "backup", str(src)], home)
    run.wait_for(r"manhole: closed until signal SIGUSR2")
    assert "listening" not in run.log

    n = len(run.lines)
    run.p.send_signal(signal.SIGUSR2)
    port = int(run.wait_for(r"manhole: listening on 127\.0\.0\.1:(\d+)", after=n).group(1))
    kh = known_hosts_for(home, port, tmp_path / "known_hosts")
    s = ssh(port, key, kh, 'print("C", op.command)\n')
    assert b"C backup" in s.stdout, (s.stdout, s.stderr)

    n = len(run.lines)
    run.p.send_signal(signal.SIGUSR2)
    run.wait_for(r"manhole: closed\n", after=n)
    assert not _port_open(port)

    n = len(run.lines)
    run.p.send_signal(signal.SIGUSR2)
    port2 = int(run.wait_for(r"manhole: listening on 127\.0\.0\.1:(\d+)", after=n).group(1))
    assert _port_open(port2)

    code, out = run.finish()
    assert code == 0, run.log
    assert out.strip().startswith("URI:DIR2-CHK:")
