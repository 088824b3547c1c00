"""Transactional CRDT store of the embedded Vaxine (one DC, one partition, txn_cert=false).

Interactive transactions get snapshot isolation the way Antidote's Clock-SI does for
Electric's use: a transaction reads the state committed when it started plus its own
writes, turns each operation into a CRDT effect against that view at update time, and at
commit its effects are applied to the *latest* state. Because effects commute, concurrent
transactions merge (column-level LWW, update beats a concurrent delete) instead of
aborting. Commits are serialised in the hub (no yield between choosing the commit order
and appending to the log), so log order = commit order = stream order.

Each committed transaction becomes one log record holding what the replication stream
needs verbatim: the txid term, the commit time, and per touched key the materialised state
after the commit plus the effects, pre-encoded as ETF (and the states once more in marshal
form, which is what recovery reads to rebuild the latest state of every key).
"""

from __future__ import annotations

import bisect
import itertools
import marshal
import os
import struct
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

from electric.vaxine import etf
from electric.vaxine.embedded import crdt
from electric.vaxine.embedded.log import TxnLog
from electric.vaxine.etf import Atom, Pid

DEFAULT_NODE = Atom("vaxine@127.0.0.1")
TX_ID = Atom("tx_id")
_HEADER_TAG = Atom("electric_vaxine_log")
_LOG_FORMAT = 1
_TXN_HEAD = struct.Struct(">QII")  # commit µs, txid length, states length

ObjKey = tuple[bytes, bytes]  # (key, bucket)
_U32 = struct.Struct(">I")


def _etf_bin(value: bytes) -> bytes:
    return b"m" + _U32.pack(len(value)) + value


class UnknownTransaction(LookupError):
    """Descriptor of a transaction that is not (or no longer) running."""


@dataclass
class _Write:
    crdt_type: Atom
    view: Any  # the transaction's own copy (crdt.owned_copy): updated in place
    effects: list = field(default_factory=list)
    encoded: list = field(default_factory=list)  # ETF body of each effect


@dataclass
class Txn:
    descriptor: bytes
    txid_body: bytes
    snapshot: int
    owner: Any = None
    writes: dict[ObjKey, _Write] = field(default_factory=dict)


@dataclass(frozen=True)
class TxnRecord:
    """A committed transaction as read back from the log.

    ``ops_body`` is the ETF of the stream's ``Ops`` list, ready to splice into frames;
    ``states_blob`` repeats the post-commit states in :mod:`marshal` form so that recovery
    needs no Erlang-term decoding (it runs at C speed, ~20× faster).
    """

    commit_us: int
    txid_body: bytes
    states_blob: bytes
    ops_body: bytes


def parse_record(payload: bytes) -> TxnRecord | None:
    """Log payload → transaction record (``None`` for non-transaction records)."""
    if payload[:1] != b"T":
        return None
    commit_us, tlen, slen = _TXN_HEAD.unpack_from(payload, 1)
    at = 1 + _TXN_HEAD.size
    return TxnRecord(commit_us, payload[at : at + tlen], payload[at + tlen : at + tlen + slen],
                     payload[at + tlen + slen :])


_TYPES_BY_NAME = {t.name: t for t in crdt.TYPES}
# Stored versions name their type with a plain str (see crdt.state_key: GC).
_PLAIN_TYPE = {t: t.name for t in crdt.TYPES}


def _states_blob(new_states: list) -> bytes:
    """The post-commit states in marshal form (what recovery reads).

    Stored states are already plain builtins (map keys name their type with a plain str,
    see crdt.state_key), so they are dumped as they are; :func:`_plain` converts any state
    that still holds an Atom (marshal refuses str subclasses).
    """
    try:
        return marshal.dumps([(obj[0], obj[1], _PLAIN_TYPE[ctype], state)
                              for obj, ctype, state in new_states])
    except ValueError:
        return marshal.dumps([(obj[0], obj[1], _PLAIN_TYPE[ctype], _plain(ctype, state))
                              for obj, ctype, state in new_states])


def _plain(ctype: Atom, state: Any) -> Any:
    """State with atoms turned into str, for marshal (which only takes exact builtins)."""
    if ctype == crdt.MAP_RR:
        return {(f, str(t)): _plain(t, v) for (f, t), v in state.items()}
    return state


def _unplain(ctype: Atom, plain: Any) -> Any:
    if ctype == crdt.MAP_RR:
        out = {}
        for key, v in plain.items():
            out[crdt.state_key(key)] = _unplain(_TYPES_BY_NAME[key[1]], v)
        return out
    if ctype == crdt.FLAG_DW:
        return (tuple(plain[0]), tuple(plain[1]))
    return tuple(plain)


class _OpsTerm:
    """Builds the stream's ``Ops`` term of a commit from the values it was encoded from:
    ``[{{Key, Bucket}, Type, State, [Effect]}]``, equal to decoding ``ops_body``."""

    __slots__ = ("states", "effects")

    def __init__(self, states: list, effects: list):
        self.states = states
        self.effects = effects

    def __call__(self) -> list:
        return [(obj, ctype, crdt.to_term(ctype, state), effects)
                for (obj, ctype, state), effects in zip(self.states, self.effects, strict=True)]


class Store:
    def __init__(self, log: TxnLog, node: Atom = DEFAULT_NODE):
        self.log = log
        self.node = node
        self.dc_id: tuple | None = None
        self.creation = int(time.time()) & 0xFFFFFFFF  # changes per start, like a node's
        self.seq = 0
        # log position of every committed transaction (compact: one 8-byte slot each)
        self.txn_offsets = array("q")
        # Per object, the versions running transactions may read, oldest first. A tuple of
        # tuples (immutable all the way down, see crdt.new) so stored states drop out of
        # the cyclic GC's sight instead of making every full collection walk all rows.
        self._versions: dict[ObjKey, tuple[tuple[int, Atom, Any], ...]] = {}
        self._active: dict[bytes, Txn] = {}
        self._last_us = 0
        self._pid_ids = itertools.count(1)
        self.live_streams = 0  # replication streams currently open (see replication.py)

    # ------------------------------------------------------------------ lifecycle

    def recover(self) -> None:
        """Open the log and rebuild the latest state of every key from it."""
        latest: dict[ObjKey, tuple[int, str, Any]] = {}
        for offset, payload in self.log.open():
            if payload[:1] == b"H":
                header = etf.decode(payload[1:])
                self.dc_id = header[2]
                continue
            record = parse_record(payload)
            if record is None:
                continue
            self.seq += 1
            self.txn_offsets.append(offset)
            self._last_us = max(self._last_us, record.commit_us)
            for key, bucket, tname, plain in marshal.loads(record.states_blob):
                latest[(key, bucket)] = (self.seq, tname, plain)
        for obj, (seq, tname, plain) in latest.items():
            self._versions[obj] = ((seq, _PLAIN_TYPE[tname], _unplain(_TYPES_BY_NAME[tname], plain)),)
        if self.dc_id is None:
            mega, rest = divmod(time.time_ns() // 1000, 10**12)
            sec, micro = divmod(rest, 10**6)
            self.dc_id = (self.node, (mega, sec, micro))
            header = (_HEADER_TAG, _LOG_FORMAT, self.dc_id)
            self.log.wait_durable(self.log.append(b"H" + etf.encode(header)))

    def now_us(self) -> int:
        """Wall-clock microseconds, strictly increasing within this store."""
        self._last_us = max(time.time_ns() // 1000, self._last_us + 1)
        return self._last_us

    def clock(self, micros: int) -> bytes:
        """``term_to_binary(#{DcId => Micros})``: a commit / snapshot vector clock."""
        return etf.encode({self.dc_id: micros})

    # ------------------------------------------------------------------ transactions

    def begin(self, owner: Any = None) -> Txn:
        pid = Pid(self.node, next(self._pid_ids) & 0x7FFF, 0, self.creation)
        txid = (TX_ID, self.now_us(), pid)
        descriptor = etf.encode(txid)
        txn = Txn(descriptor, descriptor[1:], self.seq, owner)
        self._active[descriptor] = txn
        return txn

    def txn(self, descriptor: bytes) -> Txn:
        try:
            return self._active[descriptor]
        except KeyError:
            raise UnknownTransaction("no running transaction with this descriptor") from None

    def active_count(self) -> int:
        return len(self._active)

    def _state_at(self, obj: ObjKey, snapshot: int) -> tuple[Atom, Any] | None:
        for seq, ctype, state in reversed(self._versions.get(obj, ())):
            if seq <= snapshot:
                return ctype, state
        return None

    def _view(self, txn: Txn, obj: ObjKey, crdt_type: Atom) -> Any:
        write = txn.writes.get(obj)
        if write is not None:
            found = (write.crdt_type, write.view)
        else:
            found = self._state_at(obj, txn.snapshot)
        if found is None:
            return crdt.new(crdt_type)
        if found[0] != crdt_type:
            raise crdt.CrdtError(f"object is a {found[0]}, not a {crdt_type}")
        return found[1]

    def read(self, txn: Txn, key: bytes, bucket: bytes, crdt_type: Atom) -> Any:
        """The state this transaction sees (its snapshot plus its own writes)."""
        return self._view(txn, (key, bucket), crdt_type)

    def update(self, txn: Txn, key: bytes, bucket: bytes, crdt_type: Atom, op: tuple) -> None:
        """Generate the effect of ``op`` against this transaction's view and apply it there.

        On failure the view may be half updated: callers abort the transaction.
        """
        obj = (key, bucket)
        write = txn.writes.get(obj)
        if write is None:
            # The view is the transaction's own copy from here on, updated in place.
            view = crdt.owned_copy(crdt_type, self._view(txn, obj, crdt_type))
            effect, body = crdt.downstream_encoded(crdt_type, op, view, self.now_us)
            write = txn.writes[obj] = _Write(crdt_type, view)
        else:
            if write.crdt_type != crdt_type:
                raise crdt.CrdtError(f"object is a {write.crdt_type}, not a {crdt_type}")
            effect, body = crdt.downstream_encoded(crdt_type, op, write.view, self.now_us)
        write.view = crdt.update_in_place(crdt_type, effect, write.view)
        write.effects.append(effect)
        write.encoded.append(body)

    def abort(self, txn: Txn) -> None:
        self._active.pop(txn.descriptor, None)

    def abort_owned_by(self, owner: Any) -> None:
        for txn in [t for t in self._active.values() if t.owner is owner]:
            self.abort(txn)

    def commit(self, txn: Txn) -> int:
        """Apply, log and sync the transaction; returns its commit time (µs).

        Blocks the calling greenlet until the record is durable. Empty transactions are
        not logged (Vaxine does not stream them either).
        """
        if self._active.pop(txn.descriptor, None) is None:
            raise UnknownTransaction("transaction is not running")
        commit_us = self.now_us()
        if not txn.writes:
            return commit_us
        # Everything from here to log.append runs without yielding: commit order is fixed.
        entries = []
        new_states = []
        for obj, write in txn.writes.items():
            ctype = write.crdt_type
            versions = self._versions.get(obj)
            if not versions or versions[-1][0] <= txn.snapshot:
                # Nobody committed this object since our snapshot: latest state + our
                # effects is exactly our view (always the case for static updates).
                if versions and versions[-1][1] != ctype:
                    raise crdt.CrdtError(f"object is a {versions[-1][1]}")
                state = write.view
            else:
                _seq, latest_type, state = versions[-1]
                if latest_type != ctype:
                    raise crdt.CrdtError(f"object became a {latest_type} concurrently")
                for effect in write.effects:
                    state = crdt.update(ctype, effect, state)
            new_states.append((obj, ctype, state))
            # {{Key, Bucket}, Type, State, [Effect]} for the stream's Ops list
            effects = b"".join(write.encoded)
            entries.append(b"".join((
                b"h\x04h\x02", _etf_bin(obj[0]), _etf_bin(obj[1]), etf.encode_body(ctype),
                crdt.encode_state(ctype, state),
                b"l" + _U32.pack(len(write.effects)) + effects + b"j" if write.effects else b"j",
            )))
        ops_body = b"l" + _U32.pack(len(entries)) + b"".join(entries) + b"j"
        if self.live_streams:
            # In-process stream readers get the term without decoding these bytes again
            # (with no stream open, nobody is about to read it: keep nothing alive).
            etf.memo.remember(ops_body,
                              _OpsTerm(new_states, [w.effects for w in txn.writes.values()]))
        states_blob = _states_blob(new_states)
        payload = b"".join((b"T", _TXN_HEAD.pack(commit_us, len(txn.txid_body), len(states_blob)),
                            txn.txid_body, states_blob, ops_body))
        offset = self.log.append(payload)
        self.seq += 1
        self.txn_offsets.append(offset)
        oldest = min((t.snapshot for t in self._active.values()), default=self.seq)
        for obj, ctype, state in new_states:
            self._versions[obj] = (self._versions.get(obj, ())
                                   + ((self.seq, _PLAIN_TYPE[ctype], state),))
            self._prune(obj, oldest)
        self.log.wait_durable(offset)
        return commit_us

    def _prune(self, obj: ObjKey, oldest: int) -> None:
        """Keep only versions a running transaction (snapshots >= ``oldest``) may read."""
        versions = self._versions[obj]
        if len(versions) == 1:
            return
        keep_from = 0
        for i, (seq, _t, _s) in enumerate(versions):
            if seq <= oldest:
                keep_from = i
        if keep_from:
            self._versions[obj] = versions[keep_from:]

    # ------------------------------------------------------------------ stream positions

    def first_txn_after(self, commit_position: int) -> int:
        """Log position to start reading from to see every transaction after ``R``."""
        i = bisect.bisect_right(self.txn_offsets, commit_position)
        return self.txn_offsets[i] if i < len(self.txn_offsets) else self.log.end


def data_file(data_dir: str) -> str:
    return os.path.join(data_dir, "vaxine.log")
