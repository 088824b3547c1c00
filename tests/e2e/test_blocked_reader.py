"""A log transaction nobody can read is never skipped: every reader of the log stops right
before it, says so once at ERROR (offset and object), shows it in /api/status and /metrics,
and keeps re-reading it. Electric on a standalone Vaxine (the WAL-stream path) and a row object
written straight into Vaxine without its ``id``/``schema``/``table`` fields."""

import re
import uuid
from datetime import UTC, datetime

import pytest

from electric.changes import Transaction
from electric.vaxine import antidote, rows
from electric.vaxine.pool import VaxinePool
from tests.e2e.test_against_vaxine import electric, two_postgres  # noqa: F401
from tests.e2e.test_replication import scrape
from tests.support import vaxine as targets
from tests.support.postgres import query, wait_rows


@pytest.fixture
def vaxine():
    """Always a standalone Vaxine of its own: the unreadable object stays in its log for good
    (never point this test at a shared one)."""
    target = targets.standalone()
    yield target
    targets.discard(target)


def _write_row_without_identity(target, key: bytes) -> None:
    column = antidote.raw_map_update(
        [(b"content", antidote.LWWREG, antidote.raw_reg_assign(rows.encode_value("orphan")))])
    ops = rows.metadata_op_bytes(Transaction([], datetime.now(UTC))) + [
        antidote.raw_update_op(key, antidote.RRMAP, rows.BUCKET,
                               antidote.raw_map_update([(b"row", antidote.RRMAP, column)]))]
    pool = VaxinePool(target.host, target.api_port, size=1)
    try:
        with pool.connection() as conn:
            conn.static_update(ops)
    finally:
        pool.close()


def test_unreadable_transaction_holds_every_reader_visibly(vaxine, two_postgres, electric):  # noqa: F811
    (a, b), db = two_postgres
    before = str(uuid.uuid4())
    query(a, db, "INSERT INTO entries (id, content) VALUES (%s, 'before')", (before,))
    wait_rows(b, db, "SELECT content FROM entries WHERE id = %s", [("before",)], args=(before,))

    key = f"rows:public:entries:orphan-{db}".encode()
    _write_row_without_identity(vaxine, key)

    def held():
        blocked = electric.get_json("/api/status")["detail"]["blocked"]
        readers = [r for r in blocked if r.get("key") == key.decode()]
        return readers if len(readers) == 2 and all(r["attempts"] >= 2 for r in readers) else None

    readers = electric.wait_for(held, timeout=30, what="both publisher streams held")
    assert {r["reader"] for r in readers} == {"publisher"}
    assert len({tuple(r["offset"]) for r in readers}) == 1
    assert "id/schema/table" in readers[0]["reason"]
    metrics = scrape(electric)
    assert metrics[("electric_log_readers_blocked", (("reader", "publisher"),))] == 2.0
    assert metrics[("electric_log_reader_blocks_total", (("reader", "publisher"),))] >= 2.0
    # One ERROR per reader, naming the offset and the object; re-reads are not logged again.
    log = electric.log(tail=100000)
    errors = [line for line in log.splitlines() if "[ERROR]" in line]
    assert len(errors) == 2, errors
    assert all(key.decode() in line and re.search(r"offset \[\d+, \d+\]", line)
               for line in errors), errors

    # Later transactions queue up behind it: written into the log, not delivered.
    written = electric.get_json("/api/status")["detail"]["connectors"]["pg_a"][
        "transactions_written"]
    after = str(uuid.uuid4())
    query(a, db, "INSERT INTO entries (id, content) VALUES (%s, 'after')", (after,))
    electric.wait_for(lambda: electric.get_json("/api/status")["detail"]["connectors"]["pg_a"][
        "transactions_written"] > written, timeout=15, what="the later insert in the log")
    electric.wait_for(held, timeout=30, what="still held after another re-read")
    assert query(b, db, "SELECT count(*) FROM entries WHERE id = %s", (after,)) == [(0,)]
