"""Reading a whole offset file back, with the one torn-tail rule. Sans-I/O.

* A record that runs past the end of the file (with an intact head), a zero-filled tail, or a
  payload checksum mismatch in the *last* record is a write that was in flight when the
  process or machine died (a torn write leaves a prefix of the right bytes, or zeros). Its
  ``put`` never returned, so nobody was acked on it: the caller drops it with a warning and
  truncates the file back to the last good record (:attr:`Scan.end`).
* Anything else (a record head whose own checksum fails, a payload checksum mismatch before
  the last record, an impossible length, an unknown record kind) means the disk content is
  not what we wrote. Guessing would hand out wrong offsets (lost or duplicated
  transactions), so reading stops with :class:`OffsetFileCorrupt` naming the file and the
  byte offset.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from electric.offsets.errors import OffsetFileCorrupt
from electric.offsets.records import (
    HEADER_SIZE,
    REC_HEAD,
    REC_HEAD_SIZE,
    check_header,
)


class Scan:
    """The records of ``data`` (a whole file, header included), in file order.

    A length field over ``max_record_size`` is corruption (``ServiceLimits``). Iterate for
    ``(position, payload)`` pairs; once done, :attr:`end` is where the good
    records end and :attr:`torn` says why anything after it is a torn write (``None``: the
    file ends with a complete record). Raises :class:`OffsetFileCorrupt` on damage.
    """

    def __init__(self, data: bytes, path: str, max_record_size: int) -> None:
        check_header(data, path)
        self.data = data
        self.path = path
        self.max_record_size = max_record_size
        self.end = len(data)
        self.torn: str | None = None

    def __iter__(self) -> Iterator[tuple[int, memoryview]]:
        buf = memoryview(self.data)
        pos = HEADER_SIZE
        end = len(self.data)
        while pos < end:
            if end - pos < REC_HEAD_SIZE:
                self._torn_at(pos, "incomplete record header")
                return
            length, crc, head_crc = REC_HEAD.unpack_from(buf, pos)
            body_end = pos + REC_HEAD_SIZE + length
            if zlib.crc32(buf[pos : pos + 8]) != head_crc:
                if not any(buf[pos:]):
                    self._torn_at(pos, "zero-filled tail")
                    return
                raise OffsetFileCorrupt(self.path, pos, "record head checksum mismatch")
            if length == 0 or length > self.max_record_size:
                raise OffsetFileCorrupt(self.path, pos, f"impossible record length {length}")
            if body_end > end:
                self._torn_at(pos, "record extends past end of file")
                return
            if zlib.crc32(buf[pos + REC_HEAD_SIZE : body_end]) != crc:
                if body_end != end:
                    raise OffsetFileCorrupt(self.path, pos, "record checksum mismatch")
                self._torn_at(pos, "checksum mismatch in last record")
                return
            yield pos, buf[pos + REC_HEAD_SIZE : body_end]
            pos = body_end

    def _torn_at(self, pos: int, reason: str) -> None:
        self.end = pos
        self.torn = reason
