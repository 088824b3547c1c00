"""The fan-out sections of ``results.md``: Satellite at scale and Postgres fan-out."""

from __future__ import annotations

TARGETS = {
    "ceiling_ratio": 0.7,  # Electric's delivered frames/s ≥ 0.7 × raw gevent-websocket
    "sustained_p99_ms": 100.0,  # 1,000 clients × 100 tx/s: p99 ≤ 100 ms, nobody dropped
    "idle_kib": 30.0,  # per idle authenticated, streaming client
    "pg_fanout_ratio": 0.5,  # 10 subscribers: Electric ≥ 0.5 × native rows/s
    "pg_us_per_row": 3.0,  # per subscriber per row
}


def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        v = round(v, 2)
    return f"{v:,}{unit}" if isinstance(v, int) else f"{v}{unit}"


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("met" if ok else "**not met**")


def targets(results: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    fs = results.get("fanout_scale")
    if fs:
        raw, el = fs["raw"], fs["electric_saturated"]
        ratio = fs.get("ceiling_ratio")
        rows.append((f"Satellite delivered frames/s ≥ 0.7 × raw gevent-websocket "
                     f"({el['clients']:,} clients)",
                     f"{_fmt(el['frames_per_s'])}/s = {_fmt(ratio, '×')}",
                     f"raw {_fmt(raw['frames_per_s'])}/s",
                     _verdict(None if ratio is None else ratio >= TARGETS["ceiling_ratio"])))
        su = fs["sustained"]
        ok = (su["latency_ms_p99"] is not None and su["clients_short"] == 0
              and su["latency_ms_p99"] <= TARGETS["sustained_p99_ms"])
        rs = fs.get("raw_sustained") or {}
        rows.append((f"{su['clients']:,} clients × {su['rate_tx_per_s']:g} tx/s for "
                     f"{su['duration_s']:g} s: p99 ≤ 100 ms, nobody dropped",
                     f"p99 {_fmt(su['latency_ms_p99'], ' ms')}, {su['clients_short']} short",
                     f"raw server, same load: p99 {_fmt(rs.get('latency_ms_p99'), ' ms')}",
                     _verdict(ok)))
        idle = fs["idle"]
        rows.append((f"{idle['clients']:,} idle Satellite clients ≤ 30 KiB each",
                     _fmt(idle["kib_per_idle_client"], " KiB"),
                     f"raw socket {_fmt(fs.get('raw_idle_kib_per_client'), ' KiB')}",
                     _verdict(idle["clients_streaming"] == idle["clients"]
                              and idle["kib_per_idle_client"] <= TARGETS["idle_kib"])))
    pf = results.get("pg_fanout")
    if pf:
        n, e = pf["native"], pf["electric"]
        rows.append((f"{pf['subscribers']} Postgres subscribers: Electric ≥ 0.5 × native rows/s",
                     f"{_fmt(e['rows_per_s'])} rows/s = {_fmt(pf['ratio'], '×')}",
                     f"{_fmt(n['rows_per_s'])} rows/s",
                     _verdict(None if pf["ratio"] is None
                              else pf["ratio"] >= TARGETS["pg_fanout_ratio"])))
        enc = pf["encode"]
        marginal = e.get("marginal_cpu_us_per_row_per_subscriber")
        rows.append(("Electric's CPU per further subscriber per row ≤ 3 µs (end to end)",
                     _fmt(marginal, " µs"), "—",
                     _verdict(None if marginal is None else marginal <= TARGETS["pg_us_per_row"])))
        rows.append(("publisher encode + framing per subscriber per row ≤ 3 µs",
                     _fmt(enc["shared_us_per_row_per_subscriber"], " µs"),
                     f"each session encoding alone: "
                     f"{_fmt(enc['per_session_us_per_row_per_subscriber'], ' µs')}",
                     _verdict(enc["shared_us_per_row_per_subscriber"]
                              <= TARGETS["pg_us_per_row"])))
    return rows


def markdown(results: dict) -> list[str]:
    out: list[str] = []
    fs = results.get("fanout_scale")
    if fs:
        out += ["", "## Satellite fan-out at scale (`bench/fanout_scale.py`)", "",
                "Server alone in its process; clients in separate load-generator processes "
                "(every frame read, latency on every 10th client). *raw* is gevent-websocket "
                "broadcasting one pre-encoded SatOpLog per transaction with `ws.send`; "
                "*Electric* is `SatelliteServer` on the embedded store, the producer writing "
                "store transactions. Saturated runs offer more than either can deliver; the "
                "ratio of delivered frames/s is the result.", "",
                "| run | clients | offered tx/s | s | frames/s | per client min–max / expected "
                "| p50 ms | p99 ms | KiB per connected client |",
                "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
        for name, key in (("raw, saturated", "raw"), ("Electric, saturated",
                                                      "electric_saturated"),
                          ("Electric, sustained", "sustained"),
                          ("raw, same offered load", "raw_sustained")):
            r = fs.get(key)
            if r is None:
                continue
            lo, hi = r["per_client_min_max"]
            out.append(f"| {name} | {r['clients']:,} | {r['rate_tx_per_s']:g} | "
                       f"{r['duration_s']:g} | {_fmt(r['frames_per_s'])} | {lo}–{hi} / "
                       f"{r['expected_per_client']} | {_fmt(r['latency_ms_p50'])} | "
                       f"{_fmt(r['latency_ms_p99'])} | {_fmt(r['kib_per_idle_client'])} |")
        idle = fs["idle"]
        out += ["", f"Idle: {idle['clients_streaming']:,} of {idle['clients']:,} clients "
                f"authenticated and streaming, server RSS {idle['server_rss_mb_before']} → "
                f"{idle['server_rss_mb_connected']} MB = {idle['kib_per_idle_client']} KiB per "
                "client."]
    pf = results.get("pg_fanout")
    if pf:
        n, e, enc = pf["native"], pf["electric"], pf["encode"]
        out += ["", f"## Postgres fan-out to {pf['subscribers']} subscribers "
                "(`bench/pg_fanout.py`)", "",
                f"{pf['rows']:,} rows inserted on the source in {pf['batch']}-row transactions; "
                "timed until every subscriber has all of them. Native: one subscription per "
                "subscriber to the source. Electric: source and subscribers are connectors "
                "(every transaction also goes back to the source).", "",
                "| pipeline | rows/s (per subscriber) | s | source commit s |",
                "|---|---:|---:|---:|",
                f"| native | {_fmt(n['rows_per_s'])} | {n['seconds']} | "
                f"{n['source_commit_seconds']} |",
                f"| Electric | {_fmt(e['rows_per_s'])} | {e['seconds']} | "
                f"{e['source_commit_seconds']} |", "",
                f"Electric's CPU for the same rows with only one subscriber left streaming: "
                f"{(pf.get('electric_one_subscriber') or {}).get('cpu_seconds')} s, so each "
                f"further subscriber cost it {e.get('marginal_cpu_us_per_row_per_subscriber')} "
                "µs per row (end to end: reading from the store, encoding, framing, offset "
                "mappings, sending). "
                f"Electric's CPU during its run: {e.get('cpu_seconds')} s = "
                f"{e.get('cpu_us_per_row_per_subscriber')} µs per row per subscriber, reading "
                "the source and writing the store included. The publisher's own work per "
                f"subscriber per row (in process, {enc['subscribers']} sessions): "
                f"{enc['shared_us_per_row_per_subscriber']} µs with the shared encoding, "
                f"{enc['per_session_us_per_row_per_subscriber']} µs when every session "
                "encodes its own copy."]
    return out
