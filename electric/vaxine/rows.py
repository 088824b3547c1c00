"""Electric's data model in Vaxine: change records ↔ CRDT map operations and states.

Writing (docs/protocols.md §4.1–4.2): one Vaxine transaction per Electric transaction holding
``metadata:0`` (commit_timestamp, id, origin, publication) and one ``rows:<schema>:<table>:
<pk…>`` RRMAP per change. Differences from the reference, on purpose (docs/gaps.md):

* G20: ``id``, ``schema`` and ``table`` are written for every change (insert, update and
  delete), so a row that was never inserted through Electric still materialises with an id
  and its transaction is not dropped by readers.
* Deletes also write the primary-key columns into ``row`` (same key ⇒ same values, so this
  never overrides concurrent data) so that a delete of such a row still carries its key.
* An update writes every column of the new record (the reference's G24 behaviour) and never
  emits map removes (G23). An update that changes the primary key becomes a delete of the
  old key plus an upsert of the new one.
* G21/G25: no read-backs; a transaction is written with one ``ApbStaticUpdateObjects``
  (start + all updates + commit in one round trip, atomic: nothing is left to abort on
  failure), or, when it has more operations or encoded bytes than one request may carry
  (:class:`~electric.limits.VaxineLimits`), as an interactive transaction with chunked ``ApbUpdateObjects``
  that is aborted on any failure. Splitting by bytes too matters: a request larger than the
  frame limit makes the server close the connection, which looks retryable and would stall
  ingest forever. A single operation that cannot fit in one frame is refused up front with
  :class:`RowMappingError` (permanent: retrying cannot help).
* Truncates have no representation in the log: they are skipped with a warning. A
  transaction with nothing else to write writes nothing (``write_transaction`` → ``None``).

Reading (docs/protocols.md §4.4): metadata is taken from ``metadata:0``'s effects, rows from the materialised
states with the transaction's own effects applied on top (a Vaxine may stream a transaction
before its state includes it); ``deleted?`` is read with token lists treated as sets (real
Vaxine may repeat tokens). Readers emit ``UpdatedRecord``/``DeletedRecord`` of the full merged
row, never ``NewRecord``. Nothing is skipped: a transaction that still cannot be read raises
:class:`UnreadableTransaction` and its reader stops there.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from loguru import logger

from electric import errors, metrics
from electric.changes import (
    Change,
    DeletedRecord,
    NewRecord,
    Record,
    RelationName,
    Transaction,
    TruncatedRelation,
    UpdatedRecord,
)
from electric.limits import DEFAULT, VaxineLimits
from electric.pb import antidote_pb2 as pb
from electric.vaxine import antidote, crdt_terms, etf
from electric.vaxine.antidote import FLAG_DW, LWWREG, RRMAP
from electric.vaxine.etf import NIL_ATOM, Atom

BUCKET = b"vax"
METADATA_KEY = b"metadata:0"
ROW_PREFIX = b"rows:"

log = logger.bind(origin="vaxine_rows")

PrimaryKeys = Callable[[RelationName], list[str]]


class RowMappingError(errors.Permanent, ValueError):
    """A change that cannot be mapped (no primary key, key column missing or NULL)."""


# --------------------------------------------------------------------------- values


_NIL_VALUE = etf.encode(NIL_ATOM)
_BINARY_TERM = etf.encode(b"")[:2]  # version byte and BINARY_EXT tag; a u32 length follows
_unpack_u32 = struct.Struct(">I").unpack_from


def encode_value(value: str | None) -> bytes:
    """Column value as stored in the nested ``row`` map: ``term_to_binary`` of it
    (``nil`` or a BINARY_EXT, built directly: this runs for every column written)."""
    if value is None:
        return _NIL_VALUE
    data = value.encode("utf-8", "surrogateescape")
    return etf.VERSION_BYTE + etf.binary(data)


def decode_value(raw: bytes) -> str | None:
    if raw[:2] == _BINARY_TERM and len(raw) == 6 + _unpack_u32(raw, 2)[0]:  # a binary: the usual
        return raw[6:].decode("utf-8", "surrogateescape")
    term = etf.decode(raw)
    if isinstance(term, bytes):
        return term.decode("utf-8", "surrogateescape")
    if term == NIL_ATOM:
        return None
    if isinstance(term, Atom):
        return term.name
    if isinstance(term, int | float):
        return str(term)
    raise ValueError(f"unexpected column value term {term!r}")


def format_commit_timestamp(ts: datetime) -> str:
    """Elixir ``DateTime`` text: ``YYYY-MM-DD HH:MM:SS.ffffffZ`` in UTC."""
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%d %H:%M:%S.%fZ")


def parse_commit_timestamp(text: str) -> datetime:
    """Accepts a space or ``T`` separator, any fraction precision, ``Z`` or an offset."""
    value = text.strip().replace(" ", "T", 1)
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    ts = datetime.fromisoformat(value)
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


# --------------------------------------------------------------------------- writing


def row_id(relation: RelationName, record: Record, pk_columns: list[str]) -> str:
    if not pk_columns:
        raise RowMappingError(f"{relation[0]}.{relation[1]} has no primary key")
    parts = [relation[0], relation[1]]
    for col in pk_columns:
        value = record.get(col)
        if value is None:
            raise RowMappingError(f"{relation[0]}.{relation[1]}: primary key column {col} "
                                  "is missing or NULL")
        parts.append(value)
    return ":".join(parts)


def _field(name: bytes, crdt_type: int, operation: bytes) -> list[tuple]:
    return [(name, crdt_type, operation)]


def _map_op(key: bytes, nested: list[tuple]) -> bytes:
    """One top-level op on ``key``: a map update of one field (how Vax emits them)."""
    return antidote.raw_update_op(key, RRMAP, BUCKET, antidote.raw_map_update(nested))


def _row_field(columns: Record) -> list[tuple]:
    # One nested ``row`` update per column, each a one-entry map update (Vax's shape, and
    # what shows up as one effect entry per column in the stream).
    return [
        (b"row", RRMAP, antidote.raw_map_update(
            [(col.encode(), LWWREG, antidote.raw_reg_assign(encode_value(columns[col])))]))
        for col in sorted(columns)
    ]


_DELETED_OPS = {
    deleted: antidote.raw_map_update([(b"deleted?", FLAG_DW, antidote.raw_flag_set(deleted))])
    for deleted in (False, True)
}
_relation_ops: dict[RelationName, list[bytes]] = {}


def _relation_field_ops(relation: RelationName) -> list[bytes]:
    """The ``schema`` and ``table`` field updates (the same for every row of a table)."""
    ops = _relation_ops.get(relation)
    if ops is None:
        ops = [antidote.raw_map_update(_field(name, LWWREG, antidote.raw_reg_assign(v.encode())))
               for name, v in ((b"schema", relation[0]), (b"table", relation[1]))]
        if len(_relation_ops) < 10_000:
            _relation_ops[relation] = ops
    return ops


def _row_ops(relation: RelationName, rid: str, deleted: bool, columns: Record) -> list[bytes]:
    """Ops for one row object, fields in byte order as Vax sends them."""
    key = ROW_PREFIX + rid.encode()
    operations = [
        _DELETED_OPS[deleted],
        antidote.raw_map_update(_field(b"id", LWWREG, antidote.raw_reg_assign(rid.encode()))),
    ]
    if columns:
        operations.append(antidote.raw_map_update(_row_field(columns)))
    operations += _relation_field_ops(relation)
    bound = antidote.raw_bound_object(key, RRMAP, BUCKET)
    return [antidote.raw_update_op_on(bound, op) for op in operations]


def _parsed(raw_ops: list[bytes]) -> list[pb.ApbUpdateOp]:
    out = []
    for raw in raw_ops:
        op = pb.ApbUpdateOp()
        op.ParseFromString(raw)
        out.append(op)
    return out


def change_ops(change: Change, pk_columns: list[str]) -> list[pb.ApbUpdateOp]:
    """The top-level ``ApbUpdateOp``s for one change (empty for truncates)."""
    return _parsed(change_op_bytes(change, pk_columns))


def change_op_bytes(change: Change, pk_columns: list[str]) -> list[bytes]:
    """:func:`change_ops`, serialized (what the write path sends)."""
    if isinstance(change, NewRecord):
        return _row_ops(change.relation, row_id(change.relation, change.record, pk_columns),
                        False, change.record)
    if isinstance(change, UpdatedRecord):
        new_id = row_id(change.relation, change.record, pk_columns)
        ops = []
        if change.old_record:
            old_id = row_id(change.relation, change.old_record, pk_columns)
            if old_id != new_id:
                ops += change_op_bytes(DeletedRecord(change.relation, change.old_record),
                                       pk_columns)
        return ops + _row_ops(change.relation, new_id, False, change.record)
    if isinstance(change, DeletedRecord):
        rid = row_id(change.relation, change.old_record, pk_columns)
        keys = {col: change.old_record[col] for col in pk_columns}
        return _row_ops(change.relation, rid, True, keys)
    if isinstance(change, TruncatedRelation):
        # A documented limit of the external-Vaxine path (the embedded store deletes the rows
        # present): the log has no representation for it. Counted, and said once per call.
        metrics.skipped("truncate")
        log.warning(f"TRUNCATE of {change.relation[0]}.{change.relation[1]} is not replicated "
                    "through an external Vaxine; skipped")
        return []
    raise RowMappingError(f"unknown change {type(change).__name__}")


def metadata_op_bytes(tx: Transaction) -> list[bytes]:
    values = [
        (b"commit_timestamp", format_commit_timestamp(tx.commit_timestamp)),
        (b"id", "0"),
        (b"origin", tx.origin or ""),
        (b"publication", tx.publication or ""),
    ]
    return [_map_op(METADATA_KEY, _field(name, LWWREG, antidote.raw_reg_assign(v.encode())))
            for name, v in values]


def transaction_op_bytes(tx: Transaction, primary_keys: PrimaryKeys,
                         limits: VaxineLimits = DEFAULT.vaxine) -> list[bytes]:
    """Every serialized op of the Vaxine transaction for ``tx`` (empty if none)."""
    max_op_bytes = limits.max_op_bytes
    ops: list[bytes] = []
    for change in tx.changes:
        pks = [] if isinstance(change, TruncatedRelation) else list(primary_keys(change.relation))
        change_ops_ = change_op_bytes(change, pks)
        for op in change_ops_:
            if len(op) > max_op_bytes:
                schema, table = change.relation
                raise RowMappingError(
                    f"a row of {schema}.{table} encodes to {len(op)} bytes, more than the "
                    f"{max_op_bytes}-byte limit of one Vaxine request"
                )
        ops += change_ops_
    return metadata_op_bytes(tx) + ops if ops else []


def request_chunks(
    ops: list[bytes], max_ops: int = DEFAULT.vaxine.max_ops_per_request,
    max_bytes: int = DEFAULT.vaxine.max_request_bytes,
) -> list[list[bytes]]:
    """Split ``ops`` in order into requests of at most ``max_ops`` operations and about
    ``max_bytes`` encoded bytes (an operation larger than that goes alone)."""
    chunks: list[list[bytes]] = []
    chunk: list[bytes] = []
    size = 0
    for op in ops:
        n = len(op) + 6  # field tag + length varint of the repeated field
        if chunk and (len(chunk) >= max_ops or size + n > max_bytes):
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(op)
        size += n
    if chunk:
        chunks.append(chunk)
    return chunks


def transaction_ops(tx: Transaction, primary_keys: PrimaryKeys) -> list[pb.ApbUpdateOp]:
    """:func:`transaction_op_bytes` as protobuf messages."""
    return _parsed(transaction_op_bytes(tx, primary_keys))


def write_transaction(pool, tx: Transaction, primary_keys: PrimaryKeys,
                      limits: VaxineLimits = DEFAULT.vaxine) -> bytes | None:
    """Write ``tx`` as one Vaxine transaction; returns the commit clock bytes.

    ``None`` when there was nothing to write. Raises :class:`RowMappingError` before
    touching Vaxine for unmappable input (including a row or transaction too large to store), and :class:`~electric.vaxine.antidote.VaxineError`
    (after aborting the Vaxine transaction) when Vaxine fails; the caller may retry.
    """
    ops = transaction_op_bytes(tx, primary_keys, limits)
    if not ops:
        return None
    total = sum(len(op) for op in ops)
    if total > limits.max_transaction_bytes:
        raise RowMappingError(
            f"transaction of {len(tx.changes)} changes encodes to {total} bytes, more than "
            f"the {limits.max_transaction_bytes}-byte limit of one Vaxine transaction"
        )
    chunks = request_chunks(ops, limits.max_ops_per_request, limits.max_request_bytes)
    if len(chunks) == 1:
        # One round trip: a static transaction is still one atomic Vaxine transaction
        # (one vx_wal_txn), and a failure leaves nothing behind to abort.
        with pool.connection() as conn:
            return conn.static_update(ops)
    with pool.transaction() as txn:
        for chunk in chunks:
            txn.update(chunk)
        return txn.commit()


# --------------------------------------------------------------------------- reading


def _text(raw: Any) -> str:
    return raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else str(raw)


def _metadata_fields(effects: list) -> dict[str, str]:
    meta = {}
    for effect in effects:
        for (field, ftype), nested in effect[0]:
            if ftype == crdt_terms.LWW and isinstance(nested, tuple) and len(nested) == 2:
                meta[_text(field)] = _text(nested[1][1])
    return meta


def wal_metadata(ops: list) -> dict[str, str] | None:
    """``metadata:0`` fields from its *effects* (the state may hold a later writer's)."""
    for (key, _bucket), _ctype, _state, effects in ops:
        if key == METADATA_KEY:
            return _metadata_fields(effects)
    return None


class UnreadableTransaction(ValueError):
    """A log transaction Electric cannot materialise, even with its own effects.

    Never skipped: the reader that met it stops at ``offset`` and retries (see
    :class:`electric.vaxine.stream.WalStream`). ``key`` names the object at fault (``None``
    when the transaction as a whole is malformed)."""

    def __init__(self, offset: Any, key: bytes | None, reason: str):
        super().__init__(f"log transaction at {offset!r}"
                         + (f", object {key!r}" if key is not None else "") + f": {reason}")
        self.offset = offset
        self.key = key
        self.reason = reason


def _merge_register(fields: dict, name: bytes, effect: Any) -> None:
    current = fields.get(name)
    if current is None or tuple(effect) > tuple(current):
        fields[name] = effect


def _row_fields(state_term: Any, effects: list) -> tuple[dict, dict, tuple[set, set]]:
    """A row object's top-level LWW fields, its columns (``{name: (ts, raw)}``) and its
    ``deleted?`` tokens ``(enable, disable)``: the materialised state with the transaction's
    own effects applied on top.

    The state a WAL frame carries should already include those effects, and re-applying them
    changes nothing then (registers keep the larger ``(ts, value)``, flag tokens are sets).
    But a Vaxine whose stream runs ahead of its materialiser (electric-sql/vaxine before
    7700ffb0) sends the state from *before* the transaction: a new row without ``id``,
    ``schema`` and ``table``, an updated row with its old values. The effects are what the
    transaction wrote, so merging them is exact in both cases.
    """
    fields: dict = {}
    columns: dict = {}
    enable: set = set()
    disable: set = set()
    for (name, _t), value in crdt_terms.dict_to_list(state_term):
        if name == b"row":
            for (col, _ct), register in crdt_terms.dict_to_list(value):
                columns[col] = register
        elif name == b"deleted?":
            enable.update(value[0])
            disable.update(value[1])
        else:
            fields[name] = value
    seen: set = set()
    for effect in effects:
        for (name, ftype), nested in effect[0]:
            inner = nested[1]
            if name == b"row" and ftype == crdt_terms.MAP_RR:
                for (col, _ct), col_nested in inner[0]:
                    _merge_register(columns, col, col_nested[1])
            elif name == b"deleted?" and ftype == crdt_terms.FLAG_DW:
                seen.update(inner[0])
                enable.update(inner[1])
                disable.update(inner[2])
            elif ftype == crdt_terms.LWW:
                _merge_register(fields, name, inner)
    # A token this transaction's own flag effect saw is gone, whatever the state says (real
    # Vaxine can replay stale tokens).
    return fields, columns, (enable - seen, disable - seen)


def row_change(key: bytes, state_term: Any, effects: list, offset: Any = None) -> Change:
    """One row object (materialised state + this transaction's effects) →
    Updated/DeletedRecord. Raises :class:`UnreadableTransaction` when neither holds the
    row's ``id``, ``schema`` and ``table``."""
    fields, columns, (enable, disable) = _row_fields(state_term, effects)
    missing = [f.decode() for f in (b"id", b"schema", b"table") if f not in fields]
    if missing:
        raise UnreadableTransaction(
            offset, key, f"row has no {'/'.join(missing)} in its state or its effects")
    relation = (_text(fields[b"schema"][1]), _text(fields[b"table"][1]))
    record: Record = {_text(col): decode_value(raw) for col, (_ts, raw) in columns.items()}
    if not disable - enable:
        return DeletedRecord(relation, record)
    return UpdatedRecord(relation, record, None)


def _writer_clock(ops: list) -> datetime | None:
    """The largest register timestamp the transaction wrote (Vaxine's clock, microseconds)."""
    latest = 0
    for _key, _ctype, _state, effects in ops:
        for effect in effects:
            for (_name, ftype), nested in effect[0]:
                if ftype == crdt_terms.LWW:
                    latest = max(latest, nested[1][0])
                elif ftype == crdt_terms.MAP_RR:
                    for _col, col_nested in nested[1][0]:
                        latest = max(latest, col_nested[1][0])
    return datetime.fromtimestamp(latest / 1e6, UTC) if latest else None


def transaction_from_wal(wal_txn: Any) -> Transaction | None:
    """A decoded ``vx_wal_txn`` term → Transaction; ``None`` when it touches no object of
    Electric's (no ``metadata:0``, no ``rows:`` key: someone else's data in the same Vaxine,
    nothing of Electric's is lost by passing over it).

    Raises :class:`UnreadableTransaction` for a transaction of Electric's that cannot be
    materialised: the caller stops there and retries, it never skips it.
    """
    offset = wal_txn[3] if isinstance(wal_txn, tuple) and len(wal_txn) == 5 else None
    key = None
    try:
        _tag, _txid, _dc, offset, ops = wal_txn
        meta = None
        changes = []
        for (key, _bucket), ctype, state, effects in ops:
            if key == METADATA_KEY:
                meta = _metadata_fields(effects)
            elif key.startswith(ROW_PREFIX) and ctype == crdt_terms.MAP_RR:
                changes.append(row_change(key, state, effects, offset))
        key = None
        if meta is None:
            if not changes:
                log.debug(f"log transaction at {offset} holds none of Electric's objects")
                return None
            # Rows written straight into Vaxine without Electric's metadata (a static write
            # by another client): still data every replica must see. Their commit time is
            # the writer's clock from the effects.
            commit_ts = _writer_clock(ops) or datetime.now(UTC)
        else:
            commit_ts = parse_commit_timestamp(meta.get("commit_timestamp", ""))
    except UnreadableTransaction:
        raise
    # Any shape the mapping does not expect (a missing map key, a non-bytes key, a short
    # tuple...) makes the transaction unreadable: its reader stops at it (never skips it).
    except (
        ValueError,
        TypeError,
        LookupError,
        AttributeError,
        crdt_terms.CrdtError,
        etf.ETFError,
    ) as exc:
        raise UnreadableTransaction(offset, key if isinstance(key, bytes) else None,
                                    f"unexpected shape ({exc!r})") from exc
    return Transaction(changes=changes, commit_timestamp=commit_ts)
