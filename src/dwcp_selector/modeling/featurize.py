"""The model's input vector: one definition for training (columns of a dataset) and serving (one decision).

Two tiers (``features.py``): the **light** vector uses the basic payload features only; the **rich** vector
adds the probe and similarity features. Each vector has a payload part (what the encoders will do: the
cost model's regressors use only this) and a link part (the path and the node: the classifier also needs
it). Derived link features follow DESIGN section 2: available bandwidth, per-stream Mathis rate, AMST
streams, bandwidth-delay product, and the raw transmit and transfer times of the unencoded payload; and
the CPU side of the same formula: the number of 1 MiB chunks and the parallelism min(free cores, chunks)
that encoding and decoding get (a payload of one chunk gains nothing from free cores).

Categorical values (payload type, link type) are one-hot over lists stored in the model's manifest; an
unseen payload type maps to ``other``. Missing values (no baseline, no history yet) become 0 with an
indicator. Everything is a plain float so the single-decision path needs no numpy.

``LightRow`` builds a whole light row (the basic features included) in one compiled call for the decision
path; ``payload_vector`` and ``link_vector`` remain its definition, and a property test holds the two equal
bit for bit.
"""

from __future__ import annotations

import math
import threading
import time
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._sample import light_row
from .._types import BytesLike
from ..costmodel import CostModel
from ..features import BasicFeatures  # also hands ``_sample`` its c*log2(c) table before any row is built
from ..hostprofile import HOST_FEATURE_NAMES, REFERENCE_RATES
from ..link import LINK_CLASSES, LinkState, SystemState

__all__ = [
    "LIGHT",
    "PAYLOAD_TYPES",
    "RICH",
    "FeatureSpec",
    "LightRow",
    "link_names",
    "link_vector",
    "payload_names",
    "payload_vector",
]

LIGHT = "light"
RICH = "rich"
PAYLOAD_TYPES: tuple[str, ...] = (
    "vm_memory",
    "vm_memory_round",
    "vm_disk",
    "database",
    "database_wal",
    "logs_json",
    "document",
    "media",
    "encrypted",
    "corpus",
    # the real sources of the system corpus (``workload.system_corpus``)
    "executable",
    "package_db",
    "archive",
    "source",
    "other",
)
LINK_TYPES: tuple[str, ...] = tuple(LINK_CLASSES)
_LOG2 = math.log2
_CLOCK = time.perf_counter
_LOG10 = math.log10


def payload_names(tier: str, types: Sequence[str] = PAYLOAD_TYPES) -> list[str]:
    names = [
        "log2_size",
        "has_baseline",
        "log2_baseline_ratio",
        "entropy",
        "zero_fraction",
        "text_fraction",
        "similarity_pages",
        "prev_zstd_log_ratio",
        "prev_lz4_log_ratio",
        "prev_hde_log_ratio",
        "has_prev_zstd",
        "has_prev_lz4",
        "has_prev_hde",
    ]
    if tier == RICH:
        names += [
            "probe_lz4_log_ratio",
            "probe_zstd_log_ratio",
            "zero_page_fraction",
            "similarity_inplace",
            "similarity_shifted",
        ]
    return names + [f"type={t}" for t in types]


def link_names(types: Sequence[str] = LINK_TYPES) -> list[str]:
    return [
        "log10_capacity",
        "utilization",
        "log10_rtt",
        "jitter_ratio",
        "log10_loss",
        "log2_free_cores",
        "active_transfers",
        "log10_available",
        "log10_stream_rate",
        "log2_streams",
        "log10_bdp",
        "log10_transmit_s",
        "log10_raw_s",
        "log2_chunks",
        "log2_parallelism",
    ] + [f"link={t}" for t in types]


def _lr(x: float | None) -> float:
    """log2 of a ratio, 0 when absent."""
    return _LOG2(max(x, 1e-6)) if x is not None else 0.0


def payload_vector(
    tier: str,
    size: int,
    payload_type: str,
    *,
    baseline_bytes: int | None,
    entropy: float,
    zero_fraction: float,
    text_fraction: float,
    similarity_pages: float | None,
    prev: Mapping[str, float | None],
    probe_lz4: float | None = None,
    probe_zstd: float | None = None,
    zero_pages: float | None = None,
    similarity_inplace: float | None = None,
    similarity_shifted: float | None = None,
    types: Sequence[str] = PAYLOAD_TYPES,
) -> list[float]:
    """The payload part of one decision's vector (pure Python: a few µs)."""
    pz, pl, ph = prev.get("zstd"), prev.get("lz4"), prev.get("hde")
    v = [
        _LOG2(size + 1),
        0.0 if baseline_bytes is None else 1.0,
        0.0 if baseline_bytes is None else _LOG2((baseline_bytes + 1) / (size + 1)),
        entropy / 8.0,
        zero_fraction,
        text_fraction,
        similarity_pages if similarity_pages is not None else 0.0,
        _lr(pz),
        _lr(pl),
        _lr(ph),
        0.0 if pz is None else 1.0,
        0.0 if pl is None else 1.0,
        0.0 if ph is None else 1.0,
    ]
    if tier == RICH:
        v += [
            _lr(probe_lz4),
            _lr(probe_zstd),
            zero_pages or 0.0,
            similarity_inplace or 0.0,
            similarity_shifted or 0.0,
        ]
    t = payload_type if payload_type in types else "other"
    return v + [1.0 if t == name else 0.0 for name in types]


def link_vector(
    size: int,
    capacity_bps: float,
    utilization: float,
    rtt_s: float,
    jitter_s: float,
    loss: float,
    free_cores: float,
    active_transfers: int,
    link_type: str | None,
    cost_model: CostModel,
    types: Sequence[str] = LINK_TYPES,
) -> list[float]:
    """The link part of one decision's vector (pure Python: a couple of µs)."""
    p = cost_model.params
    available = capacity_bps * (1.0 - utilization)
    window = 8.0 * p.window_cap_bytes / rtt_s
    rate = window if loss <= 0 else min(window, 8.0 * p.mss_bytes * 1.22 / (rtt_s * math.sqrt(loss)))
    streams = max(1, min(p.max_streams, math.ceil(available / rate)))
    effective = min(available, streams * rate)
    transmit = 8.0 * size / effective
    chunks = max(1, -(-size // p.chunk_size))
    return [
        _LOG10(capacity_bps),
        utilization,
        _LOG10(rtt_s),
        jitter_s / rtt_s,
        _LOG10(loss + 1e-9),
        _LOG2(free_cores),
        float(active_transfers),
        _LOG10(available),
        _LOG10(rate),
        _LOG2(streams),
        _LOG10(available * rtt_s / 8.0 + 1.0),
        _LOG10(transmit + 1e-9),
        _LOG10(rtt_s + transmit),
        _LOG2(chunks),
        _LOG2(min(free_cores, chunks)),
    ] + [1.0 if link_type == t else 0.0 for t in types]


@dataclass
class FeatureSpec:
    """What a model was trained on: tier, input names and category lists (stored in the manifest)."""

    tier: str
    payload_types: list[str] = field(default_factory=lambda: list(PAYLOAD_TYPES))
    link_types: list[str] = field(default_factory=lambda: list(LINK_TYPES))
    with_link: bool = True
    #: the node's speed profile as input (``hostprofile.host_vector``; models before it have none)
    with_host: bool = False

    @property
    def names(self) -> list[str]:
        names = payload_names(self.tier, self.payload_types)
        if self.with_link:
            names = names + link_names(self.link_types)
        return names + [f"host:{n}" for n in HOST_FEATURE_NAMES] if self.with_host else names

    def to_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "payload_types": self.payload_types,
            "link_types": self.link_types,
            "with_link": self.with_link,
            "with_host": self.with_host,
            "names": self.names,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        spec = cls(
            str(d["tier"]),
            list(d["payload_types"]),
            list(d["link_types"]),
            bool(d["with_link"]),
            bool(d.get("with_host", False)),
        )
        if spec.names != list(d["names"]):
            from ..errors import ConfigError

            raise ConfigError("the manifest's feature names do not match its feature definition")
        return spec

    # -- columns of a dataset ------------------------------------------------------------------------
    def matrix(self, cols: Mapping[str, np.ndarray], cost_model: CostModel | None = None) -> np.ndarray:
        """The input matrix of many records, from dataset columns (``f_*`` arrays)."""
        n = len(cols["f_payload_bytes"])
        size = cols["f_payload_bytes"].astype(np.float64)
        has_base = cols["f_has_baseline"].astype(bool)
        base = cols["f_baseline_bytes"].astype(np.float64)

        def lr(name: str) -> tuple[np.ndarray, np.ndarray]:
            v = cols[name].astype(np.float64)
            present = ~np.isnan(v)
            return np.where(present, np.log2(np.maximum(np.nan_to_num(v, nan=1.0), 1e-6)), 0.0), present

        pz, hz = lr("f_prev_zstd_ratio")
        pl, hl = lr("f_prev_lz4_ratio")
        ph, hh = lr("f_prev_hde_ratio")
        parts = [
            np.log2(size + 1),
            has_base.astype(np.float64),
            np.where(has_base, np.log2((base + 1) / (size + 1)), 0.0),
            cols["f_entropy"] / 8.0,
            cols["f_zero_fraction"],
            np.nan_to_num(cols["f_text_fraction"].astype(np.float64), nan=0.0),
            np.nan_to_num(cols["f_similarity_pages"].astype(np.float64), nan=0.0),
            pz,
            pl,
            ph,
            hz.astype(np.float64),
            hl.astype(np.float64),
            hh.astype(np.float64),
        ]
        if self.tier == RICH:
            parts += [
                lr("f_probe_lz4_ratio")[0],
                lr("f_probe_zstd_ratio")[0],
                np.nan_to_num(cols["f_zero_page_fraction"].astype(np.float64), nan=0.0),
                np.nan_to_num(cols["f_similarity_inplace"].astype(np.float64), nan=0.0),
                np.nan_to_num(cols["f_similarity_shifted"].astype(np.float64), nan=0.0),
            ]
        ptype = np.asarray(cols["f_payload_type"], dtype=object)
        known = np.isin(ptype, self.payload_types)
        ptype = np.where(known, ptype, "other")
        parts += [(ptype == t).astype(np.float64) for t in self.payload_types]
        if self.with_link:
            parts += self._link_columns(cols, size, cost_model or CostModel())
        if self.with_host:
            parts += self._host_columns(cols, n)
        out = np.column_stack(parts) if n else np.zeros((0, len(self.names)))
        return np.asarray(out, dtype=np.float32)

    @staticmethod
    def _host_columns(cols: Mapping[str, np.ndarray], n: int) -> list[np.ndarray]:
        """``host_vector`` of every record's ``f_host_*`` columns (0 where a record has none)."""
        out = []
        for name in HOST_FEATURE_NAMES:
            v = cols.get(f"f_{name}")
            if v is None:
                out.append(np.zeros(n))
                continue
            v = v.astype(np.float64)
            ok = np.isfinite(v) & (v > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                out.append(np.where(ok, np.log2(np.where(ok, v, 1.0) / REFERENCE_RATES[name]), 0.0))
        return out

    def _link_columns(
        self, cols: Mapping[str, np.ndarray], size: np.ndarray, cm: CostModel
    ) -> list[np.ndarray]:
        cap = cols["f_capacity_bps"].astype(np.float64)
        util = cols["f_utilization"].astype(np.float64)
        rtt = cols["f_rtt_s"].astype(np.float64)
        loss = cols["f_loss"].astype(np.float64)
        available, rate, streams, effective = cm.rates_array(cap, util, rtt, loss)
        transmit = 8.0 * size / effective
        chunks = np.maximum(1.0, np.ceil(size / cm.params.chunk_size))
        cores = cols["f_free_cores"].astype(np.float64)
        ltype = np.asarray(cols["f_link_type"], dtype=object)
        return [
            np.log10(cap),
            util,
            np.log10(rtt),
            cols["f_jitter_s"].astype(np.float64) / rtt,
            np.log10(loss + 1e-9),
            np.log2(cores),
            cols["f_active_transfers"].astype(np.float64),
            np.log10(available),
            np.log10(rate),
            np.log2(streams),
            np.log10(available * rtt / 8.0 + 1.0),
            np.log10(transmit + 1e-9),
            np.log10(rtt + transmit),
            np.log2(chunks),
            np.log2(np.minimum(cores, chunks)),
        ] + [(ltype == t).astype(np.float64) for t in self.link_types]


class LightRow:
    """The light tier's input row of one decision, built by one compiled call (``_sample.light_row``).

    The same numbers as ``basic_features`` followed by ``payload_vector`` and ``link_vector`` (light tier,
    with link), written into a per-thread float64 buffer that the compiled network reads directly: about a
    microsecond for the three, where the Python path takes several.
    """

    def __init__(self, spec: FeatureSpec, cost_model: CostModel, host: Sequence[float] | None = None) -> None:
        if spec.tier != LIGHT or not spec.with_link:
            raise ValueError("LightRow builds the light tier's row with its link part")
        self.width = len(spec.names)
        # the host inputs are the node's, the same in every decision: written once into each row buffer,
        # after the part the compiled call fills
        self._host = [float(x) for x in host] if spec.with_host and host is not None else []
        if spec.with_host and len(self._host) != len(HOST_FEATURE_NAMES):
            self._host = [0.0] * len(HOST_FEATURE_NAMES)
        self._c_width = self.width - len(self._host)
        self._types = {t: i for i, t in enumerate(spec.payload_types)}
        self._other = self._types.get("other", -1)
        self._n_types = len(spec.payload_types)
        self._links = {t: i for i, t in enumerate(spec.link_types)}
        self._n_links = len(spec.link_types)
        p = cost_model.params
        self._params = (float(p.window_cap_bytes), float(p.mss_bytes), int(p.max_streams), int(p.chunk_size))
        self._local = threading.local()

    def build(
        self,
        payload: BytesLike,
        baseline: BytesLike | None,
        payload_type: str,
        history: Mapping[str, float | None],
        link: LinkState,
        system: SystemState,
    ) -> tuple[array[float], BasicFeatures]:
        """(row, the basic features it holds); the row buffer is this thread's, reused by its next call."""
        t0 = _CLOCK()
        # the compiled call reads contiguous buffers; a strided view is copied, as basic_features does
        if type(payload) is memoryview and not payload.c_contiguous:
            payload = payload.tobytes()
        if type(baseline) is memoryview and not baseline.c_contiguous:
            baseline = baseline.tobytes()
        local = self._local
        row: array[float] | None = getattr(local, "row", None)
        if row is None:
            row = local.row = array("d", bytes(8 * self.width))
            row[self._c_width :] = array("d", self._host)
            local.view = memoryview(row)[: self._c_width] if self._host else row
        window, mss, streams, chunk = self._params
        lt = link.link_type
        entropy, zero, text, similarity, base_len = light_row(
            local.view,
            payload,
            baseline,
            self._types.get(payload_type, self._other),
            self._n_types,
            history.get("zstd"),
            history.get("lz4"),
            history.get("hde"),
            link.capacity_bps,
            link.utilization,
            link.rtt_s,
            link.jitter_s,
            link.loss,
            system.free_cores,
            system.active_transfers,
            self._links.get(lt, -1) if lt is not None else -1,
            self._n_links,
            window,
            mss,
            streams,
            chunk,
        )
        basic = BasicFeatures(
            len(payload), baseline is not None, base_len, entropy, zero, text, similarity, _CLOCK() - t0
        )
        return row, basic
