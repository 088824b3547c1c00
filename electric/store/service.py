"""The embedded store as the rest of Electric sees it: write a transaction, stream the log.

With no ``VAXINE_HOST`` configured, Electric keeps its log in process (no sockets, no
protobuf, no Erlang terms on the data path):

* :meth:`LocalStore.write` hands a :class:`~electric.changes.Transaction` to the one writer
  greenlet and returns once it is durable. The writer takes every write waiting at that
  moment and commits them together in the thread pool (group commit: one SQLite transaction,
  one fsync), so the hub never waits on the disk and concurrent writers share syncs.
* :meth:`LocalStore.begin` opens a transaction that is written chunk by chunk, for source
  transactions too big to hold in memory; it is committed (visible, durable) at once at the
  end, or not at all.
* :meth:`LocalStore.stream` yields ``(Transaction, position)`` after a position, in commit
  order, forever (it waits for new commits). Recent transactions come from one shared,
  bounded cache filled by the writer, so every reader tailing the log gets the same decoded
  objects; older ones are read from disk. A transaction larger than a chunk reaches readers
  with lazily read changes (:class:`ChunkedChanges`).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import gevent
from gevent.event import AsyncResult, Event
from gevent.lock import Semaphore
from gevent.queue import Queue
from loguru import logger

from electric.changes import Change, Record, RelationName, Transaction, utc_now
from electric.limits import DEFAULT, StoreLimits
from electric.store.engine import ChainBroken, Engine, PrimaryKeys, TxnHead
from electric.store.merge import row_key
from electric.store.reader import Reader
from electric.store.sqlite import ReaderPool, file_bytes, in_thread, take_batch

log = logger.bind(origin="store")


def _ts(commit_us: int) -> datetime:
    return datetime.fromtimestamp(commit_us / 1e6, UTC)


class ChunkedChanges:
    """The changes of a big logged transaction, read chunk by chunk when iterated."""

    def __init__(self, store: LocalStore, head: TxnHead, first: list[Change] | None):
        self.store, self.head, self.first = store, head, first

    def __len__(self) -> int:
        return self.head.changes

    def __iter__(self) -> Iterator[Change]:
        first = self.first
        if first is None:
            first = self.store._read(lambda r: r.decode(r.chunk(self.head.pos, 0)))
        yield from first
        for seq in range(1, self.head.chunks):
            yield from self.store._read(lambda r, s=seq: r.decode(r.chunk(self.head.pos, s)))

    def __bool__(self) -> bool:
        return self.head.changes > 0


class WriteChain:
    """Writes of one source that must become durable in submission order.

    A source may submit several transactions before the first is durable (so that they
    share group commits), but none may be stored after an earlier one failed: once a write
    of the chain fails, every later one is refused with :class:`ChainBroken` until the
    source has written the failed ones again and calls :meth:`reset`.
    """

    def __init__(self) -> None:
        self.broken = False

    def reset(self) -> None:
        self.broken = False


class ChainedWriter:
    """``submit(tx)`` for one source reader: its writes share group commits and become
    durable in order (see :class:`WriteChain`); ``on_written`` runs for each durable one."""

    def __init__(self, store: LocalStore, on_written: Callable[[], None] | None = None):
        self.store = store
        self.chain = WriteChain()
        self.on_written = on_written

    def __call__(self, tx: Transaction) -> AsyncResult:
        result = self.store.submit(tx, self.chain)
        if self.on_written is not None:
            result.rawlink(lambda r: r.successful() and self.on_written())
        return result

    def reset(self) -> None:
        self.chain.reset()


@dataclass
class _Write:
    changes: Any
    origin: str | None
    publication: str | None
    chain: WriteChain | None = None
    result: AsyncResult = field(default_factory=AsyncResult)


class _Cache:
    """Recently committed transactions, oldest first; holds every transaction after
    ``floor`` (so a reader positioned at or after ``floor`` needs no disk read)."""

    def __init__(self, limit: int, floor: int):
        self.limit = limit
        self.floor = floor
        self.entries: deque[tuple[int, Transaction]] = deque()
        self.positions: deque[int] = deque()
        self.size = 0

    def add(self, pos: int, tx: Transaction, size: int) -> None:
        if size > self.limit:  # too big to keep: everything up to it is read from disk
            self.entries.clear()
            self.positions.clear()
            self.size = 0
            self.floor = pos
            return
        self.entries.append((pos, tx))
        self.positions.append(pos)
        self.size += size
        while self.size > self.limit:
            old_pos, old = self.entries.popleft()
            self.positions.popleft()
            self.size -= len(old.changes)
            self.floor = old_pos

    def after(self, pos: int, limit: int) -> list[tuple[int, Transaction]] | None:
        if pos < self.floor:
            return None
        i = bisect.bisect_right(self.positions, pos)
        return [self.entries[j] for j in range(i, min(len(self.entries), i + limit))]


class LocalStore:
    def __init__(self, data_dir: str, primary_keys: PrimaryKeys, readers: int = 4,
                 limits: StoreLimits = DEFAULT.store):
        self.data_dir = data_dir
        self.primary_keys = primary_keys
        self.limits = limits
        self.engine = Engine(data_dir, limits)
        self.path = self.engine.path
        self.committed = self.engine.last_pos
        self.retain_changes = limits.retain_changes
        self.compacted_through = self.engine.compacted_through
        self.cache = _Cache(limits.cache_changes, self.committed)
        self._queue: Queue = Queue()
        self._commit_event = Event()
        self._write_lock = Semaphore()  # the writer greenlet vs. an open big transaction
        self._readers: ReaderPool[Reader] = ReaderPool(lambda: Reader(self.path, limits),
                                                       readers)
        self._closed = False
        self.stats = {"transactions_written": 0, "group_commits": 0, "big_transactions": 0,
                      "snapshots_served": 0}
        self._writer = gevent.spawn(self._run_writer)

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ threads

    def _in_thread(self, fn: Callable, *args) -> Any:
        return in_thread(fn, *args)

    def _read(self, fn: Callable[[Reader], Any]) -> Any:
        return self._readers.run(fn)

    def current_rows(self, rows: list[tuple[RelationName, Record]]) -> list[Record | None]:
        """The committed row with the primary key of each ``(relation, record)`` (``None``:
        not stored, or deleted): what a Satellite client's write is judged on by the sync
        rules instead of the old row it claims (docs/sync-rules.md §4)."""
        wanted = [(relation, row_key(relation, record, self.primary_keys(relation)))
                  for relation, record in rows]
        return self._read(lambda reader: reader.current_rows(wanted))

    # ------------------------------------------------------------------ writing

    def write(self, tx: Transaction) -> int:
        """Store ``tx``; returns its log position once durable (0: nothing to store).

        Raises :class:`~electric.store.merge.UnmappableChange` (permanent) for a change
        that cannot be keyed; any other exception means nothing was stored (retry).
        """
        return self.submit(tx).get()

    def submit(self, tx: Transaction, chain: WriteChain | None = None) -> AsyncResult:
        """Queue ``tx`` for the next group commit without waiting: the result holds its
        position once durable, or the exception (as :meth:`write` would raise it)."""
        request = _Write(tx.changes, tx.origin, tx.publication, chain)
        if self._closed:
            request.result.set_exception(RuntimeError("the store is closed"))
        else:
            self._queue.put(request)
        return request.result

    def _take_batch(self) -> list[_Write]:
        """Every write waiting now (within the batch bounds), minus those of broken chains."""
        limits = self.limits
        return take_batch(self._queue, limits.max_batch_txns, limits.max_batch_changes,
                          lambda r: len(r.changes), self._unbroken)

    @staticmethod
    def _unbroken(request: _Write) -> bool:
        if request.chain is not None and request.chain.broken:
            request.result.set_exception(ChainBroken("an earlier write of this source failed"))
            return False
        return True

    def _run_writer(self) -> None:
        batch: list[_Write] = []
        try:
            while True:
                batch = self._take_batch()
                with self._write_lock:
                    try:
                        results = self._in_thread(
                            self.engine.commit_batch,
                            [(r.changes, r.origin, r.publication, r.chain) for r in batch],
                            self.primary_keys)
                    except gevent.GreenletExit:
                        raise
                    except BaseException as exc:  # nothing of the batch was stored
                        log.error(f"store commit failed: {type(exc).__name__}: {exc}")
                        for r in batch:
                            if r.chain is not None:
                                r.chain.broken = True
                            r.result.set_exception(exc)
                        continue
                    # Still holding the writer: readers see positions in commit order.
                    self._settle(batch, results)
                batch = []
                if self.engine.log_changes > self.retain_changes * 1.1:
                    self._compact()
        except gevent.GreenletExit:
            # Closing: a batch taken but not committed is failed, not left hanging.
            for r in batch:
                if not r.result.ready():
                    r.result.set_exception(RuntimeError("the store is closing"))
            raise

    def _compact(self) -> None:
        with self._write_lock:
            try:
                through = self._in_thread(self.engine.compact_log, self.retain_changes)
            except gevent.GreenletExit:
                raise
            except Exception as exc:  # the log just stays longer; the next commit retries
                log.warning(f"log compaction failed: {type(exc).__name__}: {exc}")
                return
        if through > self.compacted_through:
            self.compacted_through = through
            log.debug(f"log compacted through position {through}")

    def _settle(self, batch: list[_Write], results: list) -> None:
        self.stats["group_commits"] += 1
        for request, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                if request.chain is not None:
                    request.chain.broken = True
                request.result.set_exception(result)
                continue
            pos, commit_us, out = result
            if pos:
                self._published(pos, Transaction(out, _ts(commit_us)), len(out))
            request.result.set(pos)

    def _published(self, pos: int, tx: Transaction, size: int) -> None:
        self.committed = pos
        self.stats["transactions_written"] += 1
        self.cache.add(pos, tx, size)
        event, self._commit_event = self._commit_event, Event()
        event.set()

    def begin(self, on_written: Callable[[], None] | None = None) -> BigTransaction:
        """A transaction written chunk by chunk (holds the writer until it ends);
        ``on_written`` runs once it is durable."""
        return BigTransaction(self, on_written)

    # ------------------------------------------------------------------ reading

    def _decode_heads(self, reader: Reader, after: int, limit: int) -> list | None:
        heads = reader.heads_after(after, limit)
        if heads is None:
            return None
        out = []
        for head, first in heads:
            changes = reader.decode(first) if first is not None else []
            out.append((head, changes))
        return out

    def read_after(self, after: int, limit: int | None = None
                   ) -> list[tuple[int, Transaction]] | None:
        """Up to ``limit`` (default ``limits.read_batch``) committed transactions after
        position ``after``; ``None`` when the log no longer holds all of them (compacted: the
        reader needs a snapshot)."""
        if limit is None:
            limit = self.limits.read_batch
        cached = self.cache.after(after, limit)
        if cached is not None:
            return cached
        if after < self.compacted_through:
            return None
        heads = self._read(lambda r: self._decode_heads(r, after, limit))
        if heads is None:
            return None
        items = []
        for head, first in heads:
            changes: Any = first if head.chunks <= 1 else ChunkedChanges(self, head, first)
            items.append((head.pos, Transaction(changes, _ts(head.commit_us))))
        return items

    def stream(self, after: int = 0) -> Iterator[tuple[Transaction, int]]:
        """``(transaction, position)`` for every transaction after ``after``, then each new
        one as it commits. Never ends by itself; close the generator to stop."""
        pos = after
        if after == 0 and self.engine.log_changes > self.engine.row_count:
            # A new reader: the rows as they are now cost less than the history that made
            # them, and end in the same state.
            snapshot = self.snapshot()
            yield snapshot.transaction(), snapshot.pos
            pos = snapshot.pos
        while not self._closed:
            committed_event = self._commit_event
            if pos >= self.committed:
                committed_event.wait()
                continue
            items = self.read_after(pos)
            if items is None:  # the log after ``pos`` was compacted: the rows instead
                snapshot = self.snapshot()
                yield snapshot.transaction(), snapshot.pos
                pos = snapshot.pos
                continue
            for tx_pos, tx in items:
                yield Transaction(list(tx.changes) if isinstance(tx.changes, list) else tx.changes,
                                  tx.commit_timestamp), tx_pos
                pos = tx_pos

    def snapshot(self, relations: list | None = None) -> Snapshot:
        """Every stored row (of ``relations`` only, when given) as of one log position
        (see :class:`Snapshot`)."""
        self.stats["snapshots_served"] += 1
        return Snapshot(self, relations)

    # ------------------------------------------------------------------ small durable facts

    def get_meta(self, key: str) -> str | None:
        with self._write_lock:
            return self._in_thread(self.engine.get_meta, key)

    def put_meta(self, key: str, value: str) -> None:
        """Durable once it returns (its own SQLite transaction)."""
        with self._write_lock:
            self._in_thread(self.engine.put_meta, key, value)

    # ------------------------------------------------------------------ operator surface

    def status(self) -> dict[str, Any]:
        size = file_bytes(self.path)
        engine = self.engine
        return {"mode": "embedded", "path": self.path, "bytes": size,
                "rows": engine.row_count, "log_transactions": engine.log_transactions,
                "log_changes": engine.log_changes, "retain_changes": self.retain_changes,
                "compacted_through": self.compacted_through,
                "last_position": self.committed, **self.stats}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._write_lock:  # let a commit under way finish
            self._writer.kill()
        self._commit_event.set()
        while not self._queue.empty():  # writes that will never be taken: tell their callers
            self._queue.get_nowait().result.set_exception(RuntimeError("the store is closed"))
        self._readers.close()
        self.engine.close()


class Snapshot:
    """Every stored row (live ones as updates, tombstones as deletes) consistent with log
    position ``pos``: what a reader gets instead of log entries that were compacted away.
    Delivered as one transaction whose changes are read lazily, in pieces, from one SQLite
    read transaction held until they have all been read (or the snapshot is dropped)."""

    def __init__(self, store: LocalStore, relations: list | None = None):
        self.store = store
        self.reader = Reader(store.path, store.limits)
        self.pos, self.rows = store._in_thread(self.reader.open_snapshot, relations)
        self._done = False

    def transaction(self) -> Transaction:
        return Transaction(_SnapshotChanges(self), utc_now())

    def pieces(self) -> Iterator[list[Change]]:
        if self._done:
            raise RuntimeError("a snapshot is read once")
        try:
            while True:
                piece = self.store._in_thread(self.reader.snapshot_piece)
                if not piece:
                    return
                yield piece
        finally:
            self.close()

    def close(self) -> None:
        if not self._done:
            self._done = True
            try:
                self.reader.close_snapshot()
            finally:
                self.reader.close()

    def __del__(self) -> None:  # a reader that stopped halfway must not pin the WAL
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown, connection already gone
            pass


class _SnapshotChanges:
    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot

    def __len__(self) -> int:
        return self.snapshot.rows

    def __bool__(self) -> bool:
        return self.snapshot.rows > 0

    def __iter__(self) -> Iterator[Change]:
        for piece in self.snapshot.pieces():
            yield from piece


class BigTransaction:
    """Write a transaction in pieces: ``add(changes)`` any number of times, then ``commit()``
    (durable, visible whole) or ``abort()``. Holds the store's writer while open."""

    def __init__(self, store: LocalStore, on_written: Callable[[], None] | None = None):
        self.store = store
        self.on_written = on_written
        self.changes = 0
        self._open = False

    def _ensure_open(self) -> None:
        if not self._open:
            self.store._write_lock.acquire()
            try:
                self.store._in_thread(self.store.engine.begin_big)
            except BaseException:
                self.store._write_lock.release()
                raise
            self._open = True

    def add(self, changes: list[Change]) -> None:
        self._ensure_open()
        try:
            out = self.store._in_thread(self.store.engine.add_big, changes,
                                        self.store.primary_keys)
        except BaseException:
            self._close()  # add_big rolled back
            raise
        self.changes += len(out)

    def commit(self, origin: str | None = None, publication: str | None = None) -> int:
        if not self._open:
            return 0
        try:
            pos, commit_us, n, chunks = self.store._in_thread(self.store.engine.commit_big,
                                                              origin, publication)
            if pos:
                # Published while the writer is still held: positions reach readers in
                # commit order (a write waiting behind this one commits only after).
                head = TxnHead(pos, commit_us, origin, publication, n, chunks)
                self.store.stats["big_transactions"] += 1
                self.store._published(pos, Transaction(ChunkedChanges(self.store, head, None),
                                                       _ts(commit_us)), n)
        finally:
            self._close()
        if pos and self.on_written is not None:
            self.on_written()
        return pos

    def abort(self) -> None:
        if self._open:
            try:
                self.store._in_thread(self.store.engine.abort_big)
            finally:
                self._close()

    def _close(self) -> None:
        if self._open:
            self._open = False
            self.store._write_lock.release()

