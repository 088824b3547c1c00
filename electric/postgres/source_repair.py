"""Repairs a source reader makes when its stream is refused (I/O: short plain connections).

A dropped slot or publication is recreated so replication goes on (what was written while it
was missing is lost, and the reader says so); a slot still held by a stale stream of our own
(a walsender that has not noticed the loss of its client yet) is taken over. Each repair
opens an ordinary (non-replication) connection to the source and closes it again; failures
are reported by the return value, never raised: the reader retries with back-off anyway.
"""

from __future__ import annotations

from typing import Any

import psycopg2
import psycopg2.extensions as ext

from electric.errors import describe
from electric.postgres import green, provision


def plain_connection(dsn: str) -> Any:
    """An autocommit ordinary connection to the database of the replication ``dsn``."""
    params = ext.parse_dsn(dsn)
    params.pop("replication", None)
    conn = green.connect(ext.make_dsn(**params))
    conn.autocommit = True
    return conn


def recreate_missing(dsn: str, slot: str, publication: str, log: Any) -> str:
    """Recreate a dropped slot / publication; names what was recreated ("" if none)."""
    try:
        conn = plain_connection(dsn)
    except psycopg2.Error:
        return ""
    try:
        made = []
        if provision.ensure_publication(conn, publication):
            made.append(f"publication {publication}")
        if provision.ensure_slot(conn, slot):
            made.append(f"slot {slot}")
        return " and ".join(made)
    except (psycopg2.Error, provision.ProvisionError) as exc:
        log.warning("could not recreate slot/publication: {}", describe(exc))
        return ""
    finally:
        conn.close()


def take_over_slot(dsn: str, slot: str, application_name: str,
                   heartbeat_interval: float) -> bool:
    """Terminate the walsender holding our slot if it is a stale stream of ours.

    Only a backend with our own application_name that has not sent a status update for
    three heartbeats is terminated: a live stream (e.g. a second Electric misconfigured
    with the same connector) or another client is left alone.
    """
    try:
        conn = plain_connection(dsn)
    except psycopg2.Error:
        return False
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_catalog.pg_terminate_backend(s.active_pid) "
                "FROM pg_catalog.pg_replication_slots s "
                "JOIN pg_catalog.pg_stat_replication r ON r.pid = s.active_pid "
                "WHERE s.slot_name = %s AND r.application_name = %s "
                "AND COALESCE(r.reply_time, r.backend_start) "
                "    < pg_catalog.now() - pg_catalog.make_interval(secs => %s)",
                (slot, application_name, 3 * heartbeat_interval),
            )
            return any(row[0] for row in cur.fetchall())
    except psycopg2.Error:
        return False
    finally:
        conn.close()
