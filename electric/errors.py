"""What can go wrong, in two kinds: permanent (waiting cannot fix it) and transient.

Every retry loop asks :func:`is_permanent` whether to keep trying in the ordinary way or to
report the failure as a refusal (one ERROR line naming what is held, a status entry; the
work is still never skipped, see docs/architecture.md "Nothing lost, nothing silent").

* **Permanent**: bad data or bad configuration. A row the log cannot map, a term or frame
  that cannot be decoded, a value that does not convert. Retrying the same input gives the
  same answer. Errors of our own say so by deriving from :class:`Permanent`; any other
  ``ValueError`` (raised by a conversion or codec we do not own) is bad data too.
* **Transient**: everything else. A peer that is away, a connection that broke, a timeout,
  a store that is busy. Errors of our own may derive from :class:`Transient` to be explicit.

Each error carries the line the operator sees: :func:`describe` gives it for any exception
(type and first line of its message); ours put the words an operator needs into their
message, so that line is complete without a traceback.
"""

from __future__ import annotations


class ElectricError(Exception):
    """An error of Electric's own; ``str(exc)`` is the line the operator sees."""

    permanent = False

    @property
    def line(self) -> str:
        return describe(self)


class Permanent(ElectricError):
    """Retrying the same thing cannot help: bad input or configuration."""

    permanent = True


class Transient(ElectricError):
    """A peer or resource is unavailable for now: retrying later may succeed."""


def is_permanent(exc: BaseException) -> bool:
    """Whether waiting and trying ``exc``'s work again cannot succeed (see module doc)."""
    if isinstance(exc, ElectricError):
        return exc.permanent
    return isinstance(exc, ValueError)


def describe(exc: BaseException) -> str:
    """One line for the log and the status: the error's type and its message's first line."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
