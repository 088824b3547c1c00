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

    # source reader, initial sync, upsert
    # Transactions a source reader has submitted to the store and not yet seen durable; then
    # it waits for the oldest (acknowledgements follow durability, so this bounds the memory
    # held for unacknowledged transactions, not what is lost).
    max_in_flight: int = 64
    # Replication messages a source reader takes from libpq per switch of psycopg2's wait
    # callback: one switch per message was a measurable share of the reader's CPU.
    source_read_burst: int = 256
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

    # -- both ports, both sides
    # Largest {packet, 4} frame on the Antidote API: a 10-row transaction is a few KiB; 64 MiB
    # leaves room for very large ones while bounding memory per peer.
    max_frame: int = 64 * MIB
    # Deepest ETF nesting decoded: hostile input fails cleanly before Python's recursion limit.
    etf_max_depth: int = 256
    # Largest size a compressed ETF term may claim: refused before inflating.
    etf_max_uncompressed: int = 64 * MIB

    # -- the client (Electric's writer and stream readers)
    # Largest vx_wal_txn frame a stream reader accepts: the server logs Ops up to
    # server_max_ops_bytes, plus txid, DC id and offset. A frame the reader refused would be
    # refused again on every reconnect, stalling every consumer behind it.
    stream_max_frame: int = 256 * MIB + MIB
    # Re-reading a log transaction that could not be materialised: from about a second (a
    # refusal that depends on state elsewhere may clear soon) up to every 30 s.
    stream_blocked_retry_min_s: float = 1.0
    stream_blocked_retry_max_s: float = 30.0
    # Transactions a stream reader holds ahead of its consumer; past that it stops reading
    # the socket, so TCP back-pressure reaches the server and nothing grows without bound.
    stream_buffer: int = 50
    # Decoded frames kept for all readers of the process (each tailing reader gets the same
    # frames; decoding once serves them all).
    stream_decoded_frames: int = 256
    # A transaction is written in one static request unless it has more operations or bytes
    # than this; then interactively, in requests of at most this size. Bytes well below
    # max_frame on purpose: the standalone server bounds the incomplete requests it buffers
    # across all connections (server_api_budget), so several writers must fit at once.
    max_ops_per_request: int = 5000
    max_request_bytes: int = 4 * MIB
    # Encoded operations per transaction. The standalone server logs a transaction's Ops
    # term (at most server_max_ops_bytes), which measures 3-5.5x the operations' size; past
    # that the commit would fail on every retry, so it is refused up front (permanent error).
    max_transaction_bytes: int = 32 * MIB
    # API connections of a pool when the settings do not say (antidotec's pool default).
    pool_size: int = 10
    # Connecting to either port; a Vaxine that does not accept within this is down.
    connect_timeout_ms: int = 5000
    # Waiting for a free pool connection before the write is retried.
    checkout_timeout_s: float = 10.0
    # One API request's reply (antidotec's request timeout).
    request_timeout_s: float = 10.0

    # -- the standalone server (electric vaxine)
    # Largest replication request: a client sends ~100 bytes; 1 MiB is generous.
    server_max_request: int = MIB
    # Largest logged transaction (its ETF Ops): its stream frame (a little larger) must stay
    # under stream_max_frame, or readers would refuse it on every reconnect.
    server_max_ops_bytes: int = 256 * MIB
    # Bytes of incomplete API requests all connections together may hold: one maximal frame
    # and a little more, so slow senders cannot pile up memory.
    server_api_budget: int = 64 * MIB + MIB
    # Latest object states kept in memory (a row's state is ~2.5 KiB of Python objects:
    # ~10 MiB); mainly serves metadata:0 and rows updated again soon.
    server_cache_objects: int = 4096
    # SQLite page cache of the writer connection, KiB: with the object cache, what bounds
    # the server's memory.
    server_cache_kib: int = 8 * 1024
    # SQLite page cache of each stream reader's connection, KiB (they read the log in order).
    server_reader_cache_kib: int = 2048
    # Newest logged transactions kept in memory for live streams (each sends them without a
    # read of its own).
    server_recent_log_bytes: int = 4 * MIB
    # Log bytes one stream read fetches at a time.
    server_read_batch_bytes: int = MIB
    # Most commits one SQLite transaction takes, so one group commit stays short.
    server_max_batch: int = 512
    # SQLite WAL size that starts a background (passive) checkpoint, and the size at which
    # the writer checkpoints and restarts the WAL itself before going on.
    server_wal_checkpoint: int = 16 * MIB
    server_wal_hard_limit: int = 64 * MIB
    # How often the server logs its status line.
    server_status_log_s: float = 600.0

    @property
    def max_op_bytes(self) -> int:
        """Largest single update operation: it must fit one API frame with its envelope."""
        return self.max_frame - 64 * 1024


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
    """Everything else: offsets file, HTTP, shutdown, TLS, the sync rules check."""

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
    # Seconds a Satellite client authenticating at start-up waits for the sync rules to be
    # checked against the connectors' tables before it is refused (it then retries).
    sync_rules_wait: float = 30.0


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
