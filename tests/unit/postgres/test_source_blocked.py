"""SourceReader._write: a sink refusing a transaction as unwritable holds ingestion visibly."""

from datetime import UTC, datetime

import gevent
from loguru import logger

from electric.changes import NewRecord, Transaction
from electric.postgres.lsn import Lsn
from electric.postgres.source import SourceReader
from electric.vaxine.rows import RowMappingError
from tests.support.waiting import wait_until


def test_permanent_sink_error_is_reported_once_exposed_and_retried_until_fixed():
    state = {"fixed": False, "calls": 0}

    def sink(tx):
        state["calls"] += 1
        if not state["fixed"]:
            raise RowMappingError("a row of public.big encodes to 70000000 bytes")

    reader = SourceReader(
        "pg_1", "host=h", slot="s", publication="p", sink=sink, sink_blocked_retry=0.02
    )
    tx = Transaction([NewRecord(("public", "big"), {"id": "1"})], datetime.now(UTC),
                     lsn=Lsn.parse("0/16B3748"))
    errors = []
    sink_id = logger.add(lambda m: errors.append(m.record["message"]), level="ERROR")
    try:
        writer = gevent.spawn(reader._write, tx)
        deadline = gevent.Timeout(5)
        deadline.start()
        wait_until(lambda: state["calls"] >= 5, 5, "five write attempts", step=0.01)
        status = reader.status()
        assert status["blocked_lsn"] == "0/16B3748"
        assert status["sink_retrying"]
        assert "0/16B3748" in status["last_error"] and "RowMappingError" in status["last_error"]
        assert len(errors) == 1  # logged once, not per attempt
        assert "0/16B3748" in errors[0] and "public.big" in errors[0]
        assert not writer.dead  # never skipped
        state["fixed"] = True
        writer.join()
        deadline.cancel()
    finally:
        logger.remove(sink_id)
    status = reader.status()
    assert status["blocked_lsn"] is None and status["last_error"] is None
    assert not status["sink_retrying"]
