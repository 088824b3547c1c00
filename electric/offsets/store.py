"""The offset store: the file plus its in-memory index, greenlet-safe. I/O shell.

Every ``put_*`` returns only after its record is written *and* fsynced. At open the file is
read back by :mod:`electric.offsets.recovery` (a torn last record is cut off, damage stops
start-up) into an :class:`~electric.offsets.index.OffsetIndex`.

Compaction rewrites only the live records to a temporary file, fsyncs it, renames it over the
old file and fsyncs the directory, so at every instant either the old or the new file is the
complete state. A leftover temporary file (crash before the rename) is deleted at open.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterable

from gevent.lock import RLock
from loguru import logger

from electric.limits import DEFAULT, ServiceLimits
from electric.offsets import disk
from electric.offsets.errors import Malformed, OffsetFileCorrupt, OffsetFileError
from electric.offsets.index import OffsetIndex
from electric.offsets.records import (
    encode_pg_gc,
    encode_pg_mappings,
    encode_satellite,
    frame,
    header_bytes,
)
from electric.offsets.recovery import Scan

TEMP_SUFFIX = ".compact.tmp"

_log = logger.bind(origin="offsets")


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
        limits: ServiceLimits = DEFAULT.service,
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
        self.max_record_size = limits.offsets_max_record_size
        self._lock = RLock()
        self._fd: int | None = None
        self._size = 0
        self._broken: BaseException | None = None
        self._index = OffsetIndex()
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
            disk.lock(fd, self.path)
            self._fd = fd
            self._load()
        except BaseException:
            self._fd = None
            os.close(fd)
            raise

    def _create_empty(self) -> None:
        # Created by rename so a crash can never leave a half-written header behind.
        self._atomic_write(header_bytes())

    def _load(self) -> None:
        assert self._fd is not None
        data = disk.read_all(self._fd)
        if len(data) == 0:
            # Someone touched an empty file: treat as a fresh store.
            disk.write_at(self._fd, 0, header_bytes())
            os.fsync(self._fd)
            data = disk.read_all(self._fd)
        scan = Scan(data, self.path, self.max_record_size)
        for pos, payload in scan:
            try:
                self._index.apply(payload)
            except Malformed as exc:
                raise OffsetFileCorrupt(self.path, pos, str(exc)) from None
        if scan.torn is not None:
            _log.warning(
                "offset file {}: dropping incomplete last record at byte {} ({}, {} bytes)",
                self.path,
                scan.end,
                scan.torn,
                len(data) - scan.end,
            )
            os.ftruncate(self._fd, scan.end)
            os.fsync(self._fd)
        self._size = scan.end
        _log.info(
            "offset file {} loaded: {} bytes, {} satellite clients, {} pg slots",
            self.path,
            scan.end,
            len(self._index.satellite),
            len(self._index.slots),
        )

    # ------------------------------------------------------------------ disk writes

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
        ``disk.fsync``): the put completes, ``on_stored`` runs, then the kill is re-raised, so
        ``_size`` and the index always describe exactly what is in the file.
        """
        self._check_usable()
        for p in payloads:
            if len(p) > self.max_record_size:
                raise ValueError("offset record too large")
        blob = b"".join(frame(p) for p in payloads)
        start = self._size
        try:
            disk.write_at(self._fd, start, blob)
        except BaseException as exc:
            self._undo_append(start, exc, io_failure=isinstance(exc, OSError))
            raise
        failure = kill = None
        if sync:
            # See disk.fsync: a kill while waiting does not cut the put short.
            failure, kill = disk.fsync(self._fd, self.sync_in_threadpool)
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
            disk.write_at(fd, 0, data)
            os.fsync(fd)
            self._hook("temp_written")
            os.replace(tmp, self.path)
            renamed = True
            self._hook("renamed")
            disk.fsync_dir(self.path)
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

    def _hook(self, stage: str) -> None:
        if self._compaction_hook is not None:
            self._compaction_hook(stage)

    def _maybe_compact(self) -> None:
        if (
            self._size > self.compact_min_bytes
            and self._size > self.compact_ratio * self._index.live_bytes
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
        return self._index.live_bytes

    # Satellite -----------------------------------------------------------------

    def get_satellite_lsn(self, client_id: str) -> bytes | None:
        """The last durably stored lsn of a Satellite client, or ``None`` if never stored."""
        with self._lock:
            return self._index.satellite.get(client_id)

    def put_satellite_lsn(self, client_id: str, lsn: bytes) -> None:
        """Store a client's lsn; returns once it is fsynced (the point the client may be acked)."""
        with self._lock:
            if self._index.satellite.get(client_id) == lsn:
                return  # already durable
            value = bytes(lsn)
            payload = encode_satellite(client_id, value)
            self._append([payload], lambda: self._index.set_satellite(client_id, value))
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
            payload = encode_pg_mappings(slot, items)
            self._append([payload], lambda: self._index.add_mappings(slot, items))
            self._maybe_compact()

    def get_pg_offset_at_or_before(self, slot: str, lsn: int) -> tuple[int, bytes] | None:
        """The mapping with the largest stored lsn ``<= lsn`` for ``slot``, or ``None``.

        ``None`` while :meth:`last_pg_mapping` is not ``None`` means every stored mapping is
        newer than ``lsn`` (a subscriber behind what was garbage-collected): the caller must
        not silently treat that like a brand-new subscriber.
        """
        with self._lock:
            return self._index.at_or_before(slot, lsn)

    def last_pg_mapping(self, slot: str) -> tuple[int, bytes] | None:
        """The newest mapping of ``slot`` (highest lsn), or ``None``."""
        with self._lock:
            return self._index.last(slot)

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
            keep_from = self._index.gc_point(slot, confirmed_lsn)
            if keep_from is None:
                return 0
            dropped = 0

            def drop() -> None:
                nonlocal dropped
                dropped = self._index.drop_before(slot, keep_from)

            self._append([encode_pg_gc(slot, keep_from)], drop, sync=False)
            self._maybe_compact()
            return dropped

    def pg_slots(self) -> list[str]:
        """Slots that have at least one mapping."""
        with self._lock:
            return self._index.slot_names()

    # Maintenance ---------------------------------------------------------------

    def compact(self) -> None:
        """Rewrite the file with only the live records (atomic: temp, fsync, rename, fsync dir)."""
        with self._lock:
            self._check_usable()
            data = self._index.compacted()
            old_size = self._size
            new_fd = self._atomic_write(data, keep_open=True)
            assert self._fd is not None and new_fd is not None
            # The old descriptor points at the replaced (unlinked) inode.
            os.close(self._fd)
            self._fd = new_fd
            self._size = len(data)
            self._index.compacted_to(len(data))
            _log.info("offset file {} compacted: {} -> {} bytes", self.path, old_size, len(data))
