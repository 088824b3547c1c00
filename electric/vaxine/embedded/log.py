"""Durable append-only transaction log of the embedded Vaxine.

File layout: a sequence of records ``<u32 length><u32 crc32(payload)><payload>``. A record's
byte position is its identity: the replication stream hands it to clients as the offset
``{L, R}``. Nothing is ever rewritten, so offsets stay valid forever, across restarts.

Durability: :meth:`append` only buffers; a flusher greenlet writes everything buffered in one
``write`` and one ``fdatasync`` (run in gevent's thread pool so the hub keeps serving while
the disk works), then advances :attr:`durable_end`. Commits queued while a sync runs share
the next one (group commit). Callers acknowledge a commit only after :meth:`wait_durable`,
and readers never see bytes past :attr:`durable_end`.

Recovery: :meth:`open` scans the file. A bad *last* record (an incomplete header, a record
running past the end of the file, a checksum mismatch in the final record, or a zero-filled
tail) is a write that was in flight when the process or machine died: its sync never
completed, so it was never acknowledged; it is dropped with a warning and the file is
truncated there. A bad record with an intact record anywhere after it cannot be a torn write
(the disk content is not what we wrote): truncating there would delete acknowledged commits,
so :meth:`open` raises :class:`LogCorrupt` and leaves the file untouched for an operator.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator

import gevent
from gevent.event import Event
from loguru import logger

_HEADER = struct.Struct(">II")
HEADER_SIZE = _HEADER.size
# A single record larger than this is refused on append and treated as corruption on read.
MAX_RECORD = 256 * 1024 * 1024
_READ_CHUNK = 1 << 20

log = logger.bind(origin="vaxine_log")


class LogError(RuntimeError):
    pass


class LogCorrupt(LogError):
    """The log holds damaged records followed by intact ones: start-up must stop.

    ``path``, ``offset`` (byte position of the first bad record) and ``reason`` are
    attributes; ``str()`` is one line for the operator. The file is left unchanged.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"transaction log {path} is corrupt at byte {offset}: {reason}")


# Tail analysis bounds (see _classify_bad_tail): how much of the file after a bad record is
# searched for an intact record, and how many payload bytes may be checksummed doing it. A
# torn write is at most the last group-commit batch, far below both; beyond them we refuse to
# guess and report corruption (stopping is recoverable, truncating acknowledged data is not).
_TAIL_WINDOW = 2 * MAX_RECORD + 2 * HEADER_SIZE
_TAIL_CRC_BUDGET = 256 * 1024 * 1024


def _bad_record_reason(data: bytes | memoryview, at: int) -> str | None:
    """Why the record at ``at`` in ``data`` (which ends at end of file) is not intact."""
    if len(data) - at < HEADER_SIZE:
        return "incomplete record header"
    length, crc = _HEADER.unpack_from(data, at)
    if length == 0:
        return "zero record length"
    if length > MAX_RECORD:
        return f"impossible record length {length}"
    end = at + HEADER_SIZE + length
    if end > len(data):
        return "record extends past end of file"
    if zlib.crc32(data[at + HEADER_SIZE : end]) != crc:
        return "checksum mismatch"
    return None


def _find_intact_record(tail: bytes, start: int) -> int | None:
    """First position >= ``start`` in ``tail`` where an intact record begins, else None.

    Raises ``_BudgetExceeded`` when the search would checksum too many bytes.
    """
    budget = _TAIL_CRC_BUDGET
    view = memoryview(tail)
    size = len(tail)
    unpack = _HEADER.unpack_from
    for p in range(start, size - HEADER_SIZE):
        length, crc = unpack(view, p)
        if length == 0 or length > MAX_RECORD or p + HEADER_SIZE + length > size:
            continue
        budget -= length
        if budget < 0:
            raise _BudgetExceeded
        if zlib.crc32(view[p + HEADER_SIZE : p + HEADER_SIZE + length]) == crc:
            return p
    return None


class _BudgetExceeded(Exception):
    pass


def _is_zero(fd: int, pos: int, size: int) -> bool:
    while pos < size:
        chunk = os.pread(fd, min(_READ_CHUNK, size - pos), pos)
        if not chunk:
            return True
        if chunk.count(0) != len(chunk):
            return False
        pos += len(chunk)
    return True


def _classify_bad_tail(path: str, fd: int, pos: int, size: int, reason: str) -> str:
    """Decide whether the bad record at ``pos`` is a torn tail (returns the reason to log)
    or corruption (raises :class:`LogCorrupt`)."""
    if _is_zero(fd, pos, size):
        return "zero-filled tail"
    remaining = size - pos
    if remaining > _TAIL_WINDOW:
        raise LogCorrupt(path, pos, f"{reason}, with {remaining} bytes after it")
    tail = os.pread(fd, remaining, pos)
    try:
        found = _find_intact_record(tail, 1)
    except _BudgetExceeded:
        raise LogCorrupt(
            path, pos, f"{reason}; {remaining} bytes follow and could not be checked"
        ) from None
    if found is not None:
        raise LogCorrupt(path, pos, f"{reason}, followed by an intact record at byte {pos + found}")
    return reason


def frame_record(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _sync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


class TxnLog:
    def __init__(self, path: str, use_threadpool: bool = True):
        self.path = path
        self.use_threadpool = use_threadpool
        self._wfd: int | None = None
        self._rfd: int | None = None
        self.end = 0  # end of everything appended (buffered or written)
        self.durable_end = 0  # end of what is fsynced: readers stop here
        self._pending: list[bytes] = []
        self._wakeup = Event()
        self._durable = Event()  # swapped and set after every sync
        self._flusher = None
        self._failed: BaseException | None = None
        self._closed = False

    # ------------------------------------------------------------------ open / recover

    def open(self) -> Iterator[tuple[int, bytes]]:
        """Open (creating if needed) and yield every intact ``(offset, payload)`` in order.

        The caller must exhaust the iterator; a torn tail is cut when it ends. Raises
        :class:`LogCorrupt` (file untouched) when damage is followed by intact records.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            pos = 0
            reason = None
            with os.fdopen(os.dup(fd), "rb", buffering=_READ_CHUNK) as f:
                while pos < size:
                    header = f.read(HEADER_SIZE)
                    if len(header) < HEADER_SIZE:
                        reason = "incomplete record header"
                        break
                    length, crc = _HEADER.unpack(header)
                    if length == 0 or length > MAX_RECORD or pos + HEADER_SIZE + length > size:
                        reason = _bad_record_reason(header, 0) or "record extends past end of file"
                        break
                    payload = f.read(length)
                    if len(payload) != length or zlib.crc32(payload) != crc:
                        reason = "checksum mismatch"
                        break
                    yield pos, payload
                    pos += HEADER_SIZE + length
            if pos < size:
                why = _classify_bad_tail(self.path, fd, pos, size, reason or "bad record")
                log.warning(
                    f"log {self.path}: dropping incomplete last record at byte {pos} "
                    f"({why}, {size - pos} bytes)"
                )
                os.ftruncate(fd, pos)
                _sync(fd)
        except BaseException:
            os.close(fd)
            raise
        os.lseek(fd, pos, os.SEEK_SET)
        self._wfd = fd
        self._rfd = os.open(self.path, os.O_RDONLY)
        self.end = self.durable_end = pos
        self._flusher = gevent.spawn(self._flush_loop)

    # ------------------------------------------------------------------ writing

    def append(self, payload: bytes) -> int:
        """Buffer one record; returns its offset. Durable only after :meth:`wait_durable`."""
        if self._failed is not None:
            raise LogError("transaction log is unusable after a write failure") from self._failed
        if self._closed or self._wfd is None:
            raise LogError("transaction log is closed")
        if not payload:  # an empty record would frame as 8 zero bytes: a zero-filled tail
            raise LogError("empty record")
        if len(payload) > MAX_RECORD:
            raise LogError(f"record of {len(payload)} bytes exceeds {MAX_RECORD}")
        record = frame_record(payload)
        offset = self.end
        self._pending.append(record)
        self.end += len(record)
        self._wakeup.set()
        return offset

    def wait_durable(self, offset: int) -> None:
        """Block the calling greenlet until the record at ``offset`` is on disk."""
        while self.durable_end <= offset:
            if self._failed is not None:
                raise LogError("transaction log write failed") from self._failed
            if self._closed:
                raise LogError("transaction log closed before the record was synced")
            self._durable.wait()

    def _flush_loop(self) -> None:
        while True:
            self._wakeup.wait()
            self._wakeup.clear()
            if self._pending and not self._flush_pending():
                return
            if self._closed and not self._pending:
                return

    def _flush_pending(self) -> bool:
        batch, self._pending = self._pending, []
        data = b"".join(batch)
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._wfd, view)
                view = view[written:]
            if self.use_threadpool:
                gevent.get_hub().threadpool.apply(_sync, (self._wfd,))
            else:
                _sync(self._wfd)
        except Exception as exc:  # disk full, I/O failure: stop acknowledging commits
            self._failed = exc
            log.critical(f"log {self.path}: write failed, no further commits: {exc!r}")
            self._notify()
            return False
        self.durable_end += len(data)
        self._notify()
        return True

    def _notify(self) -> None:
        event, self._durable = self._durable, Event()
        event.set()

    def durable_event(self) -> Event:
        """An event set at the next durability advance (fetch it *before* checking)."""
        return self._durable

    # ------------------------------------------------------------------ reading

    def read_records(self, pos: int, max_bytes: int = _READ_CHUNK) -> list[tuple[int, bytes]]:
        """Durable records starting at ``pos`` (a record boundary), up to about ``max_bytes``."""
        limit = self.durable_end
        if pos >= limit or self._rfd is None:  # nothing new, or closed under a reader
            return []
        want = min(limit - pos, max_bytes)
        data = os.pread(self._rfd, want, pos)
        out = []
        at = 0
        while at + HEADER_SIZE <= len(data):
            length, _crc = _HEADER.unpack_from(data, at)
            end = at + HEADER_SIZE + length
            if end > len(data):
                if at == 0:  # one record bigger than max_bytes: read it whole
                    data = os.pread(self._rfd, HEADER_SIZE + length, pos)
                    out.append((pos, data[HEADER_SIZE:]))
                break
            out.append((pos + at, data[at + HEADER_SIZE : end]))
            at = end
        return out

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wakeup.set()
        if self._flusher is not None:
            self._flusher.join(timeout=10)
        self._notify()
        for fd in (self._wfd, self._rfd):
            if fd is not None:
                os.close(fd)
        self._wfd = self._rfd = None
