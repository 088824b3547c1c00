"""The frames of the CopyBoth replication stream a publisher sends (docs/protocols.md §2.4).

After START_REPLICATION (``BackendConnection.start_copy_both`` sends the CopyBothResponse) the
server writes CopyData messages: XLogData (``w``) carrying one pgoutput message each, primary
keepalives (``k``), and CopyDone when the stream ends. Built here as bytes, no I/O; the
streaming code writes them per transaction. What the subscriber sends back inside the stream
(standby status updates, hot standby feedback) is parsed by ``wire.BackendConnection``.
"""

from __future__ import annotations

import struct

from electric.postgres.pgtime import pg_now_micros
from electric.postgres.wire import frame

__all__ = ["copy_data", "copy_done", "xlog_data", "primary_keepalive"]


def copy_data(payload: bytes) -> bytes:
    return frame(b"d", payload)


def copy_done() -> bytes:
    return frame(b"c")


_XLOG_HEAD = struct.Struct(">cIcQQq")  # 'd', len, 'w', dataStart, walEnd, sendTime
_KEEPALIVE = struct.Struct(">cIcQqB")  # 'd', len, 'k', walEnd, sendTime, replyRequested


def xlog_data(start_lsn: int, end_lsn: int, message: bytes, send_time: int | None = None) -> bytes:
    """CopyData(XLogData ``w``) wrapping one pgoutput ``message``.

    ``send_time`` is Postgres-epoch microseconds (default: now).
    """
    if send_time is None:
        send_time = pg_now_micros()
    return _XLOG_HEAD.pack(
        b"d", 4 + 25 + len(message), b"w", int(start_lsn), int(end_lsn), send_time
    ) + bytes(message)


def primary_keepalive(
    wal_end: int, send_time: int | None = None, reply_requested: bool = False
) -> bytes:
    """CopyData(primary keepalive ``k``)."""
    if send_time is None:
        send_time = pg_now_micros()
    return _KEEPALIVE.pack(b"d", 4 + 18, b"k", int(wal_end), send_time, 1 if reply_requested else 0)
