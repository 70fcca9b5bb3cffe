"""The HTTP service over real HTTP (uvicorn on a loopback port): decisions, batches, readiness, metrics,
reload with its token, size limits, bad bodies as 4xx, and schemathesis over the published OpenAPI."""

from __future__ import annotations

import base64
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from dwcp_selector.serving import ModelRegistry
from dwcp_selector.serving.http import create_app
from dwcp_selector.workload import logs_json

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "selector"
TOKEN = "s3cret-token"
WAN = {"capacity_bps": 316e6, "rtt_s": 0.063, "loss": 2e-4, "utilization": 0.45, "link_type": "wan"}


class _Server:
    def __init__(self, app: Any) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started, "uvicorn did not start"
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    d = tmp_path_factory.mktemp("http")
    b = d / "b"
    shutil.copytree(MODEL, b)
    with (b / "MODEL_CARD.md").open("a") as f:
        f.write("\nSecond version.\n")
    reg = ModelRegistry(d / "reg", create=True)
    reg.register(MODEL, alias="champion", why="test")
    reg.register(b, alias="challenger", why="test")
    return reg


@pytest.fixture(scope="module")
def server(registry: ModelRegistry) -> Iterator[_Server]:
    srv = _Server(create_app(registry=registry, reload_token=TOKEN))
    yield srv
    srv.stop()


def _sample(n: int = 64 << 10) -> str:
    return base64.b64encode(logs_json(n, np.random.default_rng(1))).decode()


def test_select_batch_health_and_metrics(server: _Server, registry: ModelRegistry) -> None:
    body = {"payload_bytes": 4 << 20, "payload_type": "logs_json", "sample_b64": _sample(), "link": WAN}
    r = httpx.post(f"{server.url}/v1/select", json=body)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["strategy"] in ("none", "lz4", "zstd", "hde") and d["fallback"] is None
    assert d["model_version"] == registry.aliases()["champion"]
    stats = {**body, "stats": {"entropy": 7.99, "zero_fraction": 0.0}}
    del stats["sample_b64"]
    batch = httpx.post(
        f"{server.url}/v1/select:batch", json={"requests": [body, stats, {**stats, "payload_bytes": 10}]}
    )
    assert batch.status_code == 200 and len(batch.json()["decisions"]) == 3
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").json()["ready"] is True
    assert httpx.get(f"{server.url}/v1/model").json()["model_version"] == registry.aliases()["champion"]
    m = httpx.get(f"{server.url}/metrics").text
    assert 'dwcp_selector_decisions_total{source="model"' in m and "dwcp_selector_fallbacks_total" in m


def test_bad_bodies_are_4xx_with_a_message(server: _Server) -> None:
    url = f"{server.url}/v1/select"
    cases = [
        (b"not json", 422),
        (b'{"payload_bytes": -1, "link": {"capacity_bps": 1, "rtt_s": 0.1}}', 422),
        (b'{"payload_bytes": 10, "link": {"capacity_bps": 1, "rtt_s": 0.1}}', 422),  # 1 bit/s: below range
        (b'{"payload_bytes": 10, "sample_b64": "***", "link": {"capacity_bps": 1, "rtt_s": 0.1}}', 422),
        (b'{"payload_bytes": 10, "extra": 1, "link": {"capacity_bps": 1, "rtt_s": 0.1}}', 422),
        (b"{" + b" " * (2 << 20) + b"}", 413),
    ]
    for body, status in cases:
        r = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, (body[:80], r.status_code, r.text[:200])
        assert r.json()["detail"], r.text
    big = {"payload_bytes": 10, "sample_b64": _sample(70 << 10), "link": WAN}
    assert httpx.post(url, json=big).status_code in (413, 422)
    unknown = {
        "payload_bytes": 4 << 20,
        "payload_type": "martian",
        "stats": {"entropy": 4, "zero_fraction": 0},
    }
    r = httpx.post(url, json={**unknown, "link": WAN})
    assert r.status_code == 200 and r.json()["fallback"] == "unknown_payload_type"


def test_reload_needs_the_token_and_follows_the_alias(server: _Server, registry: ModelRegistry) -> None:
    url = f"{server.url}/v1/model:reload"
    assert httpx.post(url).status_code == 401
    assert httpx.post(url, headers={"authorization": "Bearer wrong"}).status_code == 401
    before = httpx.get(f"{server.url}/v1/model").json()["model_version"]
    challenger = registry.aliases()["challenger"]
    registry.promote("challenger", why="reload test")
    body = {
        "payload_bytes": 4 << 20,
        "payload_type": "logs_json",
        "stats": {"entropy": 4, "zero_fraction": 0},
        "link": WAN,
    }
    failures: list[int] = []
    done = threading.Event()

    def load() -> None:
        with httpx.Client() as c:
            while not done.is_set():
                r = c.post(f"{server.url}/v1/select", json=body)
                if r.status_code != 200:
                    failures.append(r.status_code)

    t = threading.Thread(target=load)
    t.start()
    try:
        r = httpx.post(url, headers={"authorization": f"Bearer {TOKEN}"})
    finally:
        time.sleep(0.2)
        done.set()
        t.join(10)
    assert r.status_code == 200 and r.json()["model_version"] == challenger != before
    assert not failures  # reload under load dropped no request
    registry.rollback(why="back")
    assert httpx.post(url, headers={"authorization": f"Bearer {TOKEN}"}).json()["model_version"] == before


def test_a_service_without_a_model_answers_with_the_heuristic(tmp_path: Path) -> None:
    srv = _Server(create_app(model_dir=tmp_path / "nothing"))
    try:
        assert httpx.get(f"{srv.url}/readyz").status_code == 503
        body = {"payload_bytes": 4 << 20, "stats": {"entropy": 4, "zero_fraction": 0}, "link": WAN}
        r = httpx.post(f"{srv.url}/v1/select", json=body)
        assert r.status_code == 200 and r.json()["fallback"] == "model_unavailable"
        assert httpx.post(f"{srv.url}/v1/model:reload").status_code == 403
    finally:
        srv.stop()


def test_schemathesis_finds_no_server_error_and_no_schema_violation(server: _Server) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    failures: list[str] = []
    from schemathesis.core.result import Ok

    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # every operation of the published schema is valid
        operation = result.ok()
        if operation.path == "/v1/model:reload":
            continue  # exercised above, with and without the token

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            response = case.call(base_url=server.url)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path}: {response.status_code} {response.text[:200]}")
            case.validate_response(response)

        run()
    assert not failures, failures


def test_the_serve_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cli = [sys.executable, "-m", "dwcp_selector", "serve"]
    proc = subprocess.Popen([*cli, "--model", str(MODEL), "--port", str(port)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        ready = None
        while time.monotonic() < deadline and ready is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
            except httpx.TransportError:
                time.sleep(0.1)
        assert ready is not None and ready.status_code == 200, ready
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()
    for args in ((), ("--model", str(MODEL), "--registry", str(tmp_path))):
        r = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "exactly one of --registry and --model" in lines[0]
