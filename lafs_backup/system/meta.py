"""File attributes beyond stat: owner names, POSIX ACLs, capabilities, xattrs; captured in phase one, applied on restore."""

from __future__ import annotations

import errno
import functools
import grp
import logging
import os
import pwd
import stat
from typing import Callable, Mapping

import xattr

from . import posix1e

log = logging.getLogger(__name__)

_ACL_ACCESS = b"system.posix_acl_access"
_ACL_DEFAULT = b"system.posix_acl_default"
_CAPS = b"security.capability"
_XATTR_PREFIXES = (b"user.", b"trusted.", b"security.")

NoteFn = Callable[[str, str], None]
#: An entry's extras as the queue holds them: (key, value bytes), in a stable order.
Extras = tuple[tuple[str, bytes], ...]


class Capturer:
    """Reads the attributes of one entry as queue extras ``(key, value bytes)``.

    ``note_once(key, message)`` is told, once, when a library is missing and
    so ACLs or capabilities are not captured.  Errors reading one attribute
    are returned as warnings, never raised.
    """

    def __init__(self, note_once: NoteFn) -> None:
        self._note = note_once
        self._users: dict[int, bytes | None] = {}
        self._groups: dict[int, bytes | None] = {}
        #: The owner extras of each (uid, gid) seen: most entries of a tree share a few owners.
        self._owners: dict[tuple[int, int], Extras] = {}
        #: (st_dev, file type) where listing extended attributes was refused as unsupported: a file
        #: system's answer does not change from one file to the next, so it is not asked again.
        self._no_xattrs: set[tuple[int, int]] = set()

    def _user(self, uid: int) -> bytes | None:
        if uid not in self._users:
            try:
                self._users[uid] = os.fsencode(pwd.getpwuid(uid).pw_name)
            except KeyError:
                self._users[uid] = None
        return self._users[uid]

    def _group(self, gid: int) -> bytes | None:
        if gid not in self._groups:
            try:
                self._groups[gid] = os.fsencode(grp.getgrgid(gid).gr_name)
            except KeyError:
                self._groups[gid] = None
        return self._groups[gid]

    def extras(self, path: bytes, st: os.stat_result) -> tuple[Extras, tuple[str, ...]]:
        """(extras, warnings) for the entry at ``path`` (a short path; see paths.proc_path).

        Most entries have no extended attributes: for them this costs one
        ``llistxattr`` (none at all on a file system that does not support
        them) and no allocation beyond the result.
        """
        owner = (st.st_uid, st.st_gid)
        out = self._owners.get(owner)
        if out is None:
            out = self._owners[owner] = self._owner_extras(*owner)
        mode = st.st_mode
        if stat.S_ISREG(mode):
            if st.st_nlink > 1:
                out = (*out, ("hardlink", b"%d:%d" % (st.st_dev, st.st_ino)))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            out = (*out, ("rdev", b"%d" % st.st_rdev))
        unsupported = (st.st_dev, stat.S_IFMT(mode))
        if unsupported in self._no_xattrs:
            return out, ()
        try:
            # (the standard library's call: one system call where the list is short, where
            # pyxattr's asks the size first)
            listed = os.listxattr(path, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                self._no_xattrs.add(unsupported)
                return out, ()
            return out, (f"cannot list extended attributes: {e.strerror}",)
        if not listed:
            return out, ()
        more: list[tuple[str, bytes]] = list(out)
        problems: list[str] = []
        for name in sorted(os.fsencode(n) for n in listed):
            if name in (_ACL_ACCESS, _ACL_DEFAULT):
                self._acl(path, name == _ACL_DEFAULT, more, problems)
            elif name == _CAPS:
                self._caps(path, more, problems)
            elif name.startswith(_XATTR_PREFIXES):
                try:
                    more.append(("x:" + name.decode("utf-8", "surrogateescape"),
                                 xattr.get(path, name, nofollow=True)))
                except OSError as e:
                    if e.errno != errno.ENODATA:
                        problems.append(f"cannot read extended attribute {name!r}: {e.strerror}")
        return tuple(more), tuple(problems)

    def _owner_extras(self, uid: int, gid: int) -> Extras:
        """The ``user`` and ``group`` extras of an owner (each left out when it has no name)."""
        user, group = self._user(uid), self._group(gid)
        return ((("user", user),) if user is not None else ()) + ((("group", group),) if group is not None else ())

    def _acl(self, path: bytes, default: bool, out: list[tuple[str, bytes]], problems: list[str]) -> None:
        if not posix1e.acl_available():
            self._note("no-libacl", f"{posix1e.ACL_LIBRARY} is not available: POSIX ACLs are not captured")
            return
        try:
            texts = posix1e.get_acl(path, default)
        except OSError as e:
            problems.append(f"cannot read {'default ' if default else ''}ACL: {e.strerror}")
            return
        if texts is not None:
            key = "dacl" if default else "acl"
            out.append((key, texts[0].encode()))
            out.append((key + "_names", texts[1].encode("utf-8", "surrogateescape")))

    def _caps(self, path: bytes, out: list[tuple[str, bytes]], problems: list[str]) -> None:
        if not posix1e.caps_available():
            self._note("no-libcap", f"{posix1e.CAP_LIBRARY} is not available: file capabilities are not captured")
            return
        try:
            text = posix1e.get_caps(path)
        except OSError as e:
            problems.append(f"cannot read capabilities: {e.strerror}")
            return
        if text is not None:
            out.append(("caps", text.encode()))


class Handle:
    """Where recorded attributes are applied: exactly one inode the restore made or opened.

    An attacker who owns a directory being restored into can swap names in
    it at any moment, so nothing here takes a path that a swap could
    redirect: a descriptor (:class:`FdHandle`), or a symlink named in a
    directory held open, never followed (:class:`LinkHandle`).
    """

    def chown(self, uid: int, gid: int) -> None:
        raise NotImplementedError

    def chmod(self, mode: int) -> None:
        raise NotImplementedError

    def setxattr(self, name: bytes, value: bytes) -> None:
        raise NotImplementedError

    def set_acl(self, text: str, default: bool) -> None:
        raise NotImplementedError

    def set_caps(self, text: str) -> None:
        raise NotImplementedError

    def utime(self, ns: int) -> None:
        raise NotImplementedError


class FdHandle(Handle):
    """An open file or directory.  ``o_path``: a descriptor opened with O_PATH (a FIFO or a
    device, which are never opened for reading), reached through ``/proc/self/fd/N``, a name
    the kernel resolves to that very inode."""

    def __init__(self, fd: int, o_path: bool = False) -> None:
        self.fd = fd
        self.o_path = o_path
        self.proc = b"/proc/self/fd/%d" % fd

    def chown(self, uid: int, gid: int) -> None:
        if self.o_path:
            os.chown(self.proc, uid, gid)
        else:
            os.fchown(self.fd, uid, gid)

    def chmod(self, mode: int) -> None:
        if self.o_path:
            os.chmod(self.proc, mode)
        else:
            os.fchmod(self.fd, mode)

    def setxattr(self, name: bytes, value: bytes) -> None:
        xattr.set(self.proc if self.o_path else self.fd, name, value)

    def set_acl(self, text: str, default: bool) -> None:
        if self.o_path:
            posix1e.set_acl(self.proc, text, default)
        else:
            posix1e.set_acl_fd(self.fd, text, default)

    def set_caps(self, text: str) -> None:
        posix1e.set_caps_fd(self.fd, text)

    def utime(self, ns: int) -> None:
        os.utime(self.proc if self.o_path else self.fd, ns=(ns, ns))


class LinkHandle(Handle):
    """A symlink, named in the directory open as ``dir_fd``; every call acts on the link itself."""

    def __init__(self, dir_fd: int, name: bytes) -> None:
        self.dir_fd = dir_fd
        self.name = name

    def chown(self, uid: int, gid: int) -> None:
        os.chown(self.name, uid, gid, dir_fd=self.dir_fd, follow_symlinks=False)

    def setxattr(self, name: bytes, value: bytes) -> None:
        xattr.set(b"/proc/self/fd/%d/%s" % (self.dir_fd, self.name), name, value, nofollow=True)

    def utime(self, ns: int) -> None:
        os.utime(self.name, ns=(ns, ns), dir_fd=self.dir_fd, follow_symlinks=False)


class Applier:
    """Applies recorded attributes to a restored entry; each failure is one warning, the rest go on.

    Order matters: chown first (it clears setuid/setgid and capabilities),
    then mode, xattrs, ACLs, capabilities, and the times last.
    """

    def __init__(self, warn: Callable[[str], None], note_once: NoteFn, owners: bool, numeric: bool) -> None:
        self._warn = warn
        self._note = note_once
        self.owners = owners
        self.numeric = numeric

    def owner_ids(self, meta: Mapping[str, object]) -> tuple[int, int] | None:
        uid, gid = meta.get("uid"), meta.get("gid")
        if not isinstance(uid, int) or not isinstance(gid, int):
            return None
        if not self.numeric:
            user, group = meta.get("user"), meta.get("group")
            if isinstance(user, str):
                uid = _uid_of(user, uid)
            if isinstance(group, str):
                gid = _gid_of(group, gid)
        return uid, gid

    def apply(self, target: Handle, meta: Mapping[str, object], kind: str, xattrs: Mapping[bytes, bytes],
              times: bool = True) -> None:
        """Apply ``meta`` to ``target``."""
        link = kind == "l"
        if self.owners:
            ids = self.owner_ids(meta)
            if ids is not None:
                self._try("set owner", lambda: target.chown(ids[0], ids[1]))
        mode = meta.get("mode")
        if not link and isinstance(mode, int):
            self._try("set mode", lambda: target.chmod(stat.S_IMODE(mode)))
        for name, value in xattrs.items():
            self._try(f"set extended attribute {name.decode('utf-8', 'replace')}",
                      functools.partial(target.setxattr, name, value))
        if not link:
            for key, default in (("acl", False), ("default_acl", True)):
                acl = meta.get(key)
                if isinstance(acl, dict):
                    self._apply_acl(target, acl, default)
            caps = meta.get("caps")
            if isinstance(caps, str):
                if posix1e.caps_available():
                    self._try("set capabilities", lambda: target.set_caps(caps))
                else:
                    self._warn(f"capabilities not restored: {posix1e.CAP_LIBRARY} is not available")
        if times:
            mtime = meta.get("mtime_ns")
            if isinstance(mtime, int):
                self._try("set modification time", lambda: target.utime(mtime))

    def _apply_acl(self, target: Handle, acl: Mapping[str, object], default: bool) -> None:
        if not posix1e.acl_available():
            self._warn(f"ACL not restored: {posix1e.ACL_LIBRARY} is not available")
            return
        numeric, names = acl.get("numeric"), acl.get("names")
        text = numeric
        if not self.numeric and isinstance(names, str) and posix1e.parses(names):
            text = names
        if isinstance(text, str):
            self._try("set ACL", lambda: target.set_acl(text, default))

    def _try(self, what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except OSError as e:
            self._warn(f"cannot {what}: {e.strerror or e}")


def forget_owner_names() -> None:
    """Look user and group names up afresh (a restore starts with this)."""
    _uid_of.cache_clear()
    _gid_of.cache_clear()


@functools.lru_cache(maxsize=4096)
def _uid_of(user: str, recorded: int) -> int:
    """The local uid of ``user`` (the recorded one if there is no such user); asked of the system
    once per name and restore, not once per file."""
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return recorded


@functools.lru_cache(maxsize=4096)
def _gid_of(group: str, recorded: int) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return recorded
