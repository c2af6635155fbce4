"""The commands: one module each, a thin verb over the engine: ``arguments(p)`` declares its
arguments, and ``run(opener, ns)`` opens resources through the ``resources.Opener``, calls the
engine and reports."""

from __future__ import annotations

#: Command name -> (its module in this package, its one-line help), in the order ``--help`` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    'backup': ('backup', 'back up a directory (phase one, then phase two)'),
    'watch': ('watch', 'back up, then snapshot every settled burst of changes (inotify), until Ctrl-C or SIGTERM'),
    'copy': ('copy', "copy backups to a second grid (every one it lacks, newest first), recorded in that grid's repository"),
    'restore': ('restore', 'restore a snapshot into a directory'),
    'list': ('list', 'list finished backups'),
    'stats': ('stats', 'what each backup holds and added, and what the repository stores (from the indexes alone)'),
    'ls': ('ls', 'list the entries of a snapshot, without restoring it'),
    'find': ('find', 'find paths in every backup (or the ones given)'),
    'dump': ('dump', "write a file's bytes, or a directory as a tar stream, to stdout"),
    'mount': ('mount', 'mount every backup as a read-only FUSE file system (in the foreground, until Ctrl-C or SIGTERM)'),
    'web': ('web', 'serve a local read-only dashboard of the backups in a browser (127.0.0.1 and a token; until Ctrl-C or SIGTERM)'),
    'tag': ('tag', 'add, remove or set the tags of backups already made (recorded in the repository)'),
    'rewrite': ('rewrite', 'make new snapshots of backups without the paths --exclude matches (a leaked secret, a huge file)'),
    'cleanup': ('cleanup', 'forget backups: named ones, or those a retention policy does not keep'),
    'diff': ('diff', 'what changed between two snapshots, or a snapshot and the live source (exit 1 if any)'),
    'verify': ('verify', 'verify every share and read contents back against their SHA-256; exit 6 on damage'),
    'status': ('status', 'am I safe? the last backups, leases, checks, the grid and copies; exit 0 OK, 1 warning, '
                         '2 critical, 3 unknown (as a Nagios or Icinga check)'),
    'check': ('check', 'deep-check backups: renew leases, optionally repair; exit 6 if anything is unhealthy'),
    'init': ('init', 'make a repository on the grid (the first backup does it too)'),
    'key': ('key', "print the repository's recovery key (a secret: keep a copy off this machine)"),
    'custodian': ('custodian', "keep every backup's leases alive from another machine, without the host and without "
                               'any cap that reads a backup: init (on the host), run, pass, check'),
    'grid': ('grid', 'manage the embedded local Tahoe-LAFS grid, or join one'),
    'dump-config': ('dump_config', 'print the merged configuration'),
}

#: Commands that only read: they stop an embedded grid they had to start when they end.
READ_ONLY = frozenset({"list", "stats", "ls", "find", "dump", "restore", "mount", "verify", "diff", "web",
                       "status"})

#: Commands whose exit codes follow another convention than the tool's table: the code of any error
#: (misuse, a bad configuration, a lock...).  ``status`` is a monitoring plugin: 3 is unknown.
ERROR_CODES: dict[str, int] = {"status": 3}
