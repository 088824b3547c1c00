"""Transactional CRDT store of the standalone Vaxine server (one DC, one partition,
txn_cert=false), on the SQLite engine of :mod:`electric.vaxine.embedded.engine`.

Interactive transactions get snapshot isolation the way Antidote's Clock-SI does for
Electric's use: a transaction reads the state committed when it started plus its own
writes, turns each operation into a CRDT effect against that view at update time, and at
commit its effects are applied to the *latest* state. Because effects commute, concurrent
transactions merge (column-level LWW, update beats a concurrent delete) instead of
aborting. Commits are ordered in the hub (no yield between choosing a transaction's offset
and queueing it for the writer), so offset order = commit order = stream order.

Memory is bounded, not proportional to the data:

* latest states live in SQLite and in a bounded LRU cache of recently used objects;
* states committed but not yet durable are kept until their SQLite transaction commits
  (``_pending``; bounded by the commits in flight);
* the newest logged transactions, for streams tailing the log (``recent``; 4 MiB);
* a state replaced while transactions that may still read it are running is kept until the
  last of them ends (``_superseded``; empty whenever no transaction is open; objects created
  meanwhile cost nothing: a snapshot with no version kept did not have the object).

Durability: the one writer greenlet takes every commit waiting and stores them in one SQLite
transaction (one fsync) in the hub's thread pool; a commit is acknowledged only once its
transaction is durable, and the WAL stream reads only what SQLite has committed.

Each committed transaction is logged with what the replication stream needs verbatim: the
txid term and, per touched key, the materialised state after the commit plus the effects,
pre-encoded as ETF.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.event import AsyncResult, Event
from gevent.queue import Queue
from loguru import logger

from electric.limits import DEFAULT, VaxineLimits
from electric.store.sqlite import ReaderPool, in_thread, take_batch
from electric.vaxine import crdt_terms, etf
from electric.vaxine.embedded import crdt
from electric.vaxine.embedded.engine import (
    PLAIN_TYPE,
    Commit,
    Engine,
    EngineReader,
    record_size,
    size_bytes,
)
from electric.vaxine.etf import Atom, Pid
from electric.vaxine.memo import EncodingMemo

DEFAULT_NODE = Atom("vaxine@127.0.0.1")
TX_ID = Atom("tx_id")

ObjKey = tuple[bytes, bytes]  # (key, bucket)
# {{Key, Bucket}, Type, State, [Effect]}: the 4-tuple and its key pair open every stream op
_OP_HEAD = etf.tuple_head(4) + etf.tuple_head(2)
_ABSENT = (0, None, None)  # (ver, type name, state) of an object never written

log = logger.bind(origin="vaxine_store")


class UnknownTransaction(LookupError):
    """Descriptor of a transaction that is not (or no longer) running."""


class CommitRefused(ValueError):
    """This transaction cannot be committed (too large to log); the store goes on."""


class StoreFailed(RuntimeError):
    """A commit could not be made durable; the store takes no further commits (restart the
    server: SQLite's recovery brings back every acknowledged transaction)."""


@dataclass
class _Write:
    crdt_type: Atom
    view: Any  # the transaction's own copy (crdt.owned_copy): updated in place
    effects: list = field(default_factory=list)
    encoded: list = field(default_factory=list)  # ETF body of each effect


@dataclass
class Txn:
    descriptor: bytes
    txid_body: bytes
    snapshot: int  # offset of the last commit it sees
    owner: Any = None
    writes: dict[ObjKey, _Write] = field(default_factory=dict)


@dataclass
class _Queued:
    commit: Commit
    new_objects: int
    result: AsyncResult = field(default_factory=AsyncResult)


class _OpsTerm:
    """Builds the stream's ``Ops`` term of a commit from the values it was encoded from:
    ``[{{Key, Bucket}, Type, State, [Effect]}]``, equal to decoding ``ops_body``."""

    __slots__ = ("states", "effects")

    def __init__(self, states: list, effects: list):
        self.states = states
        self.effects = effects

    def __call__(self) -> list:
        return [(obj, ctype, crdt_terms.to_term(ctype, state), effects)
                for (obj, ctype, state), effects in zip(self.states, self.effects, strict=True)]


class _RecentLog:
    """The newest durable transactions ``(offset, txid ETF, ops ETF)``, oldest first, at most
    ``limit`` bytes; holds every transaction after ``floor``."""

    def __init__(self, limit: int, floor: int):
        self.limit = limit
        self.floor = floor
        self.entries: deque[tuple[int, bytes, bytes]] = deque()
        self.size = 0

    def add(self, offset: int, txid_body: bytes, ops_body: bytes) -> None:
        size = len(txid_body) + len(ops_body)
        if size > self.limit:  # too big to keep: readers get it (and what came before) from disk
            self.entries.clear()
            self.size = 0
            self.floor = offset
            return
        self.entries.append((offset, txid_body, ops_body))
        self.size += size
        while self.size > self.limit:
            old = self.entries.popleft()
            self.size -= len(old[1]) + len(old[2])
            self.floor = old[0]

    def after(self, after: int, max_bytes: int) -> list[tuple[int, bytes, bytes]] | None:
        """What follows ``after`` (about ``max_bytes``), ``None`` if not all of it is here."""
        if after < self.floor:
            return None
        out, size = [], 0
        for entry in reversed(self.entries):  # tailing readers want the newest ones
            if entry[0] <= after:
                break
            out.append(entry)
        out.reverse()
        for i, entry in enumerate(out):
            size += len(entry[1]) + len(entry[2])
            if size >= max_bytes:
                return out[:i + 1]
        return out


class Store:
    def __init__(self, data_dir: str, node: Atom = DEFAULT_NODE,
                 readers: int = 4,
                 memo: EncodingMemo | None = None, limits: VaxineLimits = DEFAULT.vaxine):
        self.data_dir = data_dir
        self.limits = limits
        # Given only when stream readers in this same process share it (see EncodingMemo).
        self.memo = memo
        self.node = node
        self.engine = Engine(data_dir, node, limits)
        self.path = self.engine.path
        opened = self.engine.opened
        self.dc_id = opened.dc_id
        self.log_end = opened.log_end  # offset of the next commit
        self.seq = opened.last_offset  # offset of the last commit (durable or not)
        self.durable = opened.last_offset  # offset of the last durable commit
        self.objects = opened.objects
        self.transactions = opened.transactions
        self.creation = int(time.time()) & 0xFFFFFFFF  # changes per start, like a node's
        self._last_us = opened.last_commit_us
        self._hub_reader = EngineReader(self.path, self.engine.cache_kib)
        self._readers: ReaderPool[EngineReader] = ReaderPool(
            lambda: EngineReader(self.path, limits.server_reader_cache_kib), readers)
        self.recent = _RecentLog(limits.server_recent_log_bytes, self.durable)
        # Latest object states kept in memory, least recently used dropped first. Electric
        # reads back what it writes inside the same transaction (its own view), so the
        # cache mainly serves metadata:0 and rows that are updated again soon.
        self.cache_objects = limits.server_cache_objects
        self.cache: OrderedDict[ObjKey, tuple[int, str | None, Any]] = OrderedDict()
        self._pending: dict[ObjKey, tuple[int, str, Any]] = {}
        self._superseded: dict[ObjKey, list[tuple[int, int, str | None, Any]]] = {}
        self._retired: deque[tuple[int, ObjKey]] = deque()
        self._active: dict[bytes, Txn] = {}
        self._pid_ids = itertools.count(1)
        self._queue: Queue = Queue()
        self._durable_event = Event()
        self._failed: BaseException | None = None
        self._closed = False
        self.live_streams = 0  # replication streams currently open (see replication.py)
        self.stats = {"group_commits": 0, "cache_misses": 0, "checkpoints": 0}
        self._checkpointing: gevent.Greenlet | None = None
        self._writer = gevent.spawn(self._run_writer)

    # ------------------------------------------------------------------ clocks

    def now_us(self) -> int:
        """Wall-clock microseconds, strictly increasing within this store."""
        self._last_us = max(time.time_ns() // 1000, self._last_us + 1)
        return self._last_us

    def clock(self, micros: int) -> bytes:
        """``term_to_binary(#{DcId => Micros})``: a commit / snapshot vector clock."""
        return etf.encode({self.dc_id: micros})

    # ------------------------------------------------------------------ transactions

    def begin(self, owner: Any = None) -> Txn:
        self._check_usable()
        pid = Pid(self.node, next(self._pid_ids) & 0x7FFF, 0, self.creation)
        txid = (TX_ID, self.now_us(), pid)
        descriptor = etf.encode(txid)
        txn = Txn(descriptor, descriptor[1:], self.seq, owner)
        self._active[descriptor] = txn
        return txn

    def txn(self, descriptor: bytes) -> Txn:
        try:
            return self._active[descriptor]
        except KeyError:
            raise UnknownTransaction("no running transaction with this descriptor") from None

    def active_count(self) -> int:
        return len(self._active)

    def _latest(self, obj: ObjKey) -> tuple[int, str | None, Any]:
        """``(ver, type name, state)`` of the newest commit of ``obj`` (``_ABSENT`` if none).

        Read in the hub, without yielding (a primary-key lookup), so that nothing commits
        between looking and using what was found."""
        found = self._pending.get(obj)
        if found is not None:
            return found
        found = self.cache.get(obj)
        if found is not None:
            self.cache.move_to_end(obj)
            return found
        self.stats["cache_misses"] += 1
        found = self._hub_reader.latest(obj[0], obj[1]) or _ABSENT
        self._cache_put(obj, found)
        return found

    def _cache_put(self, obj: ObjKey, value: tuple[int, str | None, Any]) -> None:
        self.cache[obj] = value
        self.cache.move_to_end(obj)
        while len(self.cache) > self.cache_objects:
            self.cache.popitem(last=False)

    def _state_at(self, obj: ObjKey, snapshot: int) -> tuple[str, Any] | None:
        ver, tname, state = self._latest(obj)
        if ver > snapshot:  # replaced since the snapshot: the version kept for it
            for first, until, old_tname, old_state in self._superseded.get(obj, ()):
                if first <= snapshot < until:
                    return old_tname, old_state
            # No version kept for the snapshot: only an object's absence is not kept (see
            # _order), so it did not exist yet.
            return None
        return None if tname is None else (tname, state)

    def _view(self, txn: Txn, obj: ObjKey, crdt_type: Atom) -> Any:
        write = txn.writes.get(obj)
        if write is not None:
            found = (write.crdt_type, write.view)
        else:
            found = self._state_at(obj, txn.snapshot)
        if found is None:
            return crdt.new(crdt_type)
        if found[0] != crdt_type:
            raise crdt_terms.CrdtError(f"object is a {found[0]}, not a {crdt_type}")
        return found[1]

    def read(self, txn: Txn, key: bytes, bucket: bytes, crdt_type: Atom) -> Any:
        """The state this transaction sees (its snapshot plus its own writes)."""
        return self._view(txn, (key, bucket), crdt_type)

    def update(self, txn: Txn, key: bytes, bucket: bytes, crdt_type: Atom, op: tuple) -> None:
        """Generate the effect of ``op`` against this transaction's view and apply it there.

        On failure the view may be half updated: callers abort the transaction.
        """
        obj = (key, bucket)
        write = txn.writes.get(obj)
        if write is None:
            # The view is the transaction's own copy from here on, updated in place.
            view = crdt.owned_copy(crdt_type, self._view(txn, obj, crdt_type))
            effect, body = crdt.downstream_encoded(crdt_type, op, view, self.now_us)
            write = txn.writes[obj] = _Write(crdt_type, view)
        else:
            if write.crdt_type != crdt_type:
                raise crdt_terms.CrdtError(f"object is a {write.crdt_type}, not a {crdt_type}")
            effect, body = crdt.downstream_encoded(crdt_type, op, write.view, self.now_us)
        write.view = crdt.update_in_place(crdt_type, effect, write.view)
        write.effects.append(effect)
        write.encoded.append(body)

    def abort(self, txn: Txn) -> None:
        if self._active.pop(txn.descriptor, None) is not None:
            self._prune()

    def abort_owned_by(self, owner: Any) -> None:
        for txn in [t for t in self._active.values() if t.owner is owner]:
            self.abort(txn)

    def commit(self, txn: Txn) -> int:
        """Apply, log and sync the transaction; returns its commit time (µs).

        Blocks the calling greenlet until the transaction is durable. Empty transactions
        are not logged (Vaxine does not stream them either).
        """
        if self._active.pop(txn.descriptor, None) is None:
            raise UnknownTransaction("transaction is not running")
        try:
            self._check_usable()
            commit_us = self.now_us()
            if not txn.writes:
                return commit_us
            queued = self._order(txn, commit_us)
        finally:
            self._prune()
        queued.result.get()
        return commit_us

    def _order(self, txn: Txn, commit_us: int) -> _Queued:
        """Everything from choosing the offset to queueing the commit runs without yielding:
        commit order is fixed here."""
        entries, new_states, previous = [], [], []
        for obj, write in txn.writes.items():
            ctype = write.crdt_type
            latest = self._latest(obj)
            ver, latest_type, latest_state = latest
            if latest_type is not None and latest_type != ctype:
                raise crdt_terms.CrdtError(f"object became a {latest_type} concurrently")
            if ver <= txn.snapshot:
                # Nobody committed this object since our snapshot: latest state + our
                # effects is exactly our view (always the case for static updates).
                state = write.view
            else:
                state = latest_state
                for effect in write.effects:
                    state = crdt.update(ctype, effect, state)
            new_states.append((obj, ctype, state))
            previous.append(latest)
            # {{Key, Bucket}, Type, State, [Effect]} for the stream's Ops list
            effects = b"".join(write.encoded)
            entries.append(b"".join((
                _OP_HEAD, etf.binary(obj[0]), etf.binary(obj[1]), etf.encode_body(ctype),
                crdt_terms.encode_state(ctype, state),
                etf.list_head(len(write.effects)) + effects + etf.NIL_BYTES if write.effects
                else etf.NIL_BYTES,
            )))
        ops_body = etf.list_of(entries)
        if len(ops_body) > self.limits.server_max_ops_bytes:
            raise CommitRefused(f"transaction of {len(ops_body)} bytes exceeds "
                                f"{self.limits.server_max_ops_bytes}")
        if self.memo is not None and self.live_streams:
            # In-process stream readers get the term without decoding these bytes again
            # (with no stream open, nobody is about to read it: keep nothing alive).
            self.memo.remember(ops_body,
                              _OpsTerm(new_states, [w.effects for w in txn.writes.values()]))
        offset = self.log_end
        self.log_end += record_size(txn.txid_body, ops_body)
        self.seq = offset
        keep_old = bool(self._active)  # transactions that started earlier may read them
        states = []
        for (obj, ctype, state), old in zip(new_states, previous, strict=True):
            tname = PLAIN_TYPE[ctype]
            self._pending[obj] = (offset, tname, state)
            states.append((obj[0], obj[1], tname, state))
            if keep_old and old[1] is not None:  # (an absence needs no copy: _state_at)
                self._superseded.setdefault(obj, []).append((old[0], offset, old[1], old[2]))
                self._retired.append((offset, obj))
        queued = _Queued(Commit(offset, commit_us, txn.txid_body, ops_body, states),
                         sum(1 for old in previous if old[1] is None))
        self._queue.put(queued)
        return queued

    def _prune(self) -> None:
        """Forget replaced versions that no running transaction can read any more."""
        if not self._retired:
            return
        oldest = min((t.snapshot for t in self._active.values()), default=self.seq)
        while self._retired and self._retired[0][0] <= oldest:
            _until, obj = self._retired.popleft()
            versions = self._superseded[obj]
            versions.pop(0)
            if not versions:
                del self._superseded[obj]

    # ------------------------------------------------------------------ the writer

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise StoreFailed(f"the store is unusable after a failed commit: {self._failed}")
        if self._closed:
            raise StoreFailed("the store is closed")

    def _run_writer(self) -> None:
        batch: list[_Queued] = []
        stopping = False
        try:
            while not stopping:
                taken = take_batch(self._queue, self.limits.server_max_batch)
                batch = [q for q in taken if q is not None]
                stopping = len(batch) < len(taken)  # close() queued None after the last commit
                if not batch:
                    continue
                if self._failed is not None:
                    for q in batch:
                        q.result.set_exception(StoreFailed("an earlier commit failed"))
                    continue
                try:
                    in_thread(self.engine.write, [q.commit for q in batch],
                              batch[-1].commit.offset + record_size(batch[-1].commit.txid_body,
                                                                    batch[-1].commit.ops_body))
                except gevent.GreenletExit:
                    raise
                except BaseException as exc:
                    # Later commits were ordered on top of these states: none can be stored.
                    self._failed = exc
                    log.critical(f"Vaxine store {self.path}: commit failed, no further commits "
                                 f"(restart to recover): {type(exc).__name__}: {exc}")
                    for q in batch:
                        q.result.set_exception(StoreFailed(str(exc)))
                    self._notify()
                    continue
                self._settle(batch)
                batch = []
                if (self._checkpointing is None or self._checkpointing.ready()) \
                        and self.engine.wal_bytes() > self.limits.server_wal_checkpoint:
                    self._checkpointing = gevent.spawn(self._checkpoint)
        except gevent.GreenletExit:
            for q in batch:
                if not q.result.ready():
                    q.result.set_exception(StoreFailed("the store is closing"))
            raise

    def _checkpoint(self) -> None:
        try:
            in_thread(self.engine.checkpoint)
            self.stats["checkpoints"] += 1
        except Exception as exc:  # the WAL just stays longer; the next commit retries
            log.warning(f"Vaxine store {self.path}: checkpoint failed: {exc}")

    def _settle(self, batch: list[_Queued]) -> None:
        self.stats["group_commits"] += 1
        for q in batch:
            c = q.commit
            for key, bucket, _tname, _state in c.states:
                obj = (key, bucket)
                pending = self._pending.get(obj)
                if pending is not None and pending[0] == c.offset:  # no later commit of it
                    del self._pending[obj]
                    self._cache_put(obj, pending)
            self.objects += q.new_objects
            self.transactions += 1
            self.durable = c.offset
            self.recent.add(c.offset, c.txid_body, c.ops_body)
            q.result.set(c.offset)
        self._notify()

    def _notify(self) -> None:
        event, self._durable_event = self._durable_event, Event()
        event.set()

    def durable_event(self) -> Event:
        """An event set at the next durability advance (fetch it *before* checking)."""
        return self._durable_event

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def failed(self) -> bool:
        return self._failed is not None

    # ------------------------------------------------------------------ operator surface

    def status(self) -> dict[str, Any]:
        return {"path": self.path, "bytes": size_bytes(self.data_dir), "objects": self.objects,
                "log_transactions": self.transactions, "log_end": self.log_end,
                "last_offset": self.durable, "cached_objects": len(self.cache),
                "open_transactions": len(self._active), "failed": self.failed, **self.stats}

    # ------------------------------------------------------------------ the log

    def records_after(self, after: int) -> list[tuple[int, bytes, bytes]]:
        """Durable transactions after offset ``after``: ``(offset, txid ETF, ops ETF)``, a
        batch of about 1 MiB: from memory for a reader near the end of the log, else read
        from SQLite in the thread pool."""
        recent = self.recent.after(after, self.limits.server_read_batch_bytes)
        if recent is not None:
            return recent
        batch = self.limits.server_read_batch_bytes
        return self._readers.run(lambda r: r.records_after(after, batch))

    def close(self, timeout: float = 10) -> None:
        if self._closed:
            return
        self._closed = True
        # Commits already queued are written first (their callers wait for them).
        self._queue.put(None)
        self._writer.join(timeout=timeout)
        self._writer.kill()
        if self._checkpointing is not None:
            self._checkpointing.join(timeout=timeout)
        self._notify()
        self._readers.close()
        self._hub_reader.close()
        self.engine.close()
