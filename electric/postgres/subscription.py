"""Subscription lifecycle of one connector: make its Postgres subscribe to Electric, losslessly.

The order (docs/protocols.md §2.7; why it must be this one: §2.6):

1. ``CREATE SUBSCRIPTION "<name>" CONNECTION '<Electric>' PUBLICATION "<pub>"
   WITH (connect = false)`` when absent — no connection is made, the subscription starts
   disabled, its slot name is the subscription name, and nothing is copied.
2. **Hold** the slot on the publisher: the apply worker may connect, but gets no data.
3. Install the upsert trigger on every replicated table (``upsert.py``), before any row can
   arrive. A table it cannot be installed on (not there) stops the set-up here, with the
   slot held: one ERROR naming the table, ``subscription_blocked`` in the connector's
   status and ``electric_subscription_blocked`` in the metrics, retried until it succeeds.
4. ``ALTER SUBSCRIPTION … ENABLE`` — the launcher starts the apply worker, which connects to
   Electric (admitted because the connector is ready) and starts replication.
5. ``ALTER SUBSCRIPTION … REFRESH PUBLICATION WITH (copy_data = false)`` — the subscriber
   asks Electric for the publication's tables and marks them ready. Postgres refuses REFRESH
   on a disabled subscription, hence after ENABLE.
6. **Release** the slot: data flows.

Why the hold: a stock subscriber silently drops changes for tables that are not ready yet,
and once a later transaction commits its origin moves past them — they are never asked for
again. Streaming only after REFRESH has returned closes that window, for a new subscription
as well as for tables added by a migration (run the same sequence again: every step is
idempotent).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg2
from loguru import logger
from psycopg2.extensions import make_dsn

from electric import errors
from electric.changes import RelationName
from electric.postgres import errors as pg_errors
from electric.postgres import provision, upsert
from electric.retry import Policy, retry

__all__ = ["SUBSCRIBE_RETRY", "SetupState", "SlotGate", "electric_conninfo", "subscribe",
           "subscribe_when_ready"]


class SlotGate(Protocol):
    """What :func:`subscribe` needs from the publisher (``Publisher`` implements it)."""

    def hold(self, slot: str) -> None: ...

    def release(self, slot: str) -> None: ...


def electric_conninfo(
    host: str, port: int, *, dbname: str = "electric", connect_timeout: int = 10, **extra: str
) -> str:
    """The libpq conninfo a subscriber uses to reach Electric's publisher.

    ``connect_timeout`` is in seconds (the reference reused a millisecond value here).
    """
    params = {
        "host": host,
        "port": str(port),
        "dbname": dbname,
        "connect_timeout": str(connect_timeout),
        **extra,
    }
    return make_dsn(**params)


def subscribe(
    conn: Any,
    *,
    name: str,
    conninfo: str,
    publication: str,
    relations: Iterable[RelationName],
    gate: SlotGate,
) -> bool:
    """Run the whole sequence on ``conn`` (an ordinary connection to the subscriber database).

    Idempotent; returns True when the subscription was created by this call. Raises the
    driver's exception when a step fails (the caller retries with back-off); the slot then
    stays held, so nothing can be streamed into a half-set-up subscription.
    """
    log = logger.bind(origin=name)
    created = provision.create_subscription(conn, name, conninfo, publication)
    if created:
        log.info("created subscription {} (connect = false)", name)
    # Held first: a set-up that stops at the triggers (upsert.TablesMissing) leaves no
    # stream sending upserts that the subscriber could not apply as such.
    gate.hold(name)
    n = upsert.install(conn, relations)
    log.info("upsert trigger installed on {} table(s)", n)
    provision.enable_subscription(conn, name)
    provision.refresh_subscription(conn, name)
    gate.release(name)
    log.info("subscription {} enabled and refreshed; streaming released", name)
    return created


# Setting a subscription up waits for its connector; a failure is usually Postgres away.
SUBSCRIBE_RETRY = Policy(2.0, 10.0)


@dataclass
class SetupState:
    """How a connector's subscription set-up is going (shown in its status)."""

    # The refusal holding the set-up (e.g. a table missing here), logged once as an ERROR;
    # ``None`` while nothing permanent is in the way.
    blocked: str | None = None
    failures: int = 0


def subscribe_when_ready(
    name: str,
    ready: Any,
    attempt: Callable[[], object],
    policy: Policy = SUBSCRIBE_RETRY,
    state: SetupState | None = None,
) -> None:
    """Wait until the connector is ready, then run ``attempt`` (which calls
    :func:`subscribe`), again with back-off while Postgres fails it.

    Run it in its own greenlet per connector (it returns once the subscription is set up).
    ``ready`` is a ``gevent.event.Event`` (``Connector.ready``), waited for before every
    attempt: REFRESH makes the subscriber connect to Electric, which admits it only once the
    connector is ready, so subscribing earlier would just fail.

    A permanent refusal (:func:`electric.errors.is_permanent`, e.g. ``upsert.TablesMissing``)
    is not given up on: the set-up stays held at it (``state.blocked``), reported by one
    ERROR, and is retried (a migration or the next catalog re-read may fix it).
    """
    log = logger.bind(origin=name)
    state = state if state is not None else SetupState()

    def failed(exc: BaseException, _attempt: int, delay: float) -> None:
        state.failures += 1
        if not errors.is_permanent(exc):
            log.warning(f"setting up subscription {name} failed: {pg_errors.reason(exc)}; "
                        f"retrying in {delay:g} s")
            return
        line = str(exc)
        if state.blocked != line:
            log.error(f"subscription {name} cannot be set up: {line}; its stream is held "
                      f"(nothing is lost) and the set-up retried until the cause is fixed")
        state.blocked = line

    def run() -> None:
        attempt()
        if state.blocked is not None:
            log.info(f"subscription {name} set up; no longer held ({state.blocked})")
            state.blocked = None

    retry(run, policy, retry_on=(psycopg2.Error, OSError, upsert.TablesMissing),
          give_up=lambda _exc: False, before=ready.wait, on_retry=failed)
