"""The sync rules benchmark at toy size (``make bench`` section ``sync_rules``), so it cannot
rot unnoticed. Not a performance test: it checks every client got every transaction, each
only its own rows, and one encoding per distinct outcome."""

import os

from bench.__main__ import run


def test_sync_rules_benchmark_runs_at_toy_size(tmp_path):
    out = str(tmp_path / "results")
    section = run("smoke", {"sync_rules"}, out, fsync=False)["sync_rules"]
    assert section["summary"]["all_delivered"], section["runs"]
    for r in section["runs"]["rules"]:
        assert r["client_failures"] == [] and r["filters"] == 2, r
        tx = int(r["rate_tx_per_s"] * r["duration_s"])
        # Transaction n belongs to user{n % 2}: each client sees exactly its half.
        assert r["own_rows_per_client_min_max"] == [tx // 2, tx - tx // 2], r
        # Once per transaction per distinct outcome: the owner's update, the others' delete.
        assert r["encodings"] == 2 * tx, r
    for r in section["runs"]["none"]:
        assert r["encodings"] == int(r["rate_tx_per_s"] * r["duration_s"]), r
    with open(os.path.join(out, "results.md")) as fh:
        assert "Sync rules fan-out" in fh.read()
