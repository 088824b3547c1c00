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

    # Largest websocket message accepted; checked on the frame header, before the body is
    # read (the protocol has no message anywhere near this; a snapshot goes out in pieces).
    max_message_bytes: int = 16 * MIB
    # All sockets together may hold this much of messages still being received, so many
    # slow senders of big messages cannot exhaust memory (see ByteBudget).
    inbound_budget_bytes: int = 32 * MIB
    # Read buffer per socket: small, because 10,000 idle sockets each hold one; larger
    # frames are read straight into their message.
    read_buffer: int = 2048
    # A peer that accepts no bytes for this long is disconnected.
    send_timeout: float = 30.0
    # After we send a close frame, how long the peer gets to answer before the socket is cut.
    close_grace: float = 2.0
    # Seconds a second socket with the same client id waits for the first one to go away.
    claim_grace: float = 1.0
    # Seconds between liveness ticks (the reference's 5 s, which clients are tuned to).
    ping_interval: float = 5.0
    # A socket that has not authenticated this long after opening is closed.
    auth_timeout: float = 10.0
    # Bytes queued for one socket before its own stream greenlet (catch-up, big
    # transactions) waits for the socket: back-pressure without holding much memory.
    max_out_buffer: int = 1 * MIB
    # Bytes of live transactions queued for a socket that does not read them: past this the
    # client is disconnected (it reconnects and resumes from its lsn), so one stuck client
    # never holds memory or anyone else up.
    slow_client_bytes: int = 4 * MIB
    # Completed client transactions waiting for the writer; when full, reading from the
    # socket pauses (TCP back-pressure instead of unbounded memory).
    writer_queue: int = 64
    # How long a client transaction, or an outgoing one before it is reported at ERROR,
    # waits for the schema registry to learn its tables (connectors describe them at start).
    table_wait: float = 5.0
    # Re-looking up a table the registry does not know yet: first delay (connectors describe
    # tables within moments at start-up) and the cap of the back-off after it.
    table_retry_first: float = 0.05
    table_retry_max: float = 5.0
    # Writing a client transaction: first retry delay, largest delay, and the total time
    # before the writer gives up and pauses incoming replication (Vaxine restarts fit in it).
    write_retry_first: float = 0.01
    write_retry_max_sleep: float = 1.0
    write_retry_total: float = 10.0
    # Sessions listed in the status (the rest are counted): the status stays readable.
    status_max_clients: int = 100
    # Outgoing transactions with more changes than this go out as several SatOpLogs of at
    # most streamed_piece operations each, so none is ever whole in memory.
    streamed_transaction: int = 5000
    streamed_piece: int = 2000
    # Encoded outgoing transactions shared between sockets: live sockets are a few
    # transactions apart, so a short history serves them all.
    oplog_cache_entries: int = 1024
    oplog_cache_bytes: int = 16 * MIB
    # The shared tail's ring of recent transactions, and each subscriber's queue, in
    # transactions and in changes (1,024 transactions of a thousand rows each would
    # otherwise keep a million rows in memory).
    ring_size: int = 1024
    queue_limit: int = 1024
    ring_changes: int = 20_000
    queue_changes: int = 20_000
    # Delay before the shared tail reopens its stream after it failed.
    tail_retry: float = 1.0


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
