"""Helpers shared by the benchmark scripts: machine facts, timing, and writing results."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import platform
import statistics
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    from dwcp_selector.hostprofile import cpu_model

    cpu = cpu_model()
    try:
        mem_kib = int(
            next(
                ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")
            ).split()[1]
        )
    except (OSError, StopIteration, ValueError):
        mem_kib = 0
    from dwcp_selector import __version__

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "dwcp_selector": __version__,
    }


def label_provenance(encoders: str | None = None) -> dict[str, Any]:
    """What priced the labels a result describes: the encoders (the library version of the records, when
    the caller read them; else this build's), their frame format and the cost model."""
    from dwcp_selector import __version__
    from dwcp_selector.costmodel import CostParams
    from dwcp_selector.strategies.frame import FORMAT_VERSION

    params = CostParams()
    return {
        "frame_format": FORMAT_VERSION,
        "encoders": encoders or __version__,
        "cost_model": params.version,
        "cost_fingerprint": params.fingerprint,
    }


#: Results written before their JSON recorded it: the encoders then were frame format 1 (every chunk coded
#: on its own, HDE tier 2 as XOR with the old page) and the cost model cost-v1.
#: The encoders' version of results that do not say: 0.1.0 (0.2.0 changed HDE's region coding).
FIRST_ENCODERS = "0.1.0"
FORMAT_1_LABELS = {"frame_format": 1, "cost_model": "cost-v1", "cost_fingerprint": "fb321107037ed603"}


def encoders_of(*tables: Any) -> str | None:
    """The library versions that measured tables of telemetry records (``library_version``), or None."""
    columns = [t.column("library_version") for t in tables if "library_version" in t.column_names]
    versions = {v for column in columns for v in column.to_pylist()}
    return ", ".join(sorted(v for v in versions if v)) or None


def provenance_note(labels: dict[str, Any] | None) -> str:
    """One paragraph saying which encoders the labels came from, and whether this build still has them."""
    labels = labels or FORMAT_1_LABELS
    # results written before they recorded the encoders' version came from 0.1.0's
    encoders = labels.get("encoders", FIRST_ENCODERS)
    now = label_provenance()
    text = (
        f"**Labels** from the encoders of dwcp-selector {encoders} (frame format {labels['frame_format']}), "
        f"priced by cost model `{labels['cost_model']}` (`{labels['cost_fingerprint']}`)."
    )
    if (encoders, labels["frame_format"], labels["cost_fingerprint"]) != (
        now["encoders"],
        now["frame_format"],
        now["cost_fingerprint"],
    ):
        text += (
            f" This build's encoders are dwcp-selector {now['encoders']}'s (frame format "
            f"{now['frame_format']}) and it prices with "
            f"`{now['cost_model']}` (`{now['cost_fingerprint']}`): these figures describe the earlier "
            "encoders and stay as they were measured until the data is collected again with this build "
            "(`docs/decisions/0006-context-across-chunks.md`)."
        )
    return text


def rerender(name: str, out: Path, render: Callable[[dict[str, Any]], str]) -> None:
    """Rewrite a generated page from its stored results alone (``--render-only`` of the report scripts)."""
    out.write_text(render(json.loads((RESULTS / f"{name}.json").read_text())))
    print(f"wrote {out}")


#: The headline figures of an evaluation (``evaluate_artifact``) that the benches keep.
HEADLINE = ("rows", "near_optimal_rate", "decisive_accuracy", "regret_mean", "regret_p95")


def headline_figures(report: dict[str, Any]) -> dict[str, Any]:
    """An evaluation's headline figures, overall and for each link class that has rows."""
    return {
        **{k: report[k] for k in HEADLINE},
        "by_link": {
            k: {m: v.get(m) for m in HEADLINE} for k, v in report["by_link"].items() if v.get("rows")
        },
    }


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall seconds of ``repeats`` calls, and the last result (single-threaded: wall = one core)."""
    times = []
    result = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def write(name: str, doc: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def stdlib_tar(size: int) -> bytes:
    """``size`` bytes of a tarball of this interpreter's standard-library sources: real text nobody in
    the project wrote (shorter only if the standard library is)."""
    lib = Path(tarfile.__file__).parent
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(lib.glob("*.py")):
            tar.add(path, arcname=path.name)
            if buf.tell() >= size:
                break
    return buf.getvalue()[:size]
