"""Render ``docs/benchmarks.md`` from the JSON the benchmark scripts wrote.

    python bench/strategies.py && python bench/amst.py && python bench/report.py

Every figure in the page comes from ``bench/results/*.json``; the page says which command made it, when
and on what machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
OUT = ROOT / "docs" / "benchmarks.md"


def _machine(m: dict[str, Any]) -> str:
    return (
        f"{m['date']}, {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, "
        f"dwcp-selector {m['dwcp_selector']}"
    )


def _num(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def strategies_section(doc: dict[str, Any]) -> list[str]:
    lines = [
        "## Encoders against the reference codecs",
        "",
        "`python bench/strategies.py` — measured "
        + _machine(doc["machine"])
        + (" (`--quick`)" if doc.get("quick") else "")
        + ".",
        "",
        "Ratio = original / encoded bytes; MB/s of original bytes, one core, median of 3–7 runs.",
        "`none`, `lz4`, `zstd`, `hde` are this project's encoders through the payload codec (1 MiB chunks,",
        "framed, checksummed, as AMST sends them); the others code the whole payload in one call.",
        "`zstd -3 --patch-from (CLI)` is the zstd command line (size only); `patch-from -3 (libzstd)` the",
        "same parameters in-process (speed).",
        "",
    ]
    families: dict[str, list[dict[str, Any]]] = {}
    for r in doc["rows"]:
        families.setdefault(r["family"], []).append(r)
    for family, rows in families.items():
        mib = rows[0]["bytes"] / 2**20
        lines += [
            f"**{family}** ({mib:.2f} MiB)",
            "",
            "| codec | ratio | encode MB/s | decode MB/s |",
            "|---|---:|---:|---:|",
        ]
        for r in rows:
            name = f"**{r['codec']}**" if r["codec"] in ("none", "lz4", "zstd", "hde") else r["codec"]
            enc, dec = _num(r["encode_mb_s"], ",.0f"), _num(r["decode_mb_s"], ",.0f")
            lines.append(f"| {name} | {r['ratio']:,.2f} | {enc} | {dec} |")
        lines.append("")
    lines += [
        "Acceptance checks computed in the same run:",
        "",
        "| payload | check | value | |",
        "|---|---|---:|---|",
    ]
    for c in doc["checks"]:
        lines.append(
            f"| {c['family']} | {c['check']} | {c['value']:,.3f} | {'ok' if c['ok'] else 'MISSED'} |"
        )
    lines.append("")
    return lines


def amst_section(doc: dict[str, Any]) -> list[str]:
    lines = [
        "## AMST over loopback",
        "",
        "`python bench/amst.py --gib 1 --repeats 3` — measured " + _machine(doc["machine"]) + ".",
        "",
        "Sender and receiver in one process on the same 2 cores, loopback TCP: this is the transport's",
        "own cost (encoding on the stream threads, framing, checksums, reassembly and the whole-payload",
        "check), not a link. Every transfer was verified byte for byte after reassembly.",
        "",
        "| payload | strategy | MiB | streams | seconds (median) | MB/s | wire MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['payload']} | {r['strategy']} | {r['bytes'] / 2**20:,.0f} | {r['streams']} | "
            f"{r['seconds_median']:.2f} | {r['throughput_mb_s']:,.0f} | {r['wire_bytes'] / 2**20:,.1f} |"
        )
    k = doc["killed_stream"]
    lines += [
        "",
        f"One stream cut by a relay after {k['cut_after_bytes'] / 2**20:.0f} MiB of a "
        f"{k['payload_bytes'] / 2**20:,.0f} MiB transfer:",
        "",
        f"* sender: `{k['sender']}`",
        f"* receiver: `{k['receiver']}`",
        "",
    ]
    return lines


def memory_section(doc: dict[str, Any]) -> list[str]:
    lines = [
        "## Memory of `measure` on a large file",
        "",
        "`python bench/measure_memory.py` — measured " + _machine(doc["machine"]) + ".",
        "",
        "Peak resident set size of the whole `dwcp-selector measure FILE --json` process (interpreter and",
        "libraries included) on a 64 MiB file; the bar is 6× the payload.",
        "",
        "| case | payload MiB | peak RSS MiB | × payload | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['case']} | {r['payload_bytes'] / 2**20:.0f} | {r['peak_rss_bytes'] / 2**20:.0f} | "
            f"{r['ratio']:.2f} | {r['seconds']:.1f} |"
        )
    lines.append("")
    return lines


def telemetry_section(doc: dict[str, Any]) -> list[str]:
    lines = [
        "## Telemetry collector on the transfer path",
        "",
        "`python bench/telemetry.py --pg-restart --staging-store sqlite:///data/staging-100k.db` — measured "
        + _machine(doc["machine"])
        + ".",
        "",
        f"A caller records {doc['rate']:,} records/s for {doc['seconds']:.0f} s, collector off then on, three "
        "alternating pairs per store (medians; the runs' values in `bench/results/telemetry.json`). Latency is "
        "the caller's `record()` call; CPU is the whole process's (writer thread included), on − off, per record.",
        "",
        "| store | rate/s | record() p50 off | p99 off | p50 on | p99 on | CPU per record | records sent | stored |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, r in doc["stores"].items():
        off, on = r["off"]["latency_us"], r["on"]["latency_us"]
        lines.append(
            f"| {kind} | {r['on']['achieved_rate']:,.0f} | {off['p50']:.2f} µs | {off['p99']:.2f} µs | "
            f"{on['p50']:.2f} µs | {on['p99']:.2f} µs | {r['collector_cpu_per_record_us']:.2f} µs | "
            f"{r['records_sent']:,} | {r['records_in_store']:,} |"
        )
    if "staging" in doc:
        s = doc["staging"]
        lines += [
            "",
            f"Encode CPU of the median staging transfer (median over the 12,500 staging payloads of zstd's "
            f"encode CPU, zstd being the baseline encoder): {s['median_zstd_encode_s'] * 1e6:.0f} µs. Collector "
            "CPU per record against it: "
            + ", ".join(f"{k} {r['cpu_share_of_median_zstd_encode']:.2%}" for k, r in doc["stores"].items())
            + " (bar < 2 %).",
        ]
    for kind, r in doc["stores"].items():
        if "restart" in r:
            x = r["restart"]
            c = x["collector"]
            lines += [
                "",
                f"**{kind} stopped and restarted** a third and two thirds of the way through a further "
                f"{doc['seconds']:.0f} s run: {x['records_sent']:,} records sent, **{x['records_in_store']:,} in "
                f"the store**; {c['spilled']:,} went through the spill file and were replayed; dropped "
                f"{sum(c['dropped'].values())}; caller p99 {x['latency_us']['p99']:.1f} µs.",
            ]
    lines.append("")
    return lines


def inference_section(doc: dict[str, Any]) -> list[str]:
    m = doc["model"]
    lines = [
        "## Decision latency",
        "",
        f"`python bench/inference.py --model MODEL_DIR` — measured {_machine(doc['machine'])}.",
        "",
        f"Model: {m['candidate']} ({m['kind']}, {m['family']}), {m['size_bytes']:,} bytes of ONNX. One thread;",
        f"p50/p99 of {doc['calls']:,} calls per row (fewer for the costly rows), median of {doc['repeats']} runs.",
        "",
    ]
    ref = doc.get("python_reference_us", {}).get("sum(range(1000))")
    if ref is not None:
        lines += [
            f"Host speed at the time: `sum(range(1000))` took {ref:.1f} µs; "
            "decision latencies scale with it.",
            "",
        ]
    lines += [
        "| what | p50 µs | p99 µs |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {r['p50_us']:,.2f} | {r['p99_us']:,.2f} |" for name, r in doc["rows"].items()]
    if "light: inference (compiled)" in doc["rows"]:
        lines += [
            "",
            "A light decision builds its whole input row in one compiled call and runs the network's single row",
            "in the compiled runtime (the weights read out of the same ONNX graph, checked against onnxruntime",
            "on load); the onnxruntime row is the same graph's single row in onnxruntime, which runs every batch",
            "(`docs/decisions/0005-compiled-light-decision-and-near-optimal-loss.md`).",
        ]
    lines.append("")
    return lines


def main() -> None:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python bench/report.py` from `bench/results/*.json`; rerun the commands below to",
        "reproduce. Benchmarks are not tests: the test suite checks behaviour, these scripts measure.",
        "",
    ]
    strategies = RESULTS / "strategies.json"
    amst = RESULTS / "amst.json"
    if strategies.exists():
        lines += strategies_section(json.loads(strategies.read_text()))
    if amst.exists():
        lines += amst_section(json.loads(amst.read_text()))
    telemetry = RESULTS / "telemetry.json"
    if telemetry.exists():
        lines += telemetry_section(json.loads(telemetry.read_text()))
    inference = RESULTS / "inference.json"
    if inference.exists():
        lines += inference_section(json.loads(inference.read_text()))
    memory = RESULTS / "measure_memory.json"
    if memory.exists():
        lines += memory_section(json.loads(memory.read_text()))
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
