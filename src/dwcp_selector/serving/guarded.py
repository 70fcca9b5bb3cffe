"""The selector on the transfer path: the model when it can, the rule heuristic when it cannot, never an
exception.

:class:`GuardedSelector` wraps a :class:`~dwcp_selector.serving.Selector` (or a registry alias it follows)
and turns every way a model decision can fail into a decision of the rule heuristic (DESIGN section 6),
with the reason in ``Decision.fallback`` and counted in ``dwcp_selector_fallbacks_total{reason}``:

``model_unavailable``
    the model directory is missing, corrupt, tampered (checksum or signature), or made for another cost
    model or library version: refused on load (the reason's detail is in ``load_error``);
``unknown_payload_type``
    a payload type the model was not trained on (the model would read it as ``other``);
``feature_error``
    the payload or baseline could not be featurised (a typed error);
``inference_error``
    anything else the model raised;
``low_confidence``
    the model's confidence is below ``min_confidence`` (0: never);
``deadline``
    a model decision took longer than ``deadline_s``: that decision stands (it is paid for), and the
    next ones go to the heuristic for ``cooldown_s``, counted under this reason, so that an overloaded
    node stops spending its transfers' time on decisions.

The heuristic itself runs on the light tier's sampled features; if even those fail it answers ``none``
(reason suffixed ``+none``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .._types import BytesLike
from ..errors import ConfigError, DwcpError
from ..features import BasicFeatures
from ..link import LinkState, SystemState
from ..modeling.baselines import heuristic_decide, heuristic_rule
from ..modeling.decide import Decision
from ..modeling.policy import FAST, RICH, STRATEGIES
from .cache import DecisionCache
from .registry import ModelRegistry
from .selector import Selector

__all__ = ["FALLBACK_REASONS", "GuardedSelector", "SelectorMetrics"]

FALLBACK_REASONS = (
    "model_unavailable",
    "unknown_payload_type",
    "feature_error",
    "inference_error",
    "low_confidence",
    "deadline",
    "no_sample",  # the HTTP service: a request with neither a payload sample nor its statistics
)
HEURISTIC = "heuristic"
_log = logging.getLogger(__name__)


class SelectorMetrics(Collector):
    """Decisions by strategy and source, fallbacks by reason, decision latency.

    Plain counts under one lock, turned into Prometheus families only when scraped: a decision pays
    a few hundred nanoseconds for its three updates, where ``prometheus_client``'s labelled counters and
    histogram cost about 2 µs (half the light decision itself, and most of a batched one). The families
    are those of before: ``dwcp_selector_decisions_total{strategy,source}``,
    ``dwcp_selector_fallbacks_total{reason}`` (every reason exported, at 0 until it happens) and the
    histogram ``dwcp_selector_decision_seconds``.
    """

    BUCKETS = (1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 5e-3)

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._lock = threading.Lock()
        self._decisions: dict[tuple[str, str], int] = {}
        self._fallbacks: dict[str, int] = dict.fromkeys(FALLBACK_REASONS, 0)
        self._buckets = [0] * (len(self.BUCKETS) + 1)  # the last one: above every bound (+Inf)
        self._sum = 0.0
        self.registry.register(self)

    def decision(self, strategy: str, source: str, seconds: float, n: int = 1) -> None:
        """``n`` decisions of ``strategy`` (``source``: model, cache or heuristic), ``seconds`` each."""
        key = (strategy, source)
        i = bisect_left(self.BUCKETS, seconds)
        with self._lock:
            self._decisions[key] = self._decisions.get(key, 0) + n
            self._buckets[i] += n
            self._sum += seconds * n

    def cached(self, strategy: str) -> None:
        """A decision of the fleet cache (counted, not timed: it is another node's)."""
        key = (strategy, "cache")
        with self._lock:
            self._decisions[key] = self._decisions.get(key, 0) + 1

    def fallback(self, reason: str) -> None:
        with self._lock:
            self._fallbacks[reason] = self._fallbacks.get(reason, 0) + 1

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            decisions, fallbacks = dict(self._decisions), dict(self._fallbacks)
            buckets, total = list(self._buckets), self._sum
        d = CounterMetricFamily("dwcp_selector_decisions", "Encoder decisions", labels=["strategy", "source"])
        for (strategy, source), n in sorted(decisions.items()):
            d.add_metric([strategy, source], n)
        yield d
        f = CounterMetricFamily(
            "dwcp_selector_fallbacks", "Decisions the heuristic took instead of the model", labels=["reason"]
        )
        for reason, n in fallbacks.items():
            f.add_metric([reason], n)
        yield f
        cumulative, running = [], 0
        for bound, n in zip((*self.BUCKETS, math.inf), buckets, strict=True):
            running += n
            cumulative.append(("+Inf" if bound == math.inf else repr(bound), running))
        yield HistogramMetricFamily(
            "dwcp_selector_decision_seconds", "Time to decide", buckets=cumulative, sum_value=total
        )


class GuardedSelector:
    """A model decision for every transfer, or the heuristic's with the reason why; never raises."""

    def __init__(
        self,
        model: str | Path | Selector | None,
        *,
        registry: ModelRegistry | None = None,
        alias: str = "champion",
        min_confidence: float = 0.0,
        deadline_s: float = 2e-3,
        cooldown_s: float = 1.0,
        metrics: SelectorMetrics | None = None,
        model_key: bytes | None = None,
        cache: DecisionCache | None = None,
    ) -> None:
        """``model``: a model directory, a ready :class:`Selector`, or ``None`` with ``registry``
        (the version ``alias`` names is loaded, and :meth:`follow` keeps to it). ``cache``: the fleet's
        decision cache; a rich-tier transfer with a ``resource_id`` reuses a decision another node took
        for the same resource version, link bucket and size bucket, and shares the ones taken here."""
        self.cache = cache
        self.min_confidence = min_confidence
        self.deadline_s = deadline_s
        self.cooldown_s = cooldown_s
        self.metrics = metrics or SelectorMetrics()
        self.registry, self.alias = registry, alias
        self.load_error: str | None = None
        self.selector: Selector | None = None
        self._cool_until = 0.0
        try:
            if isinstance(model, Selector):
                self.selector = model
            elif model is not None:
                self.selector = Selector(model, host_profile=None, model_key=model_key)
            elif registry is not None:
                self.selector = Selector(registry.path(alias), host_profile=None, model_key=model_key)
            else:
                self.load_error = "no model given"
        except DwcpError as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            _log.warning("selector on the heuristic: %s", self.load_error)
        types = self.selector.artifact.tiers if self.selector is not None else {}
        self.payload_types = frozenset(t for tier in types.values() for t in tier.spec.payload_types)

    def follow(self, interval_s: float = 2.0) -> None:
        """Follow the registry alias (see :meth:`Selector.follow`)."""
        if self.registry is None:
            raise ConfigError("follow() needs a registry")
        if self.selector is not None:
            self.selector.follow(self.registry, self.alias, interval_s=interval_s)

    def select(
        self,
        payload: BytesLike,
        link: LinkState,
        system: SystemState,
        *,
        baseline: BytesLike | None = None,
        payload_type: str = "other",
        resource_id: str | None = None,
        history: Mapping[str, float | None] | None = None,
    ) -> Decision:
        """The decision for ``payload``: the model's, a cached one, or the heuristic's with the reason."""
        t0 = time.perf_counter()
        shared = False

        def run(sel: Selector) -> Decision:
            nonlocal shared
            shared = (
                self.cache is not None and resource_id is not None and self._worth_sharing(sel, payload, link)
            )
            if shared:
                assert self.cache is not None and resource_id is not None
                hit = self.cache.get_decision(resource_id, link, len(payload))
                if hit is not None and hit.get("strategy") in STRATEGIES:
                    return Decision(
                        str(hit["strategy"]),
                        float(hit.get("confidence", 0.0)),
                        str(hit.get("tier", "cached")),
                        latency_s=time.perf_counter() - t0,
                        cached=True,
                    )
            return sel.select(
                payload,
                link,
                system,
                baseline=baseline,
                payload_type=payload_type,
                resource_id=resource_id,
                history=history,
            )

        d = self._guard(t0, payload_type, run, lambda: heuristic_decide(payload, link, baseline).strategy)
        if shared and d.fallback is None and d.tier == RICH and not d.cached:
            assert self.cache is not None and resource_id is not None
            self.cache.put_decision(
                resource_id,
                link,
                len(payload),
                {"strategy": d.strategy, "confidence": d.confidence, "tier": d.tier},
            )
        return d

    def select_features(
        self,
        size: int,
        basic: BasicFeatures,
        link: LinkState,
        system: SystemState,
        *,
        payload_type: str = "other",
    ) -> Decision:
        """The same, from features computed elsewhere (a remote caller's sample statistics): the fast path
        or the light tier (``Decider.decide_features``), under the same guards."""
        t0 = time.perf_counter()
        return self._guard(
            t0,
            payload_type,
            lambda sel: sel.decider.decide_features(size, basic, link, system, payload_type=payload_type),
            lambda: _rule(size, basic, link),
        )

    def select_features_batch(
        self,
        sizes: Sequence[int],
        basics: Sequence[BasicFeatures],
        links: Sequence[LinkState],
        systems: Sequence[SystemState],
        payload_types: Sequence[str],
    ) -> list[Decision]:
        """:meth:`select_features` for many transfers at once, with the same decisions, fallbacks and
        counts as one call each: the guards per transfer, then the model's transfers in one feature
        matrix and one network run (``Decider.decide_features_batch``). Should the batch fail as a whole,
        each of its transfers is decided alone, so each gets the reason its own decision would give.
        A model decision's ``latency_s`` is its share of the batch's time; one over the deadline starts
        the cool-off for the transfers after the batch (the batch's own decisions are taken by then)."""
        t0 = time.perf_counter()
        n = len(sizes)
        out: list[Decision | None] = [None] * n
        sel = self.selector
        todo: list[int] = []
        for i in range(n):
            reason = self._refusal(sel, payload_types[i], t0)
            if reason is None:
                todo.append(i)
            else:
                rule = self._rule_of(sizes[i], basics[i], links[i])
                out[i] = self._fallback(reason, rule, time.perf_counter())
        if todo and sel is not None:
            try:
                decided = sel.decider.decide_features_batch(
                    [sizes[i] for i in todo],
                    [basics[i] for i in todo],
                    [links[i] for i in todo],
                    [systems[i] for i in todo],
                    [payload_types[i] for i in todo],
                )
            except Exception:  # noqa: BLE001 - each transfer alone: its own reason, never an exception
                _log.exception("batched model decision failed; deciding its transfers one by one")
                for i in todo:
                    out[i] = self.select_features(
                        sizes[i], basics[i], links[i], systems[i], payload_type=payload_types[i]
                    )
            else:
                self._accept_batch(todo, decided, out, sizes, basics, links, t0)
        return [d for d in out if d is not None]

    def _accept_batch(
        self,
        todo: Sequence[int],
        decided: Sequence[Decision],
        out: list[Decision | None],
        sizes: Sequence[int],
        basics: Sequence[BasicFeatures],
        links: Sequence[LinkState],
        t0: float,
    ) -> None:
        """:meth:`_accept` for each of a batch's model decisions, counted by strategy and latency in
        one update for each group (the model's decisions of a batch share their latency)."""
        counts: dict[tuple[str, float], int] = {}
        slowest = 0.0
        for i, d in zip(todo, decided, strict=True):
            if d.tier != FAST and d.confidence < self.min_confidence:
                out[i] = self._fallback("low_confidence", self._rule_of(sizes[i], basics[i], links[i]), t0)
                continue
            out[i] = d
            key = (d.strategy, d.latency_s)
            counts[key] = counts.get(key, 0) + 1
            slowest = max(slowest, d.latency_s)
        if slowest > self.deadline_s:
            self._cool_until = time.perf_counter() + self.cooldown_s
            _log.warning("decision took %.2f ms (deadline %.2f ms)", slowest * 1e3, self.deadline_s * 1e3)
        for (strategy, seconds), k in counts.items():
            self.metrics.decision(strategy, "model", seconds, k)

    def rule_decision(self, reason: str, size: int, basic: BasicFeatures, link: LinkState) -> Decision:
        """The heuristic's decision on features, counted under ``reason`` (a caller's own fallback)."""
        return self._fallback(reason, lambda: _rule(size, basic, link), time.perf_counter())

    @staticmethod
    def _rule_of(size: int, basic: BasicFeatures, link: LinkState) -> Callable[[], str]:
        return lambda: _rule(size, basic, link)

    def _refusal(self, sel: Selector | None, payload_type: str, t0: float) -> str | None:
        """Why the model may not decide this transfer at all (``None``: it may)."""
        if sel is None:
            return "model_unavailable"
        if payload_type not in self.payload_types:
            return "unknown_payload_type"
        if t0 < self._cool_until:
            return "deadline"
        return None

    def _guard(
        self,
        t0: float,
        payload_type: str,
        run: Callable[[Selector], Decision],
        rule: Callable[[], str],
    ) -> Decision:
        """``run`` on the selector, or ``rule`` with the reason whenever the model cannot decide."""
        sel = self.selector
        reason = self._refusal(sel, payload_type, t0)
        if reason is not None or sel is None:
            return self._fallback(reason or "model_unavailable", rule, t0)
        try:
            d = run(sel)
        except DwcpError:
            return self._fallback("feature_error", rule, t0)
        except Exception:  # noqa: BLE001 - a model bug must not reach the transfer
            _log.exception("model decision failed; the heuristic decides")
            return self._fallback("inference_error", rule, t0)
        return self._accept(d, rule, t0)

    def _accept(self, d: Decision, rule: Callable[[], str], t0: float) -> Decision:
        """The model's decision ``d``, unless its confidence is too low; counted, and timed."""
        if d.cached and d.tier != FAST:  # the fleet cache's (the selector's own answers on the fast path)
            self.metrics.cached(d.strategy)
            return d
        if d.tier != FAST and d.confidence < self.min_confidence:
            return self._fallback("low_confidence", rule, t0)
        if d.latency_s > self.deadline_s:
            self._cool_until = time.perf_counter() + self.cooldown_s
            _log.warning("decision took %.2f ms (deadline %.2f ms)", d.latency_s * 1e3, self.deadline_s * 1e3)
        self.metrics.decision(d.strategy, "model", d.latency_s)
        return d

    @staticmethod
    def _worth_sharing(sel: Selector, payload: BytesLike, link: LinkState) -> bool:
        """Only a rich-tier decision (probe and similarity features: milliseconds) costs more than a Redis
        round trip (~0.1 ms on loopback, more across a network); a light one is cheaper to take again."""
        decider = sel.decider
        return bool(decider.tier_of(decider.transmit_s(len(payload), link)) == RICH)

    def _fallback(self, reason: str, rule: Callable[[], str], t0: float) -> Decision:
        try:
            strategy = rule()
        except Exception:  # noqa: BLE001 - even the sampled features failed: send it raw
            strategy, reason = "none", reason + "+none"
        latency = time.perf_counter() - t0
        self.metrics.fallback(reason)
        self.metrics.decision(strategy, HEURISTIC, latency)
        return Decision(strategy, 0.0, HEURISTIC, latency_s=latency, fallback=reason)


def _rule(size: int, basic: BasicFeatures, link: LinkState) -> str:
    return heuristic_rule(size, basic.entropy, basic.has_baseline, basic.similarity_pages, link)
