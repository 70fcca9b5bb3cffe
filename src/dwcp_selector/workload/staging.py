"""Staging traffic: sessions of resources shipping successive versions, planned from a seed.

A *session* is one resource (a VM, a disk, a database, a log stream, a document, a corpus file) whose
versions are shipped one after the other; each version is a payload, and from the second on the
previous version is its baseline, so HDE has real references. The plan (which sessions, of what kind,
size and length, when) is drawn from the seed alone; a session's bytes are drawn from the seed and the
session's index, so any worker materializes the same bytes.

The scenario mix (:class:`ScenarioMix`) sets the shares of session kinds and link classes. It is the
only thing tuned to cover every link type and every strategy: labels come from the cost model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType

import numpy as np

from ..errors import ConfigError
from .corpus import Corpus
from .payloads import (
    ContentPools,
    compressed_media,
    database_pages,
    database_update,
    dirty_round,
    disk_snapshot,
    edit_version,
    logs_json,
    random_bytes,
    text_words,
    vm_disk,
    vm_memory,
    wal_segment,
)
from .system_corpus import SOURCE_TYPES, SystemCorpus

__all__ = [
    "DEFAULT_LINK_MIX",
    "DEFAULT_SESSION_MIX",
    "PlannedSession",
    "ScenarioMix",
    "Transfer",
    "plan_sessions",
    "session_transfers",
]

MiB = 1 << 20

DEFAULT_SESSION_MIX: Mapping[str, float] = MappingProxyType(
    {
        "vm": 0.20,
        "disk": 0.12,
        "database": 0.12,
        "logs_batch": 0.12,
        "logs_file": 0.10,
        "document": 0.12,
        "media": 0.12,
        "encrypted": 0.10,
    }
)
DEFAULT_LINK_MIX: Mapping[str, float] = MappingProxyType(
    {"dc": 0.30, "metro": 0.25, "wan": 0.25, "edge": 0.20}
)
SESSION_KINDS = (*DEFAULT_SESSION_MIX, "corpus", "system")


@dataclass(frozen=True)
class ScenarioMix:
    """Shares of session kinds and link classes, and the shape of sessions and payloads."""

    sessions: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_SESSION_MIX))
    links: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_LINK_MIX))
    draws_per_payload: int = 8
    min_bytes: int = 1024
    max_bytes: int = 64 * MiB
    mean_versions: float = 4.0
    span_days: float = 14.0
    corpus_share: float = 0.35
    #: share of sessions drawn from this machine's real files (``system_corpus``) when no corpus is given
    system_share: float = 0.35

    def __post_init__(self) -> None:
        unknown = set(self.sessions) - set(SESSION_KINDS)
        if unknown:
            raise ConfigError(f"unknown session kinds {sorted(unknown)}; expected some of {SESSION_KINDS}")
        if not 1 <= self.draws_per_payload <= 1000:
            raise ConfigError("draws per payload must be in 1..1000")
        if not 0 < self.min_bytes <= self.max_bytes:
            raise ConfigError("payload sizes need 0 < min_bytes <= max_bytes")
        if self.mean_versions < 1:
            raise ConfigError("sessions have at least one version on average")
        if not (0 <= self.corpus_share < 1 and 0 <= self.system_share < 1):
            raise ConfigError("corpus and system shares must be in [0, 1)")

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["sessions"] = dict(self.sessions)
        d["links"] = dict(self.links)
        return d

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class PlannedSession:
    index: int
    kind: str
    size: int
    versions: int
    start: dt.datetime
    seed: int  # the plan's seed: one seed's sessions never share a name with another's
    limit: int = 64 * MiB  # no version of the session grows past this (the plan's largest size)

    @property
    def session_id(self) -> str:
        """Unique across collections: the same name means the same payloads (same seed and index).

        Records of several hosts' collections share one store and one export, which keeps a session's
        records in one split; two seeds' sessions of the same kind and index are unrelated payloads.
        """
        return f"{self.kind}-{self.seed}-{self.index:06d}"


@dataclass(frozen=True, slots=True)
class Transfer:
    """One version of one session: the payload, its baseline (the previous version) and when it moved."""

    session: PlannedSession
    version: int
    payload_type: str
    payload: bytes
    baseline: bytes | None
    ts: dt.datetime
    source_name: str | None = None

    @property
    def session_id(self) -> str:
        return self.session.session_id

    @property
    def payload_group_id(self) -> str:
        return f"{self.session.session_id}/v{self.version}"


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def plan_sessions(
    seed: int,
    payloads: int,
    mix: ScenarioMix,
    start: dt.datetime,
    *,
    corpus: bool = False,
    system: bool = False,
) -> list[PlannedSession]:
    """Sessions until their versions add up to ``payloads``; the same list for the same arguments.

    An operator's corpus (``corpus``) takes ``corpus_share`` of the sessions; without one, this machine's
    real files (``system``) take ``system_share``; the generated kinds share the rest.
    """
    if payloads < 1:
        raise ConfigError("a collection needs at least one payload")
    rng = np.random.default_rng([seed, 0x5E55])
    kinds = {k: v for k, v in mix.sessions.items() if k not in ("corpus", "system") and v > 0}
    real, share = ("corpus", mix.corpus_share) if corpus else ("system", mix.system_share)
    if (corpus or system) and share > 0:  # the real data takes its share, the synthetic kinds the rest
        kinds = {k: v * (1 - share) / sum(kinds.values()) for k, v in kinds.items()}
        kinds[real] = share
    names = list(kinds)
    p = np.array([kinds[k] for k in names])
    p /= p.sum()
    sessions: list[PlannedSession] = []
    total = 0
    span = dt.timedelta(days=mix.span_days)
    while total < payloads:
        kind = names[int(rng.choice(len(names), p=p))]
        versions = min(int(rng.geometric(1.0 / mix.mean_versions)), payloads - total)
        size = int(_log_uniform(rng, mix.min_bytes, mix.max_bytes))
        begin = start + span * float(rng.random())
        sessions.append(PlannedSession(len(sessions), kind, size, versions, begin, seed, mix.max_bytes))
        total += versions
    return sessions


def session_transfers(
    session: PlannedSession,
    seed: int,
    pools: ContentPools,
    corpus: Corpus | None = None,
    system: SystemCorpus | None = None,
) -> Iterator[Transfer]:
    """The versions of a planned session, each with the previous one as baseline where that applies."""
    rng = np.random.default_rng([seed, 0xB17E5, session.index])
    size = session.size
    ts = session.start
    prev: bytes | None = None
    source: str | None = None
    real_versions: Iterator[tuple[str, bytes, bool]] | None = None
    system_type = "other"
    for version in range(session.versions):
        baseline: bytes | None = None
        kind = session.kind
        if kind == "vm":
            if prev is None:
                ptype, data = "vm_memory", vm_memory(size, rng, pools)
            else:
                ptype, baseline = "vm_memory_round", prev
                data = dirty_round(
                    prev,
                    rng,
                    dirty_fraction=_log_uniform(rng, 0.01, 0.30),
                    rewrite_fraction=float(rng.uniform(0.0, 0.5)),
                )
        elif kind == "disk":
            ptype = "vm_disk"
            if prev is None:
                data = vm_disk(size, rng, pools)
            else:
                baseline = prev
                data = disk_snapshot(prev, rng, pools, change_fraction=_log_uniform(rng, 0.005, 0.1))
        elif kind == "database":
            ptype = "database"
            if prev is None:
                data = database_pages(size, rng, pools)
            elif rng.random() < 0.5:
                baseline = prev
                data = database_update(
                    prev,
                    rng,
                    pools,
                    update_fraction=_log_uniform(rng, 0.002, 0.05),
                    append=len(prev) < min(1.5 * size, session.limit / 1.05),  # else reuse vacuumed space
                )
            else:  # a WAL segment: new bytes, nothing to delta against; the table stays the reference
                ptype = "database_wal"
                wal = wal_segment(max(1024, size // 4), rng, pools)
                yield Transfer(session, version, ptype, wal, None, ts)
                ts += dt.timedelta(seconds=float(rng.exponential(900)))
                continue
        elif kind == "logs_batch":
            ptype, data = "logs_json", logs_json(size, rng, pools)
        elif kind == "logs_file":
            ptype = "logs_json"
            if prev is None:
                data = logs_json(size, rng, pools)
            else:  # the log file grew; sometimes its head was rotated away
                baseline = prev
                cut = int(len(prev) * float(rng.uniform(0, 0.5))) if rng.random() < 0.3 else 0
                grown = logs_json(max(1, int(len(prev) * float(rng.uniform(0.02, 0.5)))), rng, pools)
                data = prev[cut:] + grown
                if len(data) > min(2 * size, session.limit):  # rotated: keep the last `size` bytes
                    head = data.find(b"\n", len(data) - size)
                    data = data[head + 1 :] if head >= 0 else data[-size:]
        elif kind == "document":
            ptype = "document"
            if prev is None:
                data = text_words(size, rng, pools)
            else:
                baseline = prev
                data = edit_version(
                    prev, rng, pools, edits=max(1, int(_log_uniform(rng, 1, 4 + size / 4096)))
                )
        elif kind == "media":
            ptype = "media"
            if prev is not None and rng.random() < 0.25:  # the same file shipped again (a backup rerun)
                baseline, data = prev, prev
            else:
                data = compressed_media(size, rng, pools)
        elif kind == "encrypted":
            ptype = "encrypted"
            if prev is None:
                data = random_bytes(size, rng)
            else:  # an encrypted volume: rewritten sectors change completely, the rest stays
                baseline = prev
                data = dirty_round(
                    prev, rng, dirty_fraction=_log_uniform(rng, 0.01, 0.2), rewrite_fraction=1.0
                )
        elif kind == "corpus":
            if corpus is None:
                raise ConfigError("a corpus session needs a corpus")
            ptype = "corpus"
            if prev is None:
                source, data = corpus.sample(rng, size)
            else:
                baseline = prev
                data = edit_version(
                    prev, rng, pools, edits=max(1, int(_log_uniform(rng, 1, 4 + len(prev) / 4096)))
                )
        elif kind == "system":
            if system is None:
                raise ConfigError("a system-corpus session needs the system corpus")
            if real_versions is None:
                src = system.sources[int(rng.integers(0, len(system.sources)))]
                system_type = SOURCE_TYPES[src]
                real_versions = system.versions(src, rng, size)
            ptype = system_type
            origin, data, real = next(real_versions)
            if version == 0:
                source = origin
            if prev is not None:
                baseline = prev
                if not (real and data):  # no real successor (left): the edit model makes the next one
                    data = edit_version(
                        prev, rng, pools, edits=max(1, int(_log_uniform(rng, 1, 4 + len(prev) / 4096)))
                    )
            elif not data:
                data = random_bytes(max(1, min(size, 4096)), rng)  # an unreadable file: a token payload
        else:  # pragma: no cover - ScenarioMix validates kinds
            raise ConfigError(f"unknown session kind {kind}")
        yield Transfer(session, version, ptype, data, baseline, ts, source)
        prev = data
        ts += dt.timedelta(seconds=float(rng.exponential(900)))
