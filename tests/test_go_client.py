"""The Go client (clients/go) and the test vectors it is checked against: the shipped model's vectors
agree with the model and the heuristic; the vectors command writes and checks them; and ``go test``
passes against the real service (``dwcp-selector serve`` on a loopback port), every vector included."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dwcp_selector.errors import ArtifactError
from dwcp_selector.serving.vectors import VECTORS_FILE, check_test_vectors, vector_inputs, write_test_vectors

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "selector"
GO_CLIENT = ROOT / "clients" / "go"
CLI = [sys.executable, "-m", "dwcp_selector"]


def test_the_shipped_models_vectors_agree_with_it() -> None:
    assert check_test_vectors(MODEL) == []
    doc = json.loads((MODEL / VECTORS_FILE).read_text())
    assert doc["schema"] == "dwcp-test-vectors/1"
    assert doc["model_checksum"] == json.loads((MODEL / "manifest.json").read_text())["checksum"]
    vectors = doc["vectors"]
    assert 180 <= len(vectors) <= 220
    bodies = [v["request"] for v in vectors]
    assert all("sample_b64" not in b and "free_cores" in b for b in bodies)
    assert {v["heuristic"] for v in vectors} == {"none", "lz4", "zstd", "hde"}
    tiers = {v["service"]["tier"] for v in vectors}
    assert {"fast", "light", "heuristic"} <= tiers
    reasons = {v["service"]["fallback"] for v in vectors}
    assert {None, "unknown_payload_type", "no_sample"} <= reasons
    sizes = [b["payload_bytes"] for b in bodies]
    assert min(sizes) < 1024 and max(sizes) > 4 << 30
    rtts = [b["link"]["rtt_s"] for b in bodies]
    assert min(rtts) < 1e-3 < max(rtts) and 1e-3 in rtts
    available = [b["link"]["capacity_bps"] * (1 - b["link"]["utilization"]) for b in bodies]
    assert min(available) < 100e6 < max(available) and min(available) < 500e6 < max(available)
    entropies = [b["stats"]["entropy"] for b in bodies if "stats" in b]
    assert 7.5 in entropies and min(entropies) < 7.5 < max(entropies)
    assert len({b["payload_type"] for b in bodies}) >= 15
    assert {b["link"].get("link_type") for b in bodies} == {"dc", "metro", "wan", "edge", None}
    assert [b for _, b in vector_inputs()] == bodies  # deterministic: the same inputs on every call


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_the_vectors_command_writes_checks_and_names_every_mismatch(tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(MODEL, model)
    (model / VECTORS_FILE).unlink()
    proc = _cli("models", "vectors", "--model", model, "--check")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {model} has no {VECTORS_FILE} (write it with 'dwcp-selector models vectors')"
    ]
    proc = _cli("models", "vectors", "--model", model, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["vectors"] == str(model / VECTORS_FILE)
    assert (model / VECTORS_FILE).read_text() == (MODEL / VECTORS_FILE).read_text()
    assert _cli("models", "vectors", "--model", model, "--check").returncode == 0

    doc = json.loads((model / VECTORS_FILE).read_text())
    doc["vectors"][0]["heuristic"] = "zstd"
    doc["vectors"][5]["service"]["tier"] = "rich"
    doc["model_checksum"] = "0" * 64
    (model / VECTORS_FILE).write_text(json.dumps(doc))
    mismatches = check_test_vectors(model)
    assert len(mismatches) == 4, mismatches  # the tier once for the single answer, once in a batch
    assert "another model" in mismatches[0]
    assert mismatches[1].startswith(doc["vectors"][0]["name"]) and "heuristic 'zstd'" in mismatches[1]
    assert "service tier 'rich'" in mismatches[2] and "service in a batch tier 'rich'" in mismatches[3]
    proc = _cli("models", "vectors", "--model", model, "--check", "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["mismatches"] == mismatches

    for bad in (tmp_path / "missing", tmp_path):  # no such directory; a directory without a model
        proc = _cli("models", "vectors", "--model", bad)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    (model / VECTORS_FILE).write_text("{not json")
    proc = _cli("models", "vectors", "--model", model, "--check")
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot read"), proc.stderr


def test_vectors_of_a_model_that_does_not_load_are_refused(tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(MODEL, model)
    (model / "light.onnx").write_bytes(b"not a network")
    proc = _cli("models", "vectors", "--model", model)
    assert proc.returncode == 2 and "cannot compute test vectors" in proc.stderr, proc.stderr
    with pytest.raises(ArtifactError, match="light.onnx"):
        write_test_vectors(model)


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        reason = "go is not installed (apt-get install golang-go): the Go client is not tested"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return go


def _go_env(tmp: Path) -> dict[str, str]:
    """No network (no module proxy: the client uses the standard library only); the build cache in the
    user's cache when HOME is writable (fast reruns), else under ``tmp``."""
    env = {**os.environ, "GOPROXY": "off", "GOFLAGS": "", "GOTOOLCHAIN": "local", "GO111MODULE": "on"}
    home = Path(os.environ.get("HOME", "/nonexistent"))
    if not (home.is_dir() and os.access(home, os.W_OK)):
        env |= {"GOCACHE": str(tmp / "gocache"), "GOPATH": str(tmp / "gopath")}
    return env


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    """``dwcp-selector serve`` on the shipped model, on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        [*CLI, "serve", "--model", str(MODEL), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline and ready is None and proc.poll() is None:
            try:
                ready = httpx.get(f"{url}/readyz", timeout=1)
            except httpx.TransportError:
                time.sleep(0.1)
        assert ready is not None and ready.status_code == 200, (ready, proc.poll())
        # warm the model up: a first decision over the guard's 2 ms deadline sends the next second of
        # decisions to the heuristic (timing, not inputs); let that second pass before the real run
        body = json.loads((MODEL / VECTORS_FILE).read_text())["vectors"][20]["request"]
        for _ in range(20):
            httpx.post(f"{url}/v1/select", json=body, timeout=5).raise_for_status()
        time.sleep(1.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_go_test_passes_against_the_real_service(service: str) -> None:
    go = _go()
    with tempfile.TemporaryDirectory() as tmp:
        env = _go_env(Path(tmp)) | {
            "DWCP_SELECTOR_URL": service,
            "DWCP_TEST_VECTORS": str(MODEL / VECTORS_FILE),
        }
        proc = subprocess.run(
            [go, "test", "-count=1", "-v", "./..."],
            cwd=GO_CLIENT,
            env=env,
            capture_output=True,
            text=True,
            timeout=280,
        )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "--- PASS: TestTheRealServiceAnswersEveryVector" in out, out[-5000:]
    assert "--- PASS: TestHeuristicEqualsThePythonHeuristicOnEveryVector" in out
    assert "--- PASS: TestFallbackWithinTheDeadlineWhenTheServiceIsSlow" in out
    assert "--- FAIL" not in out and "--- SKIP" not in out
