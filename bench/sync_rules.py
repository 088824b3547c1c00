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
