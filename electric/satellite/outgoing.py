"""One socket's outgoing stream: which transactions it has had and how each is encoded for
it, sans-I/O.

:class:`OutRep` is the state of the outgoing replication the client started (docs/protocols.md
§1.4); :class:`OutgoingEncoder` turns a log transaction into the frames this client receives:
the ``SatRelation`` announcements it has not had since its start, then the ``SatOpLog`` as its
sync rules filter leaves the transaction (docs/sync-rules.md). Encodings are shared between
sockets through :class:`~electric.satellite.oplog_cache.OplogCache`; a transaction too big to
hold goes out as several SatOpLogs, each built as the previous one is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from electric import metrics, sync_rules
from electric.changes import Change, Transaction, TruncatedRelation
from electric.limits import SatelliteLimits
from electric.pb import satellite_pb2 as pb
from electric.satellite import frames
from electric.satellite.actions import Action, AwaitTables, Send
from electric.satellite.lsn import InvalidLsn, StartOffset, decode_offset, describe, encode_offset
from electric.satellite.oplog import (
    ProtocolViolation,
    change_op,
    datetime_to_ms,
    relation_message,
)
from electric.satellite.oplog_cache import OplogCache, SharedOplog

TableLookup = Callable[[tuple[str, str]], Any]
"""``(schema, table) -> electric.changes.Table | None`` (usually ``SchemaRegistry.table``)."""


@dataclass
class OutRep:
    active: bool = False
    subscription: int | None = None
    offset: StartOffset | None = None
    # Relations announced with SatRelation since the current start (cleared on every start).
    known_relations: set[tuple[str, str]] = field(default_factory=set)
    # Last lsn the client reported in a SatPingResp (informational).
    client_lsn: bytes | None = None
    sync_batch_size: int = 0
    sent_transactions: int = 0
    # Started from the start of the log and nothing sent yet: the client holds no row, so
    # a filtered client need not be sent deletes in its first transaction (a snapshot).
    empty_client: bool = False
    # Set while the stream waits at a transaction whose tables the registry does not know.
    held: HeldAt | None = None


@dataclass
class HeldAt:
    """Where an outgoing stream waits for the schema registry, for the status and the log."""

    offset: str
    tables: str  # "schema.table, ..."
    since: float | None = None  # monotonic; set by the first Session.tables_awaited
    reported: bool = False  # the ERROR is logged and the blocked gauge raised


def where(offset: Any) -> str:
    return str(list(offset) if isinstance(offset, tuple) else offset)


def hold(out: OutRep, offset: Any, missing: Iterable[tuple[str, str]]) -> AwaitTables:
    """Mark ``out`` as waiting at ``offset`` for the ``missing`` tables."""
    names = tuple(f"{s}.{t}" for s, t in sorted(missing))
    if out.held is None:
        out.held = HeldAt(where(offset), ", ".join(names))
    else:  # some known meanwhile: the rest still wait
        out.held.tables = ", ".join(names)
    assert out.subscription is not None
    return AwaitTables(out.subscription, names)


def release(out: OutRep, log: Any, why: str = "the tables are known") -> None:
    """``out`` no longer waits (its tables are known, or it stopped)."""
    held, out.held = out.held, None
    if held is not None and held.reported:
        log.info("stream to this client released at {}: {}", held.offset, why)
        metrics.log_reader_blocked("satellite", False)


def held_too_long(out: OutRep, now: float, limits: SatelliteLimits, log: Any,
                  client_id: str | None) -> None:
    """``out`` has been waiting for the schema registry until ``now``. Past ``table_wait``
    seconds (connectors describe their tables at start-up; longer is a real problem) it is
    reported once: at ERROR, in the status and the blocked-readers gauge. It keeps waiting,
    it never skips."""
    held = out.held
    if held is None:
        return
    if held.since is None:
        held.since = now
    if not held.reported and now - held.since >= limits.table_wait:
        held.reported = True
        metrics.log_reader_blocked("satellite", True)
        log.error("log transaction at {} changes {}, unknown to the schema registry; the "
                  "stream to client {!r} is held at it until the table is known",
                  held.offset, held.tables, client_id)


class HeldTransaction:
    """The actions of an outgoing transaction that waits for the schema registry: nothing
    of it has been produced yet, so a caller that cannot wait (the shared tail's direct
    path) may drop this and hand the transaction to the socket's own greenlet."""

    __slots__ = ("_actions",)

    def __init__(self, actions: Iterator[Action]) -> None:
        self._actions = actions

    def __iter__(self) -> Iterator[Action]:
        return self._actions


class OutgoingEncoder:
    """Encodes log transactions for one client: its table lookup, its sync rules filter
    (``None``: every row; set when it authenticates), the server's shared cache."""

    def __init__(self, lookup_table: TableLookup, oplog_cache: OplogCache | None,
                 limits: SatelliteLimits, log: Any) -> None:
        self.lookup_table = lookup_table
        self.oplog_cache = oplog_cache
        self.limits = limits
        self.log = log
        self.filter: sync_rules.EffectiveFilter | None = None

    def shared(self, out: OutRep, transaction: Transaction, offset: Any) -> SharedOplog | None:
        """The encoding another socket already made of this very transaction, when this
        socket needs nothing else before it (every table announced, same table
        descriptions); counted as sent. ``None``: encode it with :meth:`encode`."""
        cache = self.oplog_cache
        if cache is None or (out.empty_client and self.filter is not None):
            return None
        hit = cache.get_tx(transaction, offset, self.filter)
        if hit is None:
            return None
        known, lookup = out.known_relations, self.lookup_table
        for relation, table in hit.relations:
            if table is None or relation not in known or lookup(relation) is not table:
                return None
        out.sent_transactions += 1
        metrics.encoding_reused("satellite")
        return hit

    def visible(self, tx: Transaction, empty: bool) -> tuple[list[Change], tuple]:
        """What this client's filter lets through of ``tx`` (rows crossing its scope are
        rewritten as inserts/deletes), and the outcome per change, which alone determines
        it (the encoding's cache key). ``empty``: the client holds no row yet."""
        assert self.filter is not None
        return sync_rules.apply_traced(self.filter, tx.changes, self._key_columns, empty)

    def visible_lazily(self, tx: Transaction, empty: bool) -> Iterator[Change]:
        assert self.filter is not None
        flt, keys = self.filter, self._key_columns
        for change in tx.changes:
            sent = sync_rules.apply(flt, change, keys, empty)
            if sent is not None:
                yield sent

    def _key_columns(self, relation: Any) -> list[str]:
        table = self.lookup_table(relation)
        return list(table.primary_keys) if table is not None else []

    def missing_tables(self, tx: Transaction) -> list[tuple[str, str]]:
        """The relations of ``tx`` the schema registry does not know (yet)."""
        lookup = self.lookup_table
        relations = {c.relation for c in tx.changes if not isinstance(c, TruncatedRelation)}
        return [r for r in relations if lookup(r) is None]

    def _outgoing_table(self, relation: Any) -> Any:
        """The table of an outgoing change. The session checked that the registry knows
        every table of the transaction just before (and the registry never forgets one):
        a missing one here is a bug, which fails the socket (the client resumes from its
        lsn) rather than leaving the change out."""
        table = self.lookup_table(relation)
        if table is None:
            raise LookupError(f"{relation[0]}.{relation[1]} vanished from the schema registry")
        return table

    def streamed(self, out: OutRep, tx: Transaction, offset: Any,
                            changes: Iterable[Change] | None = None) -> Iterator[Action]:
        """A transaction too big to hold as one message: several SatOpLogs, Begin in the
        first and Commit in the last (the client assembles a transaction across messages),
        each built as the previous one is sent, so neither the transaction nor its encoding
        is ever whole in memory. Relations go out before the first message using them. A
        table the registry does not know yet holds the stream there (:class:`AwaitTables`,
        the changes are read lazily so they are not checked ahead)."""
        ts = datetime_to_ms(tx.commit_timestamp)
        lsn = encode_offset(offset)
        ops = [pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=ts, lsn=lsn))]
        tables: dict[Any, Any] = {}
        for change in tx.changes if changes is None else changes:
            if isinstance(change, TruncatedRelation):
                continue  # no representation in the protocol
            relation = change.relation
            if relation not in tables:
                table = tables[relation] = self.lookup_table(relation)
                while table is None:
                    yield hold(out, offset, [relation])
                    if not out.active:
                        return  # stopped while held
                    table = tables[relation] = self.lookup_table(relation)
                release(out, self.log)
                if table.relation not in out.known_relations:
                    out.known_relations.add(table.relation)
                    yield Send(relation_message(table))
            ops.append(change_op(tables[relation], change))
            if len(ops) >= self.limits.streamed_piece:
                yield Send(pb.SatOpLog(ops=ops))
                ops = []
        ops.append(pb.SatTransOp(commit=pb.SatOpCommit(commit_timestamp=ts, lsn=lsn)))
        yield Send(pb.SatOpLog(ops=ops))

    def encode(self, out: OutRep, tx: Transaction, offset: Any,
                            empty: bool = False) -> list[Action]:
        """``tx`` as this client receives it. A transaction its filter leaves empty still
        goes out (Begin and Commit only) so that the client's lsn advances: its acks and
        resume position never lag behind the log because of rows it does not see.
        ``empty``: the client holds no row yet (its outcomes differ from its filter's usual
        ones, so the per-filter entry is neither read nor written; the outcome-keyed one is
        safe)."""
        cache = self.oplog_cache
        flt = self.filter
        per_filter = cache is not None and not (empty and flt is not None)
        if per_filter:
            # Fast path for the shared tail: the very same Transaction object reaches every
            # live socket; only the relation announcements differ per socket.
            hit = cache.get_tx(tx, offset, flt)
            if hit is not None and all(self.lookup_table(r) is t for r, t in hit.relations):
                metrics.encoding_reused("satellite")
                actions: list[Action] = []
                for relation, table in hit.relations:
                    if table is not None and relation not in out.known_relations:
                        out.known_relations.add(relation)
                        actions.append(Send(relation_message(table)))
                actions.append(Send(hit.msg, raw=hit.raw))
                return actions
        actions = []
        changes, outcomes = (tx.changes, None) if flt is None else self.visible(tx, empty)
        ts = datetime_to_ms(tx.commit_timestamp)
        tables: list[Any] = []
        for change in changes:
            table = None
            if not isinstance(change, TruncatedRelation):  # no representation in 0.3.0
                table = self._outgoing_table(change.relation)
                if table is not None and table.relation not in out.known_relations:
                    out.known_relations.add(table.relation)
                    actions.append(Send(relation_message(table)))
            tables.append(table)
        # Every socket streaming the same Vaxine transaction sends the same SatOpLog bytes:
        # build and encode it once (the offset identifies the transaction; the tables used
        # are part of the key so a schema change is never served from a stale entry).
        key = None
        cache = self.oplog_cache
        if cache is not None and isinstance(offset, int | tuple):
            key = (offset, ts, len(tx.changes), tuple(map(id, tables)))
            if outcomes is not None and changes:
                # Filters giving this transaction the same outcomes send the same changes,
                # so they share an encoding (an empty one is everybody's).
                key += (outcomes,)
            cached = cache.get(key)
            if cached is not None:
                if flt is not None and per_filter:  # this filter's next sockets' fast path
                    relations = {c.relation: t for c, t in zip(changes, tables, strict=True)}
                    cache.put_tx(tx, offset, tuple(relations.items()), cached[0], cached[1],
                                 flt)
                actions.append(Send(cached[0], raw=cached[1]))
                return actions
        lsn = encode_offset(offset)
        ops = [pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=ts, lsn=lsn))]
        for change, table in zip(changes, tables, strict=True):
            if table is not None:
                ops.append(change_op(table, change))
        ops.append(pb.SatTransOp(commit=pb.SatOpCommit(commit_timestamp=ts, lsn=lsn)))
        msg = pb.SatOpLog(ops=ops)
        send = Send(msg, raw=frames.encode(msg))
        metrics.transaction_encoded("satellite")
        if key is not None and cache is not None:
            cache.put(key, (msg, send.raw))
            if per_filter:
                relations = {c.relation: t for c, t in zip(changes, tables, strict=True)}
                cache.put_tx(tx, offset, tuple(relations.items()), msg, send.raw, flt)
        actions.append(send)
        return actions


def start_offset(msg: pb.SatInStartReplicationReq) -> StartOffset:
    """Map a client's start request to a WAL stream start (docs/protocols.md §1.4)."""
    options = set(msg.options)
    if frames.OPT_FIRST_LSN in options:
        return 0
    if frames.OPT_LAST_LSN in options:
        return "eof"
    lsn = bytes(msg.lsn)
    if lsn == b"eof":
        return "eof"
    if lsn == b"0":
        return 0
    if not lsn:
        raise ProtocolViolation(frames.INVALID_REQUEST, "empty lsn without FIRST_LSN")
    try:
        return decode_offset(lsn)
    except InvalidLsn as exc:
        raise ProtocolViolation(
            frames.INVALID_REQUEST, f"lsn {describe(lsn)} is not a valid offset: {exc}"
        ) from None
