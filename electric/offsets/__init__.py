"""The offset file (``OFFSET_STORAGE_FILE``): append-only, checksummed, fsynced.

What it stores (docs/protocols.md §5 and §2.5):

* per Satellite client: the opaque ``SatOpBegin.lsn`` of the last client transaction that is
  durably in Vaxine. Electric acks the client (``SatPingResp{lsn}``) only after
  ``OffsetStore.put_satellite_lsn`` has returned, so that ``put`` is the durability point.
* per Postgres subscriber slot: one ``synthetic pg LSN -> Vaxine offset`` mapping per
  transaction sent, so a reconnecting subscriber resumes right after the last transaction it
  applied.

Why a hand-rolled log and not SQLite/dbm: the write pattern is tiny appends that must be
durable one by one; an append + one ``fsync`` is the cheapest durable write there is, and the
whole live state fits in memory, so an in-memory index answers every lookup without touching
the disk. The file is only read once, at open.

One job per module:

* :mod:`~electric.offsets.errors`: what the store raises (sans-I/O).
* :mod:`~electric.offsets.records`: the bytes of the file: header, record frame, payloads
  (sans-I/O).
* :mod:`~electric.offsets.recovery`: reading a whole file back, with the one torn-tail rule
  (sans-I/O).
* :mod:`~electric.offsets.index`: the in-memory state the records build (sans-I/O).
* :mod:`~electric.offsets.disk`: writes, fsync off the hub, crash-atomic replacement (I/O).
* :mod:`~electric.offsets.store`: :class:`~electric.offsets.store.OffsetStore`, the shell
  that ties them together: open, lock, append, compact (I/O).
"""
