"""The transfer path: estimate, select, encode, send over AMST, record (the DWCP manager's hooks).

:meth:`TransferManager.send` runs one transfer:

1. **select** - the :class:`~dwcp_selector.serving.GuardedSelector` decides (model, fleet cache, or the
   rule heuristic with the reason; never an exception), within its decision budget. Without a selector
   the rule heuristic itself acts (a heuristic-only node, or the control arm);
2. **encode and send** - :meth:`AmstSender.send <dwcp_selector.transport.AmstSender.send>` encodes the
   chunks on its stream threads and returns once the receiver has verified the payload. An encoder that
   fails (a :class:`~dwcp_selector.errors.StrategyError`) costs the transfer one retry, sent raw; a
   transport failure is recorded, then raised to the caller: the payload did not arrive;
3. **record** - one telemetry record through the :class:`~dwcp_selector.telemetry.TelemetryCollector`
   (queued, never blocking): the decision-time features, the decision (strategy, tier, fallback reason,
   model version, decision seconds) and the *achieved* outcome (wire bytes, encoder seconds, send seconds,
   the receiver's decode seconds, error). ``source`` is ``production``, ``shadow`` when a shadow
   candidate is configured, ``ab`` when the caller names an experiment.

**Fleet cache** (``cache=``, a :class:`~dwcp_selector.serving.cache.DecisionCache`, the same one the
GuardedSelector shares its rich-tier decisions through): the resource's moving averages of what each
strategy achieved (the ``f_prev_*`` features) are shared with the other nodes shipping that resource
(read when this node has none, written after each transfer), and a completed transfer of a resource
marks it as the resource's new baseline version, so decisions and statistics cached for the old one are
no longer read anywhere. Every Redis call is bounded by the cache's budget (2 ms) and skipped while its
breaker is open, so Redis slow or down costs a transfer at most three budgets (6 ms) before the breaker
opens after three failures, and nothing after; ``cache_wait_max_s`` records the longest wait.

**Shadow mode**: ``shadow=`` another GuardedSelector (the candidate). It decides on the same payload
*after* the transfer (so it costs the transfer nothing), and its choice and model version are logged
beside what the acting policy did.

**Audit samples**: a share ``audit_rate`` of transfers (chosen by a hash of the request id, so the
choice is reproducible and independent of the payload) is re-measured by a low-priority background
thread: every offered strategy encoded and decoded for real on the payload, or on a spread sample of at
most ``audit_max_bytes`` scaled to the whole (flag ``SAMPLED``), priced by the cost model under the
transfer's link and node, labelled by the oracle. The audit record (``source="audit"``) repeats the
transfer's record with the outcomes and labels filled in and ``parent_request_id`` naming the transfer,
so the production near-optimal rate is ``cost[used_strategy] <= oracle_cost * (1 + tie tolerance)`` over
audit rows. The sample is copied when the transfer ends (the caller may reuse its buffer); the queue is
bounded in bytes, and an audit that does not fit is dropped and counted, never waited for.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import math
import os
import queue
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import xxhash

from .._types import BytesLike
from .._version import __version__
from ..costmodel import CostModel, Oracle
from ..errors import ConfigError, StrategyError
from ..experiment.arms import ExperimentArms
from ..features import FEATURE_VERSION, BasicFeatures, RichFeatures, basic_features
from ..hostprofile import HostProfile, load_or_calibrate
from ..link import LINK_CLASSES, LinkState, SystemState
from ..measure import default_repeats, measure_strategies, spread_offsets
from ..modeling.baselines import heuristic_rule
from ..modeling.decide import Decision
from ..strategies import Baseline, PayloadCodec
from ..strategies.base import as_view
from ..strategies.hde import HdePlan
from ..telemetry.collector import TelemetryCollector
from ..telemetry.columns import feature_columns, link_columns, measurement_flags, outcome_columns
from ..telemetry.schema import SCHEMA_VERSION, STRATEGIES, QualityFlag
from ..telemetry.staging import host_columns
from ..transport.sender import AmstSender, SendReport
from .cache import DecisionCache
from .guarded import GuardedSelector
from .registry import content_id

__all__ = ["DEFAULT_AUDIT_MAX_BYTES", "DEFAULT_AUDIT_RATE", "AuditStats", "TransferManager", "TransferResult"]

DEFAULT_AUDIT_RATE = 0.01
#: Audits measure at most this much of a payload (a spread sample beyond it): 4 strategies on 4 MiB take
#: about 0.1 s of one core here, so a 1 % audit rate costs well under 1 % of a node's CPU.
DEFAULT_AUDIT_MAX_BYTES = 4 << 20
DEFAULT_AUDIT_QUEUE_BYTES = 64 << 20
_AUDIT_PIECES = 8
_HISTORY_RESOURCES = 10_000
_EWMA = 0.5
_NAMESPACE = uuid.UUID("7d1c1f2e-3b0a-4f8e-9a57-5f2b8c6d0e43")
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TransferResult:
    """One transfer as the manager saw it."""

    request_id: str
    strategy: str
    decision: Decision
    report: SendReport | None
    time_s: float  # decision + send, end to end
    error: str | None = None  # set when the chosen strategy failed and the payload went raw
    shadow: Decision | None = None
    audited: bool = False


@dataclass
class AuditStats:
    queued: int = 0
    done: int = 0
    dropped_full: int = 0
    failed: int = 0
    last_error: str | None = None
    recorded: int = 0


@dataclass(slots=True)
class _AuditJob:
    record: dict[str, Any]
    sample: bytes
    base_sample: bytes | None
    payload_bytes: int
    sampled: bool
    link: LinkState
    system: SystemState
    payload_type: str
    reserved: int  # bytes of the queue's budget this job holds until it is done


def link_class(link: LinkState) -> str:
    """The link's declared class, else the class whose typical capacity and RTT are nearest (log scale)."""
    if link.link_type in LINK_CLASSES:
        return link.link_type

    def distance(name: str) -> float:
        t = LINK_CLASSES[name].typical
        return abs(math.log(link.capacity_bps / t.capacity_bps)) + abs(math.log(link.rtt_s / t.rtt_s))

    return min(LINK_CLASSES, key=distance)


def spread_sample(
    payload: BytesLike, baseline: BytesLike | None, limit: int, pieces: int = _AUDIT_PIECES
) -> tuple[bytes, bytes | None, bool]:
    """At most ``limit`` bytes of ``payload`` in ``pieces`` spread pieces, the baseline at the same offsets;
    the whole payload (copied) when it fits. Returns (sample, baseline sample, sampled)."""
    view = as_view(payload)
    base = as_view(baseline) if baseline is not None else None
    n = len(view)
    if n <= limit:
        # the baseline is bounded too: a small new version of a huge resource keeps its first bytes
        cut = base is not None and len(base) > limit
        return bytes(view), (bytes(base[:limit]) if base is not None else None), cut
    piece = max(1, limit // pieces)
    offsets = spread_offsets(n, piece, pieces)
    sample = b"".join(bytes(view[o : o + piece]) for o in offsets)
    base_sample = b"".join(bytes(base[o : o + piece]) for o in offsets) if base is not None else None
    return sample, base_sample, True


class TransferManager:
    """Selects, sends and records every transfer of a node; see the module docstring.

    ``selector``: the acting policy (``None``: the rule heuristic acts). ``collector``: where records go
    (``None``: none are kept; audits then do not run). ``host_profile``: this node's speed profile for
    the records' ``f_host_*`` columns (``"auto"``: the cached one, or ``None`` when none is cached: the
    transfer path never measures). ``audit_rate``: share of transfers re-measured in the background;
    ``arm_audit_rates`` overrides it per experiment arm (a rollout audits its small treatment arm more,
    so the near-optimal guardrail has data early).
    """

    def __init__(
        self,
        sender: AmstSender,
        selector: GuardedSelector | None,
        *,
        collector: TelemetryCollector | None = None,
        shadow: GuardedSelector | None = None,
        audit_rate: float = DEFAULT_AUDIT_RATE,
        audit_max_bytes: int = DEFAULT_AUDIT_MAX_BYTES,
        audit_queue_bytes: int = DEFAULT_AUDIT_QUEUE_BYTES,
        cost_model: CostModel | None = None,
        host_profile: HostProfile | Literal["auto"] | None = "auto",
        codec: PayloadCodec | None = None,
        cache: DecisionCache | None = None,
        experiment: ExperimentArms | None = None,
        node_id: str | None = None,
        arm_audit_rates: Mapping[str, float] | None = None,
    ) -> None:
        if not 0.0 <= audit_rate <= 1.0:
            raise ConfigError(f"audit rate must be in [0, 1], got {audit_rate}")
        if audit_max_bytes < _AUDIT_PIECES or audit_queue_bytes < audit_max_bytes:
            raise ConfigError("audit_max_bytes must be at least 8 and audit_queue_bytes at least that")
        self.sender = sender
        self.selector = selector
        self.collector = collector
        self.shadow = shadow
        self.audit_rate = audit_rate
        self.audit_max_bytes = audit_max_bytes
        self.audit_queue_bytes = audit_queue_bytes
        self.cost_model = cost_model or sender.cost_model
        self._cost_params = self.cost_model.params.fingerprint
        profile = load_or_calibrate(measure=False) if host_profile == "auto" else host_profile
        self.host_profile = profile
        self._host = host_columns(profile)
        self.codec = codec or PayloadCodec()
        self.cache = cache
        self.experiment = experiment
        self.arm_audit_rates = dict(arm_audit_rates or {})
        if any(not 0.0 <= r <= 1.0 for r in self.arm_audit_rates.values()):
            raise ConfigError(f"audit rates must be in [0, 1], got {self.arm_audit_rates}")
        self.node_id = node_id or socket.gethostname()
        self.cache_wait_max_s = 0.0
        self.audits = AuditStats()
        self._versions: dict[tuple[str, int], str | None] = {}
        self._history: OrderedDict[str, dict[str, float | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._audit_q: queue.Queue[_AuditJob | None] = queue.Queue()
        self._audit_bytes = 0
        self._audit_thread: threading.Thread | None = None
        self._closed = False

    # -- the transfer path -----------------------------------------------------------------------------
    def decide(
        self,
        payload: BytesLike,
        link: LinkState,
        system: SystemState,
        *,
        baseline: Baseline | None = None,
        payload_type: str = "other",
        resource_id: str | None = None,
        selector: GuardedSelector | None | Literal["default"] = "default",
    ) -> Decision:
        """The acting policy's decision for this transfer (what :meth:`send` acts on): ``selector``'s
        (default: the manager's; ``None``: the rule heuristic)."""
        history = self._history_of(resource_id) if resource_id else None
        base = baseline.data if baseline is not None else None
        sel = self.selector if selector == "default" else selector
        if sel is None:
            t0 = time.perf_counter()
            b = basic_features(payload, base)
            choice = heuristic_rule(len(payload), b.entropy, b.has_baseline, b.similarity_pages, link)
            return Decision(choice, 0.0, "heuristic", basic=b, latency_s=time.perf_counter() - t0)
        d = sel.select(
            payload,
            link,
            system,
            baseline=base,
            payload_type=payload_type,
            resource_id=resource_id,
            history=history,
        )
        if d.strategy not in self.codec.registry.offered(len(payload), has_baseline=baseline is not None):
            # a cached or fleet decision for a resource version this node has no baseline of
            d = sel.rule_decision(
                "feature_error", len(payload), d.basic or basic_features(payload, base), link
            )
        return d

    def send(
        self,
        payload: BytesLike,
        link: LinkState,
        system: SystemState,
        *,
        baseline: Baseline | None = None,
        payload_type: str = "other",
        resource_id: str = "",
        session_id: str | None = None,
        version: int = 0,
        experiment: str | None = None,
        arm: str | None = None,
        propensity: float | None = None,
        request_id: str | None = None,
    ) -> TransferResult:
        """Decide, send and record one transfer; raises only what stopped the payload from arriving.

        With ``experiment=`` set on the manager, the transfer's unit is assigned to an arm and that arm's
        policy decides (``experiment``, ``arm`` and ``propensity`` given here override it: a caller that
        runs its own assignment)."""
        tid = uuid.UUID(request_id) if request_id is not None else uuid.uuid4()
        t0 = time.perf_counter()
        started = dt.datetime.now(dt.UTC)
        selector: GuardedSelector | None | Literal["default"] = "default"
        if self.experiment is not None and experiment is None:
            unit = self._unit_id(str(tid), resource_id)
            chosen = self.experiment.choose(unit)
            if chosen is not None:
                experiment, arm, propensity, selector = chosen
        decision = self.decide(
            payload,
            link,
            system,
            baseline=baseline,
            payload_type=payload_type,
            resource_id=resource_id or None,
            selector=selector,
        )
        acting = self.selector if selector == "default" else selector
        strategy = decision.strategy
        report: SendReport | None = None
        error: str | None = None
        failure: BaseException | None = None
        try:
            report = self._send(payload, strategy, link, baseline, payload_type, resource_id, tid)
        except StrategyError as exc:  # the encoder failed: the payload still goes, raw
            error = f"{type(exc).__name__}: {exc}"
            _log.warning("transfer %s: %s failed (%s); sending raw", tid, strategy, error)
            strategy = "none"
            try:
                report = self._send(payload, strategy, link, None, payload_type, resource_id, uuid.uuid4())
            except BaseException as exc2:  # recorded below, then raised
                failure = exc2
        except BaseException as exc:  # recorded below, then raised
            failure = exc
        elapsed = time.perf_counter() - t0
        if failure is not None:
            error = f"{type(failure).__name__}: {failure}"
        shadow = self._shadow(payload, link, system, baseline, payload_type, resource_id)
        result = TransferResult(str(tid), strategy, decision, report, elapsed, error, shadow)
        audited = False
        if self.collector is not None:
            try:
                record = self._record(
                    acting,
                    result,
                    payload,
                    link,
                    system,
                    baseline,
                    payload_type,
                    resource_id,
                    session_id,
                    version,
                    started,
                    experiment,
                    arm,
                    propensity,
                )
                self.collector.record(record)
                rate = self.arm_audit_rates.get(arm, self.audit_rate) if arm else self.audit_rate
                if failure is None and self._audit_this(result.request_id, rate):
                    audited = self._queue_audit(record, payload, baseline, link, system, payload_type)
            except Exception:  # noqa: BLE001 - telemetry must never fail a transfer
                _log.exception("transfer %s: telemetry record not built", tid)
        if report is not None and resource_id:
            self._remember(resource_id, strategy, report, f"{version}:{report.transfer_id.hex[:12]}")
        if failure is not None:
            raise failure
        return replace(result, audited=True) if audited else result

    def _send(
        self,
        payload: BytesLike,
        strategy: str,
        link: LinkState,
        baseline: Baseline | None,
        payload_type: str,
        resource_id: str,
        tid: uuid.UUID,
    ) -> SendReport:
        return self.sender.send(
            payload,
            strategy,
            link=link,
            baseline=baseline,
            payload_type=payload_type,
            resource_id=resource_id,
            transfer_id=tid,
        )

    def _unit_id(self, request_id: str, resource_id: str) -> str:
        """The experiment unit of a transfer: itself, its resource (every version of a resource in one
        arm), or this node."""
        a = self.experiment.assignment if self.experiment is not None else None
        unit = a.unit if a is not None else "resource"
        if unit == "node":
            return self.node_id
        if unit == "resource" and resource_id:
            return resource_id
        return request_id

    def _shadow(
        self,
        payload: BytesLike,
        link: LinkState,
        system: SystemState,
        baseline: Baseline | None,
        payload_type: str,
        resource_id: str,
    ) -> Decision | None:
        if self.shadow is None:
            return None
        return self.shadow.select(
            payload,
            link,
            system,
            baseline=baseline.data if baseline is not None else None,
            payload_type=payload_type,
            history=self._history.get(resource_id) if resource_id else None,
        )

    def _history_of(self, resource_id: str) -> dict[str, float | None] | None:
        """This node's moving averages for the resource, else the fleet's (one bounded Redis read)."""
        h = self._history.get(resource_id)
        if h is not None or self.cache is None:
            return h
        t0 = time.perf_counter()
        shared = self.cache.get_stats(resource_id, "history")
        self._waited(t0)
        if not shared:
            return None
        h = {k: float(v) for k, v in shared.items() if k in STRATEGIES and isinstance(v, int | float)}
        with self._lock:
            self._history[resource_id] = dict(h)
        return dict(h)

    def _waited(self, t0: float) -> None:
        self.cache_wait_max_s = max(self.cache_wait_max_s, time.perf_counter() - t0)

    def _remember(self, resource_id: str, strategy: str, report: SendReport, version: str) -> None:
        """The resource's moving average of what each strategy achieved (the ``f_prev_*`` features), kept
        here and shared with the fleet; the payload just sent is the resource's new baseline version."""
        ratio = report.wire_bytes / report.payload_bytes if report.payload_bytes else None
        with self._lock:
            h = self._history.setdefault(resource_id, {})
            self._history.move_to_end(resource_id)
            if strategy != "none" and ratio is not None:
                old = h.get(strategy)
                h[strategy] = ratio if old is None else _EWMA * ratio + (1 - _EWMA) * old
            while len(self._history) > _HISTORY_RESOURCES:
                self._history.popitem(last=False)
            shared = {k: v for k, v in h.items() if v is not None}
        if self.cache is not None:
            t0 = time.perf_counter()
            self.cache.new_baseline(resource_id, version)
            if shared:
                self.cache.put_stats(resource_id, "history", shared)
            self._waited(t0)

    # -- records ---------------------------------------------------------------------------------------
    def model_version(self, selector: GuardedSelector | None) -> str | None:
        """The registry version id of the model ``selector`` decides with (None: no model)."""
        if selector is None or selector.selector is None:
            return None
        sel = selector.selector
        key = (str(sel.model_dir), sel.reloads)
        if key not in self._versions:
            try:
                self._versions[key] = content_id(sel.model_dir)
            except OSError:
                self._versions[key] = None
        return self._versions[key]

    def _record(
        self,
        acting: GuardedSelector | None,
        result: TransferResult,
        payload: BytesLike,
        link: LinkState,
        system: SystemState,
        baseline: Baseline | None,
        payload_type: str,
        resource_id: str,
        session_id: str | None,
        version: int,
        started: dt.datetime,
        experiment: str | None,
        arm: str | None,
        propensity: float | None,
    ) -> dict[str, Any]:
        d, report = result.decision, result.report
        base = baseline.data if baseline is not None else None
        basic: BasicFeatures = d.basic if d.basic is not None else basic_features(payload, base)
        rich: RichFeatures | None = d.rich
        history = self._history.get(resource_id, {}) if resource_id else {}
        size = len(payload)
        source = "ab" if experiment else ("shadow" if self.shadow is not None else "production")
        rec: dict[str, Any] = {
            "request_id": result.request_id,
            "ts": started,
            "source": source,
            "session_id": session_id or resource_id or result.request_id,
            "resource_id": resource_id or result.request_id,
            "payload_group_id": xxhash.xxh3_64_hexdigest(payload),
            "version": version,
            "draw": 0,
            "f_payload_type": payload_type,
            "f_payload_bytes": size,
            **feature_columns(basic, rich),
            **link_columns(link, system, link_class(link)),
            "f_prev_zstd_ratio": history.get("zstd"),
            "f_prev_lz4_ratio": history.get("lz4"),
            "f_prev_hde_ratio": history.get("hde"),
            "o_streams": report.streams if report is not None else self.cost_model.streams(link),
            "used_strategy": result.strategy,
            "used_time_s": result.time_s if report is not None else None,
            "decision_s": d.latency_s,
            "model_version": self.model_version(acting) if d.fallback is None else None,
            "used_tier": "cached" if d.cached and d.tier != "fast" else d.tier,
            "fallback_reason": d.fallback,
            "used_wire_bytes": report.wire_bytes if report is not None else None,
            "used_encode_s": report.encode_s if report is not None else None,
            "used_send_s": report.elapsed_s if report is not None else None,
            "used_decode_s": report.decode_s if report is not None else None,
            "used_error": result.error,
            "experiment": experiment,
            "arm": arm,
            "propensity": propensity,
            "cost_params": self._cost_params,
            "feature_version": FEATURE_VERSION,
            "schema_version": SCHEMA_VERSION,
            "library_version": __version__,
            "measure_repeats": 1,
            "quality_flags": int(QualityFlag.SINGLE_TIMING),
            **self._host,
        }
        if result.shadow is not None:
            rec["shadow_strategy"] = result.shadow.strategy
            rec["shadow_model_version"] = (
                self.model_version(self.shadow) if result.shadow.fallback is None else None
            )
        return rec

    # -- audits ----------------------------------------------------------------------------------------
    def _audit_this(self, request_id: str, rate: float | None = None) -> bool:
        rate = self.audit_rate if rate is None else rate
        if rate <= 0.0:
            return False
        h = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")
        return h < rate * 2.0**64

    def _queue_audit(
        self,
        record: dict[str, Any],
        payload: BytesLike,
        baseline: Baseline | None,
        link: LinkState,
        system: SystemState,
        payload_type: str,
    ) -> bool:
        base = baseline.data if baseline is not None else None
        need = min(len(payload), self.audit_max_bytes) + (min(len(base), self.audit_max_bytes) if base else 0)
        with self._lock:
            if self._closed or self._audit_bytes + need > self.audit_queue_bytes:
                self.audits.dropped_full += 1
                return False
            self._audit_bytes += need
            self.audits.queued += 1
            if self._audit_thread is None:
                self._audit_thread = threading.Thread(target=self._audit_loop, name="dwcp-audit", daemon=True)
                self._audit_thread.start()
        sample, base_sample, sampled = spread_sample(payload, base, self.audit_max_bytes)
        job = _AuditJob(
            dict(record), sample, base_sample, len(payload), sampled, link, system, payload_type, need
        )
        self._audit_q.put(job)
        return True

    def _audit_loop(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # Linux: a thread is a task with its own nice
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while True:
            job = self._audit_q.get()
            if job is None:
                return
            try:
                audit = self.audit_record(job)
                if self.collector is not None and self.collector.record(audit):
                    self.audits.recorded += 1
                self.audits.done += 1
            except Exception as exc:  # noqa: BLE001 - an audit never takes the node down
                self.audits.failed += 1
                self.audits.last_error = f"{type(exc).__name__}: {exc}"
                _log.warning("audit of %s failed: %s", job.record.get("request_id"), self.audits.last_error)
            finally:
                with self._lock:
                    self._audit_bytes -= job.reserved

    def audit_record(self, job: _AuditJob) -> dict[str, Any]:
        """Every offered strategy measured on the job's sample, scaled, priced and labelled."""
        baseline = Baseline("audit", job.base_sample) if job.base_sample is not None else None
        n = len(job.sample)
        offered = self.codec.registry.offered(n, has_baseline=baseline is not None)
        repeats = default_repeats(n)
        runs = measure_strategies(
            self.codec, job.sample, offered, baseline=baseline, payload_type=job.payload_type, repeats=repeats
        )
        scale = job.payload_bytes / max(n, 1)
        scaled = {s: r.measurement.scaled(scale) for s, r in runs.items() if r.roundtrip}
        costs = self.cost_model.costs(job.payload_bytes, scaled, job.link, job.system)
        decision = Oracle(self.cost_model).decide(costs)
        flags = measurement_flags(runs, repeats)
        if job.sampled:
            flags |= QualityFlag.SAMPLED
        gap = decision.runner_up_gap
        if gap < 0.01:
            flags |= QualityFlag.NEAR_TIE
        tier = None
        if baseline is not None:
            plan = self.codec.registry.get("hde").plan(job.sample, baseline)
            tier = plan.tier if isinstance(plan, HdePlan) else None
        rec = dict(job.record)
        parent = str(rec["request_id"])
        rec.update(
            request_id=str(uuid.uuid5(_NAMESPACE, parent)),
            source="audit",
            parent_request_id=parent,
            o_hde_tier=tier,
            oracle_label=decision.label,
            oracle_cost_s=decision.cost_s,
            runner_up_gap=gap if math.isfinite(gap) else None,
            measure_repeats=repeats,
            quality_flags=int(flags),
        )
        rec.update(outcome_columns(scaled))
        for s in STRATEGIES:
            rec[f"cost_{s}_s"] = costs.get(s)
        return rec

    def audit_pending(self) -> int:
        """Audits queued and not yet done."""
        return self._audit_q.qsize()

    def wait_audits(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued audit is done; returns whether they all were in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                busy = self._audit_bytes > 0
            if not busy:
                return True
            time.sleep(0.01)
        return False

    def close(self, timeout_s: float = 30.0) -> None:
        """Finish the queued audits (up to ``timeout_s``) and stop the audit thread."""
        with self._lock:
            self._closed = True
            thread = self._audit_thread
        if thread is not None:
            self.wait_audits(timeout_s)
            self._audit_q.put(None)
            thread.join(timeout_s)

    def __enter__(self) -> TransferManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        return {
            "audits": {
                "queued": self.audits.queued,
                "done": self.audits.done,
                "recorded": self.audits.recorded,
                "dropped_full": self.audits.dropped_full,
                "failed": self.audits.failed,
                "last_error": self.audits.last_error,
            },
            "resources_tracked": len(self._history),
            "cache_wait_max_s": self.cache_wait_max_s,
        }
