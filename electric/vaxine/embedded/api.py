"""Request handling of the embedded Vaxine's Antidote API (port 8087): message in, message out.

Served: 119→124, 118→111, 116→126, 121→127, 120→111, 122→127, 123→128. Any other decodable
request gets ``ApbErrorResp`` (errcode 0), as the real server does for 135. Types: RRMAP,
LWWREG and FLAG_DW (nested in maps too); other CRDT types are refused with an error reply.

A refused update inside a transaction aborts it (the client then sees the transaction as
aborted); a refused read (a type we do not serve, or a key read as the wrong type) only
gets an error reply, and the transaction goes on: it has changed nothing.
A descriptor that is not an Erlang term gets ``ApbErrorResp`` ("error: badarg", like the real
server); a well-formed descriptor of a transaction that is not running gets the typed
response with ``success = false, errorcode = 3`` (aborted). Transactions belong to the
connection that started them and are aborted when it closes (the real server would keep
them running forever); clients use one connection per transaction anyway.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message
from loguru import logger

from electric.pb import antidote_pb2 as pb
from electric.vaxine import antidote, crdt_terms, etf
from electric.vaxine.embedded import crdt
from electric.vaxine.embedded.store import (
    CommitRefused,
    Store,
    StoreFailed,
    Txn,
    UnknownTransaction,
)
from electric.vaxine.etf import Atom

TYPE_ATOM = {pb.RRMAP: crdt_terms.MAP_RR, pb.LWWREG: crdt_terms.LWW, pb.FLAG_DW: crdt_terms.FLAG_DW}
TYPE_ENUM = {atom: enum for enum, atom in TYPE_ATOM.items()}
ABORTED = 3

log = logger.bind(origin="vaxine_api")


class RequestFailed(Exception):
    """Becomes an ApbErrorResp (errcode 0) carrying ``str(self)`` as errmsg."""


def _type_atom(enum: int) -> Atom:
    try:
        return TYPE_ATOM[enum]
    except KeyError:
        name = pb.CRDT_type.Name(enum) if enum in pb.CRDT_type.values() else str(enum)
        raise crdt_terms.CrdtError(f"CRDT type {name} is not supported by the embedded store") from None


def to_op(ctype: Atom, operation: pb.ApbUpdateOperation) -> tuple:
    """Protobuf operation → :mod:`crdt` operation for an object of type ``ctype``."""
    if ctype == crdt_terms.LWW and operation.HasField("regop"):
        return ("assign", operation.regop.value)
    if ctype == crdt_terms.FLAG_DW and operation.HasField("flagop"):
        return ("enable",) if operation.flagop.value else ("disable",)
    if ctype == crdt_terms.MAP_RR and operation.HasField("mapop"):
        # Each protobuf attribute access builds a wrapper object: touch each one once.
        mapop = operation.mapop
        updates = []
        for nested in mapop.updates:
            key = nested.key
            ftype = TYPE_ATOM.get(key.type) or _type_atom(key.type)
            update = nested.update
            if ftype == crdt_terms.LWW and update.HasField("regop"):  # the commonest nested op
                updates.append(((key.key, ftype), ("assign", update.regop.value)))
            else:
                updates.append(((key.key, ftype), to_op(ftype, update)))
        removed = mapop.removedKeys
        removes = [(k.key, _type_atom(k.type)) for k in removed] if removed else []
        return ("batch", updates, removes)
    if ctype in (crdt_terms.MAP_RR, crdt_terms.FLAG_DW) and operation.HasField("resetop"):
        return ("reset",)
    raise crdt_terms.CrdtError(f"operation not applicable to {ctype.name}")


def read_resp(ctype: Atom, state: Any) -> pb.ApbReadObjectResp:
    if ctype == crdt_terms.LWW:
        return pb.ApbReadObjectResp(reg=pb.ApbGetRegResp(value=state[1]))
    if ctype == crdt_terms.FLAG_DW:
        return pb.ApbReadObjectResp(flag=pb.ApbGetFlagResp(value=crdt.value(ctype, state)))
    entries = [
        pb.ApbMapEntry(key=pb.ApbMapKey(key=field, type=TYPE_ENUM[ftype]),
                       value=read_resp(ftype, nested))
        for (field, ftype), nested in sorted(state.items(), key=lambda i: (i[0][0], str(i[0][1])))
    ]
    return pb.ApbReadObjectResp(map=pb.ApbGetMapResp(entries=entries))


class ApiSession:
    """One client connection's view of the API (transactions it starts are its own)."""

    def __init__(self, store: Store):
        self.store = store

    def handle(self, request: Message) -> Message:
        handler = _HANDLERS.get(type(request))
        try:
            if handler is None:
                raise RequestFailed(f"error: function_clause\nno handler for {type(request).__name__}")
            return handler(self, request)
        except RequestFailed as exc:
            return antidote.error_resp(str(exc))
        except (crdt_terms.CrdtError, etf.ETFError, StoreFailed, CommitRefused) as exc:
            return antidote.error_resp(f"error: {exc}")

    def close(self) -> None:
        self.store.abort_owned_by(self)

    # ------------------------------------------------------------------ helpers

    def _txn(self, descriptor: bytes) -> Txn | None:
        try:
            return self.store.txn(descriptor)
        except UnknownTransaction:
            try:
                etf.decode(descriptor)
            except etf.ETFError:
                raise RequestFailed("error: badarg\ntransaction descriptor is not an Erlang term") from None
            return None

    @staticmethod
    def _check_timestamp(start: pb.ApbStartTransaction) -> None:
        # ignore / absent / a clock are all fine: one DC that is always caught up.
        if start.HasField("timestamp"):
            try:
                etf.decode(start.timestamp)
            except etf.ETFError:
                raise RequestFailed("error: badarg\ntimestamp is not an Erlang term") from None

    def _apply(self, txn: Txn, updates) -> None:
        try:
            for upd in updates:
                obj = upd.boundobject
                ctype = _type_atom(obj.type)
                self.store.update(txn, obj.key, obj.bucket, ctype, to_op(ctype, upd.operation))
        except Exception:
            self.store.abort(txn)
            raise

    def _read(self, txn: Txn, objects) -> list[pb.ApbReadObjectResp]:
        out = []
        for obj in objects:
            ctype = _type_atom(obj.type)
            out.append(read_resp(ctype, self.store.read(txn, obj.key, obj.bucket, ctype)))
        return out

    # ------------------------------------------------------------------ handlers

    def start(self, req: pb.ApbStartTransaction) -> Message:
        self._check_timestamp(req)
        txn = self.store.begin(owner=self)
        return pb.ApbStartTransactionResp(success=True, transaction_descriptor=txn.descriptor)

    def update(self, req: pb.ApbUpdateObjects) -> Message:
        txn = self._txn(req.transaction_descriptor)
        if txn is None:
            return pb.ApbOperationResp(success=False, errorcode=ABORTED)
        try:
            self._apply(txn, req.updates)
        except crdt_terms.CrdtError as exc:
            log.warning(f"update refused, transaction aborted: {exc}")
            return pb.ApbOperationResp(success=False, errorcode=0)
        return pb.ApbOperationResp(success=True)

    def read(self, req: pb.ApbReadObjects) -> Message:
        txn = self._txn(req.transaction_descriptor)
        if txn is None:
            return pb.ApbReadObjectsResp(success=False, errorcode=ABORTED)
        return pb.ApbReadObjectsResp(success=True, objects=self._read(txn, req.boundobjects))

    def commit(self, req: pb.ApbCommitTransaction) -> Message:
        txn = self._txn(req.transaction_descriptor)
        if txn is None:
            return pb.ApbCommitResp(success=False, errorcode=ABORTED)
        commit_us = self.store.commit(txn)
        return pb.ApbCommitResp(success=True, commit_time=self.store.clock(commit_us))

    def abort(self, req: pb.ApbAbortTransaction) -> Message:
        txn = self._txn(req.transaction_descriptor)
        if txn is not None:
            self.store.abort(txn)
        return pb.ApbOperationResp(success=True)

    def static_update(self, req: pb.ApbStaticUpdateObjects) -> Message:
        self._check_timestamp(req.transaction)
        txn = self.store.begin(owner=self)
        try:
            self._apply(txn, req.updates)
        except crdt_terms.CrdtError as exc:
            log.warning(f"static update refused: {exc}")
            return pb.ApbCommitResp(success=False, errorcode=0)
        commit_us = self.store.commit(txn)
        return pb.ApbCommitResp(success=True, commit_time=self.store.clock(commit_us))

    def static_read(self, req: pb.ApbStaticReadObjects) -> Message:
        self._check_timestamp(req.transaction)
        txn = self.store.begin(owner=self)
        try:
            objects = self._read(txn, req.objects)
        finally:
            self.store.abort(txn)
        # Like the real server: the clock of the read snapshot, taken now.
        clock = self.store.clock(self.store.now_us())
        return pb.ApbStaticReadObjectsResp(
            objects=pb.ApbReadObjectsResp(success=True, objects=objects),
            committime=pb.ApbCommitResp(success=True, commit_time=clock),
        )


_HANDLERS = {
    pb.ApbStartTransaction: ApiSession.start,
    pb.ApbUpdateObjects: ApiSession.update,
    pb.ApbReadObjects: ApiSession.read,
    pb.ApbCommitTransaction: ApiSession.commit,
    pb.ApbAbortTransaction: ApiSession.abort,
    pb.ApbStaticUpdateObjects: ApiSession.static_update,
    pb.ApbStaticReadObjects: ApiSession.static_read,
}
