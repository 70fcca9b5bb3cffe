"""Bad input at the command line: one ``error:`` line, a non-zero exit, never a traceback, nothing created."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "selector"
EVAL = ROOT / "evaldata" / "amd-epyc-2026-12-02"
CLI = [sys.executable, "-m", "dwcp_selector"]


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env, check=False
    )


def _one_error_line(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode not in (0, 3), r.stderr  # 3 would be the last-resort handler: an untyped error
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0]


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "notes.txt").write_text("a text file, not a database\n" * 50)
    # datasets: a truncated manifest, one without its file list, a garbage Parquet file it vouches for
    for name in ("truncated", "nofiles", "garbage"):
        shutil.copytree(EVAL, d / name)
    m = (d / "truncated" / "manifest.json").read_text()
    (d / "truncated" / "manifest.json").write_text(m[: len(m) // 3])
    doc = json.loads(m)
    doc.pop("files")
    (d / "nofiles" / "manifest.json").write_text(json.dumps(doc))
    (d / "garbage" / "test.parquet").write_bytes(b"PAR1 but not really" * 100)
    doc = json.loads(m)
    doc["files"]["test.parquet"]["sha256"] = hashlib.sha256(
        (d / "garbage" / "test.parquet").read_bytes()
    ).hexdigest()
    (d / "garbage" / "manifest.json").write_text(json.dumps(doc))
    # a model manifest without a field, re-checksummed (the checksum is unkeyed: it checks out)
    shutil.copytree(MODEL, d / "model")
    man = json.loads((d / "model" / "manifest.json").read_text())
    man.pop("checksum")
    man.pop("kind")
    man["checksum"] = hashlib.sha256(json.dumps(man, indent=2, sort_keys=True).encode()).hexdigest()
    (d / "model" / "manifest.json").write_text(json.dumps(man, indent=2, sort_keys=True))
    return d


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("validate", "--store", "sqlite:///notes.txt"), ("not a SQLite telemetry store",)),
        (("validate", "--store", "postgresql://[bad"), ("not a PostgreSQL URL",)),
        (("validate", "--store", "postgresql://127.0.0.1:99999/test"), ("Port out of range",)),
        (("validate", "--store", "postgresql://127.0.0.1:1/test"), ("not reachable",)),
        (("validate", "--store", "sqlite:///typo/staging.db"), ("no SQLite telemetry store",)),
        (("export", "--store", "sqlite:///typo.db", "--out", "out"), ("no SQLite telemetry store",)),
        (("retention", "--store", "sqlite:///typo.db", "--archive", "arch"), ("no SQLite telemetry store",)),
        (("evaluate", "--model", str(MODEL), "--data", "truncated"), ("not JSON",)),
        (("evaluate", "--model", str(MODEL), "--data", "nofiles"), ("lists no files",)),
        (("evaluate", "--model", str(MODEL), "--data", "garbage"), ("not a readable Parquet table",)),
        (("select", "notes.txt", "--model", "model"), ("missing or malformed field", "kind")),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing_behind(
    bad: Path, args: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    before = sorted(p.name for p in bad.iterdir())
    _one_error_line(_run(*args, cwd=bad), *needles)
    assert sorted(p.name for p in bad.iterdir()) == before  # no empty database, no directory made


def _open(path: str, barrier: object, out: object) -> None:
    from dwcp_selector.telemetry.store import open_store

    barrier.wait()  # type: ignore[attr-defined]
    try:
        with open_store(f"sqlite:///{path}") as store:
            out.put(("ok", store.count()))  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - the test reports what it got
        out.put((type(exc).__name__, str(exc)))  # type: ignore[attr-defined]


def test_two_processes_open_a_fresh_sqlite_store_at_the_same_instant(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    results = []
    for i in range(6):
        barrier, out = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(str(tmp_path / f"s{i}.db"), barrier, out)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        results += [out.get(timeout=5) for _ in procs]
    assert results == [("ok", 0)] * 12


def test_a_configured_model_key_refuses_unsigned_and_tampered_models(tmp_path: Path) -> None:
    from dwcp_selector.errors import ArtifactError
    from dwcp_selector.modeling.artifact import load_artifact, save_artifact

    key, other = b"k" * 32, b"o" * 32
    signed = tmp_path / "signed"
    save_artifact(load_artifact(MODEL), signed, key=key)
    assert load_artifact(signed, key=key).extra == load_artifact(MODEL).extra
    assert load_artifact(signed).kind  # without a key, the checksum is all that is checked
    with pytest.raises(ArtifactError, match="not signed, and a model key"):
        load_artifact(MODEL, key=key)
    with pytest.raises(ArtifactError, match="not signed with the configured"):
        load_artifact(signed, key=other)
    # the attack the unkeyed checksum cannot stop: change a field, recompute the checksum
    man = json.loads((signed / "manifest.json").read_text())
    sig = man.pop("signature")
    man.pop("checksum")
    man["temperature"] = 9.0
    man["checksum"] = hashlib.sha256(json.dumps(man, indent=2, sort_keys=True).encode()).hexdigest()
    man["signature"] = sig
    (signed / "manifest.json").write_text(json.dumps(man, indent=2, sort_keys=True))
    assert load_artifact(signed).temperature == 9.0
    with pytest.raises(ArtifactError, match="not signed with the configured"):
        load_artifact(signed, key=key)
    # the CLI reads the key from the environment and refuses with one line
    env = {**os.environ, "DWCP_MODEL_KEY": key.decode()}
    select = ("select", str(ROOT / "README.md"), "--model", str(MODEL))
    _one_error_line(_run(*select, cwd=tmp_path, env=env), "not signed")
    _one_error_line(_run(*select, cwd=tmp_path, env={**env, "DWCP_MODEL_KEY": "short"}), "at least 16 bytes")
