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

    # -- the publisher on 5433 (publisher.py, publisher_stream.py, wire.py, shared_encode.py)
    # Open connections at most; one more gets FATAL 53300 (MAX_CONNECTIONS overrides it).
    publisher_max_connections: int = 10_000
    # Startup + password exchange; the reference's 100 ms was fragile on slow links.
    publisher_startup_timeout: float = 10.0
    # A connection idle between queries this long is closed (a subscriber never idles so).
    publisher_query_idle_timeout: float = 300.0
    # A streaming subscriber sends a status update at least every 10 s; silence this long
    # (while it also stopped reading) means it is gone.
    publisher_stream_idle_timeout: float = 120.0
    # Keepalive period while streaming, well under the subscriber's wal_receiver_timeout (60 s).
    publisher_keepalive_interval: float = 10.0
    # How long a catalog query waits for the registry to learn a table or publication
    # (subscription setup races with the connector's schema load).
    publisher_registry_wait: float = 3.0
    # How long a refused peer may take to read its FATAL before the socket is closed.
    publisher_refusal_linger: float = 2.0
    # Offset mappings below a confirmed position are collected at most this often.
    publisher_gc_interval: float = 30.0
    # Bytes asked of the socket per read: a subscriber sends short messages.
    publisher_recv_size: int = 65536
    # Log transactions read ahead of one subscriber (back-pressure on the log reader) ...
    publisher_queue_transactions: int = 256
    # ... and changes: large transactions read ahead must not pile up in memory.
    publisher_queue_changes: int = 20_000
    # Transactions encoded and written together (one fsync of their mappings per batch).
    publisher_batch_transactions: int = 64
    # Transactions with more changes are encoded and sent piece by piece.
    publisher_streamed_transaction: int = 5000
    # Sent-but-unconfirmed transactions remembered for lag; past it lag only gets coarser.
    publisher_unconfirmed_transactions: int = 100_000
    # Row messages encoded once for every session, kept for sessions that lag a little.
    publisher_encode_cache_bytes: int = 32 * MIB
    # Postgres itself refuses startup packets above 10000 bytes (MAX_STARTUP_PACKET_LENGTH).
    publisher_max_startup_size: int = 10_000
    # A subscriber sends short queries and 34-byte status updates; 1 MiB is far beyond any
    # legitimate message here and small enough that a hostile length field costs nothing.
    publisher_max_message_size: int = MIB
    # Postgres' PG_MAX_AUTH_TOKEN_LENGTH: SCRAM messages are a few hundred bytes.
    publisher_max_auth_message_size: int = 65_535


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
