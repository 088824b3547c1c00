"""Process-wide schema registry: which tables are replicated and what they look like.

One homogeneous schema is assumed across every connected Postgres ("global namespace"):
tables are identified by ``(schema, name)`` whichever connector reported them. Connectors
fill it at (re)initialisation; the publisher, Satellite sessions and the log writer read it.

Relation ids handed to subscribers and Satellite clients are Electric's own stable numbers
(from 20000 up, assigned once per ``(schema, name)`` for the life of the process) so that two
connectors reporting the same table never renumber it under a live stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

import gevent
from gevent.event import Event

from electric.changes import RelationName, Table

FIRST_RELATION_ID = 20000


@dataclass(frozen=True)
class Migration:
    vsn: str
    hash: str
    applied_at: datetime | None


@dataclass
class SchemaRegistry:
    _tables: dict[RelationName, Table] = field(default_factory=dict)
    _by_id: dict[int, RelationName] = field(default_factory=dict)
    _ids: dict[RelationName, int] = field(default_factory=dict)
    _publications: dict[str, list[RelationName]] = field(default_factory=dict)
    _ready: dict[str, bool] = field(default_factory=dict)
    _migrations: dict[str, list[Migration]] = field(default_factory=dict)
    _changed: Event = field(default_factory=Event)

    # -- writes -------------------------------------------------------------------------

    def put_tables(self, publication: str, tables: list[Table]) -> list[Table]:
        """Register (or replace) the tables of a publication; returns them with Electric ids."""
        registered = []
        for table in tables:
            relation = table.relation
            rel_id = self._ids.get(relation)
            if rel_id is None:
                rel_id = FIRST_RELATION_ID + len(self._ids)
                self._ids[relation] = rel_id
                self._by_id[rel_id] = relation
            table = replace(table, oid=rel_id)
            self._tables[relation] = table
            registered.append(table)
        names = self._publications.setdefault(publication, [])
        for table in registered:
            if table.relation not in names:
                names.append(table.relation)
        self._notify()
        return registered

    def set_ready(self, origin: str, ready: bool = True) -> None:
        self._ready[origin] = ready
        self._notify()

    def put_migrations(self, origin: str, migrations: list[Migration]) -> None:
        self._migrations[origin] = list(migrations)

    def _notify(self) -> None:
        event, self._changed = self._changed, Event()
        event.set()

    # -- reads --------------------------------------------------------------------------

    def _wait_for(self, lookup, timeout: float):
        """Answer now if known, else wait up to ``timeout`` seconds for a matching put."""
        deadline = None if timeout is None else gevent.get_hub().loop.now() + timeout
        while True:
            value = lookup()
            if value is not None or timeout == 0:
                return value
            remaining = None if deadline is None else deadline - gevent.get_hub().loop.now()
            if remaining is not None and remaining <= 0:
                return None
            self._changed.wait(remaining)

    def table(self, relation: RelationName, wait: float = 0) -> Table | None:
        return self._wait_for(lambda: self._tables.get(tuple(relation)), wait)

    def table_by_id(self, rel_id: int, wait: float = 0) -> Table | None:
        def lookup():
            relation = self._by_id.get(rel_id)
            return None if relation is None else self._tables.get(relation)

        return self._wait_for(lookup, wait)

    def publication_tables(self, publication: str, wait: float = 0) -> list[Table] | None:
        def lookup():
            names = self._publications.get(publication)
            return None if names is None else [self._tables[n] for n in names]

        return self._wait_for(lookup, wait)

    def next_change(self) -> Event:
        """An event set at the next change of the tables (or readiness): take it *before*
        reading what it guards, so a change made meanwhile is never missed."""
        return self._changed

    def tables(self) -> list[Table]:
        """Every table any connector has reported (what sync rules are checked against)."""
        return list(self._tables.values())

    def is_ready(self, origin: str) -> bool:
        return self._ready.get(origin, False)

    def migrations(self, origin: str) -> list[Migration] | None:
        return self._migrations.get(origin)
