"""The system corpus: this machine's real files as staging payloads, with real successors where they exist."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time

import numpy as np
import pytest

from dwcp_selector.errors import ConfigError
from dwcp_selector.workload.payloads import default_pools
from dwcp_selector.workload.staging import ScenarioMix, plan_sessions, session_transfers
from dwcp_selector.workload.system_corpus import SOURCE_TYPES, SOURCES, SystemCorpus

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def corpus() -> SystemCorpus:
    return SystemCorpus()


def test_discovery_is_quick_bounded_and_finds_real_files(corpus: SystemCorpus) -> None:
    t0 = time.perf_counter()
    again = SystemCorpus()
    assert time.perf_counter() - t0 < 5.0
    assert again.files == corpus.files  # the same machine lists the same files, in the same order
    # every machine of this kind has an interpreter's standard library and a package database
    assert {"python", "packages"} <= set(corpus.sources)
    for files in corpus.files.values():
        assert 0 < len(files) <= 4000


def test_python_sources_take_their_successors_from_the_other_installed_pythons(corpus: SystemCorpus) -> None:
    from dwcp_selector.workload.system_corpus import _other_stdlibs

    rng = np.random.default_rng(4)
    it = corpus.versions("python", rng, 1 << 20)
    origin, first, real = next(it)
    assert real and first and origin.endswith(".py")
    successors = [next(it) for _ in range(3)]
    if _other_stdlibs():
        assert any(r and d for _, d, r in successors)
    assert successors[-1][2] in (True, False)


def test_the_sqlite_source_is_a_real_database_changed_by_real_sql(corpus: SystemCorpus) -> None:
    if "sqlite" not in corpus.sources:
        pytest.skip("no dpkg status database on this machine")
    it = corpus.versions("sqlite", np.random.default_rng(2), 1 << 20)
    rows = []
    versions = [next(it)[1] for _ in range(3)]
    for blob in versions:
        db = sqlite3.connect(":memory:")
        db.deserialize(blob)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows.append(db.execute("SELECT count(*), sum(installed_size) FROM package").fetchone())
        db.close()
    assert rows[0][0] > 50
    assert len({r for r in rows}) == 3  # updates, deletes and inserts changed every version
    assert versions[0] != versions[1]


def test_unknown_or_empty_sources_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        SystemCorpus(("binaries", "photos"))
    with pytest.raises(ConfigError, match="none of"):
        SystemCorpus(("python",), exclude=("python",))
    with pytest.raises(ConfigError, match="shares"):
        ScenarioMix(system_share=1.0)


def test_system_sessions_carry_real_payload_types(corpus: SystemCorpus) -> None:
    mix = ScenarioMix(max_bytes=256 * 1024, system_share=0.5)
    sessions = plan_sessions(11, 120, mix, START, system=True)
    assert {s.kind for s in sessions} >= {"system", "vm"}
    assert "system" not in {s.kind for s in plan_sessions(11, 120, mix, START)}
    pools = default_pools(0)
    types = set()
    for session in [s for s in sessions if s.kind == "system"][:12]:
        for t in session_transfers(session, 11, pools, system=corpus):
            types.add(t.payload_type)
            assert t.payload
            assert (t.baseline is None) == (t.version == 0)
    assert types and types <= set(SOURCE_TYPES.values())
    assert set(SOURCE_TYPES) == set(SOURCES)
