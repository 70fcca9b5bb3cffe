"""Staging collection: run every strategy for real on planned transfers and store labelled records.

Each payload of the plan (``workload.staging``) is measured once, by a worker process: its decision-time
features, then every offered strategy encoded and decoded for real (``measure.default_repeats``: the
least of 25 runs under 64 KiB, of 5 under 1 MiB, of 3 interleaved rounds under 8 MiB, of 2 above).
The measurement is then priced under ``draws_per_payload`` link/node draws (re-pricing costs nothing),
and each draw becomes one record with the whole cost vector and the oracle's label. Records of one payload
share its ``payload_group_id`` and its session's ``session_id``, so a split can keep them together.

Everything but the timings is a function of the seed: the plan, the bytes, the draws and the record ids
(``uuid5`` of seed, payload and draw), so collecting twice into one store adds nothing, and a collection
that stopped half-way resumes: sessions already stored whole are not measured again.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import multiprocessing
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..costmodel import CostModel, Oracle
from ..features import FEATURE_VERSION, payload_features
from ..hostprofile import DEFAULT_PROFILE_EVERY_S, HostProfile, ProfileClock, load_or_calibrate
from ..link import LinkState, SystemState
from ..measure import StrategyRun, default_repeats, measure_strategies, sampling_probe
from ..strategies import Baseline, PayloadCodec
from ..strategies.hde import HdePlan
from ..workload.corpus import Corpus
from ..workload.links import draw_link, draw_system
from ..workload.payloads import default_pools
from ..workload.staging import PlannedSession, ScenarioMix, Transfer, plan_sessions, session_transfers
from ..workload.system_corpus import SystemCorpus
from .columns import feature_columns, link_columns, measurement_flags, outcome_columns
from .schema import COLUMNS, SCHEMA_VERSION, STRATEGIES, QualityFlag
from .store import open_store

__all__ = ["CollectionReport", "collect", "records_for_transfer"]

_NAMESPACE = uuid.UUID("5b0a6f52-6a43-4c55-9d1e-0c3f0d2a7e11")
#: What only the transfer path knows (schema 4): null in every staging record, which stays full-width.
_TRANSFER_PATH_COLUMNS = tuple(c.name for c in COLUMNS if c.since == 4)
_EWMA = 0.5


@dataclass
class CollectionReport:
    store: str
    seed: int
    payloads: int = 0
    records: int = 0
    inserted: int = 0
    sessions: int = 0
    resumed: int = 0
    seconds: float = 0.0
    mix: dict[str, Any] = field(default_factory=dict)
    host_profile: dict[str, Any] | None = None
    #: Distinct host profiles the new records carry (more than one when the host was measured again).
    host_profiles: set[str] = field(default_factory=set)
    profile_every_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "host_profile": self.host_profile,
            "host_profiles": len(self.host_profiles),
            "profile_every_s": self.profile_every_s,
            "store": self.store,
            "seed": self.seed,
            "payloads": self.payloads,
            "records": self.records,
            "inserted": self.inserted,
            "sessions": self.sessions,
            "resumed": self.resumed,
            "seconds": round(self.seconds, 2),
            "records_per_s": round(self.records / self.seconds, 1) if self.seconds else None,
            "mix": self.mix,
        }


def request_id(seed: int, payload_index: int, draw: int) -> str:
    """The deterministic id of a staging record."""
    return str(uuid.uuid5(_NAMESPACE, f"{seed}:{payload_index}:{draw}"))


def _ratio(run: StrategyRun | None, size: int) -> float | None:
    if run is None or not run.roundtrip or size == 0:
        return None
    return run.compressed_bytes / size


def records_for_transfer(
    t: Transfer,
    *,
    seed: int,
    payload_index: int,
    draws: int,
    mix: ScenarioMix,
    codec: PayloadCodec,
    cost_model: CostModel,
    history: dict[str, float | None],
    source: str = "staging",
    limit: int | None = None,
    host: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Measure one transfer for real and price it under ``draws`` link/node draws: one record each.

    ``host`` holds the measuring host's profile columns (:func:`host_columns`); without it they are null.
    """
    feats = payload_features(t.payload, t.baseline)
    basic, rich = feats.basic, feats.rich
    baseline = Baseline(t.session_id, t.baseline) if t.baseline is not None else None
    offered = codec.registry.offered(len(t.payload), has_baseline=baseline is not None)
    repeats = default_repeats(len(t.payload))
    runs = measure_strategies(codec, t.payload, offered, baseline=baseline, repeats=repeats)
    good = {s: r.measurement for s, r in runs.items() if r.roundtrip}
    tier = None
    if baseline is not None:
        plan = codec.registry.get("hde").plan(t.payload, baseline)
        tier = plan.tier if isinstance(plan, HdePlan) else None
    flags = measurement_flags(runs, repeats)
    size = len(t.payload)
    base: dict[str, Any] = {
        "source": source,
        "session_id": t.session_id,
        "resource_id": t.session_id,
        "payload_group_id": t.payload_group_id,
        "version": t.version,
        "f_payload_type": t.payload_type,
        "f_payload_bytes": size,
        **feature_columns(basic, rich),
        "f_prev_zstd_ratio": history.get("zstd"),
        "f_prev_lz4_ratio": history.get("lz4"),
        "f_prev_hde_ratio": history.get("hde"),
        "o_hde_tier": tier,
        "used_strategy": None,
        "used_time_s": None,
        "decision_s": None,
        "model_version": None,
        **dict.fromkeys(_TRANSFER_PATH_COLUMNS),
        "cost_params": cost_model.params.fingerprint,
        "feature_version": FEATURE_VERSION,
        "schema_version": SCHEMA_VERSION,
        "library_version": __version__,
        "measure_repeats": repeats,
        **(host if host is not None else host_columns(None)),
    }
    sample_bytes, probes = sampling_probe(t.payload, t.baseline, codec)
    base["p_sample_bytes"] = sample_bytes
    base.update(outcome_columns(good))
    for s in STRATEGIES:
        probe = probes.get(s)
        ok = probe is not None and probe.roundtrip
        base[f"p_{s}_bytes"] = probe.compressed_bytes if ok and probe else None
        base[f"p_{s}_encode_s"] = probe.encode_s if ok and probe else None
        base[f"p_{s}_decode_s"] = probe.decode_s if ok and probe else None
    oracle = Oracle(cost_model)
    records = []
    for d in range(draws if limit is None else max(0, min(draws, limit))):
        rng = np.random.default_rng([seed, 0xD4A3, payload_index, d])
        link: LinkState = draw_link(rng, mix.links)
        system: SystemState = draw_system(rng)
        costs = cost_model.costs(size, good, link, system)
        decision = oracle.decide(costs)
        gap = decision.runner_up_gap
        rec = dict(base)
        rec.update(
            {
                "request_id": request_id(seed, payload_index, d),
                "ts": t.ts + dt.timedelta(milliseconds=d),
                "draw": d,
                **link_columns(link, system, link.link_type),
                "o_streams": cost_model.streams(link),
                "oracle_label": decision.label,
                "oracle_cost_s": decision.cost_s,
                "runner_up_gap": gap if np.isfinite(gap) else None,
                "quality_flags": int(flags | (QualityFlag.NEAR_TIE if gap < 0.01 else 0)),
            }
        )
        for s in STRATEGIES:
            rec[f"cost_{s}_s"] = costs.get(s)
        records.append(rec)
    # moving averages of this session's outcomes, for the transfers that come after
    for s in ("zstd", "lz4", "hde"):
        r = _ratio(runs.get(s), size)
        if r is not None:
            old = history.get(s)
            history[s] = r if old is None else _EWMA * r + (1 - _EWMA) * old
    return records


# -- worker processes ---------------------------------------------------------------------------------
_worker: dict[str, Any] = {}


def host_columns(profile: HostProfile | None) -> dict[str, Any]:
    """The telemetry columns of a host profile (null without one)."""
    if profile is None:
        return {name: None for name in HOST_COLUMNS}
    return {
        **{f"f_{k}": v for k, v in profile.features().items()},
        "host_profile_id": profile.profile_id,
        "host_cpu": f"{profile.key.cpu_model}, {profile.key.cores} cores",
    }


HOST_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in COLUMNS if c.name.startswith("f_host_") or c.name.startswith("host_")
)


def _init_worker(
    seed: int,
    corpus_dir: str | None,
    profile: HostProfile | None = None,
    system: bool = False,
    profile_every_s: float | None = None,
) -> None:
    # Each worker keeps its own clock: a re-measurement runs in the process that measures the records
    # it will stamp, between two sessions, under the same neighbours as they.
    _worker["clock"] = ProfileClock(profile, profile_every_s) if profile is not None else None
    _worker["system"] = SystemCorpus() if system else None  # collect(): only without a corpus
    _worker["pools"] = default_pools(seed)
    _worker["corpus"] = Corpus(corpus_dir) if corpus_dir else None
    codec = PayloadCodec()
    codec.warm_up()
    _worker["codec"] = codec
    _worker["cost_model"] = CostModel()


def _measure_session(
    session: PlannedSession, first_payload: int, seed: int, mix: ScenarioMix, samples: int
) -> list[dict[str, Any]]:
    history: dict[str, float | None] = {}
    out: list[dict[str, Any]] = []
    clock: ProfileClock | None = _worker["clock"]
    host = host_columns(clock.current() if clock is not None else None)
    for i, t in enumerate(
        session_transfers(session, seed, _worker["pools"], _worker["corpus"], _worker.get("system"))
    ):
        out += records_for_transfer(
            t,
            seed=seed,
            payload_index=first_payload + i,
            draws=mix.draws_per_payload,
            mix=mix,
            codec=_worker["codec"],
            cost_model=_worker["cost_model"],
            history=history,
            limit=samples - (first_payload + i) * mix.draws_per_payload,  # the last payload may be cut
            host=host,
        )
    return out


def collect(
    store_url: str,
    samples: int,
    seed: int,
    *,
    corpus: str | Path | None = None,
    workers: int = 1,
    mix: ScenarioMix | None = None,
    start: dt.datetime | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    host_profile: HostProfile | None = None,
    system_corpus: bool = True,
    profile_every_s: float | None = DEFAULT_PROFILE_EVERY_S,
) -> CollectionReport:
    """Collect ``samples`` labelled records into the store at ``store_url``; see the module docstring.

    ``start`` is the staging clock's first day (default: 14 days before today, at midnight UTC).
    ``on_progress(records_done, records_total)`` is called as sessions complete.
    ``host_profile`` is the measuring host's first profile (default: this host's cached profile if it is
    younger than ``profile_every_s``, else measured now: about 4 s); each worker measures the host again
    between sessions once its profile is ``profile_every_s`` old (None: never), and every record carries
    the profile current when it was measured. ``system_corpus`` draws
    ``mix.system_share`` of the sessions from this machine's real files when no ``corpus`` is given
    (``workload.system_corpus``).
    """
    profile = host_profile if host_profile is not None else load_or_calibrate(max_age_s=profile_every_s)
    mix = mix or ScenarioMix()
    if start is None:
        today = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=int(mix.span_days))
        start = dt.datetime(today.year, today.month, today.day, tzinfo=dt.UTC)
    corpus_dir = str(corpus) if corpus is not None else None
    if corpus_dir is not None:
        Corpus(corpus_dir)  # refuse an empty or missing corpus before starting workers
    payloads = -(-samples // mix.draws_per_payload)
    system = system_corpus and corpus_dir is None
    if system:
        SystemCorpus()  # refuse a machine without any of its sources before starting workers
    sessions = plan_sessions(seed, payloads, mix, start, corpus=corpus_dir is not None, system=system)
    firsts = np.concatenate([[0], np.cumsum([s.versions for s in sessions])[:-1]]).astype(int).tolist()
    total = payloads * mix.draws_per_payload
    report = CollectionReport(
        store=store_url,
        seed=seed,
        sessions=len(sessions),
        mix=mix.to_dict(),
        host_profile={**profile.to_dict(), "profile_id": profile.profile_id} if profile else None,
        profile_every_s=profile_every_s,
    )
    t0 = time.perf_counter()
    store = open_store(store_url)
    try:
        # Resume: a session whose every record is already stored is not measured again.
        stored = (
            set(store.read_table(["request_id"]).column("request_id").to_pylist()) if store.count() else set()
        )
        todo = []
        for session, first in zip(sessions, firsts, strict=True):
            ids = [
                request_id(seed, first + v, d)
                for v in range(session.versions)
                for d in range(mix.draws_per_payload)
                if (first + v) * mix.draws_per_payload + d < samples
            ]
            if ids and all(i in stored for i in ids):
                report.records += len(ids)
                report.payloads += session.versions
                report.resumed += len(ids)
            else:
                todo.append((session, first))
        if on_progress is not None:
            on_progress(report.records, min(total, samples))
        for batch in _run_sessions(
            [s for s, _ in todo],
            [f for _, f in todo],
            seed,
            mix,
            corpus_dir,
            workers,
            samples,
            profile,
            system,
            profile_every_s,
        ):
            if not batch:
                continue
            report.host_profiles.update(str(r["host_profile_id"]) for r in batch if r["host_profile_id"])
            report.inserted += store.write_batch(batch)
            report.records += len(batch)
            report.payloads += len({r["payload_group_id"] for r in batch})
            if on_progress is not None:
                on_progress(report.records, min(total, samples))
    finally:
        store.close()
    report.seconds = time.perf_counter() - t0
    return report


def _run_sessions(
    sessions: list[PlannedSession],
    firsts: list[int],
    seed: int,
    mix: ScenarioMix,
    corpus_dir: str | None,
    workers: int,
    samples: int,
    profile: HostProfile | None,
    system: bool = False,
    profile_every_s: float | None = None,
) -> Iterator[list[dict[str, Any]]]:
    # Largest sessions first, so the pool does not end waiting on one big straggler.
    order = sorted(range(len(sessions)), key=lambda i: -sessions[i].size * sessions[i].versions)
    if workers <= 1:
        _init_worker(seed, corpus_dir, profile, system, profile_every_s)
        for i in order:
            yield _measure_session(sessions[i], firsts[i], seed, mix, samples)
        return
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(
        workers,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(seed, corpus_dir, profile, system, profile_every_s),
    ) as pool:
        futures = [pool.submit(_measure_session, sessions[i], firsts[i], seed, mix, samples) for i in order]
        for fut in cf.as_completed(futures):
            yield fut.result()
