"""Encoded outgoing transactions shared by every Satellite socket of one server.

Every socket following the log sends the same ``SatOplog`` for a transaction; only the
``SatRelation`` announcements before it differ per socket (each socket announces a table
once per outgoing start). So a transaction is serialised once, and the websocket frame around
it (header + payload, the bytes that go on the wire) is built once too: a socket that is
caught up writes those very bytes (see ``connection.Connection._direct``).

Bounded in entries and in bytes, oldest out first: sockets streaming live are at most a few
transactions apart, and a socket replaying history simply misses and encodes its own copy.

With sync rules (docs/sync-rules.md) a client receives the transaction as its effective
filter leaves it, so entries are per (transaction, filter): clients whose claims select the
same rows share one filter object (:meth:`OplogCache.intern`) and so one encoding. Clients
without rules use ``None`` and today's keys, unchanged.
"""

from __future__ import annotations

import weakref
from typing import Any

from electric import metrics
from electric.changes import Transaction
from electric.limits import DEFAULT, SatelliteLimits
from electric.pb import satellite_pb2 as pb


class SharedOplog:
    """One transaction's encoding: ``relations`` (relation → table used), the message, its
    bytes, and ``frame`` (the websocket frame around them, filled in by the server)."""

    __slots__ = ("tx", "offset", "relations", "msg", "raw", "frame", "flt")

    def __init__(self, tx: Transaction, offset: Any, relations: tuple, msg: pb.SatOpLog,
                 raw: bytes, flt: Any = None) -> None:
        self.tx, self.offset, self.relations, self.msg, self.raw = tx, offset, relations, msg, raw
        self.frame: bytes | None = None
        self.flt = flt  # the effective filter it was built for (kept alive: its id is a key)

    def __iter__(self):  # (relations, msg, raw), as the first version's tuples
        return iter((self.relations, self.msg, self.raw))

    def __getitem__(self, i: int) -> Any:
        return (self.relations, self.msg, self.raw)[i]


class OplogCache:
    """Encoded SatOpLogs by log offset, and by the very Transaction object the shared tail
    hands every socket (one Vaxine or store: an offset names one transaction)."""

    def __init__(self, limits: SatelliteLimits = DEFAULT.satellite) -> None:
        self.size = limits.oplog_cache_entries
        self.max_bytes = limits.oplog_cache_bytes
        self.bytes = 0
        self._entries: dict[Any, tuple[pb.SatOpLog, bytes]] = {}
        self._by_tx: dict[Any, SharedOplog] = {}
        # One filter object per distinct effective filter of the connected clients.
        self._filters: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def intern(self, flt: Any) -> Any:
        """The shared object equal to ``flt`` (``flt`` itself the first time): equal filters
        must be the same object for :meth:`get_tx` to share their encodings."""
        return self._filters.setdefault(flt, flt)

    def distinct_filters(self) -> int:
        return len(self._filters)

    def get(self, key: Any) -> tuple[pb.SatOpLog, bytes] | None:
        found = self._entries.get(key)
        if found is not None:
            metrics.encoding_reused("satellite")
        return found

    def put(self, key: Any, value: tuple[pb.SatOpLog, bytes]) -> None:
        self._entries[key] = value
        self.bytes += len(value[1])
        self._trim()

    # By Transaction object: the entry keeps the object alive, so its id is not reused.

    def get_tx(self, tx: Transaction, offset: Any, flt: Any = None) -> SharedOplog | None:
        """The encoding of ``tx`` as seen through filter ``flt`` (``None``: no rules)."""
        entry = self._by_tx.get(id(tx) if flt is None else (id(tx), id(flt)))
        if entry is None or entry.tx is not tx or entry.offset != offset or entry.flt is not flt:
            return None
        return entry

    def put_tx(self, tx: Transaction, offset: Any, relations: tuple, msg: pb.SatOpLog,
               raw: bytes, flt: Any = None) -> SharedOplog:
        """(``raw`` is the object :meth:`put` holds too: counted once, there.)"""
        key = id(tx) if flt is None else (id(tx), id(flt))
        entry = self._by_tx[key] = SharedOplog(tx, offset, relations, msg, raw, flt)
        self._trim()
        return entry

    def frame(self, entry: SharedOplog, make: Any) -> bytes:
        """``entry``'s websocket frame, ``make(raw)`` the first time it is asked for."""
        if entry.frame is None:
            entry.frame = make(entry.raw)
            self.bytes += len(entry.frame)
        return entry.frame

    def _trim(self) -> None:
        while self._entries and (len(self._entries) > self.size or self.bytes > self.max_bytes):
            key = next(iter(self._entries))
            self.bytes -= len(self._entries.pop(key)[1])
        while self._by_tx and (len(self._by_tx) > self.size or self.bytes > self.max_bytes):
            old = self._by_tx.pop(next(iter(self._by_tx)))
            if old.frame is not None:
                self.bytes -= len(old.frame)

    def status(self) -> dict[str, Any]:
        return {"transactions": len(self._by_tx), "bytes": self.bytes,
                "max_bytes": self.max_bytes, "distinct_filters": len(self._filters)}
