"""End to end with sync rules (docs/sync-rules.md): real Postgres, Electric as a process and
two real npm electric-sql@0.1.3 clients with different tokens.

* each client receives only its own rows (another owner's row reaches it at most as a delete
  of its key, never with its values) and no invisible table;
* a row moving between owners in Postgres disappears from one client and appears at the other;
* a write outside the client's rules is refused with the protocol's error, is not in Postgres,
  is counted in /metrics, while an in-scope write goes through; so is an update of another
  owner's row sent with a forged old row (judged on the stored row);
* a client reconnecting resumes from its lsn with the same filter.
"""

from __future__ import annotations

import urllib.request
import uuid

import pytest

from electric.devenv import DEV_SCHEMA_SQL
from electric.satellite.auth import InsecureAuth
from tests.interop.node_peer import NodePeer
from tests.support.postgres import drop_database, query, wait_rows
from tests.support.waiting import wait_until

TODOS_SQL = """
CREATE TABLE IF NOT EXISTS public.todos (
    id TEXT PRIMARY KEY, owner_id TEXT NOT NULL, title TEXT NOT NULL);
ALTER TABLE public.todos REPLICA IDENTITY FULL;
"""
RULES = """
[claims]
sub = "string"

[tables.todos]
rows = "owner_id = claims.sub"
"""
TODOS = {"id": 0, "schema": "public", "table": "todos", "tableType": 0,
         "columns": [{"name": c, "type": "TEXT"} for c in ("id", "owner_id", "title")]}


def token(user: str) -> str:
    return InsecureAuth().mint(user, claims={"sub": user})[0]


@pytest.fixture
def electric_with_rules(pg_factory, electric_factory, tmp_path):
    pg = pg_factory("rules_e2e")
    db = f"rules_{uuid.uuid4().hex[:8]}"
    pg.create_database(db)
    pg.psql(DEV_SCHEMA_SQL + TODOS_SQL, database=db)
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    electric = electric_factory(env={"CONNECTORS": f"pg_a={pg.url(db)}",
                                     "POSTGRES_SLOT": f"slot_{db}",
                                     "SYNC_RULES_FILE": str(rules)})
    electric.wait_for(lambda: all(electric.get_json("/api/status")["connectors"].values()),
                      timeout=60, what="the connector ready")
    yield electric, pg, db
    drop_database(pg, db)


def connect(electric, user: str, device: str, lsn_hex: str = b"0".hex()) -> NodePeer:
    peer = NodePeer()
    peer.call("connect", address="127.0.0.1", port=int(electric.env["WEBSOCKET_PORT"]),
              appId=device, token=token(user))
    peer.call("auth", timeout=40)  # may wait for the start-up check of the rules
    peer.call("start", lsn_hex=lsn_hex)
    return peer


def todo_changes(peer: NodePeer) -> list[dict]:
    return [c for e in peer.history if e.get("event") == "tx" for c in e["changes"]]


def wait_change(peer: NodePeer, id: str, kind: str, owner: str | None = None) -> dict:
    """The first change of this kind to row ``id`` the client received (polls its history:
    one transaction may carry several awaited changes)."""
    def found():
        assert peer.proc.poll() is None, f"node peer died: {peer.stderr()}"
        return next((c for c in todo_changes(peer) if _is(c, id, kind, owner)), None)
    return wait_until(found, timeout=30, what=f"{kind} of {id} at the client")


def _is(change: dict, id: str, kind: str, owner: str | None) -> bool:
    row = change["oldRecord"] if change["type"] == "DELETE" else change["record"]
    return (change["table"] == "todos" and change["type"] == kind and row["id"] == id
            and (owner is None or row["owner_id"] == owner))


def assert_only_own_rows(peer: NodePeer, user: str, once_mine: set[str]) -> None:
    """Every change a client received is to todos, of its own rows; a delete only of a row
    it had (``once_mine``: a row that left its scope goes as a bare key delete), never of
    a row of others it never saw."""
    for change in todo_changes(peer):
        assert change["table"] == "todos", change
        if change["type"] == "DELETE":
            old = change["oldRecord"]
            assert old["id"] in once_mine, change
            assert old["owner_id"] in (user, ""), change
            if old["owner_id"] == "":
                assert old["title"] == "", change  # left its scope: its key only
        else:
            assert change["record"]["owner_id"] == user, change


@pytest.mark.slow
def test_two_clients_with_different_tokens(electric_with_rules):
    electric, pg, db = electric_with_rules
    ids = {name: f"{name}-{uuid.uuid4().hex[:6]}" for name in ("a1", "b1", "moving", "a2", "b2")}
    query(pg, db, "INSERT INTO todos VALUES (%s, 'alice', 'alice one'), (%s, 'bob', 'bob one'),"
          " (%s, 'alice', 'moves')", (ids["a1"], ids["b1"], ids["moving"]))
    query(pg, db, "INSERT INTO entries (id, content) VALUES (%s, 'invisible')",
          (str(uuid.uuid4()),))

    alice = connect(electric, "alice", "alice-device")
    bob = connect(electric, "bob", "bob-device")
    peers = [alice, bob]
    try:
        wait_change(alice, ids["a1"], "UPDATE", "alice")
        wait_change(alice, ids["moving"], "UPDATE", "alice")
        wait_change(bob, ids["b1"], "UPDATE", "bob")

        # A row moving from alice to bob: gone at alice, there at bob.
        query(pg, db, "UPDATE todos SET owner_id = 'bob' WHERE id = %s", (ids["moving"],))
        wait_change(alice, ids["moving"], "DELETE")
        wait_change(bob, ids["moving"], "INSERT", "bob")  # entered its scope

        assert electric.get_json("/api/status")["detail"]["sync_rules"]["problem"] is None
        status = electric.get_json("/api/status")["detail"]["satellite"]
        scopes = [c["sync_rules"] for c in status["clients"] if c["authenticated"]]
        assert len(scopes) == 2 and all(s["visible_tables"] == 1 for s in scopes), status
        assert status["distinct_filters"] == 2

        # Alice writes her own row (accepted), then a row of bob's (refused as a whole).
        own = {"id": f"own-{uuid.uuid4().hex[:6]}", "owner_id": "alice", "title": "mine"}
        alice.call("tx", lsn="1", relation=TODOS, changes=[{"type": "INSERT", "record": own}])
        alice.wait(lambda e: e["event"] == "ack" and e["lsn"] == "1", timeout=15)
        wait_rows(pg, db, "SELECT owner_id FROM todos WHERE id = %s", [("alice",)],
                  args=(own["id"],))
        forged = {"id": f"forged-{uuid.uuid4().hex[:6]}", "owner_id": "bob", "title": "x"}
        alice.call("tx", lsn="2", relation=TODOS, changes=[{"type": "INSERT", "record": forged}])
        alice.wait(lambda e: e["event"] == "error", timeout=15, what="the refusal")
        alice.wait(lambda e: e["event"] == "closed", timeout=15, what="the close")
        log = electric.log(tail=100000)
        assert "refused by the sync rules" in log
        with urllib.request.urlopen(electric.status_url + "/metrics", timeout=10) as reply:
            metrics = reply.read().decode()
        assert 'electric_satellite_writes_refused_total{table="public.todos"} 1.0' in metrics
        # Nothing of the refused transaction was written (bob's next write is a barrier: the
        # refusal happens before anything is queued, so it would be there by now).
        barrier = {"id": f"bob-{uuid.uuid4().hex[:6]}", "owner_id": "bob", "title": "b"}
        bob.call("tx", lsn="1", relation=TODOS, changes=[{"type": "INSERT", "record": barrier}])
        bob.wait(lambda e: e["event"] == "ack" and e["lsn"] == "1", timeout=15)
        wait_rows(pg, db, "SELECT count(*) FROM todos WHERE id = %s", [(1,)],
                  args=(barrier["id"],))
        assert query(pg, db, "SELECT count(*) FROM todos WHERE id = %s",
                     (forged["id"],)) == [(0,)]

        # Alice reconnects from the last lsn she received: same filter.
        last = [e for e in alice.history if e.get("event") == "tx"][-1]["lsn_hex"]
        alice.close()
        alice = connect(electric, "alice", "alice-device", lsn_hex=last)
        peers[0] = alice
        query(pg, db, "INSERT INTO todos VALUES (%s, 'bob', 'bob two'), (%s, 'alice', 'two')",
              (ids["b2"], ids["a2"]))
        wait_change(alice, ids["a2"], "UPDATE", "alice")
        wait_change(bob, ids["b2"], "UPDATE", "bob")
        assert not any(_is(c, ids["a1"], "UPDATE", "alice") for c in todo_changes(alice)), \
            "resumed from its lsn, not from the start"
        # bob's new row came in the same transaction as a2: alice got nothing of it, not
        # even its key.
        assert not any(ids["b2"] in str(c) for c in todo_changes(alice)), todo_changes(alice)
        assert_only_own_rows(alice, "alice", {ids["a1"], ids["moving"], ids["a2"], own["id"]})
        assert_only_own_rows(bob, "bob", {ids["b1"], ids["b2"], ids["moving"], barrier["id"]})

        # Alice forges the old row of bob's b1 (claims it is hers): judged on the stored row,
        # refused, b1 unchanged.
        stolen = {"id": ids["b1"], "owner_id": "alice", "title": "stolen"}
        alice.call("tx", lsn="3", relation=TODOS,
                   changes=[{"type": "UPDATE", "record": stolen,
                             "oldRecord": {**stolen, "title": "bob one"}}])
        alice.wait(lambda e: e["event"] == "error", timeout=15, what="the second refusal")
        barrier = {"id": f"bob-{uuid.uuid4().hex[:6]}", "owner_id": "bob", "title": "b"}
        bob.call("tx", lsn="2", relation=TODOS, changes=[{"type": "INSERT", "record": barrier}])
        bob.wait(lambda e: e["event"] == "ack" and e["lsn"] == "2", timeout=15)
        wait_rows(pg, db, "SELECT count(*) FROM todos WHERE id = %s", [(1,)],
                  args=(barrier["id"],))
        assert query(pg, db, "SELECT owner_id, title FROM todos WHERE id = %s",
                     (ids["b1"],)) == [("bob", "bob one")]
        assert "(as stored)" in electric.log(tail=100000)
        assert bob.errors() == []
    finally:
        for peer in peers:
            peer.close()
    assert "[ERROR]" not in electric.log(tail=100000)
