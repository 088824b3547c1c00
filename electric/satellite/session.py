"""Sans-I/O Satellite session: one websocket connection's protocol state machine.

Events go in as method calls (a websocket payload arrived, the Vaxine stream produced a
transaction, a client transaction is durably written, the ping timer fired, …) and every
method returns the list of :class:`Action` objects the I/O layer (``connection.py``) must carry
out, in order: frames to send, a close, a client id to claim, an outgoing stream to start or
stop, a transaction to write (:mod:`electric.satellite.actions`). Nothing here touches
sockets, greenlets or files, so the whole session rules of docs/protocols.md §1.3 are
unit-testable with plain calls. The SatOpLog codec is :mod:`electric.satellite.oplog`, the
encoding of outgoing transactions for this client :mod:`electric.satellite.outgoing`.

Differences from the reference, on purpose (ids of docs/gaps.md):

* G1  FIRST_LSN is honoured; an lsn that is neither ``eof``/``0`` nor a valid ETF ``{L,R}``
      gets INVALID_REQUEST instead of a crash.
* G2/G4 incoming transactions are handed to the writer as soon as they are complete; there is
      no demand bookkeeping that could stall (back-pressure is the I/O layer's bounded queue).
* G3  ``SatInStopReplicationResp`` pauses incoming replication; a ``StartResp`` that arrives in
      an unexpected state is ignored.
* G5  stopping outgoing replication sends no stray error; a failed stream resets OutRep.
* G6  relations are re-announced after every outgoing start.
* G7  a second start request while active restarts the stream cleanly.
* G8  a ``SatPingResp`` with a present-but-empty lsn is accepted.
* G9  SYNC_MODE with a batch size <= 0 is INVALID_REQUEST, not a crash.
* G10 every failure becomes ``SatErrorResp`` + close of this socket, never an exception.
* empty frames get ``SatErrorResp{INTERNAL}`` + close; text frames get
  ``SatErrorResp{INVALID_REQUEST}`` + close 1003.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message
from loguru import logger

from electric import metrics, sync_rules
from electric.changes import Change, Record, Transaction
from electric.limits import DEFAULT, SatelliteLimits
from electric.pb import satellite_pb2 as pb
from electric.satellite import frames
from electric.satellite.actions import (
    Action,
    ClaimClient,
    Close,
    Send,
    StartOutgoing,
    StopOutgoing,
    WriteTransaction,
)
from electric.satellite.auth import AuthError, Identity
from electric.satellite.lsn import describe
from electric.satellite.oplog import (
    ClientRelation,
    IncomingTransaction,
    ProtocolViolation,
    apply_op,
)
from electric.satellite.oplog_cache import OplogCache, SharedOplog
from electric.satellite.outgoing import (
    HeldAt,
    HeldTransaction,
    OutgoingEncoder,
    OutRep,
    TableLookup,
    held_too_long,
    hold,
    release,
    start_offset,
)
from electric.satellite.websocket import CLOSE_UNSUPPORTED_DATA
from electric.satellite.write_checks import (
    check_primary_keys,
    refused_as_sent,
    refused_as_stored,
    rows_to_verify,
)


class InStatus(enum.Enum):
    NONE = "none"
    REQUESTED = "requested"
    ACTIVE = "active"
    PAUSED = "paused"


@dataclass
class InRep:
    status: InStatus = InStatus.NONE
    relations: dict[int, ClientRelation] = field(default_factory=dict)
    incomplete: IncomingTransaction | None = None
    # lsns handed to the writer and not yet acknowledged, oldest first.
    in_flight: list[bytes] = field(default_factory=list)
    written: int = 0


BindFilter = Callable[[Mapping[str, Any]], "sync_rules.EffectiveFilter | None"]
"""A client's claims -> its effective filter, ``None`` without sync rules (every row); raises
:class:`FilterUnavailable` when the rules cannot be applied yet."""


class FilterUnavailable(Exception):
    """The sync rules are set but not checked yet: the client is refused, it retries."""


class Session:
    """State machine for one Satellite socket.

    ``authenticate(token) -> Identity`` (or just the user id) raises :class:`AuthError`;
    ``lookup_table`` resolves relations for both directions; ``bind_filter`` turns the
    token's claims into the client's sync rules filter (docs/sync-rules.md); ``now`` values
    are monotonic seconds supplied by the caller.
    """

    _subscription_ids = itertools.count(1)

    def __init__(
        self,
        authenticate: Callable[[str], Identity | str],
        lookup_table: TableLookup,
        cluster_id: str,
        now: float = 0.0,
        peer: str = "",
        limits: SatelliteLimits = DEFAULT.satellite,
        oplog_cache: OplogCache | None = None,
        bind_filter: BindFilter | None = None,
    ) -> None:
        self._authenticate = authenticate
        self._bind_filter = bind_filter
        self.writes_refused = 0
        self._lookup_table = lookup_table
        self.cluster_id = cluster_id
        self.peer = peer
        self.limits = limits
        self.ping_interval = limits.ping_interval
        self.opened_at = now
        self.authenticated = False
        self.claim_pending = False
        self.closed = False
        self.client_id: str | None = None
        self.user_id: str | None = None
        self.last_msg_time: float | None = now
        self.ping_sent = False
        self.out = OutRep()
        self.inc = InRep()
        self.log = logger.bind(origin="satellite", sq_client=peer, cluster_id=cluster_id)
        self._encoder = OutgoingEncoder(lookup_table, oplog_cache, limits, self.log)

    @property
    def filter(self) -> sync_rules.EffectiveFilter | None:
        """The client's sync rules filter, bound at authentication from the token's claims;
        ``None``: no rules, every row."""
        return self._encoder.filter

    @filter.setter
    def filter(self, value: sync_rules.EffectiveFilter | None) -> None:
        self._encoder.filter = value

    @property
    def oplog_cache(self) -> OplogCache | None:
        return self._encoder.oplog_cache

    @oplog_cache.setter
    def oplog_cache(self, cache: OplogCache | None) -> None:
        self._encoder.oplog_cache = cache

    # -- inputs ---------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> list[Action]:
        """A binary websocket message arrived."""
        if self.closed:
            return []
        try:
            msg = frames.decode(data)
        except frames.FrameError as exc:
            self.log.warning("rejecting client frame: {}", exc)
            return self._fail(frames.INTERNAL, str(exc))
        try:
            actions = self._dispatch(msg)
        except ProtocolViolation as exc:
            self.log.warning("rejecting {}: {}", frames.name_of(msg), exc.reason)
            return self._fail(exc.code, exc.reason)
        except Exception as exc:  # never let one bad message take the process down
            self.log.exception("unexpected failure handling {}", frames.name_of(msg))
            return self._fail(frames.INTERNAL, f"internal failure: {type(exc).__name__}")
        if not any(isinstance(a, Close) for a in actions):
            # Only successfully processed messages count as proof of life.
            self.last_msg_time = now
            self.ping_sent = False
        return actions

    def receive_text(self, text: str | bytes, now: float) -> list[Action]:
        """A text websocket message arrived: the protocol is binary only."""
        if self.closed:
            return []
        self.log.warning("rejecting text frame: the Satellite protocol uses binary frames")
        self.closed = True
        return [
            Send(frames.error(frames.INVALID_REQUEST)),
            Close(CLOSE_UNSUPPORTED_DATA, "binary frames only"),
        ]

    def tick(self, now: float) -> list[Action]:
        """The 5 s liveness timer fired."""
        if self.closed:
            return []
        if not self.authenticated:
            limit = self.limits.auth_timeout
            if not self.claim_pending and now - self.opened_at >= limit:
                self.log.info("client did not authenticate within {:.1f}s, disconnecting", limit)
                self.closed = True
                return [Close(None, "authentication timeout")]
            return []
        if self.ping_sent:
            self.log.info("Client is not responding to ping, disconnecting")
            self.closed = True
            return [Close(None, "ping timeout")]
        if self.last_msg_time is None or now - self.last_msg_time >= self.ping_interval:
            self.ping_sent = True
            return [Send(pb.SatPingReq())]
        return []

    def client_claimed(self, stored_lsn: bytes | None) -> list[Action]:
        """The client id lock is ours; ``stored_lsn`` is the last lsn durably written."""
        if self.closed or not self.claim_pending:
            return []
        self.claim_pending = False
        self.authenticated = True
        self.log.info("authenticated client {} as user {}", self.client_id, self.user_id)
        actions: list[Action] = [Send(pb.SatAuthResp(id=self.cluster_id))]
        actions += self._request_incoming(stored_lsn or b"")
        return actions

    def client_claim_failed(self) -> list[Action]:
        if self.closed or not self.claim_pending:
            return []
        self.claim_pending = False
        self.log.warning(
            "attempted multiple connections from the client with same id: {!r}", self.client_id
        )
        return self._fail(frames.INVALID_REQUEST, "client id already connected")

    def vaxine_transaction(
        self, subscription: int, transaction: Transaction, offset: Any
    ) -> Iterable[Action]:
        """The outgoing stream produced ``(transaction, offset)``. For a big transaction, or
        one the registry cannot describe yet (a :class:`HeldTransaction`), the actions are
        an iterator: take them in order, each as it comes; on :class:`AwaitTables` wait and
        go on with the same iterator."""
        if self.closed or not self.out.active or subscription != self.out.subscription:
            return []  # stale event from a stopped stream
        start = self.out.offset
        if isinstance(start, tuple) and isinstance(offset, tuple | list) and tuple(offset) == start:
            return []  # the resume position itself (a stream starts there): the client has it
        big = len(transaction.changes) > self.limits.streamed_transaction
        if not big:
            # Right after a start the registry is empty until the connectors have described
            # their tables, while a reconnecting client already resumes from its offset. A
            # change that cannot be described must not go out as an empty transaction whose
            # lsn the client then acknowledges (a delete lost for good): the stream waits.
            # (A big transaction is checked as it is read, see OutgoingEncoder.streamed.)
            missing = self._encoder.missing_tables(transaction)
            if missing:
                return HeldTransaction(self._held(subscription, transaction, offset, missing))
        empty, self.out.empty_client = self.out.empty_client, False
        if big:
            self.out.sent_transactions += 1
            changes: Iterable[Change] = transaction.changes
            if self.filter is not None:
                # Lazily: a big transaction (a snapshot) is never whole in memory.
                changes = self._encoder.visible_lazily(transaction, empty)
            return self._encoder.streamed(self.out, transaction, offset, changes)
        try:
            actions = self._encoder.encode(self.out, transaction, offset, empty)
        except Exception as exc:
            self.log.exception("cannot serialise outgoing transaction at {}", offset)
            return self._fail(frames.INTERNAL, f"internal failure: {type(exc).__name__}")
        self.out.sent_transactions += 1
        return actions

    def _held(self, subscription: int, transaction: Transaction, offset: Any,
              missing: list) -> Iterator[Action]:
        out = self.out
        while missing:
            yield hold(out, offset, missing)
            if not out.active:
                return  # stopped while held
            missing = self._encoder.missing_tables(transaction)
        release(out, self.log)
        yield from self.vaxine_transaction(subscription, transaction, offset)

    def tables_awaited(self, now: float) -> list[Action]:
        """The outgoing stream has been waiting for the schema registry (see
        :class:`AwaitTables`) until ``now``: past ``table_wait`` it is reported, once."""
        if not self.closed:
            held_too_long(self.out, now, self.limits, self.log, self.client_id)
        return []

    def held_at(self) -> HeldAt | None:
        """Where the outgoing stream waits for the registry, once reported (for the status)."""
        held = self.out.held
        return held if held is not None and held.reported else None

    def shared_oplog(self, subscription: int, transaction: Transaction,
                     offset: Any) -> SharedOplog | None:
        """The caught-up fast path: when another socket already serialised this very
        transaction and this socket needs nothing else before it (every table announced,
        same table descriptions), the shared encoding to send as it is (counted as sent);
        otherwise ``None`` and the caller goes through :meth:`vaxine_transaction`."""
        if self.closed or not self.out.active or subscription != self.out.subscription:
            return None
        return self._encoder.shared(self.out, transaction, offset)

    def outgoing_failed(self, subscription: int, reason: str) -> list[Action]:
        """The outgoing stream gave up. Tell the client and let it start again (no close)."""
        if self.closed or subscription != self.out.subscription or not self.out.active:
            return []
        self.log.warning("outgoing replication stopped: {}", reason)
        self._replace_out(OutRep(client_lsn=self.out.client_lsn))
        return [StopOutgoing(subscription), Send(frames.error(frames.REPLICATION_FAILED))]

    def transaction_written(self, lsn: bytes) -> list[Action]:
        """A transaction from this client is in Vaxine and its lsn is fsynced: ack it."""
        if self.closed:
            return []
        if self.inc.in_flight and self.inc.in_flight[0] == lsn:
            self.inc.in_flight.pop(0)
        elif lsn in self.inc.in_flight:
            self.inc.in_flight.remove(lsn)
        self.inc.written += 1
        self.log.debug("report lsn: {} for {}", describe(lsn), self.client_id)
        return [Send(frames.ping_resp(lsn))]

    def transaction_rejected(self, lsn: bytes, reason: str) -> list[Action]:
        """The writer refused a transaction as unstorable (not a transient Vaxine failure):
        re-sending it cannot help, so the client gets INVALID_REQUEST and the socket closes."""
        if self.closed:
            return []
        self.log.warning("transaction {} refused: {}", describe(lsn), reason)
        return self._fail(frames.INVALID_REQUEST, f"transaction {describe(lsn)} refused: {reason}")

    def writer_failed(self, reason: str) -> list[Action]:
        """Writing a client transaction failed for good: pause incoming replication. Pending
        transactions are dropped (never acked); :meth:`writer_restarted` resumes."""
        if self.closed:
            return []
        self.log.warning("incoming replication paused: {}", reason)
        actions: list[Action] = []
        if self.inc.status in (InStatus.ACTIVE, InStatus.REQUESTED):
            actions.append(Send(pb.SatInStopReplicationReq()))
        self.inc.status = InStatus.PAUSED
        self.inc.incomplete = None
        self.inc.in_flight.clear()
        return actions

    def writer_restarted(self, stored_lsn: bytes | None) -> list[Action]:
        if self.closed or not self.authenticated:
            return []
        return self._request_incoming(stored_lsn or b"")

    def connection_lost(self) -> list[Action]:
        """The socket is gone; release the outgoing stream."""
        actions: list[Action] = []
        if self.out.active and self.out.subscription is not None:
            actions.append(StopOutgoing(self.out.subscription))
        self._replace_out(OutRep())
        self.closed = True
        return actions

    # -- status for operators -----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "user_id": self.user_id,
            "peer": self.peer,
            "authenticated": self.authenticated,
            "outgoing": "active" if self.out.active else "none",
            "incoming": self.inc.status.value,
            "sent_transactions": self.out.sent_transactions,
            "written_transactions": self.inc.written,
            "unacked_transactions": len(self.inc.in_flight),
            # Counts only, never claim or row values (docs/sync-rules.md).
            "sync_rules": (None if self.filter is None
                           else {**self.filter.summary(), "writes_refused": self.writes_refused}),
        }

    # -- internals ------------------------------------------------------------------------

    def _fail(self, code: int, reason: str) -> list[Action]:
        self.closed = True
        self.claim_pending = False
        actions: list[Action] = []
        if self.out.active and self.out.subscription is not None:
            actions.append(StopOutgoing(self.out.subscription))
            self._replace_out(OutRep(client_lsn=self.out.client_lsn))
        actions += [Send(frames.error(code)), Close(None, reason)]
        return actions

    def _replace_out(self, new: OutRep) -> None:
        """The outgoing stream stops (or restarts): a stream held for the registry is
        released, and iterators still working on the old one stop."""
        release(self.out, self.log, "the stream stopped")
        self.out.active = False
        self.out = new

    def _request_incoming(self, stored_lsn: bytes) -> list[Action]:
        actions: list[Action] = []
        if self.inc.status == InStatus.REQUESTED:
            return actions
        if self.inc.status == InStatus.ACTIVE:
            actions.append(Send(pb.SatInStopReplicationReq()))
        actions.append(Send(frames.server_start_req(stored_lsn)))
        self.inc.status = InStatus.REQUESTED
        return actions

    def _dispatch(self, msg: Message) -> list[Action]:
        if self.claim_pending:
            # The client pipelined something behind its SatAuthReq before we answered.
            raise ProtocolViolation(frames.AUTH_REQUIRED, "message before authentication completed")
        if not self.authenticated:
            if isinstance(msg, pb.SatAuthReq):
                return self._on_auth(msg)
            raise ProtocolViolation(
                frames.AUTH_REQUIRED, f"{frames.name_of(msg)} before authentication"
            )
        handler = _HANDLERS.get(type(msg).DESCRIPTOR.full_name)
        if handler is None:
            raise ProtocolViolation(
                frames.INVALID_REQUEST, f"unexpected {frames.name_of(msg)} after authentication"
            )
        return handler(self, msg)

    def _on_auth(self, msg: pb.SatAuthReq) -> list[Action]:
        if not msg.id or not msg.token:
            raise ProtocolViolation(frames.INVALID_REQUEST, "SatAuthReq needs an id and a token")
        try:
            identity = self._authenticate(msg.token)
        except AuthError as exc:
            if exc.expired:
                self.log.warning("client {!r} presented an expired token", msg.id)
            raise ProtocolViolation(frames.AUTH_REQUIRED, exc.reason) from None
        if isinstance(identity, str):
            user_id, claims = identity, {"user_id": identity}
        else:
            user_id, claims = identity.user_id, identity.claims
        if self._bind_filter is not None:
            try:
                self.filter = self._bind_filter(claims)
            except FilterUnavailable as exc:
                raise ProtocolViolation(frames.INTERNAL, str(exc)) from None
        self.client_id = msg.id
        self.user_id = user_id
        self.claim_pending = True
        self.log = self._encoder.log = self.log.bind(client_id=msg.id, user_id=user_id)
        if self.filter is not None and self.filter.problems:
            # The client sees fewer rows; worth one line, never the claim values.
            self.log.info("sync rules for client {!r}: {}", msg.id,
                          "; ".join(self.filter.problems))
        return [ClaimClient(msg.id, user_id)]

    # client → server, authenticated

    def _on_ping_req(self, msg: pb.SatPingReq) -> list[Action]:
        return [Send(frames.ping_resp(b""))]

    def _on_ping_resp(self, msg: pb.SatPingResp) -> list[Action]:
        if msg.HasField("lsn"):
            self.out.client_lsn = msg.lsn
        return []

    def _on_start_req(self, msg: pb.SatInStartReplicationReq) -> list[Action]:
        offset = start_offset(msg)
        options = set(msg.options)
        if frames.OPT_SYNC_MODE in options and msg.sync_batch_size <= 0:
            raise ProtocolViolation(
                frames.INVALID_REQUEST, "SYNC_MODE needs a positive sync_batch_size"
            )
        actions: list[Action] = []
        if self.out.active and self.out.subscription is not None:
            # A second start while streaming: restart cleanly from the new position.
            actions.append(StopOutgoing(self.out.subscription))
        sub = next(self._subscription_ids)
        self._replace_out(OutRep(
            active=True,
            subscription=sub,
            offset=offset,
            client_lsn=self.out.client_lsn,
            sync_batch_size=msg.sync_batch_size,
            empty_client=offset == 0,
        ))
        self.log.info("outgoing replication starting from {}", offset)
        actions += [StartOutgoing(sub, offset), Send(pb.SatInStartReplicationResp())]
        return actions

    def _on_start_resp(self, msg: pb.SatInStartReplicationResp) -> list[Action]:
        if self.inc.status == InStatus.REQUESTED:
            self.inc.status = InStatus.ACTIVE
            self.log.info("incoming replication active")
        elif self.inc.status == InStatus.PAUSED:
            return [Send(pb.SatInStopReplicationReq())]
        # NONE / ACTIVE: nothing was asked, nothing to do (reference crashed here).
        return []

    def _on_stop_req(self, msg: pb.SatInStopReplicationReq) -> list[Action]:
        if not self.out.active or self.out.subscription is None:
            raise ProtocolViolation(
                frames.INVALID_REQUEST, "stop requested but outgoing replication is not active"
            )
        sub = self.out.subscription
        self._replace_out(OutRep(client_lsn=self.out.client_lsn))
        self.log.info("outgoing replication stopped by the client")
        return [StopOutgoing(sub), Send(pb.SatInStopReplicationResp())]

    def _on_stop_resp(self, msg: pb.SatInStopReplicationResp) -> list[Action]:
        # A stop answer that crosses our newer start request must not cancel that request.
        if self.inc.status != InStatus.REQUESTED:
            self.inc.status = InStatus.PAUSED
            self.inc.incomplete = None
        return []

    def _on_relation(self, msg: pb.SatRelation) -> list[Action]:
        self.inc.relations[msg.relation_id] = ClientRelation(
            schema=msg.schema_name, table=msg.table_name, columns=[c.name for c in msg.columns]
        )
        return []

    def _on_error(self, msg: pb.SatErrorResp) -> list[Action]:
        self.log.info("client reported a failure (code {}), closing", msg.error_type)
        actions: list[Action] = []
        if self.out.active and self.out.subscription is not None:
            actions.append(StopOutgoing(self.out.subscription))
            self._replace_out(OutRep(client_lsn=self.out.client_lsn))
        self.closed = True
        return [*actions, Close(None, "client sent SatErrorResp")]

    def _on_oplog(self, msg: pb.SatOpLog) -> list[Action]:
        if self.inc.status != InStatus.ACTIVE:
            self.log.info(
                "incoming replication is not active: {} ignore transaction", self.inc.status.value
            )
            return []
        actions: list[Action] = []
        for op in msg.ops:
            done = self._apply_op(op)
            if done is not None:
                self._validate_transaction(done)
                self._check_rules(done)
                self.log.debug(
                    "New transaction from satellite {} lsn {}: {}",
                    self.client_id,
                    describe(done.lsn),
                    done.changes,
                )
                self.inc.in_flight.append(done.lsn)
                actions.append(WriteTransaction(done))
        return actions

    def _apply_op(self, op: pb.SatTransOp) -> Transaction | None:
        self.inc.incomplete, done = apply_op(op, self.inc.incomplete, self.inc.relations,
                                             self.client_id)
        return done

    def _validate_transaction(self, tx: Transaction) -> None:
        check_primary_keys(tx, self._lookup_table)

    def _check_rules(self, tx: Transaction) -> None:
        """Refuse a client transaction with any change outside its sync rules, as a whole
        and before anything is queued (docs/sync-rules.md §4); the writer judges again on
        the stored rows (:meth:`rows_to_verify`)."""
        refusal = refused_as_sent(self.filter, tx) if self.filter is not None else None
        if refusal is not None:
            raise ProtocolViolation(frames.INVALID_REQUEST, self._refused(tx, *refusal))

    def _refused(self, tx: Transaction, change: Change, reason: str) -> str:
        self.writes_refused += 1
        metrics.write_refused(".".join(change.relation))
        return f"transaction {describe(tx.lsn)} refused by the sync rules: {reason}"

    def rows_to_verify(self, tx: Transaction) -> list[Change]:
        """The updates and deletes of ``tx`` to filtered tables: the writer looks up their
        stored rows and hands them to :meth:`verify_stored_rows` before writing."""
        return rows_to_verify(self.filter, tx)

    def verify_stored_rows(self, tx: Transaction, changes: list[Change],
                           stored: list[Record | None]) -> list[Action] | None:
        """Judge ``changes`` (from :meth:`rows_to_verify`) again on the stored rows, so a
        client cannot reach another scope's row by sending a forged old row. Returns
        ``None`` when the transaction may be written, else the refusal's actions (error +
        close; none when the socket is closed already: still not written)."""
        if self.filter is None:
            return None
        refusal = refused_as_stored(self.filter, changes, stored)
        if refusal is None:
            return None
        message = self._refused(tx, *refusal)
        self.log.warning("rejecting SatOpLog: {}", message)
        return [] if self.closed else self._fail(frames.INVALID_REQUEST, message)


_HANDLERS: dict[str, Callable[[Session, Any], list[Action]]] = {
    pb.SatPingReq.DESCRIPTOR.full_name: Session._on_ping_req,
    pb.SatPingResp.DESCRIPTOR.full_name: Session._on_ping_resp,
    pb.SatInStartReplicationReq.DESCRIPTOR.full_name: Session._on_start_req,
    pb.SatInStartReplicationResp.DESCRIPTOR.full_name: Session._on_start_resp,
    pb.SatInStopReplicationReq.DESCRIPTOR.full_name: Session._on_stop_req,
    pb.SatInStopReplicationResp.DESCRIPTOR.full_name: Session._on_stop_resp,
    pb.SatRelation.DESCRIPTOR.full_name: Session._on_relation,
    pb.SatOpLog.DESCRIPTOR.full_name: Session._on_oplog,
    pb.SatErrorResp.DESCRIPTOR.full_name: Session._on_error,
}
