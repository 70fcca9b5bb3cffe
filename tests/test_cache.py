"""The fleet cache against the real Redis: shared decisions, invalidation by baseline version, TTLs, and a
Redis of our own that hangs, dies and comes back (the machine's Redis is never touched)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dwcp_selector.config import Settings
from dwcp_selector.errors import ConfigError
from dwcp_selector.link import link_from_class
from dwcp_selector.serving.cache import DecisionCache

from .conftest import _service_missing

LINK = link_from_class("wan")
DECISION = {"strategy": "zstd", "confidence": 0.93, "model_version": "abc123"}


@pytest.fixture
def redis_url() -> str:
    import redis

    url = Settings.from_env().redis_url
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
    except redis.RedisError as exc:
        _service_missing("Redis", exc)
    return url


def _namespace() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def test_two_nodes_share_decisions_and_statistics(redis_url: str) -> None:
    ns = _namespace()
    a, b = DecisionCache(redis_url, namespace=ns), DecisionCache(redis_url, namespace=ns)
    try:
        assert b.get_decision("vm-1", LINK, 48 << 20) is None
        a.put_decision("vm-1", LINK, 48 << 20, DECISION)
        assert b.get_decision("vm-1", LINK, 40 << 20) == DECISION  # same size bucket, from Redis
        assert b.get_decision("vm-1", LINK, 40 << 20) == DECISION  # now from b's own LRU
        assert b.get_decision("vm-1", LINK, 1 << 20) is None  # another size bucket
        assert b.get_decision("vm-1", link_from_class("dc"), 48 << 20) is None  # another link bucket
        a.put_stats("vm-1", "7", {"entropy": 5.5, "similarity": 0.97})
        assert b.get_stats("vm-1", "7") == {"entropy": 5.5, "similarity": 0.97}
        layers = {
            layer: b.metrics.registry.get_sample_value(
                "dwcp_cache_lookups_total", {"kind": "decision", "layer": layer}
            )
            for layer in ("local", "redis", "miss")
        }
        assert layers == {"local": 1.0, "redis": 1.0, "miss": 3.0}
    finally:
        a.close()
        b.close()


def test_a_new_baseline_version_invalidates_on_every_node(redis_url: str) -> None:
    ns = _namespace()
    a = DecisionCache(redis_url, namespace=ns, version_refresh_s=0.2)
    b = DecisionCache(redis_url, namespace=ns, version_refresh_s=0.2)
    try:
        a.put_decision("db-9", LINK, 8 << 20, DECISION)
        assert b.get_decision("db-9", LINK, 8 << 20) == DECISION
        a.new_baseline("db-9", "v2")
        assert a.get_decision("db-9", LINK, 8 << 20) is None  # at once where the baseline changed
        time.sleep(0.25)
        assert b.get_decision("db-9", LINK, 8 << 20) is None  # within the refresh on the others
        b.put_decision("db-9", LINK, 8 << 20, {**DECISION, "strategy": "hde"})
        assert a.get_decision("db-9", LINK, 8 << 20) == {**DECISION, "strategy": "hde"}
    finally:
        a.close()
        b.close()


def test_entries_expire(redis_url: str) -> None:
    c = DecisionCache(redis_url, namespace=_namespace(), decision_ttl_s=0.3)
    try:
        c.put_decision("r", LINK, 1 << 20, DECISION)
        assert c.get_decision("r", LINK, 1 << 20) == DECISION
        time.sleep(0.4)
        assert c.get_decision("r", LINK, 1 << 20) is None  # gone locally and in Redis
    finally:
        c.close()


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="not a Redis URL"):
        DecisionCache("mysql://nope")
    with pytest.raises(ConfigError, match="positive"):
        DecisionCache(None, budget_s=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    """redis-server on ``port`` with nothing saved, answering PING."""
    import redis

    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError):
            redis.Redis(port=port, socket_timeout=0.5).ping()
            return proc
        time.sleep(0.05)
    proc.kill()
    proc.wait(10)
    raise AssertionError("own redis-server did not start")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen[bytes]], int]]:
    """A redis-server of our own on a free port (its own directory), which the test may stop."""

    port = _free_port()
    procs = [_start_redis(port, tmp_path)]
    try:
        yield f"redis://127.0.0.1:{port}/0", procs, port
    finally:
        for p in procs:
            with contextlib.suppress(OSError):
                os.kill(p.pid, signal.SIGCONT)
            p.kill()
            p.wait(10)


def test_redis_hung_or_dead_costs_no_more_than_the_budget_and_recovers(
    own_redis: tuple[str, list[subprocess.Popen[bytes]], int], tmp_path: Path
) -> None:
    url, procs, port = own_redis
    budget, retry = 0.005, 0.3
    c = DecisionCache(url, namespace="n", budget_s=budget, retry_s=retry)
    try:
        c.put_decision("vm", LINK, 1 << 20, DECISION)
        c._local.clear()  # force the next lookups to Redis
        assert c.get_decision("vm", LINK, 1 << 20) == DECISION

        os.kill(procs[0].pid, signal.SIGSTOP)  # hung: accepts nothing, answers nothing
        c._local.clear()
        worst = 0.0
        for _ in range(200):
            t0 = time.perf_counter()
            assert c.get_decision("vm", LINK, 1 << 20) is None
            worst = max(worst, time.perf_counter() - t0)
        assert worst < budget + 0.02, f"a lookup waited {worst * 1e3:.1f} ms with Redis hung"
        assert c.redis_errors == 3  # three timeouts in a row opened the breaker; the rest were skipped
        assert c.stats()["redis_down"]

        procs[0].kill()  # dead
        procs[0].wait(10)
        time.sleep(retry)
        t0 = time.perf_counter()
        assert c.get_decision("vm", LINK, 1 << 20) is None
        assert time.perf_counter() - t0 < budget + 0.02
        assert c.redis_errors == 4  # one probe, refused: the breaker is open again at once
        assert c.stats()["redis_down"]

        # back (empty: it kept nothing): within one retry interval the cache uses it again by itself
        procs.append(_start_redis(port, tmp_path))
        time.sleep(retry)
        c.put_decision("vm", LINK, 1 << 20, DECISION)
        other = DecisionCache(url, namespace="n")
        try:
            assert other.get_decision("vm", LINK, 1 << 20) == DECISION  # it reached the new Redis
        finally:
            other.close()
    finally:
        c.close()


def test_guarded_selectors_do_not_pay_redis_for_decisions_cheaper_than_it(redis_url: str) -> None:
    """A light-tier decision (~50 µs) is cheaper than a Redis round trip: it is taken again, not shared;
    an unreachable Redis costs such decisions nothing at all."""
    import numpy as np

    from dwcp_selector.link import SystemState
    from dwcp_selector.serving import GuardedSelector, Selector
    from dwcp_selector.workload import logs_json

    root = Path(__file__).resolve().parent.parent
    model = Selector(root / "models" / "selector", host_profile=None)
    payload = logs_json(4 << 20, np.random.default_rng(4))
    system = SystemState(free_cores=2)
    for url in (redis_url, "redis://127.0.0.1:1/0"):
        cache = DecisionCache(url, namespace=_namespace())
        g = GuardedSelector(model, cache=cache)
        for _ in range(3):
            d = g.select(payload, LINK, system, payload_type="logs_json", resource_id="logs-7")
            assert d.tier == "light" and d.fallback is None and not d.cached
        assert (
            cache.redis_errors == 0
            and cache.metrics.registry.get_sample_value(
                "dwcp_cache_lookups_total", {"kind": "decision", "layer": "miss"}
            )
            is None
        )
        cache.close()
