"""The bytes of the offset file: header, record frame and record payloads. Sans-I/O.

File layout (all integers big-endian)::

    header  = magic "ELOFFSET" (8) | u16 version | u16 reserved (0) | u32 crc32(first 12 bytes)
    record  = u32 payload length | u32 crc32(payload) | u32 crc32(previous 8 bytes) | payload
    payload = u8 kind | kind-specific body
      kind 1 SATELLITE_LSN  u16 len, client_id utf-8, lsn bytes (rest)
      kind 2 PG_MAPPINGS    u16 len, slot utf-8, u32 count, count x (u64 lsn, u32 len, offset)
      kind 3 PG_GC          u16 len, slot utf-8, u64 keep_from  (drop mappings with lsn < it)

How a file is read back (and what a damaged one means) is :mod:`electric.offsets.recovery`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from electric.offsets.errors import Malformed, OffsetFileCorrupt, OffsetFileVersionError

MAGIC = b"ELOFFSET"
FORMAT_VERSION = 1
HEADER = struct.Struct(">8sHHI")
HEADER_SIZE = HEADER.size  # 16
# The record head carries its own checksum so a damaged *length* is recognised as damage
# instead of looking like a record that runs past the end of the file (a torn write).
REC_HEAD = struct.Struct(">III")
REC_HEAD_SIZE = REC_HEAD.size  # 12
KIND_SATELLITE_LSN = 1
KIND_PG_MAPPINGS = 2
KIND_PG_GC = 3


def header_bytes(version: int = FORMAT_VERSION) -> bytes:
    head = struct.pack(">8sHH", MAGIC, version, 0)
    return head + struct.pack(">I", zlib.crc32(head))


def check_header(data: bytes, path: str) -> None:
    """Raise :class:`OffsetFileVersionError` / :class:`OffsetFileCorrupt` for a bad header."""
    if len(data) < HEADER_SIZE:
        raise OffsetFileVersionError(
            path, 0, f"file is {len(data)} bytes, shorter than the header"
        )
    magic, version, _reserved, crc = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise OffsetFileVersionError(path, 0, f"not an Electric offset file (magic {magic!r})")
    if zlib.crc32(data[:12]) != crc:
        raise OffsetFileCorrupt(path, 0, "header checksum mismatch")
    if version != FORMAT_VERSION:
        raise OffsetFileVersionError(
            path, 0, f"unsupported format version {version} (this build reads {FORMAT_VERSION})"
        )


def frame(payload: bytes) -> bytes:
    head = struct.pack(">II", len(payload), zlib.crc32(payload))
    return head + struct.pack(">I", zlib.crc32(head)) + payload


def _enc_name(name: str) -> bytes:
    raw = name.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("name longer than 65535 bytes")
    return struct.pack(">H", len(raw)) + raw


def encode_satellite(client_id: str, lsn: bytes) -> bytes:
    return bytes([KIND_SATELLITE_LSN]) + _enc_name(client_id) + bytes(lsn)


def encode_pg_mappings(slot: str, entries: list[tuple[int, bytes]]) -> bytes:
    parts = [bytes([KIND_PG_MAPPINGS]), _enc_name(slot), struct.pack(">I", len(entries))]
    for lsn, off in entries:
        if not 0 <= lsn < 1 << 64:
            raise ValueError(f"lsn out of range: {lsn}")
        parts.append(struct.pack(">QI", lsn, len(off)))
        parts.append(bytes(off))
    return b"".join(parts)


def encode_pg_gc(slot: str, keep_from: int) -> bytes:
    return bytes([KIND_PG_GC]) + _enc_name(slot) + struct.pack(">Q", keep_from)


@dataclass(frozen=True)
class SatelliteLsn:
    client_id: str
    lsn: bytes


@dataclass(frozen=True)
class PgMappings:
    slot: str
    entries: list[tuple[int, bytes]]


@dataclass(frozen=True)
class PgGc:
    slot: str
    keep_from: int


Record = SatelliteLsn | PgMappings | PgGc


def _dec_name(buf: memoryview, pos: int) -> tuple[str, int]:
    if pos + 2 > len(buf):
        raise Malformed("truncated name length")
    (n,) = struct.unpack_from(">H", buf, pos)
    pos += 2
    if pos + n > len(buf):
        raise Malformed("truncated name")
    try:
        return bytes(buf[pos : pos + n]).decode("utf-8"), pos + n
    except UnicodeDecodeError as exc:
        raise Malformed("name is not utf-8") from exc


def decode(payload: memoryview) -> Record:
    """One checksummed payload as a record; :class:`Malformed` when it does not decode."""
    kind = payload[0]
    if kind == KIND_SATELLITE_LSN:
        client_id, pos = _dec_name(payload, 1)
        return SatelliteLsn(client_id, bytes(payload[pos:]))
    if kind == KIND_PG_MAPPINGS:
        slot, pos = _dec_name(payload, 1)
        if pos + 4 > len(payload):
            raise Malformed("truncated mapping count")
        (count,) = struct.unpack_from(">I", payload, pos)
        pos += 4
        entries = []
        for _ in range(count):
            if pos + 12 > len(payload):
                raise Malformed("truncated mapping entry")
            lsn, n = struct.unpack_from(">QI", payload, pos)
            pos += 12
            if pos + n > len(payload):
                raise Malformed("truncated vaxine offset")
            entries.append((lsn, bytes(payload[pos : pos + n])))
            pos += n
        if pos != len(payload):
            raise Malformed("trailing bytes after mappings")
        return PgMappings(slot, entries)
    if kind == KIND_PG_GC:
        slot, pos = _dec_name(payload, 1)
        if pos + 8 != len(payload):
            raise Malformed("bad gc record length")
        (keep_from,) = struct.unpack_from(">Q", payload, pos)
        return PgGc(slot, keep_from)
    raise Malformed(f"unknown record kind {kind}")
