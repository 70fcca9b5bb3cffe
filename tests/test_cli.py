"""The CLI as a user runs it: a real process, real files, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dwcp_selector.workload import dirty_round, logs_json, vm_memory

from .conftest import edited

CLI = [sys.executable, "-m", "dwcp_selector"]


def run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}")
    return proc


def assert_clean_failure(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(4)
    old = vm_memory(3 << 20, rng)
    new = dirty_round(old, rng, dirty_fraction=0.05)
    (d / "old.img").write_bytes(old)
    (d / "new.img").write_bytes(new)
    text = logs_json(600_000, rng)
    (d / "logs.v1").write_bytes(text)
    (d / "logs.v2").write_bytes(edited(text, 2))
    (d / "empty").write_bytes(b"")
    return {p.name: p for p in d.iterdir()}


def test_measure_json_shape(files: dict[str, Path]) -> None:
    proc = run("measure", files["new.img"], "--baseline", files["old.img"], "--link", "wan", "--json")
    doc = json.loads(proc.stdout)
    assert doc["payload_bytes"] == files["new.img"].stat().st_size
    assert isinstance(doc["streams"], int) and doc["streams"] >= 1
    assert set(doc["strategies"]) == {"none", "lz4", "zstd", "hde"}
    for s in doc["strategies"].values():
        assert set(s) >= {"compressed_bytes", "encode_s", "decode_s", "cost_s", "roundtrip"}
        assert s["roundtrip"] is True and s["encode_s"] >= 0 and s["cost_s"] > 0
    assert doc["oracle"] == "hde"
    costs = {k: v["cost_s"] for k, v in doc["strategies"].items()}
    assert costs["hde"] == min(costs.values())


def test_measure_link_parameters_and_no_baseline(files: dict[str, Path]) -> None:
    doc = json.loads(
        run(
            "measure",
            files["logs.v1"],
            "--link",
            "dc",
            "--bandwidth-mbps",
            "25000",
            "--rtt-ms",
            "0.1",
            "--free-cores",
            "1",
            "--json",
        ).stdout
    )
    assert set(doc["strategies"]) == {"none", "lz4", "zstd"}
    assert doc["link"]["capacity_bps"] == 25e9 and doc["link"]["rtt_s"] == pytest.approx(1e-4)
    assert doc["oracle"] == "none"  # a fast data-centre link with one free core: compression cannot pay
    human = run("measure", files["logs.v1"], "--link", "edge").stdout
    assert "oracle:" in human and "zstd" in human


def test_measure_empty_file(files: dict[str, Path]) -> None:
    doc = json.loads(run("measure", files["empty"], "--json").stdout)
    assert doc["payload_bytes"] == 0 and doc["oracle"] == "none"


@pytest.mark.parametrize("strategy", ["none", "lz4", "zstd", "hde"])
def test_encode_decode_round_trip(files: dict[str, Path], tmp_path: Path, strategy: str) -> None:
    for new, old in (("new.img", "old.img"), ("logs.v2", "logs.v1"), ("empty", "logs.v1")):
        base = ["--baseline", files[old]] if strategy == "hde" else []
        out = tmp_path / f"{new}.{strategy}"
        doc = json.loads(run("encode", files[new], "-s", strategy, *base, "-o", out, "--json").stdout)
        assert doc["output_bytes"] == out.stat().st_size
        back = tmp_path / f"{new}.back"
        run("decode", out, *base, "-o", back)
        assert back.read_bytes() == files[new].read_bytes()


def test_crc32c_frames(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "c.zst"
    run("encode", files["logs.v1"], "-s", "zstd", "--checksum", "crc32c", "-o", out)
    run("decode", out, "-o", tmp_path / "c.out")
    assert (tmp_path / "c.out").read_bytes() == files["logs.v1"].read_bytes()


def test_decode_errors_are_one_clear_line(files: dict[str, Path], tmp_path: Path) -> None:
    enc = tmp_path / "x.hde"
    run("encode", files["new.img"], "-s", "hde", "--baseline", files["old.img"], "-o", enc)
    data = enc.read_bytes()
    out = tmp_path / "out"

    bad = tmp_path / "corrupt"
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x40
    bad.write_bytes(bytes(flipped))
    assert_clean_failure(run("decode", bad, "--baseline", files["old.img"], "-o", out, check=False))
    assert not out.exists(), "a failed decode must not leave a partial output"

    bad.write_bytes(data[: len(data) - 10])
    assert_clean_failure(
        run("decode", bad, "--baseline", files["old.img"], "-o", out, check=False), "truncated"
    )
    bad.write_bytes(b"PK\x03\x04 this is a zip file, not a frame" * 10)
    assert_clean_failure(run("decode", bad, "-o", out, check=False), "not a dwcp")
    assert_clean_failure(run("decode", enc, "-o", out, check=False), "baseline")
    assert_clean_failure(
        run("decode", enc, "--baseline", files["logs.v1"], "-o", out, check=False), "baseline", "old.img"
    )
    assert_clean_failure(run("decode", tmp_path / "nope", "-o", out, check=False))
    assert not out.exists()


def test_encode_errors_are_one_clear_line(files: dict[str, Path], tmp_path: Path) -> None:
    assert_clean_failure(
        run("encode", files["logs.v1"], "-s", "hde", "-o", tmp_path / "o", check=False), "baseline"
    )
    proc = run("measure", files["logs.v1"], "--link", "moon", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr


def test_measure_64_mib_stays_below_six_times_the_payload(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    rng = np.random.default_rng(0)
    with big.open("wb") as f:
        for _ in range(8):
            f.write(logs_json(4 << 20, rng))
            f.write(rng.integers(0, 256, size=4 << 20, dtype=np.uint8).tobytes())
    size = big.stat().st_size
    assert size == 64 << 20
    # The command runs as the grandchild of a small interpreter: a child forked straight from this big
    # pytest process would inherit its peak RSS (Linux keeps the pre-exec high-water mark).
    script = (
        "import resource, subprocess, sys\n"
        "out = subprocess.run([sys.executable, '-m', 'dwcp_selector', 'measure', sys.argv[1], '--json'],"
        " capture_output=True, text=True)\n"
        "sys.stdout.write(out.stdout)\n"
        "print('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(out.returncode)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(big)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout[: proc.stdout.index("MAXRSS")])
    assert all(s["roundtrip"] for s in doc["strategies"].values())
    peak = int(proc.stdout.split("MAXRSS")[1]) * 1024
    assert peak < 6 * size, f"peak RSS {peak / 2**20:.0f} MiB for a 64 MiB payload"


def test_dictionary_training_command(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = tmp_path / "samples.jsonl"
    samples.write_bytes(logs_json(400_000, rng))
    doc = json.loads(
        run("dict", "train", "--type", "logs_json", "--out", tmp_path / "dicts", samples, "--json").stdout
    )
    assert doc["payload_type"] == "logs_json"
    small = tmp_path / "small.json"
    small.write_bytes(logs_json(2000, rng))
    plain = json.loads(run("encode", small, "-s", "zstd", "-o", tmp_path / "p", "--json").stdout)
    typed = json.loads(
        run(
            "encode",
            small,
            "-s",
            "zstd",
            "--payload-type",
            "logs_json",
            "--dict-dir",
            tmp_path / "dicts",
            "-o",
            tmp_path / "t",
            "--json",
        ).stdout
    )
    assert typed["output_bytes"] < plain["output_bytes"]
    assert_clean_failure(run("decode", tmp_path / "t", "-o", tmp_path / "back", check=False), "dictionary")
    run("decode", tmp_path / "t", "--dict-dir", tmp_path / "dicts", "-o", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == small.read_bytes()


def test_version_and_help() -> None:
    assert "dwcp-selector" in run("--version").stdout
    assert "measure" in run("--help").stdout


def test_demo_json_runs() -> None:
    doc = json.loads(run("demo", "--json").stdout)
    assert len(doc["payloads"]) >= 5
    for row in doc["payloads"]:
        assert set(row["links"]) == {"dc", "metro", "wan", "edge"}
        assert all(s["roundtrip"] for s in row["strategies"].values())


def test_environment_is_read_once(tmp_path: Path) -> None:
    env = dict(os.environ, DWCP_CHECKSUM="sha1")
    small = tmp_path / "s"
    small.write_bytes(b"abc")
    proc = subprocess.run(
        [*CLI, "encode", str(small), "-s", "none", "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert_clean_failure(proc, "DWCP_CHECKSUM")
