"""What a client transaction must pass before it is written, sans-I/O: every change names
its primary key, and under sync rules (docs/sync-rules.md §4) every change is one the client
may make: judged on the old rows it sends when the transaction completes, and again by the
writer on the rows as stored (so a forged old row cannot reach another scope's row).

Pure functions of the transaction, the table lookup and the client's filter; the session
turns a refusal into ``SatErrorResp{INVALID_REQUEST}`` and a close.
"""

from __future__ import annotations

from typing import Any

from electric import sync_rules
from electric.changes import Change, DeletedRecord, Record, Transaction, UpdatedRecord
from electric.satellite import frames
from electric.satellite.oplog import ProtocolViolation


def check_primary_keys(tx: Transaction, lookup_table: Any) -> None:
    """Refuse before queueing what the writer could never store (reference: writer crash,
    transaction silently lost). Raises :class:`ProtocolViolation`.

    A table the registry does not know (yet) is left to the writer: right after start-up
    the Postgres connectors may still be describing their tables, so the I/O layer waits a
    little for it before refusing the transaction."""
    for change in tx.changes:
        table = lookup_table(change.relation)
        if table is None:
            continue
        if isinstance(change, DeletedRecord):
            record = change.old_record
        elif isinstance(change, UpdatedRecord) and change.old_record:
            record = change.old_record
        else:
            record = change.record
        missing = [pk for pk in table.primary_keys if record.get(pk) is None]
        if missing:
            raise ProtocolViolation(
                frames.INVALID_REQUEST,
                f"{table.schema}.{table.name} change without primary key column(s) "
                + ", ".join(missing),
            )


def refused_as_sent(flt: sync_rules.EffectiveFilter, tx: Transaction
                    ) -> tuple[Change, str] | None:
    """The first change of ``tx`` outside the client's rules (judged on the old rows the
    client sends), with the reason; ``None`` when every change is allowed."""
    for change in tx.changes:
        reason = sync_rules.may_write(flt, change)
        if reason is not None:
            return change, reason
    return None


def rows_to_verify(flt: sync_rules.EffectiveFilter | None, tx: Transaction) -> list[Change]:
    """The updates and deletes of ``tx`` to filtered tables: the writer looks up their
    stored rows and judges them again with :func:`refused_as_stored`."""
    if flt is None:
        return []
    out = []
    for change in tx.changes:
        if isinstance(change, UpdatedRecord | DeletedRecord):
            table = flt.table(change.relation)
            if table is not None and not table.everything:
                out.append(change)
    return out


def refused_as_stored(flt: sync_rules.EffectiveFilter, changes: list[Change],
                      stored: list[Record | None]) -> tuple[Change, str] | None:
    """Judge ``changes`` (from :func:`rows_to_verify`) again with the stored row as the old
    row. A row that is not stored is judged on what the client sent (already done)."""
    for change, row in zip(changes, stored, strict=True):
        if row is None:
            continue
        if isinstance(change, UpdatedRecord):
            judged: Change = UpdatedRecord(change.relation, change.record, row)
        else:
            judged = DeletedRecord(change.relation, row)
        reason = sync_rules.may_write(flt, judged)
        if reason is not None:
            return change, f"{reason} (as stored)"
    return None
