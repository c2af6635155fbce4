"""The local machine: file attributes (the only cffi user), openat chains, the cache lock."""
