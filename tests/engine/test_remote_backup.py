"""Backing up a bucket to the real grid: an S3 API on loopback (moto's server) as the source, restores
to a local directory and back into a bucket, changes picked up, an unchanged rerun reading no object,
content deduplicated across a bucket and a local directory, and no credential in any output."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from gridtree import edges
import yaml

from conftest import json_lines, run_cli

SECRET = "s3cr3t-do-not-print-" + "x" * 12


@pytest.fixture(scope="module")
def bucket(s3):
    """A bucket of 320 objects: small ones in ten prefixes, a few of 200 KB, one multipart upload,
    and keys awkward as file names (one that cannot be a path at all)."""
    client, options = s3
    client.create_bucket(Bucket="data")
    rng = random.Random(7)
    objects: dict[str, bytes] = {}
    for i in range(300):
        objects[f"docs/p{i % 10}/note-{i:03d}.txt"] = (f"note {i} " * rng.randint(8, 200)).encode()
    for i in range(16):
        objects[f"media/blob-{i}.bin"] = rng.randbytes(200_000)
    objects["odd/a b/c%20d.txt"] = b"a space and a percent sign\n" * 5
    objects["odd/\u00fcn\u00efc\u00f8de.txt"] = "non-ASCII name\n".encode() * 5
    objects["odd/tab\there.txt"] = b"a tab in the name\n" * 5
    for key, body in objects.items():
        client.put_object(Bucket="data", Key=key, Body=body)
    client.put_object(Bucket="data", Key="odd/x/../escape.txt", Body=b"never a path")
    part = 5 << 20
    big = rng.randbytes(2 * part + 1234)
    up = client.create_multipart_upload(Bucket="data", Key="media/multipart.bin")
    parts = []
    for n, chunk in enumerate((big[:part], big[part:2 * part], big[2 * part:]), 1):
        r = client.upload_part(Bucket="data", Key="media/multipart.bin", PartNumber=n, UploadId=up["UploadId"],
                               Body=chunk)
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
    client.complete_multipart_upload(Bucket="data", Key="media/multipart.bin", UploadId=up["UploadId"],
                                     MultipartUpload={"Parts": parts})
    objects["media/multipart.bin"] = big
    # The tool gets its own credentials (moto takes any): a secret to look for in every output.
    return client, {**options, "secret": SECRET}, objects


def config(tmp_path: Path, options: dict) -> str:
    path = tmp_path / "s3.yaml"
    path.write_text(yaml.safe_dump({"source": {"storage_options": options}}))
    return str(path)


def local_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def bucket_files(client, bucket: str, prefix: str) -> dict[str, bytes]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"][len(prefix):]] = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def test_a_bucket_is_backed_up_restored_and_followed(grid, home, tmp_path, bucket):
    client, options, objects = bucket
    conf = config(tmp_path, options)
    lb = ["--url", grid.url, "-c", conf]
    outputs = []

    def run(*args: str, code: tuple[int, ...] = (0,)):
        r = run_cli([*lb, *args], home)
        outputs.append(r.out + r.err)
        assert r.code in code, r.err
        return r

    r = run("--json", "backup", "s3://data/", code=(1,))  # 1: the key that cannot be a path is skipped
    summary = json.loads(r.out.splitlines()[-1])
    assert summary["files"] == len(objects) and summary["files_new"] == len(objects)
    warnings = [json.loads(x) for x in r.out.splitlines() if '"warning"' in x]
    assert [w["path"] for w in warnings] == ["odd/x/.."], warnings

    out = tmp_path / "r1"
    run("restore", "latest", "--source", "s3://data", "--target", str(out))
    assert local_files(out) == objects
    assert os.stat(out / "docs" / "p1" / "note-001.txt").st_uid == os.geteuid()  # no owner was invented

    # The snapshot records what the store says of each object (ETags, an MD5 only where the ETag is
    # one), and no owner: an object store has none.
    cap = json_lines(run("--json", "list").out)[-1]["cap"]
    children = edges(grid.url, cap, "media")
    single, multi = children["blob-0.bin"][1]["metadata"], children["multipart.bin"][1]["metadata"]
    assert single["md5"] == single["etag"] == hashlib.md5(objects["media/blob-0.bin"]).hexdigest()
    assert "-" in multi["etag"] and "md5" not in multi
    assert "uid" not in single and "gid" not in single and "user" not in single

    # An unchanged rerun reads no object, uploads nothing and makes no directory.
    before = grid.requests()
    r = run("--json", "backup", "s3://data", code=(1,))
    s2 = json.loads(r.out.splitlines()[-1])
    assert s2["bytes_read"] == 0 and s2["files_unchanged"] == len(objects), s2
    assert grid.requests() == before

    # One object changed (same size: only its ETag tells), one new, one deleted.
    changed = "docs/p3/note-003.txt"
    body = objects[changed]
    objects[changed] = bytes(reversed(body))
    client.put_object(Bucket="data", Key=changed, Body=objects[changed])
    objects["docs/new-object.txt"] = b"made after the first backup\n" * 4
    client.put_object(Bucket="data", Key="docs/new-object.txt", Body=objects["docs/new-object.txt"])
    del objects["media/blob-3.bin"]
    client.delete_object(Bucket="data", Key="media/blob-3.bin")
    r = run("--json", "diff", "latest", "--live", "--source", "s3://data", code=(1,))
    seen = {(json.loads(x)["type"], json.loads(x)["path"]) for x in r.out.splitlines()}
    assert {("changed", f"/{changed}"), ("added", "/docs/new-object.txt"), ("removed", "/media/blob-3.bin")} <= seen
    r = run("--json", "backup", "s3://data", code=(1,))
    s3_ = json.loads(r.out.splitlines()[-1])
    assert (s3_["files_changed"], s3_["files_new"]) == (1, 1), s3_
    assert s3_["bytes_read"] == len(objects[changed]) + len(objects["docs/new-object.txt"]), s3_
    out = tmp_path / "r2"
    run("restore", "latest", "--source", "s3://data", "--target", str(out))
    assert local_files(out) == objects

    # Back into a bucket: every object, byte for byte.
    client.create_bucket(Bucket="restored")
    run("restore", "latest", "--source", "s3://data", "--target", "s3://restored/copy")
    assert bucket_files(client, "restored", "copy/") == objects

    # The same contents in a local directory are stored already: deduplicated by SHA-256.
    local = tmp_path / "local"
    for key in ("media/blob-0.bin", "media/multipart.bin", "docs/p2/note-002.txt"):
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(objects[key])
    r = run("--json", "backup", str(local))
    s4 = json.loads(r.out.splitlines()[-1])
    assert s4["files_deduplicated"] == 3 and s4["files_uploaded"] == 0, s4

    assert not any(SECRET in o for o in outputs)
    dumped = run("-c", conf, "dump-config").out
    assert SECRET not in dumped and "<hidden>" in dumped
    for p in (home / "state").rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p


def test_a_bucket_source_cannot_be_watched_and_a_bad_one_is_named(grid, home, tmp_path, bucket):
    _client, options, _objects = bucket
    conf = config(tmp_path, options)
    r = run_cli(["--url", grid.url, "-c", conf, "watch", "s3://data"], home)
    assert r.code == 2 and "not watched" in r.err
    r = run_cli(["--url", grid.url, "-c", conf, "backup", "s3://no-such-bucket/x"], home)
    assert r.code == 2 and "s3://no-such-bucket/x" in r.err and SECRET not in r.err
    r = run_cli(["--url", grid.url, "backup", "nosuchprotocol://x/y"], home)
    assert r.code == 2 and "nosuchprotocol" in r.err


def test_throttling_and_5xx_answers_are_retried(grid, home, tmp_path, s3):
    """Requests to S3 answered 503 SlowDown (throttling) or 500, a few of each kind of request: the
    backup and the restore into a bucket still finish whole."""
    from faultproxy import FaultProxy

    client, options = s3
    client.create_bucket(Bucket="flaky")
    objects = {f"f/{i:02d}.txt": f"flaky store {i}\n".encode() * (i + 5) for i in range(30)}
    for key, body in objects.items():
        client.put_object(Bucket="flaky", Key=key, Body=body)
    upstream = options["client_kwargs"]["endpoint_url"]

    def plan(method: str, path: str, n: int) -> str | None:
        return "slowdown" if n in (2, 6, 11) else "500" if n in (4, 9) else None

    with FaultProxy(upstream + "/", plan) as proxy:
        opts = {**options, "client_kwargs": {**options["client_kwargs"], "endpoint_url": proxy.url.rstrip("/")},
                "config_kwargs": {"retries": {"max_attempts": 10, "mode": "standard"}}}
        conf = config(tmp_path, opts)
        r = run_cli(["--url", grid.url, "-c", conf, "--json", "backup", "s3://flaky/f"], home)
        assert r.code == 0, r.err
        assert json.loads(r.out.splitlines()[-1])["files"] == 30
        assert proxy.injected("slowdown") >= 3 and proxy.injected("500") >= 2
        client.create_bucket(Bucket="flaky-back")
        run_cli(["--url", grid.url, "-c", conf, "restore", "latest", "--source", "s3://flaky/f", "--target",
                 "s3://flaky-back/"], home, check=True)
    assert bucket_files(client, "flaky-back", "") == {k[2:]: v for k, v in objects.items()}
