"""restore --include/--exclude: the state of each path (pure), and which directories on the way hold
something included (a snapshot tree of plain nodes)."""

from __future__ import annotations

import pytest
import pytest_twisted

from lafs_backup.filters import compile_globs
from lafs_backup.read.pick import IN, MAYBE, OUT, Below, Pick
from lafs_backup.store.entry import KIND_DIR, KIND_FILE
from lafs_backup.store.snapshot import Node


def pick(include=(), exclude=(), iinclude=()) -> Pick:
    inc = [compile_globs(list(include), "--include")] if include else []
    inc += [compile_globs(list(iinclude), "--iinclude", fold=True)] if iinclude else []
    return Pick(tuple(inc), (compile_globs(list(exclude), "--exclude"),) if exclude else ())


@pytest.mark.parametrize("p, path, is_dir, want", [
    (pick(), "a/b.txt", False, IN),
    (pick(include=["*.conf"]), "etc", True, MAYBE),
    (pick(include=["*.conf"]), "etc/app.conf", False, IN),
    (pick(include=["*.conf"]), "etc/app.bin", False, OUT),
    (pick(include=["/etc/"]), "etc/sub/x.bin", False, IN),     # below an included directory
    (pick(include=["/etc/"]), "home/etc/x", False, OUT),       # anchored at the snapshot's root
    (pick(include=["etc/"]), "home/etc/x", False, IN),         # a trailing '/' alone: a directory at any depth
    (pick(include=["docs/*.pdf"]), "docs/a.pdf", False, IN),
    (pick(include=["docs/*.pdf"]), "x/docs/a.pdf", False, OUT),
    (pick(include=["/etc/"], exclude=["*.bin"]), "etc/sub/x.bin", False, OUT),
    (pick(include=["/etc/"], exclude=["sub/"]), "etc/sub/x.conf", False, OUT),  # an excluded directory
    (pick(exclude=["/build/"]), "build/out.o", False, OUT),
    (pick(exclude=["/build/"]), "src/build/out.o", False, IN),
    (pick(iinclude=["*.JPG"]), "pics/a.jpg", False, IN),
])
def test_state_of_a_path_from_the_snapshot_root(p, path, is_dir, want):
    assert p.state_of(path.encode().split(b"/"), is_dir) == want


def test_a_directory_backup_excludes_is_left_whole_as_backup_leaves_it():
    p = pick(include=["*.conf"], exclude=["cache/"])
    assert p.state(b"a/cache", True, MAYBE) == OUT
    assert p.state(b"a/cache/x.conf", False, OUT) == OUT  # never asked: the walk stops at the directory


def d(name: str, *children: Node) -> Node:
    return Node(name.encode(), KIND_DIR, "URI:DIR2-CHK:" + name, {"children": children})


def f(name: str) -> Node:
    return Node(name.encode(), KIND_FILE, "URI:LIT:", {})


@pytest_twisted.ensureDeferred
async def test_below_walks_each_maybe_directory_once():
    tree = d("", d("etc", f("a.conf"), d("deep", d("er", f("b.conf")))), d("home", d("x", f("y.txt"))))
    listed: list[bytes] = []

    async def children(node: Node):
        listed.append(node.name)
        return node.metadata["children"]

    below = Below(pick(include=["*.conf"]), children)
    assert await below.holds(tree, [])
    for path, node in ((["etc"], tree.metadata["children"][0]),
                       (["etc", "deep"], tree.metadata["children"][0].metadata["children"][1]),
                       (["etc", "deep", "er"], tree.metadata["children"][0].metadata["children"][1]
                        .metadata["children"][0]),
                       (["home"], tree.metadata["children"][1])):
        walked = len(listed)
        assert await below.holds(node, [p.encode() for p in path]) == (path[0] == "etc")
        assert len(listed) == walked  # answered from the first walk
    assert not below._known  # and each answer given once, then dropped
