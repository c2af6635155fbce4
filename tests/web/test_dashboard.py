"""``lafs-backup web`` in a real headless Chromium (Debian's ``chromium``, driven by Playwright),
against a real local grid: started as a user starts it, navigated page by page, downloads compared
byte for byte, the token and the methods enforced, and no cap in any byte it serves."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from conftest import cli_env, make_tree

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
#: A file name made to break out of HTML, attributes and headers.
HOSTILE = "<script>alert('x')<script><img src=x onerror=alert(1)>\"q'&amp;.txt"  # (no "/": a name
#: cannot hold one)
ODD = b"caf\xe9 \xff.txt"  # not UTF-8


def real_tree(root: Path) -> Path:
    """A small tree shaped like a user's documents, with hostile and non-UTF-8 names."""
    make_tree(root / "work", small=60, medium=2, large=0)
    (root / "Documents").mkdir()
    (root / "Documents" / "notes.md").write_text("# Notes\n\nbuy milk\n" * 50)
    (root / "Documents" / "taxes 2024.pdf").write_bytes(os.urandom(300_000))
    (root / "Photos" / "2024 holiday").mkdir(parents=True)
    for i in range(3):
        (root / "Photos" / "2024 holiday" / f"IMG_{i:04d}.jpg").write_bytes(os.urandom(120_000 + i))
    (root / "Documents" / HOSTILE).write_text("hostile name\n")
    hostile_dir = root / '<b>"dir" & \'co\'<b>'
    hostile_dir.mkdir()
    (hostile_dir / "inner.txt").write_text("inside a hostile directory\n")
    (root / os.fsdecode(b"Documents/" + ODD)).write_bytes(b"latin-1 name\n")
    os.symlink("Documents/notes.md", root / "notes-link")
    return root


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(15)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


class Web:
    """``lafs-backup web`` as a user runs it: the URL read from what it prints."""

    def __init__(self, args: list[str], home: Path, lb: list[str]) -> None:
        self.home, self.lb = home, lb
        self.p = subprocess.Popen([sys.executable, "-m", "lafs_backup", *args], env=cli_env(home),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  stdin=subprocess.DEVNULL)
        self.err: list[str] = []
        self._t = threading.Thread(target=lambda: self.err.extend(self.p.stderr), daemon=True)
        self._t.start()
        line = self.p.stdout.readline().strip()
        assert line.startswith("http://127.0.0.1:"), f"no URL printed: {line!r}\n{''.join(self.err)}"
        self.url = line
        u = urllib.parse.urlsplit(line)
        self.port = u.port
        self.token = urllib.parse.parse_qs(u.query)["token"][0]
        self.base = f"http://127.0.0.1:{self.port}"

    def stop(self) -> tuple[int, str, str]:
        _stop(self.p)
        self._t.join(10)
        return self.p.returncode, self.p.stdout.read(), "".join(self.err)


def request(port: int, method: str, path: str, cookie: str | None = None) -> http.client.HTTPResponse:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request(method, path, headers={"Cookie": cookie} if cookie else {})
    r = c.getresponse()
    r.body = r.read()  # type: ignore[attr-defined]
    c.close()
    return r


@pytest.fixture(scope="module")
def dashboard(grid, tmp_path_factory):
    """Two backups of a real-looking tree (the second with changes), and the dashboard over them."""
    home = tmp_path_factory.mktemp("webhome")
    src = real_tree(tmp_path_factory.mktemp("websrc") / "home")
    lb = ["--url", grid.url]

    def run(*args: str) -> str:
        p = subprocess.run([sys.executable, "-m", "lafs_backup", *lb, *args], env=cli_env(home),
                           capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr
        return p.stdout

    run("backup", str(src), "--tag", "daily")
    (src / "Documents" / "notes.md").write_text("# Notes\n\nbuy bread\n")
    (src / "Documents" / "new.txt").write_text("a new file\n")
    run("backup", str(src), "--tag", "daily")
    ids = [line.split()[0] for line in run("list").splitlines()]
    assert len(ids) == 2
    web = Web([*lb, "-vv", "web", "--port", "0"], home, lb)
    try:
        yield web, src, ids
    finally:
        code, out, err = web.stop()
        assert code == 0, err
        # The log (at DEBUG: every request) holds neither a cap nor the token.
        assert "URI:" not in err and web.token not in err, err
        assert "dashboard stopped" in err


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    where = os.environ.get("LAFS_TEST_ARTIFACTS")
    out = Path(where) if where else tmp_path_factory.mktemp("artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def browser():
    assert os.path.exists(CHROMIUM), "Debian's chromium package is needed (apt-get install chromium)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def open_page(browser, web: Web):
    """A fresh browser context, logged in the way a user is: by opening the printed URL."""
    ctx = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(web.url)
    assert page.url == web.base + "/", "the token stays in the address bar"
    return ctx, page, dialogs


def test_status_backups_tree_file_and_downloads_in_chromium(dashboard, browser, artifacts, tmp_path):
    web, src, ids = dashboard
    ctx, page, dialogs = open_page(browser, web)
    try:
        assert page.locator("h1").first.inner_text().startswith("Status"), "".join(web.err)
        assert page.locator("svg.chart").count() >= 1
        page.screenshot(path=str(artifacts / "dashboard-status.png"), full_page=True)
        page.click("header >> text=Backups")
        assert page.url == web.base + "/backups"
        rows = page.locator("tbody tr")
        assert rows.count() == 2 and ids[1] in rows.nth(0).inner_text()  # newest first
        page.screenshot(path=str(artifacts / "dashboard-backups.png"), full_page=True)
        # Filters are a plain GET form: no script needed.
        page.select_option("select[name=tag]", "daily")
        page.click("form.filters button")
        assert "tag=daily" in page.url and page.locator("tbody tr").count() == 2
        page.click(f"tbody >> text={ids[1]}")
        assert page.url == f"{web.base}/b/{ids[1]}/tree/"
        names = page.locator("tbody tr td:first-child").all_inner_texts()
        assert {"Documents/", "Photos/", "work/", "notes-link"} <= set(names)
        page.screenshot(path=str(artifacts / "dashboard-tree.png"), full_page=True)
        page.click("tbody >> text=Documents/")
        assert page.url == f"{web.base}/b/{ids[1]}/tree/Documents"
        texts = page.locator("tbody tr td:first-child").all_inner_texts()
        assert HOSTILE in texts and "new.txt" in texts and "caf\\xe9 \\xff.txt" in texts
        # The hostile name is text, never markup: no script element, no dialog.
        assert page.evaluate("document.querySelectorAll('script').length") == 0
        page.screenshot(path=str(artifacts / "dashboard-directory.png"), full_page=True)
        page.click("tbody >> text=taxes 2024.pdf")
        assert page.url == f"{web.base}/b/{ids[1]}/file/Documents/taxes%202024.pdf"
        assert "sha256" in page.inner_text("table")
        page.screenshot(path=str(artifacts / "dashboard-file.png"), full_page=True)
        with page.expect_download() as got:
            page.click("text=download")
        dl = got.value
        assert dl.suggested_filename == "taxes 2024.pdf"
        assert Path(dl.path()).read_bytes() == (src / "Documents" / "taxes 2024.pdf").read_bytes()
        # The hostile name's own page, and its download under its exact name.
        page.goto(f"{web.base}/b/{ids[1]}/tree/Documents")
        page.get_by_text(HOSTILE, exact=True).click()
        assert page.locator("h1").inner_text() == HOSTILE
        with page.expect_download() as got:
            page.click("text=download")
        assert got.value.suggested_filename.endswith(".txt")
        assert Path(got.value.path()).read_bytes() == b"hostile name\n"
        # A directory as a tar stream, through dump's code: every member, every byte.
        page.goto(f"{web.base}/b/{ids[1]}/tree/Photos")
        with page.expect_download() as got:
            page.click("text=download as tar")
        assert got.value.suggested_filename == "Photos.tar"
        with tarfile.open(got.value.path()) as tar:
            members = {m.name: m for m in tar.getmembers()}
            assert set(members) == {"Photos", "Photos/2024 holiday"} | {
                f"Photos/2024 holiday/IMG_{i:04d}.jpg" for i in range(3)}
            for i in range(3):
                rel = f"2024 holiday/IMG_{i:04d}.jpg"
                assert tar.extractfile(members["Photos/" + rel]).read() == (src / "Photos" / rel).read_bytes()
        # Diff and the lease timeline.
        page.goto(f"{web.base}/diff?a={ids[0]}&b={ids[1]}")
        body = page.inner_text("main")
        assert "/Documents/new.txt" in body and "/Documents/notes.md" in body
        page.screenshot(path=str(artifacts / "dashboard-diff.png"), full_page=True)
        page.click("header >> text=Leases")
        assert page.locator("svg.chart rect").count() == 2
        page.screenshot(path=str(artifacts / "dashboard-leases.png"), full_page=True)
        assert dialogs == []
    finally:
        ctx.close()


def test_the_token_is_needed_and_only_get_and_head_are_answered(dashboard, browser):
    web, _src, ids = dashboard
    assert request(web.port, "GET", "/").status == 403
    assert request(web.port, "GET", "/backups").status == 403
    assert request(web.port, "GET", "/style.css").status == 403
    assert request(web.port, "GET", "/?token=" + "x" * len(web.token)).status == 403
    assert request(web.port, "GET", f"/b/{ids[0]}/raw/Documents/notes.md", cookie="lafs_backup_web=nope").status == 403
    # The printed URL: a cookie (HttpOnly, SameSite=Strict), and the same address without the token.
    r = request(web.port, "GET", f"/backups?token={web.token}&tag=daily")
    assert r.status == 303 and r.getheader("Location") == "/backups?tag=daily"
    cookie_header = r.getheader("Set-Cookie")
    assert "HttpOnly" in cookie_header and "samesite=strict" in cookie_header.lower()
    cookie = cookie_header.split(";")[0]
    ok = request(web.port, "GET", "/backups?tag=daily", cookie=cookie)
    assert ok.status == 200 and ids[0].encode() in ok.body
    assert "default-src 'none'" in ok.getheader("Content-Security-Policy")
    head = request(web.port, "HEAD", f"/b/{ids[1]}/raw/Documents/notes.md", cookie=cookie)
    assert head.status == 200 and head.body == b"" and head.getheader("Content-Length") == "19"
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        r = request(web.port, method, "/", cookie=cookie)
        assert r.status == 405 and r.getheader("Allow") == "GET, HEAD"
    assert request(web.port, "GET", "/b/00000000/tree/", cookie=cookie).status == 404
    assert request(web.port, "GET", f"/b/{ids[1]}/tree/no/such/path", cookie=cookie).status == 404
    # And in the browser: a fresh one, without the token, is refused.
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        assert page.goto(web.base + "/").status == 403
    finally:
        ctx.close()


def test_no_cap_in_any_byte_served(dashboard):
    """Every page and download reachable from the dashboard for the newest backup (and the diff
    of the two), headers included: no ``URI:`` anywhere."""
    web, _src, ids = dashboard
    r = request(web.port, "GET", f"/?token={web.token}")
    cookie = r.getheader("Set-Cookie").split(";")[0]
    start = ["/", "/backups", "/leases", "/diff", f"/diff?a={ids[0]}&b={ids[1]}", "/style.css"]
    seen: set[str] = set()
    todo = list(start)
    served = 0
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        r = request(web.port, "GET", path, cookie=cookie)
        assert r.status == 200, (path, r.status)
        raw = b"".join(f"{k}: {v}\n".encode() for k, v in r.getheaders()) + r.body
        assert b"URI:" not in raw, path
        served += len(raw)
        if r.getheader("Content-Type", "").startswith("text/html"):
            for link in re.findall(rb'href="([^"]+)"', r.body):
                target = link.decode().replace("&amp;", "&")
                if target.startswith("/b/") and not target.startswith(f"/b/{ids[1]}/"):
                    continue  # (the other backup's pages: the same code, and twice the time)
                todo.append(target)
    kinds = {p.split("/")[3] for p in seen if p.startswith("/b/")}
    assert kinds == {"tree", "file", "raw", "tar"}
    assert len(seen) > 100 and served > 1_000_000


def test_a_unix_socket_and_a_url_file(dashboard, tmp_path):
    """``--socket`` (mode 0600) and ``--url-file`` (mode 0600, nothing printed): the token is needed there too."""
    import socket
    import stat

    web, _src, ids = dashboard
    sock, url_file = tmp_path / "run" / "web.sock", tmp_path / "run" / "url"
    env = cli_env(web.home)
    p = subprocess.Popen([sys.executable, "-m", "lafs_backup", *web.lb, "web", "--socket", str(sock), "--url-file",
                          str(url_file)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not url_file.exists() or not sock.exists():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "no socket"
            time.sleep(0.1)
        assert stat.S_IMODE(os.stat(url_file).st_mode) == 0o600 and stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(url_file.read_text().strip()).query)["token"][0]

        class Unix(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(sock))

        def get(path: str, cookie: str | None = None) -> http.client.HTTPResponse:
            c = Unix("localhost", timeout=60)
            c.request("GET", path, headers={"Cookie": cookie} if cookie else {})
            r = c.getresponse()
            r.body = r.read()  # type: ignore[attr-defined]
            c.close()
            return r

        assert get("/backups").status == 403
        r = get(f"/backups?token={token}")
        assert r.status == 303
        ok = get("/backups", r.getheader("Set-Cookie").split(";")[0])
        assert ok.status == 200 and ids[1].encode() in ok.body
    finally:
        _stop(p)
    out, err = p.communicate()
    assert p.returncode == 0 and out == "" and token not in err, err
    assert not sock.exists()
