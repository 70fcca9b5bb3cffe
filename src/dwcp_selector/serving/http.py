"""The selector as an HTTP service (FastAPI on uvicorn): for agents that are not Python.

    POST /v1/select          one decision: payload size and type, a payload sample (base64, at most
                             64 KiB) or precomputed sample statistics, baseline presence and similarity,
                             link, node
    POST /v1/select:batch    up to 1,000 of them
    GET  /healthz            the process answers
    GET  /readyz             a model is loaded and verified (503 while the heuristic decides)
    GET  /metrics            Prometheus: decisions, fallbacks by reason, latency, HTTP requests
    GET  /v1/model           which model serves (registry version or directory), its manifest summary
    POST /v1/model:reload    reload (from the registry alias, or the directory); needs the bearer token

Bodies larger than ``max_body_bytes`` (1 MiB) get 413; every malformed body gets a 4xx with a message
(FastAPI's validation, 422). Decisions go through :class:`GuardedSelector`, so a missing or broken
model answers with the heuristic and says so (``fallback``); the service itself never answers 5xx for a
request it could parse. Listens on loopback unless told otherwise.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from .._version import __version__
from ..errors import DwcpError
from ..features import BasicFeatures, basic_features
from ..link import LinkState, SystemState
from .guarded import GuardedSelector, SelectorMetrics
from .registry import ModelRegistry

__all__ = ["MAX_BATCH", "MAX_SAMPLE_BYTES", "create_app"]

MAX_SAMPLE_BYTES = 64 << 10
MAX_BATCH = 1000
MAX_BODY_BYTES = 1 << 20


class LinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    capacity_bps: float = Field(ge=1e3, le=1e13, description="link capacity, bit/s (1 kbit/s to 10 Tbit/s)")
    rtt_s: float = Field(ge=1e-6, le=10, description="round-trip time, seconds")
    loss: float = Field(default=0.0, ge=0, lt=1)
    utilization: float = Field(default=0.0, ge=0, lt=1)
    link_type: Literal["dc", "metro", "wan", "edge"] | None = None


class StatsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entropy: float = Field(ge=0, le=8, description="bits per byte of a sample")
    zero_fraction: float = Field(ge=0, le=1)
    text_fraction: float = Field(default=0.0, ge=0, le=1)


class SelectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    payload_bytes: int = Field(ge=0, le=1 << 44, description="size of the whole payload")
    payload_type: str = Field(default="other", max_length=64)
    sample_b64: str | None = Field(
        default=None,
        max_length=4 * (MAX_SAMPLE_BYTES // 3 + 1),
        pattern=r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
        description="a payload sample (at most 64 KiB), base64",
    )
    stats: StatsIn | None = Field(
        default=None,
        description="sample statistics, instead of a sample; with neither, the rule heuristic decides "
        "from size, link and baseline (fallback no_sample)",
    )
    has_baseline: bool = False
    similarity: float | None = Field(default=None, ge=0, le=1, description="baseline similarity estimate")
    link: LinkIn
    free_cores: float = Field(default=1.0, gt=0, le=4096)
    resource_id: str | None = Field(default=None, max_length=256)


class DecisionOut(BaseModel):
    strategy: str
    confidence: float
    tier: str
    fallback: str | None
    latency_s: float
    model_version: str | None


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: list[SelectIn] = Field(min_length=1, max_length=MAX_BATCH)


class BatchOut(BaseModel):
    decisions: list[DecisionOut]


def _link(link: LinkIn) -> LinkState:
    try:
        return LinkState(
            capacity_bps=link.capacity_bps,
            rtt_s=link.rtt_s,
            loss=link.loss,
            utilization=link.utilization,
            link_type=link.link_type,
        )
    except DwcpError as exc:
        raise HTTPException(422, str(exc)) from exc


def _features(req: SelectIn) -> BasicFeatures | None:
    """The light tier's features from the sample or the statistics; ``None`` when neither was given."""
    if req.sample_b64 is not None:
        try:
            sample = base64.b64decode(req.sample_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise HTTPException(422, f"sample_b64 is not base64: {exc}") from exc
        if len(sample) > MAX_SAMPLE_BYTES:
            raise HTTPException(413, f"sample of {len(sample)} bytes (at most {MAX_SAMPLE_BYTES})")
        b = basic_features(sample)
        entropy, zero, text, seconds = b.entropy, b.zero_fraction, b.text_fraction, b.seconds
    elif req.stats is not None:
        entropy, zero, text, seconds = (
            req.stats.entropy,
            req.stats.zero_fraction,
            req.stats.text_fraction,
            0.0,
        )
    else:
        return None
    similarity = req.similarity if req.has_baseline else None
    return BasicFeatures(req.payload_bytes, req.has_baseline, 0, entropy, zero, text, similarity, seconds)


class _Service:
    def __init__(self, guard: GuardedSelector, version: str | None) -> None:
        self.guard, self.version = guard, version

    def decide(self, req: SelectIn) -> DecisionOut:
        t0 = time.perf_counter()
        link = _link(req.link)
        basic = _features(req)
        if basic is None:  # nothing known of the content: the heuristic, on size, link and baseline
            similarity = req.similarity if req.has_baseline else None
            basic = BasicFeatures(req.payload_bytes, req.has_baseline, 0, 0.0, 0.0, 0.0, similarity, 0.0)
            d = self.guard.rule_decision("no_sample", req.payload_bytes, basic, link)
        else:
            system = SystemState(free_cores=req.free_cores)
            d = self.guard.select_features(
                req.payload_bytes, basic, link, system, payload_type=req.payload_type
            )
        return DecisionOut(
            strategy=d.strategy,
            confidence=d.confidence if math.isfinite(d.confidence) else 0.0,
            tier=d.tier,
            fallback=d.fallback,
            latency_s=time.perf_counter() - t0,
            model_version=self.version if d.fallback is None else None,
        )


def create_app(
    *,
    model_dir: str | Path | None = None,
    registry: ModelRegistry | None = None,
    alias: str = "champion",
    reload_token: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    model_key: bytes | None = None,
) -> FastAPI:
    """The service for a model directory, or for a registry alias it can reload."""
    metrics = SelectorMetrics()
    http_requests = Counter(
        "dwcp_http_requests", "HTTP requests", ["path", "status"], registry=metrics.registry
    )

    def load() -> _Service:
        if registry is not None:
            guard = GuardedSelector(
                None, registry=registry, alias=alias, metrics=metrics, model_key=model_key
            )
            version = guard.selector.model_dir.name if guard.selector is not None else None
        else:
            guard = GuardedSelector(model_dir, metrics=metrics, model_key=model_key)
            version = Path(model_dir).name if model_dir is not None and guard.selector is not None else None
        return _Service(guard, version)

    state = {"service": load()}
    app = FastAPI(
        title="dwcp-selector",
        version=__version__,
        description="Per-transfer encoder selection (none, lz4, zstd, hde) for AMST transfers.",
    )

    @app.middleware("http")
    async def limit_and_count(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            response: Any = JSONResponse({"detail": f"body larger than {max_body_bytes} bytes"}, 413)
        else:
            response = await call_next(request)
        http_requests.labels(request.url.path, str(response.status_code)).inc()
        return response

    @app.post("/v1/select", response_model=DecisionOut, responses={413: {}, 422: {}})
    def select(req: SelectIn) -> DecisionOut:
        return state["service"].decide(req)

    @app.post("/v1/select:batch", response_model=BatchOut, responses={413: {}, 422: {}})
    def select_batch(batch: BatchIn) -> BatchOut:
        service = state["service"]  # one model for the whole batch, even across a reload
        return BatchOut(decisions=[service.decide(r) for r in batch.requests])

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {}})
    def readyz() -> JSONResponse:
        g = state["service"].guard
        if g.selector is None:
            return JSONResponse({"ready": False, "reason": g.load_error}, 503)
        return JSONResponse({"ready": True, "model_version": state["service"].version})

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model")
    def model_info() -> dict[str, Any]:
        service = state["service"]
        sel = service.guard.selector
        if sel is None:
            return {"model_version": None, "fallback": "heuristic", "load_error": service.guard.load_error}
        a = sel.artifact
        return {
            "model_version": service.version,
            "family": a.family,
            "kind": a.kind,
            "cost_params_fingerprint": a.cost_params.fingerprint,
            "tiers": sorted(a.tiers),
            "payload_types": sorted(service.guard.payload_types),
            "alias": alias if registry is not None else None,
        }

    @app.post("/v1/model:reload", responses={401: {}, 403: {}, 409: {}})
    def reload(authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        if reload_token is None:
            raise HTTPException(403, "reload is disabled: the service was started without a token")
        given = (authorization or "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), reload_token.encode()):
            raise HTTPException(401, "a valid bearer token is needed")
        fresh = load()
        if fresh.guard.selector is None:
            raise HTTPException(
                409, f"the model did not load, the current one stays: {fresh.guard.load_error}"
            )
        state["service"] = fresh  # one assignment: requests in flight finish on the old model
        return {"model_version": fresh.version}

    return app
