"""A real stock Postgres subscribed to an in-process Publisher fed by a fake log."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace

import pytest
from gevent.event import Event

from electric.changes import Column, Table, Transaction, utc_now
from electric.limits import DEFAULT
from electric.offsets.store import OffsetStore
from electric.postgres import green
from electric.postgres.publisher import Publisher
from electric.postgres.subscription import electric_conninfo, subscribe
from electric.schema import SchemaRegistry
from tests.support.waiting import wait_until as wait_for

PUBLICATION = "all_tables"
PASSWORD = "subscriber-secret"  # what the in-process publisher asks subscribers for

SUBSCRIBER_SQL = """
DROP TABLE IF EXISTS public.items, public.full_items, public.audit CASCADE;
CREATE TABLE public.items (id uuid PRIMARY KEY, title text, qty int);
CREATE TABLE public.full_items (id uuid PRIMARY KEY, title text, qty int);
ALTER TABLE public.full_items REPLICA IDENTITY FULL;
-- One audit row per row change the apply worker makes: proves "no duplicate-applied
-- transactions" (ENABLE ALWAYS so it fires in the apply worker too).
CREATE TABLE public.audit (n serial PRIMARY KEY, tbl text, id uuid, title text, op text);
CREATE OR REPLACE FUNCTION public.audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    INSERT INTO public.audit (tbl, id, title, op) VALUES (TG_TABLE_NAME, OLD.id, OLD.title, TG_OP);
  ELSE
    INSERT INTO public.audit (tbl, id, title, op) VALUES (TG_TABLE_NAME, NEW.id, NEW.title, TG_OP);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON public.items
  FOR EACH ROW EXECUTE FUNCTION public.audit_fn();
ALTER TABLE public.items ENABLE ALWAYS TRIGGER audit;
"""


def _columns() -> tuple[Column, ...]:
    return (
        Column("id", "uuid", 2950, -1, False, True),
        Column("title", "text", 25, -1, True, False),
        Column("qty", "int4", 23, -1, True, False),
    )


ITEMS = Table("public", "items", 0, _columns(), ("id",), "d")
FULL_ITEMS = Table("public", "full_items", 0, _columns(), ("id",), "f")


class FakeLog:
    """An append-only list of transactions served like the Vaxine stream (blocks at the end)."""

    def __init__(self) -> None:
        self.entries: list[tuple[Transaction, bytes]] = []
        self.opens: list[bytes | None] = []
        self._grew = Event()

    def append(self, *changes, ts=None) -> bytes:
        offset = b"vx:%08d" % len(self.entries)
        self.entries.append((Transaction(list(changes), ts or utc_now()), offset))
        event, self._grew = self._grew, Event()
        event.set()
        return offset

    def open_stream(self, after: bytes | None) -> Iterator[tuple[Transaction, bytes]]:
        self.opens.append(after)
        i = 0 if after is None else [o for _, o in self.entries].index(after) + 1
        while True:
            while i < len(self.entries):
                yield self.entries[i]
                i += 1
            self._grew.wait()


class Setup:
    _names = itertools.count(1)

    def __init__(self, pg, tmp_path) -> None:
        self.pg = pg
        self.name = f"sub_{next(self._names)}"
        self.log = FakeLog()
        self.registry = SchemaRegistry()
        self.registry.put_tables(PUBLICATION, [ITEMS, FULL_ITEMS])
        self.registry.set_ready(self.name)
        self.offsets = OffsetStore(str(tmp_path / "offsets.dat"))
        self.publisher = self.new_publisher()
        self.conn = green.connect(pg.dsn())
        self.conn.autocommit = True
        self.sql(SUBSCRIBER_SQL)

    def new_publisher(self, port: int = 0, *, limits: dict | None = None, **kwargs) -> Publisher:
        # Keepalives every second: the tests wait for a subscriber's confirmations.
        section = replace(DEFAULT.postgres, publisher_keepalive_interval=1.0, **(limits or {}))
        publisher = Publisher(
            registry=self.registry,
            offsets=self.offsets,
            open_stream=self.log.open_stream,
            host="127.0.0.1",
            port=port,
            limits=section,
            password=PASSWORD,
            **kwargs,
        )
        publisher.start()
        return publisher

    def conninfo(self, **extra: str) -> str:
        """How a subscriber reaches the publisher, password included."""
        return electric_conninfo("127.0.0.1", self.publisher.port, user="electric",
                                 password=PASSWORD, **extra)

    def sql(self, query: str, params=None) -> list[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else []

    def subscribe(self, relations=None) -> bool:
        return subscribe(
            self.conn,
            name=self.name,
            conninfo=self.conninfo(dbname="test"),
            publication=PUBLICATION,
            relations=relations or [ITEMS.relation, FULL_ITEMS.relation],
            gate=self.publisher,
        )

    def reconnect(self) -> None:
        self.conn.close()
        self.conn = wait_for(self._try_connect, what="subscriber back up")
        self.conn.autocommit = True

    def _try_connect(self):
        try:
            return green.connect(self.pg.dsn())
        except Exception:  # noqa: BLE001 - still starting
            return None

    def close(self) -> None:
        try:
            self.sql(f"ALTER SUBSCRIPTION {self.name} DISABLE")
            self.sql(f"ALTER SUBSCRIPTION {self.name} SET (slot_name = NONE)")
            self.sql(f"DROP SUBSCRIPTION {self.name}")
        except Exception:  # noqa: BLE001 - best effort
            pass
        self.conn.close()
        self.publisher.stop()
        self.offsets.close()


@pytest.fixture(scope="module")
def subscriber_pg(pg_factory):
    return pg_factory("publisher_sub")


@pytest.fixture
def setup(subscriber_pg, tmp_path):
    s = Setup(subscriber_pg, tmp_path)
    yield s
    s.close()
