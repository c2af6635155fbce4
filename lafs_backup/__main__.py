"""``python -m lafs_backup``: the same as the ``lafs-backup`` command."""

import sys

from .cli import main

sys.exit(main())
