"""Reading backups back: the one reader of content, and restore, verify and diff on top of it."""
