"""The rollout controller: steps walked, each of the four guardrails rolling back within one evaluation,
no data holding, a restart resuming, the registry moved; and the controller driving real loopback
transfers through the transfer manager, where a slow challenger and an always-zstd one are rolled back
from the rows they wrote."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from dwcp_selector.errors import ConfigError
from dwcp_selector.experiment.arms import ExperimentArms, RolloutFollower
from dwcp_selector.experiment.rollout import (
    ArmMetrics,
    Guardrails,
    LiveMetrics,
    RolloutController,
    RolloutPlan,
)
from dwcp_selector.link import LinkState, SystemState
from dwcp_selector.modeling.decide import Decision
from dwcp_selector.serving import GuardedSelector, ModelRegistry, Selector, TransferManager
from dwcp_selector.telemetry import TelemetryCollector
from dwcp_selector.telemetry.store import open_store
from dwcp_selector.transport import AmstReceiver, AmstSender, Insecure

MODEL = Path(__file__).resolve().parents[1] / "models" / "selector"
GOOD = ArmMetrics(
    transfers=500,
    errors=0,
    bytes=5e9,
    seconds=50.0,
    decision_p99_s=4e-5,
    audits=40,
    near_optimal=0.99,
    speed_n=500,
    log_speed_mean=-0.2,
    log_speed_var=0.3,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def approve(table: pa.Table, plan: RolloutPlan) -> tuple[str, dict[str, Any]]:
    return "approve", {}


def _plan(**kw: Any) -> RolloutPlan:
    base: dict[str, Any] = {
        "experiment": "exp",
        "min_hold_s": 60.0,
        "min_samples_per_arm": 100,
        "interval_s": 10.0,
    }
    base.update(kw)
    return RolloutPlan(**base)


def _good(**treatment: Any) -> LiveMetrics:
    t = {**GOOD.__dict__, **treatment} if treatment else GOOD.__dict__
    return LiveMetrics(control=GOOD, treatment=ArmMetrics(**t))


def test_a_healthy_rollout_walks_every_step_and_promotes(tmp_path: Path) -> None:
    clock = Clock()
    reg = ModelRegistry(tmp_path / "reg", create=True)
    champion = reg.register(MODEL, alias="champion", why="first")
    other = tmp_path / "b"
    shutil.copytree(MODEL, other)
    (other / "MODEL_CARD.md").write_text("a retrained candidate\n")
    challenger = reg.register(other, alias="challenger", why="candidate")
    c = RolloutController.start(
        tmp_path / "state.json",
        _plan(challenger=challenger),
        clock=clock,
        registry=reg,
        gate=approve,
        read_rows=lambda: pa.table({}),
    )
    shares = [c.share]
    for _ in range(10):
        clock.now += 61
        ev = c.tick(_good())
        shares.append(c.share)
        if c.status != "running":
            break
    assert shares[:4] == [0.01, 0.10, 0.50, 1.0] and c.status == "completed"
    assert reg.aliases()["champion"] == challenger and reg.aliases()["previous"] == champion
    assert ev["action"] == "complete"


def test_the_hold_time_and_the_samples_hold_a_step(tmp_path: Path) -> None:
    clock = Clock()
    c = RolloutController.start(tmp_path / "s.json", _plan(), clock=clock, gate=approve)
    clock.now += 30
    assert c.tick(_good())["action"] == "hold" and c.share == 0.01  # 30 s of the 60 s hold
    clock.now += 60
    few = LiveMetrics(control=GOOD, treatment=ArmMetrics(**{**GOOD.__dict__, "transfers": 60}))
    ev = c.tick(few)
    assert ev["action"] == "hold" and "samples" in ev["reason"] and c.share == 0.01


@pytest.mark.parametrize(
    ("trigger", "treatment"),
    [
        ("near_optimal", {"near_optimal": 0.90, "audits": 200}),
        ("decision_p99_s", {"decision_p99_s": 3e-3}),
        ("error_rate", {"errors": 2}),  # 2 of 500: 0.4 %
        ("throughput_vs_control", {"log_speed_mean": -0.3}),  # 9.5 % slower than control
    ],
)
def test_each_roadmap_trigger_rolls_back_within_one_evaluation(
    tmp_path: Path, trigger: str, treatment: dict[str, Any]
) -> None:
    clock = Clock()
    c = RolloutController.start(tmp_path / "s.json", _plan(), clock=clock, gate=approve)
    clock.now += 61
    assert c.tick(_good())["action"] == "advance" and c.share == 0.10
    breach_at = clock.now + 5  # the challenger misbehaves from here on
    clock.now = breach_at + c.plan.interval_s  # the next evaluation
    ev = c.tick(_good(**treatment))
    assert ev["action"] == "rollback" and c.status == "rolled_back" and c.share == 0.0
    breach = c.state["breach"]
    assert [ch["name"] for ch in breach["checks"]] == [trigger]
    assert breach["checks"][0]["value"] is not None and trigger in breach["why"]
    assert breach["at"] - breach_at <= c.plan.interval_s
    assert c.state["control_policy"] == "champion"  # the champion was not at fault
    assert c.tick(_good())["action"] == "none"  # a rolled-back rollout stays rolled back


def test_a_champion_at_fault_sends_control_to_the_heuristic(tmp_path: Path) -> None:
    clock = Clock()
    c = RolloutController.start(tmp_path / "s.json", _plan(), clock=clock, gate=approve)
    bad = ArmMetrics(**{**GOOD.__dict__, "near_optimal": 0.80})
    ev = c.tick(LiveMetrics(control=bad, treatment=GOOD))
    assert ev["action"] == "rollback" and c.state["control_policy"] == "heuristic"
    follower = RolloutFollower(tmp_path / "s.json", interval_s=0)
    assert follower.control_policy == "heuristic" and follower.assignment() is not None
    assert follower.assignment().share == 0.0  # type: ignore[union-attr]


def test_consecutive_failure_limit(tmp_path: Path) -> None:
    clock = Clock()
    c = RolloutController.start(tmp_path / "s.json", _plan(failures_to_rollback=2), clock=clock, gate=approve)
    slow = _good(decision_p99_s=5e-3)
    assert c.tick(slow)["action"] == "hold" and c.status == "running"
    assert c.tick(_good())["action"] == "hold"  # a good evaluation resets the count
    assert c.tick(slow)["action"] == "hold"
    assert c.tick(slow)["action"] == "rollback"


def test_no_data_holds_and_never_passes(tmp_path: Path) -> None:
    clock = Clock()
    c = RolloutController.start(tmp_path / "s.json", _plan(), clock=clock, gate=approve)
    no_audits = _good(audits=0, near_optimal=None)
    for metrics in (LiveMetrics(ArmMetrics(), ArmMetrics()), no_audits):
        for _ in range(20):
            clock.now += 3600
            ev = c.tick(metrics)
            assert ev["action"] == "hold" and "no data" in ev["reason"]
    assert c.share == 0.01 and c.status == "running"


def test_the_gate_holds_and_rolls_back_before_full_traffic(tmp_path: Path) -> None:
    clock = Clock()
    verdicts = iter(["hold", "rollback"])

    def gate(table: pa.Table, plan: RolloutPlan) -> tuple[str, dict[str, Any]]:
        return next(verdicts), {"n": table.num_rows}

    c = RolloutController.start(
        tmp_path / "s.json", _plan(steps=(0.5, 1.0)), clock=clock, gate=gate, read_rows=lambda: pa.table({})
    )
    clock.now += 61
    ev = c.tick(_good())
    assert ev["action"] == "hold" and ev["gate"]["verdict"] == "hold" and c.share == 0.5
    clock.now += 61
    assert c.tick(_good())["action"] == "rollback" and c.share == 0.0
    assert "gate" in c.state["breach"]["why"]


def test_a_restart_resumes_where_it_was(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "s.json"
    c = RolloutController.start(path, _plan(), clock=clock, gate=approve)
    clock.now += 61
    c.tick(_good())
    clock.now += 61
    c.tick(_good())
    assert c.share == 0.50
    del c  # the controller process dies
    again = RolloutController(path, clock=clock, gate=approve, read_rows=lambda: pa.table({}))
    assert again.share == 0.50 and again.state["step"] == 2 and again.status == "running"
    clock.now += 61
    again.tick(_good())
    assert again.share == 1.0
    with pytest.raises(ConfigError, match="still running"):
        RolloutController.start(path, _plan(), clock=clock)
    again.abort("operator")
    assert RolloutFollower(path, interval_s=0).assignment().share == 0.0  # type: ignore[union-attr]
    RolloutController.start(path, _plan(experiment="exp-2"), clock=clock)  # an ended one may be replaced


def test_bad_state_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no rollout state"):
        RolloutController(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        RolloutController(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(ConfigError, match="not a rollout state"):
        RolloutController(tmp_path / "other.json")
    with pytest.raises(ConfigError, match="rise"):
        RolloutPlan("e", steps=(0.5, 0.1))
    # a sender following a missing or broken state runs no experiment, and never raises
    follower = RolloutFollower(tmp_path / "bad.json", interval_s=0)
    assert follower.assignment() is None


# -- the controller driving real transfers ------------------------------------------------------------
LINK = LinkState(capacity_bps=200e6, rtt_s=20e-3, link_type="wan")
# where zstd's encoding costs more than the wire saves: always-zstd is far from the best there
FAST = LinkState(capacity_bps=10e9, rtt_s=2e-4, link_type="dc")
NODE = SystemState(free_cores=2.0)


class SlowSelector(GuardedSelector):
    """A challenger whose every decision takes 3 ms (an overloaded or badly built model)."""

    def select(self, *args: Any, **kw: Any) -> Decision:
        t0 = time.perf_counter()
        d = super().select(*args, **kw)
        while time.perf_counter() - t0 < 3e-3:
            pass
        d.latency_s = time.perf_counter() - t0
        return d


class AlwaysZstd(GuardedSelector):
    """A challenger that always answers zstd (a model that learned one class)."""

    def select(self, *args: Any, **kw: Any) -> Decision:
        d = super().select(*args, **kw)
        return Decision("zstd", 1.0, d.tier, basic=d.basic, latency_s=d.latency_s)


@pytest.fixture
def pair() -> Iterator[tuple[AmstReceiver, AmstSender]]:
    with pytest.warns(Warning):
        a, b = Insecure(), Insecure()
    rx = AmstReceiver(security=a)
    rx.start()
    try:
        yield rx, AmstSender(rx.address, security=b)
    finally:
        rx.close()


def _read(url: str) -> pa.Table:
    with open_store(url) as store:
        return store.read_table()


def _payloads(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    text = b"".join(b"%d,%s,ok\n" % (i, b"v" * (i % 30)) for i in range(20000))
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out.append(text[int(rng.integers(0, 5000)) :])
        elif kind == 1:
            out.append(rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes())  # incompressible
        else:
            out.append(bytes(300_000))
    return out


@pytest.mark.parametrize("challenger", ["slow", "zstd"])
def test_a_bad_challenger_on_real_transfers_is_rolled_back(
    pair: tuple[AmstReceiver, AmstSender], tmp_path: Path, challenger: str
) -> None:
    rx, tx = pair
    url = f"sqlite:///{tmp_path / 't.db'}"
    state = tmp_path / "rollout.json"
    plan = _plan(
        steps=(0.5, 1.0),
        min_hold_s=3600,
        guardrails=Guardrails(min_transfers=20, min_audits=10),
        unit="transfer",
    )
    controller = RolloutController.start(state, plan, gate=approve, read_rows=lambda: _read(url))
    champion = GuardedSelector(Selector(MODEL, host_profile=None))
    bad = (SlowSelector if challenger == "slow" else AlwaysZstd)(Selector(MODEL, host_profile=None))
    arms = ExperimentArms(RolloutFollower(state, interval_s=0), champion, bad)
    collector = TelemetryCollector(url, enabled=True, flush_interval_s=0.02)
    manager = TransferManager(
        tx,
        None,
        collector=collector,
        experiment=arms,
        audit_rate=0.0,
        arm_audit_rates={"treatment": 1.0},  # the small arm audited whole, control not at all
        host_profile=None,
    )
    link = LINK if challenger == "slow" else FAST
    for data in _payloads(60):
        r = manager.send(data, link, NODE, payload_type="logs_json", resource_id="r")
        assert r.report is not None and bytes(rx.wait(r.report.transfer_id).data) == data
    assert manager.wait_audits(60)
    assert collector.flush(30)
    rows = _read(url)
    arms_seen = set(rows.column("arm").to_pylist())
    assert arms_seen == {"control", "treatment"}
    audited = {r["arm"] for r in rows.to_pylist() if r["source"] == "audit"}
    assert audited == {"treatment"}
    t0 = time.monotonic()
    ev = controller.tick()
    took = time.monotonic() - t0
    near = ev["metrics"]["treatment"]["near_optimal"]
    assert ev["action"] == "rollback", (near, ev["checks"])
    trigger = "decision_p99_s" if challenger == "slow" else "near_optimal"
    assert trigger in [c["name"] for c in controller.state["breach"]["checks"]]
    # every sender follows the rollback: the next transfers are all control
    after = [manager.send(d, link, NODE, payload_type="logs_json", resource_id="r") for d in _payloads(6)]
    manager.close()
    collector.close()
    assert took < 5.0
    ids = {r.request_id for r in after}
    arms_after = {row["arm"] for row in _read(url).to_pylist() if row["request_id"] in ids}
    assert arms_after == {"control"}


def test_the_rollout_command_line(tmp_path: Path, pair: tuple[AmstReceiver, AmstSender]) -> None:
    from .test_cli import assert_clean_failure, run

    state = tmp_path / "r.json"
    url = f"sqlite:///{tmp_path / 't.db'}"
    started = json.loads(
        run("rollout", "start", "--state", state, "--experiment", "e1", "--min-hold", "0", "--json").stdout
    )
    assert started["status"] == "running" and started["share"] == 0.01
    assert_clean_failure(
        run("rollout", "start", "--state", state, "--experiment", "e2", check=False), "still running"
    )
    # a store with no rows of the experiment: the evaluation holds (no data), never passes
    _, tx = pair
    collector = TelemetryCollector(url, enabled=True)
    TransferManager(tx, None, collector=collector, host_profile=None).send(b"x" * 5000, LINK, NODE)
    collector.close()
    ticked = json.loads(run("rollout", "tick", "--state", state, "--store", url, "--json").stdout)
    assert ticked["status"] == "running" and ticked["evaluations"][0]["action"] == "hold"
    assert "no data" in ticked["evaluations"][0]["reason"]
    assert "running" in run("rollout", "status", "--state", state).stdout
    aborted = json.loads(run("rollout", "abort", "--state", state, "--why", "operator", "--json").stdout)
    assert aborted["status"] == "aborted" and aborted["share"] == 0.0
    assert_clean_failure(run("rollout", "abort", "--state", state, "--why", "x", check=False), "not running")
    assert_clean_failure(
        run("rollout", "start", "--state", state, "--experiment", "e", "--steps", "10,5", check=False),
        "rising",
    )
    assert_clean_failure(
        run("rollout", "status", "--state", tmp_path / "none.json", check=False), "no rollout"
    )
    other = tmp_path / "r2.json"
    run("rollout", "start", "--state", other, "--experiment", "e3")
    assert_clean_failure(
        run("rollout", "tick", "--state", other, "--store", f"sqlite:///{tmp_path / 'no.db'}", check=False),
        "no SQLite",
    )


def test_a_few_audits_do_not_trip_the_near_optimal_guardrail(tmp_path: Path) -> None:
    """One miss in 20 audits is 95 %; 18 of 20 is 90 % but could be chance: neither rolls back, while
    the same 90 % over 300 audits does."""
    clock = Clock()
    c = RolloutController.start(tmp_path / "s.json", _plan(), clock=clock, gate=approve)
    for audits, rate in ((20, 0.95), (20, 0.90)):
        ev = c.tick(_good(audits=audits, near_optimal=rate))
        assert ev["action"] != "rollback", ev
    assert c.tick(_good(audits=300, near_optimal=0.90))["action"] == "rollback"


def test_a_throughput_dip_within_the_noise_holds(tmp_path: Path) -> None:
    """3 % slower on 40 transfers a side is within the noise of per-transfer speeds: no rollback; the
    same dip on 20,000 transfers a side is a breach."""
    clock = Clock()
    c = RolloutController.start(tmp_path / "s.json", _plan(), clock=clock, gate=approve)
    few = {"speed_n": 40, "transfers": 60}
    control = ArmMetrics(**{**GOOD.__dict__, **few})
    ev = c.tick(LiveMetrics(control, ArmMetrics(**{**GOOD.__dict__, **few, "log_speed_mean": -0.23})))
    assert ev["action"] != "rollback"
    many = {"speed_n": 20000, "transfers": 20000}
    control = ArmMetrics(**{**GOOD.__dict__, **many})
    ev = c.tick(LiveMetrics(control, ArmMetrics(**{**GOOD.__dict__, **many, "log_speed_mean": -0.23})))
    assert ev["action"] == "rollback"


def test_the_heuristic_as_control_is_not_guarded(tmp_path: Path) -> None:
    """Model against the rule heuristic: the heuristic is the fallback itself, so its own near-optimal
    rate (lower than a model's, by design) is no fault to roll back for."""
    clock = Clock()
    c = RolloutController.start(tmp_path / "s.json", _plan(control="heuristic"), clock=clock, gate=approve)
    weak = ArmMetrics(**{**GOOD.__dict__, "near_optimal": 0.70, "audits": 300})
    clock.now += 61
    ev = c.tick(LiveMetrics(control=weak, treatment=GOOD))
    assert ev["action"] == "advance" and not [ch for ch in ev["checks"] if ch["arm"] == "control"]
    with pytest.raises(ConfigError, match="control"):
        RolloutPlan("e", control="nobody")
