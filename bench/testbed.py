"""A two-node testbed for real AMST transfers over a shaped link (DESIGN section 10, issue 10).

Two network namespaces joined by a veth pair; the sending side's egress is shaped with ``tc … tbf`` (netem
delay and loss are not available on these kernels, so RTT and loss stay model inputs, not emulated).
Addresses exist inside the namespaces only (10.77.0.1/30 sends, 10.77.0.2/30 receives) and traffic only
ever goes between them. Each node is one Python worker process started with ``ip netns exec NS taskset
-c CORE python bench/testbed.py worker …`` and driven over JSON lines on its stdin/stdout, so each node has
exactly one core.

    python bench/testbed.py check            # can this machine build the testbed? (exit 1 if not)
    python bench/testbed.py cleanup          # remove namespaces left behind by killed runs
    python bench/testbed.py send FILE [--rate-mbit 50] [--strategy none] [--streams 1]

Namespaces are removed when the :class:`Testbed` context exits, at interpreter exit (``atexit``) and on
any error while building it; ``cleanup`` removes those of runs that were killed outright (their owning
process id is in the name, and only names whose process is gone are touched).

:func:`predict` is the cost model's formula (``CostModel.transfer_time``) with candidate corrections, so a
table of errors after corrections can be recomputed from the raw rows of ``bench/cost_model_transfers.py``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import math
import os
import re
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

PREFIX = "dwcp-tb"
SENDER_ADDR = "10.77.0.1"
RECEIVER_ADDR = "10.77.0.2"
PREFIX_LEN = 30
AMST_PORT = 7700
ECHO_PORT = 7701
SINK_PORT = 7702
#: Bounds on every external command and every exchange with a worker.
COMMAND_TIMEOUT_S = 15.0
WORKER_START_TIMEOUT_S = 60.0
DEFAULT_CALL_TIMEOUT_S = 120.0
#: The tbf queue, expressed as the longest a packet may wait in it: long enough that one TCP flow never
#: overflows it (TCP small queues keep at most ~1 ms of pacing rate per socket there), so shaping
#: throttles the sender instead of dropping its packets.
TBF_LATENCY_MS = 50
#: Scheduler tick assumed when sizing the bucket (CONFIG_HZ=250 is the common distribution kernel).
TBF_HZ = 250
MIN_BURST_BYTES = 64 << 10

_counter = iter(range(1, 1 << 30))
_live: set[Testbed] = set()


class TestbedError(RuntimeError):
    """The testbed could not be built, or a worker failed or did not answer in time."""


# -- shaping --------------------------------------------------------------------------------------------
def tbf_burst_bytes(rate_bps: float) -> int:
    """Bucket size for a tbf at ``rate_bps``: max(rate / HZ, 64 KiB).

    tbf releases tokens only when its watchdog gets to run, so the bucket must hold about one scheduler
    tick of rate (rate / HZ) or the qdisc falls short of its nominal rate: measured here at 1 Gbit/s,
    a 64 KiB bucket let TCP through at 78-95 % of nominal, with retransmissions, 128 KiB at 94.8-95.6 %,
    rate / HZ (500 kB) at 95.6 % every time (the most it can be: the headers). And it must hold the largest
    packet the stack hands it, a 64 KiB GSO super-packet on veth, or tbf splits every such packet in
    software. A bucket is also a head start: the first ``burst`` bytes of an idle link leave at veth
    speed, which shortens short transfers; every row records ``burst_bytes`` so it can be accounted.
    """
    return max(math.ceil(rate_bps / 8.0 / TBF_HZ), MIN_BURST_BYTES)


def tbf_args(rate_bps: float) -> list[str]:
    """``tc qdisc … root`` arguments of the tbf for ``rate_bps``."""
    return [
        "tbf",
        "rate",
        f"{int(rate_bps)}bit",
        "burst",
        str(tbf_burst_bytes(rate_bps)),
        "latency",
        f"{TBF_LATENCY_MS}ms",
    ]


def _run(cmd: list[str], *, timeout: float = COMMAND_TIMEOUT_S, check: bool = True) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TestbedError(f"{' '.join(cmd)}: {exc}") from exc
    if check and proc.returncode != 0:
        raise TestbedError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def netns_available() -> tuple[bool, str]:
    """Whether namespaces, veth and tbf can be used here: (True, "") or (False, why not).

    Builds and removes a throwaway pair of namespaces: being root is not enough in containers that
    withhold CAP_NET_ADMIN or CAP_SYS_ADMIN, or on kernels without veth or sch_tbf.
    """
    if sys.platform != "linux":
        return False, f"network namespaces need Linux, this is {sys.platform}"
    for tool in ("ip", "tc", "taskset"):
        if shutil.which(tool) is None:
            return False, f"{tool!r} is not installed (iproute2 / util-linux)"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return False, "creating network namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    if (os.cpu_count() or 1) < 2:
        return False, "the testbed pins its two nodes to cores 0 and 1; this machine has one core"
    try:
        with Testbed(50e6, start_workers=False):
            pass
    except TestbedError as exc:
        return False, f"cannot build a namespace testbed here: {exc}"
    return True, ""


def list_namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def cleanup_stale() -> list[str]:
    """Delete testbed namespaces whose owning process no longer exists; returns the names deleted."""
    removed = []
    pattern = re.compile(rf"^{re.escape(PREFIX)}-(\d+)-\d+-[sr]$")
    for name in list_namespaces():
        m = pattern.match(name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            _run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    return removed


# -- the worker processes ---------------------------------------------------------------------------------
class Worker:
    """One node: a worker process inside a namespace, driven by JSON lines with a deadline on each."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], stderr_path: Path) -> None:
        self.name = name
        self.stderr_path = stderr_path
        self._stderr: IO[bytes] = stderr_path.open("wb")
        self._buf = b""
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=dict(env)
            )
            self.ready = self._read(WORKER_START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    def call(self, op: str, timeout: float = DEFAULT_CALL_TIMEOUT_S, **args: Any) -> dict[str, Any]:
        """Run ``op`` on the worker; its reply, or :class:`TestbedError` with the worker's stderr."""
        if self.proc.poll() is not None:
            raise TestbedError(f"{self.name} worker has exited: {self.stderr_tail()}")
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
            self.proc.stdin.flush()
        except OSError as exc:
            raise TestbedError(f"{self.name} worker: {exc}: {self.stderr_tail()}") from exc
        reply = self._read(timeout)
        if "error" in reply:
            raise TestbedError(f"{self.name} worker, {op}: {reply['error']}")
        return reply

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TestbedError(f"{self.name} worker did not answer within {timeout:.0f} s")
                if not sel.select(remaining):
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    self.proc.wait(timeout=5)
                    raise TestbedError(
                        f"{self.name} worker exited ({self.proc.returncode}): {self.stderr_tail()}"
                    )
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        doc: dict[str, Any] = json.loads(line)
        return doc

    def stderr_tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            self._stderr.flush()
            return self.stderr_path.read_bytes()[-n:].decode("utf-8", "replace").strip()
        return ""

    def close(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(TestbedError, OSError, ValueError):
                self.call("quit", timeout=5)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()  # this worker only, by its own pid
                proc.wait(timeout=5)
        for f in (proc.stdin, proc.stdout) if proc is not None else ():
            with contextlib.suppress(OSError):
                if f is not None:
                    f.close()
        with contextlib.suppress(OSError):
            self._stderr.close()


class Testbed:
    """Two namespaces, a veth pair, a tbf on the sender's egress, and a worker process in each.

    ``rate_bps=None`` leaves the link unshaped. ``pythonpath`` is put first on the workers' path (a
    snapshot of the package, so code edited during a run does not change what is measured).
    """

    def __init__(
        self,
        rate_bps: float | None = None,
        *,
        start_workers: bool = True,
        python: str = sys.executable,
        pythonpath: str | None = None,
        sender_core: int = 0,
        receiver_core: int = 1,
        log_dir: Path | None = None,
    ) -> None:
        n = next(_counter)
        pid = os.getpid()
        self.sender_ns = f"{PREFIX}-{pid}-{n}-s"
        self.receiver_ns = f"{PREFIX}-{pid}-{n}-r"
        # interface names are limited to 15 bytes
        tag = f"{pid % 100000}{n % 100}"
        self.sender_dev = f"dtb{tag}s"
        self.receiver_dev = f"dtb{tag}r"
        self.rate_bps = rate_bps
        self.start_workers_on_enter = start_workers
        self.python = python
        self.pythonpath = pythonpath
        self.sender_core = sender_core
        self.receiver_core = receiver_core
        self.log_dir = log_dir
        self.sender: Worker | None = None
        self.receiver: Worker | None = None
        self._created: list[str] = []
        self._closed = False

    # -- life cycle ------------------------------------------------------------------------------
    def __enter__(self) -> Testbed:
        try:
            self.build()
            if self.start_workers_on_enter:
                self.start_workers()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> None:
        _live.add(self)
        s, r = self.sender_ns, self.receiver_ns
        for ns in (s, r):
            _run(["ip", "netns", "add", ns])
            self._created.append(ns)
        _run(
            ["ip", "link", "add", self.sender_dev, "netns", s, "type", "veth"]
            + ["peer", "name", self.receiver_dev, "netns", r]
        )
        _run(["ip", "-n", s, "addr", "add", f"{SENDER_ADDR}/{PREFIX_LEN}", "dev", self.sender_dev])
        _run(["ip", "-n", r, "addr", "add", f"{RECEIVER_ADDR}/{PREFIX_LEN}", "dev", self.receiver_dev])
        for ns, dev in ((s, self.sender_dev), (r, self.receiver_dev)):
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
        self.set_rate(self.rate_bps)

    def set_rate(self, rate_bps: float | None) -> None:
        """Shape the sender's egress at ``rate_bps`` (bit/s of frames as tbf counts them), or unshape."""
        base = ["tc", "-n", self.sender_ns, "qdisc"]
        if rate_bps is None:
            _run([*base, "del", "dev", self.sender_dev, "root"], check=False)
        else:
            _run([*base, "replace", "dev", self.sender_dev, "root", *tbf_args(rate_bps)])
        self.rate_bps = rate_bps

    def qdisc_stats(self) -> dict[str, Any]:
        """The sender root qdisc's counters (bytes and packets as tbf saw them, drops, overlimits)."""
        out = _run(["tc", "-n", self.sender_ns, "-s", "-j", "qdisc", "show", "dev", self.sender_dev])
        for q in json.loads(out or "[]"):
            if q.get("root"):
                keys = ("kind", "bytes", "packets", "drops", "overlimits", "requeues")
                return {k: q.get(k) for k in keys}
        return {}

    def worker_argv(self, ns: str, core: int, role: str) -> list[str]:
        script = str(Path(__file__).resolve())
        return ["ip", "netns", "exec", ns, "taskset", "-c", str(core), self.python, script, "worker", role]

    def start_workers(self) -> tuple[Worker, Worker]:
        env = dict(os.environ)
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        log_dir = self.log_dir or Path(tempfile.gettempdir())
        log_dir.mkdir(parents=True, exist_ok=True)
        self.receiver = Worker(
            "receiver",
            self.worker_argv(self.receiver_ns, self.receiver_core, "receiver"),
            env,
            log_dir / f"{self.receiver_ns}.log",
        )
        self.sender = Worker(
            "sender",
            self.worker_argv(self.sender_ns, self.sender_core, "sender"),
            env,
            log_dir / f"{self.sender_ns}.log",
        )
        return self.sender, self.receiver

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in (self.sender, self.receiver):
            if w is not None:
                w.close()
        for ns in reversed(self._created):
            _run(["ip", "netns", "del", ns], check=False)  # takes its end of the veth pair with it
        _live.discard(self)

    def exists(self) -> bool:
        names = set(list_namespaces())
        return self.sender_ns in names or self.receiver_ns in names

    # -- one transfer ------------------------------------------------------------------------------
    def load(
        self, name: str, path: Path, baseline_path: Path | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        """Give both nodes a payload (and the baseline each side already holds for HDE)."""
        s, r = self._workers()
        args = {"name": name, "path": str(path), "baseline": str(baseline_path) if baseline_path else None}
        r.call("load", timeout=timeout, **args)
        return s.call("load", timeout=timeout, **args)

    def transfer(
        self, name: str, strategy: str, streams: int, *, chunk_size: int = 1 << 20, timeout: float = 120
    ) -> dict[str, Any]:
        """One real AMST transfer; the sender's report, the receiver's verification and the probes."""
        s, r = self._workers()
        sent = s.call(
            "send", timeout=timeout, name=name, strategy=strategy, streams=streams, chunk_size=chunk_size
        )
        got = r.call("collect", timeout=timeout, name=name, transfer_id=sent["transfer_id"])
        return {**sent, **{f"rx_{k}": v for k, v in got.items()}}

    def _workers(self) -> tuple[Worker, Worker]:
        if self.sender is None or self.receiver is None:
            raise TestbedError("the testbed's workers are not running")
        return self.sender, self.receiver


@atexit.register
def _close_all() -> None:
    for bed in list(_live):
        bed.close()


# -- other load on the machine ------------------------------------------------------------------------------
def cpu_busy_s() -> float:
    """Busy CPU seconds of the whole machine so far, all cores, from ``/proc/stat`` (10 ms ticks)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_stall_s() -> float:
    """Seconds so far in which some runnable task waited for a CPU (PSI ``some``; NaN where absent)."""
    try:
        line = Path("/proc/pressure/cpu").read_text().split("\n", 1)[0]
    except OSError:
        return math.nan
    return int(line.rsplit("total=", 1)[1]) / 1e6


def wait_quiet(
    *, max_busy_cores: float = 0.15, window_s: float = 0.1, timeout_s: float = 20.0
) -> tuple[float, float]:
    """Wait (at most ``timeout_s``) for a window in which the machine's other work uses few cores.

    The nodes are pinned, but anything else on the machine runs on the same two cores: a transfer timed
    while a test suite runs measures the suite. Returns (seconds waited, busy cores in the last window);
    call it while the testbed's own workers are idle.
    """
    t0 = time.monotonic()
    window_s = min(max(window_s, 0.02), 1.0)
    while True:
        b0 = cpu_busy_s()
        time.sleep(window_s)
        busy = (cpu_busy_s() - b0) / window_s
        waited = time.monotonic() - t0 - window_s
        if busy <= max_busy_cores or waited >= timeout_s:
            return max(0.0, waited), busy


# -- the cost model, with candidate corrections ------------------------------------------------------------
def model_kwargs(params: Any = None) -> dict[str, Any]:
    """:func:`predict`'s arguments that reproduce ``CostModel(params)`` (the default parameters when
    ``None``): with them, ``predict(row, **model_kwargs())`` is the cost model's own price of the row."""
    from dwcp_selector.costmodel import CostParams

    p = params if params is not None else CostParams()
    stack = getattr(p, "send_stack_s_per_byte", 0.0)
    recv_stack = getattr(p, "recv_stack_s_per_byte", 0.0)
    verify = getattr(p, "verify_s_per_byte", 0.0)
    return {
        "wire_efficiency": getattr(p, "wire_efficiency", 1.0),
        "stack_bps": 8.0 / stack if stack else math.inf,
        "recv_stack_bps": 8.0 / recv_stack if recv_stack else math.inf,
        "pipeline": "model",
        "rtt_outside": not getattr(p, "rtt_in_pipeline", True),
        "overhead_s": getattr(p, "transfer_overhead_s", 0.0),
        "rtt_factor": getattr(p, "setup_rtts", 0.0),
        "per_stream_s": getattr(p, "stream_overhead_s", 0.0),
        "verify_bps": 8.0 / verify if verify else math.inf,
        "chunk_size": p.chunk_size,
    }


def predict(
    row: Mapping[str, Any],
    *,
    overhead_s: float = 0.0,
    rtt_factor: float = 0.0,
    wire_efficiency: float = 1.0,
    per_stream_s: float = 0.0,
    verify_bps: float = math.inf,
    stack_bps: float = math.inf,
    recv_stack_bps: float = math.inf,
    pipeline: str = "model",
    rtt_outside: bool = False,
    burst_credit: bool = False,
    encode_key: str = "encode_s",
    decode_key: str = "decode_s",
    chunk_size: int = 1 << 20,
) -> float:
    """``CostModel.transfer_time`` for a raw row, with candidate corrections (all off by default).

    With every correction off this is the formula of DESIGN section 2 (cost-v1's parameters; with
    :func:`model_kwargs` it is the current cost model)::

        E = e_s/k,  D = d_s/k,  X = R + 8·S_s/B,  T = max(E, X, D) + (E + D)/m

    The corrections, each measured by ``bench/cost_model_transfers.py``:

    * ``wire_efficiency`` η: B carries η of its bits as payload (TCP/IP/Ethernet headers; 1448/1514 on
      this veth as tbf counts). Unshaped rows carry as B the measured goodput over the model's η.
    * ``stack_bps``: the network stack's CPU work on the sending node competes with encoding for its
      cores: E = (e_s + 8·S_s/stack_bps)/k.
    * ``recv_stack_bps``: the receiving stack's CPU work (the kernel's copy of every byte received) on the
      receiving node competes with decoding for its cores: D = (d_s + 8·S_s/recv_stack_bps)/k_d.
    * ``pipeline="bottleneck"``: the pipeline's fill and drain are the first chunk's share of the stages
      before the slowest and the last chunk's share of those after it (the model always adds (E + D)/m,
      which counts the encoder's fill twice when encoding is the slowest stage).
    * ``rtt_outside``: R is paid whatever stage is the slowest (the model loses it unless X is).
    * ``overhead_s + rtt_factor·R + per_stream_s·(streams − 1) + 8·S/verify_bps``: per transfer, the
      connect handshake (an RTT), thread and stream set-up, the RESULT; per extra stream; and the
      receiver's checksum of the whole payload after its last chunk.
    * ``burst_credit``: an idle tbf bucket lets its ``burst_bytes`` through at once: a property of this
      testbed, not of real links, used to tell its effect apart.
    * ``encode_key``: the row's field to take e_s from (``encode_amst_s``: the wall time of the encoder
      on the AMST sender's path, a fresh stream thread, instead of ``measure_strategy``'s); ``decode_key``
      likewise for d_s.

    A row whose strategy decodes its chunks in order (``decodes_in_order``, cost-v2) decodes on one core.
    """
    payload = int(row["payload_bytes"])
    m = max(1, -(-payload // chunk_size))
    k = min(float(row.get("free_cores", 1.0)), m)
    rtt = float(row["rtt_s"])
    rate = float(row["effective_bps"])
    compressed = float(row["compressed_bytes"])
    enc = float(row[encode_key])
    if math.isfinite(stack_bps):
        enc += 8.0 * compressed / stack_bps
    enc /= k
    free = float(row.get("free_cores", 1.0))
    dec = float(row[decode_key])
    if math.isfinite(recv_stack_bps):
        dec += 8.0 * compressed / recv_stack_bps
    dec /= min(free, 1.0) if row.get("decodes_in_order") else k
    # the link carries payload bytes / wire_efficiency (headers), less an idle tbf bucket's worth; unshaped,
    # the row's capacity is the measured goodput over the model's efficiency, so the same rule holds
    wire_bytes = compressed / wire_efficiency
    if row.get("shaped") and burst_credit:
        wire_bytes = max(0.0, wire_bytes - float(row.get("burst_bytes", 0)))
    wire = 8.0 * wire_bytes / rate
    if pipeline == "model":
        xmit = wire if rtt_outside else rtt + wire
        t = max(enc, xmit, dec) + (enc + dec) / m
    elif pipeline == "standard":
        # m equal chunks through three stages: the first chunk crosses all of them, each later one adds
        # the slowest stage's share: T = max + (E + X + D − max)/m
        xmit = wire if rtt_outside else rtt + wire
        stages = (enc, xmit, dec)
        t = max(stages) + (sum(stages) - max(stages)) / m
    elif pipeline == "bottleneck":
        xmit = wire if rtt_outside else rtt + wire
        first = min(chunk_size, payload) / payload if payload else 1.0
        last = (payload - (m - 1) * chunk_size) / payload if payload else 1.0
        stages = (enc, xmit, dec)
        slowest = max(range(3), key=lambda i: stages[i])
        t = stages[slowest] + first * sum(stages[:slowest]) + last * sum(stages[slowest + 1 :])
    else:
        raise ValueError(f"pipeline must be 'model', 'standard' or 'bottleneck', got {pipeline!r}")
    if rtt_outside:
        t += rtt
    t += overhead_s + rtt_factor * rtt + per_stream_s * (int(row.get("streams", 1)) - 1)
    if math.isfinite(verify_bps):
        t += 8.0 * payload / verify_bps
    return t


# -- worker side ---------------------------------------------------------------------------------------------
def _tcp_counters() -> dict[str, int]:
    """This namespace's TCP segment counters (``/proc/net/snmp`` is per network namespace)."""
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines() if ln.startswith("Tcp:")]
    if len(lines) < 2:
        return {}
    return {k: int(v) for k, v in zip(lines[0][1:], lines[1][1:], strict=True) if v.lstrip("-").isdigit()}


def _serve_forever(port: int, handler: Callable[[socket.socket], None], stop: threading.Event) -> None:
    srv = socket.create_server((RECEIVER_ADDR, port), backlog=64)
    srv.settimeout(0.5)

    def one(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with contextlib.suppress(OSError):
                handler(conn)

    with srv:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=one, args=(conn,), daemon=True).start()


def _echo(conn: socket.socket) -> None:
    while True:
        b = conn.recv(64)
        if not b:
            return
        conn.sendall(b)


_SINK_REPLY = struct.Struct("<dddQQd")


def _sink(conn: socket.socket) -> None:
    """Read to EOF; answer with the monotonic times of the first byte, the 25 % mark and the last byte,
    the byte counts, and the CPU seconds this thread spent receiving (the receiving stack's cost)."""
    (expected,) = struct.unpack("<Q", _recv_n(conn, 8))
    buf = bytearray(1 << 20)
    got = 0
    t_first = t_mark = t_last = 0.0
    mark = expected // 4
    mark_bytes = 0
    cpu0 = time.thread_time()
    while True:
        k = conn.recv_into(buf)
        now = time.perf_counter()
        if k == 0:
            break
        if got == 0:
            t_first = now
        got += k
        if not mark_bytes and got >= mark:
            t_mark, mark_bytes = now, got
        t_last = now
    cpu = time.thread_time() - cpu0
    conn.sendall(_SINK_REPLY.pack(t_first, t_mark, t_last, got, mark_bytes, cpu))


def _recv_n(conn: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        b = conn.recv(n - len(out))
        if not b:
            raise ConnectionError("closed early")
        out += b
    return out


def _worker_main(role: str) -> int:
    """A node of the testbed: read JSON commands on stdin, answer one JSON line each on the real stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout = sys.stderr  # nothing the libraries print may corrupt the replies
    import dwcp_selector
    from dwcp_selector import AmstReceiver, AmstSender, Baseline, BaselineStore, PayloadCodec
    from dwcp_selector.measure import measure_strategy
    from dwcp_selector.transport import Insecure
    from dwcp_selector.transport import receiver as receiver_mod
    from dwcp_selector.transport import sender as sender_mod

    codec = PayloadCodec()
    codec.warm_up()
    payloads: dict[str, bytes] = {}
    baselines: dict[str, Baseline] = {}
    store = BaselineStore()
    stop = threading.Event()
    probes: dict[str, dict[str, float]] = {}
    rx: AmstReceiver | None = None

    # Probes: time stamps (the monotonic clock is shared by every process of the machine) around the
    # stream connects, the wait for RESULT, and the receiver's final verification. Wrappers in this
    # process only; the transport code itself is unchanged.
    last: dict[str, float] = {}
    if role == "sender":
        real_connect = socket.create_connection
        real_read_result = vars(sender_mod)["read_result"]

        def connect(*a: Any, **kw: Any) -> socket.socket:
            s = real_connect(*a, **kw)
            last["connected"] = time.perf_counter()
            return s

        def read_result(sock: socket.socket, auth: Any = None) -> tuple[bool, str]:
            last["result_wait_start"] = time.perf_counter()
            r: tuple[bool, str] = real_read_result(sock, auth)
            last["result_read"] = time.perf_counter()
            return r

        socket.create_connection = connect
        vars(sender_mod)["read_result"] = read_result  # this process only
    else:
        real_finish = receiver_mod._Transfer.finish
        real_pack_result = vars(receiver_mod)["pack_result"]

        def finish(self: Any) -> None:
            t0 = time.perf_counter()
            real_finish(self)
            probes[str(self.id)] = {
                "finish_start": t0,
                "result_packed": last.get("result_packed", math.nan),
                "finish_end": time.perf_counter(),
            }

        def pack_result(status: int, message: str = "", auth: Any = None) -> bytes:
            last["result_packed"] = time.perf_counter()
            packed: bytes = real_pack_result(status, message, auth)
            return packed

        receiver_mod._Transfer.finish = finish  # type: ignore[method-assign]
        vars(receiver_mod)["pack_result"] = pack_result
        rx = AmstReceiver((RECEIVER_ADDR, AMST_PORT), security=Insecure(), baselines=store, timeout_s=60)
        rx.start()
        for port, handler in ((ECHO_PORT, _echo), (SINK_PORT, _sink)):
            threading.Thread(target=_serve_forever, args=(port, handler, stop), daemon=True).start()

    def reply(doc: Mapping[str, Any]) -> None:
        out.write(json.dumps(doc) + "\n")

    reply({"ready": True, "role": role, "pid": os.getpid(), "package": str(Path(dwcp_selector.__file__))})
    senders: dict[int, AmstSender] = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            if op == "quit":
                reply({"ok": True})
                break
            if op == "load":
                data = Path(cmd["path"]).read_bytes()
                payloads[cmd["name"]] = data
                if cmd.get("baseline"):
                    old = Path(cmd["baseline"]).read_bytes()
                    bid = f"tb-{cmd['name']}"
                    baselines[cmd["name"]] = Baseline(bid, old)
                    store.put(bid, old)
                reply({"bytes": len(data)})
            elif op == "measure":
                data = payloads[cmd["name"]]
                runs = []
                for _ in range(int(cmd.get("calls", 1))):
                    r = measure_strategy(codec, data, cmd["strategy"], baseline=baselines.get(cmd["name"]))
                    runs.append(
                        {
                            "compressed_bytes": r.compressed_bytes,
                            "encode_s": r.encode_s,
                            "decode_s": r.decode_s,
                            "roundtrip": r.roundtrip,
                            "error": r.error,
                        }
                    )
                reply({"runs": runs})
            elif op == "send":
                data = payloads[cmd["name"]]
                last.clear()
                c0 = _tcp_counters()
                t_start = time.perf_counter()
                chunk_size = int(cmd.get("chunk_size", 1 << 20))
                if chunk_size not in senders:
                    senders[chunk_size] = AmstSender(
                        (RECEIVER_ADDR, AMST_PORT), chunk_size=chunk_size, security=Insecure()
                    )
                rep = senders[chunk_size].send(
                    data, cmd["strategy"], streams=int(cmd["streams"]), baseline=baselines.get(cmd["name"])
                )
                t_return = time.perf_counter()
                c1 = _tcp_counters()
                reply(
                    {
                        "transfer_id": str(rep.transfer_id),
                        "elapsed_s": rep.elapsed_s,
                        "wire_bytes": rep.wire_bytes,
                        # the codecs' seconds inside this transfer (diagnostics: they price nothing)
                        "encode_in_transfer_s": rep.encode_s,
                        "decode_in_transfer_s": rep.decode_s,
                        "streams": rep.streams,
                        "chunks": rep.chunks,
                        "t_call": t_start,
                        "t_start": t_return - rep.elapsed_s,  # where send() started its clock
                        **{f"t_{k}": v for k, v in last.items()},
                        "retrans_segs": c1.get("RetransSegs", 0) - c0.get("RetransSegs", 0),
                        "out_segs": c1.get("OutSegs", 0) - c0.get("OutSegs", 0),
                    }
                )
            elif op == "collect":
                assert rx is not None
                got = rx.wait(uuid.UUID(cmd["transfer_id"]), timeout=float(cmd.get("timeout", 60)))
                ok = got.data == payloads[cmd["name"]]
                # the receiver wakes ``wait`` inside ``finish``, before the probe wrapper has stored its
                # time stamps: give the wrapper a bounded moment to finish
                deadline = time.perf_counter() + 2.0
                while cmd["transfer_id"] not in probes and time.perf_counter() < deadline:
                    time.sleep(0.0005)
                p = probes.pop(cmd["transfer_id"], {})
                reply({"verified": ok, "elapsed_s": got.elapsed_s, "wire_bytes": got.wire_bytes, **p})
            elif op == "encode_paths":
                reply(
                    _encode_paths(codec, payloads[cmd["name"]], cmd["strategy"], baselines.get(cmd["name"]))
                )
            elif op == "checksum_rate":
                import xxhash

                data = payloads[cmd["name"]]
                best = math.inf
                for _ in range(5):
                    t0 = time.perf_counter()
                    xxhash.xxh3_64_intdigest(data)
                    best = min(best, time.perf_counter() - t0)
                reply({"bps": 8.0 * len(data) / best})
            elif op == "rtt":
                reply({"rtt_s": _ping_pong(int(cmd.get("count", 200)))})
            elif op == "connect":
                reply({"connect_s": _connect_times(int(cmd.get("count", 50)))})
            elif op == "blast":
                reply(_blast(int(cmd["bytes"])))
            else:
                reply({"error": f"unknown op {op!r}"})
        except Exception as exc:
            reply({"error": f"{type(exc).__name__}: {exc}"})
    stop.set()
    if rx is not None:
        rx.close()
    return 0


def _encode_paths(codec: Any, data: bytes, strategy: str, baseline: Any) -> dict[str, float]:
    """Wall seconds of encoding ``data`` as ``measure_strategy`` does (the codec, in one warm thread) and
    as the AMST sender does (plan, then every chunk through its own registry, in a new thread each time).
    """
    from dwcp_selector.strategies import ChunkContext, default_registry

    encoder = default_registry().get(strategy)
    view = memoryview(data)
    chunk = codec.chunk_size

    def amst_like() -> None:
        plan = encoder.plan(view, baseline)
        for start in range(0, max(1, len(view)), chunk):
            ctx = ChunkContext(offset=start, payload_length=len(view), plan=plan, payload=view)
            encoder.encode(view[start : start + chunk], baseline=baseline, context=ctx)

    def timed(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    warm = [timed(lambda: codec.encode(view, strategy, baseline=baseline)) for _ in range(5)]
    same = [timed(amst_like) for _ in range(5)]
    fresh: list[float] = []
    for _ in range(5):
        th = threading.Thread(target=lambda: fresh.append(timed(amst_like)))
        th.start()
        th.join(timeout=60)
    return {
        "codec_warm_thread_s": statistics.median(warm),
        "amst_path_same_thread_s": statistics.median(same),
        "amst_path_fresh_thread_s": statistics.median(fresh),
    }


def _ping_pong(count: int) -> list[float]:
    """Round trips of one byte over one TCP connection with Nagle off (what a RESULT or HELLO costs)."""
    times = []
    with socket.create_connection((RECEIVER_ADDR, ECHO_PORT), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(min(count, 10000)):
            t0 = time.perf_counter()
            s.sendall(b"x")
            if not s.recv(1):
                raise ConnectionError("echo closed")
            times.append(time.perf_counter() - t0)
    return times


def _connect_times(count: int) -> list[float]:
    times = []
    for _ in range(min(count, 1000)):
        t0 = time.perf_counter()
        s = socket.create_connection((RECEIVER_ADDR, ECHO_PORT), timeout=10)
        times.append(time.perf_counter() - t0)
        s.close()
    return times


def _blast(nbytes: int) -> dict[str, Any]:
    """Plain TCP: ``nbytes`` to the sink; what rate the shaped link delivers of payload bytes."""
    block = os.urandom(1 << 20)
    c0 = _tcp_counters()
    t0 = time.perf_counter()
    with socket.create_connection((RECEIVER_ADDR, SINK_PORT), timeout=60) as s:
        s.sendall(struct.pack("<Q", nbytes))
        left = nbytes
        cpu0 = time.thread_time()
        while left > 0:
            n = min(left, len(block))
            s.sendall(memoryview(block)[:n])
            left -= n
        send_cpu = time.thread_time() - cpu0
        s.shutdown(socket.SHUT_WR)
        reply = _SINK_REPLY.unpack(_recv_n(s, _SINK_REPLY.size))
        t_first, t_mark, t_last, got, mark_bytes, recv_cpu = reply
    t_end = time.perf_counter()
    c1 = _tcp_counters()
    return {
        "bytes": got,
        "elapsed_s": t_end - t0,
        "steady_bps": 8.0 * (got - mark_bytes) / (t_last - t_mark) if t_last > t_mark else math.inf,
        "first_byte_s": t_first - t0,
        "send_cpu_s": send_cpu,
        "recv_cpu_s": recv_cpu,
        "retrans_segs": c1.get("RetransSegs", 0) - c0.get("RetransSegs", 0),
        "out_segs": c1.get("OutSegs", 0) - c0.get("OutSegs", 0),
    }


# -- command line -----------------------------------------------------------------------------------------
def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the context managers and atexit


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """While active, SIGTERM and SIGHUP unwind normally, so namespaces are removed."""
    old = {s: signal.signal(s, _on_sigterm) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="can this machine build the testbed?")
    sub.add_parser("cleanup", help="remove namespaces of testbeds whose process is gone")
    w = sub.add_parser("worker", help="(internal) one node of the testbed")
    w.add_argument("role", choices=("sender", "receiver"))
    s = sub.add_parser("send", help="send one file through a fresh testbed and report the time")
    s.add_argument("file", type=Path)
    s.add_argument("--rate-mbit", type=float, default=50.0, help="0 = unshaped")
    s.add_argument("--strategy", default="none")
    s.add_argument("--streams", type=int, default=1)
    s.add_argument("--baseline", type=Path)
    s.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.cmd == "worker":
        return _worker_main(args.role)
    if args.cmd == "check":
        ok, why = netns_available()
        print("ok" if ok else f"not available: {why}")
        return 0 if ok else 1
    if args.cmd == "cleanup":
        removed = cleanup_stale()
        print(f"removed {len(removed)} stale namespaces" + (f": {' '.join(removed)}" if removed else ""))
        return 0
    rate = args.rate_mbit * 1e6 if args.rate_mbit > 0 else None
    with terminate_cleanly(), Testbed(rate) as bed:
        bed.load("file", args.file.resolve(), args.baseline.resolve() if args.baseline else None)
        times = []
        for _ in range(max(1, min(args.repeats, 100))):
            r = bed.transfer("file", args.strategy, args.streams)
            if not r["rx_verified"]:
                raise TestbedError("the receiver's payload differs from the file")
            times.append(r["elapsed_s"])
        size = args.file.stat().st_size
        t = statistics.median(times)
        shaped = f"{args.rate_mbit:g} Mbit/s" if rate else "unshaped"
        print(f"{size} bytes, {args.strategy}, {args.streams} stream(s), {shaped}: median {t * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
