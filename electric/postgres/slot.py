"""The outbound replication slot, sans I/O: log transactions → pgoutput, LSN ↔ log offset.

A subscriber Postgres sees Electric as a publisher with one logical slot per subscription.
There is no real WAL behind it, so the positions are synthetic and this module owns them:

* **Numbering** (docs/protocols.md §2.4). With ``C`` the current position and ``n`` changes, a
  transaction is ``Begin`` at ``C+10`` with ``final_lsn = C+10+10n``, Relation messages at 0/0,
  change ``i`` at ``C+10i``, ``Commit`` at ``C+10+10n+10`` with ``commit_lsn = final_lsn`` and
  ``end_lsn = C+10+10n+10``; the position then becomes ``end_lsn``. ``final_lsn`` values are
  therefore unique per slot, which ``ALTER SUBSCRIPTION … SKIP (lsn = …)`` relies on.
* **Mapping.** The subscriber stores ``Commit.end_lsn`` as its replication-origin progress and
  hands it back in ``START_REPLICATION``; Electric records ``end_lsn → log offset`` for *every*
  transaction (before sending it), so a reconnecting subscriber resumes right after the last
  transaction it applied (:func:`plan_resume`).
* **Numbering restarts from the subscriber's position.** After a reconnect, transactions are
  numbered upwards from the requested LSN: the subscriber's origin never moves backwards, and
  numbering below it would make it ask for the same old position forever. Mappings above the
  restart point are superseded (the offset store drops them when a lower LSN is put).
* **Upserts as INSERTs** (see ``upsert.py``): every row rebuilt from the log is sent as an
  ``I`` with every column of the table; deletions as ``D`` — with the full old row when the log
  has every column, else by key. ``U`` is never sent: a stock subscriber drops an UPDATE of a
  missing row silently.
* **Relations** are described (``R``) before their first use in a streaming session, with the
  primary-key columns flagged as key (every column for REPLICA IDENTITY FULL tables).

Nothing here touches a socket or a file; the publisher feeds transactions in and writes the
``(lsn, payload)`` pairs out as XLogData.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import count
from typing import Any, Protocol

from loguru import logger

from electric import metrics
from electric.changes import (
    DeletedRecord,
    NewRecord,
    RelationName,
    Table,
    Transaction,
    TruncatedRelation,
    UpdatedRecord,
)
from electric.postgres import copyboth, pgoutput, pgoutput_encode
from electric.postgres.lsn import Lsn
from electric.postgres.shared_encode import (
    ROW_HEAD,
    ROW_HEAD_LEN,
    Shape,
    SharedEncodings,
    table_shape,
)

LSN_STEP = 10
KEY_FLAG = 1

__all__ = [
    "EncodedTransaction",
    "ResumePlan",
    "SlotEncoder",
    "plan_resume",
    "relation_message",
]


def relation_message(table: Table) -> pgoutput.Relation:
    """The ``R`` message describing ``table`` the way a real Postgres would.

    Primary-key columns are flagged as key; under REPLICA IDENTITY FULL every column is (that
    is what Postgres itself sends, and the subscriber needs its local key columns flagged to
    accept deletes).
    """
    full = table.replica_identity == "f"
    keys = set(table.primary_keys)
    identity = table.replica_identity if table.replica_identity in "dnfi" else "d"
    columns = tuple(
        pgoutput.RelationColumn(
            name=c.name,
            type_oid=c.type_oid,
            type_modifier=c.type_modifier,
            flags=KEY_FLAG if (full or c.name in keys or c.part_of_identity) else 0,
        )
        for c in table.columns
    )
    return pgoutput.Relation(table.oid, table.schema, table.name, identity, columns)


@dataclass
class EncodedTransaction:
    """One log transaction as the subscriber will see it."""

    messages: list[tuple[Lsn, bytes]]  # (XLogData position, pgoutput payload), in order
    final_lsn: Lsn
    end_lsn: Lsn
    offset: bytes  # log offset of the transaction (what the mapping stores)
    changes: int  # row changes sent (Begin/Relation/Commit excluded)
    skipped: int = 0  # changes left out (unknown table, or a table without a primary key)
    # encode_frames: the CopyData(XLogData) bytes to write, in order, instead of messages
    frames: list[bytes] | None = None


@dataclass
class SlotEncoder:
    """Per streaming session: turns ``(Transaction, offset)`` into numbered pgoutput messages.

    ``lookup(relation)`` returns the :class:`Table` as this subscriber has it (or ``None``); it
    is asked once per table and session. A change for a table it does not know is skipped
    with a warning instead of stalling the stream: such a table is not in the publication,
    so the subscriber has no use for it.
    """

    lookup: Callable[[RelationName], Table | None]
    start_lsn: Lsn = field(default_factory=Lsn)
    name: str = ""
    # Row encodings shared with the other sessions of the publisher (see encode_frames).
    shared: SharedEncodings | None = None
    current_lsn: Lsn = field(init=False)
    announced: dict[RelationName, Table] = field(default_factory=dict, init=False)
    _xids: Any = field(default_factory=lambda: count(1), init=False, repr=False)
    _shapes: dict[RelationName, tuple[Table, Shape]] = field(
        default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.current_lsn = Lsn(self.start_lsn)
        self._log = logger.bind(origin=self.name) if self.name else logger

    def encode(self, tx: Transaction, offset: bytes) -> EncodedTransaction | None:
        """Number and encode one transaction; ``None`` when it has nothing for this subscriber.

        Advances :attr:`current_lsn` to the transaction's ``end_lsn`` when something is sent.
        """
        relations: list[pgoutput.Relation] = []
        changes: list[pgoutput.Message] = []
        skipped = 0
        skipped_tables: set[str] = set()
        pending_announce: dict[RelationName, Table] = {}
        for change in tx.changes:
            rel = tuple(change.relation)
            # Once described, a table keeps that description for the whole session: tuples
            # must match the Relation message the subscriber holds (a schema change reaches
            # the subscriber with its next session, see Publisher.reset).
            table = self.announced.get(rel) or pending_announce.get(rel)
            if table is None:
                table = self.lookup(rel)
                if table is not None and (
                    table.primary_keys or isinstance(change, TruncatedRelation)
                ):
                    pending_announce[rel] = table
                    relations.append(relation_message(table))
            if table is None or (
                not table.primary_keys and not isinstance(change, TruncatedRelation)
            ):
                skipped += 1
                skipped_tables.add(f"{rel[0]}.{rel[1]}")
                continue
            message = self._change_message(table, change)
            if message is None:
                skipped += 1
                continue
            changes.append(message)
        self._report_skipped(skipped, skipped_tables)
        if not changes:
            return None
        self.announced.update(pending_announce)

        base = self.current_lsn
        n = len(changes)
        final_lsn = base + LSN_STEP * (n + 1)  # range-checked: every LSN below is smaller
        end_lsn = final_lsn + LSN_STEP
        ts = tx.commit_timestamp
        messages: list[tuple[Lsn, bytes]] = [
            (base + LSN_STEP, pgoutput_encode.encode(pgoutput.Begin(final_lsn, ts, self._next_xid())))
        ]
        messages.extend((Lsn(0), pgoutput_encode.encode(r)) for r in relations)
        # Per-change LSNs lie between base and final_lsn (already validated), so they skip
        # Lsn's range check: it was a tenth of the publisher's time on bulk transactions.
        make, start, encode = int.__new__, int(base), pgoutput_encode.encode
        for i, message in enumerate(changes, start=1):
            messages.append((make(Lsn, start + LSN_STEP * i), encode(message)))
        messages.append(
            (end_lsn, pgoutput_encode.encode(pgoutput.Commit(final_lsn, end_lsn, ts, flags=0)))
        )
        self.current_lsn = end_lsn
        return EncodedTransaction(messages, final_lsn, end_lsn, bytes(offset), n, skipped)

    def encode_frames(self, tx: Transaction, offset: bytes,
                      send_time: int) -> EncodedTransaction | None:
        """:meth:`encode`, straight to the CopyData(XLogData) frames to write (``frames``),
        numbered exactly as :meth:`encode` numbers. The row messages come from
        :attr:`shared` (encoded once for every session with the same view of the tables);
        this session adds only the framing, Begin, Relations and Commit."""
        changes = tx.changes
        if self.shared is None or type(changes) is not list or not changes:
            out = self.encode(tx, offset)
            if out is not None:
                out.frames = [copyboth.xlog_data(lsn, lsn, payload, send_time)
                              for lsn, payload in out.messages]
            return out
        entry = self.shared.transaction((bytes(offset), len(changes), tx.commit_timestamp),
                                        changes)
        tables: list[Table | None] = []
        shapes: list[Shape] = []
        for rel in entry.relations:
            table = self.announced.get(rel)
            if table is None:
                table = self.lookup(rel)
            tables.append(table)
            known = self._shapes.get(rel)
            if known is None or known[0] is not table:
                known = self._shapes[rel] = (table, table_shape(table))
            shapes.append(known[1])
        bodies = self.shared.bodies(entry, changes, tables, tuple(shapes),
                                    self._change_message, pgoutput_encode.encode)
        self._report_skipped(bodies.skipped, bodies.skipped_tables)
        rows = bodies.rows
        if not rows:
            return None
        encode = pgoutput_encode.encode
        base = int(self.current_lsn)
        n = len(rows)
        final_lsn = Lsn(base + LSN_STEP * (n + 1))  # range-checked once
        end_lsn = final_lsn + LSN_STEP
        ts = tx.commit_timestamp
        xlog = copyboth.xlog_data
        frames = [xlog(base + LSN_STEP, base + LSN_STEP,
                       encode(pgoutput.Begin(final_lsn, ts, self._next_xid())), send_time)]
        for r, rel in enumerate(entry.relations):
            table = tables[r]
            if table is not None and rel not in self.announced and (
                    table.primary_keys or r in entry.truncates):
                self.announced[rel] = table
                frames.append(xlog(0, 0, encode(relation_message(table)), send_time))
        relids = [0 if t is None else t.oid for t in tables]
        pack, append, lsn = ROW_HEAD.pack, frames.append, base
        for r, tag, rest in rows:
            lsn += LSN_STEP
            if rest is None:  # Truncate: its relation id is inside the message
                append(xlog(lsn, lsn, encode(pgoutput.Truncate((relids[r],), 0)), send_time))
                continue
            append(pack(b"d", ROW_HEAD_LEN + len(rest), b"w", lsn, lsn, send_time, tag,
                        relids[r]))
            append(rest)
        frames.append(xlog(end_lsn, end_lsn,
                           encode(pgoutput.Commit(final_lsn, end_lsn, ts, flags=0)), send_time))
        self.current_lsn = end_lsn
        return EncodedTransaction([], final_lsn, end_lsn, bytes(offset), n, bodies.skipped,
                                  frames)

    def encode_streamed(
        self, tx: Transaction, offset: bytes, piece: int = 1000
    ) -> tuple[EncodedTransaction, Iterator[list[tuple[Lsn, bytes]]]]:
        """:meth:`encode` for a transaction too big to encode at once: its numbering (from
        ``len(tx.changes)``, changes skipped for this subscriber leave gaps) and an iterator
        of message pieces, Begin in the first and Commit in the last, encoded as they are
        taken. Relations are described right before their first change, as pgoutput does.
        The returned ``EncodedTransaction`` has no messages of its own."""
        n = len(tx.changes)
        base = self.current_lsn
        final_lsn = base + LSN_STEP * (n + 1)
        end_lsn = final_lsn + LSN_STEP
        ts = tx.commit_timestamp
        self.current_lsn = end_lsn
        header = EncodedTransaction([], final_lsn, end_lsn, bytes(offset), n)

        def pieces() -> Iterator[list[tuple[Lsn, bytes]]]:
            encode = pgoutput_encode.encode
            out = [(base + LSN_STEP, encode(pgoutput.Begin(final_lsn, ts, self._next_xid())))]
            skipped = 0
            skipped_tables: set[str] = set()
            for i, change in enumerate(tx.changes, start=1):
                rel = tuple(change.relation)
                table = self.announced.get(rel)
                if table is None:
                    table = self.lookup(rel)
                    if table is not None and (
                            table.primary_keys or isinstance(change, TruncatedRelation)):
                        self.announced[rel] = table
                        out.append((Lsn(0), encode(relation_message(table))))
                message = None
                if table is not None and (
                        table.primary_keys or isinstance(change, TruncatedRelation)):
                    message = self._change_message(table, change)
                if message is None:
                    skipped += 1
                    if table is None or not table.primary_keys:
                        skipped_tables.add(f"{rel[0]}.{rel[1]}")
                else:
                    out.append((int.__new__(Lsn, int(base) + LSN_STEP * i), encode(message)))
                if len(out) >= piece:
                    yield out
                    out = []
            out.append((end_lsn, encode(pgoutput.Commit(final_lsn, end_lsn, ts, flags=0))))
            header.skipped = skipped
            self._report_skipped(skipped, skipped_tables)
            yield out

        return header, pieces()

    def _report_skipped(self, skipped: int, tables: set[str]) -> None:
        """Not a loss: the change stays in the log for every other reader; this subscriber
        has no such table (or no key to apply it by) and could not apply it. A table it gets
        later is sent to it whole (Publisher.backfill). Counted."""
        if not skipped:
            return
        metrics.skipped("table_not_at_subscriber", skipped)
        self._log.warning(
            "skipped {} change(s) of a log transaction for {}: table unknown to this "
            "Postgres' publication or without a primary key",
            skipped, ", ".join(sorted(tables)) or "rows that cannot be identified")

    def _next_xid(self) -> int:
        # Distinct per session so the subscriber's error context names a transaction; 0 is
        # InvalidTransactionId in Postgres, so start at 1 and stay in 32 bits.
        return (next(self._xids) - 1) % 0xFFFFFFFE + 1

    @staticmethod
    def _change_message(table: Table, change: Any) -> pgoutput.Message | None:
        if isinstance(change, NewRecord | UpdatedRecord):
            # Every column, registry order. A column the log row lacks goes out as NULL: the
            # Relation message promised it, and leaving it out is not expressible in an I.
            values = tuple(_text(change.record.get(c.name)) for c in table.columns)
            return pgoutput.Insert(table.oid, values)
        if isinstance(change, DeletedRecord):
            old = change.old_record or {}
            names = table.column_names()
            if all(name in old for name in names):
                return pgoutput.Delete(table.oid, old=tuple(_text(old[name]) for name in names))
            if not all(old.get(k) is not None for k in table.primary_keys):
                return None  # cannot identify the row
            keys = set(table.primary_keys)
            key = tuple(_text(old.get(name)) if name in keys else None for name in names)
            return pgoutput.Delete(table.oid, key=key)
        if isinstance(change, TruncatedRelation):
            return pgoutput.Truncate((table.oid,), 0)
        return None


def _text(value: str | None) -> bytes | None:
    if value is None:
        return None
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)


# -- resume -----------------------------------------------------------------------------------


class MappingStore(Protocol):
    """The part of :class:`electric.offsets.store.OffsetStore` the slot needs."""

    def get_pg_offset_at_or_before(self, slot: str, lsn: int) -> tuple[int, bytes] | None: ...

    def last_pg_mapping(self, slot: str) -> tuple[int, bytes] | None: ...


@dataclass(frozen=True)
class ResumePlan:
    """Where to start reading the log, and from which LSN to number, for a subscriber."""

    after_offset: bytes | None  # resume strictly after this log offset; None = from the start
    start_lsn: Lsn  # numbering base (= the subscriber's requested position)
    reason: str  # "new", "exact", "older", "collected", "unknown" (for the log)

    @property
    def anchor(self) -> tuple[int, bytes] | None:
        """The mapping to store before streaming: ``start_lsn → after_offset``.

        Putting it drops every mapping above ``start_lsn`` (numbering restarts there), so a
        later fallback lookup can never land on a mapping from the superseded numbering.
        """
        if self.after_offset is None or self.start_lsn == 0:
            return None
        return int(self.start_lsn), self.after_offset


def _oldest_mapping(store: MappingStore, slot: str) -> tuple[int, bytes] | None:
    """Smallest stored LSN of ``slot`` using only the at-or-before lookup (binary search)."""
    last = store.last_pg_mapping(slot)
    if last is None:
        return None
    lo, hi = 0, int(last[0])  # at_or_before(hi) exists; find the least x where it does
    while lo < hi:
        mid = (lo + hi) // 2
        if store.get_pg_offset_at_or_before(slot, mid) is None:
            lo = mid + 1
        else:
            hi = mid
    return store.get_pg_offset_at_or_before(slot, lo)


def plan_resume(store: MappingStore, slot: str, requested: int) -> ResumePlan:
    """Decide where a subscriber asking for ``START_REPLICATION … LOGICAL requested`` resumes.

    * ``0/0``: a subscription that never applied anything from us → the whole log, once.
    * a mapping at or before ``requested`` → after its offset. An exact hit is the normal case;
      an older one happens when the subscriber's last transactions wrote nothing locally (its
      origin did not advance), and re-sending those no-ops is harmless.
    * only mappings above ``requested`` → older ones were garbage-collected after the subscriber
      confirmed them (:meth:`SlotEncoder` users collect below the *flushed* position only), so
      everything between ``requested`` and the oldest kept mapping was processed and wrote
      nothing: resume after the oldest kept mapping.
    * no mapping at all although ``requested`` is not 0/0 (offset file lost or replaced) → the
      whole log again (idempotent upserts), numbered above ``requested``.
    """
    requested = Lsn(requested)
    if requested == 0:
        return ResumePlan(None, requested, "new")
    found = store.get_pg_offset_at_or_before(slot, requested)
    if found is not None:
        lsn, offset = found
        return ResumePlan(bytes(offset), requested, "exact" if lsn == requested else "older")
    oldest = _oldest_mapping(store, slot)
    if oldest is not None:
        return ResumePlan(bytes(oldest[1]), requested, "collected")
    return ResumePlan(None, requested, "unknown")
