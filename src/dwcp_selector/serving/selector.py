"""The selector a sending service embeds: a model artifact, the fast path and a decision cache.

:class:`Selector` wraps the single-decision path (``modeling.decide``) with a cache of recent decisions:
a transfer whose transmit time is too short to pay for a model decision reuses the decision last taken
for the **same resource over the same link** when there is one, and otherwise what the artifact's fast
rule says for its link type, baseline, payload type and transmit time (``none`` where it knows nothing).

The cache key is ``(resource id, link type, capacity and RTT rounded to powers of 2, has baseline)``:
links whose bandwidth or RTT differ by less than a factor of two price encoders alike. An entry is
dropped when it is older than ``ttl_s`` (default 60 s), when the payload size moves by more than a factor
of four from the one it was decided for, and when :meth:`Selector.invalidate` is called for its resource
(a new baseline, a reconfigured link). The cache is bounded (LRU, 10,000 entries).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from .._types import BytesLike
from ..costmodel import CostModel
from ..errors import DwcpError
from ..hostprofile import SERVING_PROFILE_MAX_AGE_S, HostProfile, compare_to_training_hosts, load_or_calibrate
from ..link import LinkState, SystemState
from ..modeling.artifact import load_artifact
from ..modeling.decide import Decider, Decision
from ..modeling.policy import FAST
from ..modeling.runtime import TieredModel
from .registry import ModelRegistry

__all__ = ["DEFAULT_CACHE_SIZE", "DEFAULT_CACHE_TTL_S", "Selector"]

DEFAULT_CACHE_SIZE = 10_000
DEFAULT_CACHE_TTL_S = 60.0
_SIZE_DRIFT = 4.0
_log = logging.getLogger(__name__)

CacheKey = tuple[str, str, int, int, bool]


class Selector:
    """Chooses the encoder of each transfer with a trained model (thread-safe)."""

    host_profile: HostProfile | None
    host_report: dict[str, Any]
    decider: Decider

    def __init__(
        self,
        model_dir: str | Path,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        ttl_s: float = DEFAULT_CACHE_TTL_S,
        host_profile: HostProfile | Literal["auto"] | None = "auto",
        model_key: bytes | None = None,
    ) -> None:
        """``host_profile="auto"`` takes this host's cached profile, or measures it (about 4 s) when there
        is none or the cached one is older than ``SERVING_PROFILE_MAX_AGE_S`` (a day); ``None`` skips
        it. ``host_report`` compares it with the model's training hosts, and each warning goes to the
        log. ``model_key``: refuse a model not signed with it (``Settings.model_key``, from
        ``DWCP_MODEL_KEY``)."""
        self.model_key = model_key
        self.model_dir = Path(model_dir)
        self._model = _load(model_dir, model_key)
        self.artifact, self.cost_model = self._model.artifact, CostModel(self._model.artifact.cost_params)
        self._adopt(
            load_or_calibrate(max_age_s=SERVING_PROFILE_MAX_AGE_S) if host_profile == "auto" else host_profile
        )
        self.reloads = 0
        self.reload_errors = 0
        self.last_reload_error: str | None = None
        self._following: threading.Event | None = None
        for message in self.host_report["warnings"]:
            _log.warning("model %s on this host: %s", model_dir, message)
        self.cache_size = cache_size
        self.ttl_s = ttl_s
        self._cache: OrderedDict[CacheKey, tuple[float, int, Decision]] = OrderedDict()
        self._lock = threading.Lock()

    def refresh_host_profile(self, *, budget_s: float = 2.0) -> HostProfile:
        """Measure this node again and decide with the new profile from the next call on.

        A node whose speed drifts (shared hosts, thermal limits, noisy neighbours) calls this now and
        then, from a background thread: the new decider is built aside and swapped in with one
        assignment, so a decision in flight finishes with the old one. The profile goes to the cache.
        """
        profile = load_or_calibrate(force=True, budget_s=budget_s)
        assert profile is not None
        self._adopt(profile)
        return profile

    def reload(self, model_dir: str | Path) -> None:
        """Decide with the model in ``model_dir`` from the next call on.

        The new model is loaded and verified aside (an error leaves the current one in place and is
        raised), then swapped in with one assignment of the decider: a decision in flight finishes on
        the model it started with. Cached decisions of the old model are dropped.
        """
        model = _load(model_dir, self.model_key)
        cost_model = CostModel(model.artifact.cost_params)
        decider, report = _decider(model, cost_model, self.host_profile)
        with self._lock:
            self.artifact, self.cost_model, self._model = model.artifact, cost_model, model
            self.host_report, self.decider = report, decider
            self.model_dir = Path(model_dir)
            self._cache.clear()
            self.reloads += 1

    def follow(self, registry: ModelRegistry, alias: str = "champion", *, interval_s: float = 2.0) -> None:
        """Follow ``alias`` of ``registry``: a background thread checks it every ``interval_s`` and
        reloads when it moves (verified, atomically; a version that fails to load is counted in
        ``reload_errors`` and the current model stays)."""
        self.stop_following()
        stop = threading.Event()
        self._following = stop

        def run() -> None:
            while not stop.wait(interval_s):
                self.check_alias(registry, alias)

        threading.Thread(target=run, name=f"dwcp-follow-{alias}", daemon=True).start()

    def check_alias(self, registry: ModelRegistry, alias: str = "champion") -> bool:
        """Reload if ``alias`` now points at another version than the one serving; whether it did."""
        try:
            path = registry.path(alias)
            if path.resolve() == self.model_dir.resolve():
                return False
            self.reload(path)
        except DwcpError as exc:
            self.reload_errors += 1
            self.last_reload_error = f"{type(exc).__name__}: {exc}"
            _log.warning("model alias %s of %s not followed: %s", alias, registry.root, exc)
            return False
        return True

    def stop_following(self) -> None:
        if self._following is not None:
            self._following.set()
            self._following = None

    def _adopt(self, profile: HostProfile | None) -> None:
        """Decide with ``profile`` from the next call on: the decider is built aside, then swapped in."""
        decider, report = _decider(self._model, self.cost_model, profile)
        self.host_profile, self.host_report, self.decider = profile, report, decider

    @staticmethod
    def cache_key(resource_id: str, link: LinkState, has_baseline: bool) -> CacheKey:
        return (
            resource_id,
            link.link_type or "",
            round(math.log2(link.capacity_bps)),
            round(math.log2(link.rtt_s)),
            has_baseline,
        )

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
        """The strategy for this transfer (and its confidence, tier, features and decision time)."""
        t0 = time.perf_counter()
        size = len(payload)
        decider = self.decider
        transmit = decider.transmit_s(size, link)
        key = self.cache_key(resource_id, link, baseline is not None) if resource_id is not None else None
        if transmit < decider.fast_limit_s:  # the fast path: decider.tier_of inlined, a call saved
            if key is not None:
                hit = self._cached(key, size)
                if hit is not None:
                    return Decision(
                        hit.strategy,
                        hit.confidence,
                        FAST,
                        hit.probabilities,
                        latency_s=time.perf_counter() - t0,
                        cached=True,
                    )
            return decider.fast(t0, transmit, link, baseline is not None, payload_type)
        decision = decider.decide(
            payload,
            link,
            system,
            baseline=baseline,
            payload_type=payload_type,
            history=history,
            tier=decider.tier_of(transmit),
        )
        if key is not None:
            with self._lock:
                self._cache[key] = (time.monotonic(), size, decision)
                self._cache.move_to_end(key)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return decision

    def _cached(self, key: CacheKey, size: int) -> Decision | None:
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            stamp, decided_size, decision = entry
            stale = time.monotonic() - stamp > self.ttl_s
            drifted = not (decided_size / _SIZE_DRIFT <= max(size, 1) <= max(decided_size, 1) * _SIZE_DRIFT)
            if stale or drifted:
                del self._cache[key]
                return None
            self._cache.move_to_end(key)
            return decision

    def invalidate(self, resource_id: str) -> int:
        """Forget every cached decision of ``resource_id``; returns how many were dropped."""
        with self._lock:
            keys = [k for k in self._cache if k[0] == resource_id]
            for k in keys:
                del self._cache[k]
        return len(keys)


def _load(model_dir: str | Path, key: bytes | None) -> TieredModel:
    """A model directory, verified (with ``key``: signed by it), ready to run."""
    return TieredModel(load_artifact(model_dir, key=key))


def _decider(
    model: TieredModel, cost_model: CostModel, profile: HostProfile | None
) -> tuple[Decider, dict[str, Any]]:
    """A decider for ``model`` on this node, and how the node compares with the model's training hosts."""
    hosts = model.artifact.extra.get("training_hosts") or []
    return Decider(model, cost_model, profile), compare_to_training_hosts(profile, hosts)
