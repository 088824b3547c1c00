"""Prometheus metrics, served at ``/metrics`` on STATUS_PORT.

Transactions written into the log are counted where they are written; everything else is
read from the components' own ``status()`` at scrape time, so the numbers on /metrics and
/api/status can never disagree and no component needs to know about Prometheus.
A private registry (not the library's global one) keeps Electric's metrics apart from
anything else in the process; an application installs its collector with :func:`watch`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry()

transactions_in = Counter(
    "electric_transactions_in",
    "Transactions written into the log, by source (connector name or 'satellite')",
    ["source"], registry=REGISTRY)

# Nothing is ever dropped silently: every change left out anywhere on the data path is
# counted here, by reason (see SKIP_REASONS). Healthy operation keeps all of them at 0.
changes_skipped = Counter(
    "electric_changes_skipped",
    "Changes left out on the data path, by reason (should stay 0)",
    ["reason"], registry=REGISTRY)
SKIP_REASONS = (
    # TRUNCATE has no representation in the log (documented limit, logged per statement).
    "truncate",
    # A source change to a table Electric does not replicate (no primary key, unknown to the
    # registry; reported in the status and warned about once per table).
    "table_not_replicated",
    # A subscriber Postgres does not have the table (not in its publication), or a log
    # record lacks its key: the change stays in the log for everyone else; that subscriber
    # could not apply it.
    "table_not_at_subscriber",
)
for _reason in SKIP_REASONS:
    changes_skipped.labels(_reason)

log_reader_blocks = Counter(
    "electric_log_reader_blocks",
    "Times a reader of the log stopped at a transaction it could not read (held, retried)",
    ["reader"], registry=REGISTRY)
log_readers_blocked = Gauge(
    "electric_log_readers_blocked",
    "Readers of the log currently held at a transaction they cannot read",
    ["reader"], registry=REGISTRY)
for _reader in ("publisher", "satellite"):
    log_reader_blocks.labels(_reader)
    log_readers_blocked.labels(_reader)


# Encode once: a log transaction is serialised once per protocol (and per distinct table
# description / client state), however many sockets receive it. ``encoded`` counts the
# serialisations, ``reused`` the deliveries that took an existing one. Plain integers (the
# reuse count grows once per socket per transaction, on the hot path), exported at scrape.
ENCODED = {"pgoutput": 0, "satellite": 0}
REUSED = {"pgoutput": 0, "satellite": 0}


class _EncodeCollector:
    def collect(self) -> Iterator[Metric]:
        encoded = CounterMetricFamily(
            "electric_transactions_encoded",
            "Log transactions serialised for sending, by protocol (once per transaction and "
            "table view)", labels=["protocol"])
        reused = CounterMetricFamily(
            "electric_encodings_reused",
            "Deliveries of a log transaction that reused its existing serialisation, by "
            "protocol", labels=["protocol"])
        for protocol in ENCODED:
            encoded.add_metric([protocol], float(ENCODED[protocol]))
            reused.add_metric([protocol], float(REUSED[protocol]))
        yield encoded
        yield reused


REGISTRY.register(_EncodeCollector())


def transaction_encoded(protocol: str) -> None:
    ENCODED[protocol] += 1


def encoding_reused(protocol: str) -> None:
    REUSED[protocol] += 1


slow_clients = Counter(
    "electric_satellite_slow_disconnects",
    "Satellite clients disconnected (close 1013) for not reading what they were sent",
    registry=REGISTRY)


def slow_client_disconnected() -> None:
    slow_clients.inc()


writes_refused = Counter(
    "electric_satellite_writes_refused",
    "Satellite client transactions refused by the sync rules, by the table of the first "
    "change outside the client's rules (docs/sync-rules.md section 4)",
    ["table"], registry=REGISTRY)


def write_refused(table: str) -> None:
    writes_refused.labels(table).inc()


def skipped(reason: str, n: int = 1) -> None:
    """Count ``n`` changes left out for ``reason`` (one of :data:`SKIP_REASONS`)."""
    changes_skipped.labels(reason).inc(n)


def log_reader_blocked(reader: str, blocked: bool) -> None:
    """A log reader (``publisher``, ``satellite``...) is now held at / released from an
    unreadable transaction."""
    if blocked:
        log_reader_blocks.labels(reader).inc()
        log_readers_blocked.labels(reader).inc()
    else:
        log_readers_blocked.labels(reader).dec()


class StatusCollector:
    """Turns component status dicts into metrics at scrape time."""

    def __init__(self, connectors: Callable[[], dict[str, dict[str, Any]]],
                 subscribers: Callable[[], dict[str, dict[str, Any]]],
                 satellite: Callable[[], dict[str, Any]], vaxine_up: Callable[[], bool],
                 listeners: Callable[[], dict[str, dict[str, Any]]] | None = None,
                 store: Callable[[], dict[str, Any]] | None = None):
        self.listeners = listeners or dict
        self.connectors = connectors
        self.subscribers = subscribers
        self.satellite = satellite
        self.vaxine_up = vaxine_up
        self.store = store

    def collect(self) -> Iterator[Metric]:
        connectors = self.connectors()
        subscribers = self.subscribers()
        up = GaugeMetricFamily("electric_connector_up",
                               "1 when the connector is provisioned and its reader streams",
                               labels=["connector"])
        reader = GaugeMetricFamily("electric_source_reader_connected",
                                   "1 when the source reader streams from Postgres",
                                   labels=["connector"])
        lag = GaugeMetricFamily("electric_source_lag_bytes",
                                "Source WAL sent or reported past Electric's last "
                                "acknowledgement (0 when nothing is pending)",
                                labels=["connector"])
        blocked = GaugeMetricFamily("electric_source_blocked",
                                    "1 while a source transaction cannot be written (held, "
                                    "retried; see blocked_lsn in /api/status)",
                                    labels=["connector"])
        retrying = GaugeMetricFamily("electric_source_write_retrying",
                                     "1 while writing a source transaction into Vaxine fails",
                                     labels=["connector"])
        reconnects = CounterMetricFamily("electric_source_reconnects",
                                         "Source reader reconnections", labels=["connector"])
        sub_blocked = GaugeMetricFamily(
            "electric_subscription_blocked",
            "1 while the connector's subscription set-up is held at a refusal (e.g. a table "
            "missing there; retried, see subscription_blocked in /api/status)",
            labels=["connector"])
        unreplicated = GaugeMetricFamily(
            "electric_source_tables_not_replicated",
            "Published tables that cannot replicate (no primary key; see tables_without_pk)",
            labels=["connector"])
        for name, st in sorted(connectors.items()):
            unreplicated.add_metric([name], float(len(st.get("tables_without_pk") or ())))
            up.add_metric([name], float(bool(st.get("ready"))))
            reader.add_metric([name], float(bool(st.get("reader_connected"))))
            lag.add_metric([name], float(st.get("lag_bytes") or 0))
            reconnects.add_metric([name], float(st.get("reconnects") or 0))
            blocked.add_metric([name], float(st.get("blocked_lsn") is not None))
            retrying.add_metric([name], float(bool(st.get("sink_retrying"))))
            sub_blocked.add_metric([name], float(st.get("subscription_blocked") is not None))
        yield from (up, reader, lag, reconnects, blocked, retrying, unreplicated, sub_blocked)

        streaming = GaugeMetricFamily("electric_subscriber_streaming",
                                      "1 while the Postgres subscriber streams from Electric",
                                      labels=["connector"])
        sent = CounterMetricFamily("electric_transactions_out",
                                   "Transactions sent to a Postgres subscriber",
                                   labels=["sink"])
        pending = GaugeMetricFamily("electric_subscriber_lag_transactions",
                                    "Transactions sent to a subscriber but not yet confirmed",
                                    labels=["connector"])
        lag_seconds = GaugeMetricFamily("electric_subscriber_lag_seconds",
                                        "Age of the oldest unconfirmed transaction",
                                        labels=["connector"])
        failures = CounterMetricFamily("electric_subscriber_apply_failures",
                                       "Times a subscriber failed to apply a transaction",
                                       labels=["connector"])
        for name, st in sorted(subscribers.items()):
            streaming.add_metric([name], float(bool(st.get("streaming"))))
            sent.add_metric([name], float(st.get("sent_transactions") or 0))
            pending.add_metric([name], float(st.get("pending_transactions") or 0))
            lag_seconds.add_metric([name], float(st.get("lag_seconds") or 0))
            failures.add_metric([name], float(st.get("apply_failures") or 0))
        yield from (streaming, sent, pending, lag_seconds, failures)

        satellite = self.satellite()
        yield GaugeMetricFamily("electric_satellite_clients", "Connected Satellite clients",
                                value=float(satellite.get("clients_connected", 0)))
        yield GaugeMetricFamily(
            "electric_satellite_sync_filters",
            "Distinct sync rules filters among connected Satellite clients (each costs at most "
            "one encoding per transaction)",
            value=float((satellite.get("oplog_cache") or {}).get("distinct_filters", 0)))
        yield GaugeMetricFamily("electric_vaxine_up", "1 when a Vaxine API connection works",
                                value=float(bool(self.vaxine_up())))
        open_ = GaugeMetricFamily("electric_listener_connections",
                                  "Open connections per listener (capped by MAX_CONNECTIONS)",
                                  labels=["listener"])
        refused = CounterMetricFamily("electric_listener_refused_connections",
                                      "Connections refused because the listener was full",
                                      labels=["listener"])
        auth_failed = CounterMetricFamily(
            "electric_listener_refused_authentications",
            "Replication logins with a wrong or missing password; admin requests refused",
            labels=["listener"])
        for name, st in sorted(self.listeners().items()):
            open_.add_metric([name], float(st.get("open_connections") or 0))
            refused.add_metric([name], float(st.get("refused_connections") or 0))
            failures = st.get("failed_authentications", st.get("refused_admin_requests"))
            if failures is not None:
                auth_failed.add_metric([name], float(failures))
        yield from (open_, refused, auth_failed)
        if self.store is not None:
            yield from _store_metrics(self.store())


_STORE_GAUGES = (
    ("bytes", "electric_store_bytes", "Size of the embedded store's files (database + WAL)"),
    ("rows", "electric_store_rows", "Rows the embedded store holds (tombstones included)"),
    ("log_transactions", "electric_store_log_transactions", "Transactions in the store's log"),
    ("log_changes", "electric_store_log_changes", "Changes in the store's log"),
    ("compacted_through", "electric_store_oldest_position",
     "Log position the store's log was compacted through (0: complete)"),
    ("last_position", "electric_store_last_position", "Position of the newest transaction"),
)
_STORE_COUNTERS = (
    ("transactions_written", "electric_store_transactions_written",
     "Transactions committed to the embedded store"),
    ("group_commits", "electric_store_group_commits", "Group commits (fsyncs) of the store"),
    ("snapshots_served", "electric_store_snapshots_served",
     "Snapshots of the rows handed to readers older than the log"),
)


def _store_metrics(status: dict[str, Any]) -> Iterator[Metric]:
    for key, name, text in _STORE_GAUGES:
        yield GaugeMetricFamily(name, text, value=float(status.get(key) or 0))
    for key, name, text in _STORE_COUNTERS:
        yield CounterMetricFamily(name, text, value=float(status.get(key) or 0))


_collector: StatusCollector | None = None


def watch(collector: StatusCollector) -> None:
    """Install the application's collector (replacing an earlier one)."""
    global _collector
    if _collector is not None:
        REGISTRY.unregister(_collector)
    REGISTRY.register(collector)
    _collector = collector


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
