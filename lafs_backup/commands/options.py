"""Options that several verbs share: which backups a command means, and what a backup selects."""

from __future__ import annotations

import argparse

from ..filters import IgnoreLayer

#: How every command's help says what a SNAPSHOT argument takes (the same words everywhere; the
#: rules in full are docs/commands.md's "Naming a snapshot", as history.resolve applies them).
SNAPSHOT_HELP = ("its id (from 'list') or a unique start of it (4 characters or more), 'latest' (the newest "
                 "backup of --source), a generation number, or a snapshot cap; digits are a generation when a "
                 "backup has it, else the start of an id")


def snapshot(p: argparse.ArgumentParser, role: str, dest: str = "snapshot", nargs: str | None = None,
             metavar: str = "SNAPSHOT") -> None:
    """A positional argument naming a backup (or several, with ``nargs``): ``role`` says what the
    command does with it, :data:`SNAPSHOT_HELP` what it may be."""
    p.add_argument(dest, nargs=nargs, metavar=metavar, help=f"{role}: {SNAPSHOT_HELP}")


def tag(text: str) -> str:
    """The type of an option that records a tag (``backup --tag``, ``tag --add``...): the rules
    of :func:`history.check_tag`, said as argparse says a bad value ("argument --tag: ...")."""
    from ..errors import UsageError
    from ..history import check_tag

    try:
        return check_tag(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(e.message) from None


def globs(ns: argparse.Namespace, kind: str) -> tuple[IgnoreLayer, ...]:
    """The layers of ``--KIND``, ``--iKIND`` and ``--KIND-file`` (``restore``'s include and exclude,
    ``rewrite``'s exclude): globs as backup's --exclude takes them, each option a layer of its own."""
    from ..backup.select import read_globs
    from ..filters import compile_globs

    out = [compile_globs(getattr(ns, kind), f"--{kind}")] if getattr(ns, kind) else []
    out += [compile_globs(getattr(ns, "i" + kind), f"--i{kind}", fold=True)] if getattr(ns, "i" + kind) else []
    out += [compile_globs(read_globs(f, f"--{kind}-file"), f"--{kind}-file {f}")
            for f in getattr(ns, f"{kind}_file") or ()]
    return tuple(out)


def which(p: argparse.ArgumentParser, what: str = "backups") -> None:
    """--source, --host and --tag: which source's backups a 'latest' (or a listing) means."""
    p.add_argument("--source", metavar="PATH",
                   help=f"only {what} of this source directory (default for 'latest': source.path)")
    p.add_argument("--host", metavar="NAME", help=f"only {what} made on this host")
    p.add_argument("--tag", action="append", metavar="TAG", help=f"only {what} with this tag (repeatable: all of them)")


def selection(p: argparse.ArgumentParser) -> None:
    """The selection options of ``backup`` and ``watch``."""
    sel = p.add_argument_group("what to back up (an option with a source.* configuration key adds to it)")
    sel.add_argument("--exclude", action="append", metavar="GLOB",
                     help="skip what GLOB matches, as a line of an ignore file does: with a '/' it is anchored at "
                          "the source ('/build', 'docs/*.pdf'), without it matches a name at any depth ('*.bin', "
                          "'node_modules/') (repeatable)")
    sel.add_argument("--iexclude", action="append", metavar="GLOB",
                     help="the same, ignoring case (repeatable)")
    sel.add_argument("--exclude-file", action="append", metavar="FILE",
                     help="skip what the globs in FILE match, one a line ('#' comments) (repeatable)")
    sel.add_argument("-x", "--one-file-system", action="store_true", default=None,
                     help="never cross a mount point (the mount point directory itself is recorded)")
    sel.add_argument("--exclude-caches", action="store_true", default=None,
                     help="skip the contents of directories holding a valid CACHEDIR.TAG (keeping the tag)")
    sel.add_argument("--exclude-if-present", action="append", metavar="NAME[:HEADER]",
                     help="skip directories holding a file NAME (that starts with HEADER) (repeatable)")
    sel.add_argument("--exclude-larger-than", metavar="SIZE", help="skip files larger than SIZE ('500M', '2G')")
    sel.add_argument("--files-from", action="append", metavar="FILE",
                     help="back up exactly the paths listed in FILE, one a line ('#' comments, globs) (repeatable)")
    sel.add_argument("--files-from-verbatim", action="append", metavar="FILE",
                     help="the same, each line taken exactly (repeatable)")
    sel.add_argument("--files-from-raw", action="append", metavar="FILE",
                     help="the same, NUL-separated, each path taken exactly (repeatable)")
    sel.add_argument("--git-ignore", action="store_true", default=None,
                     help="honour .gitignore files as well as .lafsbackupignore")
