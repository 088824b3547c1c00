"""Sent and confirmed positions of a streaming slot, without sockets or clocks."""

from __future__ import annotations

from dataclasses import replace

from electric.limits import DEFAULT
from electric.postgres.publisher_progress import SlotState, StreamProgress, check_apply_loop

LIMITS = replace(DEFAULT.postgres, publisher_gc_interval=30.0,
                 publisher_stream_idle_timeout=120.0)


def test_confirmation_never_passes_what_was_sent_and_clears_unconfirmed():
    p = StreamProgress(requested=0x10, now=0.0, limits=LIMITS)
    p.sent([(0x18, 0x20), (0x28, 0x30)], now=1.0)
    assert p.lag(now=4.0) == 3.0 and len(p.unconfirmed) == 2
    conf = p.confirmed(reported_flush=0x20, current_lsn=0x30, now=5.0)
    assert conf.flushed == 0x20 and len(p.unconfirmed) == 1
    conf = p.confirmed(reported_flush=0xFFFF, current_lsn=0x30, now=6.0)
    assert conf.flushed == 0x30  # a confused subscriber cannot confirm more than was sent
    assert p.lag(now=7.0) == 0.0 and not p.unconfirmed


def test_mappings_are_collected_past_the_start_and_at_most_every_interval():
    p = StreamProgress(requested=0x10, now=0.0, limits=LIMITS)
    p.sent([(0x18, 0x20)], now=1.0)
    assert p.confirmed(0x10, 0x20, now=40.0).collect_upto is None  # nothing past the start
    assert p.confirmed(0x20, 0x20, now=41.0).collect_upto == 0x20
    assert p.confirmed(0x20, 0x20, now=50.0).collect_upto is None  # within the interval
    assert p.confirmed(0x20, 0x20, now=71.5).collect_upto == 0x20


def test_backfill_is_done_once_its_transaction_is_confirmed():
    p = StreamProgress(requested=0x10, now=0.0, limits=LIMITS)
    p.backfill_started({("public", "items")})
    p.sent([(0x18, 0x20)], now=1.0)  # the backfill goes out first
    p.sent([(0x28, 0x30)], now=1.0)
    assert p.confirmed(0x18, 0x30, now=2.0).backfill_done == frozenset()
    assert p.confirmed(0x20, 0x30, now=3.0).backfill_done == {("public", "items")}
    assert p.confirmed(0x30, 0x30, now=4.0).backfill_done == frozenset()


def test_a_quiet_subscriber_is_asked_for_a_reply():
    p = StreamProgress(requested=0, now=0.0, limits=LIMITS)
    assert not p.want_reply(silent_for=39.0)
    assert p.want_reply(silent_for=41.0)


def test_apply_loop_is_reported_from_the_second_failure_and_reset_by_progress():
    state = SlotState("sub", released=None)
    failing = StreamProgress(requested=0x10, now=0.0, limits=LIMITS)
    failing.sent([(0x18, 0x20)], now=0.0)
    state.previous = failing.ending()  # sent a transaction, nothing confirmed
    assert check_apply_loop(state, 0x10) is None and state.apply_failures == 1
    assert check_apply_loop(state, 0x10) == 0x18 and state.apply_failures == 2
    assert state.failing_lsn == 0x18
    assert check_apply_loop(state, 0x20) is None  # asked for another position: a new start
    assert state.apply_failures == 0 and state.failing_lsn is None


def test_a_session_that_got_confirmations_is_no_apply_loop():
    state = SlotState("sub", released=None)
    p = StreamProgress(requested=0x10, now=0.0, limits=LIMITS)
    p.sent([(0x18, 0x20)], now=0.0)
    p.confirmed(0x20, 0x20, now=1.0)
    state.previous = p.ending()
    assert check_apply_loop(state, 0x10) is None and state.apply_failures == 0
