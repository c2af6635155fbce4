"""lafs-backup: incremental, deduplicated backups to a Tahoe-LAFS grid."""

__version__ = "0.1.0"
