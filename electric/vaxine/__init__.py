"""Vaxine: Electric's CRDT store, reached only through its two real wire protocols.

Sans-I/O cores:

* :mod:`~electric.vaxine.etf` – Erlang external term format: term types, encoder (and the
  builders hot paths splice terms with), decoder.
* :mod:`~electric.vaxine.framing` – ``{packet, 4}`` framing shared by both ports.
* :mod:`~electric.vaxine.offset` – :class:`~electric.vaxine.offset.VaxineOffset`, a position
  in the log, and where a stream starts.
* :mod:`~electric.vaxine.walproto` – the WAL replication protocol (port 8088), both sides.
* :mod:`~electric.vaxine.antidote` – Antidote protobuf API (port 8087) codec.
* :mod:`~electric.vaxine.crdt_terms` – the CRDT types as Erlang terms (client and server).
* :mod:`~electric.vaxine.rows` – change records ↔ Vaxine objects (write and read side).
* :mod:`~electric.vaxine.memo` – decoded terms shared by an in-process server and its readers.

Shells (gevent, sockets):

* :mod:`~electric.vaxine.pool` – shared API connection pool and transactions.
* :mod:`~electric.vaxine.stream` – WAL replication stream client.
* :mod:`~electric.vaxine.embedded` – the standalone Vaxine-compatible server
  (``electric vaxine``, :class:`~electric.vaxine.embedded.server.EmbeddedVaxine`); it may
  import the modules above, never the other way round (:mod:`~electric.vaxine.datadir`
  names its database file for ``electric backup-store``).

Limits of all of them: :class:`electric.limits.VaxineLimits`.
"""
