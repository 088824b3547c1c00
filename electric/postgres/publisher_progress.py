"""What a streaming slot has sent and what its subscriber confirmed, sans-I/O.

``publisher_stream.py`` (the gevent side) tells :class:`StreamProgress` what it sent and what
each standby status update reported, and acts on the :class:`Confirmation` it gets back
(collect offset mappings, forget an applied backfill). The rules live here: only positions
actually sent can be confirmed, lag is the age of the oldest unconfirmed transaction,
mappings are collected at most every ``publisher_gc_interval``, a quiet subscriber is asked
for a reply. :func:`check_apply_loop` spots a subscriber stuck on one transaction. Times are
passed in (monotonic seconds), so the unit tests need no clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from electric.limits import DEFAULT, PostgresLimits

if TYPE_CHECKING:
    from electric.postgres.publisher_stream import StreamSession

__all__ = ["SlotState", "StreamProgress", "Confirmation", "check_apply_loop"]


@dataclass
class SlotState:
    """What status() reports for a slot; survives sessions."""

    name: str
    released: Any  # a gevent Event: set while the slot may send data (see Publisher.hold)
    session: StreamSession | None = None
    sent_lsn: int = 0
    flushed_lsn: int = 0
    sent_transactions: int = 0
    sessions: int = 0
    last_reason: str = ""
    # How the previous session ended: (requested lsn, final_lsn of the first transaction it
    # sent or None, highest flushed position the subscriber reported).
    previous: tuple[int, int | None, int] | None = None
    apply_failures: int = 0  # consecutive sessions that died on the same transaction
    failing_lsn: int | None = None
    # Tables whose rows this subscriber must be sent whole (it got them after the log
    # already went past their rows: tables added later); cleared once it confirmed them.
    backfill: set = field(default_factory=set)


@dataclass(frozen=True)
class Confirmation:
    """The outcome of one status update."""

    flushed: int  # the confirmed position that counts (never past what was sent)
    backfill_done: frozenset  # backfilled tables now applied: not needed again
    collect_upto: int | None  # collect offset mappings up to here now (None: not yet)


class StreamProgress:
    """One session's sent and confirmed positions (see the module docstring)."""

    def __init__(self, requested: int, now: float,
                 limits: PostgresLimits = DEFAULT.postgres) -> None:
        self.requested = requested
        self.gc_interval = limits.publisher_gc_interval
        self.idle_timeout = limits.publisher_stream_idle_timeout
        # (end_lsn, sent time) of transactions not confirmed yet; capped so a subscriber that
        # never confirms cannot grow it without bound (only lag gets coarser).
        self.unconfirmed: deque[tuple[int, float]] = deque(
            maxlen=limits.publisher_unconfirmed_transactions)
        self.first_final_lsn: int | None = None
        self.max_flushed = 0
        self.last_gc = now
        self.backfill_sent: frozenset = frozenset()
        self.backfill_end: int | None = None

    def backfill_started(self, relations: set) -> None:
        """The current rows of ``relations`` go out first in this session."""
        self.backfill_sent = frozenset(relations)

    def sent(self, transactions: list[tuple[int, int]], now: float) -> None:
        """``(final_lsn, end_lsn)`` of transactions just written, in order."""
        if not transactions:
            return
        if self.backfill_sent and self.backfill_end is None:
            self.backfill_end = transactions[0][1]  # the backfill goes out first
        if self.first_final_lsn is None:
            self.first_final_lsn = transactions[0][0]
        for _, end_lsn in transactions:
            self.unconfirmed.append((end_lsn, now))

    def confirmed(self, reported_flush: int, current_lsn: int, now: float) -> Confirmation:
        """A standby status update reported ``reported_flush``; ``current_lsn`` is the last
        position sent."""
        # Only positions we actually sent count (a confused subscriber cannot confirm more).
        flushed = min(reported_flush, current_lsn)
        self.max_flushed = max(self.max_flushed, flushed)
        while self.unconfirmed and self.unconfirmed[0][0] <= flushed:
            self.unconfirmed.popleft()
        done: frozenset = frozenset()
        if self.backfill_end is not None and flushed >= self.backfill_end:
            done, self.backfill_sent, self.backfill_end = self.backfill_sent, frozenset(), None
        collect = None
        if flushed > self.requested and now - self.last_gc >= self.gc_interval:
            # Everything up to `flushed` has been processed by the subscriber; plan_resume
            # copes with a later request below the oldest kept mapping.
            self.last_gc = now
            collect = flushed
        return Confirmation(flushed, done, collect)

    def lag(self, now: float) -> float:
        """Seconds the oldest sent-but-unconfirmed transaction has waited (0 when none)."""
        return now - self.unconfirmed[0][1] if self.unconfirmed else 0.0

    def want_reply(self, silent_for: float) -> bool:
        """Ask for a reply in the keepalive when the subscriber has been silent for a while,
        so a healthy but quiet subscriber (status interval disabled) is not taken for dead."""
        return silent_for > self.idle_timeout / 3

    def ending(self) -> tuple[int, int | None, int]:
        """How this session ended, for :func:`check_apply_loop` on the next one."""
        return (self.requested, self.first_final_lsn, self.max_flushed)


def check_apply_loop(state: SlotState, requested: int) -> int | None:
    """Spot a subscriber stuck on one transaction (docs/protocols.md §2.6).

    A transaction that fails to apply kills the apply worker; Postgres restarts it and it
    asks for the same position again, forever. Signature: the previous session started at
    the same LSN, sent data, and the subscriber never confirmed anything past its start.
    Updates ``state``; returns the final LSN of the failing transaction once it failed
    twice or more (worth a warning), else None.
    """
    prev = state.previous
    if (
        prev is not None
        and prev[0] == requested
        and prev[1] is not None
        and prev[2] <= requested
    ):
        state.apply_failures += 1
        state.failing_lsn = prev[1]
        return prev[1] if state.apply_failures >= 2 else None
    if prev is None or prev[0] != requested:
        state.apply_failures = 0
        state.failing_lsn = None
    return None
