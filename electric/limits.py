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

    # source reader, initial sync, upsert
    # Transactions a source reader has submitted to the store and not yet seen durable; then
    # it waits for the oldest (acknowledgements follow durability, so this bounds the memory
    # held for unacknowledged transactions, not what is lost).
    max_in_flight: int = 64
    # Rows an initial copy writes per store transaction: big enough that the copy is not one
    # commit per row, small enough that one batch stays a short commit.
    initial_sync_batch_rows: int = 5000
    # Seconds an ordinary or replication connection may take to connect when the DSN gives
    # no connect_timeout: a Postgres that does not answer is reported, not waited on forever.
    connect_timeout: float = 10.0
    # Default ``timeout`` (ms) of a CONNECTORS URL, as the reference's default.
    connector_timeout_ms: int = 5000


@dataclass(frozen=True)
class SatelliteLimits:
    """The websocket server, sessions and the shared tail."""


@dataclass(frozen=True)
class VaxineLimits:
    """The Vaxine clients (Antidote API, WAL stream) and the standalone ``electric vaxine``."""


@dataclass(frozen=True)
class StoreLimits:
    """The embedded store (``electric/store``)."""

    # Most transactions (and changes) one group commit takes, so one commit stays short.
    max_batch_txns: int = 512
    max_batch_changes: int = 20_000
    # Decoded recent transactions kept for readers, counted in changes.
    cache_changes: int = 50_000
    # Changes the log keeps (older entries are compacted away; a reader older than the log
    # gets a snapshot of the rows instead): bounds the data directory for a given row size.
    # The default of STORE_RETAIN_CHANGES, which overrides it.
    retain_changes: int = 1_000_000
    # Transactions one read of the log returns at most, so one reader cannot hold a reader
    # thread (or its memory) for a whole backlog.
    read_batch: int = 256
    # Changes per stored chunk (and per snapshot piece): a transaction of any size is written
    # and read piece by piece, never whole in memory.
    chunk_changes: int = 1000


@dataclass(frozen=True)
class ServiceLimits:
    """Everything else: offsets file, HTTP, shutdown, TLS."""

    # One offset-file record is never anywhere near this; a larger length field read back
    # is corruption, and the cap keeps a garbage length from allocating gigabytes.
    offsets_max_record_size: int = 16 * MIB
    # Request bodies of the HTTP API (migrations, status) are small JSON documents.
    http_max_body_bytes: int = 1 * MIB
    # Seconds a graceful shutdown waits for components to stop before exiting anyway.
    shutdown_timeout: float = 4.0
    # Seconds a TLS handshake may take, so a peer that connects and sends nothing does not
    # hold a connection slot.
    tls_handshake_timeout: float = 10.0


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
