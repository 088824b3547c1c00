"""Prometheus metrics, served at ``/metrics`` on STATUS_PORT.

One private registry (not the library's global one) so that tests and several applications
in one process never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry()

transactions_in = Counter(
    "electric_transactions_in_total",
    "Transactions written into the log, by source (connector name or 'satellite')",
    ["source"], registry=REGISTRY)
transactions_out = Counter(
    "electric_transactions_out_total",
    "Transactions sent to consumers, by sink (connector name or 'satellite')",
    ["sink"], registry=REGISTRY)
reconnects = Counter(
    "electric_reconnects_total", "Reconnections after a lost connection, by component",
    ["component"], registry=REGISTRY)
failures = Counter(
    "electric_failures_total", "Failed operations that were retried or reported, by component",
    ["component"], registry=REGISTRY)
lag_transactions = Gauge(
    "electric_subscriber_lag_transactions",
    "Log transactions not yet confirmed by a Postgres subscriber", ["connector"],
    registry=REGISTRY)
lag_bytes = Gauge(
    "electric_source_lag_bytes",
    "Bytes of source WAL between the newest received and the last acknowledged position",
    ["connector"], registry=REGISTRY)
satellite_clients = Gauge(
    "electric_satellite_clients", "Connected Satellite clients", registry=REGISTRY)
component_up = Gauge(
    "electric_component_up", "1 when the component is healthy", ["component"],
    registry=REGISTRY)


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
