"""The three Antidote CRDTs Electric relies on, as pure functions over plain Python values.

Operation-based CRDTs in Antidote's style: ``downstream(op, state)`` runs once, at the
writer, against the state that transaction sees and produces an *effect*; ``update(effect,
state)`` applies an effect to any replica state and commutes with concurrent effects. The
effects and states are kept in exactly the shapes Vaxine logs and streams, so they can be
written to the wire with :mod:`electric.vaxine.etf` unchanged:

* LWW register (``antidote_crdt_register_lww``): state and effect ``(ts_us, value)``; the
  larger pair wins (equal timestamps fall back to comparing values, as Erlang term order).
* Disable-wins flag (``antidote_crdt_flag_dw``): state ``(enable_tokens, disable_tokens)``
  (tuples here, lists on the wire),
  effect ``(seen, new_enable, new_disable)``; value = no disable token and some enable token.
  A disable concurrent with an enable survives it: hence "update wins over delete" when
  ``deleted?`` is enabled by deletes and disabled by inserts/updates.
* Recursive-reset map (``antidote_crdt_map_rr``): state ``{(field, type): nested_state}``,
  effect ``([((field, type), (ok, nested_effect))], [((field, type), (ok, reset) | none)])``.
  Removing/resetting a field resets its nested CRDT and drops it when that leaves bottom.

Operations accepted by :func:`downstream`:
``("assign", value)`` (LWW), ``("enable",)``, ``("disable",)``, ``("reset",)`` (flag, map),
``("batch", [((field, type), op), ...], [(field, type), ...])`` (map updates + removes).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from electric.vaxine.crdt_terms import (
    FLAG_DW,
    LWW,
    MAP_RR,
    NONE,
    OK,
    OK_BYTES,
    TYPE_ATOMS,
    CrdtError,
    dict_to_list,
    encode_effect,
    key_bytes,
)
from electric.vaxine.etf import NIL_BYTES, Atom, binary, integer, list_of, tuple_head

TOKEN_BYTES = 20

_stored_keys: dict[tuple, tuple] = {}


def state_key(key: tuple) -> tuple:
    """A map-state key as stored: ``(field, type name as a plain str)``.

    Equal to, and hashing like, ``(field, Atom)``, so lookups work with either; but every
    instance of a Python-level str subclass such as Atom is tracked by CPython's cyclic GC,
    and so is any tuple holding one. With plain str the stored states (kept for every row
    ever written) are immutable atoms all the way down and drop out of the collector's
    sight, instead of making every full collection walk every row.
    """
    stored = _stored_keys.get(key)
    if stored is None:
        stored = (key[0], str.__str__(key[1]))
        if len(_stored_keys) < 100_000:
            _stored_keys[stored] = stored
    return stored


Clock = Callable[[], int]


def new(crdt_type: Atom) -> Any:
    if crdt_type == LWW:
        return (0, b"")
    if crdt_type == FLAG_DW:
        # Tuples, not lists: states live as long as their key, and containers holding only
        # immutable atoms are untracked by CPython's cyclic GC, so millions of stored rows
        # cost the collector nothing (lists would keep every row's state tracked).
        return ((), ())
    if crdt_type == MAP_RR:
        return {}
    raise CrdtError(f"unsupported CRDT type {crdt_type}")


def is_bottom(crdt_type: Atom, state: Any) -> bool:
    # LWW registers have no bottom in Antidote: they are never dropped by a reset.
    if crdt_type == FLAG_DW:
        return not state[0] and not state[1]
    if crdt_type == MAP_RR:
        return not state
    return False


def _token() -> bytes:
    return os.urandom(TOKEN_BYTES)


def downstream(crdt_type: Atom, op: tuple, state: Any, now_us: Clock) -> Any:
    """Effect of ``op`` generated against ``state`` (the writer's view)."""
    kind = op[0]
    if crdt_type == LWW:
        if kind != "assign":
            raise CrdtError(f"LWW register does not support {kind}")
        return (max(now_us(), state[0] + 1), op[1])
    if crdt_type == FLAG_DW:
        seen = list(state[0]) + list(state[1])
        if kind == "enable":
            return (seen, [_token()], [])
        if kind == "disable":
            return (seen, [], [_token()])
        if kind == "reset":
            return (seen, [], [])
        raise CrdtError(f"flag does not support {kind}")
    if crdt_type == MAP_RR:
        if kind == "reset":
            keys = [(f, TYPE_ATOMS[t]) for f, t in sorted(state, key=lambda k: (k[0], str(k[1])))]
            return downstream(MAP_RR, ("batch", [], keys), state, now_us)
        if kind != "batch":
            raise CrdtError(f"map does not support {kind}")
        updates = []
        for (field, ftype), nested_op in op[1]:
            current = state.get((field, ftype))
            if current is None:
                current = new(ftype)
            updates.append(((field, ftype), (OK, downstream(ftype, nested_op, current, now_us))))
        removes = []
        for field, ftype in op[2]:
            current = state.get((field, ftype))
            if current is None:
                current = new(ftype)
            if ftype == LWW:
                removes.append(((field, ftype), NONE))  # no reset for registers
            else:
                removes.append(((field, ftype), (OK, downstream(ftype, ("reset",), current, now_us))))
        return (updates, removes)
    raise CrdtError(f"unsupported CRDT type {crdt_type}")


def _minus(items: list, remove: list) -> list:
    """Erlang ``--``: drop one occurrence per element of ``remove``."""
    out = list(items)
    for r in remove:
        try:
            out.remove(r)
        except ValueError:
            pass
    return out


def update(crdt_type: Atom, effect: Any, state: Any) -> Any:
    """New state after applying ``effect``; never mutates ``state``."""
    if crdt_type == LWW:
        return effect if tuple(effect) > tuple(state) else state
    if crdt_type == FLAG_DW:
        seen, new_enable, new_disable = effect
        return (tuple(_minus(list(state[0]) + list(new_enable), seen)),
                tuple(_minus(list(state[1]) + list(new_disable), seen)))
    if crdt_type == MAP_RR:
        updates, removes = effect
        result = dict(state)
        for (field, ftype), nested in updates:
            current = result.get((field, ftype))
            if current is None:
                current = new(ftype)
            after = update(ftype, nested[1], current)
            # Antidote drops every bottom entry here; untouched entries were never bottom.
            if is_bottom(ftype, after):
                result.pop((field, ftype), None)
            else:
                result[state_key((field, ftype))] = after
        for (field, ftype), nested in removes:
            if nested == NONE or (field, ftype) not in result:
                continue
            after = update(ftype, nested[1], result[(field, ftype)])
            if is_bottom(ftype, after):
                del result[(field, ftype)]
            else:
                result[state_key((field, ftype))] = after
        return result
    raise CrdtError(f"unsupported CRDT type {crdt_type}")


def value(crdt_type: Atom, state: Any) -> Any:
    """What a read returns: bytes, bool, or a sorted list of ((field, type), value)."""
    if crdt_type == LWW:
        return state[1]
    if crdt_type == FLAG_DW:
        return not state[1] and bool(state[0])
    if crdt_type == MAP_RR:
        return [((f, t), value(t, s)) for (f, t), s in sorted(state.items(), key=_field_order)]
    raise CrdtError(f"unsupported CRDT type {crdt_type}")


def _field_order(item):
    (field, ftype), _ = item
    return (field, str(ftype))


def from_term(crdt_type: Atom, term: Any) -> Any:
    if crdt_type == LWW:
        ts, val = term
        return (ts, val)
    if crdt_type == FLAG_DW:
        enable, disable = term
        return (tuple(enable), tuple(disable))
    if crdt_type == MAP_RR:
        state = {}
        for key, nested in dict_to_list(term):
            state[state_key(key)] = from_term(key[1], nested)
        return state
    raise CrdtError(f"unsupported CRDT type {crdt_type}")


# --------------------------------------------------------------------------- commit path
#
# A transaction keeps a private copy of each object it writes (its read-your-writes view).
# These do what downstream → encode_effect → update do, with fewer passes: the effect and
# its bytes come out of one walk, and the private view is updated in place instead of
# being copied per operation. Tests check both routes give identical effects and states.

_PAIR = tuple_head(2)
_OK_HEAD = _PAIR + OK_BYTES


def owned_copy(crdt_type: Atom, state: Any) -> Any:
    """A copy of ``state`` that :func:`update_in_place` may change (maps copied at every
    level; registers and flags are immutable tuples and are shared)."""
    if crdt_type == MAP_RR:
        return {state_key(key): owned_copy(key[1], nested) for key, nested in state.items()}
    return state


def downstream_encoded(crdt_type: Atom, op: tuple, state: Any, now_us: Clock) -> tuple[Any, bytes]:
    """``(effect, encode_effect(crdt_type, effect))`` for ``downstream(crdt_type, op, ...)``."""
    kind = op[0]
    if crdt_type == LWW and kind == "assign":
        ts = now_us()
        if ts <= state[0]:
            ts = state[0] + 1
        value = op[1]
        return (ts, value), _PAIR + integer(ts) + binary(value)
    if crdt_type == MAP_RR and kind == "batch" and not op[2]:
        # Like downstream: every nested effect is generated against the state before the
        # batch, even when a field repeats in it (Electric's ``row`` field does).
        updates = []
        cells = []
        get = state.get
        for key, nested_op in op[1]:
            ftype = key[1]
            current = get(key)
            if current is None:
                current = new(ftype)
            effect, body = downstream_encoded(ftype, nested_op, current, now_us)
            updates.append((key, (OK, effect)))
            cells.append(_PAIR + key_bytes(key[0], ftype) + _OK_HEAD + body)
        if not cells:
            return ([], []), _PAIR + NIL_BYTES + NIL_BYTES
        return (updates, []), _PAIR + list_of(cells) + NIL_BYTES
    effect = downstream(crdt_type, op, state, now_us)
    return effect, encode_effect(crdt_type, effect)


def update_in_place(crdt_type: Atom, effect: Any, state: Any) -> Any:
    """``update(crdt_type, effect, state)`` for a state from :func:`owned_copy` (or built
    by this function): maps are changed in place and returned."""
    if crdt_type != MAP_RR:
        return update(crdt_type, effect, state)
    updates, removes = effect
    for key, nested in updates:
        ftype = key[1]
        current = state.get(key)
        if current is None:
            current = new(ftype)
        after = update_in_place(ftype, nested[1], current)
        if is_bottom(ftype, after):
            state.pop(key, None)
        else:
            state[state_key(key)] = after
    for key, nested in removes:
        if nested == NONE or key not in state:
            continue
        after = update_in_place(key[1], nested[1], state[key])
        if is_bottom(key[1], after):
            del state[key]
        else:
            state[state_key(key)] = after
    return state
