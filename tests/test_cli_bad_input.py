"""Bad input at the command line: one ``error:`` line, a non-zero exit that is not 3, never a traceback,
nothing created.

The matrix spoils one input of a valid invocation of every subcommand at a time: missing paths, empty
files, a directory where a file belongs and a file where a directory does, numbers that are not numbers,
negative, zero, out of range, NaN or infinite, unknown strategy and link names, corrupt datasets,
corrupt and tampered models, and store URLs that name no store.

Each case runs the real entry point (``dwcp_selector.cli.main``, what ``python -m dwcp_selector`` calls)
in a child process of its own, with its own empty working directory, environment and stdio. The
children are forked from one driver (this file run as a script) that has imported the CLI and its
heavy dependencies once: a fresh interpreter per case would spend the suite's time importing torch,
onnxruntime and pyarrow again. ``test_the_driver_answers_like_python_dash_m`` checks on a sample that a
real ``python -m dwcp_selector`` answers the same.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import json
import multiprocessing
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "selector"
EVAL = ROOT / "evaldata" / "amd-epyc-2026-12-02"
CLI = [sys.executable, "-m", "dwcp_selector"]
#: a case that has not failed after this long did not fail early: the driver kills it
CASE_TIMEOUT_S = 60.0


# -- the cases ------------------------------------------------------------------------------------------

# {b}, replaced when a case runs, is the directory of bad (and a few good) inputs the ``inputs``
# fixture makes.
B = "{b}"
TEXT, EMPTY, DIR, MISSING = f"{B}/notes.txt", f"{B}/empty", f"{B}/adir", f"{B}/no-such-file"
DATA, BASE, OTHER = f"{B}/data.txt", f"{B}/base.txt", f"{B}/other.txt"
GOOD_MODEL, GOOD_DATA, TRAINABLE = f"{B}/good-model", f"{B}/good-data", f"{B}/trainable"
STORE = f"sqlite:///{B}/store.db"
RECORDS = f"{B}/records.parquet"
HUGE = "1" + "0" * 30
KEY = "k" * 32


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    #: each must appear in the error line
    needles: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    #: the command may print to stdout before it fails (the group's help, for one)
    stdout: bool = False

    @property
    def id(self) -> str:
        env = "".join(f"{k}={v} " for k, v in self.env)
        return env + " ".join(a if a else "''" for a in self.args)


# A valid invocation of every subcommand: each case spoils one of its inputs, or adds a bad one. Outputs
# go to the case's own working directory, which must still be empty after it.
GOOD: dict[str, tuple[str, ...]] = {
    "calibrate": ("calibrate", "--model", GOOD_MODEL),
    "collect": ("collect", "--store", "sqlite:///new.db", "--samples", "8", "--no-system-corpus"),
    "decode": ("decode", f"{B}/zstd.frame", "-o", "out.bin"),
    "demo": ("demo", "--samples", "0"),
    "dict train": ("dict", "train", "--type", "json", "--out", "dicts", DATA),
    "encode": ("encode", DATA, "-s", "zstd", "-o", "out.frame"),
    "evaluate": ("evaluate", "--model", GOOD_MODEL, "--data", GOOD_DATA),
    "export": ("export", "--store", STORE, "--out", "exported"),
    "import": ("import", "--store", "sqlite:///new.db", RECORDS),
    "measure": ("measure", DATA),
    "retention": ("retention", "--store", STORE, "--archive", "archive"),
    "select": ("select", DATA, "--model", GOOD_MODEL),
    "train": ("train", "--data", TRAINABLE, "--out", "model", "--trials", "1", "--folds", "0"),
    "validate": ("validate", "--store", STORE),
}


def _with(command: str, *extra: str) -> tuple[str, ...]:
    return GOOD[command] + extra


def _replacing(command: str, old: str, new: str) -> tuple[str, ...]:
    args = GOOD[command]
    assert old in args, (command, old)
    return tuple(new if a == old else a for a in args)


# Numbers: (command, option, bad values). "abc" and "" are not numbers; the others are out of the
# option's range, NaN or infinite; HUGE (10**30) is no meaningful count, size, seed or day count.
NUMERIC: list[tuple[str, str, tuple[str, ...]]] = [
    ("calibrate", "--calls", ("abc", "", "1.5", "-1", "0", "19", HUGE)),
    ("calibrate", "--budget", ("abc", "", "-1", "0", "0.4", "601", "nan", "inf", "1e400")),
    ("collect", "--samples", ("abc", "", "1.5", "-1", "0", HUGE)),
    ("collect", "--seed", ("abc", "-1", HUGE)),
    ("collect", "--workers", ("abc", "-1", "0", HUGE)),
    ("collect", "--draws", ("abc", "0", "1001")),
    ("collect", "--max-size", ("abc", "0", "1023", HUGE)),
    ("demo", "--seed", ("abc", "-1", HUGE)),
    ("demo", "--free-cores", ("abc", "-1", "0", "nan", "inf")),
    ("demo", "--samples", ("abc", "-1", HUGE)),
    ("demo", "--trials", ("abc", "0", HUGE)),
    ("demo", "--workers", ("abc", "0", HUGE)),
    ("dict train", "--size", ("abc", "-1", "0", "1023", HUGE)),
    ("dict train", "--sample-size", ("abc", "0", "63", HUGE)),
    ("measure", "--bandwidth-mbps", ("abc", "", "-1", "0", "nan", "inf", "1e400")),
    ("measure", "--rtt-ms", ("abc", "-5", "0", "nan", "inf")),
    ("measure", "--loss", ("abc", "-0.1", "1", "nan")),
    ("measure", "--utilization", ("abc", "1", "1.5", "nan")),
    ("measure", "--free-cores", ("abc", "0", "nan", "inf")),
    ("measure", "--repeats", ("abc", "0", "2.5", HUGE)),
    ("select", "--bandwidth-mbps", ("abc", "0", "nan", "inf")),
    ("select", "--rtt-ms", ("-1", "nan")),
    ("select", "--loss", ("1", "nan")),
    ("select", "--utilization", ("-1", "nan")),
    ("select", "--free-cores", ("0", "-inf", "inf")),
    ("retention", "--keep-days", ("abc", "-1", "0", HUGE)),
    ("train", "--trials", ("abc", "0", HUGE)),
    ("train", "--folds", ("abc", "-1", "1", "200", HUGE)),
    ("train", "--seed", ("abc", "-1", HUGE)),
    ("train", "--profile-sd", ("abc", "-0.1", "2.5", "nan")),
    ("validate", "--min-rows", ("abc", "-1", "1.5")),
]

# Store URLs that name no usable store, and what the error says. Readers (validate, export,
# retention) must find a telemetry store there; collect may create one, so it gets those that cannot be.
BAD_URLS: list[tuple[str, str]] = [
    (f"sqlite:///{TEXT}", "not a SQLite telemetry store"),
    (f"sqlite:///{DIR}", "is a directory"),
    (f"sqlite:///{B}/future.db", "newer than this build"),
    ("sqlite://", "SQLite URLs look like"),
    ("sqlite:///", "names no file"),
    ("postgresql://[bad", "not a PostgreSQL URL"),
    ("postgresql://127.0.0.1:99999/test", "Port out of range"),
    ("postgresql://127.0.0.1:port/test", "not a PostgreSQL URL"),
    ("postgresql://127.0.0.1:1/test", "not reachable"),
    ("postgres://127.0.0.1:1/test?schema=bad-name", "not a plain SQL identifier"),
    ("postgresql://127.0.0.1:1/test?no_such_parameter=1", "PostgreSQL"),
    ("mysql://127.0.0.1/test", "unsupported telemetry store URL"),
    ("telemetry.db", "unsupported telemetry store URL"),
    ("", "unsupported telemetry store URL"),
]
READER_URLS: list[tuple[str, str]] = [
    (f"sqlite:///{EMPTY}", "not a SQLite telemetry store"),
    (f"sqlite:///{B}/foreign.db", "not a SQLite telemetry store"),
    (f"sqlite:///{B}/typo/store.db", "no SQLite telemetry store"),
    (f"sqlite:///{MISSING}", "no SQLite telemetry store"),
    (f"sqlite:///{TEXT}/telemetry.db", "no SQLite telemetry store"),
]
WRITER_URLS: list[tuple[str, str]] = [
    (f"sqlite:///{TEXT}/telemetry.db", "a parent is not a directory"),
    (f"sqlite:///{EMPTY}/telemetry.db", "a parent is not a directory"),
]

# Datasets (for --data) and models (for --model) that cannot be used, and what the error says.
BAD_DATASETS: list[tuple[str, str]] = [
    (MISSING, "does not exist"),
    (TEXT, "is a file"),
    (DIR, "no manifest.json"),
    (f"{B}/ds-truncated", "not JSON"),
    (f"{B}/ds-empty", "not JSON"),
    (f"{B}/ds-binary", "not JSON"),
    (f"{B}/ds-list", "not a dwcp-dataset/1 manifest"),
    (f"{B}/ds-nofiles", "lists no files"),
    (f"{B}/ds-nosplit", "holds none of the splits"),
    (f"{B}/ds-unlisted", "not in the dataset manifest"),
    (f"{B}/ds-sha", "does not match the dataset manifest"),
    (f"{B}/ds-garbage", "not a readable Parquet table"),
    (f"{B}/ds-emptyparquet", "not a readable Parquet table"),
    (f"{B}/ds-columns", "lacks the columns"),
]
BAD_MODELS: list[tuple[str, str]] = [
    (MISSING, "does not exist"),
    (TEXT, "is a file"),
    (DIR, "no manifest.json"),
    (f"{B}/m-truncated", "cannot read"),
    (f"{B}/m-empty", "cannot read"),
    (f"{B}/m-binary", "cannot read"),
    (f"{B}/m-list", "not a dwcp-model/1 manifest"),
    (f"{B}/m-edited", "checksum mismatch"),
    (f"{B}/m-nokind", "missing or malformed field"),
    (f"{B}/m-times", "missing or malformed field"),
    (f"{B}/m-tiers", "missing or malformed field"),
    (f"{B}/m-notiers", "lists no model"),
    (f"{B}/m-version", "different major version"),
    (f"{B}/m-labels", "label set"),
    (f"{B}/m-swapped", "does not match its manifest's sha256"),
    (f"{B}/m-noonnx", "light.onnx is missing"),
    (f"{B}/m-garbage", "cannot load the light model"),
    (f"{B}/m-wronginput", "light model takes"),
]


# Values the options accept whose refusal comes from the library, in its words.
NUMERIC_NEEDLES = {
    ("retention", "--keep-days", HUGE): "cannot keep",
    ("train", "--folds", HUGE): "cross-validation folds",
    ("train", "--folds", "200"): "cross-validation folds",
    ("train", "--folds", "1"): "folds 0 (none) or ≥ 2",
    ("dict train", "--sample-size", HUGE): "at least 8 non-empty samples",
}


def _numeric() -> Iterable[Case]:
    for command, option, values in NUMERIC:
        for value in values:
            yield Case(
                _with(command, option, value), (NUMERIC_NEEDLES.get((command, option, value), option),)
            )


def _urls() -> Iterable[Case]:
    for command in ("validate", "export", "retention"):
        for url, needle in BAD_URLS + READER_URLS:
            yield Case(_replacing(command, STORE, url), (needle,))
    for url, needle in BAD_URLS + WRITER_URLS:
        yield Case(_replacing("collect", "sqlite:///new.db", url), (needle,))
        yield Case(_replacing("import", "sqlite:///new.db", url), (needle,))
    for path, needle in (
        (TEXT, "not a Parquet file"),
        (EMPTY, "not a Parquet file"),
        (DIR, "is a directory"),
        (MISSING, "does not exist"),
    ):
        yield Case(_replacing("import", RECORDS, path), (needle,))
    for command in ("validate", "export", "collect"):
        args = tuple(a for a in GOOD[command] if a not in ("--store", STORE, "sqlite:///new.db"))
        yield Case(args, ("unsupported telemetry store URL",), env=(("DWCP_STORE_URL", "mysql://x"),))


def _datasets_and_models() -> Iterable[Case]:
    for path, needle in BAD_DATASETS:
        yield Case(_replacing("evaluate", GOOD_DATA, path), (needle,))
        yield Case(_replacing("train", TRAINABLE, path), (needle,))
        yield Case(("calibrate", "--model", GOOD_MODEL, "--data", path), (needle,))
    for path, needle in BAD_MODELS:
        yield Case(_replacing("evaluate", GOOD_MODEL, path), (needle,))
        yield Case(_replacing("select", GOOD_MODEL, path), (needle,))
        yield Case(_replacing("calibrate", GOOD_MODEL, path), (needle,))
        yield Case(("calibrate", "--model", path, "--data", GOOD_DATA), (needle,))


def _paths_and_names() -> Iterable[Case]:
    yield from (
        # measure
        Case(_replacing("measure", DATA, MISSING), ("does not exist",)),
        Case(_replacing("measure", DATA, DIR), ("is a directory",)),
        Case(_with("measure", "--baseline", MISSING), ("does not exist",)),
        Case(_with("measure", "--baseline", DIR), ("is a directory",)),
        Case(_with("measure", "--dict-dir", TEXT), ("is a file",)),
        Case(_with("measure", "--link", "lan"), ("'lan' is not one of",)),
        Case(_with("measure", "--link", ""), ("--link",)),
        # encode
        Case(_replacing("encode", DATA, MISSING), ("does not exist",)),
        Case(_replacing("encode", DATA, DIR), ("is a directory",)),
        Case(_replacing("encode", "zstd", "brotli"), ("'brotli' is not one of",)),
        Case(_replacing("encode", "zstd", "hde"), ("not offered", "no baseline")),
        Case(_with("encode", "--baseline", MISSING), ("does not exist",)),
        Case(_with("encode", "--baseline", DIR), ("is a directory",)),
        Case(_replacing("encode", "out.frame", DIR), ("is a directory",)),
        Case(_replacing("encode", "out.frame", "no-such-dir/out.frame"), ("no-such-dir",)),
        Case(_replacing("encode", "out.frame", f"{TEXT}/out.frame"), ("not a directory",)),
        Case(_with("encode", "--checksum", "md5"), ("'md5' is not one of",)),
        Case(_with("encode", "--dict-dir", TEXT), ("is a file",)),
        Case(GOOD["encode"][:-2], ("Missing option", "--out")),
        Case(("encode", DATA, "-o", "out.frame"), ("Missing option", "--strategy")),
        # decode
        Case(_replacing("decode", f"{B}/zstd.frame", MISSING), ("does not exist",)),
        Case(_replacing("decode", f"{B}/zstd.frame", DIR), ("is a directory",)),
        Case(_replacing("decode", f"{B}/zstd.frame", EMPTY), ("too short",)),
        Case(_replacing("decode", f"{B}/zstd.frame", TEXT), ("not a dwcp container",)),
        Case(_replacing("decode", f"{B}/zstd.frame", f"{B}/truncated.frame"), ("frame",)),
        Case(_replacing("decode", f"{B}/zstd.frame", f"{B}/flipped.frame"), ("checksum",)),
        Case(_replacing("decode", f"{B}/zstd.frame", f"{B}/trailing.frame"), ("trailing bytes",)),
        Case(_replacing("decode", f"{B}/zstd.frame", f"{B}/hde.frame"), ("baseline",)),
        Case(
            _replacing("decode", f"{B}/zstd.frame", f"{B}/hde.frame") + ("--baseline", OTHER), ("baseline",)
        ),
        Case(
            _replacing("decode", f"{B}/zstd.frame", f"{B}/hde.frame") + ("--baseline", EMPTY), ("baseline",)
        ),
        Case(_with("decode", "--baseline", MISSING), ("does not exist",)),
        Case(_replacing("decode", "out.bin", DIR), ("is a directory",)),
        Case(_replacing("decode", "out.bin", "no-such-dir/out.bin"), ("no-such-dir",)),
        Case(_with("decode", "--dict-dir", TEXT), ("is a file",)),
        # select
        Case(_replacing("select", DATA, MISSING), ("does not exist",)),
        Case(_replacing("select", DATA, DIR), ("is a directory",)),
        Case(_with("select", "--baseline", MISSING), ("does not exist",)),
        Case(_with("select", "--baseline", DIR), ("is a directory",)),
        Case(_with("select", "--link", "wifi"), ("'wifi' is not one of",)),
        Case(("select", DATA), ("Missing option", "--model")),
        # dict train
        Case(_replacing("dict train", DATA, MISSING), ("does not exist",)),
        Case(_replacing("dict train", DATA, DIR), ("is a directory",)),
        Case(_replacing("dict train", DATA, EMPTY), ("at least 8 non-empty samples",)),
        Case(_replacing("dict train", "dicts", TEXT), ("is a file",)),
        Case(_replacing("dict train", "dicts", f"{TEXT}/dicts"), ("not a directory",)),
        Case(_replacing("dict train", "json", ""), ("payload type",)),
        Case(_replacing("dict train", "json", "../escape"), ("payload type",)),
        Case(_replacing("dict train", "json", "a/b"), ("payload type",)),
        Case(GOOD["dict train"][:-1], ("Missing argument",)),
        # evaluate
        Case(_with("evaluate", "--split", "training"), ("no 'training' split",)),
        Case(_with("evaluate", "--html", DIR), ("is a directory",)),
        Case(_with("evaluate", "--html", f"{TEXT}/report.html"), ("not a directory",)),
        # train
        Case(_replacing("train", TRAINABLE, GOOD_DATA), ("no train/val split",)),
        Case(_replacing("train", "model", TEXT), ("is a file",)),
        Case(_replacing("train", "model", f"{TEXT}/model"), ("not a directory",)),
        Case(_with("train", "--candidates", "svm"), ("unknown candidates",)),
        Case(_with("train", "--candidates", ","), ("--candidates", "names no candidate")),
        Case(_with("train", "--candidates", ""), ("--candidates", "names no candidate")),
        # calibrate
        Case(("calibrate", "--data", GOOD_DATA), ("--data needs --model",)),
        Case(("calibrate", "--model", GOOD_MODEL, "--data", TRAINABLE), ("not the dataset",)),
        # collect
        Case(_with("collect", "--corpus", MISSING), ("does not exist",)),
        Case(_with("collect", "--corpus", TEXT), ("is a file",)),
        Case(_with("collect", "--corpus", DIR), ("holds no readable file",)),
        Case(_with("collect", "--start", "yesterday"), ("not an ISO date",)),
        Case(_with("collect", "--start", "2026-13-45"), ("not an ISO date",)),
        Case(("collect", "--store", "sqlite:///new.db"), ("Missing option", "--samples")),
        # demo
        Case(_with("demo", "--out", TEXT), ("is a file",)),
        Case(("demo", "--samples", "1", "--out", f"{TEXT}/demo"), ("not a directory",)),
        # export and retention
        Case(_replacing("export", "exported", TEXT), ("is a file",)),
        Case(_replacing("retention", "archive", TEXT), ("is a file",)),
        Case(_with("retention", "--now", "tomorrow"), ("not an ISO date",)),
        Case(("export", "--store", STORE), ("Missing option", "--out")),
        # the group itself, and options that no command has
        Case((), ("missing command",), stdout=True),
        Case(("dict",), ("missing command",), stdout=True),
        Case(("compress",), ("No such command",)),
        Case(("dict", "merge"), ("No such command",)),
        Case(("--verbose",), ("No such option",)),
        Case(_with("encode", "--chunk-size", "0"), ("No such option", "--chunk-size")),
        Case(_with("encode", "--rate", "5"), ("No such option", "--rate")),
        Case(_with("measure", "--port", "99999"), ("No such option", "--port")),
        Case(_with("collect", "--records", "5"), ("No such option", "--records")),
        Case(_with("measure", "--json", "--json=1"), ("--json",)),
        Case(_with("encode", "extra-argument"), ("unexpected extra argument",)),
    )


def _environment() -> Iterable[Case]:
    yield from (
        Case(GOOD["encode"], ("DWCP_CHECKSUM",), env=(("DWCP_CHECKSUM", "md5"),)),
        Case(GOOD["measure"], ("DWCP_CHECKSUM",), env=(("DWCP_CHECKSUM", "md5"),)),
        Case(GOOD["encode"], ("DWCP_TELEMETRY_ENABLED",), env=(("DWCP_TELEMETRY_ENABLED", "maybe"),)),
        Case(GOOD["encode"], ("notes.txt",), env=(("DWCP_DICT_DIR", TEXT),)),
        Case(GOOD["decode"], ("notes.txt",), env=(("DWCP_DICT_DIR", TEXT),)),
        Case(GOOD["select"], ("at least 16 bytes",), env=(("DWCP_MODEL_KEY", "short"),)),
        Case(GOOD["select"], ("not signed",), env=(("DWCP_MODEL_KEY", KEY),)),
        Case(GOOD["evaluate"], ("not signed",), env=(("DWCP_MODEL_KEY", KEY),)),
        Case(GOOD["calibrate"], ("not signed",), env=(("DWCP_MODEL_KEY", KEY),)),
        Case(GOOD["train"], ("at least 16 bytes",), env=(("DWCP_MODEL_KEY", "short"),)),
    )


CASES: list[Case] = [*_numeric(), *_urls(), *_datasets_and_models(), *_paths_and_names(), *_environment()]
assert len({c.id for c in CASES}) == len(CASES), "two cases with one id"


# -- the inputs -----------------------------------------------------------------------------------------


def _rewrite_model(
    src: Path,
    dst: Path,
    edit: Callable[[dict[str, Any]], None],
    *,
    light: bytes | None = None,
    checksum: bool = True,
) -> None:
    """Copy a model, edit its manifest (and replace light.onnx, its sha256 updated), then recompute the
    manifest's checksum as an attacker would: it is unkeyed."""
    shutil.copytree(src, dst)
    man = json.loads((dst / "manifest.json").read_text())
    man.pop("checksum")
    edit(man)
    if light is not None:
        (dst / "light.onnx").write_bytes(light)
        man["tiers"]["light"]["sha256"] = hashlib.sha256(light).hexdigest()
    if checksum:
        man["checksum"] = hashlib.sha256(json.dumps(man, indent=2, sort_keys=True).encode()).hexdigest()
    (dst / "manifest.json").write_text(json.dumps(man, indent=2, sort_keys=True))


def _keep(_: dict[str, Any]) -> None:
    pass


def _drop_spec(man: dict[str, Any]) -> None:
    man["tiers"]["light"].pop("spec")


def _rewrite_dataset(
    dst: Path, files: dict[str, bytes], edit: Callable[[dict[str, Any]], None] | None = None
) -> None:
    """A dataset of ``files`` with a manifest that vouches for them (then ``edit``-ed)."""
    dst.mkdir()
    man = json.loads((EVAL / "manifest.json").read_text())
    man["files"] = {}
    for name, data in files.items():
        (dst / name).write_bytes(data)
        man["files"][name] = {"rows": 4000, "sha256": hashlib.sha256(data).hexdigest()}
    if edit is not None:
        edit(man)
    (dst / "manifest.json").write_text(json.dumps(man))


def _make_inputs(b: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dwcp_selector.strategies import Baseline, PayloadCodec
    from dwcp_selector.telemetry.store import open_store

    (b / "notes.txt").write_text("a text file, not a database, a frame or a manifest\n" * 50)
    (b / "empty").write_bytes(b"")
    (b / "adir").mkdir()
    base = (ROOT / "README.md").read_bytes() * 4  # 8 or more samples of 4 KiB for dict train
    (b / "base.txt").write_bytes(base)
    (b / "data.txt").write_bytes(base[:3000] + b"an edit in the middle" + base[3000:])
    (b / "other.txt").write_bytes(base[::-1])

    # frames: one good, then truncated, bit-flipped, with bytes after its end; an hde one
    codec = PayloadCodec()
    frame = codec.encode((b / "data.txt").read_bytes(), "zstd").to_bytes()
    (b / "zstd.frame").write_bytes(frame)
    (b / "truncated.frame").write_bytes(frame[: len(frame) // 2])
    flipped = bytearray(frame)
    flipped[len(frame) // 2] ^= 0x40
    (b / "flipped.frame").write_bytes(bytes(flipped))
    (b / "trailing.frame").write_bytes(frame + b"tail")
    hde = codec.encode((b / "data.txt").read_bytes(), "hde", baseline=Baseline("base.txt", base))
    (b / "hde.frame").write_bytes(hde.to_bytes())

    # telemetry records as Parquet, for import
    from dwcp_selector.telemetry.schema import COLUMN_NAMES
    from dwcp_selector.telemetry.store import arrow_schema

    from .conftest import full_record

    when = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
    rows = [full_record(i, when + dt.timedelta(minutes=i)) for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema(list(COLUMN_NAMES))), b / "records.parquet")

    # stores: a good empty one, one from a newer build, an SQLite database that is not a telemetry store
    with open_store(f"sqlite:///{b / 'store.db'}"):
        pass
    with open_store(f"sqlite:///{b / 'future.db'}"):
        pass
    with sqlite3.connect(b / "future.db") as db:
        db.execute("INSERT INTO schema_migrations VALUES (99, 0, 'from the future')")
    db.close()
    with sqlite3.connect(b / "foreign.db") as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.close()

    # datasets
    test = (EVAL / "test.parquet").read_bytes()
    shutil.copytree(EVAL, b / "good-data")
    _rewrite_dataset(b / "trainable", {f"{s}.parquet": test for s in ("train", "val", "test")})
    m = (EVAL / "manifest.json").read_text()
    _rewrite_dataset(b / "ds-truncated", {"test.parquet": test})
    (b / "ds-truncated" / "manifest.json").write_text(m[: len(m) // 3])
    _rewrite_dataset(b / "ds-empty", {"test.parquet": test})
    (b / "ds-empty" / "manifest.json").write_bytes(b"")
    _rewrite_dataset(b / "ds-emptyparquet", {"test.parquet": b""})
    _rewrite_dataset(b / "ds-binary", {"test.parquet": test})
    (b / "ds-binary" / "manifest.json").write_bytes(bytes(range(256)))
    _rewrite_dataset(b / "ds-list", {"test.parquet": test})
    (b / "ds-list" / "manifest.json").write_text("[]")
    _rewrite_dataset(b / "ds-nofiles", {"test.parquet": test}, lambda man: man.pop("files"))
    _rewrite_dataset(b / "ds-nosplit", {"test.parquet": test})
    (b / "ds-nosplit" / "test.parquet").unlink()
    _rewrite_dataset(b / "ds-unlisted", {"test.parquet": test}, lambda man: man["files"].clear())
    _rewrite_dataset(b / "ds-sha", {"test.parquet": test})
    (b / "ds-sha" / "test.parquet").write_bytes(test[:-1] + bytes([test[-1] ^ 1]))
    _rewrite_dataset(b / "ds-garbage", {"test.parquet": b"PAR1 but not really" * 100})
    pq.write_table(pa.table({"size_bytes": [1, 2, 3]}), b / "columns.parquet")
    columns = (b / "columns.parquet").read_bytes()
    _rewrite_dataset(b / "ds-columns", {f"{s}.parquet": columns for s in ("train", "val", "test")})
    (b / "columns.parquet").unlink()

    # models: the good one, then every way a model directory can be damaged
    shutil.copytree(MODEL, b / "good-model")
    good = b / "good-model"
    man = (good / "manifest.json").read_text()
    shutil.copytree(good, b / "m-truncated")
    (b / "m-truncated" / "manifest.json").write_text(man[: len(man) // 2])
    shutil.copytree(good, b / "m-empty")
    (b / "m-empty" / "manifest.json").write_bytes(b"")
    shutil.copytree(good, b / "m-binary")
    (b / "m-binary" / "manifest.json").write_bytes(b"\xff\xfe" + bytes(range(256)))
    shutil.copytree(good, b / "m-list")
    (b / "m-list" / "manifest.json").write_text("[]")
    _rewrite_model(good, b / "m-edited", lambda man: man.update(temperature=9.0), checksum=False)
    _rewrite_model(good, b / "m-nokind", lambda man: man.pop("kind"))
    _rewrite_model(good, b / "m-times", lambda man: man.update(times="fast"))
    _rewrite_model(good, b / "m-tiers", _drop_spec)
    _rewrite_model(good, b / "m-notiers", lambda man: man.update(tiers={}))
    _rewrite_model(good, b / "m-version", lambda man: man.update(library_version="99.0.0"))
    _rewrite_model(good, b / "m-labels", lambda man: man.update(label_set=["none", "gzip"]))
    shutil.copytree(good, b / "m-swapped")
    shutil.copyfile(good / "rich.onnx", b / "m-swapped" / "light.onnx")
    shutil.copytree(good, b / "m-noonnx")
    (b / "m-noonnx" / "light.onnx").unlink()
    _rewrite_model(good, b / "m-garbage", _keep, light=b"not a protobuf" * 64)
    # a valid ONNX network, but the rich tier's: other inputs than light's spec
    _rewrite_model(good, b / "m-wronginput", _keep, light=(good / "rich.onnx").read_bytes())


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    b = tmp_path_factory.mktemp("inputs")
    _make_inputs(b)
    return b


def _expand(value: str, b: Path) -> str:
    return value.replace("{b}", str(b))


def _base_env(profiles: Path) -> dict[str, str]:
    """The test's environment without any DWCP_ setting, and a host-profile cache of its own (empty: a
    case that gets as far as measuring the host, seconds, did not fail early, and leaves a profile)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DWCP_")}
    return {**env, "DWCP_PROFILE_DIR": str(profiles), "COLUMNS": "200"}


def _job(case: Case, inputs: Path, cwd: Path, profiles: Path) -> dict[str, Any]:
    """What the driver needs to run ``case``: its arguments and environment with the placeholders filled."""
    cwd.mkdir()
    env = {**_base_env(profiles), **{k: _expand(v, inputs) for k, v in case.env}}
    return {"id": case.id, "args": [_expand(a, inputs) for a in case.args], "cwd": str(cwd), "env": env}


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@dataclass
class Matrix:
    answers: dict[str, dict[str, Any]]
    inputs_changed: list[str]


@pytest.fixture(scope="module")
def matrix(request: pytest.FixtureRequest, inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    """Run every selected case of the matrix at once, in parallel; each test then reads its answer."""
    selected: list[Case] = []
    for item in request.session.items:
        if isinstance(item, pytest.Function) and item.path == Path(__file__):
            if item.originalname == "test_bad_input_is_one_error_line":
                case = item.callspec.params["case"]
                assert isinstance(case, Case)
                selected.append(case)
    runs = tmp_path_factory.mktemp("runs")
    before = _snapshot(inputs)
    jobs = [_job(c, inputs, runs / str(n), runs / f"{n}.profiles") for n, c in enumerate(selected)]
    answers = _drive(jobs)
    for n, case in enumerate(selected):
        answers[case.id]["left"] = _listing(runs / str(n))
        answers[case.id]["profiled"] = _listing(runs / f"{n}.profiles")
    after = _snapshot(inputs)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return Matrix(answers, changed)


def _drive(jobs: list[dict[str, Any]], *, workers: int | None = None) -> dict[str, dict[str, Any]]:
    """Answers of the CLI to ``jobs``, from the driver (this file run as a script)."""
    if not jobs:
        return {}
    request = {"jobs": jobs, "workers": workers or max(2, os.cpu_count() or 1), "timeout": CASE_TIMEOUT_S}
    proc = subprocess.run(
        [sys.executable, __file__, "--serve"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    answers: dict[str, dict[str, Any]] = json.loads(proc.stdout)
    return answers


# -- the tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input_is_one_error_line(case: Case, matrix: Matrix) -> None:
    a = matrix.answers[case.id]
    err = a["stderr"]
    assert not a["timed_out"], f"still running after {CASE_TIMEOUT_S:.0f} s: it did not fail early"
    assert a["rc"] not in (0, 3), f"exit {a['rc']}: {err}"  # 3: the last-resort handler, an untyped error
    assert "Traceback" not in err, err
    assert err.startswith("error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    for needle in case.needles:
        assert needle.lower() in err.lower(), err
    if not case.stdout:
        assert a["stdout"] == "", a["stdout"]
    assert a["left"] == [], f"left behind: {a['left']}"
    assert a["profiled"] == [], "measured the host before refusing its input"


def test_the_matrix_is_a_matrix() -> None:
    """Every subcommand gets bad paths, numbers and names, and the heavy ones their inputs besides."""
    per_command = {
        c: sum(1 for case in CASES if case.args[: len(c.split())] == tuple(c.split())) for c in GOOD
    }
    assert min(per_command.values()) >= 10, per_command
    assert len(CASES) >= 150


def test_the_matrix_left_its_inputs_alone(matrix: Matrix) -> None:
    assert matrix.inputs_changed == []  # no reader migrated, converted or wrote into an input


def test_the_good_invocations_are_good(inputs: Path, tmp_path: Path) -> None:
    """The valid invocations the matrix spoils do work: its errors are the spoiled input's."""
    quick = ("decode", "dict train", "encode", "measure", "select", "evaluate", "import")
    jobs = [
        _job(Case(GOOD[c]), inputs, tmp_path / str(n), tmp_path / f"{n}.profiles")
        for n, c in enumerate(quick)
    ]
    for command, a in _drive(jobs).items():
        assert a["rc"] == 0, (
            command,
            a["stderr"],
        )  # stderr may warn (select: this host is unlike the model's)


def test_the_driver_answers_like_python_dash_m(inputs: Path, tmp_path: Path) -> None:
    sample = [
        Case(_replacing("decode", f"{B}/zstd.frame", f"{B}/flipped.frame")),
        Case(_replacing("evaluate", GOOD_DATA, f"{B}/ds-garbage")),
        Case(_with("measure", "--loss", "nan")),
        Case(("dict", "merge")),
        Case(()),
    ]
    profiles = tmp_path / "profiles"  # one for all: the driven and the real runs see the same cache
    jobs = [_job(c, inputs, tmp_path / str(n), profiles) for n, c in enumerate(sample)]
    driven = _drive(jobs)

    def real(job: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *job["args"]],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=job["cwd"],
            env=job["env"],
            check=False,
        )

    with ThreadPoolExecutor(len(jobs)) as pool:
        for job, r in zip(jobs, pool.map(real, jobs), strict=True):
            d = driven[job["id"]]
            assert (d["rc"], d["stderr"], d["stdout"]) == (r.returncode, r.stderr, r.stdout), job["id"]


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


# -- the driver -----------------------------------------------------------------------------------------

#: what the commands import when they run, imported once by the driver before it forks the cases
PRELOAD = (
    "dwcp_selector.cli",
    "dwcp_selector.telemetry.sqlite",
    "dwcp_selector.telemetry.postgres",
    "dwcp_selector.telemetry.staging",
    "dwcp_selector.dataset.export",
    "dwcp_selector.dataset.quality",
    "dwcp_selector.serving.selector",
    "dwcp_selector.training.pipeline",
    "dwcp_selector.training.policy_eval",
    "dwcp_selector.hostprofile",
)


def _exit_code(exc: SystemExit) -> int:
    """The exit status the interpreter makes of ``exc`` (a message goes to stderr, status 1)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def _child(main: Callable[[list[str]], None], job: dict[str, Any], out: int, err: int) -> NoReturn:
    """Run one case as ``python -m dwcp_selector`` would, then exit with its status."""
    code = 1
    try:
        os.setpgid(0, 0)  # the driver kills the group of a case that overruns, with any workers it started
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.chdir(job["cwd"])
        os.environ.clear()
        os.environ.update(job["env"])
        sys.argv = ["dwcp-selector", *job["args"]]
        try:
            main(list(job["args"]))
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc)
        except BaseException:  # noqa: BLE001 - what the interpreter would print for an uncaught error
            traceback.print_exc()
            code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):
                stream.flush()
        os._exit(code)


def _serve() -> None:
    """Read jobs as JSON on stdin, run each in a forked child, write every answer as JSON on stdout."""
    request = json.load(sys.stdin)
    for name in PRELOAD:
        importlib.import_module(name)
    from dwcp_selector.cli import main

    pending: list[dict[str, Any]] = list(request["jobs"])
    running: dict[int, tuple[dict[str, Any], Any, Any, float]] = {}
    killed: set[int] = set()
    answers: dict[str, dict[str, Any]] = {}
    while pending or running:
        while pending and len(running) < request["workers"]:
            job = pending.pop(0)
            out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(main, job, out.fileno(), err.fileno())
            with suppress(OSError):
                os.setpgid(pid, pid)
            running[pid] = (job, out, err, time.monotonic())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            now = time.monotonic()
            for p, (_, _, _, t0) in running.items():
                if now - t0 > request["timeout"] and p not in killed:
                    killed.add(p)
                    with suppress(ProcessLookupError):
                        os.killpg(p, signal.SIGKILL)
            time.sleep(0.002)
            continue
        job, out, err, t0 = running.pop(pid)
        with suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # workers the case left running
        out.seek(0)
        err.seek(0)
        answers[job["id"]] = {
            "rc": os.waitstatus_to_exitcode(status),
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
            "seconds": round(time.monotonic() - t0, 3),
            "timed_out": pid in killed,
        }
        out.close()
        err.close()
    json.dump(answers, sys.stdout)


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
