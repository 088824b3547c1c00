"""One subscriber connection on 5433, sans-I/O: what to answer, and when to act.

:class:`PublisherSession` owns the connection codec (``wire.BackendConnection``) and the
SCRAM exchange of one connection. :meth:`PublisherSession.receive_data` is fed the bytes
the peer sent and returns a generator of *actions* in the order they must happen. The I/O
shell (``publisher.py``) performs each one and sends the generator the result:

* output actions (answer ``None``): :class:`Send` bytes, :class:`StartTls` (after ``S`` was
  sent: run the handshake, then call :meth:`PublisherSession.tls_established`),
  :class:`Close` (send its message if any, end any streaming, close), :class:`Log` a line,
  :class:`StartStreaming` (take the slot over and start sending the log),
  :class:`StatusUpdate` (the subscriber's confirmed position), :class:`EndStreaming`;
* questions about the outside world, answered with the value: :class:`IsReady` (bool),
  :class:`PublicationTables` (tables or ``None``), :class:`TableByName` / :class:`TableById`
  (a table or ``None``), :class:`XLogPos` (an ``Lsn``).

Every protocol decision lives here (docs/protocols.md §2): the password before anything
else, admission, the reply to each command, one ERROR and skipping to Sync for the extended
query protocol, CopyDone / CopyFail, and one FATAL reply before closing on bad input
(``wire.ProtocolError`` → :func:`replies.fatal_for`). Nothing here reads a clock, a socket or
the registry, so the unit tests drive it with byte vectors and plain data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from electric.changes import Table
from electric.limits import DEFAULT, PostgresLimits
from electric.postgres import commands, copyboth, replies, wire
from electric.postgres.scram import AuthenticationFailed, ScramExchange, ScramVerifier

__all__ = [
    "PublisherSession",
    "Action",
    "Send",
    "StartTls",
    "Close",
    "Log",
    "StartStreaming",
    "StatusUpdate",
    "EndStreaming",
    "IsReady",
    "PublicationTables",
    "TableByName",
    "TableById",
    "XLogPos",
    "system_identifier",
]


# -- output actions (the shell answers None) ----------------------------------------------


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class StartTls:
    """Run the TLS handshake now (``S`` was just sent), then call ``tls_established()``."""


CloseCause = Literal["protocol", "auth", "refused", "terminate"]


@dataclass(frozen=True)
class Close:
    """Send ``message`` (may be empty), end any streaming session, close the connection.

    ``cause`` "auth" counts as a failed authentication; "terminate" is the peer leaving.
    """

    message: bytes
    cause: CloseCause
    level: str = "warning"
    log: str = ""  # the one log line saying why (empty: nothing to log)


@dataclass(frozen=True)
class Log:
    level: str
    message: str
    origin: str = "publisher"


@dataclass(frozen=True)
class StartStreaming:
    """Take slot ``slot`` over, send ``copy_both`` (CopyBothResponse), then start sending the
    log from ``lsn`` (a new session; the previous one of this slot, if any, is ended)."""

    slot: str
    lsn: int
    copy_both: bytes


@dataclass(frozen=True)
class StatusUpdate:
    update: wire.StandbyStatusUpdate


@dataclass(frozen=True)
class EndStreaming:
    """Stop the streaming session of this connection (the connection stays).

    ``how``: why the subscriber stopped, for its log line (``None``: no line)."""

    how: str | None


# -- questions (the shell answers with the value) -----------------------------------------


@dataclass(frozen=True)
class IsReady:
    """Is ``name`` a connector whose subscriber may stream now? → bool"""

    name: str


@dataclass(frozen=True)
class PublicationTables:
    """The tables of publication ``name`` → list of Table, or None when it does not exist.
    ``wait``: give the registry a moment to learn it (a subscription being set up)."""

    name: str
    wait: bool


@dataclass(frozen=True)
class TableByName:
    schema: str
    table: str


@dataclass(frozen=True)
class TableById:
    relid: int


@dataclass(frozen=True)
class XLogPos:
    """The current WAL position to report for ``slot`` in IDENTIFY_SYSTEM → Lsn."""

    slot: str


Action = (
    Send | StartTls | Close | Log | StartStreaming | StatusUpdate | EndStreaming
    | IsReady | PublicationTables | TableByName | TableById | XLogPos
)
Actions = Generator[Action, Any, None]


def system_identifier(system_id: str) -> str:
    """IDENTIFY_SYSTEM's systemid: a stable 19-digit number like a real cluster's."""
    digest = hashlib.sha256(system_id.encode()).digest()
    return str(int.from_bytes(digest[:8], "big") % 9 * 10**18 + 10**18)


class PublisherSession:
    """The protocol state of one connection to the publisher (see the module docstring).

    ``peer`` is only a label for log lines; ``pid``/``secret`` are the BackendKeyData sent.
    """

    def __init__(
        self,
        *,
        verifier: ScramVerifier,
        peer: str = "",
        tls_offered: bool = False,
        server_version: str = replies.DEFAULT_SERVER_VERSION,
        sysid: str = "",
        pid: int = 0,
        secret: int = 0,
        limits: PostgresLimits = DEFAULT.postgres,
    ) -> None:
        self.codec = wire.BackendConnection(
            limits=limits, auth_required=True, tls_offered=tls_offered)
        self.scram: ScramExchange = verifier.exchange()
        self.peer = peer
        self.server_version = server_version
        self.sysid = sysid
        self.pid = pid
        self.secret = secret
        self.startup: wire.StartupMessage | None = None
        self.app_name = ""
        self.database = ""
        # After an extended-query message: everything up to Sync is ignored, as Postgres
        # does after an error in that protocol.
        self.skip_until_sync = False
        self.closed = False

    @property
    def phase(self) -> wire.Phase:
        return self.codec.phase

    def tls_established(self) -> None:
        """The shell finished the TLS handshake asked for by :class:`StartTls`."""
        self.codec.tls_established()

    def receive_data(self, data: bytes) -> Actions:
        """The actions the bytes ``data`` call for, in order (see the module docstring).

        Stops after a :class:`Close`; later calls yield nothing.
        """
        if self.closed:
            return
        try:
            events = self.codec.receive_data(data)
        except wire.ProtocolError as exc:
            yield self._close(replies.fatal_for(exc), "protocol",
                              f"closing connection from {self.peer}: {exc}")
            return
        for event in events:
            yield from self._on_event(event)
            if self.closed:
                return

    # -- events ----------------------------------------------------------------------

    def _close(self, message: bytes, cause: CloseCause, log: str = "",
               level: str = "warning") -> Close:
        self.closed = True
        return Close(message, cause, level, log)

    def _on_event(self, event: wire.Event) -> Actions:
        if isinstance(event, wire.SSLRequest) and self.codec.tls_offered:
            yield Send(replies.encryption_accepted())
            yield StartTls()
        elif isinstance(event, wire.SSLRequest | wire.GSSENCRequest):
            yield Send(replies.encryption_denied())
        elif isinstance(event, wire.StartupMessage):
            self.startup = event
            yield Send(self.scram.start())
        elif isinstance(event, wire.SASLInitialResponse | wire.SASLResponse):
            yield from self._on_password(event)
        elif isinstance(event, wire.Query):
            yield from self._on_query(event.text)
        elif isinstance(event, wire.StandbyStatusUpdate):
            yield StatusUpdate(event)
        elif isinstance(event, wire.HotStandbyFeedback):
            pass  # physical-standby feedback; nothing to do for a logical stream
        elif isinstance(event, wire.CopyDone):
            yield EndStreaming("it ended the stream")
            yield Send(
                copyboth.copy_done()
                + replies.command_complete("COPY 0")
                + replies.command_complete("START_REPLICATION")
                + replies.ready_for_query("I")
            )
        elif isinstance(event, wire.CopyFail):
            yield EndStreaming(None)
            yield Send(
                replies.error_response(
                    "ERROR", "57014", f"COPY from client failed: {event.message}")
                + replies.ready_for_query("I")
            )
        elif isinstance(event, wire.Terminate | wire.CancelRequest):
            # Nothing runs long enough here to be worth cancelling; just close.
            yield self._close(b"", "terminate")
        elif isinstance(event, wire.CopyData):
            yield self._close(
                replies.error_response("FATAL", "08P01", "unexpected CopyData message from client"),
                "protocol", f"closing connection from {self.peer}: unexpected CopyData payload")
        elif isinstance(event, wire.UnsupportedMessage):
            yield from self._on_unsupported_message(event)

    def _on_unsupported_message(self, event: wire.UnsupportedMessage) -> Actions:
        if self.codec.phase is wire.Phase.QUERY:
            # Extended query protocol: one ERROR, then ignore everything up to Sync, which is
            # answered with ReadyForQuery — exactly how Postgres recovers from such an error.
            if event.tag == "S":
                self.skip_until_sync = False
                yield Send(replies.ready_for_query("I"))
            elif event.tag in "PBDECH":
                if not self.skip_until_sync:
                    self.skip_until_sync = True
                    yield Send(replies.error_response(
                        "ERROR", "0A000", "extended query protocol is not supported by Electric"))
            else:
                yield Send(
                    replies.error_response(
                        "ERROR", "0A000", f"{event.name} is not supported by Electric")
                    + replies.ready_for_query("I")
                )
            return
        yield self._close(
            replies.error_response(
                "FATAL", "08P01", f"unexpected {event.name} message while streaming"),
            "protocol",
            f"closing connection from {self.peer}: unexpected {event.name} while streaming",
        )

    # -- startup -------------------------------------------------------------------------

    def _on_password(self, event: wire.SASLInitialResponse | wire.SASLResponse) -> Actions:
        try:
            if isinstance(event, wire.SASLInitialResponse):
                reply = self.scram.on_initial_response(event)
                final = None
            else:
                reply, final = b"", self.scram.on_response(event)
        except AuthenticationFailed as exc:
            user = self.codec.parameters.get("user", "")
            yield self._close(
                replies.error_response(
                    "FATAL", "28P01", f'password authentication failed for user "{user}"'),
                "auth",
                f"password authentication failed for a subscriber from {self.peer}: {exc}",
            )
            return
        if final is None:
            yield Send(reply)
            return
        yield Send(final)
        self.codec.authenticated()  # the codec only yields SASL events after a StartupMessage
        assert self.startup is not None
        yield from self._on_startup(self.startup)

    def _on_startup(self, event: wire.StartupMessage) -> Actions:
        params = event.parameters
        self.app_name = params.get("application_name", "")
        self.database = params.get("database") or params.get("user", "")
        if params.get("replication", "").lower() != "database":
            yield self._close(
                replies.error_response(
                    "FATAL", "08004",
                    "Electric only accepts logical replication connections (replication=database)",
                ),
                "refused", f"refused connection from {self.peer}: not replication=database")
            return
        ready = bool(self.app_name) and (yield IsReady(self.app_name))
        if not ready:
            yield self._close(
                replies.error_response(
                    "FATAL", "08004",
                    f"Electric replication is not ready, missing schema for {self.app_name}"),
                "refused",
                f"subscriber {self.app_name!r} from {self.peer} is not admitted yet: "
                "connector not ready",
                level="info",
            )
            return
        params_out = replies.server_parameters(params, self.server_version)
        yield Send(replies.startup_response(params_out, self.pid, self.secret))

    # -- queries -------------------------------------------------------------------------

    @staticmethod
    def _reply(body: bytes, status: str = "I") -> Send:
        return Send(body + replies.ready_for_query(status))

    def _error(self, code: str, message: str) -> Send:
        return self._reply(replies.error_response("ERROR", code, message))

    def _on_query(self, text: str) -> Actions:
        cmd = commands.parse_command(text)
        origin = self.app_name or "publisher"
        # Debug only: the session start is logged at info in words ("Starting replication
        # to ... from ..."), and the raw text would be a repr full of escaped quotes.
        yield Log("debug", f"query received: {' '.join(text.split())}", origin)
        if isinstance(cmd, commands.EmptyQuery):
            yield self._reply(replies.empty_query_response())
        elif isinstance(cmd, commands.SetConfig):
            yield self._reply(replies.text_result([("set_config", "text")], [[cmd.value]]))
        elif isinstance(cmd, commands.SetParameter):
            yield self._reply(replies.command_complete("SET"))
        elif isinstance(cmd, commands.Show):
            params = {
                k.lower(): v
                for k, v in replies.server_parameters({}, self.server_version).items()
            }
            if cmd.name.lower() in params:
                yield self._reply(
                    replies.text_result([(cmd.name, "text")], [[params[cmd.name.lower()]]]))
            else:
                yield self._error("42704", f'unrecognized configuration parameter "{cmd.name}"')
        elif isinstance(cmd, commands.IdentifySystem):
            xlogpos = yield XLogPos(self.app_name)
            yield self._reply(
                replies.text_result(
                    [("systemid", "text"), ("timeline", "int4"), ("xlogpos", "text"),
                     ("dbname", "text")],
                    [[self.sysid, 1, str(xlogpos), self.database or None]],
                    tag="IDENTIFY_SYSTEM",
                ))
        elif isinstance(cmd, commands.ListPublicationTables):
            yield from self._list_tables(cmd)
        elif isinstance(cmd, commands.ListPublications):
            rows = []
            for p in cmd.publications:
                if (yield PublicationTables(p, wait=False)) is not None:
                    rows.append([p])
            yield self._reply(replies.text_result([("pubname", "name")], rows))
        elif isinstance(cmd, commands.RelationInfo):
            table = yield TableByName(cmd.schema, cmd.table)
            rows = [] if table is None else [[table.oid, table.replica_identity, "r"]]
            yield self._reply(replies.text_result(
                [("oid", "oid"), ("relreplident", "char"), ("relkind", "char")], rows))
        elif isinstance(cmd, commands.RelationColumns):
            table = yield TableById(cmd.relid)
            yield self._reply(relation_columns_result(cmd, table))
        elif isinstance(cmd, commands.TransactionControl):
            yield self._reply(replies.command_complete(cmd.kind),
                              "T" if cmd.kind == "BEGIN" else "I")
        elif isinstance(cmd, commands.CreateReplicationSlot):
            yield self._error(
                "0A000",
                "Electric does not create replication slots or export snapshots; "
                "create subscriptions with connect = false or copy_data = false",
            )
        elif isinstance(cmd, commands.DropReplicationSlot):
            # Subscriptions own no server-side state here beyond offset mappings, which a new
            # subscription of the same name (asking for 0/0) supersedes.
            yield self._reply(replies.command_complete("DROP_REPLICATION_SLOT"))
        elif isinstance(cmd, commands.StartReplication):
            yield from self._start_replication(cmd)
        else:
            yield Log("info", f"unsupported query from {self.peer}: "
                              f"{getattr(cmd, 'reason', cmd)}", origin)
            yield Send(replies.unsupported_response(cmd))

    def _list_tables(self, cmd: commands.ListPublicationTables) -> Actions:
        rows: list[list[Any]] = []
        seen = set()
        for pub in cmd.publications:
            tables = yield PublicationTables(pub, wait=True)
            if tables is None:
                yield self._error("42704", f'publication "{pub}" does not exist')
                return
            for t in tables:
                if t.relation in seen:
                    continue
                seen.add(t.relation)
                row: list[Any] = [t.schema, t.name]
                if cmd.with_attnames:
                    row.append(name_array(t.column_names()))
                rows.append(row)
        columns: list[tuple[str, str]] = [("schemaname", "name"), ("tablename", "name")]
        if cmd.with_attnames:
            columns.append(("attnames", "_name"))
        yield self._reply(replies.text_result(columns, rows))

    def _start_replication(self, cmd: commands.StartReplication) -> Actions:
        slot = cmd.slot
        if not (yield IsReady(slot)):
            yield self._error("42704", f'replication slot "{slot}" does not exist')
            return
        if slot != self.app_name:
            yield Log("warning",
                      f"connection {self.app_name!r} streams slot {slot!r}: names differ", slot)
        yield StartStreaming(slot, cmd.lsn, self.codec.start_copy_both())


def relation_columns_result(cmd: commands.RelationColumns, table: Table | None) -> bytes:
    """The pg_attribute query's result for ``table`` (no rows when it is unknown)."""
    rows: list[list[Any]] = []
    if table is not None:
        keys = set(table.primary_keys)
        for i, c in enumerate(table.columns, start=1):
            key = True if table.replica_identity == "f" else c.name in keys
            row: list[Any] = [c.name, c.type_oid, key]
            rows.append([i, *row] if cmd.with_attnum else row)
    columns: list[tuple[str, str]] = [
        ("attname", "name"),
        ("atttypid", "oid"),
        ("?column?", "bool"),
    ]
    if cmd.with_attnum:
        columns.insert(0, ("attnum", "int2"))
    return replies.text_result(columns, rows)


def name_array(names: Iterator[str] | list[str]) -> str:
    """A ``name[]`` text literal (``{id,"odd name"}``) for the PG15 attnames column."""
    out = []
    for n in names:
        if n == "" or any(ch in n for ch in ' ,{}"\\') or n.upper() == "NULL":
            out.append('"' + n.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            out.append(n)
    return "{" + ",".join(out) + "}"
