"""Erlang external term format (``term_to_binary`` / ``binary_to_term``), sans-I/O.

Vaxine's replication port speaks nothing but ETF, and the Antidote API carries ETF blobs
(transaction descriptors, commit clocks, column values) inside protobuf bytes fields.

Python representation of Erlang terms:

==================  =====================================================
Erlang              Python
==================  =====================================================
atom                :class:`Atom` (``true``/``false``/``nil`` stay atoms)
integer             ``int`` (any size)
float               ``float``
binary              ``bytes``
tuple               ``tuple``
proper list         ``list`` (``[]`` is NIL_EXT); STRING_EXT decodes to ``list[int]``
improper list       :class:`ImproperList`
map                 ``dict`` (keys must be hashable terms)
pid                 :class:`Pid`
reference           :class:`Reference`
==================  =====================================================

The encoder picks the same tags OTP 24/25 ``term_to_binary`` does for these terms (ATOM_EXT
for latin-1 atoms, the smallest integer tag, STRING_EXT for short lists of bytes, NEW_PID_EXT,
NEWER_REFERENCE_EXT), so terms Electric builds are byte-identical to what Erlang would send.
Map entries are written in dict order (OTP sorts keys; callers building multi-key maps that
must be byte-exact should insert keys in Erlang term order).
"""

from electric.vaxine.etf.decode import decode, decode_at, decode_prefix
from electric.vaxine.etf.encode import (
    NIL_BYTES,
    VERSION_BYTE,
    binary,
    encode,
    encode_body,
    integer,
    list_head,
    list_of,
    tuple_head,
)
from electric.vaxine.etf.terms import *  # noqa: F403 (the tags and term types)
from electric.vaxine.etf.terms import __all__ as _terms

__all__ = [*_terms, "NIL_BYTES", "VERSION_BYTE", "binary", "decode", "decode_at",
           "decode_prefix", "encode", "encode_body", "integer", "list_head", "list_of",
           "tuple_head"]
