"""``lafs-backup web``: a local, read-only dashboard of the backups, served by Twisted Web.

``html`` and ``svg`` render (pure), ``pages`` answers each address from the
backups and the reader, ``server`` is the HTTP edge: the token, the methods
allowed, the headers, and the streamed downloads.
"""
