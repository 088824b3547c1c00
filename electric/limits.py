"""Every size, count and time limit of the service, in one table, and the shared byte budgets.

Limits used to be constants scattered over many modules. They live here instead, one
frozen dataclass per outside system, each field with the reason for its value. The wiring
module (``electric.app``) builds one :class:`Limits` and passes each component its
section; components take the section as a constructor argument whose default is the
module-level ``DEFAULT`` table, so tests can pass smaller limits without patching globals.

:class:`ByteBudget` is the process-wide memory budget for inbound data. Every listener
caps a single message before reading it, but a peer may announce a message under the cap
and then send it slowly; many such peers together could still hold a lot of memory. A
listener therefore reserves each announced payload against one shared budget before
reading it and releases it when the message is complete or the connection ends. A
reservation that does not fit is refused, and the listener drops that one connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIB = 1024 * 1024


@dataclass(frozen=True)
class PostgresLimits:
    """The publisher on 5433, the source reader, initial sync and the upsert path."""


@dataclass(frozen=True)
class SatelliteLimits:
    """The websocket server, sessions and the shared tail."""


@dataclass(frozen=True)
class VaxineLimits:
    """The Vaxine clients (Antidote API, WAL stream) and the standalone ``electric vaxine``."""


@dataclass(frozen=True)
class StoreLimits:
    """The embedded store (``electric/store``)."""


@dataclass(frozen=True)
class ServiceLimits:
    """Everything else: offsets file, HTTP, shutdown, TLS."""


@dataclass(frozen=True)
class Limits:
    postgres: PostgresLimits = field(default_factory=PostgresLimits)
    satellite: SatelliteLimits = field(default_factory=SatelliteLimits)
    vaxine: VaxineLimits = field(default_factory=VaxineLimits)
    store: StoreLimits = field(default_factory=StoreLimits)
    service: ServiceLimits = field(default_factory=ServiceLimits)


DEFAULT = Limits()


@dataclass
class ByteBudget:
    capacity: int
    name: str = "inbound"
    used: int = field(default=0, init=False)

    def try_reserve(self, n: int) -> bool:
        """Reserve ``n`` bytes; False (nothing reserved) when that would exceed the budget.

        Greenlets never switch inside this method, so no lock is needed.
        """
        if n < 0:
            raise ValueError("cannot reserve a negative size")
        if self.used + n > self.capacity:
            return False
        self.used += n
        return True

    def release(self, n: int) -> None:
        self.used = max(0, self.used - n)
