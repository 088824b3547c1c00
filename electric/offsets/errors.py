"""What the offset store raises; each ``str()`` is one line naming the file."""

from __future__ import annotations


class OffsetFileError(Exception):
    """The offset file cannot be used; start-up must stop (the CLI exits with code 2).

    Base of every error the store raises on open; ``str()`` is one line naming the file.
    """


class OffsetFileCorrupt(OffsetFileError):
    """The file's content is not what Electric wrote (or not readable by this version).

    ``path`` and ``offset`` (byte position of the bad header/record) are attributes; ``str()``
    is one line suitable for the operator.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"offset file {path} is corrupt at byte {offset}: {reason}")


class OffsetFileVersionError(OffsetFileCorrupt):
    """Bad magic or a format version this build cannot read."""


class OffsetFileLocked(OffsetFileError):
    """Another process holds the file open (two Electric processes must never share it)."""


class Malformed(Exception):
    """A checksummed payload that does not decode (reported as :class:`OffsetFileCorrupt`
    with the record's position by whoever knows it)."""
