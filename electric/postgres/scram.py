"""SCRAM-SHA-256 password check for subscribers on the replication port, sans-I/O.

The exchange is Postgres' (RFC 5802/7677 inside SASL messages): the server offers
``SCRAM-SHA-256``, the client answers with its client-first message, gets the salt and
iteration count, proves it knows the password, and receives the server's signature. The
cryptography is the ``scramp`` library's; this module only maps it onto the wire messages
and decides the outcome. md5 and plain-text passwords are never offered, and neither is
``SCRAM-SHA-256-PLUS`` (channel binding), which a client asking for it then refuses itself.

The password is hashed once (:class:`ScramVerifier`); each connection runs one
:class:`ScramExchange`. Every failure — wrong password, no password, another mechanism, a
garbled message — ends in :class:`AuthenticationFailed`, which the publisher answers with the
same ``FATAL 28P01`` whatever the client asked for, so a stranger learns nothing (not even
whether a connector of that name exists: admission is checked only after this succeeds).

The user name is not checked: Postgres subscribers send the operating-system user of their
server, which Electric cannot know. The password alone admits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scramp import ScramException, ScramMechanism

from electric.postgres import replies, wire

MECHANISM = "SCRAM-SHA-256"
ITERATIONS = 4096  # Postgres' default scram_iterations

__all__ = ["AuthenticationFailed", "ScramVerifier", "ScramExchange", "MECHANISM"]


class AuthenticationFailed(Exception):
    """The client did not prove it knows the password. ``str()`` is safe to log."""


@dataclass(frozen=True)
class ScramVerifier:
    """The stored form of the replication password (salt, keys, iterations)."""

    auth_info: tuple = field(repr=False)

    @classmethod
    def from_password(cls, password: str, iterations: int = ITERATIONS) -> ScramVerifier:
        if not password:
            raise ValueError("the replication password must not be empty")
        mechanism = ScramMechanism(MECHANISM)
        return cls(mechanism.make_auth_info(password, iteration_count=iterations))

    def exchange(self) -> ScramExchange:
        return ScramExchange(self)


class ScramExchange:
    """One connection's SCRAM exchange: feed it the SASL events, send back what it returns."""

    def __init__(self, verifier: ScramVerifier) -> None:
        self._server = ScramMechanism(MECHANISM).make_server(lambda _user: verifier.auth_info)
        self._step = "start"

    def start(self) -> bytes:
        """AuthenticationSASL offering SCRAM-SHA-256: send right after the StartupMessage."""
        self._expect("start", "initial")
        return replies.authentication_sasl([MECHANISM])

    def on_initial_response(self, event: wire.SASLInitialResponse) -> bytes:
        """Client-first → AuthenticationSASLContinue (server-first)."""
        self._expect("initial", "final")
        if event.mechanism != MECHANISM or not event.data:
            raise AuthenticationFailed(f"client chose SASL mechanism {event.mechanism!r}")
        try:
            self._server.set_client_first(event.data.decode("utf-8"))
            return replies.authentication_sasl_continue(self._server.get_server_first().encode())
        except (ScramException, UnicodeDecodeError) as exc:
            raise AuthenticationFailed(f"bad SCRAM client-first message ({exc})") from None

    def on_response(self, event: wire.SASLResponse) -> bytes:
        """Client-final → AuthenticationSASLFinal; raises when the proof is wrong."""
        self._expect("final", "done")
        try:
            self._server.set_client_final(event.data.decode("utf-8"))
            return replies.authentication_sasl_final(self._server.get_server_final().encode())
        except (ScramException, UnicodeDecodeError) as exc:
            raise AuthenticationFailed(f"wrong password or bad SCRAM proof ({exc})") from None

    @property
    def done(self) -> bool:
        return self._step == "done"

    def _expect(self, step: str, then: str) -> None:
        if self._step != step:
            raise AuthenticationFailed(f"unexpected SASL message at step {self._step}")
        self._step = then
