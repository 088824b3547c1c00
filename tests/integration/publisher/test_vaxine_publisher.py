"""Publisher fed by the real log path: embedded Vaxine → WAL stream → PG15 subscriber.

Conflicts are resolved by Vaxine's CRDTs; the subscriber must end up with the merged rows.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from electric.changes import DeletedRecord, NewRecord, Transaction, UpdatedRecord
from electric.postgres.publisher import vaxine_stream_opener
from electric.vaxine import rows as vx_rows
from electric.vaxine.embedded.server import EmbeddedVaxine
from electric.vaxine.pool import VaxinePool

from .conftest import ITEMS, wait_for

IDS = [str(uuid.UUID(int=1000 + i)) for i in range(10)]


def pk(_relation):
    return ["id"]


@pytest.fixture
def vaxine(tmp_path):
    server = EmbeddedVaxine(str(tmp_path / "vaxine"), api_port=0, replication_port=0).start()
    pool = VaxinePool("127.0.0.1", server.api_port, size=2, connect_timeout_ms=2000)
    yield server, pool
    pool.close()
    server.stop()


def write(pool, *changes, origin="postgres_1"):
    tx = Transaction(list(changes), datetime.now(UTC), origin=origin, publication="all_tables")
    assert vx_rows.write_transaction(pool, tx, pk)


def items(setup):
    return setup.sql("SELECT id::text, title, qty FROM public.items ORDER BY id")


def test_merged_log_reaches_the_subscriber_and_resumes(setup, vaxine):
    server, pool = vaxine
    setup.publisher.stop()
    setup.publisher = setup.new_publisher()
    setup.publisher.open_stream = vaxine_stream_opener("127.0.0.1", server.replication_port)

    rec = {"id": IDS[0], "title": "from a", "qty": "1"}
    write(pool, NewRecord(ITEMS.relation, rec))
    # a delete followed by an update of the row from another origin: the row lives on
    write(pool, DeletedRecord(ITEMS.relation, rec), origin="postgres_1")
    write(pool, UpdatedRecord(ITEMS.relation, {**rec, "title": "State2"}), origin="postgres_2")
    write(pool, NewRecord(ITEMS.relation, {"id": IDS[1], "title": "gone", "qty": None}))
    write(pool, DeletedRecord(ITEMS.relation, {"id": IDS[1], "title": "gone", "qty": None}))

    setup.subscribe()
    wait_for(lambda: items(setup) == [(IDS[0], "State2", 1)], what="merged state")
    wait_for(lambda: setup.publisher.status()[setup.name]["pending_transactions"] == 0)

    setup.pg.restart()
    write(pool, UpdatedRecord(ITEMS.relation, {"id": IDS[0], "title": "after restart", "qty": "2"}))
    setup.reconnect()
    wait_for(lambda: items(setup) == [(IDS[0], "after restart", 2)], timeout=30)
    status = setup.publisher.status()[setup.name]
    assert status["sessions"] >= 2 and status["streaming"]
