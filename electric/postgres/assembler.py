"""Turns a stream of decoded pgoutput messages into Electric transactions. No I/O.

Feed messages in arrival order with :meth:`TransactionAssembler.feed`; it returns a
:class:`Committed` at every Commit and ``None`` otherwise. Every Commit yields one, even when
there is nothing to write, because the caller must still acknowledge ``end_lsn`` so the slot
does not lag behind (the reference never acknowledged empty transactions).

Behaviour, decided here and relied on by the rest of Electric:

* **Echo suppression.** A transaction that carries an Origin message was applied by a
  subscription (normally Electric's own, i.e. an echo of data that is already in the log).
  It is dropped whole (``Committed.skipped`` says why) but still acknowledged. A
  ``drop_origin`` predicate can narrow this to specific origin names.
* **Bookkeeping tables.** Changes to tables in the ``electric`` schema (migrations history,
  meta) are left out. Unlike the reference, user changes in the same transaction are kept:
  a migration that also inserts data replicates that data.
* **Tables Electric does not replicate** (no primary key, or unknown to the registry) are left
  out change by change, with one warning per table per stream; other tables continue.
* **Unchanged TOAST columns** (``u``) are left out of records; they mean "same as before",
  never a value. When the old row is known (REPLICA IDENTITY FULL) it fills them in.
* **Primary-key changes** (an UPDATE whose old key differs from the new one) become a
  DeletedRecord of the old key followed by a NewRecord of the new row, so the old row does not
  survive under its old key (reference gap: the ``K`` tuple was thrown away).
* **TRUNCATE** becomes one ``TruncatedRelation`` record per truncated table, logged as a
  warning. The log has no truncate operation, so truncates do **not** replicate to other
  replicas; the writer is expected to log and skip these records. Replication never stalls on
  them (the reference stalled forever).
* **Unknown message kinds** (e.g. logical decoding messages) are skipped.
* A Commit whose lsn differs from its Begin's final_lsn, a change outside a transaction, or a
  change for a relation never described, raise :class:`ProtocolError`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from loguru import logger

from electric import metrics
from electric.changes import (
    Change,
    DeletedRecord,
    NewRecord,
    Record,
    RelationName,
    Table,
    Transaction,
    TruncatedRelation,
    UpdatedRecord,
)
from electric.postgres import pgoutput as po
from electric.postgres import pgoutput_decode
from electric.postgres.lsn import Lsn
from electric.postgres.pgoutput import ProtocolError

BOOKKEEPING_SCHEMAS = frozenset({"electric"})


@dataclass(frozen=True)
class Committed:
    """One finished source transaction."""

    transaction: Transaction  # origin = connector, lsn = end_lsn; changes may be empty
    end_lsn: Lsn  # what to acknowledge once the transaction is durable
    skipped: str | None = None  # why the whole transaction is dropped (e.g. "origin pg_16390")
    truncated: tuple[RelationName, ...] = ()
    # Earlier changes of this transaction were handed to ``on_spill`` already; ``transaction``
    # holds only the rest.
    streamed: bool = False

    @property
    def needs_write(self) -> bool:
        """True when the transaction must reach the log before ``end_lsn`` is acknowledged."""
        return self.skipped is None and (self.streamed or bool(self.transaction.changes))


TableLookup = Callable[[RelationName], Table | None]
_ROW_MESSAGES = (b"I", b"U", b"D")
_U32_AT = struct.Struct(">I").unpack_from
_text_record = pgoutput_decode.text_record


class TransactionAssembler:
    """Per-stream state: relation cache and the transaction being assembled."""

    def __init__(
        self,
        origin: str,
        publication: str | None = None,
        *,
        encoding: str = "utf-8",
        table_lookup: TableLookup | None = None,
        refresh_table: TableLookup | None = None,
        drop_origin: Callable[[str], bool] | None = None,
        bookkeeping_schemas: Iterable[str] = BOOKKEEPING_SCHEMAS,
        on_spill: Callable[[list[Change]], None] | None = None,
        spill_after: int = 5000,
    ) -> None:
        self.origin = origin
        self.publication = publication
        self.encoding = encoding
        self.table_lookup = table_lookup
        # Called when a Relation message's columns differ from the known table (DDL done
        # outside Electric's migrations): re-read the schema, return the fresh entry.
        self.refresh_table = refresh_table
        self._checked: set[int] = set()
        self.drop_origin = drop_origin or (lambda _name: True)
        self.bookkeeping_schemas = frozenset(bookkeeping_schemas)
        self.relations: dict[int, po.Relation] = {}
        self._names: dict[int, tuple[str, ...]] = {}  # column names per relation id
        self._log = logger.bind(origin=origin)
        self._warned: set[RelationName] = set()
        self._begin: po.Begin | None = None
        self._changes: list[Change] = []
        self._skip: str | None = None
        self._truncated: list[RelationName] = []
        # A transaction that grows past ``spill_after`` changes is handed to ``on_spill`` in
        # pieces of that size while it is read, so no transaction must fit in memory.
        self.on_spill = on_spill
        self.spill_after = spill_after
        self._spilled = False

    @property
    def in_transaction(self) -> bool:
        return self._begin is not None

    @property
    def dropping(self) -> bool:
        """Inside a transaction that is dropped whole (Electric's own echo, recognised at
        its Origin message): its row messages need not even be decoded."""
        return self._begin is not None and self._skip is not None

    def feed_bytes(self, payload: bytes) -> Committed | None:
        if self._begin is not None and payload[:1] in _ROW_MESSAGES:
            if self._skip is not None:
                return None  # an echo: its rows are not even decoded
            if self._fast_row(payload):
                return None
        return self.feed(pgoutput_decode.decode(payload))

    def _fast_row(self, data: bytes) -> bool:
        """A row message decoded straight into its change (no message object, no TupleData;
        one record dict per tuple): True when done. False for anything unusual (unknown or
        skipped relation, 'K' tuples, binary or invalid values, malformed bytes): the caller
        then takes the general path, which handles it or raises the precise error."""
        if type(data) is not bytes or len(data) < 6:
            return False
        rel_id = _U32_AT(data, 1)[0]
        names = self._names.get(rel_id)
        if names is None:
            rel = self.relations.get(rel_id)
            if rel is None:
                return False
            names = self._names[rel_id] = tuple(c.name for c in rel.columns)
        rel = self.relations[rel_id]
        tag, marker, enc, size = data[0], data[5], self.encoding, len(data)
        old = None
        if tag == 0x49 or tag == 0x44:  # I, D: one tuple, N or O
            if marker != (0x4E if tag == 0x49 else 0x4F):
                return False
            got = _text_record(data, 6, names, enc)
            if got is None or got[1] != size:
                return False
            record = got[0]
        else:  # U: [O tuple] N tuple
            pos = 5
            if marker == 0x4F:
                got = _text_record(data, 6, names, enc)
                if got is None:
                    return False
                old, pos = got
            if pos >= size or data[pos] != 0x4E:
                return False
            got = _text_record(data, pos + 1, names, enc)
            if got is None or got[1] != size:
                return False
            record = got[0]
        accepted, table = self._accept(rel)
        if not accepted:
            return False  # the general path leaves it out (and counts it)
        if tag == 0x49:
            self._changes.append(NewRecord(rel.relation, record))
        elif tag == 0x44:
            self._changes.append(DeletedRecord(rel.relation, record))
        else:
            self._update(rel, table, record, old, old)
        self._spill_if_due()
        return True

    def feed(self, message: po.Message) -> Committed | None:
        if isinstance(message, po.Begin):
            if self._begin is not None:
                raise ProtocolError(
                    f"Begin {message.final_lsn} inside open transaction {self._begin.final_lsn}"
                )
            self._begin = message
            self._changes = []
            self._skip = None
            self._truncated = []
            self._spilled = False
            return None
        if isinstance(message, po.Commit):
            return self._commit(message)
        if isinstance(message, po.Relation):
            self.relations[message.relation_id] = message
            self._names.pop(message.relation_id, None)
            self._checked.discard(message.relation_id)
            return None
        if isinstance(message, po.Origin):
            self._require_tx("Origin")
            if self.drop_origin(message.name):
                self._skip = f"origin {message.name}"
            return None
        if isinstance(message, po.Insert | po.Update | po.Delete):
            self._require_tx(type(message).__name__)
            self._change(message)
            self._spill_if_due()
            return None
        if isinstance(message, po.Truncate):
            self._require_tx("Truncate")
            self._truncate(message)
            return None
        if isinstance(message, po.Type):
            return None  # type names come from pg_type at provisioning
        # LogicalMessage, Unknown: nothing to replicate; skipping keeps the stream moving.
        self._log.debug("skipping pgoutput message {}", type(message).__name__)
        return None

    # -- internals ----------------------------------------------------------------------

    def _spill_if_due(self) -> None:
        if self.on_spill is not None and len(self._changes) >= self.spill_after:
            changes, self._changes = self._changes, []
            self._spilled = True
            self.on_spill(changes)

    def _require_tx(self, what: str) -> None:
        if self._begin is None:
            raise ProtocolError(f"{what} outside a transaction")

    def _commit(self, commit: po.Commit) -> Committed:
        begin = self._begin
        if begin is None:
            raise ProtocolError(f"Commit {commit.lsn} without Begin")
        if commit.lsn != begin.final_lsn:
            raise ProtocolError(
                f"Commit lsn {commit.lsn} does not match Begin final_lsn {begin.final_lsn}"
            )
        self._begin = None
        changes = [] if self._skip else self._changes
        self._changes = []
        tx = Transaction(
            changes=changes,
            commit_timestamp=begin.commit_timestamp,
            origin=self.origin,
            publication=self.publication,
            lsn=commit.end_lsn,
        )
        return Committed(tx, commit.end_lsn, self._skip, tuple(self._truncated),
                         streamed=self._spilled)

    def _relation(self, relation_id: int) -> po.Relation:
        rel = self.relations.get(relation_id)
        if rel is None:
            raise ProtocolError(f"change for relation id {relation_id} never described")
        return rel

    def _accept(self, rel: po.Relation) -> tuple[bool, Table | None]:
        """Whether changes to this relation replicate, and its registry entry if known."""
        name = rel.relation
        if rel.namespace in self.bookkeeping_schemas:
            return False, None
        if self.table_lookup is None:
            return True, None
        table = self.table_lookup(name)
        if table is None:
            if name not in self._warned:
                self._warned.add(name)
                self._log.warning(
                    "changes to {}.{} are not replicated: not a replicated table "
                    "(no primary key, or created outside Electric's migrations)",
                    *name,
                )
            return False, None
        if self.refresh_table is not None and rel.relation_id not in self._checked:
            self._checked.add(rel.relation_id)
            if {c.name for c in rel.columns} != set(table.column_names()):
                self._log.info("columns of {}.{} changed; re-reading its definition", *name)
                table = self.refresh_table(name) or table
        return True, table

    def _text(self, value: po.Value, column: str) -> str | None:
        if value is None:
            return None
        if isinstance(value, po.Binary):
            raise ProtocolError(f"column {column}: binary format was not requested")
        try:
            return value.decode(self.encoding)
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"column {column}: not valid {self.encoding}: {exc}") from None

    def _record(self, rel: po.Relation, values: po.TupleData, keys_only: bool = False) -> Record:
        if len(values) != len(rel.columns):
            raise ProtocolError(
                f"{rel.namespace}.{rel.name}: tuple has {len(values)} columns, "
                f"relation has {len(rel.columns)}"
            )
        record: Record = {}
        for col, value in zip(rel.columns, values, strict=True):
            if value is po.UNCHANGED_TOAST:
                continue
            if keys_only and not col.is_key:
                continue  # 'K' tuples carry NULL placeholders for non-key columns
            record[col.name] = self._text(value, col.name)
        return record

    def _change(self, msg: po.Insert | po.Update | po.Delete) -> None:
        rel = self._relation(msg.relation_id)
        accepted, table = self._accept(rel)
        if not accepted or self._skip:
            # Bookkeeping tables are Electric's own; an echo (self._skip) is already in the
            # log. Anything else left out is counted (and warned about once per table).
            if not accepted and not self._skip and rel.namespace not in self.bookkeeping_schemas:
                metrics.skipped("table_not_replicated")
            return
        relation = rel.relation
        if isinstance(msg, po.Insert):
            self._changes.append(NewRecord(relation, self._record(rel, msg.new)))
            return
        if isinstance(msg, po.Delete):
            if msg.old is not None:
                old = self._record(rel, msg.old)
            else:
                old = self._record(rel, msg.key or (), keys_only=True)
            self._changes.append(DeletedRecord(relation, old))
            return
        new = self._record(rel, msg.new)
        old = self._record(rel, msg.old) if msg.old is not None else None
        before = old
        if before is None and msg.key is not None:
            before = self._record(rel, msg.key, keys_only=True)
        self._update(rel, table, new, old, before)

    def _update(self, rel: po.Relation, table: Table | None, new: Record, old: Record | None,
                before: Record | None) -> None:
        """An update's change(s): ``before`` is the old row or its key, when sent."""
        relation = rel.relation
        if old is not None:
            # Unchanged TOAST in the new row = the old value; fill it in when we know it.
            for name, value in old.items():
                new.setdefault(name, value)
        pks = table.primary_keys if table is not None else self._key_columns(rel)
        if before is not None and pks and _key_changed(before, new, pks):
            self._changes.append(DeletedRecord(relation, before))
            self._changes.append(NewRecord(relation, new))
            return
        self._changes.append(UpdatedRecord(relation, new, old))

    @staticmethod
    def _key_columns(rel: po.Relation) -> tuple[str, ...]:
        if rel.replica_identity in ("d", "i"):
            return tuple(c.name for c in rel.columns if c.is_key)
        return ()  # FULL flags every column, NOTHING none: no key information

    def _truncate(self, msg: po.Truncate) -> None:
        if self._skip:
            return
        for rel_id in msg.relation_ids:
            rel = self._relation(rel_id)
            accepted, _table = self._accept(rel)
            if not accepted:
                continue
            self._truncated.append(rel.relation)
            self._changes.append(TruncatedRelation(rel.relation))


def _key_changed(before: Record, after: Record, pks: Iterable[str]) -> bool:
    return any(pk in before and pk in after and before[pk] != after[pk] for pk in pks)
