"""The change model every part of Electric speaks.

Postgres ingest produces these, the Vaxine writer stores them, the Vaxine reader rebuilds
them from the merged log, and the Postgres publisher and Satellite sessions send them on.

Column values are kept exactly as Postgres' text representation (``str``) or ``None`` for SQL
NULL; no type conversion happens inside Electric. A column whose value Postgres did not send
(unchanged TOAST) is simply absent from the record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

RelationName = tuple[str, str]
"""``(schema, table)``"""

Record = dict[str, str | None]
"""Column name → text value (``None`` for NULL)."""


@dataclass(frozen=True)
class NewRecord:
    relation: RelationName
    record: Record


@dataclass(frozen=True)
class SeedRecord(NewRecord):
    """A row copied from a table that joined replication while its stream ran: written only
    when the log has no state for its key (a row the stream carried, possibly newer than
    the copy, is never overwritten by it)."""


@dataclass(frozen=True)
class UpdatedRecord:
    relation: RelationName
    record: Record
    # Full old row (REPLICA IDENTITY FULL) when known, else ``None``.
    old_record: Record | None = None
    # Read from the embedded store's log: the whole row as the store had it before this
    # change (``{}``: it had no live row), ``None`` when not known (an external Vaxine, a log
    # written before this was recorded). Only sync rules read it, to tell whether a row a
    # client may no longer see was visible to it before (docs/sync-rules.md §3); it is not
    # part of the change's identity and is never sent on.
    prior: Record | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class DeletedRecord:
    relation: RelationName
    old_record: Record


@dataclass(frozen=True)
class TruncatedRelation:
    relation: RelationName


Change = NewRecord | UpdatedRecord | DeletedRecord | TruncatedRelation

Position = int | bytes | tuple[int, int] | None
"""Where a transaction came from in its source, as that source counts:

* ``int``: a Postgres end LSN (``electric.postgres.lsn.Lsn``, an ``int``), set by the source
  reader; acknowledged to the slot once the transaction is durable;
* ``bytes``: the lsn a Satellite client sent with it (opaque to Electric, echoed back in the
  acknowledgement);
* ``tuple[int, int]``: a Vaxine offset (the log position it was read back at), an
  ``electric.vaxine.offset.VaxineOffset`` (a ``NamedTuple``, so a tuple here);
* ``None``: not known (read back from the log without one, or built by Electric itself, e.g.
  an initial-sync copy).
"""


@dataclass(frozen=True)
class Transaction:
    """One committed transaction. Frozen: a transaction is handed between greenlets (reader,
    store writer, fan-out), so none of them may change it under another; build a new one
    (``dataclasses.replace``) instead. ``changes`` is built completely before construction."""

    changes: list[Change]
    commit_timestamp: datetime
    # Connector name or Satellite client id that wrote it; ``None`` when read from the log.
    origin: str | None = None
    # Postgres publication name; ``""`` for Satellite transactions.
    publication: str | None = None
    # Source position; see :data:`Position` for which source uses which type.
    lsn: Position = None


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Column:
    name: str
    type_name: str  # e.g. "int4", "text", "uuid"; unknown types replicate as text
    type_oid: int = 25
    type_modifier: int = -1
    nullable: bool = True
    part_of_identity: bool = False


@dataclass(frozen=True)
class Table:
    """A replicated table as the schema registry knows it."""

    schema: str
    name: str
    oid: int
    columns: tuple[Column, ...]
    primary_keys: tuple[str, ...]
    replica_identity: str = "d"  # d=default, f=full, i=index, n=nothing

    @property
    def relation(self) -> RelationName:
        return (self.schema, self.name)

    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None
