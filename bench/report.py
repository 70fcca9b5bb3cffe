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


def _heading(title: str, command: str, doc: dict[str, Any], mode: str = "") -> list[str]:
    """A section's title and the command that measured it, with the machine and date it ran on."""
    return [f"## {title}", "", f"`{command}` — measured {_machine(doc['machine'])}{mode}.", ""]


def _num(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


_OURS = ("none", "lz4", "zstd", "hde")


def _codec_columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        seen.setdefault(r["codec"], None)
    return [c for c in _OURS if c in seen] + [c for c in seen if c not in _OURS]


def _matrix(rows: list[dict[str, Any]], key: str, fmt: str) -> list[str]:
    """One line per payload, one column per codec."""
    cols = _codec_columns(rows)
    payloads: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        payloads.setdefault(r["family"], {})[r["codec"]] = r
    heads = [f"**{c}**" if c in _OURS else c for c in cols]
    lines = ["| payload | MiB | " + " | ".join(heads) + " |", "|---|---:|" + "---:|" * len(cols)]
    for family, by in payloads.items():
        cells = []
        for c in cols:
            cell = by.get(c)
            cells.append(
                "error" if cell and cell.get("error") else _num(cell.get(key) if cell else None, fmt)
            )
        mib = next(iter(by.values()))["bytes"] / 2**20
        lines.append(f"| {family} | {mib:,.2f} | " + " | ".join(cells) + " |")
    return lines


def strategies_section(doc: dict[str, Any]) -> list[str]:
    mode = " (`--quick`)" if doc.get("quick") else ""
    if doc.get("sizes_only"):
        mode += " (`--sizes-only`: one run per codec, speeds of that run)"
    tools = doc.get("tools", {})
    lines = [
        *_heading("Encoders against the reference codecs", "python bench/strategies.py", doc, mode),
        "Ratio = original / encoded bytes; MB/s of original bytes, one core, median of 7 runs below 4 MiB, 3",
        "below 64 MiB, 1 above. `none`, `lz4`, `zstd`, `hde` are this project's encoders through the payload",
        "codec (1 MiB chunks, framed, checksummed, as AMST sends them; every round trip verified); the others",
        "code the whole file in one call. `zstd -1` and `zstd -3`: sizes from the zstd command line",
        "(`zstd -N -c FILE`), speeds from libzstd in process at the same level. `lz4 (frame)`: lz4.frame,",
        "whole file. `zstd -3 --patch-from`: the command line `zstd -3 --patch-from=OLD NEW`, size and wall",
        "time of the process (start-up and file I/O included); `(libzstd)`: the same parameters in process.",
    ]
    if tools:
        lines.append(
            f"zstd command line {tools.get('zstd_cli') or 'absent'}; libzstd {tools.get('libzstd')}; "
            f"lz4 {tools.get('lz4')}."
        )
    lines.append("")
    items = doc.get("corpus", {}).get("items", [])
    if items:
        lines += [
            "**The real-data corpus** (`bench/corpus.py`; obtained on the machine that ran the benchmark and",
            "cached with its provenance; a pair is an older and a newer version, the newer one coded):",
            "",
            "| payload | kind | MiB | where it comes from |",
            "|---|---|---:|---|",
        ]
        for it in items:
            mib = it["bytes"] / 2**20
            size = f"{it['old_bytes'] / 2**20:,.2f} → {mib:,.2f}" if it.get("old_bytes") else f"{mib:,.2f}"
            kind = it.get("kind", "") + (", derived" if it.get("derived") else "")
            lines.append(f"| {it['name']} | {kind} | {size} | {it.get('source', '')} |")
        lines.append("")
        for s in doc.get("corpus", {}).get("skipped", []):
            lines.append(f"Skipped {s['id']}: {s['reason']}.")
        lines.append("")
    rows = doc["rows"]
    lines += ["**Ratio**", ""] + _matrix(rows, "ratio", ",.2f") + [""]
    lines += ["**Encode MB/s**", ""] + _matrix(rows, "encode_mb_s", ",.0f") + [""]
    lines += ["**Decode MB/s**", ""] + _matrix(rows, "decode_mb_s", ",.0f") + [""]
    lines += [
        "**Acceptance checks** computed in the same run: on every real file our `zstd` within 1.05× of",
        "`zstd -3` (or 1,024 bytes), on every real version pair our `hde` within 1.00× of `zstd -3",
        "--patch-from` (or 1,024 bytes), on the VM pre-copy round hde's ratio and encode speed.",
        "",
        "| payload | check | ours | reference | value | |",
        "|---|---|---:|---:|---:|---|",
    ]
    for c in doc["checks"]:
        ours = _num(c.get("ours_bytes"), ",") if "reference_bytes" in c else ""
        ref = _num(c.get("reference_bytes"), ",") if "reference_bytes" in c else ""
        if c.get("ours_encode_mb_s") is not None or c.get("reference_encode_mb_s") is not None:
            ours += f" ({_num(c.get('ours_encode_mb_s'), ',.0f')} MB/s)"
            ref += f" ({_num(c.get('reference_encode_mb_s'), ',.0f')} MB/s)"
        lines.append(
            f"| {c['family']} | {c['check']} | {ours} | {ref} | {_num(c['value'], ',.3f')} | "
            f"{'ok' if c['ok'] else 'MISSED'} |"
        )
    lines.append("")
    return lines


def hde_edits_section(doc: dict[str, Any]) -> list[str]:
    lines = [
        *_heading("HDE on constructed edits of real content", "python bench/hde_edits.py", doc),
        "Real content, constructed edits: large blocks appended, inserted, deleted or moved, and the",
        "corpus's shared libraries with the staging workload's edit model (ten small replacements,",
        "insertions and deletions, so every page after the first is shifted: the `executable` version",
        "pairs that staging collects). Encode MB/s on one core, medians of 5 runs; patch-from's is the",
        "command's wall time; lz4 is the `lz4` strategy through the payload codec, without a baseline.",
        "",
        "| edit | MiB | hde bytes | patch-from bytes | hde / patch-from | hde MB/s | patch-from MB/s "
        "| lz4 bytes | lz4 MB/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['edit']} | {r['bytes'] / 2**20:.1f} | {r['hde_bytes']:,} | {r['patch_from_bytes']:,} | "
            f"{r['relative']:.3f} | {r['hde_encode_mb_s']:,.0f} | {_num(r.get('patch_from_mb_s'), ',.0f')} | "
            f"{_num(r.get('lz4_bytes'), ',')} | {_num(r.get('lz4_encode_mb_s'), ',.0f')} |"
        )
    lines.append("")
    return lines


def amst_section(doc: dict[str, Any]) -> list[str]:
    lines = [
        *_heading("AMST over loopback", "python bench/amst.py --gib 1 --repeats 3", doc),
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
        *_heading("Memory of `measure` on a large file", "python bench/measure_memory.py", doc),
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
        *_heading(
            "Telemetry collector on the transfer path",
            "python bench/telemetry.py --pg-restart --staging-store sqlite:///data/staging-100k.db",
            doc,
        ),
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
        *_heading("Decision latency", "python bench/inference.py --model MODEL_DIR", doc),
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
    hde_edits = RESULTS / "hde_edits.json"
    if hde_edits.exists():
        lines += hde_edits_section(json.loads(hde_edits.read_text()))
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
