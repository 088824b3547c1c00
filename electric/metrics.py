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
    # A log change sent to a Satellite client without its table (the server holds streams
    # until the registry knows the table, so this stays 0).
    "satellite_unknown_table",
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
                 satellite: Callable[[], dict[str, Any]], vaxine_up: Callable[[], bool]):
        self.connectors = connectors
        self.subscribers = subscribers
        self.satellite = satellite
        self.vaxine_up = vaxine_up

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
                                "Source WAL produced past Electric's last acknowledgement",
                                labels=["connector"])
        reconnects = CounterMetricFamily("electric_source_reconnects",
                                         "Source reader reconnections", labels=["connector"])
        for name, st in sorted(connectors.items()):
            up.add_metric([name], float(bool(st.get("ready"))))
            reader.add_metric([name], float(bool(st.get("reader_connected"))))
            lag.add_metric([name], float(st.get("lag_bytes") or 0))
            reconnects.add_metric([name], float(st.get("reconnects") or 0))
        yield from (up, reader, lag, reconnects)

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
        yield GaugeMetricFamily("electric_vaxine_up", "1 when a Vaxine API connection works",
                                value=float(bool(self.vaxine_up())))


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
