"""The bytes of every reply the publisher on 5433 sends outside the replication stream.

Pure functions, no state: authentication messages, ParameterStatus, result sets
(``text_result``), ``error_response`` / ``fatal_for``, ``startup_response``. What to send when
is decided by ``publisher_session.py``; the framing is ``wire.py``'s.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from electric.postgres.commands import Unsupported
from electric.postgres.wire import ProtocolError, StartupMessage, cstring, frame


def encryption_denied() -> bytes:
    """The single byte ``N`` that declines SSLRequest / GSSENCRequest (no framing)."""
    return b"N"


def encryption_accepted() -> bytes:
    """The single byte ``S`` that accepts an SSLRequest; the TLS handshake follows."""
    return b"S"


def negotiate_protocol_version(newest_minor: int = 0, unrecognized: Sequence[str] = ()) -> bytes:
    """``v``: answer a StartupMessage asking for protocol 3.x (x > 0) or ``_pq_.*`` options.

    Send it right before AuthenticationOk; the client then continues with 3.``newest_minor``.
    """
    body = struct.pack(">ii", newest_minor, len(unrecognized))
    return frame(b"v", body + b"".join(cstring(name) for name in unrecognized))


def authentication_ok() -> bytes:
    return frame(b"R", struct.pack(">i", 0))


def authentication_sasl(mechanisms: Sequence[str]) -> bytes:
    """``R`` 10: the SASL mechanisms the server offers (e.g. ``["SCRAM-SHA-256"]``)."""
    return frame(b"R", struct.pack(">i", 10) + b"".join(cstring(m) for m in mechanisms) + b"\0")


def authentication_sasl_continue(data: bytes) -> bytes:
    """``R`` 11: a SASL challenge (SCRAM: the server-first message)."""
    return frame(b"R", struct.pack(">i", 11) + data)


def authentication_sasl_final(data: bytes) -> bytes:
    """``R`` 12: the SASL outcome data (SCRAM: the server-final message, ``v=...``)."""
    return frame(b"R", struct.pack(">i", 12) + data)


def parameter_status(name: str, value: str, encoding: str = "utf-8") -> bytes:
    return frame(b"S", cstring(name, encoding) + cstring(value, encoding))


def backend_key_data(pid: int, secret: int) -> bytes:
    return frame(b"K", struct.pack(">ii", _i32(pid), _i32(secret)))


def _i32(v: int) -> int:
    # Accept unsigned 32-bit ids too; the wire field is just 4 bytes.
    return v - (1 << 32) if v >= 1 << 31 else v


def ready_for_query(status: str = "I") -> bytes:
    """``status``: ``I`` idle, ``T`` in a transaction block, ``E`` failed transaction."""
    if status not in ("I", "T", "E"):
        raise ValueError(f"bad transaction status {status!r}")
    return frame(b"Z", status.encode())


# type name -> (oid, typlen); enough for every result set the publisher produces.
TYPE_OIDS: dict[str, tuple[int, int]] = {
    "bool": (16, 1),
    "bytea": (17, -1),
    "char": (18, 1),
    "name": (19, 64),
    "int8": (20, 8),
    "int2": (21, 2),
    "int4": (23, 4),
    "text": (25, -1),
    "oid": (26, 4),
    "pg_lsn": (3220, 8),
    "_name": (1003, -1),
    "_text": (1009, -1),
    "int2vector": (22, -1),
}
_TYPLEN_BY_OID = {oid: typlen for oid, typlen in TYPE_OIDS.values()}


@dataclass(frozen=True)
class Field:
    """One RowDescription column."""

    name: str
    type_oid: int
    typlen: int = -1
    typmod: int = -1
    format: int = 0  # 0 = text
    table_oid: int = 0
    attnum: int = 0

    @classmethod
    def of(cls, name: str, type_: str | int) -> Field:
        """``Field.of("oid", "oid")`` or ``Field.of("x", 25)``; typlen from :data:`TYPE_OIDS`."""
        if isinstance(type_, str):
            oid, typlen = TYPE_OIDS[type_]
        else:
            oid, typlen = type_, _TYPLEN_BY_OID.get(type_, -1)
        return cls(name, oid, typlen)


def row_description(fields: Sequence[Field], encoding: str = "utf-8") -> bytes:
    parts = [struct.pack(">h", len(fields))]
    for f in fields:
        parts.append(cstring(f.name, encoding))
        parts.append(
            struct.pack(">IhIhih", f.table_oid, f.attnum, f.type_oid, f.typlen, f.typmod, f.format)
        )
    return frame(b"T", b"".join(parts))


Cell = str | bytes | int | bool | None


def _cell_bytes(value: Cell, encoding: str) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bool):  # before int: bool is an int subclass
        return b"t" if value else b"f"
    if isinstance(value, int):
        return str(int(value)).encode()
    if isinstance(value, str):
        return value.encode(encoding, "replace")
    return bytes(value)


def data_row(cells: Sequence[Cell], encoding: str = "utf-8") -> bytes:
    """Text-format DataRow. ints → decimal, bools → ``t``/``f``, ``None`` → SQL NULL."""
    parts = [struct.pack(">h", len(cells))]
    for value in cells:
        raw = _cell_bytes(value, encoding)
        if raw is None:
            parts.append(struct.pack(">i", -1))
        else:
            parts.append(struct.pack(">i", len(raw)))
            parts.append(raw)
    return frame(b"D", b"".join(parts))


def command_complete(tag: str) -> bytes:
    return frame(b"C", cstring(tag))


def text_result(
    columns: Sequence[Field | tuple[str, str | int]],
    rows: Iterable[Sequence[Cell]],
    tag: str | None = None,
    encoding: str = "utf-8",
) -> bytes:
    """RowDescription + DataRows + CommandComplete (``SELECT n`` unless ``tag`` is given).

    ``columns`` are :class:`Field` or ``(name, type)`` pairs, type being a name from
    :data:`TYPE_OIDS` or an OID. ReadyForQuery is *not* included.
    """
    fields = [c if isinstance(c, Field) else Field.of(*c) for c in columns]
    out = [row_description(fields, encoding)]
    n = 0
    for row in rows:
        if len(row) != len(fields):
            raise ValueError(f"row has {len(row)} cells, expected {len(fields)}")
        out.append(data_row(row, encoding))
        n += 1
    out.append(command_complete(tag if tag is not None else f"SELECT {n}"))
    return b"".join(out)


def empty_query_response() -> bytes:
    return frame(b"I")


def _notice_fields(
    severity: str,
    code: str,
    message: str,
    detail: str | None,
    hint: str | None,
    encoding: str,
) -> bytes:
    severity = severity.upper()
    # Real Postgres order: S (localised), V (never localised), C, M, D, H.
    items = [("S", severity), ("V", severity), ("C", code), ("M", message)]
    if detail is not None:
        items.append(("D", detail))
    if hint is not None:
        items.append(("H", hint))
    return b"".join(k.encode() + cstring(v.replace("\0", ""), encoding) for k, v in items) + b"\0"


def error_response(
    severity: str,
    code: str,
    message: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
    encoding: str = "utf-8",
) -> bytes:
    """ErrorResponse ``E``. ``severity``: ERROR (connection stays) or FATAL (then close)."""
    return frame(b"E", _notice_fields(severity, code, message, detail, hint, encoding))


def notice_response(
    severity: str,
    code: str,
    message: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
    encoding: str = "utf-8",
) -> bytes:
    """NoticeResponse ``N`` (severity WARNING, NOTICE, INFO, LOG, DEBUG)."""
    return frame(b"N", _notice_fields(severity, code, message, detail, hint, encoding))




DEFAULT_SERVER_VERSION = "electric-0.0.1"


def server_parameters(
    startup: Mapping[str, str], server_version: str = DEFAULT_SERVER_VERSION
) -> dict[str, str]:
    """ParameterStatus values to announce after authentication.

    ``server_version`` must stay non-numeric (docs/protocols.md §2.3): it pins subscribers to the
    oldest query and option shapes, which are the ones :func:`parse_command` knows.
    ``client_encoding`` is echoed (UTF8 when absent, where the reference crashed).
    """
    return {
        "application_name": startup.get("application_name", ""),
        "client_encoding": startup.get("client_encoding") or "UTF8",
        "DateStyle": "ISO, MDY",
        "integer_datetimes": "on",
        "IntervalStyle": "postgres",
        "server_encoding": "UTF8",
        "server_version": server_version,
        "standard_conforming_strings": "on",
        "TimeZone": "Etc/UTC",
    }


def startup_response(
    parameters: Mapping[str, str],
    pid: int,
    secret: int = 0,
    startup: StartupMessage | None = None,
) -> bytes:
    """AuthenticationOk, one ParameterStatus per entry, BackendKeyData, ReadyForQuery(I).

    Given the client's ``startup`` message, a NegotiateProtocolVersion goes first when the
    client asked for a newer minor version or for ``_pq_.`` protocol options (Postgres does
    the same; a newer libpq then falls back to 3.0).
    """
    parts = []
    if startup is not None:
        pq_options = [k for k in startup.parameters if k.startswith("_pq_.")]
        if startup.protocol[1] > 0 or pq_options:
            parts.append(negotiate_protocol_version(0, pq_options))
    parts.append(authentication_ok())
    parts += [parameter_status(k, v) for k, v in parameters.items()]
    parts.append(backend_key_data(pid, secret))
    parts.append(ready_for_query("I"))
    return b"".join(parts)


def fatal_for(exc: ProtocolError) -> bytes:
    """The FATAL ErrorResponse to send before closing on a protocol error."""
    return error_response("FATAL", exc.sqlstate, exc.message)



def unsupported_response(cmd: Unsupported, status: str = "I") -> bytes:
    """ErrorResponse(ERROR, 0A000) + ReadyForQuery: the connection stays usable."""
    shown = cmd.text if len(cmd.text) <= 200 else cmd.text[:200] + "…"
    return error_response(
        "ERROR", "0A000", f"{cmd.reason}: {shown}" if shown else cmd.reason
    ) + ready_for_query(status)

