"""``demo``: the main job on the embedded default.

Today: every strategy measured for real on a few generated payloads of each family, then priced on the
typical link of each class, so one table shows which encoder wins where and by how much.
"""

from __future__ import annotations

from typing import Any

import click
from rich.progress import Progress
from rich.table import Table

from ..costmodel import CostModel, Oracle
from ..link import LINK_CLASSES, SystemState
from ..measure import measure_strategy
from ..strategies import Baseline, PayloadCodec
from ..workload import demo_payloads
from ._app import cli, emit, stdout

__all__ = ["demo_cmd"]


@cli.command("demo")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--free-cores", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def demo_cmd(seed: int, free_cores: float, as_json: bool) -> None:
    """Measure every strategy on generated payloads and show the oracle's choice per link class."""
    codec = PayloadCodec()
    codec.warm_up()
    cost_model = CostModel()
    oracle = Oracle(cost_model)
    system = SystemState(free_cores=free_cores)
    payloads = demo_payloads(seed)
    rows: list[dict[str, Any]] = []
    with Progress(transient=True, disable=as_json) as progress:
        task = progress.add_task("measuring strategies", total=len(payloads))
        for name, data, base_bytes in payloads:
            baseline = Baseline("demo-resource", base_bytes) if base_bytes is not None else None
            offered = codec.registry.offered(len(data), has_baseline=baseline is not None)
            runs = {s: measure_strategy(codec, data, s, baseline=baseline) for s in offered}
            per_link = {}
            for link_name, cls in LINK_CLASSES.items():
                link = cls.typical
                costs = cost_model.costs(len(data), {s: r.measurement for s, r in runs.items()}, link, system)
                decision = oracle.decide(costs)
                per_link[link_name] = {
                    "oracle": decision.label,
                    "cost_s": decision.cost_s,
                    "none_cost_s": costs["none"],
                    "costs": costs,
                }
            rows.append(
                {
                    "payload": name,
                    "bytes": len(data),
                    "strategies": {
                        s: {
                            "compressed_bytes": r.compressed_bytes,
                            "encode_s": r.encode_s,
                            "decode_s": r.decode_s,
                            "roundtrip": r.roundtrip,
                        }
                        for s, r in runs.items()
                    },
                    "links": per_link,
                }
            )
            progress.advance(task)

    def human() -> None:
        t1 = Table(
            title="Strategies measured for real (ratio, encode MB/s, decode MB/s)", title_justify="left"
        )
        t1.add_column("payload")
        for s in codec.registry.names():
            t1.add_column(s, justify="right")
        for row in rows:
            cells = []
            for s in codec.registry.names():
                r = row["strategies"].get(s)
                if r is None:
                    cells.append("-")
                    continue
                ratio = row["bytes"] / r["compressed_bytes"]
                enc = row["bytes"] / r["encode_s"] / 1e6 if r["encode_s"] > 0 else float("inf")
                dec = row["bytes"] / r["decode_s"] / 1e6 if r["decode_s"] > 0 else float("inf")
                cells.append(f"{ratio:.1f}× {enc:,.0f} {dec:,.0f}")
            t1.add_row(row["payload"], *cells)
        stdout.print(t1)
        t2 = Table(
            title=f"Oracle per link class (typical link, {free_cores:g} free cores): choice, time vs none",
            title_justify="left",
        )
        t2.add_column("payload")
        for link_name, cls in LINK_CLASSES.items():
            link = cls.typical
            t2.add_column(
                f"{link_name} ({link.capacity_bps / 1e6:,.0f} Mbit/s, {link.rtt_s * 1e3:.2g} ms)",
                justify="right",
            )
        for row in rows:
            cells = []
            for link_name in LINK_CLASSES:
                d = row["links"][link_name]
                speedup = d["none_cost_s"] / d["cost_s"]
                cells.append(f"{d['oracle']} {d['cost_s'] * 1e3:,.2f} ms ({speedup:.1f}× none)")
            t2.add_row(row["payload"], *cells)
        stdout.print(t2)

    emit(
        as_json,
        {
            "seed": seed,
            "free_cores": free_cores,
            "cost_model": cost_model.params.fingerprint,
            "payloads": rows,
        },
        human,
    )
