"""Vaxine: Electric's CRDT store, reached only through its two real wire protocols.

* :mod:`~electric.vaxine.etf` – Erlang external term format codec (sans-I/O).
* :mod:`~electric.vaxine.framing` – ``{packet, 4}`` framing shared by both ports.
* :mod:`~electric.vaxine.antidote` – Antidote protobuf API (port 8087) codec.
* :mod:`~electric.vaxine.pool` – shared API connection pool and transactions.
* :mod:`~electric.vaxine.rows` – change records ↔ Vaxine objects (write and read side).
* :mod:`~electric.vaxine.stream` – WAL replication stream client (port 8088).
* :mod:`~electric.vaxine.embedded` – the embedded Vaxine-compatible server
  (:class:`~electric.vaxine.embedded.server.EmbeddedVaxine`).
"""
