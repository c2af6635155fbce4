"""Command-line arguments: the global options, each verb's own (declared in its command module), options
and paths in any order, no abbreviations, and usage errors that name the problem and suggest a fix."""

from __future__ import annotations

import argparse
import difflib
import importlib
from typing import Any, Sequence

from . import __version__
from .errors import ExitCode, UsageError

PROG = "lafs-backup"

EPILOG = f"""\
configuration: the base configuration, then each -c FILE in order, then each -o KEY=VALUE
  (lafs-backup dump-config prints the result; without -c, nothing but the base is read).
state: ~/.local/state/lafs-backup (the entry cache, queues, recovery keys, crash reports);
  the embedded grid: ~/.local/share/lafs-backup/grid.
exit codes: {int(ExitCode.OK)} done; {int(ExitCode.PARTIAL)} done, some entries skipped (warnings); \
{int(ExitCode.USAGE)} usage or configuration error;
  {int(ExitCode.GRID)} grid unreachable or refused; {int(ExitCode.FAILED)} failed; \
{int(ExitCode.LOCKED)} another run holds the lock (--wait-lock);
  {int(ExitCode.PROBLEMS)} damage found; {int(ExitCode.INTERNAL)} a bug; {int(ExitCode.INTERRUPTED)} Ctrl-C; \
{int(ExitCode.TERMINATED)} SIGTERM.
"""


class Parser(argparse.ArgumentParser):
    """An argument parser that raises :class:`UsageError` (one line, with the usage) instead of
    exiting, and never takes an abbreviation of an option."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> None:  # type: ignore[override]
        usage = self.format_usage().strip()
        raise UsageError(f"{message}\n{usage}\nSee '{self.prog} --help'.")


def add_global(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The options every command takes, before or after its name.  A spelling the command's own
    arguments use already is the command's there (``tag --set``): the global option keeps its others
    (``-o``)."""
    taken = set(getattr(p, "_option_string_actions", {}))

    def add(*names: str, **kw: Any) -> None:
        p.add_argument(*[n for n in names if n not in taken], **kw)

    add("-c", "--config", action="append", metavar="FILE", default=argparse.SUPPRESS,
        help="YAML file layered over the base config (repeatable; later files win)")
    add("-o", "--set", action="append", metavar="KEY=VALUE", default=argparse.SUPPRESS,
        help="override one config key, e.g. -o operation.jobs=4 (wins over files)")
    add("--url", default=argparse.SUPPRESS, metavar="URL",
        help="gateway URL (destination.url); default: the embedded local grid")
    add("-v", "--verbose", action="count", default=argparse.SUPPRESS,
        help="say more: -v logs at INFO, -vv at DEBUG")
    add("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
        help="say only warnings and errors (no progress, no summary)")
    add("--debug", action="store_true", default=argparse.SUPPRESS,
        help="log at DEBUG level, and print a bug's traceback")
    add("--noise", action="store_true", default=argparse.SUPPRESS,
        help="log every path (below DEBUG)")
    add("--json", action="store_true", default=argparse.SUPPRESS,
        help="machine-readable output (JSON lines)")
    add("--repo", metavar="KEY|FILE|-", default=argparse.SUPPRESS,
        help="the repository's recovery key: the key itself, a file holding it, or - to read it "
             "from stdin (also LAFS_BACKUP_REPO, or repository.key_file; default: this machine's)")
    add("--wait-lock", type=float, metavar="SECONDS", default=argparse.SUPPRESS,
        help="wait up to SECONDS for another run holding the entry cache's lock "
             "(operation.lock_wait; default: exit at once with code 5)")


def _commands() -> dict[str, tuple[str, str]]:
    from .commands import COMMANDS

    return COMMANDS


def top_parser() -> Parser:
    """``lafs-backup --help``: the commands and the global options."""
    commands = _commands()
    listing = "\n".join(f"  {name:<12} {summary}" for name, (_, summary) in commands.items())
    p = Parser(prog=PROG, usage=f"{PROG} [GLOBAL OPTIONS] COMMAND [ARGS]",
               description=f"Incremental, deduplicated backups to a Tahoe-LAFS grid.\n\ncommands:\n{listing}",
               epilog=EPILOG + f"\n'{PROG} COMMAND --help' shows a command's arguments.")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    add_global(p.add_argument_group("global options (before or after the command)"))
    return p


def verb_parser(verb: str) -> Parser:
    """One command's parser: its own arguments first, the global options after them."""
    module, summary = _commands()[verb]
    mod = importlib.import_module(f".commands.{module}", __package__)
    example = getattr(mod, "EXAMPLE", None)
    own = Parser(prog=f"{PROG} {verb}", add_help=False)
    mod.arguments(own)
    usage = own.format_usage().removeprefix("usage: ").strip() + " [GLOBAL OPTIONS]"
    p = Parser(prog=f"{PROG} {verb}", usage=usage, description=summary[:1].upper() + summary[1:] + ".",
               epilog=(f"example:\n  {example}\n\n" if example else "") + EPILOG
               + (f"\n{mod.EPILOG}" if getattr(mod, "EPILOG", None) else ""))
    mod.arguments(p)
    add_global(p.add_argument_group(f"global options (see '{PROG} --help')"))
    return p


def _takes_value(p: argparse.ArgumentParser) -> dict[str, bool]:
    """Each option string of ``p`` and whether it takes the next word as its value."""
    out: dict[str, bool] = {}
    for action in p._actions:
        for s in action.option_strings:
            out[s] = action.nargs != 0 and not isinstance(action, (argparse._StoreTrueAction,
                                                                   argparse._StoreFalseAction,
                                                                   argparse._CountAction,
                                                                   argparse._VersionAction,
                                                                   argparse._HelpAction))
    return out


def find_verb(argv: Sequence[str]) -> tuple[int, str] | None:
    """Where the command's name stands in ``argv``, and the name: the first word that is not a global
    option or its value (None: there is none)."""
    glob = _takes_value(top_parser())
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return (i + 1, argv[i + 1]) if i + 1 < len(argv) else None
        if word.startswith("-") and word != "-":
            name = word.split("=", 1)[0]
            i += 2 if glob.get(name) and "=" not in word else 1
            continue
        return i, word
    return None



#: What users of restic, borg and kopia type for a command this tool names otherwise: the error
#: for an unknown command suggests ours (not aliases: each command has one name).
RIVALS = {"snapshots": "list", "forget": "cleanup", "prune": "cleanup", "cat": "dump", "extract": "restore",
          "create": "backup", "snapshot": "backup", "compare": "diff", "info": "stats"}

def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command and its arguments, options and paths in any order (``--`` ends the options).

    Raises :class:`UsageError` naming the problem: an unknown command or option (with the nearest
    known one), a missing argument, a bad value.  ``--help`` and ``--version`` raise SystemExit(0)
    after printing."""
    argv = list(argv)
    found = find_verb(argv)
    if found is None:
        top_parser().parse_args(argv)  # --help, --version, or an unknown global option
        raise UsageError(f"a command is required\n{top_parser().format_usage().strip()}\n"
                         f"See '{PROG} --help' for the commands.")
    at, verb = found
    commands = _commands()
    if verb not in commands:
        near = [RIVALS[verb]] if verb in RIVALS else difflib.get_close_matches(verb, list(commands), n=1,
                                                                                cutoff=0.6)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise UsageError(f"'{verb}' is not a command{hint}\nSee '{PROG} --help' for the commands.")
    p = verb_parser(verb)
    _refuse_shadowed(verb, p, argv[:at])
    rest = argv[:at] + argv[at + 1:]
    _refuse_unknown_options(p, rest)
    if "--" in rest:  # (parse_intermixed_args reads options again after it: '-- sh -c CMD' took -c as ours)
        cut = rest.index("--")
        ns = _after_dashes(p, rest[:cut], rest[cut + 1:])
    else:
        ns = p.parse_intermixed_args(rest)
    ns.command = verb
    return ns


def _refuse_shadowed(verb: str, p: Parser, before: list[str]) -> None:
    """A global option given before the command in a spelling the command takes as its own
    (``--set`` before ``tag``) is refused, naming the spelling that stays global."""
    top = top_parser()
    for word in before:
        name = word.split("=", 1)[0]
        glob = next((a for a in top._actions if name in a.option_strings), None)
        own = next((a for a in p._actions if name in a.option_strings), None)
        if glob is not None and own is not None and own.dest != glob.dest:
            others = " or ".join(s for s in glob.option_strings if s != name)
            p.error(f"{name} is {verb}'s own option; give the global one as {others}")


def _refuse_unknown_options(p: Parser, words: list[str]) -> None:
    """An unknown option is named as such, with the nearest known one, before argparse would report
    a missing required option in its place (``--taget`` is a typo, not a missing ``--target``)."""
    known = _takes_value(p)
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":
            return
        if word.startswith("--") or (word.startswith("-") and len(word) > 1 and not _number(word)):
            name = word.split("=", 1)[0]
            if name not in known and not (not name.startswith("--") and name[:2] in known):
                near = difflib.get_close_matches(name, [k for k in known if k.startswith("--")], n=1, cutoff=0.6)
                hint = f"; did you mean {near[0]}?" if near else ""
                p.error(f"unknown option {name}{hint}")
            i += 2 if known.get(name) and "=" not in word and words[i + 1:i + 2] != ["--"] else 1
            continue
        i += 1


def _after_dashes(p: argparse.ArgumentParser, head: list[str], tail: list[str]) -> argparse.Namespace:
    """Parse ``head -- tail``: options anywhere in ``head``, every word of ``tail`` an argument,
    even one that starts with '-' (``parse_intermixed_args`` reads options again after a ``--``)."""
    marks = {f"\0{i}": word for i, word in enumerate(tail)}  # (never an option, never a user's word)
    ns = p.parse_intermixed_args(head + list(marks))
    for key, value in vars(ns).items():
        if isinstance(value, str) and value in marks:
            setattr(ns, key, marks[value])
        elif isinstance(value, list):
            setattr(ns, key, [marks.get(v, v) if isinstance(v, str) else v for v in value])
    return ns


def _number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def full_parser() -> argparse.ArgumentParser:
    """Every command with all its arguments, as subcommands of one parser: what the man page and the
    shell completions are generated from (``bin/generate-docs``); the CLI itself parses with
    :func:`parse`, which builds only the command given."""
    top = top_parser()
    p = argparse.ArgumentParser(prog=PROG, description=top.description, epilog=top.epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    add_global(p.add_argument_group("global options (before or after the command)"))
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (module, summary) in _commands().items():
        mod = importlib.import_module(f".commands.{module}", __package__)
        sp = sub.add_parser(name, help=summary, description=summary[:1].upper() + summary[1:] + ".",
                            epilog=f"example: {mod.EXAMPLE}" if getattr(mod, "EXAMPLE", None) else None)
        mod.arguments(sp)
    return p
