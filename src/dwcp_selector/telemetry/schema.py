"""The ``compression_telemetry`` record: one row per transfer, the same in every store and file.

Columns come in groups, and the groups are the leakage rule made concrete (DESIGN section 4):

* **ids** - request, session/resource, payload group, version, link draw, timestamp, source;
* **features** (``f_``) - what is known before the transfer starts: payload size and type, sampled
  entropy, zeros, probe ratios, baseline similarity, the link and node, and moving averages of *earlier*
  transfers of the same session. Only these may be model inputs;
* **outcomes** (``o_``) - what each strategy did to the payload: encoded bytes, encode and decode CPU
  seconds, AMST streams; label inputs, never features;
* **probe** (``p_``) - every strategy run on a 64 KiB sample: what the sampling-probe baseline policy
  sees, kept to evaluate that policy; never an input of the model;
* **labels** - the cost of every offered strategy under this record's link and node, the oracle's label,
  its cost and the runner-up gap;
* **used** - what the transfer path decided and achieved (production, shadow, audit and A/B rows):
  strategy, tier, fallback reason, model version, decision time, wire bytes, encode/send/decode seconds,
  error; the shadow candidate's choice; the experiment arm; for an audit row, the transfer it audits;
* **meta** - cost-model fingerprint, feature and schema versions, library version, quality flags, and
  the measuring host's profile id and CPU (the profile's rates are ``f_host_*`` features).

Every row of ``source`` ``staging`` (and ``audit``, the transfer path's sampled re-measurements) carries
labels; ``production``, ``shadow`` and ``ab`` rows carry achieved outcomes and, from schema version 4 on,
no label (:data:`LABELLED_SOURCES`).

``COLUMNS`` is the single definition the SQLite and PostgreSQL DDL, the Parquet schema and the data
checks are generated from.
"""

from __future__ import annotations

import datetime as dt
import enum
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..costmodel import DEFAULT_STRATEGY_ORDER
from ..errors import ConfigError
from ..hostprofile import HOST_FEATURE_STRATEGIES

__all__ = [
    "LABELLED_SOURCES",
    "LABEL_CHECK",
    "RELAXED_IN_2",
    "RELAXED_IN_4",
    "SOURCES",
    "COLUMNS",
    "COLUMN_NAMES",
    "FEATURE_COLUMNS",
    "SCHEMA_VERSION",
    "STRATEGIES",
    "TABLE",
    "Column",
    "Kind",
    "QualityFlag",
    "row_tuple",
    "validate",
]

TABLE = "compression_telemetry"
SCHEMA_VERSION = 4

#: Columns that schema version 1 declared NOT NULL and version 2 made nullable (the rich-tier features,
#: which a collector on the decision path computes only for transfers large enough to pay for them).
RELAXED_IN_2 = (
    "f_zero_page_fraction",
    "f_probe_lz4_ratio",
    "f_probe_zstd_ratio",
    "f_probe_s",
    "f_similarity_s",
)
#: Columns that version 3 declared NOT NULL and version 4 made nullable: the transfer path's rows
#: (production, shadow, A/B) have achieved outcomes but no oracle label.
RELAXED_IN_4 = ("oracle_label", "oracle_cost_s")
#: What a row's ``source`` may be; the first two carry labels (every offered strategy measured).
SOURCES = ("staging", "audit", "production", "shadow", "ab")
LABELLED_SOURCES = ("staging", "audit")
#: The store-side form of that rule (a CHECK constraint from schema version 4 on).
LABEL_CHECK = "source NOT IN ('staging', 'audit') OR (oracle_label IS NOT NULL AND oracle_cost_s IS NOT NULL)"
STRATEGIES: tuple[str, ...] = DEFAULT_STRATEGY_ORDER


class Kind(enum.Enum):
    TEXT = "text"
    INT = "int"
    REAL = "real"
    BOOL = "bool"
    TIME = "time"


class QualityFlag(enum.IntFlag):
    """Per-record quality flags (``quality_flags`` column)."""

    NONE = 0
    ROUNDTRIP_FAILED = 1  # a strategy failed its round trip and was left out of the cost vector
    NEAR_TIE = 2  # the runner-up is within the oracle's 1 % tie band
    SINGLE_TIMING = 4  # measured once, not the least of repeats (payloads ≥ 1 MiB before 2026-12-03)
    COARSE_TIMING = 8  # some encode or decode took under 20 µs: close to the clock's resolution
    SAMPLED = 16  # an audit measured a bounded sample of the payload and scaled it to the whole


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: Kind
    group: str
    nullable: bool = True
    doc: str = ""
    since: int = 1  # the schema version that added the column (migrations add it to older stores)


def _c(name: str, kind: Kind, group: str, nullable: bool = True, doc: str = "", since: int = 1) -> Column:
    return Column(name, kind, group, nullable, doc, since)


_IDS = [
    _c("request_id", Kind.TEXT, "id", False, "unique id of the transfer request"),
    _c("ts", Kind.TIME, "id", False, "when the transfer started (UTC)"),
    _c("source", Kind.TEXT, "id", False, "staging, audit, production, shadow or ab"),
    _c("session_id", Kind.TEXT, "id", False, "the session: a VM, disk, database or stream being shipped"),
    _c("resource_id", Kind.TEXT, "id", False, "the resource whose versions the session ships"),
    _c("payload_group_id", Kind.TEXT, "id", False, "the measured payload; re-priced draws share it"),
    _c("version", Kind.INT, "id", False, "position of this payload in its session (0 = first)"),
    _c("draw", Kind.INT, "id", False, "index of the link/node draw this record prices"),
]
_FEATURES = [
    _c("f_payload_type", Kind.TEXT, "feature", False, "payload family or declared type"),
    _c("f_payload_bytes", Kind.INT, "feature", False),
    _c("f_has_baseline", Kind.BOOL, "feature", False),
    _c("f_baseline_bytes", Kind.INT, "feature", False, "0 without a baseline"),
    _c("f_entropy", Kind.REAL, "feature", False, "bits per byte of a 4 KiB spread sample"),
    _c("f_zero_fraction", Kind.REAL, "feature", False),
    _c("f_text_fraction", Kind.REAL, "feature", True, "printable-text share of the sample", since=2),
    _c("f_zero_page_fraction", Kind.REAL, "feature", True, "rich tier: share of sampled zero pages"),
    _c("f_probe_lz4_ratio", Kind.REAL, "feature", True, "rich tier: lz4 encoded/original on a 64 KiB sample"),
    _c("f_probe_zstd_ratio", Kind.REAL, "feature", True, "rich tier: zstd-1 encoded/original on that sample"),
    _c(
        "f_similarity_pages", Kind.REAL, "feature", True, "share of 8 sampled pages identical to the baseline"
    ),
    _c("f_similarity_inplace", Kind.REAL, "feature", True, "rich tier: share of pages edited in place"),
    _c("f_similarity_shifted", Kind.REAL, "feature", True, "rich tier: share of snippets found nearby"),
    _c("f_basic_s", Kind.REAL, "feature", False, "seconds the basic features took"),
    _c("f_probe_s", Kind.REAL, "feature", True, "seconds the rich tier's probe took"),
    _c("f_similarity_s", Kind.REAL, "feature", True, "seconds the rich tier's similarity took"),
    _c("f_link_type", Kind.TEXT, "feature", False),
    _c("f_capacity_bps", Kind.REAL, "feature", False),
    _c("f_utilization", Kind.REAL, "feature", False),
    _c("f_rtt_s", Kind.REAL, "feature", False),
    _c("f_jitter_s", Kind.REAL, "feature", False),
    _c("f_loss", Kind.REAL, "feature", False),
    _c("f_free_cores", Kind.REAL, "feature", False),
    _c("f_active_transfers", Kind.INT, "feature", False),
    _c(
        "f_prev_zstd_ratio",
        Kind.REAL,
        "feature",
        True,
        "moving average over earlier transfers of the session",
    ),
    _c(
        "f_prev_lz4_ratio", Kind.REAL, "feature", True, "moving average over earlier transfers of the session"
    ),
    _c(
        "f_prev_hde_ratio", Kind.REAL, "feature", True, "moving average over earlier transfers of the session"
    ),
]
# The measuring host's speed profile (``hostprofile``; schema version 3): measured apart from every
# transfer, so known before each one. Null in records of stores written before version 3.
for _s in HOST_FEATURE_STRATEGIES:
    _FEATURES += [
        _c(f"f_host_{_s}_encode_bps", Kind.REAL, "feature", True, f"host: {_s} encode, bytes/CPU-s", since=3),
        _c(f"f_host_{_s}_decode_bps", Kind.REAL, "feature", True, f"host: {_s} decode, bytes/CPU-s", since=3),
    ]
_FEATURES.append(
    _c("f_host_python_ops_s", Kind.REAL, "feature", True, "host: pure-Python reference loop rate", since=3)
)
_OUTCOMES = [_c("o_streams", Kind.INT, "outcome", False, "AMST streams for this link")]
for _s in STRATEGIES:
    _OUTCOMES += [
        _c(f"o_{_s}_bytes", Kind.INT, "outcome", True, f"bytes {_s} produced (container included)"),
        _c(f"o_{_s}_encode_s", Kind.REAL, "outcome", True, f"CPU seconds {_s} took to encode"),
        _c(f"o_{_s}_decode_s", Kind.REAL, "outcome", True, f"CPU seconds {_s} took to decode"),
    ]
_OUTCOMES.append(
    _c("o_hde_tier", Kind.INT, "outcome", True, "HDE tier planned for the payload (1 pages, 3 shifted)")
)
_LABELS = [
    _c(f"cost_{s}_s", Kind.REAL, "label", True, f"transfer time with {s}; null if not offered")
    for s in STRATEGIES
]
_LABELS += [
    _c("oracle_label", Kind.TEXT, "label", True, "null on unlabelled rows (production, shadow, ab)"),
    _c("oracle_cost_s", Kind.REAL, "label", True, "null on unlabelled rows"),
    _c("runner_up_gap", Kind.REAL, "label", True, "how much slower the best other strategy is (0.02 = 2 %)"),
]
_USED = [
    _c("used_strategy", Kind.TEXT, "used", True, "strategy actually used (production, shadow, A/B)"),
    _c("used_time_s", Kind.REAL, "used", True, "achieved transfer time: decision + send, end to end"),
    _c("decision_s", Kind.REAL, "used", True, "seconds the decision took"),
    _c("model_version", Kind.TEXT, "used", True),
    _c("used_tier", Kind.TEXT, "used", True, "fast, light, rich, heuristic or cached", since=4),
    _c("fallback_reason", Kind.TEXT, "used", True, "why the heuristic decided (null: the model)", since=4),
    _c("used_wire_bytes", Kind.INT, "used", True, "bytes on the wire, AMST framing included", since=4),
    _c("used_encode_s", Kind.REAL, "used", True, "encoder seconds, summed over chunks", since=4),
    _c(
        "used_send_s",
        Kind.REAL,
        "used",
        True,
        "first connect to the receiver's verified answer (encode, wire, decode overlap in it)",
        since=4,
    ),
    _c("used_decode_s", Kind.REAL, "used", True, "receiver's decode s over chunks, verify incl.", since=4),
    _c("used_error", Kind.TEXT, "used", True, "the transfer's error (null: completed and verified)", since=4),
    _c("shadow_strategy", Kind.TEXT, "used", True, "the shadow candidate's choice (not acted on)", since=4),
    _c("shadow_model_version", Kind.TEXT, "used", True, "the shadow candidate's model version", since=4),
    _c("experiment", Kind.TEXT, "used", True, "A/B experiment id", since=4),
    _c("arm", Kind.TEXT, "used", True, "A/B arm: control or treatment", since=4),
    _c("propensity", Kind.REAL, "used", True, "probability of the arm this unit was assigned", since=4),
    _c("parent_request_id", Kind.TEXT, "used", True, "audit rows: the transfer they re-measure", since=4),
]
_META = [
    _c("cost_params", Kind.TEXT, "meta", False, "fingerprint of the cost-model parameters"),
    _c("feature_version", Kind.TEXT, "meta", False),
    _c("schema_version", Kind.INT, "meta", False),
    _c("library_version", Kind.TEXT, "meta", False),
    _c("measure_repeats", Kind.INT, "meta", False),
    _c("quality_flags", Kind.INT, "meta", False),
    _c(
        "host_profile_id",
        Kind.TEXT,
        "meta",
        True,
        "the measuring host's profile (key and measurement)",
        since=3,
    ),
    _c("host_cpu", Kind.TEXT, "meta", True, "the measuring host's CPU model and usable cores", since=3),
]

# The sampling-probe baseline (DESIGN section 5): every strategy run on a 64 KiB sample. What a probe
# policy would learn at decision time, kept for evaluating that policy; never an input of our model.
_PROBE = [_c("p_sample_bytes", Kind.INT, "probe", True, "bytes of the probe's sample", since=2)]
for _s in STRATEGIES:
    _PROBE += [
        _c(f"p_{_s}_bytes", Kind.INT, "probe", True, f"{_s} bytes on the sample", since=2),
        _c(f"p_{_s}_encode_s", Kind.REAL, "probe", True, f"{_s} encode CPU seconds on the sample", since=2),
        _c(f"p_{_s}_decode_s", Kind.REAL, "probe", True, f"{_s} decode CPU seconds on the sample", since=2),
    ]

COLUMNS: tuple[Column, ...] = tuple(_IDS + _FEATURES + _OUTCOMES + _PROBE + _LABELS + _USED + _META)
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
FEATURE_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.group == "feature")
_BY_NAME = {c.name: c for c in COLUMNS}


def column(name: str) -> Column:
    return _BY_NAME[name]


_all = operator.itemgetter(*COLUMN_NAMES)
_required = operator.itemgetter(*(i for i, c in enumerate(COLUMNS) if not c.nullable))
_NAMES = frozenset(COLUMN_NAMES)


def row_tuple(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """A record as a tuple in column order, for the stores' write path (about 2 µs).

    Unknown fields and a missing or naive timestamp are refused here; a missing required value is left to
    the store's NOT NULL constraints, which fail the batch, after which :func:`validate` names the bad
    record. Sparse records (optional columns left out) are completed with ``None``.
    """
    if len(record) == len(COLUMN_NAMES):
        try:
            row: tuple[Any, ...] = _all(record)
        except KeyError:
            validate(record)
            raise
    else:
        if record.keys() - _NAMES:
            raise ConfigError(f"telemetry record has unknown fields: {sorted(record.keys() - _NAMES)}")
        row = tuple([record.get(n) for n in COLUMN_NAMES])
    ts = row[_TS]
    if not isinstance(ts, dt.datetime) or ts.tzinfo is None:
        raise ConfigError(f"ts must be a timezone-aware datetime, got {ts!r}")
    return row


def validate(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """Every check of a record, with a message naming what is wrong; returns its row tuple."""
    if record.keys() - _NAMES:
        raise ConfigError(f"telemetry record has unknown fields: {sorted(record.keys() - _NAMES)}")
    row = tuple([record.get(n) for n in COLUMN_NAMES])
    if None in _required(row):
        missing = [c.name for c, v in zip(COLUMNS, row, strict=True) if v is None and not c.nullable]
        raise ConfigError(f"telemetry record lacks required fields {missing}")
    source = record.get("source")
    if source not in SOURCES:
        raise ConfigError(f"telemetry record source must be one of {list(SOURCES)}, got {source!r}")
    if source in LABELLED_SOURCES:
        unlabelled = [name for name in RELAXED_IN_4 if record.get(name) is None]
        if unlabelled:
            raise ConfigError(f"a {source} record must carry its label: {unlabelled} missing")
    ts = row[_TS]
    if not isinstance(ts, dt.datetime) or ts.tzinfo is None:
        raise ConfigError(f"ts must be a timezone-aware datetime, got {ts!r}")
    return row


_TS = COLUMN_NAMES.index("ts")
