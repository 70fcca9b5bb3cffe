"""One decision, end to end: tier by budget, features, model, choice, confidence, time taken.

This is the single-decision path both the selector (``serving``) and the timing of a trained model use,
so the decision time a model is evaluated with is the time this code takes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._types import BytesLike
from ..costmodel import CostModel, Oracle
from ..features import BasicFeatures, RichFeatures, basic_features, rich_features
from ..hostprofile import HOST_FEATURE_NAMES, HostProfile, host_vector
from ..link import LinkState, SystemState
from .artifact import CMIL
from .featurize import FeatureSpec, LightRow, link_vector, payload_vector
from .policy import FAST, LIGHT, RICH, STRATEGIES, DecisionTimes, cmil_costs_scalar, confidence_scalar
from .runtime import TieredModel

__all__ = ["Decider", "Decision", "decision_vector"]


class _NoValues(Mapping[str, float]):
    """An empty, immutable, hashable mapping: the default of a fast-path decision (allocates nothing)."""

    def __getitem__(self, key: str) -> float:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __hash__(self) -> int:
        return 0


_EMPTY: Mapping[str, float] = _NoValues()


@dataclass(slots=True)
class Decision:
    """A strategy for one transfer, why, and what it cost to decide."""

    strategy: str
    confidence: float
    tier: str
    probabilities: Mapping[str, float] = _EMPTY  # shared and read-only: the fast path allocates nothing
    predicted_costs: Mapping[str, float] = _EMPTY
    basic: BasicFeatures | None = None
    rich: RichFeatures | None = None
    latency_s: float = 0.0
    cached: bool = False
    #: why the rule heuristic decided instead of the model (``None``: the model decided)
    fallback: str | None = None

    @property
    def features(self) -> dict[str, Any]:
        """The features the decision used (built on demand: the decision path does not pay for it)."""
        out: dict[str, Any] = {"tier": self.tier}
        if self.basic is not None:
            b = self.basic
            out.update(
                payload_bytes=b.payload_bytes,
                entropy=b.entropy,
                zero_fraction=b.zero_fraction,
                text_fraction=b.text_fraction,
                similarity_pages=b.similarity_pages,
                seconds=b.seconds,
            )
        if self.rich is not None:
            r = self.rich
            out.update(
                probe_lz4_ratio=r.probe_lz4_ratio,
                probe_zstd_ratio=r.probe_zstd_ratio,
                zero_page_fraction=r.zero_page_fraction,
                similarity_inplace=r.similarity_inplace,
                similarity_shifted=r.similarity_shifted,
                rich_seconds=r.probe_s + r.similarity_s,
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "confidence": self.confidence,
            "tier": self.tier,
            "probabilities": dict(self.probabilities),
            "predicted_costs": dict(self.predicted_costs),
            "features": self.features,
            "latency_s": self.latency_s,
            "cached": self.cached,
        }


def decision_vector(
    spec: FeatureSpec,
    size: int,
    payload_type: str,
    basic: BasicFeatures,
    rich: RichFeatures | None,
    link: LinkState,
    system: SystemState,
    cost_model: CostModel,
    history: Mapping[str, float | None],
    host: Sequence[float] = (),
) -> list[float]:
    """The model input of one decision: the payload part, the link part when the spec has one, and the
    node's host inputs (``hostprofile.host_vector``) when it has those."""
    vec = payload_vector(
        spec.tier,
        size,
        payload_type,
        baseline_bytes=basic.baseline_bytes if basic.has_baseline else None,
        entropy=basic.entropy,
        zero_fraction=basic.zero_fraction,
        text_fraction=basic.text_fraction,
        similarity_pages=basic.similarity_pages,
        prev=history,
        probe_lz4=rich.probe_lz4_ratio if rich else None,
        probe_zstd=rich.probe_zstd_ratio if rich else None,
        zero_pages=rich.zero_page_fraction if rich else None,
        similarity_inplace=rich.similarity_inplace if rich else None,
        similarity_shifted=rich.similarity_shifted if rich else None,
        types=spec.payload_types,
    )
    if spec.with_link:
        vec += link_vector(
            size,
            link.capacity_bps,
            link.utilization,
            link.rtt_s,
            link.jitter_s,
            link.loss,
            system.free_cores,
            system.active_transfers,
            link.link_type,
            cost_model,
            spec.link_types,
        )
    if spec.with_host:
        vec += list(host) if len(host) == len(HOST_FEATURE_NAMES) else [0.0] * len(HOST_FEATURE_NAMES)
    return vec


_CLASSIFIER_ORDER = ("none", "lz4", "zstd", "hde")
if STRATEGIES != _CLASSIFIER_ORDER:  # _classifier_choice unpacks a classifier's outputs in this order
    raise RuntimeError(f"the label set changed to {STRATEGIES}: update modeling.decide._classifier_choice")


def _classifier_choice(out: Sequence[float], has_baseline: bool) -> tuple[str, dict[str, float]]:
    """A classifier's choice and its probabilities, renormalised over the offered strategies (``hde`` only
    with a baseline); ties go to the first in the oracle's order."""
    p_none, p_lz4, p_zstd, p_hde = out
    if has_baseline:
        total = (p_none + p_lz4 + p_zstd + p_hde) or 1.0
        probs = {"none": p_none / total, "lz4": p_lz4 / total, "zstd": p_zstd / total, "hde": p_hde / total}
    else:
        total = (p_none + p_lz4 + p_zstd) or 1.0
        probs = {"none": p_none / total, "lz4": p_lz4 / total, "zstd": p_zstd / total}
    return max(probs, key=probs.__getitem__), probs


def host_times(
    times: DecisionTimes, timing_host: Mapping[str, Any] | None, host_profile: HostProfile | None
) -> DecisionTimes:
    """Decision times for this node: ``times`` × (the timing host's Python rate / this node's)."""
    try:
        theirs = float((timing_host or {})["rates"]["host_python_ops_s"])
    except (KeyError, TypeError, ValueError):
        return times
    if host_profile is None or not theirs > 0:
        return times
    f = theirs / host_profile.python_ops_s
    return DecisionTimes(times.fast_s * f, times.light_s * f, times.rich_s * f)


class Decider:
    """Decides with a trained model under the artifact's policy (no cache; see ``serving``)."""

    def __init__(
        self,
        model: TieredModel,
        cost_model: CostModel | None = None,
        host_profile: HostProfile | None = None,
    ) -> None:
        """``host_profile`` is this node's (a model with host inputs takes the reference host's rates
        without one: ``hostprofile.REFERENCE_RATES``)."""
        self.model = model
        self.host = host_vector(host_profile.features() if host_profile is not None else None)
        self.artifact = model.artifact
        self.cost_model = cost_model or CostModel(self.artifact.cost_params)
        self.oracle = Oracle(self.cost_model)
        #: the tiers' decision times on this node: the artifact's, scaled by how much faster or slower
        #: this node runs Python than the host that timed them (when both profiles are known)
        self.times = host_times(self.artifact.times, self.artifact.extra.get("timing_host"), host_profile)
        #: raw transmit seconds below which the fast path decides, and from which the rich tier does
        self.fast_limit_s, self.rich_limit_s = self.artifact.policy.limits(self.times)
        self._fast_rule = self.artifact.fast_rule.choose
        # the last link's effective rate: a node decides many transfers over one LinkState (frozen), and
        # the rate is a third of a fast-path decision; one tuple, so threads never pair a link with
        # another's rate
        self._rate: tuple[LinkState | None, float] = (None, 1.0)
        # a light classifier whose network runs compiled gets its whole row from one compiled call too
        light = model.tiers.get(LIGHT)
        self.light_row: LightRow | None = None
        if (
            light is not None
            and light.dense is not None
            and self.artifact.kind != CMIL
            and light.spec.tier == LIGHT
            and light.spec.with_link
        ):
            self.light_row = LightRow(light.spec, self.cost_model, self.host)

    def transmit_s(self, size: int, link: LinkState) -> float:
        """Seconds to push ``size`` unencoded bytes through the link's AMST streams, without the RTT.

        ``training.policy_eval.transmit_array`` is the same for many records."""
        seen = self._rate
        if seen[0] is not link:
            seen = (link, self.cost_model.effective_bps(link))
            self._rate = seen
        return 8.0 * size / seen[1]

    def tier(self, size: int, link: LinkState) -> str:
        """The tier of a transfer from its raw transmit time (``policy.tier_array`` for many)."""
        return self.tier_of(self.transmit_s(size, link))

    def tier_of(self, transmit_s: float) -> str:
        """The tier of a transfer whose raw transmit time is ``transmit_s``."""
        if transmit_s < self.fast_limit_s:
            return FAST
        return RICH if transmit_s >= self.rich_limit_s else LIGHT

    def fast(
        self, t0: float, transmit_s: float, link: LinkState, has_baseline: bool, payload_type: str
    ) -> Decision:
        """The fast path's decision (the fast rule; ``t0`` is when the decision started)."""
        strategy, confidence = self._fast_rule(link.link_type, has_baseline, payload_type, transmit_s)
        return Decision(strategy, confidence, FAST, latency_s=time.perf_counter() - t0)

    def decide_features(
        self,
        size: int,
        basic: BasicFeatures,
        link: LinkState,
        system: SystemState,
        *,
        payload_type: str = "other",
        history: Mapping[str, float | None] | None = None,
    ) -> Decision:
        """A decision from features computed elsewhere (a remote caller's sample statistics): the fast
        path or the light tier; the rich tier needs the payload itself, so it decides at the light one."""
        t0 = time.perf_counter()
        transmit = self.transmit_s(size, link)
        if self.tier_of(transmit) == FAST:
            return self.fast(t0, transmit, link, basic.has_baseline, payload_type)
        return self._model_decision(LIGHT, size, payload_type, basic, None, link, system, history, t0)

    def decide_features_batch(
        self,
        sizes: Sequence[int],
        basics: Sequence[BasicFeatures],
        links: Sequence[LinkState],
        systems: Sequence[SystemState],
        payload_types: Sequence[str],
    ) -> list[Decision]:
        """:meth:`decide_features` for many transfers, with the same decisions: the fast path's each by
        the fast rule, the others' rows in one feature matrix (``FeatureSpec.matrix``, the definition
        training uses) through the same network, a row at a time through the compiled runtime when a
        single decision uses it (well under a microsecond each) and in one onnxruntime run otherwise.
        A model decision's ``latency_s`` is its share of the time the model's rows took together. The
        cost model's kind (CMIL) decides each row as one call would."""
        n = len(sizes)
        if not (len(basics) == len(links) == len(systems) == len(payload_types) == n):
            raise ValueError("decide_features_batch needs one of each input per transfer")
        out: list[Decision | None] = [None] * n
        if n == 0:
            return []
        # the transmit times of every transfer at once: the same IEEE operations as transmit_s, so the
        # same numbers (and tiers) as one call each
        _, _, _, effective = self.cost_model.rates_array(
            np.array([x.capacity_bps for x in links], dtype=np.float64),
            np.array([x.utilization for x in links], dtype=np.float64),
            np.array([x.rtt_s for x in links], dtype=np.float64),
            np.array([x.loss for x in links], dtype=np.float64),
        )
        transmit = (8.0 * np.array(sizes, dtype=np.float64) / effective).tolist()
        rows: list[int] = []
        fast_limit = self.fast_limit_s
        for i in range(n):
            if transmit[i] < fast_limit:
                out[i] = self.fast(
                    time.perf_counter(), transmit[i], links[i], basics[i].has_baseline, payload_types[i]
                )
            else:
                rows.append(i)
        if rows and self.artifact.kind == CMIL:
            for i in rows:
                t0 = time.perf_counter()
                out[i] = self._model_decision(
                    LIGHT, sizes[i], payload_types[i], basics[i], None, links[i], systems[i], None, t0
                )
        elif rows:
            t0 = time.perf_counter()
            tm = self.model[LIGHT]
            x = tm.spec.matrix(
                self._columns(rows, sizes, basics, links, systems, payload_types), self.cost_model
            )
            if tm.spec.with_host:
                host = (
                    self.host
                    if len(self.host) == len(HOST_FEATURE_NAMES)
                    else [0.0] * len(HOST_FEATURE_NAMES)
                )
                x[:, x.shape[1] - len(HOST_FEATURE_NAMES) :] = host
            if tm.dense is not None:  # the runtime a single decision uses, on the same float32 inputs
                run = tm.dense.run
                outputs = [run(row) for row in x.astype(np.float64)]
            else:
                outputs = tm.predict(x).tolist()
            share = (time.perf_counter() - t0) / len(rows)
            choose = _classifier_choice  # per row: faster than numpy on a batch's few hundred numbers
            for i, o in zip(rows, outputs, strict=True):
                basic = basics[i]
                strategy, probs = choose(o, basic.has_baseline)
                out[i] = Decision(strategy, probs[strategy], LIGHT, probs, _EMPTY, basic, None, share)
        return [d for d in out if d is not None]

    @staticmethod
    def _columns(
        rows: Sequence[int],
        sizes: Sequence[int],
        basics: Sequence[BasicFeatures],
        links: Sequence[LinkState],
        systems: Sequence[SystemState],
        payload_types: Sequence[str],
    ) -> dict[str, np.ndarray]:
        """The dataset columns (``f_*``) of these transfers, as ``FeatureSpec.matrix`` reads them."""
        b = [basics[i] for i in rows]
        ln = [links[i] for i in rows]
        sy = [systems[i] for i in rows]
        nan = math.nan
        return {
            "f_payload_bytes": np.array([sizes[i] for i in rows], dtype=np.float64),
            "f_has_baseline": np.array([x.has_baseline for x in b], dtype=bool),
            "f_baseline_bytes": np.array([x.baseline_bytes for x in b], dtype=np.float64),
            "f_entropy": np.array([x.entropy for x in b], dtype=np.float64),
            "f_zero_fraction": np.array([x.zero_fraction for x in b], dtype=np.float64),
            "f_text_fraction": np.array([x.text_fraction for x in b], dtype=np.float64),
            "f_similarity_pages": np.array(
                [nan if x.similarity_pages is None else x.similarity_pages for x in b], dtype=np.float64
            ),
            "f_prev_zstd_ratio": np.full(len(rows), nan),
            "f_prev_lz4_ratio": np.full(len(rows), nan),
            "f_prev_hde_ratio": np.full(len(rows), nan),
            "f_payload_type": np.array([payload_types[i] for i in rows], dtype=object),
            "f_capacity_bps": np.array([x.capacity_bps for x in ln], dtype=np.float64),
            "f_utilization": np.array([x.utilization for x in ln], dtype=np.float64),
            "f_rtt_s": np.array([x.rtt_s for x in ln], dtype=np.float64),
            "f_jitter_s": np.array([x.jitter_s for x in ln], dtype=np.float64),
            "f_loss": np.array([x.loss for x in ln], dtype=np.float64),
            "f_link_type": np.array([x.link_type for x in ln], dtype=object),
            "f_free_cores": np.array([x.free_cores for x in sy], dtype=np.float64),
            "f_active_transfers": np.array([x.active_transfers for x in sy], dtype=np.float64),
        }

    def decide(
        self,
        payload: BytesLike,
        link: LinkState,
        system: SystemState,
        *,
        baseline: BytesLike | None = None,
        payload_type: str = "other",
        history: Mapping[str, float | None] | None = None,
        tier: str | None = None,
    ) -> Decision:
        t0 = time.perf_counter()
        size = len(payload)
        # the transmit time picks the tier and keys the fast rule; a caller that gives a model tier
        # (the selector, which estimated it already) does not pay for it again
        transmit = self.transmit_s(size, link) if tier is None or tier == FAST else 0.0
        chosen_tier = tier or self.tier_of(transmit)
        if chosen_tier == FAST:
            return self.fast(t0, transmit, link, baseline is not None, payload_type)
        if chosen_tier == LIGHT and self.light_row is not None:
            # a light classifier's row and basic features in one compiled call, its network compiled
            row, basic = self.light_row.build(payload, baseline, payload_type, history or {}, link, system)
            strategy, probs = _classifier_choice(self.model.tiers[LIGHT].predict_one(row), basic.has_baseline)
            return Decision(
                strategy, probs[strategy], LIGHT, probs, _EMPTY, basic, None, time.perf_counter() - t0
            )
        basic = basic_features(payload, baseline)
        rich = rich_features(payload, baseline) if chosen_tier == RICH else None
        return self._model_decision(chosen_tier, size, payload_type, basic, rich, link, system, history, t0)

    def _model_decision(
        self,
        tier: str,
        size: int,
        payload_type: str,
        basic: BasicFeatures,
        rich: RichFeatures | None,
        link: LinkState,
        system: SystemState,
        history: Mapping[str, float | None] | None,
        t0: float,
    ) -> Decision:
        """The tier's model on these features: a classifier's choice, or the cost model's argmin."""
        tm = self.model[tier]
        vec = decision_vector(
            tm.spec, size, payload_type, basic, rich, link, system, self.cost_model, history or {}, self.host
        )
        out = tm.predict_one(vec)
        costs: dict[str, float] = {}
        if self.artifact.kind == CMIL:
            costs = cmil_costs_scalar(out, size, basic.has_baseline, link, system, self.cost_model)
            strategy = self.oracle.decide(costs).label
            probs = confidence_scalar(costs, self.artifact.temperature)
        else:
            strategy, probs = _classifier_choice(out, basic.has_baseline)
        return Decision(
            strategy, probs.get(strategy, 0.0), tier, probs, costs, basic, rich, time.perf_counter() - t0
        )
