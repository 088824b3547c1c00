"""Append-only, checksummed, fsynced offset file (``OFFSET_STORAGE_FILE``).

What it stores (docs/protocols.md §5 and §2.5):

* per Satellite client: the opaque ``SatOpBegin.lsn`` of the last client transaction that is
  durably in Vaxine. Electric acks the client (``SatPingResp{lsn}``) only after
  :meth:`OffsetStore.put_satellite_lsn` has returned, so that ``put`` is the durability point.
* per Postgres subscriber slot: one ``synthetic pg LSN -> Vaxine offset`` mapping per transaction
  sent, so a reconnecting subscriber resumes right after the last transaction it applied.

Why a hand-rolled log and not SQLite/dbm: the write pattern is tiny appends that must be
durable one by one; an append + one ``fsync`` is the cheapest durable write there is, and the
whole live state fits in memory, so an in-memory index answers every lookup without touching
the disk. The file is only read once, at open.

File layout (all integers big-endian)::

    header  = magic "ELOFFSET" (8) | u16 version | u16 reserved (0) | u32 crc32(first 12 bytes)
    record  = u32 payload length | u32 crc32(payload) | u32 crc32(previous 8 bytes) | payload
    payload = u8 kind | kind-specific body
      kind 1 SATELLITE_LSN  u16 len, client_id utf-8, lsn bytes (rest)
      kind 2 PG_MAPPINGS    u16 len, slot utf-8, u32 count, count x (u64 lsn, u32 len, offset)
      kind 3 PG_GC          u16 len, slot utf-8, u64 keep_from  (drop mappings with lsn < it)

Recovery rules at open:

* A record that runs past the end of the file (with an intact head), a zero-filled tail, or a
  payload checksum mismatch in the *last* record is a write that was in flight when the process
  or machine died (a torn write leaves a prefix of the right bytes, or zeros). Its
  ``put`` never returned, so nobody was acked on it: it is dropped with a warning and the file
  is truncated back to the last good record.
* Anything else (a record head whose own checksum fails, a payload checksum mismatch before
  the last record, an impossible length, an unknown record kind) means the disk content is not what we wrote. Guessing would hand out wrong
  offsets (lost or duplicated transactions), so start-up stops with :class:`OffsetFileCorrupt`
  naming the file and the byte offset.

Compaction rewrites only the live records to a temporary file, fsyncs it, renames it over the
old file and fsyncs the directory, so at every instant either the old or the new file is the
complete state. A leftover temporary file (crash before the rename) is deleted at open.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import gevent
from gevent.exceptions import LoopExit
from gevent.lock import RLock
from loguru import logger

__all__ = [
    "OffsetStore",
    "OffsetFileError",
    "OffsetFileCorrupt",
    "OffsetFileVersionError",
    "OffsetFileLocked",
    "FORMAT_VERSION",
]

MAGIC = b"ELOFFSET"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">8sHHI")
HEADER_SIZE = _HEADER.size  # 16
# The record head carries its own checksum so a damaged *length* is recognised as damage
# instead of looking like a record that runs past the end of the file (a torn write).
_REC_HEAD = struct.Struct(">III")
REC_HEAD_SIZE = _REC_HEAD.size  # 12
# A single record is never anywhere near this; a larger length field is corruption, and the
# cap keeps a garbage length from making us allocate gigabytes.
MAX_RECORD_SIZE = 16 * 1024 * 1024

KIND_SATELLITE_LSN = 1
KIND_PG_MAPPINGS = 2
KIND_PG_GC = 3

TEMP_SUFFIX = ".compact.tmp"

_log = logger.bind(origin="offsets")


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


class _Malformed(Exception):
    """Internal: a checksummed payload that does not decode."""


def _header_bytes(version: int = FORMAT_VERSION) -> bytes:
    head = struct.pack(">8sHH", MAGIC, version, 0)
    return head + struct.pack(">I", zlib.crc32(head))


def _frame(payload: bytes) -> bytes:
    head = struct.pack(">II", len(payload), zlib.crc32(payload))
    return head + struct.pack(">I", zlib.crc32(head)) + payload


def _enc_name(name: str) -> bytes:
    raw = name.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("name longer than 65535 bytes")
    return struct.pack(">H", len(raw)) + raw


def _encode_satellite(client_id: str, lsn: bytes) -> bytes:
    return bytes([KIND_SATELLITE_LSN]) + _enc_name(client_id) + bytes(lsn)


def _encode_pg_mappings(slot: str, entries: list[tuple[int, bytes]]) -> bytes:
    parts = [bytes([KIND_PG_MAPPINGS]), _enc_name(slot), struct.pack(">I", len(entries))]
    for lsn, off in entries:
        if not 0 <= lsn < 1 << 64:
            raise ValueError(f"lsn out of range: {lsn}")
        parts.append(struct.pack(">QI", lsn, len(off)))
        parts.append(bytes(off))
    return b"".join(parts)


def _encode_pg_gc(slot: str, keep_from: int) -> bytes:
    return bytes([KIND_PG_GC]) + _enc_name(slot) + struct.pack(">Q", keep_from)


def _dec_name(buf: memoryview, pos: int) -> tuple[str, int]:
    if pos + 2 > len(buf):
        raise _Malformed("truncated name length")
    (n,) = struct.unpack_from(">H", buf, pos)
    pos += 2
    if pos + n > len(buf):
        raise _Malformed("truncated name")
    try:
        return bytes(buf[pos : pos + n]).decode("utf-8"), pos + n
    except UnicodeDecodeError as exc:
        raise _Malformed("name is not utf-8") from exc


@dataclass
class _Slot:
    """Sorted parallel lists: ``lsns[i] -> offsets[i]`` (bisect on ``lsns``)."""

    lsns: list[int] = field(default_factory=list)
    offsets: list[bytes] = field(default_factory=list)


def _pg_entry_size(off: bytes) -> int:
    return 12 + len(off)


class OffsetStore:
    """The offset file plus its in-memory index. Greenlet-safe (one gevent ``RLock``).

    Every ``put_*`` method returns only after the record is written *and* fsynced.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        compact_ratio: float = 4.0,
        compact_min_bytes: int = 1 << 20,
        sync_in_threadpool: bool = True,
    ) -> None:
        """Open (creating if missing) and load the file.

        Compaction runs automatically after a put once the file is larger than both
        ``compact_min_bytes`` and ``compact_ratio`` × the size of its live records.

        ``sync_in_threadpool``: run each put's ``fsync`` in gevent's thread pool. The calling
        greenlet still waits for it (the put stays the durability point), but the hub keeps
        running meanwhile: done inline, every fsync froze the whole process (≈ a third of
        Electric's time at 200 single-row tx/s, see bench/results), and the publisher's queue
        could not fill up behind it, so its batches stayed at one transaction and each cost
        one more fsync.

        Raises :class:`OffsetFileCorrupt` (or its subclass :class:`OffsetFileVersionError`)
        when the file cannot be trusted, :class:`OffsetFileLocked` when another process has it.
        """
        self.path = os.fspath(path)
        self.compact_ratio = compact_ratio
        self.compact_min_bytes = compact_min_bytes
        self.sync_in_threadpool = sync_in_threadpool
        self._lock = RLock()
        self._fd: int | None = None
        self._size = 0
        self._broken: BaseException | None = None
        self._satellite: dict[str, bytes] = {}
        self._slots: dict[str, _Slot] = {}
        # Running estimate of the bytes a compacted file would need; drives auto-compaction.
        self._live_bytes = HEADER_SIZE
        # Test hook: called with a stage name during compaction ("temp_written", "renamed").
        self._compaction_hook: Callable[[str], None] | None = None
        try:
            self._open()
        except OSError as exc:
            # Missing permissions, a read-only disk, a directory in the way...: one clear line
            # for the operator instead of a traceback.
            raise OffsetFileError(
                f"cannot open offset file {self.path}: {exc.strerror or exc}"
            ) from exc

    # ------------------------------------------------------------------ open / load

    def _open(self) -> None:
        tmp = self.path + TEMP_SUFFIX
        if os.path.exists(tmp):
            # The rename never happened, so the main file is the complete old state.
            _log.warning("removing unfinished compaction file {}", tmp)
            os.unlink(tmp)
        if not os.path.exists(self.path):
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
            self._create_empty()
        fd = os.open(self.path, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OffsetFileLocked(
                        f"offset file {self.path} is in use by another process"
                    ) from None
                raise
            self._fd = fd
            self._load()
        except BaseException:
            self._fd = None
            os.close(fd)
            raise

    def _create_empty(self) -> None:
        # Created by rename so a crash can never leave a half-written header behind.
        self._atomic_write(_header_bytes())

    def _read_all(self) -> bytes:
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        chunks = []
        pos = 0
        while pos < size:
            chunk = os.pread(self._fd, min(size - pos, 1 << 20), pos)
            if not chunk:
                break
            chunks.append(chunk)
            pos += len(chunk)
        return b"".join(chunks)

    def _load(self) -> None:
        data = self._read_all()
        if len(data) == 0:
            # Someone touched an empty file: treat as a fresh store.
            self._write_at(0, _header_bytes())
            os.fsync(self._fd)
            data = self._read_all()
        self._check_header(data)
        buf = memoryview(data)
        pos = HEADER_SIZE
        end = len(data)
        while pos < end:
            torn_reason = None
            if end - pos < REC_HEAD_SIZE:
                torn_reason = "incomplete record header"
            else:
                length, crc, head_crc = _REC_HEAD.unpack_from(buf, pos)
                body_end = pos + REC_HEAD_SIZE + length
                if zlib.crc32(buf[pos : pos + 8]) != head_crc:
                    if not any(buf[pos:]):
                        torn_reason = "zero-filled tail"
                    else:
                        raise OffsetFileCorrupt(self.path, pos, "record head checksum mismatch")
                elif length == 0 or length > MAX_RECORD_SIZE:
                    raise OffsetFileCorrupt(self.path, pos, f"impossible record length {length}")
                elif body_end > end:
                    torn_reason = "record extends past end of file"
                elif zlib.crc32(buf[pos + REC_HEAD_SIZE : body_end]) != crc:
                    if body_end == end:
                        torn_reason = "checksum mismatch in last record"
                    else:
                        raise OffsetFileCorrupt(self.path, pos, "record checksum mismatch")
            if torn_reason is not None:
                _log.warning(
                    "offset file {}: dropping incomplete last record at byte {} ({}, {} bytes)",
                    self.path,
                    pos,
                    torn_reason,
                    end - pos,
                )
                os.ftruncate(self._fd, pos)
                os.fsync(self._fd)
                end = pos
                break
            try:
                self._apply(buf[pos + REC_HEAD_SIZE : body_end])
            except _Malformed as exc:
                raise OffsetFileCorrupt(self.path, pos, str(exc)) from None
            pos = body_end
        self._size = end
        _log.info(
            "offset file {} loaded: {} bytes, {} satellite clients, {} pg slots",
            self.path,
            end,
            len(self._satellite),
            len(self._slots),
        )

    def _check_header(self, data: bytes) -> None:
        if len(data) < HEADER_SIZE:
            raise OffsetFileVersionError(
                self.path, 0, f"file is {len(data)} bytes, shorter than the header"
            )
        magic, version, _reserved, crc = _HEADER.unpack_from(data, 0)
        if magic != MAGIC:
            raise OffsetFileVersionError(
                self.path, 0, f"not an Electric offset file (magic {magic!r})"
            )
        if zlib.crc32(data[:12]) != crc:
            raise OffsetFileCorrupt(self.path, 0, "header checksum mismatch")
        if version != FORMAT_VERSION:
            raise OffsetFileVersionError(
                self.path,
                0,
                f"unsupported format version {version} (this build reads {FORMAT_VERSION})",
            )

    def _apply(self, payload: memoryview) -> None:
        """Replay one record into the in-memory index (used at load and after each put)."""
        kind = payload[0]
        if kind == KIND_SATELLITE_LSN:
            client_id, pos = _dec_name(payload, 1)
            self._set_satellite(client_id, bytes(payload[pos:]))
        elif kind == KIND_PG_MAPPINGS:
            slot, pos = _dec_name(payload, 1)
            if pos + 4 > len(payload):
                raise _Malformed("truncated mapping count")
            (count,) = struct.unpack_from(">I", payload, pos)
            pos += 4
            entries = []
            for _ in range(count):
                if pos + 12 > len(payload):
                    raise _Malformed("truncated mapping entry")
                lsn, n = struct.unpack_from(">QI", payload, pos)
                pos += 12
                if pos + n > len(payload):
                    raise _Malformed("truncated vaxine offset")
                entries.append((lsn, bytes(payload[pos : pos + n])))
                pos += n
            if pos != len(payload):
                raise _Malformed("trailing bytes after mappings")
            self._add_mappings(slot, entries)
        elif kind == KIND_PG_GC:
            slot, pos = _dec_name(payload, 1)
            if pos + 8 != len(payload):
                raise _Malformed("bad gc record length")
            (keep_from,) = struct.unpack_from(">Q", payload, pos)
            self._drop_before(slot, keep_from)
        else:
            raise _Malformed(f"unknown record kind {kind}")

    # ------------------------------------------------------------------ index updates

    def _set_satellite(self, client_id: str, lsn: bytes) -> None:
        old = self._satellite.get(client_id)
        if old is None:
            self._live_bytes += REC_HEAD_SIZE + len(_encode_satellite(client_id, b""))
        else:
            self._live_bytes -= len(old)
        self._live_bytes += len(lsn)
        self._satellite[client_id] = lsn

    def _add_mappings(self, slot: str, entries: Iterable[tuple[int, bytes]]) -> None:
        s = self._slots.get(slot)
        if s is None:
            s = self._slots[slot] = _Slot()
            # One PG_MAPPINGS record per slot after compaction.
            self._live_bytes += REC_HEAD_SIZE + len(_encode_pg_mappings(slot, []))
        for lsn, off in entries:
            if s.lsns and lsn <= s.lsns[-1]:
                # A mapping at or below the newest one means the publisher re-numbered from an
                # older subscriber position: everything from there on belongs to an abandoned
                # numbering and would map LSNs to the wrong transactions.
                cut = bisect.bisect_left(s.lsns, lsn)
                for dropped in s.offsets[cut:]:
                    self._live_bytes -= _pg_entry_size(dropped)
                del s.lsns[cut:]
                del s.offsets[cut:]
            s.lsns.append(lsn)
            s.offsets.append(off)
            self._live_bytes += _pg_entry_size(off)

    def _drop_before(self, slot: str, keep_from: int) -> int:
        s = self._slots.get(slot)
        if s is None:
            return 0
        cut = bisect.bisect_left(s.lsns, keep_from)
        for dropped in s.offsets[:cut]:
            self._live_bytes -= _pg_entry_size(dropped)
        del s.lsns[:cut]
        del s.offsets[:cut]
        return cut

    # ------------------------------------------------------------------ disk writes

    def _write_at(self, pos: int, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, pos)
            view = view[n:]
            pos += n

    def _fsync(self) -> tuple[BaseException | None, BaseException | None]:
        """fsync the file, off the gevent hub when configured (callers hold ``_lock``).

        Returns ``(failure, kill)``: what the fsync itself raised, and a kill (``GreenletExit``,
        a ``gevent.Timeout``...) that arrived while waiting for it, which the caller re-raises
        once its bookkeeping is done. The record is already in the file by then, so abandoning
        the wait would leave memory disagreeing with the disk; an fsync is short, so waiting it
        out on a kill costs little and leaves the interrupted put complete and durable.
        """
        if not self.sync_in_threadpool:
            try:
                os.fsync(self._fd)
            except Exception as exc:
                return exc, None
            return None, None
        kill: BaseException | None = None
        result = None
        try:
            # ``os.fsync`` looked up at call time: tests patch it.
            result = gevent.get_hub().threadpool.spawn(os.fsync, self._fd)
            result.wait()
        except BaseException as exc:
            kill = exc
        while result is not None and not result.ready():
            if isinstance(kill, LoopExit):
                break  # the hub cannot deliver the result: never spin on it
            try:
                result.wait()
            except BaseException as exc:  # killed again: keep waiting, re-raise the first
                if kill is None:
                    kill = exc
        if result is not None and result.ready():
            return result.exception, kill
        # Killed while waiting for a free pool thread (nothing is syncing yet), or the wait
        # cannot finish: sync inline. A record left unsynced would let a later put of the
        # same value return early, on data that may not be on disk.
        try:
            os.fsync(self._fd)
        except Exception as exc:
            return exc, kill
        return None, kill

    def _check_usable(self) -> None:
        if self._fd is None:
            raise OffsetFileError(f"offset file {self.path} is closed")
        if self._broken is not None:
            raise OffsetFileError(
                f"offset file {self.path} is unusable after a failed write: {self._broken}"
            )

    def _undo_append(self, start: int, exc: BaseException, *, io_failure: bool) -> None:
        """Cut a failed append off the file; mark the store unusable if that is not enough.

        A partial record left in place would turn into "corruption in the middle" as soon as
        another record is appended after it. After a failed write or fsync (an ``OSError``)
        the page cache state is unknown (the kernel may have dropped dirty pages): refuse
        further writes rather than ack on data that may not be on disk. Anything else (not
        ``io_failure``) can only have struck inside the write itself; once the cut succeeds
        the file is as before.
        """
        failure: BaseException | None = exc if io_failure else None
        try:
            os.ftruncate(self._fd, start)
        except OSError as cut_exc:
            failure = failure or cut_exc
        if failure is not None:
            self._broken = failure
            _log.error("offset file {} write failed: {}", self.path, failure)

    def _append(
        self, payloads: list[bytes], on_stored: Callable[[], None], *, sync: bool = True
    ) -> None:
        """Append framed records, fsync, then run ``on_stored`` (the in-memory index update).

        On a write or fsync failure the file is put back as it was and ``on_stored`` is not
        run. A kill while waiting for the fsync does not cut the put short (see
        :meth:`_fsync`): the put completes, ``on_stored`` runs, then the kill is re-raised, so
        ``_size`` and the index always describe exactly what is in the file.
        """
        self._check_usable()
        for p in payloads:
            if len(p) > MAX_RECORD_SIZE:
                raise ValueError("offset record too large")
        blob = b"".join(_frame(p) for p in payloads)
        start = self._size
        try:
            self._write_at(start, blob)
        except BaseException as exc:
            self._undo_append(start, exc, io_failure=isinstance(exc, OSError))
            raise
        failure = kill = None
        if sync:
            failure, kill = self._fsync()
        if failure is not None:
            # An I/O failure whatever its type: the data may not be on disk.
            self._undo_append(start, failure, io_failure=True)
            if kill is not None:
                raise kill from failure
            raise failure
        self._size = start + len(blob)
        on_stored()
        if kill is not None:
            raise kill

    def _atomic_write(self, data: bytes, *, keep_open: bool = False) -> int | None:
        """Write ``data`` as the whole new content of ``self.path``, crash-atomically.

        With ``keep_open`` the new file's descriptor is returned already ``flock``-ed, so the
        lock never lapses while the old file is swapped out.
        """
        tmp = self.path + TEMP_SUFFIX
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        renamed = False
        try:
            if keep_open:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            view = memoryview(data)
            pos = 0
            while view:
                n = os.pwrite(fd, view, pos)
                view = view[n:]
                pos += n
            os.fsync(fd)
            self._hook("temp_written")
            os.replace(tmp, self.path)
            renamed = True
            self._hook("renamed")
            self._fsync_dir()
        except BaseException as exc:
            os.close(fd)
            if renamed:
                # Our append descriptor now points at the replaced inode: appending there
                # would silently lose records, so refuse further writes.
                self._broken = exc
            if os.path.exists(tmp):
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            raise
        if keep_open:
            return fd
        os.close(fd)
        return None

    def _fsync_dir(self) -> None:
        dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _hook(self, stage: str) -> None:
        if self._compaction_hook is not None:
            self._compaction_hook(stage)

    def _maybe_compact(self) -> None:
        if (
            self._size > self.compact_min_bytes
            and self._size > self.compact_ratio * self._live_bytes
        ):
            self.compact()

    # ------------------------------------------------------------------ public API

    def close(self) -> None:
        """Release the file (and its lock). Idempotent."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> OffsetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def file_size(self) -> int:
        """Bytes currently in the file (header included)."""
        return self._size

    @property
    def live_bytes(self) -> int:
        """Approximate size the file would have right after a compaction."""
        return self._live_bytes

    # Satellite -----------------------------------------------------------------

    def get_satellite_lsn(self, client_id: str) -> bytes | None:
        """The last durably stored lsn of a Satellite client, or ``None`` if never stored."""
        with self._lock:
            return self._satellite.get(client_id)

    def put_satellite_lsn(self, client_id: str, lsn: bytes) -> None:
        """Store a client's lsn; returns once it is fsynced (the point the client may be acked)."""
        with self._lock:
            if self._satellite.get(client_id) == lsn:
                return  # already durable
            value = bytes(lsn)
            payload = _encode_satellite(client_id, value)
            self._append([payload], lambda: self._set_satellite(client_id, value))
            self._maybe_compact()

    # Postgres subscribers ------------------------------------------------------

    def put_pg_mapping(self, slot: str, lsn: int, vx_offset: bytes) -> None:
        """Record that the transaction ending at pg ``lsn`` on ``slot`` is Vaxine ``vx_offset``.

        An ``lsn`` at or below the newest stored one discards the stored mappings from that
        ``lsn`` upwards (the publisher is re-numbering from an older position).
        """
        self.put_pg_mappings(slot, [(lsn, vx_offset)])

    def put_pg_mappings(self, slot: str, entries: Iterable[tuple[int, bytes]]) -> None:
        """Batch variant of :meth:`put_pg_mapping`: one record, one fsync."""
        items = [(int(lsn), bytes(off)) for lsn, off in entries]
        if not items:
            return
        with self._lock:
            payload = _encode_pg_mappings(slot, items)
            self._append([payload], lambda: self._add_mappings(slot, items))
            self._maybe_compact()

    def get_pg_offset_at_or_before(self, slot: str, lsn: int) -> tuple[int, bytes] | None:
        """The mapping with the largest stored lsn ``<= lsn`` for ``slot``, or ``None``.

        ``None`` while :meth:`last_pg_mapping` is not ``None`` means every stored mapping is
        newer than ``lsn`` (a subscriber behind what was garbage-collected): the caller must
        not silently treat that like a brand-new subscriber.
        """
        with self._lock:
            s = self._slots.get(slot)
            if s is None:
                return None
            i = bisect.bisect_right(s.lsns, lsn) - 1
            if i < 0:
                return None
            return s.lsns[i], s.offsets[i]

    def last_pg_mapping(self, slot: str) -> tuple[int, bytes] | None:
        """The newest mapping of ``slot`` (highest lsn), or ``None``."""
        with self._lock:
            s = self._slots.get(slot)
            if s is None or not s.lsns:
                return None
            return s.lsns[-1], s.offsets[-1]

    def gc_pg_mappings(self, slot: str, confirmed_lsn: int) -> int:
        """Forget mappings of ``slot`` older than the newest one ``<= confirmed_lsn``.

        ``confirmed_lsn`` must be a position the subscriber can never ask to start below:
        the LSN of its ``START_REPLICATION`` (its replication origin, which never moves
        backwards) — *not* the ``flushed`` of a status update, which runs ahead of the origin
        after transactions that wrote nothing locally (docs/protocols.md §2.5). Only the
        mapping at-or-before that position, and newer ones, can then ever be looked up again.
        Returns the number of entries dropped. The GC record is not fsynced on its own:
        losing it only brings back harmless old entries, and the next put's fsync covers it.
        """
        with self._lock:
            s = self._slots.get(slot)
            if s is None:
                return 0
            i = bisect.bisect_right(s.lsns, confirmed_lsn) - 1
            if i <= 0:
                return 0
            keep_from = s.lsns[i]
            dropped = 0

            def drop() -> None:
                nonlocal dropped
                dropped = self._drop_before(slot, keep_from)

            self._append([_encode_pg_gc(slot, keep_from)], drop, sync=False)
            self._maybe_compact()
            return dropped

    def pg_slots(self) -> list[str]:
        """Slots that have at least one mapping."""
        with self._lock:
            return [name for name, s in self._slots.items() if s.lsns]

    # Maintenance ---------------------------------------------------------------

    def compact(self) -> None:
        """Rewrite the file with only the live records (atomic: temp, fsync, rename, fsync dir)."""
        with self._lock:
            self._check_usable()
            parts = [_header_bytes()]
            for client_id, lsn in self._satellite.items():
                parts.append(_frame(_encode_satellite(client_id, lsn)))
            for slot, s in self._slots.items():
                if s.lsns:
                    parts.append(
                        _frame(_encode_pg_mappings(slot, list(zip(s.lsns, s.offsets, strict=True))))
                    )
            data = b"".join(parts)
            old_size = self._size
            new_fd = self._atomic_write(data, keep_open=True)
            assert self._fd is not None and new_fd is not None
            # The old descriptor points at the replaced (unlinked) inode.
            os.close(self._fd)
            self._fd = new_fd
            self._size = len(data)
            self._live_bytes = len(data)
            for slot in [name for name, s in self._slots.items() if not s.lsns]:
                del self._slots[slot]
            _log.info("offset file {} compacted: {} -> {} bytes", self.path, old_size, len(data))
