"""Host speed profiles: how fast *this* node encodes, decodes and decides, measured in a few seconds.

Labels price codec CPU seconds measured on the collecting host, and a model trained on one host learns
that host's speeds. Nodes of a fleet differ (a 2-core Intel Xeon runs pure Python about 2.4× slower than
a 2-core AMD EPYC, and each codec moves by its own factor), so every node measures itself once:

* per core and per strategy, the encode and decode rate (payload bytes per CPU second) on fixed,
  seeded reference payloads that exercise each encoder's real paths (a memory image and its next
  pre-copy round, and a database file after a batch of updates, for HDE's page tiers; a JSON log whose
  window moved on by 4 KiB, for its region tier);
* the rate of a fixed pure-Python workload (the decision path and HDE's planning are Python);
* optionally the decision path itself (a loaded model's light decision, median of many calls).

The rounds interleave the strategies, so drift during the measurement hits them alike. Every rate sums,
over its pieces (each 1 MiB reference payload, each half-millisecond piece of the Python workload), the
piece's best round, as a label keeps each chunk's least run: a host that flips between a fast and a slow
mode from one millisecond to the next reads as its fast mode. The whole calibration stays
under ``budget_s`` (10 s by default; about 4 s here).

A profile is keyed by the host (:class:`HostKey`: CPU model, usable cores, Python, this library and the
codec libraries' versions) and cached on disk (``$DWCP_PROFILE_DIR``, else the user cache directory):
:func:`load_or_calibrate` measures only when no profile of this key is cached (or it is too old). A
snapshot of a few seconds can fall into a slow phase of the host that lasts seconds, so every
measurement joins the host's history of the last day, and the profile a node uses is the history's
long-run profile, each rate's fastest reading (:meth:`HostProfile.combine`). Telemetry records carry
the profile's id and rates (the ``host_*`` columns), so one store can hold a fleet's records; a model's
manifest carries the profiles of the hosts its training records came from.

Leakage rule: a profile is measured before and apart from any transfer it prices, on reference payloads
that are never a transfer's.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .errors import ConfigError

__all__ = [
    "DEFAULT_BUDGET_S",
    "DEFAULT_PROFILE_EVERY_S",
    "HISTORY_MAX_AGE_S",
    "HISTORY_SNAPSHOTS",
    "HOST_FEATURE_NAMES",
    "HOST_FEATURE_STRATEGIES",
    "PROFILE_VERSION",
    "REFERENCE_RATES",
    "SERVING_PROFILE_MAX_AGE_S",
    "HostKey",
    "HostProfile",
    "ProfileClock",
    "calibrate_host",
    "compare_to_training_hosts",
    "cpu_model",
    "host_key",
    "history_path",
    "host_vector",
    "load_or_calibrate",
    "profile_dir",
    "read_history",
]

PROFILE_VERSION = 1
DEFAULT_BUDGET_S = 10.0
#: A collection's records carry a profile at most this old: a long collection measures the host again as
#: it goes, so each record's host inputs describe the host as it was when the record was measured.
DEFAULT_PROFILE_EVERY_S = 300.0
#: A node that loads a model measures itself again when its cached profile is older than this.
SERVING_PROFILE_MAX_AGE_S = 86_400.0
#: A node's profile combines its calibrations of the last day, at most this many (``HostProfile.combine``).
HISTORY_SNAPSHOTS = 12
HISTORY_MAX_AGE_S = SERVING_PROFILE_MAX_AGE_S
#: The budget of a re-measurement during a collection (at least 3 rounds, about 3 s on a 2-core EPYC).
REFRESH_BUDGET_S = 6.0
#: Strategies whose host rates are model inputs (``none`` is a copy: its cost is the stacks', not a codec's).
HOST_FEATURE_STRATEGIES: tuple[str, ...] = ("lz4", "zstd", "hde")
#: The profile's rates, in the order a model takes them (``host_vector``).
HOST_FEATURE_NAMES: tuple[str, ...] = (
    *(f"host_{s}_{d}_bps" for s in HOST_FEATURE_STRATEGIES for d in ("encode", "decode")),
    "host_python_ops_s",
)
#: A fixed point the model's host inputs are measured from: log2(rate / reference). The rates of a 2-core
#: AMD EPYC, 2026-12-02 (``dwcp-selector calibrate``), rounded; any fixed values would do, these keep the
#: inputs near 0. A node without a profile is taken to be this host (with a warning).
REFERENCE_RATES: dict[str, float] = {
    "host_lz4_encode_bps": 500e6,
    "host_lz4_decode_bps": 1550e6,
    "host_zstd_encode_bps": 200e6,
    "host_zstd_decode_bps": 660e6,
    "host_hde_encode_bps": 250e6,
    "host_hde_decode_bps": 1480e6,
    "host_python_ops_s": 2.1e6,
}
#: Size of each reference payload; 1 MiB is one AMST chunk.
REFERENCE_BYTES = 1 << 20
_MIN_ROUNDS = 3
_MAX_ROUNDS = 9


@dataclass(frozen=True, slots=True)
class HostKey:
    """What makes two hosts' speeds comparable: the same key means the same kind of node and code."""

    cpu_model: str
    cores: int
    python: str
    library: str
    codecs: str

    @property
    def key_id(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def cpu_model() -> str:
    """The CPU model ``/proc/cpuinfo`` names (``lscpu``'s "Model name"), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _codec_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for dist in ("backports.zstd", "lz4", "xxhash", "numpy"):
        try:
            parts.append(f"{dist}={version(dist)}")
        except PackageNotFoundError:  # pragma: no cover - a declared dependency
            parts.append(f"{dist}=?")
    return ",".join(parts)


def host_key() -> HostKey:
    """This process's host key (CPU model from ``/proc/cpuinfo``, cores it may run on)."""
    return HostKey(
        cpu_model=cpu_model(),
        cores=_usable_cores(),
        python=platform.python_version(),
        library=__version__,
        codecs=_codec_versions(),
    )


@dataclass(frozen=True, slots=True)
class HostProfile:
    """One host's measured speeds. Rates are payload bytes per CPU second of one core."""

    key: HostKey
    measured_at: str
    encode_bps: Mapping[str, float]
    decode_bps: Mapping[str, float]
    python_ops_s: float
    calibration_s: float
    rounds: int
    decision_s: float | None = None
    spread: Mapping[str, float] = field(default_factory=dict)
    version: int = PROFILE_VERSION
    #: How many calibrations this profile combines (:meth:`combine`); 1 for one calibration.
    snapshots: int = 1

    def __post_init__(self) -> None:
        rates = [*self.encode_bps.values(), *self.decode_bps.values(), self.python_ops_s]
        if not all(isinstance(r, int | float) and math.isfinite(r) and r > 0 for r in rates):
            raise ConfigError("host profile rates must be finite and positive")
        missing = set(HOST_FEATURE_STRATEGIES).difference(self.encode_bps)
        if missing or set(HOST_FEATURE_STRATEGIES).difference(self.decode_bps):
            raise ConfigError(f"host profile lacks the rates of {sorted(missing) or 'decoding'}")
        if self.snapshots < 1:
            raise ConfigError(f"a host profile combines at least one calibration, not {self.snapshots}")

    @classmethod
    def combine(cls, snapshots: Sequence[HostProfile]) -> HostProfile:
        """One host's long-run profile from several calibrations: per rate the fastest reading.

        A calibration takes a few seconds, and a host that runs in a slow mode for seconds at a time
        reads 1.3-2x slower in a snapshot that fell into one (decision 0008, "Profiles from many
        snapshots"); the fastest reading of a dozen snapshots moved by a few percent. Labels keep each
        chunk's least time, so the fast mode is also the host their costs describe. The result is dated
        by the newest snapshot and counts them all in ``snapshots``.
        """
        if not snapshots:
            raise ConfigError("combining host profiles needs at least one")
        keys = {p.key for p in snapshots}
        if len(keys) != 1:
            raise ConfigError(f"host profiles of {len(keys)} different hosts cannot be combined")
        if len(snapshots) == 1:
            return snapshots[0]
        newest = min(snapshots, key=lambda p: p.age_s())
        enc = set.intersection(*(set(p.encode_bps) for p in snapshots))
        dec = set.intersection(*(set(p.decode_bps) for p in snapshots))
        timed = [p.decision_s for p in snapshots if p.decision_s is not None]
        return replace(
            newest,
            encode_bps={s: max(p.encode_bps[s] for p in snapshots) for s in sorted(enc)},
            decode_bps={s: max(p.decode_bps[s] for p in snapshots) for s in sorted(dec)},
            python_ops_s=max(p.python_ops_s for p in snapshots),
            rounds=sum(p.rounds for p in snapshots),
            decision_s=min(timed) if timed else None,
            snapshots=sum(p.snapshots for p in snapshots),
        )

    @property
    def profile_id(self) -> str:
        """Key and measurement together: two calibrations of one host have different ids."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return f"{self.key.key_id}-{hashlib.sha256(blob).hexdigest()[:8]}"

    def age_s(self) -> float:
        """Seconds since the profile was measured (infinite when its time stamp cannot be read)."""
        try:
            then = dt.datetime.fromisoformat(self.measured_at)
        except ValueError:
            return math.inf
        if then.tzinfo is None:
            then = then.replace(tzinfo=dt.UTC)
        return max(0.0, (dt.datetime.now(dt.UTC) - then).total_seconds())

    def features(self) -> dict[str, float]:
        """The telemetry columns and model inputs of this profile (``host_*``)."""
        out = {f"host_{s}_encode_bps": float(self.encode_bps[s]) for s in HOST_FEATURE_STRATEGIES}
        out.update({f"host_{s}_decode_bps": float(self.decode_bps[s]) for s in HOST_FEATURE_STRATEGIES})
        out["host_python_ops_s"] = float(self.python_ops_s)
        return out

    def time_factors(self, reference: HostProfile) -> dict[str, float]:
        """Per strategy and direction, how much longer this host takes than ``reference`` (2.0 = twice as
        long): the factors that re-price a record measured on ``reference`` as if measured here."""
        out: dict[str, float] = {}
        for s in HOST_FEATURE_STRATEGIES:
            out[f"{s}_encode"] = reference.encode_bps[s] / self.encode_bps[s]
            out[f"{s}_decode"] = reference.decode_bps[s] / self.decode_bps[s]
        out["python"] = reference.python_ops_s / self.python_ops_s
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["encode_bps"] = dict(self.encode_bps)
        d["decode_bps"] = dict(self.decode_bps)
        d["spread"] = dict(self.spread)
        if self.snapshots == 1:  # profiles of one calibration keep the ids they had before combining
            del d["snapshots"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HostProfile:
        try:
            if int(d.get("version", 0)) != PROFILE_VERSION:
                raise ConfigError(
                    f"host profile version {d.get('version')!r}; this build reads {PROFILE_VERSION}"
                )
            key = HostKey(**d["key"])
            return cls(
                key=key,
                measured_at=str(d["measured_at"]),
                encode_bps={str(k): float(v) for k, v in d["encode_bps"].items()},
                decode_bps={str(k): float(v) for k, v in d["decode_bps"].items()},
                python_ops_s=float(d["python_ops_s"]),
                calibration_s=float(d["calibration_s"]),
                rounds=int(d["rounds"]),
                decision_s=None if d.get("decision_s") is None else float(d["decision_s"]),
                spread={str(k): float(v) for k, v in dict(d.get("spread") or {}).items()},
                snapshots=int(d.get("snapshots", 1)),
            )
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"not a host profile: {type(exc).__name__}: {exc}") from exc

    def save(self, path: Path) -> Path:
        _replace_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> HostProfile:
        try:
            doc = json.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read host profile {path}: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"host profile {path} is not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ConfigError(f"host profile {path} is not a JSON object")
        return cls.from_dict(doc)


def host_vector(rates: Mapping[str, float] | None) -> list[float]:
    """A model's host inputs: log2 of each rate over ``REFERENCE_RATES`` (0 for a missing or bad rate)."""
    out: list[float] = []
    for name in HOST_FEATURE_NAMES:
        r = rates.get(name) if rates is not None else None
        ok = r is not None and math.isfinite(r) and r > 0
        out.append(math.log2(r / REFERENCE_RATES[name]) if ok else 0.0)  # type: ignore[operator]
    return out


# -- reference payloads ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Reference:
    name: str
    payload: bytes
    baseline: bytes | None


def _references() -> list[_Reference]:
    """Fixed, seeded payloads: the same bytes on every host, so rates compare across hosts."""
    from .workload.payloads import ContentPools, database_update, dirty_round, logs_json, vm_memory

    rng = np.random.default_rng(20261202)
    pools = ContentPools(seed=7, pool_bytes=2 << 20)
    image = vm_memory(REFERENCE_BYTES, rng, pools)
    logs_old = logs_json(REFERENCE_BYTES, rng, pools)
    logs_new = logs_old[4096:] + logs_json(4096, rng, pools)  # shipped log: the window moved on
    db_old = pools.db[:REFERENCE_BYTES]
    db_new = database_update(db_old, rng)
    return [
        _Reference("vm-round", dirty_round(image, rng, dirty_fraction=0.05), image),
        _Reference("log-window", logs_new, logs_old),
        _Reference("database", db_new, db_old),
    ]


class _PythonWorkload:
    """A fixed pure-Python workload (dict, arithmetic, bytes slicing), the kind the decision path does.

    It runs in pieces (:meth:`run`) that carry its state from one to the next, so the pieces together
    do exactly the work of one run of all of it, and each piece can be timed on its own.
    """

    __slots__ = ("acc", "data", "table")

    def __init__(self) -> None:
        self.acc = 0
        self.table: dict[int, int] = {}
        self.data = bytes(range(256)) * 16

    def run(self, start: int, stop: int) -> int:
        acc, table, data = self.acc, self.table, self.data
        for i in range(start, stop):
            k = (i * 2654435761) & 0xFFFF
            table[k] = table.get(k, 0) + data[i & 4095]
            acc ^= k + len(data[i & 255 : (i & 255) + 32])
        self.acc = acc
        return acc + len(table)


_PY_OPS = 20_000
#: The Python workload is timed in this many pieces of about half a millisecond each (decision 0008).
_PY_PIECES = 10


def _time(fn: Callable[[], object]) -> float:
    t0 = time.thread_time()
    fn()
    return time.thread_time() - t0


def calibrate_host(
    *,
    budget_s: float = DEFAULT_BUDGET_S,
    strategies: Sequence[str] = HOST_FEATURE_STRATEGIES,
    decision: Callable[[], object] | None = None,
    decision_calls: int = 2000,
    record: dict[str, list[list[float]]] | None = None,
) -> HostProfile:
    """Measure this host: every strategy on the reference payloads, in interleaved rounds; per piece
    (reference payload, piece of the Python workload) the best round.

    ``record``, when given, receives the raw CPU seconds (``"lz4_encode"``, ..., ``"python"``: one list
    per piece, one time per round), for benchmarks that compare ways of reading them.

    ``decision``, when given, is one decision of a loaded model (timed ``decision_calls`` times, median).
    Rounds continue until half the budget is spent (at least 3, at most 9); the decision timing gets
    at most a tenth of it.
    """
    if not 0 < budget_s <= 600:
        raise ConfigError(f"calibration budget must be in (0, 600] seconds, got {budget_s}")
    from .measure import measure_strategy
    from .strategies import Baseline, PayloadCodec

    t_start = time.perf_counter()
    codec = PayloadCodec()
    codec.warm_up()
    refs = _references()
    baselines = {
        r.name: Baseline(f"host-profile-{r.name}", r.baseline) if r.baseline is not None else None
        for r in refs
    }
    # per strategy and reference payload (per piece of the Python workload), one time a round
    enc: dict[str, list[list[float]]] = {s: [[] for _ in refs] for s in strategies}
    dec: dict[str, list[list[float]]] = {s: [[] for _ in refs] for s in strategies}
    py: list[list[float]] = [[] for _ in range(_PY_PIECES)]
    step = _PY_OPS // _PY_PIECES
    rounds = 0
    while rounds < _MAX_ROUNDS:
        for s in strategies:
            for j, r in enumerate(refs):
                run = measure_strategy(
                    codec,
                    r.payload,
                    s,
                    baseline=baselines[r.name] if s == "hde" else None,
                    repeats=1,
                )
                if not run.roundtrip:  # pragma: no cover - the conformance suite holds every codec
                    raise ConfigError(f"calibration: {s} failed on {r.name}: {run.error}")
                enc[s][j].append(run.encode_s)
                dec[s][j].append(run.decode_s)
        work = _PythonWorkload()
        for j in range(_PY_PIECES):
            py[j].append(_time(functools.partial(work.run, j * step, (j + 1) * step)))
        rounds += 1
        if rounds >= _MIN_ROUNDS and time.perf_counter() - t_start > budget_s / 2:
            break
    decision_s: float | None = None
    if decision is not None:
        decision()
        deadline = time.perf_counter() + budget_s / 10
        times: list[float] = []
        for _ in range(max(1, decision_calls)):
            t0 = time.perf_counter()
            decision()
            times.append(time.perf_counter() - t0)
            if time.perf_counter() > deadline:
                break
        decision_s = statistics.median(times)

    def rate(pieces: list[list[float]], amount: float) -> float:
        # each piece's best round, summed, as labels keep each chunk's least run: a host that flips
        # between a fast and a slow mode within milliseconds (decision 0008) reads as its fast mode
        # wherever one round saw it, piece by piece rather than only when a whole round did
        return amount / max(sum(min(xs) for xs in pieces), 1e-9)

    def rel_spread(pieces: list[list[float]]) -> float:
        # how much whole rounds differed: (max − min) / median of the rounds' totals
        totals = [sum(xs) for xs in zip(*pieces, strict=True)]
        m = statistics.median(totals)
        return (max(totals) - min(totals)) / m if m > 0 else 0.0

    total = sum(len(r.payload) for r in refs)
    spread = {f"{s}_encode": rel_spread(enc[s]) for s in strategies}
    spread.update({f"{s}_decode": rel_spread(dec[s]) for s in strategies})
    spread["python"] = rel_spread(py)
    if record is not None:
        record.update({f"{s}_encode": enc[s] for s in strategies})
        record.update({f"{s}_decode": dec[s] for s in strategies})
        record["python"] = py
    return HostProfile(
        key=host_key(),
        measured_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        encode_bps={s: rate(enc[s], total) for s in strategies},
        decode_bps={s: rate(dec[s], total) for s in strategies},
        python_ops_s=rate(py, _PY_OPS),
        calibration_s=time.perf_counter() - t_start,
        rounds=rounds,
        decision_s=decision_s,
        spread=spread,
    )


# -- the cache ----------------------------------------------------------------------------------------------
def profile_dir() -> Path:
    """``$DWCP_PROFILE_DIR``, else ``$XDG_CACHE_HOME/dwcp-selector/host-profiles`` (``~/.cache``)."""
    env = os.environ.get("DWCP_PROFILE_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "dwcp-selector" / "host-profiles"


def history_path(directory: Path | None = None, key: HostKey | None = None) -> Path:
    """Where the calibrations of the last day of ``key`` (this host by default) are kept, one JSON
    profile a line, beside its cached profile."""
    return (directory or profile_dir()) / f"{(key or host_key()).key_id}.history.jsonl"


def read_history(path: Path, key: HostKey | None = None) -> list[HostProfile]:
    """The calibrations of ``key`` (this host's by default) in a history file, oldest first, those of the
    last ``HISTORY_MAX_AGE_S`` only; a missing file is an empty history, a damaged line is skipped with
    a warning."""
    key = key or host_key()
    try:
        lines = path.read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):  # no history yet (or no cache directory)
        return []
    except OSError as exc:
        warnings.warn(f"host profile history {path} ignored: {exc}", RuntimeWarning, stacklevel=2)
        return []
    out: list[HostProfile] = []
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            if not isinstance(doc, dict):
                raise ConfigError("not a JSON object")
            profile = HostProfile.from_dict(doc)
        except (json.JSONDecodeError, ConfigError):
            bad += 1
            continue
        if profile.key == key and profile.snapshots == 1 and profile.age_s() <= HISTORY_MAX_AGE_S:
            out.append(profile)
    if bad:
        warnings.warn(f"{bad} damaged line(s) of {path} skipped", RuntimeWarning, stacklevel=2)
    return out


def _replace_text(path: Path, text: str) -> None:
    """Write ``path`` atomically: a concurrent reader sees the old file or the new one, and of two
    writers at once the last wins (a history may lose one snapshot, never the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_or_calibrate(
    directory: Path | None = None,
    *,
    measure: bool = True,
    force: bool = False,
    budget_s: float = DEFAULT_BUDGET_S,
    max_age_s: float | None = None,
) -> HostProfile | None:
    """This host's cached profile, measured and cached first when there is none (or ``force``, or the
    cached one is older than ``max_age_s``: a host whose speed drifts is measured again).

    A measurement is one snapshot: it joins the host's history (its calibrations of the last day, at
    most ``HISTORY_SNAPSHOTS``), and the profile returned and cached is the history's long-run profile
    (:meth:`HostProfile.combine`), not the snapshot alone.

    With ``measure=False`` a missing profile gives None. A damaged cache file is measured again (with a
    warning), and a cache directory that cannot be written keeps the profile in memory only: a node
    always gets a profile or None, never an exception from its cache.
    """
    key = host_key()
    path = (directory or profile_dir()) / f"{key.key_id}.json"
    if not force and path.exists():
        try:
            profile = HostProfile.load(path)
            if profile.key == key and (max_age_s is None or profile.age_s() <= max_age_s):
                return profile
        except ConfigError as exc:
            warnings.warn(f"host profile {path} ignored: {exc}", RuntimeWarning, stacklevel=2)
    if not measure:
        return None
    snapshot = calibrate_host(budget_s=budget_s)
    hist = history_path(directory, key)
    snapshots = [*read_history(hist, key), snapshot][-HISTORY_SNAPSHOTS:]
    profile = HostProfile.combine(snapshots)
    try:
        _replace_text(hist, "".join(json.dumps(p.to_dict(), sort_keys=True) + "\n" for p in snapshots))
        profile.save(path)
    except OSError as exc:
        warnings.warn(f"host profile not cached ({path}): {exc}", RuntimeWarning, stacklevel=2)
    return profile


class ProfileClock:
    """The host profile a long-running measurement stamps on its records, measured again once it is
    ``every_s`` old (never, with ``every_s`` None).

    A cached profile is a few seconds' snapshot of a host whose speed drifts with its neighbours: on one
    2-core EPYC, a profile cached a day earlier read lz4 and zstd 1.3-1.6x (pure Python 1.8x) slower
    than the records collected beside it were measured (docs/decisions/0008, "Stale profiles"). The clock
    is read between measurements, never during one, so a profile is still measured apart from the
    transfers it prices.
    """

    def __init__(
        self,
        profile: HostProfile,
        every_s: float | None = DEFAULT_PROFILE_EVERY_S,
        *,
        budget_s: float = REFRESH_BUDGET_S,
        directory: Path | None = None,
    ) -> None:
        if every_s is not None and not every_s > 0:
            raise ConfigError(f"profile refresh interval must be > 0 seconds, got {every_s}")
        self._profile = profile
        self.every_s = every_s
        self.budget_s = budget_s
        self.directory = directory
        self.measured = 0

    def current(self) -> HostProfile:
        """The profile for the next measurement: the same one until it is ``every_s`` old."""
        if self.every_s is not None and self._profile.age_s() >= self.every_s:
            profile = load_or_calibrate(self.directory, force=True, budget_s=self.budget_s)
            if profile is not None:  # pragma: no branch - force=True always measures
                self._profile = profile
                self.measured += 1
        return self._profile


#: A host whose rates differ from every training host's by more than this factor is outside what the
#: model has seen (the fleets measured here span about 2.4× in pure Python).
OUTSIDE_FACTOR = 2.0


def compare_to_training_hosts(
    profile: HostProfile | None, hosts: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """How this host's rates compare with a model's training hosts (manifest ``training_hosts``).

    Per rate, the ratio to the nearest training host's (this host's rate over theirs: 0.5 = half as
    fast), and warnings for rates outside ``OUTSIDE_FACTOR`` of every training host. A model that names
    no training hosts, or a node without a profile, gets a report that says so.
    """
    if profile is None:
        return {"profile_id": None, "warnings": ["no host profile: the model's speeds are assumed"]}
    report: dict[str, Any] = {"profile_id": profile.profile_id, "cpu": profile.key.cpu_model}
    rated = [h for h in hosts if isinstance(h.get("rates"), Mapping) and h["rates"]]
    if not rated:
        report["warnings"] = [
            "the model names no training hosts (trained before host profiles): its decisions assume the "
            "speeds of the host that collected its data"
        ]
        return report
    mine = profile.features()
    ratios: dict[str, float] = {}
    warn: list[str] = []
    for name, rate in mine.items():
        theirs = [float(h["rates"][name]) for h in rated if float(h["rates"].get(name, 0) or 0) > 0]
        if not theirs:
            continue
        nearest = min(theirs, key=lambda r: abs(math.log(rate / r)))
        ratios[name] = rate / nearest
        if not 1 / OUTSIDE_FACTOR <= ratios[name] <= OUTSIDE_FACTOR:
            warn.append(f"{name} is {ratios[name]:.2f}x the nearest training host's")
    report["ratios"] = ratios
    report["training_hosts"] = [h.get("host_cpu") for h in rated]
    report["warnings"] = warn
    return report
