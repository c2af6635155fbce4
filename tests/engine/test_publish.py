"""After the upload: why an unhappy grid refused it, and the cache rebuilt only from a recorded
backup of the same source."""

from __future__ import annotations

import io

import pytest_twisted

from lafs_backup.engine.publish import rebuild_cache, unhappy
from lafs_backup.errors import GatewayError
from lafs_backup.history import Backup
from lafs_backup.report import Reporter


class Gateway:
    def __init__(self, servers: int | None) -> None:
        self.servers = servers

    async def connected_servers(self) -> list[str]:
        if self.servers is None:
            raise GatewayError("GET", "(fake)", 0, "", reason="connection refused")
        return [f"s{i}" for i in range(self.servers)]


def refused(body: str = "UploadUnhappinessError") -> GatewayError:
    return GatewayError("PUT", "(fake)", 500, body)


async def never(gw) -> int:
    raise AssertionError("the happiness was in the grid's answer")


@pytest_twisted.ensureDeferred
async def test_too_few_servers_are_counted_from_the_grids_answer():
    e = await unhappy(Gateway(1), refused("UploadUnhappinessError: asked to place shares on at least 3 servers"),
                      never)
    assert "only 1 of 3 required storage servers connected" in e.message and "Nothing was recorded" in e.message


@pytest_twisted.ensureDeferred
async def test_the_configured_happiness_when_the_answer_does_not_say():
    async def happy(gw) -> int:
        return 5

    e = await unhappy(Gateway(4), refused(), happy)
    assert "only 4 of 5 required" in e.message


@pytest_twisted.ensureDeferred
async def test_a_gateway_that_no_longer_answers_is_said():
    e = await unhappy(Gateway(None), refused(), never)
    assert "no longer answers (connection refused)" in e.message


@pytest_twisted.ensureDeferred
async def test_no_rebuild_without_a_recorded_backup_of_this_source():
    rep = Reporter(err=io.StringIO())
    other = Backup("w/r1", 1, "URI:DIR2-CHK:x", b"/other", "other", 1.0, host="h")
    await rebuild_cache(rep, [other], gw=None, cache=None, gen=2, source=b"/src", host="h")
    assert rep.err.getvalue() == ""
