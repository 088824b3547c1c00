"""The source reader's decisions, sans I/O: what is acknowledged when, and how to ask.

A source reader (``source.py``, the gevent shell) submits transactions to the store without
waiting and keeps reading; :class:`InFlight` is the bookkeeping of those submissions, in
commit order. A position is acknowledged to the slot only once its transaction and every
one before it is durable (docs/architecture.md §3), so the shell acknowledges the head of
the pipeline only, and after the stream is lost it remembers exactly the durable prefix
(:func:`durable_prefix`), so nothing is written twice and nothing unwritten is skipped.

The results are the store's ``AsyncResult``-like objects (``ready``/``successful``); waiting
for them is the shell's job. Also here: the options the stream is started with and the
position that may be confirmed while the stream is idle.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any

from electric.changes import Transaction
from electric.postgres.lsn import Lsn
from electric.retry import Backoff, Policy


class StreamLost(Exception):
    """The replication stream stopped answering (watchdog) — reconnect."""


Entry = tuple[Lsn, Transaction | None, Any]
"""(end_lsn, the transaction or None for one with nothing to write, its pending result)."""


class InFlight:
    """Submitted but not yet acknowledged transactions, oldest first."""

    __slots__ = ("limit", "_entries")

    def __init__(self, limit: int) -> None:
        # Submitted but not yet durable, at most; then the reader waits for the oldest.
        self.limit = limit
        self._entries: deque[Entry] = deque()

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def full(self) -> bool:
        """The reader must wait for the whole pipeline before reading on."""
        return len(self._entries) >= self.limit

    def add(self, end: Lsn, tx: Transaction | None = None, result: Any = None) -> None:
        """Queue ``end`` behind the rest; ``tx`` None: nothing to write, acknowledged in turn."""
        self._entries.append((end, tx, result))

    def head(self) -> Entry:
        return self._entries[0]

    def pop(self) -> Entry:
        return self._entries.popleft()

    def take_all(self) -> list[Entry]:
        """Every entry, oldest first; the pipeline is empty afterwards."""
        entries = list(self._entries)
        self._entries.clear()
        return entries


class WriteRetry:
    """One transaction handed to the sink until it is durable: the delay after each failed
    attempt and whether that attempt is worth a log line. The transaction is never skipped
    (acknowledging it would lose it): an outage is retried quickly, a permanent refusal (the
    transaction is blocked) slowly, up to ``blocked_retry`` seconds apart."""

    __slots__ = ("attempts", "_outage", "_blocked")

    def __init__(self, retry_min: float, retry_max: float, blocked_retry: float) -> None:
        self.attempts = 0
        self._outage = Backoff(Policy(retry_min, retry_max))
        # Slower, but starting at about a second: a refusal that depends on state elsewhere
        # (e.g. a table the schema registry does not know yet) may still clear quickly.
        self._blocked = Backoff(Policy(min(1.0, blocked_retry), blocked_retry))

    def failed(self, permanent: bool) -> float:
        """Count a failed attempt; the seconds to wait before the next one."""
        self.attempts += 1
        return self._blocked.next() if permanent else self._outage.next()

    @property
    def worth_logging(self) -> bool:
        """An outage is logged for the first attempts and every tenth: it must not flood
        the log (a blocked transaction is reported once, by the caller)."""
        return self.attempts <= 3 or self.attempts % 10 == 0


def durable_prefix(entries: list[Entry]) -> list[Lsn]:
    """The end positions of the written transactions among settled ``entries`` that are
    durable: in order, up to the first failed one (after a failure the store refuses the
    rest of the chain, so nothing after it was stored)."""
    durable = []
    for end, tx, result in entries:
        if result is not None and not result.successful():
            break
        if tx is not None:
            durable.append(end)
    return durable


def idle_ack_position(server_end: Lsn | None, last_acked: Lsn | None, busy: bool) -> Lsn | None:
    """The position to confirm while nothing is to be read, or None.

    ``busy``: a transaction half-received, a write being retried, writes in flight or a
    large transaction open. Otherwise everything the server decoded up to its last reported
    position is written or of no interest to us (other databases, unpublished tables,
    checkpoints), so that position may be confirmed, as Postgres' own apply worker does.
    """
    if server_end is None or busy:
        return None
    if last_acked is not None and server_end <= last_acked:
        return None
    return server_end


def stream_options(publication: str, server_version: int, drop_all_origins: bool) -> dict:
    """pgoutput options. From Postgres 16 on, ``origin 'none'`` makes the server leave out
    what a subscription applied (Electric's own echo) before it is sent; the assembler's
    Origin check still drops it on 15 (and stays as a guard on 16+)."""
    options = {"proto_version": "1", "publication_names": publication_option(publication)}
    if drop_all_origins and server_version >= 160000:
        options["origin"] = "none"
    return options


def publication_option(names: str) -> str:
    """pgoutput parses ``publication_names`` as an identifier list: quote when needed."""
    parts = []
    for name in names.split(","):
        name = name.strip()
        if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
            parts.append(name)
        else:
            parts.append('"' + name.replace('"', '""') + '"')
    return ",".join(parts)


def relations(tx: Transaction, limit: int = 5) -> str:
    """The tables ``tx`` touches, for an error line (the first ``limit``, then a count)."""
    names = sorted({f"{c.relation[0]}.{c.relation[1]}" for c in tx.changes})
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
