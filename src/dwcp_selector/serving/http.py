"""The selector as an HTTP service (a plain ASGI app, msgspec for the bodies): for agents that are not
Python.

    POST /v1/select          one decision: payload size and type, a payload sample (base64, at most
                             64 KiB) or precomputed sample statistics, baseline presence and similarity,
                             link, node
    POST /v1/select:batch    up to 1,000 of them, decided in one feature matrix and one network pass
    GET  /healthz            the process answers
    GET  /readyz             a model is loaded and verified (503 while the heuristic decides)
    GET  /metrics            Prometheus: decisions, fallbacks by reason, latency, HTTP requests
    GET  /v1/model           which model serves (registry version or directory), its manifest summary
    POST /v1/model:reload    reload (from the registry alias, or the directory); needs the bearer token
    GET  /openapi.json       the OpenAPI document, generated from the same types that decode the bodies

Bodies larger than ``max_body_bytes`` (1 MiB) get 413; every malformed body gets a 4xx with a message
(``{"detail": ...}``: 422 for JSON that does not parse or does not fit the schema). Decisions go through
:class:`GuardedSelector`, so a missing or broken model answers with the heuristic and says so
(``fallback``); the service itself never answers 5xx for a request it could parse. Listens on loopback
unless told otherwise.

Why no web framework: FastAPI with pydantic models cost ~450 µs of server CPU per single decision on
the reference 2-core host, 100 times the decision (decision 0010 has the measurements of each stack
tried); this app is a route table, msgspec's decoders and encoders, and the ASGI messages, so a request
costs what the server's HTTP parsing and the decision cost. Handlers run on the event loop (a decision is
microseconds); only a reload, which loads and verifies a model, runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from .._version import __version__
from ..errors import DwcpError
from ..features import BasicFeatures, basic_features
from ..link import LinkState, SystemState
from .guarded import GuardedSelector, SelectorMetrics
from .registry import ModelRegistry

__all__ = [
    "MAX_BATCH",
    "MAX_BODY_BYTES",
    "MAX_SAMPLE_BYTES",
    "BatchIn",
    "BatchOut",
    "DecisionOut",
    "LinkIn",
    "SelectIn",
    "SelectorApp",
    "StatsIn",
    "create_app",
    "create_app_from_env",
    "openapi_document",
]

MAX_SAMPLE_BYTES = 64 << 10
MAX_BATCH = 1000
MAX_BODY_BYTES = 1 << 20

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# -- the schema: these types decode the bodies and generate the OpenAPI document ---------------------------
class LinkIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    capacity_bps: Annotated[
        float, Meta(ge=1e3, le=1e13, description="link capacity, bit/s (1 kbit/s to 10 Tbit/s)")
    ]
    rtt_s: Annotated[float, Meta(ge=1e-6, le=10, description="round-trip time, seconds")]
    loss: Annotated[float, Meta(ge=0, lt=1)] = 0.0
    utilization: Annotated[float, Meta(ge=0, lt=1)] = 0.0
    link_type: Literal["dc", "metro", "wan", "edge"] | None = None


class StatsIn(msgspec.Struct, forbid_unknown_fields=True):
    entropy: Annotated[float, Meta(ge=0, le=8, description="bits per byte of a sample")]
    zero_fraction: Annotated[float, Meta(ge=0, le=1)]
    text_fraction: Annotated[float, Meta(ge=0, le=1)] = 0.0


class SelectIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    payload_bytes: Annotated[int, Meta(ge=0, le=1 << 44, description="size of the whole payload")]
    payload_type: Annotated[str, Meta(max_length=64)] = "other"
    sample_b64: (
        Annotated[
            str,
            Meta(
                max_length=4 * (MAX_SAMPLE_BYTES // 3 + 1),
                pattern=r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
                description="a payload sample (at most 64 KiB), base64",
            ),
        ]
        | None
    ) = None
    stats: (
        Annotated[
            StatsIn,
            Meta(
                description="sample statistics, instead of a sample; with neither, the rule heuristic "
                "decides from size, link and baseline (fallback no_sample)"
            ),
        ]
        | None
    ) = None
    has_baseline: bool = False
    similarity: Annotated[float, Meta(ge=0, le=1, description="baseline similarity estimate")] | None = None
    link: LinkIn
    free_cores: Annotated[float, Meta(gt=0, le=4096)] = 1.0
    resource_id: Annotated[str, Meta(max_length=256)] | None = None

    @classmethod
    def model_validate(cls, obj: Any) -> SelectIn:
        """A request from a decoded JSON object, validated as the body decoder validates it (raises
        ``msgspec.ValidationError``, a ``ValueError``)."""
        return msgspec.convert(obj, cls, strict=False)


class DecisionOut(msgspec.Struct):
    strategy: str
    confidence: float
    tier: str
    fallback: str | None
    latency_s: Annotated[
        float, Meta(description="seconds the service spent on this decision (in a batch: its share)")
    ]
    model_version: str | None


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    requests: Annotated[list[SelectIn], Meta(min_length=1, max_length=MAX_BATCH)]


class BatchOut(msgspec.Struct):
    decisions: list[DecisionOut]


class ErrorOut(msgspec.Struct):
    detail: str


class HealthOut(msgspec.Struct):
    status: str


class ReadyOut(msgspec.Struct, omit_defaults=True):
    ready: bool
    model_version: str | None = None
    reason: str | None = None


class ModelOut(msgspec.Struct, omit_defaults=True):
    model_version: str | None
    fallback: str | None = None
    load_error: str | None = None
    family: str | None = None
    kind: str | None = None
    cost_params_fingerprint: str | None = None
    tiers: list[str] | None = None
    payload_types: list[str] | None = None
    alias: str | None = None


class ReloadOut(msgspec.Struct):
    model_version: str | None


class _HttpError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


# -- decisions ----------------------------------------------------------------------------------------------
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
        raise _HttpError(422, str(exc)) from exc


def _features(req: SelectIn) -> BasicFeatures | None:
    """The light tier's features from the sample or the statistics; ``None`` when neither was given."""
    if req.sample_b64 is not None:
        try:
            sample = base64.b64decode(req.sample_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _HttpError(422, f"sample_b64 is not base64: {exc}") from exc
        if len(sample) > MAX_SAMPLE_BYTES:
            raise _HttpError(413, f"sample of {len(sample)} bytes (at most {MAX_SAMPLE_BYTES})")
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


def _no_sample(req: SelectIn) -> BasicFeatures:
    similarity = req.similarity if req.has_baseline else None
    return BasicFeatures(req.payload_bytes, req.has_baseline, 0, 0.0, 0.0, 0.0, similarity, 0.0)


class _Service:
    """One loaded model and what answers with it; replaced whole on a reload."""

    def __init__(self, guard: GuardedSelector, version: str | None) -> None:
        self.guard, self.version = guard, version

    def _out(self, d: Any, latency_s: float) -> DecisionOut:
        return DecisionOut(
            d.strategy,
            d.confidence if math.isfinite(d.confidence) else 0.0,
            d.tier,
            d.fallback,
            latency_s,
            self.version if d.fallback is None else None,
        )

    def decide(self, req: SelectIn) -> DecisionOut:
        t0 = time.perf_counter()
        link = _link(req.link)
        basic = _features(req)
        if basic is None:  # nothing known of the content: the heuristic, on size, link and baseline
            d = self.guard.rule_decision("no_sample", req.payload_bytes, _no_sample(req), link)
        else:
            system = SystemState(free_cores=req.free_cores)
            d = self.guard.select_features(
                req.payload_bytes, basic, link, system, payload_type=req.payload_type
            )
        return self._out(d, time.perf_counter() - t0)

    def decide_batch(self, reqs: list[SelectIn]) -> BatchOut:
        """Every request's decision: the ones with a sample or statistics in one batched model pass
        (``GuardedSelector.select_features_batch``: the same decisions as one call each)."""
        t0 = time.perf_counter()
        links: dict[LinkIn, LinkState] = {}  # a batch's requests mostly share their link and node
        systems: dict[float, SystemState] = {}
        index: list[int] = []
        sizes: list[int] = []
        basics: list[BasicFeatures] = []
        link_states: list[LinkState] = []
        system_states: list[SystemState] = []
        types: list[str] = []
        decided: list[Any] = [None] * len(reqs)
        for i, req in enumerate(reqs):
            link = links.get(req.link)
            if link is None:
                link = links[req.link] = _link(req.link)
            basic = _features(req)
            if basic is None:
                decided[i] = self.guard.rule_decision("no_sample", req.payload_bytes, _no_sample(req), link)
                continue
            system = systems.get(req.free_cores)
            if system is None:
                system = systems[req.free_cores] = SystemState(free_cores=req.free_cores)
            index.append(i)
            sizes.append(req.payload_bytes)
            basics.append(basic)
            link_states.append(link)
            system_states.append(system)
            types.append(req.payload_type)
        if index:
            batch = self.guard.select_features_batch(sizes, basics, link_states, system_states, types)
            for i, d in zip(index, batch, strict=True):
                decided[i] = d
        share = (time.perf_counter() - t0) / len(reqs)
        return BatchOut([self._out(d, share) for d in decided])


# -- HTTP -----------------------------------------------------------------------------------------------
_JSON = [(b"content-type", b"application/json")]
_encode = msgspec.json.Encoder().encode
# not strict: an integer written 18821.0 or 1e3 is an integer to JSON Schema (and to pydantic's lax mode,
# which the service used before), and the published schema must accept what it allows
_select = msgspec.json.Decoder(SelectIn, strict=False).decode
_batch = msgspec.json.Decoder(BatchIn, strict=False).decode


@dataclass(frozen=True)
class _Route:
    method: str
    handler: str
    summary: str
    request: type | None = None
    responses: tuple[tuple[int, type | None, str], ...] = ()
    #: the response's media type when it is not JSON
    media_type: str | None = None
    auth_header: bool = False


_BAD_BODY = ((413, ErrorOut, "body too large"), (422, ErrorOut, "malformed body"))
ROUTES: dict[str, _Route] = {
    "/v1/select": _Route(
        "POST", "select", "One decision", SelectIn, ((200, DecisionOut, "the decision"), *_BAD_BODY)
    ),
    "/v1/select:batch": _Route(
        "POST",
        "select_batch",
        "Up to 1,000 decisions, in order",
        BatchIn,
        ((200, BatchOut, "the decisions, in the requests' order"), *_BAD_BODY),
    ),
    "/healthz": _Route("GET", "healthz", "The process answers", None, ((200, HealthOut, "alive"),)),
    "/readyz": _Route(
        "GET",
        "readyz",
        "A model is loaded and verified",
        None,
        ((200, ReadyOut, "ready"), (503, ReadyOut, "the heuristic decides")),
    ),
    "/metrics": _Route(
        "GET", "metrics", "Prometheus metrics", None, ((200, None, "metrics"),), media_type="text/plain"
    ),
    "/v1/model": _Route("GET", "model", "The model serving", None, ((200, ModelOut, "the model"),)),
    "/v1/model:reload": _Route(
        "POST",
        "reload",
        "Reload the model (bearer token)",
        None,
        (
            (200, ReloadOut, "reloaded"),
            (401, ErrorOut, "no valid token"),
            (403, ErrorOut, "reload disabled"),
            (409, ErrorOut, "the model did not load; the current one stays"),
        ),
        auth_header=True,
    ),
    "/openapi.json": _Route("GET", "openapi", "This document", None, ((200, None, "OpenAPI 3.1"),)),
}


def openapi_document() -> dict[str, Any]:
    """The service's OpenAPI 3.1 document, generated from :data:`ROUTES` and its msgspec types."""
    types: list[type] = []
    for route in ROUTES.values():
        for t in (route.request, *(r[1] for r in route.responses)):
            if t is not None and t not in types:
                types.append(t)
    refs, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    ref = dict(zip(types, refs, strict=True))
    paths: dict[str, Any] = {}
    for path, route in ROUTES.items():
        op: dict[str, Any] = {"summary": route.summary, "operationId": route.handler}
        if route.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref[route.request]}},
            }
        if route.auth_header:
            op["parameters"] = [
                {"name": "authorization", "in": "header", "required": False, "schema": {"type": "string"}}
            ]
        responses: dict[str, Any] = {}
        for status, t, description in route.responses:
            body: dict[str, Any] = {"description": description}
            if t is not None:
                body["content"] = {"application/json": {"schema": ref[t]}}
            elif route.media_type is not None:
                body["content"] = {route.media_type: {"schema": {"type": "string"}}}
            else:
                body["content"] = {"application/json": {"schema": {"type": "object"}}}
            responses[str(status)] = body
        op["responses"] = responses
        paths[path] = {route.method.lower(): op}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dwcp-selector",
            "version": __version__,
            "description": "Per-transfer encoder selection (none, lz4, zstd, hde) for AMST transfers.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }


class _HttpCounts(Collector):
    """``dwcp_http_requests_total{path,status}``: plain counts on the event loop, read when scraped."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}

    def collect(self) -> list[Metric]:
        family = CounterMetricFamily("dwcp_http_requests", "HTTP requests", labels=["path", "status"])
        for (path, status), n in sorted(self.counts.items()):
            family.add_metric([path, str(status)], n)
        return [family]


class SelectorApp:
    """The ASGI application (see the module's docstring); made by :func:`create_app`."""

    def __init__(
        self,
        load: Callable[[], _Service],
        *,
        metrics: SelectorMetrics,
        alias: str | None,
        reload_token: str | None,
        max_body_bytes: int,
        registry: ModelRegistry | None = None,
        follow_interval_s: float = 2.0,
    ) -> None:
        self._load, self.metrics, self.alias = load, metrics, alias
        self.registry, self.follow_interval_s = registry, follow_interval_s
        self._follower: asyncio.Task[None] | None = None
        self.follow_errors = 0
        self.reload_token, self.max_body_bytes = reload_token, max_body_bytes
        self.service = load()
        self._http = _HttpCounts()
        metrics.registry.register(self._http)
        self._openapi = _encode(openapi_document())
        self._too_large = _encode(ErrorOut(f"body larger than {max_body_bytes} bytes"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http_request(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    if self.registry is not None and self.alias is not None and self.follow_interval_s > 0:
                        self._follower = asyncio.get_running_loop().create_task(self._follow())
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self._follower is not None:
                        self._follower.cancel()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _http_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        route = ROUTES.get(path)
        label = path if route is not None else "unmatched"
        if route is None:
            status, body, headers = 404, _encode(ErrorOut(f"no such path: {path}")), _JSON
        elif scope["method"] != route.method and not (route.method == "GET" and scope["method"] == "HEAD"):
            status, body = 405, _encode(ErrorOut(f"{path} takes {route.method}"))
            headers = [*_JSON, (b"allow", route.method.encode())]
        else:
            try:
                status, body, headers = await self._dispatch(route, scope, receive)
            except _HttpError as exc:
                status, body, headers = exc.status, _encode(ErrorOut(exc.detail)), _JSON
        counts = self._http.counts
        key = (label, status)
        counts[key] = counts.get(key, 0) + 1
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_body_bytes:
                    raise _HttpError(413, f"body larger than {self.max_body_bytes} bytes")
                break
        message = await receive()
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            return body
        chunks, size = [body], len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _HttpError(400, "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _HttpError(413, f"body larger than {self.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _dispatch(self, route: _Route, scope: Scope, receive: Receive) -> tuple[int, bytes, Any]:
        h = route.handler
        if h == "select":
            req = _decode(_select, await self._body(scope, receive))
            return 200, _encode(self.service.decide(req)), _JSON
        if h == "select_batch":
            batch = _decode(_batch, await self._body(scope, receive))
            return 200, _encode(self.service.decide_batch(batch.requests)), _JSON
        if h == "healthz":
            return 200, _encode(HealthOut("ok")), _JSON
        if h == "readyz":
            g = self.service.guard
            if g.selector is None:
                return 503, _encode(ReadyOut(False, reason=g.load_error)), _JSON
            return 200, _encode(ReadyOut(True, model_version=self.service.version)), _JSON
        if h == "metrics":
            return (
                200,
                generate_latest(self.metrics.registry),
                [(b"content-type", CONTENT_TYPE_LATEST.encode())],
            )
        if h == "model":
            return 200, _encode(self._model_info()), _JSON
        if h == "reload":
            return 200, _encode(await self._reload(scope)), _JSON
        return 200, self._openapi, _JSON

    def _model_info(self) -> ModelOut:
        service = self.service
        sel = service.guard.selector
        if sel is None:
            return ModelOut(None, fallback="heuristic", load_error=service.guard.load_error)
        a = sel.artifact
        return ModelOut(
            service.version,
            family=a.family,
            kind=a.kind,
            cost_params_fingerprint=a.cost_params.fingerprint,
            tiers=sorted(a.tiers),
            payload_types=sorted(service.guard.payload_types),
            alias=self.alias,
        )

    async def _follow(self) -> None:
        """Follow the registry alias: when it moves, load the version it names aside and swap it in. Each
        worker process of a multi-worker service follows on its own, so a promotion (or a token reload
        that reached one worker) reaches them all within ``follow_interval_s``."""
        assert self.registry is not None and self.alias is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.follow_interval_s)
            try:
                target = await loop.run_in_executor(None, self.registry.resolve, self.alias)
                if target != self.service.version:
                    fresh = await loop.run_in_executor(None, self._load)
                    if fresh.guard.selector is not None:
                        self.service = fresh
                    else:
                        self.follow_errors += 1
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a registry read that fails keeps the current model
                self.follow_errors += 1

    async def _reload(self, scope: Scope) -> ReloadOut:
        if self.reload_token is None:
            raise _HttpError(403, "reload is disabled: the service was started without a token")
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value.removeprefix(b"Bearer ")
        if not hmac.compare_digest(given, self.reload_token.encode()):
            raise _HttpError(401, "a valid bearer token is needed")
        # loading and verifying a model takes a while: aside, on a thread, while requests go on
        fresh = await asyncio.get_running_loop().run_in_executor(None, self._load)
        if fresh.guard.selector is None:
            raise _HttpError(409, f"the model did not load, the current one stays: {fresh.guard.load_error}")
        self.service = fresh  # one assignment: requests in flight finish on the old model
        return ReloadOut(fresh.version)


def _decode(decode: Callable[[bytes], Any], body: bytes) -> Any:
    try:
        return decode(body)
    except msgspec.ValidationError as exc:
        raise _HttpError(422, str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise _HttpError(422, f"the body is not JSON: {exc}") from exc


def create_app(
    *,
    model_dir: str | Path | None = None,
    registry: ModelRegistry | None = None,
    alias: str = "champion",
    reload_token: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    model_key: bytes | None = None,
    follow_interval_s: float = 2.0,
) -> SelectorApp:
    """The service for a model directory, or for a registry alias it follows (checked every
    ``follow_interval_s``; 0: only on a token reload) and can reload."""
    metrics = SelectorMetrics()

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

    return SelectorApp(
        load,
        metrics=metrics,
        alias=alias if registry is not None else None,
        reload_token=reload_token,
        max_body_bytes=max_body_bytes,
        registry=registry,
        follow_interval_s=follow_interval_s,
    )


def create_app_from_env() -> SelectorApp:
    """:func:`create_app` configured by the environment, for ASGI servers that import a factory in each
    worker process (``granian --factory``, ``uvicorn --factory``): ``DWCP_SERVE_REGISTRY`` (and
    ``DWCP_SERVE_ALIAS``) or ``DWCP_SERVE_MODEL``, ``DWCP_RELOAD_TOKEN``, ``DWCP_MODEL_KEY``."""
    import os

    from ..config import Settings

    key = Settings.from_env().model_key
    registry_dir = os.environ.get("DWCP_SERVE_REGISTRY")
    return create_app(
        model_dir=os.environ.get("DWCP_SERVE_MODEL") if registry_dir is None else None,
        registry=ModelRegistry(registry_dir, model_key=key) if registry_dir is not None else None,
        alias=os.environ.get("DWCP_SERVE_ALIAS", "champion"),
        reload_token=os.environ.get("DWCP_RELOAD_TOKEN") or None,
        model_key=key,
        follow_interval_s=float(os.environ.get("DWCP_SERVE_FOLLOW_S", "2.0")),
    )
