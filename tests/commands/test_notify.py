"""``notify.url`` through the real CLI: a Twisted web server on loopback records the healthchecks.io-style pings of
a backup that succeeds (start, then success) and of one that fails (start, then fail); a URL nobody answers at
only warns, and never shows its token."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web import resource, server

from conftest import make_tree, run_cli


class _Recorder(resource.Resource):
    """Answers every POST with 200 and records (path, body)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pings: list[tuple[str, str]] = []

    def render_POST(self, request):  # noqa: N802 (Twisted's name)
        self.pings.append((request.path.decode(), request.content.read().decode()))
        return b"OK"


async def _serve():
    rec = _Recorder()
    port = reactor.listenTCP(0, server.Site(rec), interface="127.0.0.1")
    return rec, port, f"http://127.0.0.1:{port.getHost().port}/ping/0f9a-token"


@pytest_twisted.ensureDeferred
async def test_a_backup_pings_start_then_success(grid, home, tmp_path):
    rec, port, url = await _serve()
    try:
        src = make_tree(tmp_path / "src", small=5, medium=0, large=0)
        r = await deferToThread(run_cli, ["--url", grid.url, "-o", f"notify.url={url}", "backup", str(src)], home)
        assert r.code == 0, r.err
        assert [p for p, _ in rec.pings] == ["/ping/0f9a-token/start", "/ping/0f9a-token"]
        assert "backup started" in rec.pings[0][1] and "exit code 0" in rec.pings[1][1]
        assert "URI:" not in "".join(b for _, b in rec.pings)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_failed_backup_pings_start_then_fail(home, tmp_path):
    rec, port, url = await _serve()
    try:
        r = await deferToThread(run_cli, ["--url", "http://127.0.0.1:9/", "-o", f"notify.url={url}", "backup",
                                          str(tmp_path / "missing")], home)
        assert r.code != 0
        assert [p for p, _ in rec.pings] == ["/ping/0f9a-token/start", "/ping/0f9a-token/fail"]
        assert f"exit code {r.code}" in rec.pings[1][1] and "missing" in rec.pings[1][1]
    finally:
        await port.stopListening()


def test_an_unreachable_notify_url_only_warns(lb, home, tmp_path):
    src = make_tree(tmp_path / "src", small=5, medium=0, large=0)
    r = lb("-o", "notify.url=http://127.0.0.1:9/ping/secret-token", "-o", "notify.timeout=5", "backup", str(src))
    assert r.code == 0, r.err
    assert "the start ping to http://127.0.0.1:9/… failed" in r.err
    assert "the success ping to http://127.0.0.1:9/… failed" in r.err
    assert "secret-token" not in r.err + r.out
    assert "secret-token" not in run_cli(["dump-config", "-o", "notify.url=http://127.0.0.1:9/secret-token"],
                                         home).out
