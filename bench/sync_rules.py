"""``python -m bench.sync_rules [--clients N] [--filters F] [--changes C] [--rounds R]``.

The pure cost of sync rules (electric/sync_rules), printed as one JSON line: binding each
client's claims at authentication, and filtering one transaction of C changes (inserts, and
updates that move rows between owners) for every client one by one versus once per distinct
effective filter (N clients over F distinct filters: what a fan-out that shares work per
filter pays). Side by side in the same run, so the ratio is what to read, not the times.
"""

from __future__ import annotations

import argparse
import json
import time

from electric.changes import NewRecord, UpdatedRecord
from electric.sync_rules import apply_all, effective_filter, parse

RULES = parse('[claims]\nsub = "string"\nteams = "string[]"\n\n'
              '[tables.items]\nrows = "owner_id = claims.sub OR team_id IN claims.teams"\n')
ITEMS = ("public", "items")


def _transaction(changes: int, filters: int) -> list:
    out = []
    for i in range(changes):
        row = {"id": str(i), "owner_id": f"user{i % filters}", "team_id": f"team{i % 10}",
               "title": "some text of a row"}
        if i % 2:
            moved = {**row, "owner_id": f"user{(i + 1) % filters}"}
            out.append(UpdatedRecord(ITEMS, moved, old_record=row))
        else:
            out.append(NewRecord(ITEMS, row))
    return out


def run(clients: int, filters: int, changes: int, rounds: int) -> dict:
    claims = [{"sub": f"user{i % filters}", "teams": [f"team{i % filters % 10}"]}
              for i in range(clients)]
    started = time.perf_counter()
    bound = [effective_filter(RULES, c) for c in claims]
    bind_s = time.perf_counter() - started
    distinct = list(dict.fromkeys(bound))  # equal filters hash equal: one entry each
    tx = _transaction(changes, filters)
    started = time.perf_counter()
    for _ in range(rounds):
        for flt in bound:
            apply_all(flt, tx)
    per_client_s = (time.perf_counter() - started) / rounds
    started = time.perf_counter()
    for _ in range(rounds):
        shared = {flt: apply_all(flt, tx) for flt in distinct}
        for flt in bound:
            shared[flt]  # noqa: B018 - each client looks its filter's result up
    per_filter_s = (time.perf_counter() - started) / rounds
    return {"clients": clients, "distinct_filters": len(distinct), "changes_per_tx": changes,
            "bind_us_per_client": round(bind_s / clients * 1e6, 2),
            "filter_us_per_tx_each_client": round(per_client_s * 1e6, 1),
            "filter_us_per_tx_per_distinct_filter": round(per_filter_s * 1e6, 1),
            "ratio_each_client_over_shared": round(per_client_s / per_filter_s, 2)}


def fanout_section(run_fanout, clients: int, filters: int, rate: float, seconds: float) -> dict:
    """``make bench`` section: the Satellite fan-out (``bench/satellite_fanout.py``, fake log,
    real sockets) without rules and with ``filters`` distinct filters, alternated twice in
    the same run, and the pure filtering cost beside it."""
    runs: dict[str, list] = {"none": [], "rules": []}
    for _ in range(2):
        runs["none"].append(run_fanout(clients, seconds, rate, mode="fake", filters=0))
        runs["rules"].append(run_fanout(clients, seconds, rate, mode="fake", filters=filters))

    def best(name: str, key: str) -> float | None:
        values = [r[key] for r in runs[name] if r.get(key) is not None]
        return min(values) if values else None

    summary = {
        "clients": clients, "distinct_filters": filters,
        "p50_ms": {n: best(n, "latency_ms_p50") for n in runs},
        "p99_ms": {n: best(n, "latency_ms_p99") for n in runs},
        "kib_per_client": {n: best(n, "kb_per_client_end") for n in runs},
        "encodings_per_tx": {n: round(runs[n][-1]["encodings"] / max(1, rate * seconds), 1)
                             if runs[n][-1].get("encodings") is not None else None
                             for n in runs},
        "all_delivered": all(r["delivered"] == r["expected_deliveries"]
                             for rs in runs.values() for r in rs),
    }
    return {"runs": runs, "summary": summary,
            "pure": run(clients, filters, changes=10, rounds=5)}


def markdown(results: dict) -> list[str]:
    section = results.get("sync_rules")
    if not section:
        return []
    s, pure = section["summary"], section["pure"]
    r = section["runs"]["rules"][-1]
    out = ["", "## Sync rules fan-out (`bench/sync_rules.py`)", "",
           f"{s['clients']} Satellite clients over real sockets, {r['rate_tx_per_s']:g} tx/s "
           f"for {r['duration_s']:g} s from an in-process log; each transaction updates a row "
           f"of one owner. *rules*: {s['distinct_filters']} distinct filters "
           "(`owner_id = claims.sub`), each client receives its rows and key-only deletes of "
           "the others' (docs/sync-rules.md §3); *none*: the same rows without rules. Best of "
           "two alternated runs each.", "",
           "| | p50 ms | p99 ms | KiB per client | encodings per tx |", "|---|---:|---:|---:|---:|"]
    for name in ("none", "rules"):
        out.append(f"| {name} | {s['p50_ms'][name]} | {s['p99_ms'][name]} | "
                   f"{s['kib_per_client'][name]} | {s['encodings_per_tx'][name]} |")
    out += ["", f"Every client got every transaction: {s['all_delivered']}. Pure cost "
            f"(`python -m bench.sync_rules`): binding claims {pure['bind_us_per_client']} µs "
            f"per client; filtering a {pure['changes_per_tx']}-change transaction for each "
            f"client costs {pure['ratio_each_client_over_shared']}× filtering it once per "
            "distinct filter."]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sync_rules")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--filters", type=int, default=100)
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(run(args.clients, args.filters, args.changes, args.rounds)))


if __name__ == "__main__":
    main()
