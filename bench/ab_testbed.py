"""The A/B test and the rollout on real transfers over shaped links (issue 14, item 5).

Two network namespaces joined by a veth pair (``bench/testbed.py``), the sender's egress shaped with tbf,
each node one process pinned to one core. The sender node runs the :class:`TransferManager` on the
staging workload's payloads (generated families mixed with this machine's real files, versions of a
resource sent against the previous one), its collector writing to one SQLite store; the receiver node
runs an :class:`AmstReceiver` keeping baselines. This process drives them and judges from the store:

1. **A/B per link speed**: a 50/50 split by transfer of the shipped model (treatment) against the rule
   heuristic (control), ``--transfers`` transfers per speed; the analysis (``dwcp-selector ab analyze``'s
   ``analyze``: throughput as Σ bytes / Σ seconds with a bootstrap CI, Welch on log speed, the gate);
2. **a rollout** at one speed: the rollout controller walking 1 → 10 → 50 → 100 % with short holds,
   guardrails on the live rows (audits for the near-optimal rate), the A/B gate before 100 %;
3. **bad challengers** rolled back by a guardrail: one that always picks zstd (on a fast link, where
   zstd is far from the best), one whose decisions take 3 ms; the time from the first bad transfer to the
   rollback is reported.

    python bench/ab_testbed.py [--rates 50,200,1000] [--transfers 600] [--quick]

Needs root (network namespaces). Prints tables and writes ``bench/results/ab_testbed.json`` and the HTML
reports of each A/B under ``bench/results/ab/``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import testbed as tb
from _common import RESULTS, machine

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "selector"
MiB = 1 << 20


class AbTestbed(tb.Testbed):
    """The testbed, with this script's workers in the namespaces."""

    def worker_argv(self, ns: str, core: int, role: str) -> list[str]:
        script = str(Path(__file__).resolve())
        return ["ip", "netns", "exec", ns, "taskset", "-c", str(core), self.python, script, "worker", role]


# -- the worker processes -----------------------------------------------------------------------------
def _worker_main(role: str) -> int:
    out = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout = sys.stderr
    import numpy as np  # noqa: F401 - loaded before the timed work

    from dwcp_selector.strategies.baseline import BaselineStore
    from dwcp_selector.transport import AmstReceiver, Insecure

    def reply(doc: dict[str, Any]) -> None:
        out.write(json.dumps(doc) + "\n")

    if role == "receiver":
        rx = AmstReceiver(
            (tb.RECEIVER_ADDR, tb.AMST_PORT),
            security=Insecure(),
            baselines=BaselineStore(),
            timeout_s=60,
            retain_bytes=8 * MiB,  # nobody collects: the sender's verified RESULT is the proof
        )
        rx.start()
        reply({"ready": True, "role": role})
        for line in sys.stdin:
            if json.loads(line).get("op") == "quit":
                reply({"ok": True})
                break
            reply({"error": "the receiver takes no commands"})
        rx.close()
        return 0
    return _sender(reply)


def _sender(reply: Any) -> int:
    import xxhash

    from dwcp_selector.experiment import Assignment
    from dwcp_selector.experiment.arms import ExperimentArms, RolloutFollower
    from dwcp_selector.link import LinkState, SystemState
    from dwcp_selector.modeling.decide import Decision
    from dwcp_selector.serving import GuardedSelector, Selector, TransferManager
    from dwcp_selector.strategies import Baseline
    from dwcp_selector.telemetry import TelemetryCollector
    from dwcp_selector.transport import AmstSender, Insecure
    from dwcp_selector.workload.payloads import default_pools
    from dwcp_selector.workload.staging import ScenarioMix, plan_sessions, session_transfers
    from dwcp_selector.workload.system_corpus import SystemCorpus

    class AlwaysZstd(GuardedSelector):
        def select(self, *a: Any, **kw: Any) -> Decision:
            d = super().select(*a, **kw)
            return Decision("zstd", 1.0, d.tier, basic=d.basic, latency_s=d.latency_s)

    class Slow(GuardedSelector):
        def select(self, *a: Any, **kw: Any) -> Decision:
            t0 = time.perf_counter()
            d = super().select(*a, **kw)
            while time.perf_counter() - t0 < 3e-3:
                pass
            d.latency_s = time.perf_counter() - t0
            return d

    kinds = {"model": GuardedSelector, "zstd": AlwaysZstd, "slow": Slow}
    tx = AmstSender((tb.RECEIVER_ADDR, tb.AMST_PORT), security=Insecure(), timeout_s=60)
    mix = ScenarioMix(min_bytes=16 << 10, max_bytes=2 * MiB, mean_versions=4.0)
    pools = default_pools(7)
    system = SystemCorpus()
    feed: Any = None
    sent: dict[str, int] = {}  # resource -> checksum of the version the receiver holds
    manager: TransferManager | None = None
    collector: TelemetryCollector | None = None

    def transfers(seed: int) -> Any:
        start = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
        for session in plan_sessions(seed, 20_000, mix, start, system=True):
            yield from session_transfers(session, seed, pools, None, system)

    reply({"ready": True, "role": "sender"})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            if op == "quit":
                if manager is not None:
                    manager.close(30)
                if collector is not None:
                    collector.close(60)
                reply({"ok": True})
                break
            if op == "setup":
                if manager is not None:
                    manager.close(30)
                if collector is None:
                    collector = TelemetryCollector(cmd["store"], enabled=True, flush_interval_s=0.2)
                control = None if cmd["control"] == "heuristic" else GuardedSelector(Selector(MODEL))
                treatment = kinds[cmd["treatment"]](Selector(MODEL))
                if cmd.get("state"):
                    source: Any = RolloutFollower(cmd["state"], interval_s=0.2)
                else:
                    source = Assignment(cmd["experiment"], float(cmd["share"]), unit="transfer")
                arms = ExperimentArms(source, control, treatment)
                manager = TransferManager(
                    tx,
                    None,
                    collector=collector,
                    experiment=arms,
                    audit_rate=float(cmd["audit_rate"]),
                    arm_audit_rates=cmd.get("arm_audit_rates"),
                )
                feed = transfers(int(cmd["seed"]))
                reply({"ok": True})
            elif op == "run":
                assert manager is not None and feed is not None
                link = LinkState(capacity_bps=float(cmd["capacity_bps"]), rtt_s=float(cmd["rtt_s"]))
                node = SystemState(free_cores=1.0)
                done = failed = 0
                t0 = time.perf_counter()
                while done < int(cmd["n"]):
                    t = next(feed)
                    rid = t.session_id
                    base = None
                    if t.baseline is not None and sent.get(rid) == xxhash.xxh3_64_intdigest(t.baseline):
                        base = Baseline(rid, t.baseline)
                    try:
                        manager.send(
                            t.payload,
                            link,
                            node,
                            baseline=base,
                            payload_type=t.payload_type,
                            resource_id=rid,
                            session_id=rid,
                            version=t.version,
                        )
                        sent[rid] = xxhash.xxh3_64_intdigest(t.payload)
                    except Exception:  # noqa: BLE001 - counted (and in the store as used_error)
                        failed += 1
                    done += 1
                manager.wait_audits(120)
                assert collector is not None
                collector.flush(60)
                reply({"done": done, "failed": failed, "seconds": time.perf_counter() - t0})
            else:
                reply({"error": f"unknown op {op!r}"})
        except Exception as exc:  # noqa: BLE001 - the driver reports it
            reply({"error": f"{type(exc).__name__}: {exc}"})
    return 0


# -- the driver -----------------------------------------------------------------------------------------
def _read(url: str, experiment: str | None = None) -> Any:
    import pyarrow.compute as pc

    from dwcp_selector.telemetry.store import open_store

    with open_store(url, must_exist=True) as s:
        table = s.read_table()
    if experiment is not None:
        table = table.filter(pc.fill_null(pc.equal(table.column("experiment"), experiment), False))
    return table


def _analysis(url: str, experiment: str, planned: int, html: Path | None) -> dict[str, Any]:
    from dwcp_selector.experiment import analysis

    rows = _read(url, experiment)
    obs = analysis.Observations.from_table(rows, unit_column="request_id")  # the split is by transfer
    result = analysis.analyze(obs, analysis.Design(experiment, planned))
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        analysis.write_html(result, html)
    doc: dict[str, Any] = result.to_dict()
    return doc


def _rtt(bed: tb.Testbed) -> float:
    return 2e-4  # the veth pair's RTT (measured by bench/cost_model_transfers.py: 0.08-0.3 ms)


def ab_per_rate(args: argparse.Namespace, store: str, logs: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rate_mbit in args.rates:
        name = f"ab-{rate_mbit:g}M"
        with AbTestbed(rate_mbit * 1e6, log_dir=logs) as bed:
            assert bed.sender is not None
            bed.sender.call(
                "setup",
                store=store,
                experiment=name,
                share=0.5,
                control="heuristic",
                treatment="model",
                audit_rate=args.audit_rate,
                seed=int(rate_mbit),
                timeout=120,
            )
            t0 = time.monotonic()
            ran = bed.sender.call(
                "run", n=args.transfers, capacity_bps=rate_mbit * 1e6, rtt_s=_rtt(bed), timeout=3600
            )
            elapsed = time.monotonic() - t0
        html = RESULTS / "ab" / f"{name}.html"
        analysis = _analysis(store, name, args.transfers // 2, html)
        out[name] = {"rate_mbit": rate_mbit, "run": ran, "elapsed_s": elapsed, "analysis": analysis}
        print(f"{name}: {ran['done']} transfers ({ran['failed']} failed) in {elapsed:.0f} s", flush=True)
    return out


def rollout(
    args: argparse.Namespace,
    store: str,
    logs: Path,
    tmp: Path,
    treatment: str,
    rate_mbit: float,
    steps: tuple[float, ...],
    batch: int,
    max_batches: int,
    control: str = "champion",
) -> dict[str, Any]:
    """One rollout of ``treatment`` against ``control`` (``champion``: the shipped model; ``heuristic``)."""
    from dwcp_selector.experiment.rollout import Guardrails, RolloutController, RolloutPlan

    name = f"rollout-{treatment}-{rate_mbit:g}M"
    state = tmp / f"{name}.json"
    plan = RolloutPlan(
        experiment=name,
        steps=steps,
        min_hold_s=args.hold_s,
        min_samples_per_arm=20,
        interval_s=1.0,
        unit="transfer",
        planned_units_per_arm=args.transfers // 2,
        guardrails=Guardrails(min_transfers=20, min_audits=10),
        control=control,
    )
    controller = RolloutController.start(state, plan, read_rows=lambda: _read(store, name))
    timeline: list[dict[str, Any]] = []
    first_bad: float | None = None
    with AbTestbed(rate_mbit * 1e6, log_dir=logs) as bed:
        assert bed.sender is not None
        bed.sender.call(
            "setup",
            store=store,
            experiment=name,
            state=str(state),
            control="model" if control == "champion" else "heuristic",
            treatment=treatment,
            audit_rate=args.audit_rate,
            arm_audit_rates={"treatment": 1.0},
            seed=int(rate_mbit) + 1000,
            timeout=120,
        )
        for _ in range(max_batches):
            share = controller.share
            if first_bad is None and share > 0:
                first_bad = time.time()
            ran = bed.sender.call("run", n=batch, capacity_bps=rate_mbit * 1e6, rtt_s=_rtt(bed), timeout=3600)
            ev = controller.tick()
            timeline.append(
                {
                    "at": time.time(),
                    "share_before": share,
                    "share_after": controller.share,
                    "action": ev.get("action"),
                    "reason": ev.get("reason"),
                    "transfers": ran["done"],
                    "gate": (ev.get("gate") or {}).get("verdict"),
                }
            )
            print(f"{name}: {share * 100:g} % -> {ev.get('action')} {ev.get('reason') or ''}", flush=True)
            if controller.status != "running":
                break
    summary = controller.summary()
    breach = summary.get("breach")
    return {
        "experiment": name,
        "rate_mbit": rate_mbit,
        "status": summary["status"],
        "timeline": timeline,
        "control": control,
        "breach": breach,
        "first_treatment_at": first_bad,
        "breach_to_rollback_s": (breach["at"] - first_bad) if breach and first_bad else None,
        "events": summary["events"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("worker", help="(internal) one node")
    w.add_argument("role", choices=("sender", "receiver"))
    ap.add_argument("--rates", default="50,200,1000", help="Mbit/s, comma separated")
    ap.add_argument("--transfers", type=int, default=600, help="per A/B link speed")
    ap.add_argument("--audit-rate", type=float, default=0.1)
    ap.add_argument("--rollout-rates", default="50,1000", help="Mbit/s of the rollout walks")
    ap.add_argument("--hold-s", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="fewer transfers (a smoke run)")
    args = ap.parse_args(argv)
    if args.cmd == "worker":
        return _worker_main(args.role)
    args.rates = [float(x) for x in str(args.rates).split(",") if x.strip()]
    args.rollout_rates = [float(x) for x in str(args.rollout_rates).split(",") if x.strip()]
    if args.quick:
        args.transfers = min(args.transfers, 60)
    ok, why = tb.netns_available()
    if not ok:
        print(f"not available: {why}")
        return 1
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as d, tb.terminate_cleanly():
        tmp = Path(d)
        store = f"sqlite:///{tmp / 'ab.db'}"
        logs = tmp / "logs"
        ab = ab_per_rate(args, store, logs)
        walks = [
            rollout(args, store, logs, tmp, "model", rate, (0.01, 0.10, 0.50, 1.0), 100, 80, "heuristic")
            for rate in args.rollout_rates
        ]
        bad = [
            rollout(args, store, logs, tmp, "zstd", 1000.0, (0.10, 0.50, 1.0), 40, 20),
            rollout(args, store, logs, tmp, "slow", args.rollout_rates[0], (0.10, 0.50, 1.0), 40, 20),
        ]
    doc = {
        "machine": machine(),
        "command": "python bench/ab_testbed.py " + " ".join(argv or sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "args": {k: v for k, v in vars(args).items() if k != "cmd"},
        "ab": ab,
        "rollouts": walks,
        "bad_challengers": bad,
        "elapsed_s": time.monotonic() - t0,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "ab_testbed.json"
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    _print(doc)
    print(f"\nwrote {path}")
    return 0


def _print(doc: dict[str, Any]) -> None:
    print(
        f"\n{'A/B (model vs heuristic)':18} {'transfers':>9} {'speed gain':>10} {'95 % CI':>20} {'p':>9} "
        f"{'throughput':>10} {'95 % CI':>20} {'verdict':>8}"
    )
    for name, r in doc["ab"].items():
        a = r["analysis"]
        sp, tp = a.get("speed") or {}, a.get("throughput") or {}
        sci, tci = sp.get("ci95") or [None, None], tp.get("ci95") or [None, None]
        print(
            f"{name:18} {r['run']['done']:9d} {_pct(sp.get('gain')):>10} "
            f"{_pct(sci[0]) + ' .. ' + _pct(sci[1]):>20} "
            f"{_num(sp.get('p_one_sided')):>9} {_pct(tp.get('gain')):>10} "
            f"{_pct(tci[0]) + ' .. ' + _pct(tci[1]):>20} {a.get('verdict', '?'):>8}"
        )
    for w in doc["rollouts"]:
        steps = [
            f"{e['share_before'] * 100:g}%:{e['action']}" for e in w["timeline"] if e["action"] != "hold"
        ]
        why = (w.get("breach") or {}).get("why") or ""
        print(f"\n{w['experiment']}: {w['status']} {' '.join(steps)} {why}")
    for b in doc["bad_challengers"]:
        why = (b.get("breach") or {}).get("why")
        print(
            f"{b['experiment']}: {b['status']} {_num(b.get('breach_to_rollback_s'))} s "
            f"after its first transfer ({why})"
        )


def _pct(x: Any) -> str:
    return f"{x * 100:+.1f} %" if isinstance(x, int | float) else "-"


def _num(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, int | float) else "-"


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
