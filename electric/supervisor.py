"""Supervised greenlets: a crashing component is logged and restarted with back-off.

Each component runs in its own greenlet; a crash of one never takes the others down. The
restart delay doubles from ``initial`` to ``cap`` and is reset once the component has run
for ``healthy_after`` seconds, so a flapping dependency does not become a tight crash loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gevent
from gevent.event import Event
from loguru import logger

from electric.retry import Backoff, Policy


@dataclass
class Supervisor:
    initial: float = 0.5
    cap: float = 30.0
    healthy_after: float = 30.0
    _greenlets: dict[str, gevent.Greenlet] = field(default_factory=dict)
    _stopping: Event = field(default_factory=Event)
    restarts: dict[str, int] = field(default_factory=dict)

    def spawn(self, name: str, target: Callable[[], object]) -> gevent.Greenlet:
        """Run ``target()`` until it returns normally or the supervisor stops."""
        if name in self._greenlets:
            raise ValueError(f"component {name!r} is already supervised")
        greenlet = gevent.spawn(self._run, name, target)
        greenlet.name = name
        self._greenlets[name] = greenlet
        return greenlet

    @property
    def policy(self) -> Policy:
        return Policy(self.initial, self.cap, reset_after=self.healthy_after)

    def _run(self, name: str, target: Callable[[], object]) -> None:
        delays = Backoff(self.policy)
        log = logger.bind(component=name)
        while not self._stopping.is_set():
            started = gevent.get_hub().loop.now()
            try:
                target()
                return
            except gevent.GreenletExit:
                return
            except Exception as exc:
                if self._stopping.is_set():
                    return
                delays.ran(gevent.get_hub().loop.now() - started)
                delay = delays.next()
                self.restarts[name] = self.restarts.get(name, 0) + 1
                log.opt(exception=exc).error(
                    f"component {name} crashed ({type(exc).__name__}: {exc}); "
                    f"restarting in {delay:.1f}s"
                )
                if self._stopping.wait(delay):
                    return

    def alive(self, name: str) -> bool:
        greenlet = self._greenlets.get(name)
        return greenlet is not None and not greenlet.dead

    def stop(self, timeout: float = 3.0) -> None:
        """Kill every component, waiting up to ``timeout`` seconds. One still running then
        (e.g. a libpq call that turned the kill into a database error and went on to retry)
        is named in a WARNING and left behind: shutdown carries on rather than crashing."""
        self._stopping.set()
        greenlets = list(self._greenlets.values())
        try:
            gevent.killall(greenlets, timeout=timeout)
        except gevent.Timeout:
            alive = sorted(g.name for g in greenlets if not g.dead)
            logger.warning(f"still stopping after {timeout:g}s: {', '.join(alive)}; "
                           f"shutting down without waiting for them")
