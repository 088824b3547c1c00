"""What a Satellite session asks its I/O layer to do: the outputs of the sans-I/O core.

Every event method of :class:`~electric.satellite.session.Session` returns these, in the
order they must be carried out (``connection.py`` does so).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import Message

from electric.changes import Transaction
from electric.satellite import frames
from electric.satellite.lsn import StartOffset


@dataclass(frozen=True)
class Send:
    msg: Message
    # Pre-encoded frame when the caller already has it (shared outgoing transactions).
    raw: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def data(self) -> bytes:
        return self.raw if self.raw is not None else frames.encode(self.msg)


@dataclass(frozen=True)
class Close:
    """Close the websocket. ``code=None`` sends a close frame without a status code, which
    is what the reference does after an error reply."""

    code: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class ClaimClient:
    """Take the node-wide lock on ``client_id`` (waiting up to 1 s for a dying previous
    socket), read the client's persisted lsn, then call :meth:`Session.client_claimed` or
    :meth:`Session.client_claim_failed`."""

    client_id: str
    user_id: str


@dataclass(frozen=True)
class StartOutgoing:
    """Open a WAL stream from ``offset`` and feed it to :meth:`Session.vaxine_transaction`
    tagged with ``subscription``."""

    subscription: int
    offset: StartOffset


@dataclass(frozen=True)
class StopOutgoing:
    subscription: int


@dataclass(frozen=True)
class WriteTransaction:
    """Write ``transaction`` to Vaxine (nothing to write if it has no changes), fsync
    ``transaction.lsn`` as this client's offset, then call :meth:`Session.transaction_written`.
    Transactions must be written in the order they are emitted."""

    transaction: Transaction


@dataclass(frozen=True)
class AwaitTables:
    """The outgoing transaction changes tables the schema registry does not know (yet), so
    it cannot be described to the client; nothing past this point has been sent. Wait (a
    back-off), report the time with :meth:`Session.tables_awaited`, then go on taking the
    same actions: they resume where they stopped, once the tables are known. Nothing is
    skipped (a skipped change whose lsn the client then acknowledged would be lost)."""

    subscription: int
    tables: tuple[str, ...]


Action = (Send | Close | ClaimClient | StartOutgoing | StopOutgoing | WriteTransaction
          | AwaitTables)
