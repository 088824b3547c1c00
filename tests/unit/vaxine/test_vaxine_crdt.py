import itertools

from electric.vaxine import crdt_terms, etf
from electric.vaxine.crdt_terms import FLAG_DW, LWW, MAP_RR
from electric.vaxine.embedded import crdt
from tests.fixtures.vaxine.golden import frames, json_to_term

clock = itertools.count(1_000_000).__next__


def apply(t, op, state):
    return crdt.update(t, crdt.downstream(t, op, state, clock), state)


def row_op(**cols):
    return ("batch", [((b"row", MAP_RR), ("batch", [((c.encode(), LWW), ("assign", v.encode()))], []))
                      for c, v in cols.items()], [])


def test_lww_later_write_wins_and_ts_monotone():
    s0 = crdt.new(LWW)
    e1 = crdt.downstream(LWW, ("assign", b"a"), s0, lambda: 5)
    s1 = crdt.update(LWW, e1, s0)
    e2 = crdt.downstream(LWW, ("assign", b"b"), s1, lambda: 1)  # clock went backwards
    assert e2[0] == e1[0] + 1
    assert crdt.value(LWW, crdt.update(LWW, e2, s1)) == b"b"
    # applying in either order converges
    assert crdt.update(LWW, e1, crdt.update(LWW, e2, s0)) == crdt.update(LWW, e2, s1)


def test_flag_dw_disable_wins_over_concurrent_enable():
    base = apply(FLAG_DW, ("disable",), crdt.new(FLAG_DW))
    enable = crdt.downstream(FLAG_DW, ("enable",), base, clock)    # delete
    disable = crdt.downstream(FLAG_DW, ("disable",), base, clock)  # concurrent update
    for first, second in [(enable, disable), (disable, enable)]:
        state = crdt.update(FLAG_DW, second, crdt.update(FLAG_DW, first, base))
        assert crdt.value(FLAG_DW, state) is False
    # sequential: the later op wins
    deleted = crdt.update(FLAG_DW, enable, base)
    assert crdt.value(FLAG_DW, deleted) is True
    assert crdt.value(FLAG_DW, apply(FLAG_DW, ("disable",), deleted)) is False
    assert deleted[1] == ()


def test_map_concurrent_column_writes_merge_and_update_beats_delete():
    base = apply(MAP_RR, ("batch", [((b"deleted?", FLAG_DW), ("disable",))], []), {})
    base = apply(MAP_RR, row_op(a="1", b="1"), base)
    a = crdt.downstream(MAP_RR, row_op(a="A"), base, clock)
    b = crdt.downstream(MAP_RR, row_op(b="B"), base, clock)
    merged = crdt.update(MAP_RR, b, crdt.update(MAP_RR, a, base))
    value = dict(crdt.value(MAP_RR, merged))
    assert dict(value[(b"row", MAP_RR)]) == {(b"a", LWW): b"A", (b"b", LWW): b"B"}

    upd = crdt.downstream(MAP_RR, ("batch", [((b"deleted?", FLAG_DW), ("disable",))], []),
                          base, clock)
    dele = crdt.downstream(MAP_RR, ("batch", [((b"deleted?", FLAG_DW), ("enable",))], []),
                           base, clock)
    for x, y in [(upd, dele), (dele, upd)]:
        state = crdt.update(MAP_RR, y, crdt.update(MAP_RR, x, base))
        assert dict(crdt.value(MAP_RR, state))[(b"deleted?", FLAG_DW)] is False


def test_map_remove_and_reset():
    s = apply(MAP_RR, ("batch", [((b"f", FLAG_DW), ("enable",)), ((b"r", LWW), ("assign", b"x"))],
                       []), {})
    s2 = apply(MAP_RR, ("batch", [], [(b"f", FLAG_DW), (b"r", LWW)]), s)
    assert list(s2) == [(b"r", LWW)]  # flags reset to bottom and vanish; registers cannot
    assert apply(MAP_RR, ("reset",), s) == {(b"r", LWW): s[(b"r", LWW)]}


def test_state_terms_roundtrip_through_etf():
    s = apply(MAP_RR, ("batch", [((b"deleted?", FLAG_DW), ("disable",)),
                                 ((b"id", LWW), ("assign", b"x"))], []), {})
    s = apply(MAP_RR, row_op(a="1", b="2"), s)
    term = crdt_terms.to_term(MAP_RR, s)
    assert crdt.from_term(MAP_RR, etf.decode(etf.encode(term))) == s


def test_dict_to_list_reads_real_vaxine_states():
    wal = [f for f in frames("s7_replication", 8088) if f["message"] == "vx_wal_txn"][0]
    term = json_to_term(wal["decoded"])
    ops = term[4]
    row = [op for op in ops if op[0][0].startswith(b"rows:")][0]
    state = crdt.from_term(MAP_RR, row[2])
    assert (b"id", LWW) in state
    cols = state[(b"row", MAP_RR)]
    assert etf.decode(cols[(b"content", LWW)][1]) == b"hello world"
    # the real effects apply cleanly onto an empty map and give the same values
    rebuilt = {}
    for effect in row[3]:
        rebuilt = crdt.update(MAP_RR, effect, rebuilt)
    assert crdt.value(MAP_RR, rebuilt) == crdt.value(MAP_RR, state)


def test_fast_encoders_match_generic_encoding():
    s = apply(MAP_RR, ("batch", [((b"deleted?", FLAG_DW), ("disable",)),
                                 ((b"id", LWW), ("assign", b"x" * 300))], []), {})
    s = apply(MAP_RR, row_op(a="1", b="2", c="3"), s)
    effect = crdt.downstream(MAP_RR, ("batch", [((b"deleted?", FLAG_DW), ("enable",)),
                                                ((b"gone", FLAG_DW), ("disable",))],
                                      [(b"gone", FLAG_DW), (b"id", LWW)]), s, clock)
    for ctype, state in [(MAP_RR, s), (MAP_RR, {}), (LWW, (2**40, b"v")), (LWW, (3, b"")),
                         (FLAG_DW, ([b"a" * 20], [])), (FLAG_DW, ([], []))]:
        assert crdt_terms.encode_state(ctype, state) == etf.encode_body(crdt_terms.to_term(ctype, state))
    for ctype, eff in [(MAP_RR, effect), (MAP_RR, ([], [])), (LWW, (2**40, b"v")),
                       (FLAG_DW, ([b"t" * 20], [], [b"u" * 20]))]:
        assert crdt_terms.encode_effect(ctype, eff) == etf.encode_body(eff)


def _random_op(rng, ctype, depth=0):
    if ctype == LWW:
        return ("assign", rng.choice([b"", b"v", b"x" * 200]))
    if ctype == FLAG_DW:
        return (rng.choice(["enable", "disable", "reset"]),)
    if rng.random() < 0.1:
        return ("reset",)
    fields = [b"a", b"b", b"row"]
    updates = []
    for _ in range(rng.randint(0, 4)):  # fields may repeat within one batch
        name = rng.choice(fields)
        ftype = rng.choice([LWW, FLAG_DW] + ([MAP_RR] if depth < 2 else []))
        updates.append(((name, ftype), _random_op(rng, ftype, depth + 1)))
    removes = [(rng.choice(fields), rng.choice([LWW, FLAG_DW, MAP_RR]))
               for _ in range(rng.randint(0, 2) if rng.random() < 0.3 else 0)]
    return ("batch", updates, removes)


def test_fused_commit_path_equals_downstream_update_encode(monkeypatch):
    """downstream_encoded + update_in_place (the store's path) == downstream,
    encode_effect, update (the reference definitions), op after op, on random ops."""
    import random

    rng = random.Random(7)
    for _ in range(300):
        ctype = rng.choice([MAP_RR, MAP_RR, LWW, FLAG_DW])
        ops = [_random_op(rng, ctype) for _ in range(rng.randint(1, 6))]
        results = []
        for fused in (False, True):
            tokens = itertools.count()
            monkeypatch.setattr(crdt, "_token", lambda t=tokens: b"%020d" % next(t))
            ticks = itertools.count(1_000_000).__next__
            state = crdt.new(ctype)
            shared = crdt.update(ctype, crdt.downstream(ctype, ops[0], state, ticks), state)
            frozen = etf.encode(crdt_terms.to_term(ctype, shared))
            out = []
            state = crdt.owned_copy(ctype, shared) if fused else shared
            for op in ops:
                if fused:
                    effect, body = crdt.downstream_encoded(ctype, op, state, ticks)
                    state = crdt.update_in_place(ctype, effect, state)
                else:
                    effect = crdt.downstream(ctype, op, state, ticks)
                    body = crdt_terms.encode_effect(ctype, effect)
                    state = crdt.update(ctype, effect, state)
                out.append((effect, body, etf.encode(crdt_terms.to_term(ctype, state))))
            # the state the owned copy was taken from is untouched
            assert etf.encode(crdt_terms.to_term(ctype, shared)) == frozen
            results.append(out)
        assert results[0] == results[1]
