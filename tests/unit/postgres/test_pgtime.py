"""Postgres-epoch timestamps (microseconds since 2000-01-01 UTC)."""

from __future__ import annotations

from datetime import UTC, datetime

from electric.postgres import pgtime

SEND_TIME = pgtime.to_pg_micros(datetime(2022, 11, 23, 10, 0, 1, tzinfo=UTC))


def test_pg_epoch_time():
    assert SEND_TIME == 0x0002911F1ED96A40  # the send time of the test_slot worked example
    assert pgtime.to_pg_micros(datetime(2000, 1, 1)) == 0
    assert pgtime.from_pg_micros(SEND_TIME) == datetime(2022, 11, 23, 10, 0, 1, tzinfo=UTC)
    now = pgtime.pg_now_micros()
    assert abs(now - pgtime.to_pg_micros(datetime.now(UTC))) < 5_000_000
