"""Upgrade from the first release's embedded log (``VAXINE_DATA_DIR/vaxine.log``).

That log keyed rows by their primary-key *values* only, so turning it into the store needs
the primary-key *columns* of every table, which only the connectors' Postgres know. Electric
therefore refuses to start on such a directory (``check``) and ``electric import-store`` does
the upgrade once (``import_log``): it replays every logged transaction into a new store at
the same positions (so Satellite lsns and subscriber offsets stay valid), then renames the old
log to ``vaxine.log.imported`` (kept, never deleted, until the operator removes it).

The standalone Vaxine server (``electric vaxine``) wrote the same file and imports it on its
own at first start (:mod:`electric.vaxine.embedded.upgrade`: it needs no primary keys). Both
read it with :class:`FirstReleaseLog`.
"""

from __future__ import annotations

import marshal
import os
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from loguru import logger

from electric.changes import Change, RelationName
from electric.store.engine import DB_FILE, Engine

LEGACY_LOG = "vaxine.log"
IMPORT_COMMAND = "bin/electric --config <your ini> import-store"

# A first-release record: <u32 length><u32 crc32(payload)><payload>; its byte position was
# the offset readers were given. Payloads: b"H" + ETF {electric_vaxine_log, 1, DcId} (first),
# b"T" + >QII (commit µs, txid length, states length) + txid ETF + marshalled states + ops ETF.
_RECORD = struct.Struct(">II")
_TXN_HEAD = struct.Struct(">QII")
_MAX_RECORD = 256 * 1024 * 1024

log = logger.bind(origin="store_legacy")


@dataclass(frozen=True)
class FirstReleaseTxn:
    offset: int
    commit_us: int
    txid_body: bytes
    states_blob: bytes  # marshal: [(key, bucket, type name, plain state)] after the commit
    ops_body: bytes

    def states(self) -> list[tuple[bytes, bytes, str, Any]]:
        return marshal.loads(self.states_blob)


class FirstReleaseLog:
    """Reads a first-release ``vaxine.log`` (never changes it). After :meth:`transactions`
    is exhausted, ``dc_id`` holds the log's DC id and ``end`` the offset just after its last
    intact record (where the first release would have written the next one)."""

    def __init__(self, path: str):
        self.path = path
        self.dc_id: Any = None
        self.end = 0

    def records(self) -> Iterator[tuple[int, bytes]]:
        """Every intact ``(offset, payload)``. A damaged tail is what was being written when
        the process died (never acknowledged): it ends the log, with a warning naming it."""
        size = os.path.getsize(self.path)
        pos = 0
        with open(self.path, "rb", buffering=1 << 20) as f:
            while pos < size:
                header = f.read(_RECORD.size)
                if len(header) < _RECORD.size:
                    break
                length, crc = _RECORD.unpack(header)
                if length == 0 or length > _MAX_RECORD or pos + _RECORD.size + length > size:
                    break
                payload = f.read(length)
                if zlib.crc32(payload) != crc:
                    break
                yield pos, payload
                pos += _RECORD.size + length
                self.end = pos
        if pos < size:
            log.warning(f"{self.path}: the {size - pos} bytes after byte {pos} are not an "
                        "intact record (a write cut short by a crash); reading up to there")

    def transactions(self) -> Iterator[FirstReleaseTxn]:
        from electric.vaxine import etf

        for offset, payload in self.records():
            tag = payload[:1]
            if tag == b"H":
                self.dc_id = etf.decode(payload[1:])[2]
            elif tag == b"T":
                commit_us, tlen, slen = _TXN_HEAD.unpack_from(payload, 1)
                at = 1 + _TXN_HEAD.size
                yield FirstReleaseTxn(offset, commit_us, payload[at:at + tlen],
                                      payload[at + tlen:at + tlen + slen],
                                      payload[at + tlen + slen:])


class LegacyDataError(RuntimeError):
    """The data directory needs the import (or the import cannot be done): one line."""


def legacy_log(data_dir: str) -> str:
    return os.path.join(data_dir, LEGACY_LOG)


def needs_import(data_dir: str) -> bool:
    return (os.path.exists(legacy_log(data_dir))
            and not os.path.exists(os.path.join(data_dir, DB_FILE)))


def check(data_dir: str) -> None:
    if needs_import(data_dir):
        raise LegacyDataError(
            f"{legacy_log(data_dir)} is a log of the first release; import it once with "
            f"`{IMPORT_COMMAND}` (it needs the connectors' Postgres reachable)")


def read_legacy(data_dir: str) -> Iterator[tuple[int, int, list[Change]]]:
    """``(position, commit µs, changes)`` of every logged transaction, in log order, as the
    first release's readers rebuilt them (whole merged rows)."""
    from electric.vaxine import etf
    from electric.vaxine.stream import decode_wal_frame
    from electric.vaxine.walproto import txn_frame

    old = FirstReleaseLog(legacy_log(data_dir))
    for txn in old.transactions():
        if old.dc_id is None:
            continue
        frame = txn_frame(txn.offset, txn.txid_body, txn.ops_body, etf.encode_body(old.dc_id))
        _term, tx, _offset = decode_wal_frame(frame)
        if tx is not None:
            yield txn.offset, txn.commit_us, list(tx.changes)


def import_log(data_dir: str, primary_keys: Callable[[RelationName], list[str]]) -> int:
    """Build ``store.db`` from ``vaxine.log``; returns the number of transactions imported.

    Written to a temporary file first and renamed into place once complete, so an
    interrupted import leaves the directory as it was (and can simply be run again).
    """
    if not needs_import(data_dir):
        raise LegacyDataError(f"nothing to import: {legacy_log(data_dir)} is missing or "
                              f"{os.path.join(data_dir, DB_FILE)} already exists")
    work = os.path.join(data_dir, "import.tmp")
    os.makedirs(work, exist_ok=True)
    for name in os.listdir(work):
        os.unlink(os.path.join(work, name))
    engine = Engine(work)
    count = 0
    try:
        for pos, commit_us, changes in read_legacy(data_dir):
            engine.commit_at(pos, commit_us, changes, primary_keys)
            count += 1
    finally:
        engine.close()
    os.replace(os.path.join(work, DB_FILE), os.path.join(data_dir, DB_FILE))
    os.rename(legacy_log(data_dir), legacy_log(data_dir) + ".imported")
    for name in os.listdir(work):
        os.unlink(os.path.join(work, name))
    os.rmdir(work)
    return count


_PRIMARY_KEY_SQL = """
SELECT a.attname
  FROM pg_catalog.pg_index i
 CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, ord)
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
 WHERE i.indisprimary
   AND i.indrelid = (SELECT c.oid FROM pg_catalog.pg_class c
                       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE n.nspname = %s AND c.relname = %s)
 ORDER BY k.ord
"""


def main(argv: list[str]) -> int:
    """``electric import-store [settings]``: read primary keys from the connectors, import."""
    from electric import config
    from electric.postgres.connector import Unreachable, connect_all

    settings = config.load_for_command(argv)
    data_dir = settings.vaxine_data_dir
    if not needs_import(data_dir):
        print(f"electric import-store: nothing to import in {data_dir}", file=sys.stderr)
        return 2
    try:
        conns = list(connect_all(settings.connectors).values())
    except Unreachable as exc:
        print(f"electric import-store: {exc}", file=sys.stderr)
        return 1
    known: dict[RelationName, list[str]] = {}

    def primary_keys(relation: RelationName) -> list[str]:
        """The table's primary key, in key order, from the first connector that has it."""
        if relation not in known:
            for conn in conns:
                with conn.cursor() as cur:
                    cur.execute(_PRIMARY_KEY_SQL, relation)
                    columns = [row[0] for row in cur.fetchall()]
                if columns:
                    known[relation] = columns
                    break
            else:
                raise LegacyDataError(
                    f"table {relation[0]}.{relation[1]} is in the old log but no connector "
                    "has it with a primary key")
        return known[relation]

    try:
        count = import_log(data_dir, primary_keys)
    except LegacyDataError as exc:
        print(f"electric import-store: {exc}", file=sys.stderr)
        return 1
    finally:
        for conn in conns:
            conn.close()
    print(f"imported {count} transactions into {os.path.join(data_dir, DB_FILE)}; the old log "
          f"is kept as {legacy_log(data_dir)}.imported")
    return 0
