"""The shared WAL tail: no gap, no duplicate, whatever the subscriber does."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import gevent
import pytest
from gevent.event import Event

from electric.changes import Transaction
from electric.limits import DEFAULT, SatelliteLimits
from electric.satellite.fanout import SharedTail
from tests.support.waiting import wait_until

TS = datetime(2022, 11, 23, tzinfo=UTC)


def quick(**changes) -> SatelliteLimits:
    """The default limits with a quick tail reopen (and whatever else a test sets)."""
    return replace(DEFAULT.satellite, **{"tail_retry": 0.01, **changes})


class FakeLog:
    def __init__(self) -> None:
        self.items: list = []
        self.changed = Event()
        self.opened: list = []
        self.open_streams = 0
        self.fail_opens = 0
        self.break_tail = False
        self.tail: SharedTail | None = None  # set: break_tail breaks only its stream

    def push(self, n: int = 1) -> None:
        for _ in range(n):
            k = len(self.items)
            self.items.append((Transaction([], TS, lsn=k), (k, k)))
        self.wake()

    def wake(self) -> None:
        event, self.changed = self.changed, Event()
        event.set()

    def open(self, start):
        self.opened.append(start)
        if self.fail_opens:
            self.fail_opens -= 1
            raise ConnectionRefusedError("down")
        log = self
        if start == "eof":
            pos = len(self.items)
        elif start == 0:
            pos = 0
        else:
            pos = start[1] + 1  # like WalStream: resume after that offset

        class Stream:
            closed = False

            def __iter__(self):
                nonlocal pos
                log.open_streams += 1
                try:
                    while not self.closed:
                        if start == "eof" and log.break_tail and (
                                log.tail is None or gevent.getcurrent() is log.tail.greenlet):
                            log.break_tail = False
                            raise ConnectionResetError("tail connection lost")
                        if pos < len(log.items):
                            pos += 1
                            yield log.items[pos - 1]
                        else:
                            log.changed.wait()
                finally:
                    log.open_streams -= 1

            def close(self):
                self.closed = True
                log.wake()

        return Stream()


def consume(sub, out: list, count: int, yields: int = 0, gate: Event | None = None):
    """Read ``count`` items into ``out``; a slow reader yields ``yields`` times after each
    one, a held one waits for ``gate`` after its first item."""
    def run():
        for _tx, offset in sub:
            out.append(offset[1])
            for _ in range(yields):
                gevent.sleep(0)
            if gate is not None:
                gate.wait()
            if len(out) >= count:
                return

    return gevent.spawn(run)


def tail_open(log, times: int = 1) -> None:
    """Wait until the tail has opened its stream at eof (``times`` times in all): a push
    before that would land before its start."""
    wait_until(lambda: log.opened.count("eof") >= times, timeout=2, what="tail open")


@pytest.fixture
def log():
    return FakeLog()


def test_live_subscribers_share_one_stream(log):
    tail = SharedTail(log.open, quick())
    outs = [[] for _ in range(3)]
    gs = [consume(tail.subscribe("eof"), out, 5) for out in outs]
    tail_open(log)
    log.push(5)
    gevent.joinall(gs, timeout=2)
    assert all(out == [0, 1, 2, 3, 4] for out in outs)
    assert log.opened == ["eof"]
    tail.close()


def test_catch_up_from_zero_then_switch_without_gap_or_duplicate(log):
    log.push(10)
    tail = SharedTail(log.open, quick())
    live: list = []
    g_live = consume(tail.subscribe("eof"), live, 20)
    tail_open(log)
    history: list = []
    sub = tail.subscribe(0)
    g_hist = consume(sub, history, 30)
    for _ in range(20):  # the tail moves on while the history is read
        log.push()
        gevent.sleep(0)
    gevent.joinall([g_live, g_hist], timeout=3)
    assert history == list(range(30))
    assert live == list(range(10, 30))
    assert sub in tail.subscribers  # switched to the tail
    assert log.opened == ["eof", 0]
    assert log.open_streams == 1  # only the tail: the private catch-up stream was closed
    tail.close()


def test_resume_from_offset(log):
    log.push(6)
    tail = SharedTail(log.open, quick())
    out: list = []
    g = consume(tail.subscribe((3, 3)), out, 4)
    wait_until(lambda: out == [4, 5], timeout=2, what="the history after (3, 3)")
    log.push(2)
    g.join(timeout=2)
    assert out == [4, 5, 6, 7]
    tail.close()


def test_slow_subscriber_detached_then_resumes_privately(log):
    tail = SharedTail(log.open, quick(queue_limit=5))
    fast: list = []
    slow: list = []
    held = Event()
    g_fast = consume(tail.subscribe("eof"), fast, 40)
    g_slow = consume(tail.subscribe("eof"), slow, 40, gate=held)
    tail_open(log)
    for _ in range(40):
        log.push()
        gevent.sleep(0)
    wait_until(lambda: tail.stats["detached_slow"] >= 1, timeout=2, what="slow one detached")
    assert slow == [0]  # it was held at its first item meanwhile
    held.set()
    gevent.joinall([g_fast, g_slow], timeout=5)
    assert fast == list(range(40))
    assert slow == list(range(40))
    tail.close()


def test_tail_failure_subscribers_continue(log):
    tail = SharedTail(log.open, quick())
    out: list = []
    g = consume(tail.subscribe("eof"), out, 10)
    tail_open(log)
    log.push(3)
    wait_until(lambda: out == [0, 1, 2], timeout=2, what="first three")
    log.break_tail = True
    log.push(3)
    tail_open(log, times=2)  # the tail broke and was opened again
    assert tail.stats["tail_restarts"] >= 1
    log.push(4)
    g.join(timeout=3)
    assert out == list(range(10))
    tail.close()


def test_tail_open_failure_retried(log):
    log.fail_opens = 1  # the tail's first connection attempt
    tail = SharedTail(log.open, quick())
    out: list = []
    g = consume(tail.subscribe(0), out, 3)
    tail_open(log, times=2)  # refused once, then opened
    log.push(3)
    g.join(timeout=2)
    assert out == [0, 1, 2]
    tail.close()


def test_close_releases_everything(log):
    tail = SharedTail(log.open, quick())
    sub = tail.subscribe("eof")
    out: list = []
    g = consume(sub, out, 100)
    tail_open(log)
    log.push(2)
    wait_until(lambda: out == [0, 1], timeout=2, what="both items")
    sub.close()
    g.join(timeout=1)
    assert g.dead and out == [0, 1]
    assert sub not in tail.subscribers
    tail.close()
    wait_until(lambda: log.open_streams == 0, timeout=2, what="every stream closed")


@pytest.mark.parametrize("seed", range(6))
def test_random_mix_every_subscriber_sees_exact_sequence(log, seed):
    """Random starts, random consumer speeds, tail connection drops: each subscriber gets
    exactly the contiguous sequence after its start, in order."""
    import random

    rnd = random.Random(seed)
    log.push(15)
    tail = log.tail = SharedTail(log.open, quick(queue_limit=rnd.choice([3, 8, 50]),
                                                tail_retry=0.005))
    total = 80
    subs = []
    for _ in range(6):
        start = rnd.choice(["eof", 0, (4, 4), (14, 14)])
        first = {"eof": None, 0: 0}.get(start, start[1] + 1 if isinstance(start, tuple) else 0)
        out: list = []
        yields = rnd.choice([0, 1, 5])  # how slow a reader this is
        subs.append((start, first, out, consume(tail.subscribe(start), out, total, yields)))
        for _ in range(rnd.randrange(4)):  # interleavings vary with the seed, not the clock
            gevent.sleep(0)
    for _n in range(total - 15):
        log.push()
        if rnd.random() < 0.05:
            log.break_tail = True
        for _ in range(rnd.randrange(3)):
            gevent.sleep(0)
    try:
        wait_until(lambda: all(out and out[-1] == total - 1 for _s, _f, out, _g in subs),
                   timeout=10, what="every subscriber at the end")
    except AssertionError:
        pass  # the checks below say which one stopped where
    for start, first, out, g in subs:
        g.kill()
        assert out, (start, out)
        begin = out[0] if first is None else first
        assert out == list(range(begin, begin + len(out))), (start, out)
        assert out[-1] == total - 1, (start, out[-5:])
    tail.close()


def direct_subscriber(tail, start, out: list, refuse=lambda offset: False):
    """A subscriber in direct mode, as the server drives it: iterated by a greenlet until it
    hands over, then fed by the tail through ``sink``; ``wake`` starts the greenlet again."""
    sub = tail.subscribe(start)
    runs = [0]

    def sink(item):
        if refuse(item[1]):
            return False
        out.append(("direct", item[1][1]))
        return True

    def pump():
        runs[0] += 1
        for _tx, offset in sub:
            out.append(("pumped", offset[1]))

    sub.sink = sink
    sub.wake = lambda: gevent.spawn(pump)
    gevent.spawn(pump)
    return sub, runs


def test_caught_up_subscribers_are_fed_by_the_tail_without_a_greenlet_of_their_own(log):
    log.push(3)
    tail = SharedTail(log.open, quick())
    anchor: list = []
    g = consume(tail.subscribe("eof"), anchor, 7)  # keeps the tail running from eof
    gevent.sleep(0.01)
    out: list = []
    sub, runs = direct_subscriber(tail, 0, out)
    gevent.sleep(0.05)
    log.push(5)  # the private catch-up meets the tail in here
    gevent.sleep(0.05)
    assert sub.handed_over and runs[0] == 1
    log.push(2)
    g.join(timeout=2)
    gevent.sleep(0.01)
    assert [n for _, n in out] == list(range(10))  # no gap, no duplicate
    assert out[-2:] == [("direct", 8), ("direct", 9)]  # straight from the tail
    assert runs[0] == 1
    tail.close()


def test_an_item_the_sink_refuses_is_queued_and_pumped_in_order(log):
    tail = SharedTail(log.open, quick())
    out: list = []
    sub, runs = direct_subscriber(tail, "eof", out, refuse=lambda offset: offset[1] == 2)
    gevent.sleep(0.01)
    for _ in range(5):
        log.push()
        gevent.sleep(0.01)
    gevent.sleep(0.05)
    assert [n for _, n in out] == [0, 1, 2, 3, 4]
    assert ("pumped", 2) in out and out[0] == ("direct", 0)
    assert runs[0] >= 2 and sub.handed_over  # woken for item 2, handed back afterwards
    tail.close()
