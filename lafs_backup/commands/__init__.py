"""The commands: one module each, a thin wiring of the stages for one CLI verb (``run(ctx, ns)``)."""

from __future__ import annotations

#: Command name -> the module (in this package) whose ``run(ctx, ns)`` does it.
COMMANDS = {"backup": "backup", "restore": "restore", "list": "list", "check": "check", "cleanup": "cleanup",
            "diff": "diff", "verify": "verify", "grid": "grid", "dump-config": "dump_config", "init": "init",
            "key": "key", "ls": "ls", "watch": "watch", "copy": "copy", "find": "find", "dump": "dump", "mount": "mount"}
