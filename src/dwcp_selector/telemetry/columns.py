"""What the record's columns hold, from the objects that measured it: one mapping for every writer
(staging collection and the transfer manager's transfer and audit rows)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..costmodel import StrategyMeasurement
from ..features import BasicFeatures, RichFeatures
from ..link import LinkState, SystemState
from ..measure import StrategyRun
from .schema import STRATEGIES, QualityFlag

__all__ = ["feature_columns", "link_columns", "measurement_flags", "outcome_columns"]

#: A timing under this is close to the clock's resolution (``QualityFlag.COARSE_TIMING``).
COARSE_TIMING_S = 20e-6


def feature_columns(basic: BasicFeatures, rich: RichFeatures | None) -> dict[str, Any]:
    """The payload's decision-time features (the rich tier's null when it was not computed)."""
    return {
        "f_has_baseline": basic.has_baseline,
        "f_baseline_bytes": basic.baseline_bytes,
        "f_entropy": basic.entropy,
        "f_zero_fraction": basic.zero_fraction,
        "f_text_fraction": basic.text_fraction,
        "f_similarity_pages": basic.similarity_pages,
        "f_basic_s": basic.seconds,
        "f_zero_page_fraction": rich.zero_page_fraction if rich is not None else None,
        "f_probe_lz4_ratio": rich.probe_lz4_ratio if rich is not None else None,
        "f_probe_zstd_ratio": rich.probe_zstd_ratio if rich is not None else None,
        "f_similarity_inplace": rich.similarity_inplace if rich is not None else None,
        "f_similarity_shifted": rich.similarity_shifted if rich is not None else None,
        "f_probe_s": rich.probe_s if rich is not None else None,
        "f_similarity_s": rich.similarity_s if rich is not None else None,
    }


def link_columns(link: LinkState, system: SystemState, link_type: str | None) -> dict[str, Any]:
    """The link and node the record is priced under."""
    return {
        "f_link_type": link_type,
        "f_capacity_bps": link.capacity_bps,
        "f_utilization": link.utilization,
        "f_rtt_s": link.rtt_s,
        "f_jitter_s": link.jitter_s,
        "f_loss": link.loss,
        "f_free_cores": system.free_cores,
        "f_active_transfers": system.active_transfers,
    }


def outcome_columns(measured: Mapping[str, StrategyMeasurement]) -> dict[str, Any]:
    """``o_<strategy>_bytes/encode_s/decode_s`` of every strategy (null where not measured or failed)."""
    out: dict[str, Any] = {}
    for s in STRATEGIES:
        m = measured.get(s)
        out[f"o_{s}_bytes"] = m.compressed_bytes if m is not None else None
        out[f"o_{s}_encode_s"] = m.encode_s if m is not None else None
        out[f"o_{s}_decode_s"] = m.decode_s if m is not None else None
    return out


def measurement_flags(runs: Mapping[str, StrategyRun], repeats: int) -> QualityFlag:
    """The flags a measurement earns: a failed round trip, a single timing, a timing near the clock's
    resolution."""
    flags = QualityFlag.NONE
    if any(not r.roundtrip for r in runs.values()):
        flags |= QualityFlag.ROUNDTRIP_FAILED
    if repeats == 1:
        flags |= QualityFlag.SINGLE_TIMING
    if any(min(r.encode_s, r.decode_s) < COARSE_TIMING_S for r in runs.values() if r.roundtrip):
        flags |= QualityFlag.COARSE_TIMING
    return flags
