"""``electric [settings] connector remove NAME``: take a Postgres out of replication cleanly.

A connector leaves three objects on its Postgres: the logical replication slot
(``POSTGRES_SLOT``) that Electric reads, the publication (``POSTGRES_PUBLICATION``) that slot
decodes, and the subscription named after the connector through which that Postgres receives
everyone else's changes. A slot nobody reads holds WAL forever (the disk fills up), so
removing a connector from ``CONNECTORS`` is not enough: this command drops all three, using
the connector's entry in the settings to reach its Postgres.

Order and why:

1. Refuse while the slot is being streamed (Electric still runs with this connector): it
   would re-create what we drop. Remove the connector from CONNECTORS and restart Electric
   first (or stop Electric).
2. The subscription: DISABLE, detach it from its remote slot (``slot_name = NONE``) and
   DROP it. Detaching first means Postgres does not try to reach Electric to drop a slot
   there (Electric keeps no per-subscription slot; its offset mappings are superseded if a
   subscription of the same name ever comes back).
3. The slot, then the publication.

Electric's ``electric`` schema (migration history, upsert functions and triggers, which only
fire inside a subscription's apply worker) is left alone: it holds the migration history.
``DROP SCHEMA electric CASCADE`` removes it with everything in it.

Exit codes: 0 done (also when some objects were already gone), 1 the slot is in use or
Postgres failed, 2 bad settings or an unknown connector name.
"""

from __future__ import annotations

import sys
from typing import Any

import psycopg2
from psycopg2 import sql

from electric import config

PROG = "electric connector"


def _say(name: str, text: str) -> None:
    print(f"{name}: {text}")


def _one(cur: Any, query: Any, params: Any = None) -> Any:
    cur.execute(query, params)
    return cur.fetchone()


def remove(conn: Any, name: str, slot: str, publication: str) -> list[str]:
    """Drop the subscription ``name``, the slot and the publication on ``conn``'s database.

    Returns what was done, one phrase per object. Raises ``SlotInUse`` while the slot is
    streamed, and the driver's error when Postgres refuses a step.
    """
    conn.autocommit = True
    done: list[str] = []
    with conn.cursor() as cur:
        active = _one(cur, "SELECT s.active_pid, a.application_name "
                           "FROM pg_catalog.pg_replication_slots s "
                           "LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = s.active_pid "
                           "WHERE s.slot_name = %s AND s.active", (slot,))
        if active is not None:
            raise SlotInUse(slot, active[0], active[1] or "")
        exists = _one(cur, "SELECT 1 FROM pg_catalog.pg_subscription s "
                           "JOIN pg_catalog.pg_database d ON d.oid = s.subdbid "
                           "WHERE s.subname = %s AND d.datname = pg_catalog.current_database()",
                      (name,))
        if exists:
            ident = sql.Identifier(name)
            cur.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
            cur.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident))
            cur.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))
            done.append(f"dropped subscription {name}")
        else:
            done.append(f"no subscription {name} (already gone)")
        dropped = _one(cur, "SELECT pg_catalog.pg_drop_replication_slot(slot_name) IS NULL "
                            "FROM pg_catalog.pg_replication_slots "
                            "WHERE slot_name = %s AND database = pg_catalog.current_database()",
                       (slot,))
        done.append(f"dropped replication slot {slot}" if dropped
                    else f"no replication slot {slot} (already gone)")
        exists = _one(cur, "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = %s",
                      (publication,))
        if exists:
            cur.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(publication)))
            done.append(f"dropped publication {publication}")
        else:
            done.append(f"no publication {publication} (already gone)")
    return done


class SlotInUse(Exception):
    def __init__(self, slot: str, pid: int, application: str):
        who = f" by {application}" if application else ""
        super().__init__(f"replication slot {slot} is being streamed{who} (pid {pid})")


def main(argv: list[str]) -> int:
    parser = config.build_parser(prog=PROG)
    parser.description = ("Take a connector's Postgres out of replication: drop its "
                          "replication slot, publication and subscription to Electric.")
    parser.add_argument("action", choices=["remove"], help="what to do")
    parser.add_argument("name", metavar="NAME", help="connector name, as in CONNECTORS")
    try:
        settings = config.load(argv, parser=parser)
    except config.ConfigError as exc:
        print(f"{PROG}: invalid setting {exc}", file=sys.stderr)
        return 2
    by_name = {c.name: c for c in settings.connectors}
    connector = by_name.get(settings.name)
    if connector is None:
        known = ", ".join(by_name) or "none"
        print(f"{PROG}: no connector named {settings.name!r} in CONNECTORS (configured: "
              f"{known}); its settings are needed to reach its Postgres", file=sys.stderr)
        return 2
    try:
        conn = psycopg2.connect(connector.dsn())
    except psycopg2.Error as exc:
        print(f"{PROG}: cannot connect to {connector.redacted_url()}: "
              f"{str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    try:
        done = remove(conn, connector.name, settings.postgres_slot,
                      settings.postgres_publication)
    except SlotInUse as exc:
        print(f"{PROG}: {exc}; remove {connector.name} from CONNECTORS and restart Electric "
              "(or stop it) first, then run this again", file=sys.stderr)
        return 1
    except psycopg2.Error as exc:
        print(f"{PROG}: {connector.name}: Postgres refused: "
              f"{(exc.pgerror or str(exc)).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    for line in done:
        _say(connector.name, line)
    return 0
