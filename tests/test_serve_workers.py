"""`dwcp-selector serve --registry --workers 2`: every worker process follows the alias, so a promotion
reaches all of them, over new connections landing on either worker; `--workers` without a registry is
refused."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from dwcp_selector.serving import ModelRegistry

MODEL = Path(__file__).resolve().parents[1] / "models" / "selector"
CLI = [sys.executable, "-m", "dwcp_selector", "serve"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _versions(url: str, n: int) -> set[str]:
    out = set()
    for _ in range(n):  # a new connection each time: the kernel spreads them over the workers
        out.add(
            httpx.get(f"{url}/v1/model", timeout=5, headers={"connection": "close"}).json()["model_version"]
        )
    return out


def test_every_worker_follows_the_alias(tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(MODEL, b)
    (b / "MODEL_CARD.md").write_text("a second version\n")
    reg = ModelRegistry(tmp_path / "reg", create=True)
    first = reg.register(MODEL, alias="champion", why="test")
    second = reg.register(b, alias="challenger", why="test")
    port = _port()
    url = f"http://127.0.0.1:{port}"
    args = ["--registry", str(reg.root), "--workers", "2", "--follow", "0.3", "--port", str(port)]
    proc = subprocess.Popen([*CLI, *args], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert _versions(url, 20) == {first}
        reg.promote(second, why="workers test")
        deadline = time.monotonic() + 15
        seen: set[str] = set()
        while time.monotonic() < deadline:
            seen = _versions(url, 20)
            if seen == {second}:
                break
            time.sleep(0.2)
        assert seen == {second}
    finally:
        proc.terminate()
        proc.wait(20)
        assert proc.stderr is not None
        proc.stderr.close()
    r = subprocess.run(
        [*CLI, "--model", str(MODEL), "--workers", "2"], capture_output=True, text=True, timeout=60
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--workers needs --registry" in lines[0]
