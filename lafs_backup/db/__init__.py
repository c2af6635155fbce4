"""The local database (the entry cache file, the only sqlite user): the object cache, the local history and the
copy map, opened together as one ``LocalDB``."""
