"""Storing objects on the grid despite refusals for unhappiness: salting, then patient retries."""

from __future__ import annotations

import logging
import os
from typing import Awaitable, Callable

from twisted.internet.task import deferLater

from .encode import SALT_LEN
from .errors import GatewayError
from .gateway import Gateway

log = logging.getLogger(__name__)


async def despite_unhappiness(put: Callable[[bytes | None], Awaitable[str]], gw: Gateway, what: str,
                              can_salt: bool = True) -> str:
    """``put(salt)`` stores an object (``salt`` None: exactly as it is) and returns its cap.

    When the grid refuses it as unhappy although servers are up, the servers
    usually still hold the shares of an interrupted upload of the same bytes
    as "incoming" (Tahoe keeps them up to 30 minutes): the same object under a
    fresh random salt has another storage index, which those shares are not
    in the way of, so it is stored again at once with one.  Further refusals
    (servers really missing) are retried after the retry policy's delays,
    each under a new salt, until its attempts are spent; then the refusal is
    raised.  ``can_salt`` False (an object that must hold exact bytes) only
    waits and retries.
    """
    attempt = 0
    while True:
        attempt += 1
        salt = os.urandom(SALT_LEN) if can_salt and attempt > 1 else None
        try:
            return await put(salt)
        except GatewayError as e:
            if not e.unhappy or attempt >= gw.retry.attempts:
                raise
        if attempt == 1 and can_salt:
            log.info("%s was refused as unhappy; storing it again under a salt", what)
            continue
        delay = gw.retry.delay(attempt - (1 if can_salt else 0)) * gw.rng.uniform(0.7, 1.3)
        log.info("%s was refused as unhappy; trying again in %.1fs", what, delay)
        await deferLater(gw.clock, delay, lambda: None)
