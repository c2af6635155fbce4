"""Where this machine keeps lafs-backup's state and data, and what it calls itself."""

from __future__ import annotations

import os
import socket

import platformdirs

APP = "lafs-backup"


def state_dir() -> str:
    """Caches, queues, keys, locks: ``~/.local/state/lafs-backup``."""
    return platformdirs.user_state_dir(APP)


def data_dir() -> str:
    """The embedded grid and joined gateways: ``~/.local/share/lafs-backup``."""
    return platformdirs.user_data_dir(APP)


def this_host() -> str:
    return socket.gethostname() or "localhost"


def queues_dir() -> str:
    return os.path.join(state_dir(), "queues")
