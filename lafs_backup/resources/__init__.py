"""The resource opener: from the configuration, it opens what a command works with (the grid and its
gateway, the entry cache under its lock, the repository and its key) and hands each down; the
engine never reaches back into it.

``opener`` (:class:`Opener`, what a command holds) keeps the gateway and asks the rest of
``nodes`` (this machine's grid nodes, started on demand), ``places`` (which grid it is, and where
that grid's entry cache and key are kept, moved there from where they were named by URL),
``cache`` (the entry cache under its lock) and ``repo`` (the recovery key and the repository)."""

from .opener import Opener
from .places import adopt_key, cache_file, key_path_for, registry_path
from .repo import KEY_LOCK_WAIT, Sealed, read_key_arg, save_key

__all__ = ["KEY_LOCK_WAIT", "Opener", "Sealed", "adopt_key", "cache_file", "key_path_for", "read_key_arg", "registry_path", "save_key"]
