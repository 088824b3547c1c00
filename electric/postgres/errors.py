"""Postgres connection failures in an operator's words, for one-line log messages.

libpq and psycopg2 report a vanished server in many ways depending on where the loss is
noticed ("no COPY in progress" when the replication stream's socket closes, "server closed
the connection unexpectedly", "SSL SYSCALL error: EOF detected", "terminating connection due
to administrator command"…). An operator tailing the log wants to know what happened, not
which libpq call noticed it: :func:`reason` maps the known texts to a few plain words and
falls back to the server's own first line.
"""

from __future__ import annotations

# (lower-case fragment of the driver's message, what to say), first match wins.
_KNOWN = (
    ("no copy in progress", "connection closed"),
    ("server closed the connection", "connection closed"),
    ("connection already closed", "connection closed"),
    ("eof detected", "connection closed"),
    ("could not receive data from server", "connection closed"),
    ("could not send data to server", "connection closed"),
    ("terminating connection due to administrator command",
     "server shut down or an administrator ended the connection"),
    ("the database system is shutting down", "server shutting down"),
    ("the database system is starting up", "server starting up"),
    ("the database system is in recovery mode", "server recovering"),
    ("connection refused", "connection refused"),
    ("timeout expired", "connection timed out"),
    ("connection timed out", "connection timed out"),
    ("could not translate host name", "unknown host"),
    ("no route to host", "no route to host"),
)


def reason(exc: BaseException) -> str:
    """A few words saying why a Postgres connection failed or ended."""
    text = (getattr(exc, "pgerror", None) or str(exc) or "").strip()
    lowered = text.lower()
    for fragment, words in _KNOWN:
        if fragment in lowered:
            return words
    first = text.splitlines()[0] if text else ""
    for prefix in ("FATAL:", "ERROR:"):
        first = first.removeprefix(prefix).strip()
    return first or type(exc).__name__


def is_connection_loss(exc: BaseException) -> bool:
    """Whether ``exc`` says the server or the network went away (not a refused request)."""
    return reason(exc) in {words for _, words in _KNOWN}
