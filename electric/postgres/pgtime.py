"""Postgres timestamps on the wire: microseconds since 2000-01-01 00:00:00 UTC.

The replication stream's ``sendTime`` fields and pgoutput's Begin/Commit timestamps use
this "Postgres epoch"; this is the one place that converts to and from it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_UNIX_US = 946_684_800_000_000
_ONE_US = timedelta(microseconds=1)


def pg_now_micros() -> int:
    """Now, as Postgres-epoch microseconds (what ``sendTime`` fields carry)."""
    return time.time_ns() // 1000 - _PG_EPOCH_UNIX_US


def to_pg_micros(ts: datetime) -> int:
    """A datetime (naive = UTC) as Postgres-epoch microseconds."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - PG_EPOCH) // _ONE_US


def from_pg_micros(micros: int) -> datetime:
    """Inverse of :func:`to_pg_micros` (aware UTC datetime); ``OverflowError`` when out of
    range."""
    return PG_EPOCH + timedelta(microseconds=micros)
