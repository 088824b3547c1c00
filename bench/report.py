"""Turn the results dictionary into ``results.md`` and small PNG plots."""

from __future__ import annotations

import os

from bench import report_fanout, sync_rules

TARGETS = {
    "throughput_ratio": 0.5,  # Electric ≥ 50% of native rows/s
    "p99_ms_at_200": 100.0,  # p99 commit-to-visible ≤ 100 ms at 200 tx/s
    "catch_up_s": 2.0,  # 10 tables × 1,000 rows ≤ 2 s
    "rss_mib_per_100k": 20.0,  # RSS growth per 100,000 replicated rows
    "store_to_table": 3.0,  # data directory ≤ 3 × the table's size
    "big_tx_peak_mib": 300.0,  # peak RSS while one 1,000,000-row transaction goes through
    "store_tx_per_s": 20_000,  # embedded store alone, ten-row transactions, fsync on
    "initial_sync_ratio": 3.0,  # initial sync of a table ≤ 3 × native copy_data's time
}


def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        v = f"{v:,.1f}" if abs(v) < 100 else f"{v:,.0f}"
    elif isinstance(v, int):
        v = f"{v:,}"
    return f"{v}{unit}"


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("**met**" if ok else "**missed**")


def targets(results: dict) -> list[tuple[str, str, str, str]]:
    """(target, measured, native for reference, verdict) rows."""
    rows = []
    tp = results.get("throughput")
    if tp:
        n, e = tp["native"]["total"]["rows_per_s"], tp["electric"]["total"]["rows_per_s"]
        ratio = e / n if n and e else None
        rows.append(("PG→PG throughput via Electric ≥ 50% of native",
                     f"{_fmt(e)} rows/s = {_fmt(100 * ratio if ratio else None, '%')} of native",
                     f"{_fmt(n)} rows/s",
                     _verdict(None if ratio is None else ratio >= TARGETS["throughput_ratio"])))
    lat = results.get("latency")
    if lat:
        e = next((r for r in lat["electric"] if r["offered_tx_per_s"] == 200), None)
        n = next((r for r in lat["native"] if r["offered_tx_per_s"] == 200), None)
        if e:
            ok = (e["p99_ms"] is not None and e["delivered"] == e["transactions"]
                  and e["p99_ms"] <= TARGETS["p99_ms_at_200"])
            rows.append(("p99 commit-to-visible ≤ 100 ms at 200 tx/s",
                         f"{_fmt(e['p99_ms'], ' ms')}", f"{_fmt(n and n['p99_ms'], ' ms')}",
                         _verdict(ok)))
    cu = results.get("catch_up")
    if cu:
        e, n = cu["electric"], cu["native"]
        rows.append((f"catch-up of 10 tables × {e['rows'] // 10:,} rows ≤ 2 s",
                     _fmt(e["seconds"], " s"), _fmt(n["seconds"], " s"),
                     _verdict(e["converged"] and e["seconds"] <= TARGETS["catch_up_s"])))
    sc = results.get("scale")
    if sc:
        rows.append((f"RSS growth ≤ 20 MiB per 100,000 rows ({sc['rows']:,} replicated)",
                     _fmt(sc["rss_growth_mib_per_100k_rows"], " MiB"), "—",
                     _verdict(sc["converged"] and sc["rss_growth_mib_per_100k_rows"]
                              <= TARGETS["rss_mib_per_100k"])))
        rows.append(("data directory ≤ 3 × the table's size",
                     f"{_fmt(sc['store_mib'], ' MiB')} = {sc['store_to_table']}×",
                     _fmt(sc["table_mib"], " MiB (table)"),
                     _verdict(sc["store_to_table"] <= TARGETS["store_to_table"])))
    big = results.get("big_transaction")
    if big:
        e, n = big["electric"], big["native"]
        rows.append((f"one {e['rows']:,}-row transaction reaches B; peak RSS ≤ 300 MiB",
                     f"{_fmt(e['seconds'], ' s')}, peak {_fmt(e.get('peak_rss_mib'), ' MiB')}",
                     _fmt(n["seconds"], " s"),
                     _verdict(e["converged"] and (e.get("peak_rss_mib") or 0)
                              <= TARGETS["big_tx_peak_mib"])))
    sy = results.get("initial_sync")
    if sy:
        e, n = sy["electric"], sy["native"]
        ratio = e["seconds"] / n["seconds"] if e["converged"] and n["seconds"] else None
        rows.append((f"initial sync of a {sy['rows']:,}-row table ≤ 3 × native copy_data",
                     f"{_fmt(e['seconds'], ' s')} = {_fmt(ratio, '×')} native",
                     _fmt(n["seconds"], " s"),
                     _verdict(None if ratio is None else ratio <= TARGETS["initial_sync_ratio"])))
    st = results.get("store_alone")
    if st:
        rows.append(("embedded store alone ≥ 20,000 ten-row tx/s (fsync on)",
                     f"{_fmt(st['store']['tx_per_s'])} tx/s",
                     f"SQLite ceiling {_fmt(st['sqlite_ceiling']['tx_per_s'])} tx/s; "
                     f"`electric vaxine` over protobuf "
                     f"{_fmt((st.get('wire_server') or st.get('first_release', {})).get('tx_per_s'))}"
                     " tx/s",
                     _verdict(st["store"]["tx_per_s"] >= TARGETS["store_tx_per_s"])))
    rows += report_fanout.targets(results)
    return rows


def markdown(results: dict) -> str:
    meta = results["meta"]
    out = [
        "# Electric benchmarks", "",
        f"Run {meta['started']} ({meta['mode']} mode, {meta['cpus']} CPUs, Postgres fsync "
        f"{'on' if meta['fsync'] else 'off'}, total {meta['seconds']:.0f} s). Native logical "
        "replication and Electric run between the same two clusters in the same run; "
        "absolute numbers on a shared machine are noise, the ratios are the result.",
        "Regenerate with `make bench` (or `python -m bench --quick`).", "",
        "## Targets", "", "| target | Electric | native | verdict |", "|---|---:|---:|---|",
    ]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in targets(results)]
    tp = results.get("throughput")
    if tp:
        out += ["", f"## PG → PG throughput ({_fmt(tp['rows'])} rows over 10 tables, "
                f"{tp['batch']}-row transactions)", "",
                "Each phase is timed from its first statement on A until B shows its outcome. "
                "*A commit* is how long A alone took to commit the phase. *Electric CPU* is "
                "the CPU time (all threads) of the Electric process per row during the phase: "
                "unlike rows/s it does not depend on what else the machine runs.", "",
                "| phase | rows | native rows/s | Electric rows/s | Electric / native "
                "| A commit s | native s | Electric s | Electric CPU µs/row |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for phase in ("insert", "update", "delete", "total"):
            n, e = tp["native"][phase], tp["electric"][phase]
            ratio = (e["rows_per_s"] / n["rows_per_s"]) if n["rows_per_s"] and \
                e["rows_per_s"] else None
            out.append(f"| {phase} | {_fmt(n['rows'])} | {_fmt(n['rows_per_s'])} | "
                       f"{_fmt(e['rows_per_s'])} | {_fmt(ratio and 100 * ratio, '%')} | "
                       f"{_fmt(e.get('source_commit_seconds'))} | {_fmt(n['seconds'])} | "
                       f"{_fmt(e['seconds'])} | {_fmt(e.get('electric_cpu_us_per_row'))} |")
        out += ["", "![throughput](throughput.png)"]
    lat = results.get("latency")
    if lat:
        out += ["", f"## Commit-to-visible latency ({lat['duration_s']:g} s per rate, "
                "single-row transactions)", "",
                "From A's `COMMIT` returning to B's apply worker committing (a `pg_notify` "
                "from an `ENABLE ALWAYS` trigger on B).", "",
                "| offered tx/s | pipeline | achieved tx/s | delivered | p50 ms | p95 ms | "
                "p99 ms | max ms |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for n, e in zip(lat["native"], lat["electric"], strict=True):
            for name, r in (("native", n), ("Electric", e)):
                out.append(f"| {r['offered_tx_per_s']:g} | {name} | "
                           f"{_fmt(r['achieved_tx_per_s'])} | "
                           f"{r['delivered']}/{r['transactions']} | {_fmt(r['p50_ms'])} | "
                           f"{_fmt(r['p95_ms'])} | {_fmt(r['p99_ms'])} | {_fmt(r['max_ms'])} |")
        out += ["", "![latency](latency.png)"]
    cu = results.get("catch_up")
    if cu:
        out += ["", "## Catch-up", "",
                "B's subscription disabled, 10 tables × "
                f"{cu['electric']['rows'] // 10:,} rows committed on A in 100-row transactions "
                "(for Electric: until its connector reports them written to Vaxine), "
                "subscription enabled; time from `ENABLE` until every row is visible on B.",
                "",
                "| pipeline | rows | seconds | rows/s |", "|---|---:|---:|---:|"]
        for name in ("native", "electric"):
            r = cu[name]
            out.append(f"| {name} | {_fmt(r['rows'])} | {_fmt(r['seconds'])} | "
                       f"{_fmt(r['rows'] / r['seconds'] if r['converged'] else None)} |")
    tr = results.get("trigger")
    if tr:
        out += ["", "## Apply-side cost of the upsert trigger", "",
                f"One {tr['rows']:,}-row INSERT on B as `session_replication_role = replica` "
                "(what the apply worker runs as), best of 3. Native subscribers have no "
                "trigger; *generic* is `electric.replication_upsert()` (catalog look-up and "
                "dynamic SQL per row; Electric's trigger before the per-table functions, its "
                "fallback now); *static* is a hand-written per-table trigger with the same "
                "semantics and fixed SQL; *generated* is the per-table function Electric "
                "installs (`electric.upsert_<oid>`).", "",
                "| trigger | ms | µs per row over none |", "|---|---:|---:|",
                f"| none (native) | {_fmt(tr['plain_ms'])} | — |",
                f"| generic | {_fmt(tr['generic_ms'])} | "
                f"{_fmt(tr['generic_us_per_row_over_plain'])} |",
                f"| static per table | {_fmt(tr['static_ms'])} | "
                f"{_fmt(tr['static_us_per_row_over_plain'])} |"]
        if "generated_ms" in tr:
            out.append(f"| generated per table (Electric) | {_fmt(tr['generated_ms'])} | "
                       f"{_fmt(tr['generated_us_per_row_over_plain'])} |")
    wi = results.get("whatif_static_trigger")
    if wi and tp:
        n_tp = tp["native"]["total"]["rows_per_s"]
        w_tp = wi["throughput"]["total"]["rows_per_s"]
        out += ["", "## What if: static per-table upsert triggers on B", "",
                "Same rig, same Electric, after the runs above: B's `electric_upsert` triggers "
                "replaced by per-table functions with fixed SQL (same semantics), then the "
                "throughput workload and the catch-up again.", "",
                "| measure | Electric (generic trigger) | Electric (static trigger) | native |",
                "|---|---:|---:|---:|",
                f"| throughput rows/s | {_fmt(tp['electric']['total']['rows_per_s'])} | "
                f"{_fmt(w_tp)} | {_fmt(n_tp)} |"]
        for phase in ("insert", "update", "delete"):
            out.append(f"| {phase} rows/s | {_fmt(tp['electric'][phase]['rows_per_s'])} | "
                       f"{_fmt(wi['throughput'][phase]['rows_per_s'])} | "
                       f"{_fmt(tp['native'][phase]['rows_per_s'])} |")
        if cu:
            out.append(f"| catch-up s | {_fmt(cu['electric']['seconds'])} | "
                       f"{_fmt(wi['catch_up']['seconds'])} | {_fmt(cu['native']['seconds'])} |")
    ing = results.get("satellite_ingest")
    if ing:
        out += ["", "## Satellite ingest", "",
                "Single-row insert transactions over the websocket, up to "
                f"{ing[0]['window']} unacknowledged per client. *acked*: durable in Vaxine; "
                "*into Postgres*: visible on A through Electric's publisher.", "",
                "| clients | transactions | acked tx/s | into Postgres tx/s |",
                "|---:|---:|---:|---:|"]
        for r in ing:
            out.append(f"| {r['clients']} | {_fmt(r['transactions'])} | "
                       f"{_fmt(r['acked_tx_per_s'])} | {_fmt(r['postgres_tx_per_s'])} |")
    fo = results.get("satellite_fanout")
    if fo:
        out += ["", "## Satellite fan-out (`bench/satellite_fanout.py`)", "",
                f"One writer at {fo[0]['rate_tx_per_s']:g} tx/s for {fo[0]['duration_s']:g} s "
                f"into the embedded Vaxine ({fo[0]['mode']} mode), every client streaming "
                "all of it over its own websocket; latency from commit timestamp to client "
                "receipt.", "",
                "| clients | delivered | p50 ms | p99 ms | max ms | server RSS MB | "
                "KiB per client |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in fo:
            out.append(f"| {r['clients']} | {r['delivered']}/{r['expected_deliveries']} | "
                       f"{_fmt(r['latency_ms_p50'])} | {_fmt(r['latency_ms_p99'])} | "
                       f"{_fmt(r['latency_ms_max'])} | {_fmt(r['server_rss_mb_end'])} | "
                       f"{_fmt(r['kb_per_client_end'])} |")
        out += ["", "![fan-out](fanout.png)"]
    out += report_fanout.markdown(results)
    out += sync_rules.markdown(results)
    hs = results.get("hub_stall")
    if hs:
        out += ["", "## Offset-file fsync and the gevent hub (`bench/hub_stall.py`)", "",
                "Two greenlets put pg mappings back to back (like two publisher sessions) "
                "while a 1 ms ticker measures how late the hub lets it run.", "",
                "| fsync | puts/s | ticker wake-ups | hub stall p99 ms | max ms |",
                "|---|---:|---:|---:|---:|"]
        for r in hs:
            out.append(f"| {r['fsync']} | {_fmt(r['puts_per_s'])} | {r['ticker_wakeups']} | "
                       f"{_fmt(r['hub_stall_p99_ms'])} | {_fmt(r['hub_stall_max_ms'])} |")
    vs = results.get("vaxine_server")
    if vs:
        out += ["", "## `electric vaxine` alone (`bench/vaxine_server.py`)", "",
                f"{vs['rows']:,} rows in 100-row transactions through the Antidote API (4 "
                "writers, Electric's client), into the standalone server of this checkout "
                f"(SQLite engine) and of `{vs.get('old_ref', '?')}` (the first release's "
                "in-memory engine), alternating rounds in one run; RSS of the server process.",
                "", "| engine | rows/s | RSS start → end MiB | RSS at each quarter MiB | "
                "MiB per 100k rows (second half) | data dir MiB |",
                "|---|---:|---:|---|---:|---:|"]
        for name in ("old", "new"):
            r = vs.get(name)
            if r:
                out.append(f"| {name} | {_fmt(r['rows_per_s'])} | {_fmt(r['rss_start_mib'])} → "
                           f"{_fmt(r['rss_end_mib'])} | "
                           f"{', '.join(_fmt(m) for m in r.get('rss_quarters_mib', []))} | "
                           f"{_fmt(r['rss_mib_per_100k_rows'])} "
                           f"({_fmt(r.get('rss_mib_per_100k_rows_second_half'))}) | "
                           f"{_fmt(r['data_dir_mib'])} |")
        if "throughput_ratio" in vs:
            out += ["", f"New / old: throughput {vs['throughput_ratio']}×, RSS growth "
                        f"{vs['rss_growth_ratio']}×."]
    if results.get("profile_md"):
        out += ["", "## Profile (py-spy on the Electric process, PG→PG insert workload)", "",
                results["profile_md"]]
    return "\n".join(out) + "\n"


def plots(results: dict, out_dir: str) -> list[str]:
    """Small PNGs (about 20–40 KB each); returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, name), dpi=72)
        plt.close(fig)
        written.append(name)

    colors = {"native": "#4c72b0", "electric": "#dd8452"}
    tp = results.get("throughput")
    if tp:
        phases = ["insert", "update", "delete", "total"]
        fig, ax = plt.subplots(figsize=(6, 3.2))
        series = [("native", tp["native"], colors["native"]),
                  ("electric", tp["electric"], colors["electric"])]
        wi = results.get("whatif_static_trigger")
        if wi:
            series.append(("electric, static trigger", wi["throughput"], "#55a868"))
        width = 0.8 / len(series)
        for k, (name, data, color) in enumerate(series):
            vals = [data[p]["rows_per_s"] or 0 for p in phases]
            ax.bar([i + (k - (len(series) - 1) / 2) * width for i in range(len(phases))], vals,
                   width, label=name, color=color)
        ax.set_xticks(range(len(phases)), phases)
        ax.set_ylabel("rows/s (A → B)")
        ax.set_yscale("log")
        ax.set_ylim(bottom=100)
        ax.set_title("PG → PG throughput")
        ax.legend(fontsize=7)
        save(fig, "throughput.png")
    lat = results.get("latency")
    if lat:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for name, style in (("native", "-"), ("electric", "--")):
            rates = [r["offered_tx_per_s"] for r in lat[name]]
            for q, marker in (("p50_ms", "o"), ("p99_ms", "^")):
                ax.plot(rates, [r[q] if r[q] is not None else float("nan") for r in lat[name]],
                        style, marker=marker, color=colors[name], label=f"{name} {q[:3]}")
        ax.axhline(100, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered tx/s")
        ax.set_ylabel("commit → visible (ms)")
        ax.set_title("Commit-to-visible latency")
        ax.legend(fontsize=7)
        save(fig, "latency.png")
    fo = results.get("satellite_fanout")
    if fo:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        n = [r["clients"] for r in fo]
        ax.plot(n, [r["latency_ms_p50"] for r in fo], "o-", label="p50 ms")
        ax.plot(n, [r["latency_ms_p99"] for r in fo], "^-", label="p99 ms")
        ax.set_xscale("log")
        ax.set_xlabel("connected clients")
        ax.set_ylabel("delivery latency (ms)")
        ax2 = ax.twinx()
        ax2.plot(n, [r["kb_per_client_end"] for r in fo], "s:", color="grey",
                 label="KiB/client")
        ax2.set_ylabel("server KiB per client")
        ax.set_title("Satellite fan-out")
        ax.legend(loc="upper left", fontsize=7)
        ax2.legend(loc="lower right", fontsize=7)
        save(fig, "fanout.png")
    return written


# -- the README's known-limits figures ----------------------------------------------------

README_BEGIN = "<!-- known-limits: generated from bench/results/results.json by bench.report -->"
README_END = "<!-- end of generated known-limits -->"


def readme_limits(results: dict) -> str:
    """The throughput/latency bullet of the README's known limits, from ``results``."""
    meta = results["meta"]
    tp = results["throughput"]["electric"]["total"]["rows_per_s"]
    native = results["throughput"]["native"]["total"]["rows_per_s"]
    at_200 = next(r for r in results["latency"]["electric"] if r["offered_tx_per_s"] == 200)
    catch_up = results["catch_up"]["electric"]
    ingest = results.get("satellite_ingest") or []
    satellite = ""
    if ingest:
        satellite = (f" Satellite clients get {_fmt(ingest[0]['acked_tx_per_s'])} "
                     f"single-row tx/s acknowledged with {ingest[0]['clients']} client.")
    return (
        f"* **Throughput.** Through Electric with the embedded store, PG→PG bulk replication "
        f"runs at {_fmt(tp)} rows/s on {meta['cpus']} cores, {_fmt(100 * tp / native, ' %')} "
        f"of native logical replication on the same machine ({_fmt(native)} rows/s). Latency "
        f"at 200 tx/s: p99 {_fmt(at_200['p99_ms'], ' ms')} commit to visible; a "
        f"10×{catch_up['rows'] // 10:,}-row catch-up takes {_fmt(catch_up['seconds'], ' s')}."
        f"{satellite} (Run of {meta['started']}; `make bench` regenerates these figures.)"
    ) + _store_limits(results)


def _store_limits(results: dict) -> str:
    """The embedded store's measured bounds, when the run has them."""
    parts = []
    sc = results.get("scale")
    if sc:
        parts.append(f"RSS grew {_fmt(sc['rss_growth_mib_per_100k_rows'], ' MiB')} per 100,000 "
                     f"rows over {sc['rows']:,} replicated rows, and the store's files took "
                     f"{sc['store_to_table']}× the table's size")
    big = results.get("big_transaction")
    if big and big["electric"].get("peak_rss_mib"):
        e, n = big["electric"], big["native"]
        parts.append(f"one {e['rows']:,}-row transaction reached the other Postgres in "
                     f"{_fmt(e['seconds'], ' s')} (native {_fmt(n['seconds'], ' s')}) with a "
                     f"peak RSS of {_fmt(e['peak_rss_mib'], ' MiB')}")
    st = results.get("store_alone")
    if st:
        parts.append(f"the store alone commits {_fmt(st['store']['tx_per_s'])} ten-row "
                     f"transactions/s with 64 writers and fsync on (plain SQLite inserts of "
                     f"the same rows: {_fmt(st['sqlite_ceiling']['tx_per_s'])}/s)")
    if not parts:
        return ""
    return "\n* **Embedded store.** " + "; ".join(parts) + "."


def update_readme(results: dict, readme: str) -> bool:
    """Replace the generated block of ``readme``; False when it has no such block."""
    with open(readme, encoding="utf-8") as fh:
        text = fh.read()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        return False
    block = f"{README_BEGIN}\n{readme_limits(results)}\n"
    with open(readme, "w", encoding="utf-8") as fh:
        fh.write(text[:start] + block + text[end:])
    return True
