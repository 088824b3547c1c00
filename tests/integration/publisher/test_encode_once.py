"""Encode once: several stock Postgres subscribers of one publisher, each log transaction
serialised to pgoutput once (counted in /metrics), every subscriber applying all of it."""

from __future__ import annotations

import uuid

from electric import metrics
from electric.changes import NewRecord
from electric.postgres import green
from electric.postgres.subscription import subscribe

from .conftest import FULL_ITEMS, ITEMS, PUBLICATION, SUBSCRIBER_SQL, wait_for

SUBSCRIBERS = 4  # the fixture's own database + 3 more in the same cluster
TRANSACTIONS = 20


def _encoded() -> float:
    return metrics.REGISTRY.get_sample_value(
        "electric_transactions_encoded_total", {"protocol": "pgoutput"}) or 0.0


def _count(conn) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM public.items")
        return cur.fetchone()[0]


def test_many_subscribers_share_one_encoding_per_transaction(setup):
    others = []
    try:
        for k in range(SUBSCRIBERS - 1):
            db = f"encode_once_{k}"
            setup.pg.create_database(db)
            conn = green.connect(setup.pg.dsn(db))
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(SUBSCRIBER_SQL)
            name = f"{setup.name}_e{k}"
            setup.registry.set_ready(name)
            others.append((conn, name))
        before = _encoded()
        for t in range(TRANSACTIONS):
            setup.log.append(*[NewRecord(ITEMS.relation, {"id": str(uuid.uuid4()),
                                                          "title": f"t{t}", "qty": str(i)})
                               for i in range(10)])
        setup.subscribe()
        for conn, name in others:
            subscribe(conn, name=name, conninfo=setup.conninfo(), publication=PUBLICATION,
                      relations=[ITEMS.relation, FULL_ITEMS.relation], gate=setup.publisher)
        conns = [setup.conn] + [conn for conn, _ in others]
        wait_for(lambda: all(_count(c) == TRANSACTIONS * 10 for c in conns),
                 what="every subscriber has every row")
        # One more, live, while all of them stream.
        setup.log.append(NewRecord(ITEMS.relation, {"id": str(uuid.uuid4()), "title": "live",
                                                    "qty": None}))
        wait_for(lambda: all(_count(c) == TRANSACTIONS * 10 + 1 for c in conns),
                 what="the live transaction everywhere")
        stats = setup.publisher.encodings.stats
        assert _encoded() - before == TRANSACTIONS + 1
        assert stats["encoded"] == TRANSACTIONS + 1
        assert stats["reused"] == (TRANSACTIONS + 1) * (SUBSCRIBERS - 1)
        rows = [sorted(setup.sql("SELECT id::text, title, qty FROM public.items"))]
        for conn, _ in others:
            with conn.cursor() as cur:
                cur.execute("SELECT id::text, title, qty FROM public.items")
                rows.append(sorted(cur.fetchall()))
        assert all(r == rows[0] for r in rows)
    finally:
        for conn, name in others:
            with conn.cursor() as cur:
                cur.execute(f"ALTER SUBSCRIPTION {name} DISABLE")
                cur.execute(f"ALTER SUBSCRIPTION {name} SET (slot_name = NONE)")
                cur.execute(f"DROP SUBSCRIPTION {name}")
            conn.close()
