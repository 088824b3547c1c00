"""One shared WAL tail for every Satellite socket that is following the live log.

With a WAL stream connection per socket, N sockets cost N Vaxine connections and N decodes
of every transaction; at a thousand clients the decoding alone is more than one process can
do. Here a single *tail* stream (opened from ``eof``) decodes each transaction once and hands
the same ``(transaction, offset)`` to every attached subscriber.

A subscriber that starts from ``0`` or from an offset first reads its own private stream
(the per-socket reader of the reference design) and switches to the tail as soon as the
private stream delivers a transaction that is still in the tail's ring of recent items: from
that point on both would deliver exactly the same sequence, so the switch has no gap and no
duplicate. A subscriber that falls more than ``queue_limit`` transactions behind the tail is
detached and resumes privately from the last offset it delivered (a slow client never holds
up the others); it re-attaches once it has caught up. If the tail stream itself fails, every
subscriber goes private the same way and the tail is reopened.

Everything here runs on one gevent hub: appending to the ring and delivering to the attached
subscribers happens without yielding, which is what makes the switch-over race free.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import gevent
from gevent.event import Event
from loguru import logger

from electric.changes import Transaction
from electric.limits import DEFAULT, SatelliteLimits
from electric.retry import Backoff, Policy

Item = tuple[Transaction, Any]
StreamFactory = Callable[[Any], Iterator[Item]]

_DETACHED = object()


def _close(stream: Any) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            pass


class SharedTail:
    def __init__(
        self,
        open_stream: StreamFactory,
        limits: SatelliteLimits = DEFAULT.satellite,
    ) -> None:
        self.open_stream = open_stream
        self.limits = limits
        self.queue_limit = limits.queue_limit
        # a fixed delay, as before
        self.reopen = Backoff(Policy(limits.tail_retry, limits.tail_retry))
        self.ring: deque[tuple[int, Transaction, Any]] = deque(maxlen=limits.ring_size)
        self.ring_changes = 0
        self.index: dict[Any, int] = {}  # offset -> sequence number of ring entries
        self.seq = itertools.count()
        self.subscribers: set[Subscription] = set()
        self.greenlet: gevent.Greenlet | None = None
        self.stream: Any = None
        self.closed = False
        self.log = logger.bind(origin="satellite_tail")
        self.stats = {"attached": 0, "detached_slow": 0, "tail_restarts": 0}

    # -- the tail greenlet ----------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self.greenlet is None and not self.closed:
            self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while not self.closed:
            try:
                self.stream = self.open_stream("eof")
                for tx, offset in self.stream:
                    self._append(tx, offset)
                reason = "stream ended"
            except gevent.GreenletExit:
                return
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                _close(self.stream)
                self.stream = None
            if self.closed:
                return
            self.log.warning("shared WAL tail stopped ({}), reopening", reason)
            self.stats["tail_restarts"] += 1
            self._detach_all()
            self.ring.clear()
            self.ring_changes = 0
            self.index.clear()
            gevent.sleep(self.reopen.next())

    def _append(self, tx: Transaction, offset: Any) -> None:
        key = _key(offset)
        if key in self.index:
            return  # already seen (e.g. the first item after a reconnect)
        seq = next(self.seq)
        size = len(tx.changes)
        while self.ring and (len(self.ring) == self.ring.maxlen
                             or self.ring_changes + size > self.limits.ring_changes):
            old_seq, old_tx, old_offset = self.ring.popleft()
            self.ring_changes -= len(old_tx.changes)
            if self.index.get(_key(old_offset)) == old_seq:
                del self.index[_key(old_offset)]
        self.ring.append((seq, tx, offset))
        self.ring_changes += size
        self.index[key] = seq
        for sub in list(self.subscribers):
            sub._deliver((tx, offset))

    def _detach_all(self) -> None:
        for sub in list(self.subscribers):
            sub._detach()

    # -- subscribers ----------------------------------------------------------------------

    def subscribe(self, start: Any) -> Subscription:
        """An iterator of ``(transaction, offset)`` from ``start`` (``"eof"``, ``0`` or an
        offset), with ``close()``, usable wherever a private WAL stream is."""
        self._ensure_running()
        return Subscription(self, start)

    def _attach_after(self, sub: Subscription, offset: Any) -> bool:
        """Try to move ``sub`` (which just delivered ``offset`` privately) onto the tail.

        * ``offset`` is in the ring: queue what followed it and go live;
        * ``offset`` is newer than the ring's newest item (the private stream won the race
          to the head of the log): go live, skipping tail items up to ``offset``. The ring
          being non-empty proves the tail is already reading at or before that point;
        * otherwise (still behind the ring, or the tail has not seen anything yet): no.
        """
        seq = self.index.get(_key(offset))
        if seq is not None:
            later = [(tx, off) for s, tx, off in self.ring if s > seq]
            size = sum(len(tx.changes) for tx, _ in later)
            if len(later) >= self.queue_limit or size >= self.limits.queue_changes:
                return False
            sub.queue.extend(later)
            sub.queued_changes += size
            if later:
                sub.ready.set()
        elif self.ring and _position(offset) > _position(self.ring[-1][2]):
            sub.floor = _position(offset)
        else:
            return False
        self.subscribers.add(sub)
        self.stats["attached"] += 1
        return True

    def close(self) -> None:
        self.closed = True
        if self.greenlet is not None:
            self.greenlet.kill(block=False)
        _close(self.stream)
        self._detach_all()

    def status(self) -> dict[str, Any]:
        return {
            "running": self.greenlet is not None and not self.greenlet.dead,
            "subscribers_attached": len(self.subscribers),
            "ring": len(self.ring),
            **self.stats,
        }


class Subscription:
    def __init__(self, tail: SharedTail, start: Any) -> None:
        self.tail = tail
        self.start = start
        self.last: Any = start if isinstance(start, tuple) else None
        self.queue: deque = deque()
        self.queued_changes = 0
        self.ready = Event()
        self.private: Any = None
        self.closed = False
        # After switching from a private stream that was ahead of the tail: the commit
        # position up to which tail items were already delivered.
        self.floor: int | None = None
        # Direct delivery (set by the consumer): once caught up, the tail calls
        # ``sink(item)`` instead of queueing, so no greenlet waits per subscriber. ``sink``
        # returns False for an item it cannot take now (it is queued), and ``wake()`` asks
        # the consumer to iterate again (to drain the queue or to catch up privately).
        self.sink: Callable[[Item], bool] | None = None
        self.wake: Callable[[], None] | None = None
        self.live = False  # attached to the tail
        self.handed_over = False  # the consumer's iteration ended: the tail delivers now

    # called by the tail greenlet; must not block
    def _deliver(self, item: Item) -> None:
        if self.floor is not None:
            if _position(item[1]) <= self.floor:
                return  # already delivered by the private stream it switched from
            self.floor = None
        if self.handed_over and not self.queue:
            if self.sink(item):
                self.last = item[1]
                return
        limits = self.tail.limits
        if len(self.queue) >= limits.queue_limit or self.queued_changes >= limits.queue_changes:
            # Too far behind: stop feeding it. It drains what it has, then reads privately.
            self.tail.stats["detached_slow"] += 1
            self._detach()
            return
        self.queue.append(item)
        self.queued_changes += len(item[0].changes)
        self._wake()

    def _detach(self) -> None:
        self.tail.subscribers.discard(self)
        self.queue.append(_DETACHED)
        self._wake()

    def _wake(self) -> None:
        self.ready.set()
        if self.handed_over:
            self.handed_over = False
            if self.wake is not None:
                self.wake()

    def __iter__(self) -> Iterator[Item]:
        """Iterate; with a ``sink`` the iteration ends once caught up (``handed_over``)
        and is started again when ``wake()`` is called."""
        self.handed_over = False
        if self.start == "eof" and not self.live and self.last is None and not self.closed:
            self.tail.subscribers.add(self)
            self.tail.stats["attached"] += 1
            self.live = True
        if self.live:
            if not (yield from self._live()):
                return
        while not self.closed:
            # Private catch-up: from the start, or from the last delivered offset.
            resume = self.last if self.last is not None else self.start
            self.private = self.tail.open_stream(resume)
            try:
                attached = False
                for tx, offset in self.private:
                    if self.last is not None and _key(offset) == _key(self.last):
                        continue
                    self.last = offset
                    yield tx, offset
                    if self.tail._attach_after(self, offset):
                        attached = True
                        break
                if not attached:
                    return  # the private stream ended: so does this subscription
            finally:
                _close(self.private)
                self.private = None
            self.live = True
            if not (yield from self._live()):
                return

    def _live(self) -> Iterator[Item]:
        """Deliver from the queue; returns True when detached (continue privately), False
        when closed or handed over to the sink."""
        while not self.closed:
            while not self.queue:
                if self.sink is not None:
                    self.handed_over = True
                    return False
                self.ready.clear()
                self.ready.wait()
                if self.closed:
                    return False
            item = self.queue.popleft()
            if item is _DETACHED:
                # Everything queued before the detach has been delivered: continue
                # privately right after the last of it.
                self.live = False
                return True
            self.queued_changes -= len(item[0].changes)
            self.last = item[1]
            yield item
        return False

    def close(self) -> None:
        self.closed = True
        self.tail.subscribers.discard(self)
        _close(self.private)
        self.ready.set()


def _key(offset: Any) -> Any:
    return tuple(offset) if isinstance(offset, list) else offset


def _position(offset: Any) -> int:
    """Commit position of an offset: ``R`` of ``(L, R)``, which grows in log order
    (docs/protocols.md §4.3). Bare integers (test streams) are their own position."""
    if isinstance(offset, tuple | list):
        return int(offset[1])
    return int(offset)
