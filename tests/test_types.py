"""The package type-checks: mypy, with the settings in setup.cfg's ``[mypy]``, finds nothing in lafs_backup/,
and the unit tests' fakes are what they stand for (the protocols of the gateway and the object cache)."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

FAKES = """
from fakes import FakeCache, FakeGateway
from lafs_backup.protocols import GatewayLike
from lafs_backup.store.protocols import ObjectCacheLike

gateway: GatewayLike = FakeGateway()
cache: ObjectCacheLike = FakeCache()
"""


def mypy(*args: str, env: dict[str, str] | None = None) -> None:
    # Without its cache (about 3 s on two cores): a cached run does not check again a module whose own
    # imports kept their interface, so it keeps a verdict about a protocol (is the Opener a WatchTarget?)
    # after a class three imports away (the Gateway) changed, and fails or passes on stale news.
    p = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env={**os.environ, **(env or {})})
    assert p.returncode == 0, f"mypy {' '.join(args)} exited {p.returncode}:\n{p.stdout}{p.stderr}"


def test_mypy_finds_nothing_in_the_package():
    mypy("lafs_backup")


def test_the_fakes_are_a_gateway_and_an_object_cache():
    mypy("-c", FAKES, env={"MYPYPATH": str(ROOT / "tests")})
