"""POSIX.1e bindings: ACLs through libacl and file capabilities through libcap, via cffi's ABI mode.

The libraries are opened with ``dlopen`` the first time they are needed, so
nothing is compiled at install time.  When one is missing, its
``available()`` is False and callers record nothing rather than something
false.  All functions take paths as bytes (``/proc/self/fd/N/name`` works,
which is how deep paths are reached) and raise OSError with the C errno.
"""

from __future__ import annotations

import os
from typing import Any

ACL_TYPE_ACCESS = 0x8000
ACL_TYPE_DEFAULT = 0x4000
_TEXT_ABBREVIATE = 0x10
_TEXT_NUMERIC_IDS = 0x08

_CDEF = """
typedef void *acl_t;
typedef unsigned int mode_t;
acl_t acl_get_file(const char *path_p, unsigned int type);
int acl_set_file(const char *path_p, unsigned int type, acl_t acl);
int acl_set_fd(int fd, acl_t acl);
acl_t acl_from_text(const char *buf_p);
char *acl_to_any_text(acl_t acl, const char *prefix, char separator, int options);
int acl_equiv_mode(acl_t acl, mode_t *mode_p);
int acl_entries(acl_t acl);
int acl_valid(acl_t acl);
int acl_free(void *obj_p);
int acl_delete_def_file(const char *path_p);

typedef void *cap_t;
cap_t cap_get_file(const char *path_p);
int cap_set_file(const char *path_p, cap_t cap_p);
int cap_set_fd(int fd, cap_t cap_p);
cap_t cap_from_text(const char *buf_p);
char *cap_to_text(cap_t caps, ssize_t *length_p);
int cap_free(void *obj_d);
"""

# cffi ships no types: what it makes of ``_CDEF`` at run time (its FFI, each library's C functions,
# and the C values they take and give) is typed by those C declarations alone.
FFI = Any
CLib = Any
CData = Any

_libs: dict[str, CLib] = {}
_ffi: FFI = None


def _load(name: str) -> CLib:
    global _ffi
    if name not in _libs:
        if _ffi is None:  # cffi's parser costs ~15 ms: only pay it when an ACL or capability shows up
            import cffi

            _ffi = cffi.FFI()
            _ffi.cdef(_CDEF)
        try:
            _libs[name] = _ffi.dlopen(name)
        except OSError:
            _libs[name] = None
    return _libs[name]


def _acl() -> CLib:
    return _load(ACL_LIBRARY)


def _cap() -> CLib:
    return _load(CAP_LIBRARY)


#: Library names, replaceable (tests point them at a missing file).
ACL_LIBRARY = "libacl.so.1"
CAP_LIBRARY = "libcap.so.2"


def acl_available() -> bool:
    return _acl() is not None


def caps_available() -> bool:
    return _cap() is not None


def _err(what: str, path: bytes) -> OSError:
    e = _ffi.errno
    return OSError(e, f"{what}: {os.strerror(e)}", os.fsdecode(path))


# -- ACLs ----------------------------------------------------------------------

def get_acl(path: bytes, default: bool = False) -> tuple[str, str] | None:
    """The ACL of ``path`` as (numeric-id text, named text), abbreviated and comma-separated.

    None when there is no extended ACL: an access ACL that only mirrors the
    mode bits, or an empty default ACL.
    """
    lib = _acl()
    acl = lib.acl_get_file(path, ACL_TYPE_DEFAULT if default else ACL_TYPE_ACCESS)
    if acl == _ffi.NULL:
        raise _err("acl_get_file", path)
    try:
        if default:
            if lib.acl_entries(acl) <= 0:
                return None
        elif lib.acl_equiv_mode(acl, _ffi.NULL) == 0:
            return None
        return _acl_text(lib, acl, _TEXT_ABBREVIATE | _TEXT_NUMERIC_IDS), _acl_text(lib, acl, _TEXT_ABBREVIATE)
    finally:
        lib.acl_free(acl)


def _acl_text(lib: CLib, acl: CData, options: int) -> str:
    p = lib.acl_to_any_text(acl, _ffi.NULL, b",", options)
    if p == _ffi.NULL:
        raise OSError(_ffi.errno, "acl_to_any_text failed")
    try:
        return _ffi.string(p).decode("utf-8", "surrogateescape")
    finally:
        lib.acl_free(p)


def set_acl(path: bytes, text: str, default: bool = False) -> None:
    """Apply an ACL given as text (numeric ids or names)."""
    lib = _acl()
    acl = lib.acl_from_text(text.encode("utf-8", "surrogateescape"))
    if acl == _ffi.NULL:
        raise _err("acl_from_text", path)
    try:
        if lib.acl_set_file(path, ACL_TYPE_DEFAULT if default else ACL_TYPE_ACCESS, acl) != 0:
            raise _err("acl_set_file", path)
    finally:
        lib.acl_free(acl)


def set_acl_fd(fd: int, text: str, default: bool = False) -> None:
    """Apply an ACL to the file open as ``fd``: the access ACL through the descriptor itself, a
    directory's default ACL through ``/proc/self/fd/N``, which names exactly that directory."""
    if default:
        set_acl(b"/proc/self/fd/%d" % fd, text, True)
        return
    lib = _acl()
    acl = lib.acl_from_text(text.encode("utf-8", "surrogateescape"))
    if acl == _ffi.NULL:
        raise _err("acl_from_text", b"(fd)")
    try:
        if lib.acl_set_fd(fd, acl) != 0:
            raise _err("acl_set_fd", b"(fd)")
    finally:
        lib.acl_free(acl)


def parses(text: str) -> bool:
    """Does libacl accept ``text`` here (e.g. do its user and group names exist)?"""
    lib = _acl()
    acl = lib.acl_from_text(text.encode("utf-8", "surrogateescape"))
    if acl == _ffi.NULL:
        return False
    lib.acl_free(acl)
    return True


# -- capabilities ---------------------------------------------------------------

def get_caps(path: bytes) -> str | None:
    """The file capabilities of ``path`` in ``cap_to_text`` form, or None if it has none."""
    lib = _cap()
    caps = lib.cap_get_file(path)
    if caps == _ffi.NULL:
        if _ffi.errno in (61, 95):  # ENODATA: none set; EOPNOTSUPP: fs can't have them
            return None
        raise _err("cap_get_file", path)
    try:
        p = lib.cap_to_text(caps, _ffi.NULL)
        if p == _ffi.NULL:
            raise _err("cap_to_text", path)
        try:
            return _ffi.string(p).decode("ascii")
        finally:
            lib.cap_free(p)
    finally:
        lib.cap_free(caps)


def set_caps_fd(fd: int, text: str) -> None:
    """Set file capabilities on the file open as ``fd``."""
    lib = _cap()
    caps = lib.cap_from_text(text.encode("ascii"))
    if caps == _ffi.NULL:
        raise _err("cap_from_text", b"(fd)")
    try:
        if lib.cap_set_fd(fd, caps) != 0:
            raise _err("cap_set_fd", b"(fd)")
    finally:
        lib.cap_free(caps)


def set_caps(path: bytes, text: str) -> None:
    lib = _cap()
    caps = lib.cap_from_text(text.encode("ascii"))
    if caps == _ffi.NULL:
        raise _err("cap_from_text", path)
    try:
        if lib.cap_set_file(path, caps) != 0:
            raise _err("cap_set_file", path)
    finally:
        lib.cap_free(caps)
