"""The AMST receiver: accepts the parallel streams of transfers, authenticates, decodes, verifies, answers.

Each stream is served by its own thread (the codecs release the GIL, so chunks decode in parallel). A
chunk coded with context (its frame header names how many payload bytes before it it needs) waits until
those bytes are decoded; whichever thread completes them decodes the waiting chunks, so chunks of
ordered strategies decode in order as soon as they can and the others in parallel. A transfer
completes when every stream has sent END, every chunk has arrived exactly once and decoded, and the whole
payload's checksum matches; the receiver then answers "ok" on stream 0. Anything else (a stream that
closes early, a missing stream, garbage, a frame that does not decode, a baseline it lacks) fails the
transfer with a typed error that names what is missing, closes its streams so the sender learns at once,
and is what :meth:`AmstReceiver.wait` raises.

Nothing a peer sends is trusted before it is authenticated (:mod:`.security`), and nothing it sends can
grow the receiver past its :class:`ReceiverLimits`:

* a connection has ``handshake_timeout_s`` in all to complete TLS and its HELLO, however slowly it
  trickles bytes; at most ``max_pending`` connections may be in that phase, and a new one evicts the
  oldest (an attacker holding handshakes open cannot lock legitimate senders out, whose handshakes take
  a round trip);
* at most ``max_connections`` accepted streams and ``max_transfers`` transfers (``max_transfers_per_peer``
  of one peer) run at once;
* a HELLO must fit the receiver-wide ``memory_budget`` (the payload, the stream buffers, the frames that
  may wait for their context, and the results not collected yet) before anything is allocated;
* every transfer has an overall deadline (its size at ``min_rate_bps``, plus the handshake and read
  time-outs), not only a per-read timeout; a failed transfer releases its memory at once;
* baselines and results are kept per authenticated peer: one peer can neither use, overwrite nor evict
  another's, nor push another's results out.

Every refusal is counted by reason (``stats()``, and the Prometheus counter ``dwcp_amst_refused``).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import socket
import ssl
import threading
import time
import uuid
from collections import Counter as _Counter
from collections import OrderedDict
from dataclasses import dataclass

import xxhash
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..errors import (
    AuthenticationError,
    BaselineMissingError,
    CapacityError,
    ConfigError,
    DwcpError,
    ProtocolError,
    StreamBrokenError,
    TransferTimeoutError,
    TransportError,
)
from ..strategies import BaselineStore, Registry, default_registry
from ..strategies.baseline import Baseline
from ..strategies.frame import FrameHeader
from ..strategies.payload import MAX_CHUNK_SIZE
from .protocol import (
    AUTH_PSK,
    CHUNK_HEADER,
    END,
    MSG_CHUNK,
    MSG_END,
    RESULT_ERROR,
    RESULT_OK,
    RESULT_REFUSED,
    Hello,
    clock_ms,
    pack_result,
    recv_exact,
)
from .security import (
    TAG_BYTES,
    MessageAuth,
    PskAuth,
    PskKeys,
    ReceiverSecurity,
    TlsAuth,
    hello_tag,
)

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "AmstReceiver",
    "ReceivedTransfer",
    "ReceiverLimits",
    "baseline_key",
]

DEFAULT_MAX_PAYLOAD = 4 << 30
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MEMORY_BUDGET = DEFAULT_MAX_PAYLOAD + (512 << 20)


@dataclass(frozen=True, slots=True)
class ReceiverLimits:
    """What a receiver allows at once; every refusal is counted by reason."""

    max_connections: int = 256
    max_pending: int = 64
    max_transfers: int = 64
    max_transfers_per_peer: int = 32
    #: Bytes the receiver may hold for transfers in flight and results not yet collected; the default
    #: fits one maximal payload with its buffers.
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    handshake_timeout_s: float = 10.0
    #: The slowest a transfer may go on average before its deadline fails it.
    min_rate_bps: float = 4e6
    results_per_peer: int = 32
    #: How far a PSK HELLO's clock may be from the receiver's; an authenticated stream is remembered for
    #: twice this, so that a replayed HELLO is refused.
    clock_skew_s: float = 120.0

    def __post_init__(self) -> None:
        counts = (
            self.max_connections,
            self.max_pending,
            self.max_transfers,
            self.max_transfers_per_peer,
            self.results_per_peer,
        )
        if min(counts) < 1 or self.memory_budget < 1:
            raise ConfigError("receiver limits must be positive")
        if not (self.handshake_timeout_s > 0 and self.min_rate_bps > 0 and self.clock_skew_s > 0):
            raise ConfigError("receiver time-outs and rates must be positive")


class ReceiverMetrics:
    """The receiver's Prometheus metrics, in a registry of its own or the caller's."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.refused = Counter(
            "dwcp_amst_refused", "Connections or transfers the receiver refused", ["reason"], registry=r
        )
        self.transfers = Counter(
            "dwcp_amst_transfers",
            "Transfers concluded, by outcome (ok or the error)",
            ["outcome"],
            registry=r,
        )
        self.connections = Gauge("dwcp_amst_connections", "Accepted streams being served", registry=r)
        self.pending = Gauge("dwcp_amst_pending", "Connections still in their handshake", registry=r)
        self.active = Gauge("dwcp_amst_active_transfers", "Transfers in flight", registry=r)
        self.memory = Gauge(
            "dwcp_amst_memory_bytes", "Bytes reserved for transfers and uncollected results", registry=r
        )


@dataclass
class ReceivedTransfer:
    """A payload that arrived complete and verified; ``peer`` is the authenticated sender ("" if none)."""

    transfer_id: uuid.UUID
    data: bytearray
    strategy: str
    streams: int
    wire_bytes: int
    elapsed_s: float
    resource_id: str
    peer: str = ""
    decode_s: float = 0.0  # decoder seconds summed over chunks, the payload's verification included


class _Refusal(CapacityError):
    """A limit that refused work, with the reason it is counted under."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _TooLarge(ProtocolError):
    """A transfer larger than the receiver accepts at all (not a capacity limit: retrying cannot help)."""

    reason = "too_large"


def _without_tracebacks(exc: DwcpError) -> DwcpError:
    """``exc`` (and what it was raised from) without tracebacks: a failed transfer keeps its error, and a
    traceback would keep the failing decoder's frames, and with them a view of the payload buffer."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = None
        e = e.__cause__ or e.__context__
    return exc


def baseline_key(peer: str, resource_id: str) -> str:
    """The id a peer's resource is kept under in the receiver's baseline store."""
    return f"{peer}\x00{resource_id}" if peer else resource_id


def _frame_limit(chunk_size: int) -> int:
    # An encoded chunk can exceed the chunk (incompressible data, headers); anything far beyond is garbage.
    return chunk_size + chunk_size // 8 + 65536


def _waiting_cap(stream_count: int) -> int:
    """Frames that may wait for the context before them: a sender hands chunks out in order, so no more
    than a few per stream run ahead."""
    return 2 * stream_count + 4


def reservation(payload_length: int, chunk_size: int, stream_count: int) -> int:
    """Bytes a transfer may hold at its peak: the payload, each stream's frame buffer and decode output,
    and the frames allowed to wait for their context."""
    frame = _frame_limit(chunk_size)
    return payload_length + stream_count * (frame + chunk_size) + _waiting_cap(stream_count) * frame


class _Transfer:
    def __init__(self, hello: Hello, receiver: AmstReceiver, peer: str, reserved: int) -> None:
        m = hello.manifest
        self.id = hello.transfer_id
        self.manifest = m
        self.stream_count = hello.stream_count
        self.peer = peer
        self.reserved = reserved
        self.rx = receiver
        self.lock = threading.Lock()
        self.space = threading.Condition(self.lock)
        self.done = threading.Event()
        self.error: DwcpError | None = None
        self.sockets: dict[int, socket.socket] = {}
        self.auths: dict[int, MessageAuth] = {}
        self.ended: dict[int, int] = {}
        self.wire_bytes = 0
        self.decode_s = 0.0  # decoder seconds summed over chunks (streams decode in parallel)
        self.started = time.perf_counter()
        self.result: ReceivedTransfer | None = None
        self.encoder = receiver.registry.by_id(m.strategy_id)
        self.baseline: Baseline | None = None
        if m.baseline_id:
            if receiver.baselines is None:
                raise BaselineMissingError(
                    f"transfer needs baseline {m.baseline_id!r} but the receiver keeps no baselines"
                )
            self.baseline = receiver.baselines.lookup(
                baseline_key(peer, m.baseline_id), m.baseline_checksum, m.baseline_length
            )
        self.output = bytearray(m.payload_length)
        self.received = bytearray(m.chunk_count)
        self.decoded = bytearray(m.chunk_count)
        # frames that arrived before the payload bytes they depend on: index -> (header, frame bytes)
        self.waiting: dict[int, tuple[FrameHeader, bytes]] = {}
        self.waiting_cap = _waiting_cap(self.stream_count)
        limits = receiver.limits
        self.deadline_s = (
            limits.handshake_timeout_s + receiver.timeout_s + 8.0 * m.payload_length / limits.min_rate_bps
        )
        self.timers = [
            threading.Timer(receiver.timeout_s, self._connect_timeout),
            threading.Timer(self.deadline_s, self._deadline),
        ]
        for t in self.timers:
            t.daemon = True
            t.start()

    @staticmethod
    def validate(hello: Hello, receiver: AmstReceiver) -> None:
        """Refuse a manifest outside the receiver's limits before anything is allocated for it."""
        m = hello.manifest
        if m.payload_length > receiver.max_payload:
            raise _TooLarge(
                f"transfer of {m.payload_length} bytes exceeds the limit of {receiver.max_payload}"
            )
        if not 0 < m.chunk_size <= MAX_CHUNK_SIZE:
            raise ProtocolError(f"chunk size {m.chunk_size} outside 1..{MAX_CHUNK_SIZE}")
        if m.chunk_count != max(1, -(-m.payload_length // m.chunk_size)):
            raise ProtocolError(f"manifest: {m.chunk_count} chunks for {m.payload_length} bytes")
        if hello.stream_count > min(m.chunk_count, receiver.limits.max_connections):
            raise ProtocolError(
                f"{hello.stream_count} streams for {m.chunk_count} chunks "
                f"(the receiver serves at most {receiver.limits.max_connections} streams)"
            )
        receiver.registry.by_id(m.strategy_id)

    def _connect_timeout(self) -> None:
        with self.lock:
            missing = [i for i in range(self.stream_count) if i not in self.sockets]
        if missing and not self.done.is_set():
            self.fail(TransferTimeoutError(f"transfer {self.id}: streams {missing} never connected"))

    def _deadline(self) -> None:
        if not self.done.is_set():
            self.rx._count("deadline")
            self.fail(
                TransferTimeoutError(
                    f"transfer {self.id} did not complete within its deadline of {self.deadline_s:.0f} s "
                    f"({self.manifest.payload_length} bytes at no less than "
                    f"{self.rx.limits.min_rate_bps / 1e6:g} Mbit/s)"
                )
            )

    def check_same(self, hello: Hello, peer: str) -> None:
        if peer != self.peer:
            raise AuthenticationError(f"transfer {self.id} belongs to another peer")
        if hello.manifest != self.manifest or hello.stream_count != self.stream_count:
            raise ProtocolError(
                f"stream {hello.stream_index} of transfer {self.id} disagrees on the manifest"
            )

    def attach(self, index: int, sock: socket.socket, auth: MessageAuth | None) -> None:
        """Register a stream's socket; the transfer's conclusion closes every registered socket."""
        with self.lock:
            if self.done.is_set():
                raise ProtocolError(f"stream {index} arrived after transfer {self.id} concluded")
            if index in self.sockets:
                raise ProtocolError(f"stream {index} of transfer {self.id} connected twice")
            self.sockets[index] = sock
            if auth is not None:
                self.auths[index] = auth

    def missing_chunks(self) -> list[int]:
        return [i for i, got in enumerate(self.received) if not got]

    def chunk_length(self, index: int) -> int:
        m = self.manifest
        if index < m.chunk_count - 1:
            return m.chunk_size
        return m.payload_length - m.chunk_size * (m.chunk_count - 1)

    def serve(self, index: int, sock: socket.socket, auth: MessageAuth | None) -> None:
        """Read this stream's chunks until its END; with ``auth`` each message's tag is checked before
        any of its bytes are used."""
        m = self.manifest
        limit = _frame_limit(m.chunk_size)
        buf = memoryview(bytearray(limit))
        tag = memoryview(bytearray(TAG_BYTES))
        count = 0
        sock.settimeout(self.rx.timeout_s)
        while True:
            if self.done.is_set():
                return
            (mtype,) = recv_exact(sock, 1, what=f"message type on stream {index}")
            if mtype == MSG_END:
                end = b"\x03" + bytes(recv_exact(sock, END.size - 1, what="end"))
                if auth is not None:
                    auth.check(recv_exact(sock, TAG_BYTES, what="end tag", into=tag), end, what="END")
                _, sent = END.unpack(end)
                if sent != count:
                    raise ProtocolError(f"stream {index} says it sent {sent} chunks; {count} arrived")
                self.stream_ended(index, count)
                return
            if mtype != MSG_CHUNK:
                raise ProtocolError(f"stream {index} sent unknown message type {mtype}")
            head = b"\x02" + bytes(recv_exact(sock, CHUNK_HEADER.size - 1, what="chunk header"))
            _, chunk_index, frame_len = CHUNK_HEADER.unpack(head)
            if chunk_index >= m.chunk_count:
                raise ProtocolError(
                    f"stream {index} sent chunk {chunk_index} of a {m.chunk_count}-chunk transfer"
                )
            if frame_len > limit:
                raise ProtocolError(
                    f"chunk {chunk_index} frame of {frame_len} bytes exceeds the limit {limit}"
                )
            frame = recv_exact(sock, frame_len, what=f"chunk {chunk_index} on stream {index}", into=buf)
            if auth is not None:
                got = recv_exact(sock, TAG_BYTES, what=f"chunk {chunk_index} tag", into=tag)
                auth.check(got, head, frame, what=f"chunk {chunk_index} on stream {index}")
            header, body = self.rx.registry.parse(frame, max_output=m.chunk_size)
            if header.strategy_id != m.strategy_id or header.original_length != self.chunk_length(
                chunk_index
            ):
                raise ProtocolError(f"chunk {chunk_index} does not match the manifest (strategy or length)")
            start = chunk_index * m.chunk_size
            if header.context_length > start:
                raise ProtocolError(
                    f"chunk {chunk_index} depends on {header.context_length} bytes before it; "
                    f"only {start} precede it"
                )
            with self.lock:
                if self.received[chunk_index]:
                    raise ProtocolError(f"chunk {chunk_index} arrived twice")
                self.received[chunk_index] = 1
                self.wire_bytes += frame_len + CHUNK_HEADER.size + (TAG_BYTES if auth is not None else 0)
                ready = self._context_ready(chunk_index, header.context_length)
                if not ready:
                    # back-pressure: hold this frame (and stop reading the stream, so TCP slows the
                    # sender) while the frames already waiting fill their allowance, until room is
                    # made or this frame's own context is decoded (every decode notifies); the lowest
                    # chunk not decoded is always ready, so the chain never stalls
                    while (
                        len(self.waiting) >= self.waiting_cap
                        and not self.done.is_set()
                        and not self._context_ready(chunk_index, header.context_length)
                    ):
                        self.space.wait(1.0)
                    if self.done.is_set():
                        return
                    ready = self._context_ready(chunk_index, header.context_length)
                if not ready:
                    self.waiting[chunk_index] = (header, bytes(frame))  # buf is reused for the next frame
            if ready:
                self._decode(chunk_index, header, body)
            count += 1

    def _context_ready(self, chunk_index: int, context_length: int) -> bool:
        """Whether every chunk holding the ``context_length`` bytes before this one is decoded (locked)."""
        if context_length == 0:
            return True
        size = self.manifest.chunk_size
        first = (chunk_index * size - context_length) // size
        return all(self.decoded[first:chunk_index])

    def _decode(self, chunk_index: int, header: FrameHeader, body: memoryview) -> None:
        """Decode a chunk whose context is complete, then every waiting chunk that this completes."""
        size = self.manifest.chunk_size
        with self.lock:
            if self.error is not None:
                return
            out = memoryview(self.output)  # a failure drops self.output; this view keeps it to the end
        while True:
            start = chunk_index * size
            history = out[start - header.context_length : start]
            t0 = time.perf_counter()
            data = self.encoder.decode_parsed(header, body, self.baseline, history)
            out[start : start + len(data)] = data
            spent = time.perf_counter() - t0
            with self.lock:
                if self.error is not None:
                    return
                self.decode_s += spent
                self.decoded[chunk_index] = 1
                self.space.notify_all()  # a frame held back may have just got its context
                nxt = next(
                    (
                        i
                        for i, (h, _) in sorted(self.waiting.items())
                        if self._context_ready(i, h.context_length)
                    ),
                    None,
                )
                if nxt is None:
                    return
                header, frame = self.waiting.pop(nxt)
            chunk_index = nxt
            body = memoryview(frame)[header.header_length : header.frame_length]

    def stream_ended(self, index: int, count: int) -> None:
        with self.lock:
            self.ended[index] = count
            last = len(self.ended) == self.stream_count
        if last:
            self.finish()

    def finish(self) -> None:
        missing = self.missing_chunks()
        if missing:
            self.fail(
                StreamBrokenError(
                    f"transfer {self.id}: every stream ended but chunks {missing[:20]} are missing"
                )
            )
            return
        undecoded = [i for i, done in enumerate(self.decoded) if not done]
        if undecoded:  # pragma: no cover - every stream drains what it completes before reading END
            self.fail(ProtocolError(f"transfer {self.id}: chunks {undecoded[:20]} never decoded"))
            return
        t0 = time.perf_counter()
        verified = xxhash.xxh3_64_intdigest(self.output) == self.manifest.payload_checksum
        verify_s = time.perf_counter() - t0
        if not verified:
            self.fail(ProtocolError(f"transfer {self.id}: payload checksum mismatch after reassembly"))
            return
        with self.lock:
            if self.done.is_set() or self.error is not None:
                return  # a timeout or a failure concluded the transfer first
            self.result = ReceivedTransfer(
                transfer_id=self.id,
                data=self.output,
                strategy=self.encoder.name,
                streams=self.stream_count,
                wire_bytes=self.wire_bytes,
                elapsed_s=time.perf_counter() - self.started,
                resource_id=self.manifest.resource_id,
                peer=self.peer,
                decode_s=self.decode_s + verify_s,
            )
            self.done.set()
        if self.manifest.resource_id and self.rx.baselines is not None:
            self.rx.baselines.put(baseline_key(self.peer, self.manifest.resource_id), bytes(self.output))
        # the ok carries the receiver's side of the outcome for the sender's telemetry (an older
        # sender ignores the message of an ok)
        self._conclude(RESULT_OK, json.dumps({"decode_s": round(self.decode_s + verify_s, 9)}))

    def fail(self, exc: DwcpError, stream: int | None = None) -> None:
        with self.lock:
            if self.done.is_set() or self.error is not None:
                return
            if isinstance(exc, StreamBrokenError) and stream is not None:
                missing = self.missing_chunks()
                exc = StreamBrokenError(
                    f"transfer {self.id}: stream {stream} of {self.stream_count} failed ({exc}); "
                    f"{len(missing)} of {self.manifest.chunk_count} chunks not received"
                )
            elif isinstance(exc, TransferTimeoutError) and stream is not None:
                # a connected stream that waited in vain because another never came: name the cause (the
                # read timeout and the connect watchdog are the same length and race under load)
                absent = [i for i in range(self.stream_count) if i not in self.sockets]
                if absent:
                    exc = TransferTimeoutError(
                        f"transfer {self.id}: streams {absent} never connected (stream {stream}: {exc})"
                    )
            self.error = _without_tracebacks(exc)
            self.done.set()
            # release the payload now: decoders still running hold a view of it until their chunk ends
            self.output = bytearray()
            self.waiting.clear()
            self.space.notify_all()
        self._conclude(RESULT_ERROR, f"{type(exc).__name__}: {exc}")

    def _conclude(self, status: int, message: str) -> None:
        """Record the outcome first (so ``wait`` sees it before the sender does), then answer and close.

        Called once, by whichever of finish or fail set ``done`` under the lock.
        """
        for t in self.timers:
            t.cancel()
        self.rx._completed(self)
        sock = self.sockets.get(0)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.sendall(pack_result(status, message, self.auths.get(0)))
        with self.lock:
            socks = list(self.sockets.values())
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


def _peer_name(cert: dict[str, object] | None) -> str:
    """A TLS peer's identity: its certificate's common name."""
    for rdn in (cert or {}).get("subject", ()):  # type: ignore[attr-defined]
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    raise AuthenticationError("the peer's certificate has no common name")


class AmstReceiver:
    """Listens for AMST transfers; use as a context manager, or :meth:`start` and :meth:`close`.

    ``security`` is required: :class:`~dwcp_selector.transport.PskKeys` (or one
    :class:`~dwcp_selector.transport.PskAuth`), :class:`~dwcp_selector.transport.TlsAuth`, or
    :class:`~dwcp_selector.transport.Insecure`. ``wait(transfer_id)`` returns a transfer's verified
    payload or raises the error that stopped it; the sender's :class:`~dwcp_selector.transport.SendReport`
    carries the id.
    """

    def __init__(
        self,
        address: tuple[str, int] = ("127.0.0.1", 0),
        *,
        security: ReceiverSecurity | None = None,
        registry: Registry | None = None,
        baselines: BaselineStore | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retain_bytes: int | None = None,
        limits: ReceiverLimits | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        if security is None:
            raise ConfigError(
                "AmstReceiver needs security=: PskKeys (pre-shared keys), TlsAuth (mutual TLS), "
                "or Insecure() to accept unauthenticated peers"
            )
        self.security: ReceiverSecurity = PskKeys(security) if isinstance(security, PskAuth) else security
        self.registry = registry or default_registry()
        self.limits = limits or ReceiverLimits(
            memory_budget=max(DEFAULT_MEMORY_BUDGET, max_payload + (512 << 20))
        )
        # Received payloads nobody has collected yet are bounded per peer: by default one maximal payload.
        self.retain_bytes = retain_bytes if retain_bytes is not None else max_payload
        self.dropped_results = 0
        self.baselines = baselines
        self.max_payload = max_payload
        self.timeout_s = timeout_s
        self.metrics = ReceiverMetrics(metrics_registry)
        self._listener = socket.create_server(address, backlog=128)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._active: dict[uuid.UUID, _Transfer] = {}
        self._finished: OrderedDict[uuid.UUID, _Transfer] = OrderedDict()
        self._finished_cv = threading.Condition(self._lock)
        self._pending: OrderedDict[int, socket.socket] = OrderedDict()
        self._evicted: set[int] = set()
        self._connections = 0
        self._reserved = 0
        self._retained = 0
        self._seen: OrderedDict[tuple[str, bytes, int], float] = OrderedDict()
        self._next_conn = 0
        self.refusals: _Counter[str] = _Counter()
        self.rejected_connections = 0
        self.last_rejection: str | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._accept_loop, name="amst-accept", daemon=True)

    def __enter__(self) -> AmstReceiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            active = list(self._active.values())
            pending = list(self._pending.values())
        for t in active:
            t.fail(TransportError("receiver shut down"))
        for s in pending:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def put_baseline(self, resource_id: str, data: bytes | bytearray | Baseline, peer: str = "") -> Baseline:
        """Store a baseline for ``peer``'s resource (a peer is its key id or certificate name)."""
        if self.baselines is None:
            raise ConfigError("this receiver keeps no baselines")
        return self.baselines.put(baseline_key(peer, resource_id), data)

    def stats(self) -> dict[str, object]:
        """Live counts and every refusal by reason."""
        with self._lock:
            return {
                "connections": self._connections,
                "pending": len(self._pending),
                "active_transfers": len(self._active),
                "memory_reserved": self._reserved,
                "memory_retained": self._retained,
                "memory_budget": self.limits.memory_budget,
                "refused": dict(self.refusals),
                "dropped_results": self.dropped_results,
            }

    # -- connections --------------------------------------------------------------------------------

    def _count(self, reason: str) -> None:
        with self._lock:
            self.refusals[reason] += 1
        self.metrics.refused.labels(reason).inc()

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                sock, peer = self._listener.accept()
            except OSError:
                return
            evict: socket.socket | None = None
            with self._lock:
                conn = self._next_conn
                self._next_conn += 1
                if len(self._pending) >= self.limits.max_pending:
                    old, evict = self._pending.popitem(last=False)
                    self._evicted.add(old)
                self._pending[conn] = sock
                self.metrics.pending.set(len(self._pending))
            if evict is not None:
                self._count("pending_evicted")
                with contextlib.suppress(OSError):
                    evict.shutdown(socket.SHUT_RDWR)
            try:
                threading.Thread(
                    target=self._serve, args=(conn, sock, peer), name="amst-stream", daemon=True
                ).start()
            except RuntimeError:  # no more threads: refuse rather than die
                self._drop_pending(conn)
                self._count("threads")
                with contextlib.suppress(OSError):
                    sock.close()

    def _drop_pending(self, conn: int) -> bool:
        """Take a connection out of the handshake set; False when it was evicted meanwhile."""
        with self._lock:
            self._pending.pop(conn, None)
            self.metrics.pending.set(len(self._pending))
            if conn in self._evicted:
                self._evicted.discard(conn)
                return False
            return True

    def _handshake(
        self, sock: socket.socket, deadline: float
    ) -> tuple[socket.socket, Hello, str, MessageAuth | None]:
        """TLS (if configured), then the HELLO, authenticated: the stream's socket, HELLO, peer, MAC."""
        peer = ""
        sec = self.security
        if isinstance(sec, TlsAuth):
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            tls = sec.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            try:
                tls.do_handshake()
            except TimeoutError as exc:
                tls.close()
                raise TransferTimeoutError("TLS handshake did not complete in time") from exc
            except (ssl.SSLError, OSError) as exc:
                tls.close()
                raise AuthenticationError(f"TLS handshake failed: {exc}") from exc
            sock = tls
            if sec.context.verify_mode == ssl.CERT_REQUIRED:
                peer = _peer_name(tls.getpeercert())  # type: ignore[arg-type]
        hello, signed = Hello.read(sock, deadline)
        if not isinstance(sec, PskKeys):
            if hello.auth == AUTH_PSK:
                raise AuthenticationError("this receiver does not use pre-shared keys; the sender does")
            return sock, hello, peer, None
        if hello.auth != AUTH_PSK:
            raise AuthenticationError("this receiver requires a pre-shared key; the sender sent none")
        key = sec.key(hello.key_id)
        if not hmac.compare_digest(hello_tag(key, signed), hello.tag):
            raise AuthenticationError(f"hello from key id {hello.key_id!r} failed its MAC (wrong key?)")
        skew_ms = self.limits.clock_skew_s * 1000
        if abs(clock_ms() - hello.clock_ms) > skew_ms:
            raise AuthenticationError(
                f"hello clock is {abs(clock_ms() - hello.clock_ms) / 1000:.0f} s from the receiver's"
                f" (at most {self.limits.clock_skew_s:g} s): clocks out of sync, or a replay"
            )
        self._remember(hello)
        auth = MessageAuth(key, hello.nonce, hello.transfer_id.bytes, hello.stream_index, sender=False)
        return sock, hello, hello.key_id, auth

    def _remember(self, hello: Hello) -> None:
        """Refuse an authenticated HELLO seen before (a replay); forget those past the clock window."""
        now = time.monotonic()
        key = (hello.key_id, hello.transfer_id.bytes + hello.nonce, hello.stream_index)
        with self._lock:
            while self._seen:
                first, seen_at = next(iter(self._seen.items()))
                if now - seen_at <= 2 * self.limits.clock_skew_s:
                    break
                del self._seen[first]
            if key in self._seen:
                raise AuthenticationError(f"replayed hello for transfer {hello.transfer_id}")
            self._seen[key] = now

    def _serve(self, conn: int, sock: socket.socket, addr: object) -> None:
        deadline = time.monotonic() + self.limits.handshake_timeout_s
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock, hello, peer, auth = self._handshake(sock, deadline)
        except (DwcpError, OSError) as exc:
            if self._drop_pending(conn):
                error = exc if isinstance(exc, DwcpError) else StreamBrokenError(str(exc))
                self._refuse(sock, addr, error, answer=isinstance(exc, AuthenticationError))
            else:
                with contextlib.suppress(OSError):
                    sock.close()
            return
        if not self._drop_pending(conn):
            with contextlib.suppress(OSError):
                sock.close()
            return
        with self._lock:
            over = self._connections >= self.limits.max_connections
            if not over:
                self._connections += 1
                self.metrics.connections.set(self._connections)
        if over:
            limit = self.limits.max_connections
            self._refuse(
                sock,
                addr,
                _Refusal("connections", f"receiver is at its limit of {limit} streams"),
                answer=True,
            )
            return
        try:
            self._run_stream(sock, addr, hello, peer, auth)
        finally:
            with self._lock:
                self._connections -= 1
                self.metrics.connections.set(self._connections)

    def _run_stream(
        self, sock: socket.socket, addr: object, hello: Hello, peer: str, auth: MessageAuth | None
    ) -> None:
        try:
            transfer = self._transfer_for(hello, peer)
        except Exception as exc:
            if not isinstance(exc, DwcpError):
                exc = TransportError(f"receiver could not start transfer {hello.transfer_id}: {exc!r}")
            self._refuse(sock, addr, exc, answer=True, auth=auth)
            return
        try:
            transfer.attach(hello.stream_index, sock, auth)
        except DwcpError as exc:
            self._refuse(sock, addr, exc)  # not registered: nobody else would close it
            transfer.fail(exc)
            return
        try:
            transfer.serve(hello.stream_index, sock, auth)
        except DwcpError as exc:
            if isinstance(exc, AuthenticationError):
                self._count("message_mac")
            transfer.fail(exc, stream=hello.stream_index)
        except Exception as exc:  # a bug must fail the transfer, never leave the sender hanging
            transfer.fail(TransportError(f"receiver error on stream {hello.stream_index}: {exc!r}"))

    def _refuse(
        self,
        sock: socket.socket,
        addr: object,
        exc: DwcpError,
        *,
        answer: bool = False,
        auth: MessageAuth | None = None,
    ) -> None:
        reason = {
            AuthenticationError: "auth",
            CapacityError: "capacity",
            TransferTimeoutError: "handshake_timeout",
            StreamBrokenError: "closed_early",
            BaselineMissingError: "baseline_missing",
        }.get(type(exc), "protocol")
        reason = getattr(exc, "reason", reason)
        self._count(reason)
        with self._lock:
            self.rejected_connections += 1
            self.last_rejection = f"{addr}: {type(exc).__name__}: {exc}"
        if answer:
            status = RESULT_ERROR if auth is not None else RESULT_REFUSED
            name = "CapacityError" if isinstance(exc, CapacityError) else type(exc).__name__
            with contextlib.suppress(OSError):
                sock.settimeout(1.0)
                sock.sendall(pack_result(status, f"{name}: {exc}", auth))
        with contextlib.suppress(OSError):
            sock.close()

    # -- transfers ----------------------------------------------------------------------------------

    def _transfer_for(self, hello: Hello, peer: str) -> _Transfer:
        """The transfer this stream belongs to, created (within the limits) by its first stream.

        Creation happens under the lock so that two first streams racing cannot make two transfers; it
        allocates lazily zeroed pages and looks a baseline up, both quick.
        """
        _Transfer.validate(hello, self)
        m = hello.manifest
        need = reservation(m.payload_length, m.chunk_size, hello.stream_count)
        with self._lock:
            if hello.transfer_id in self._finished:
                raise ProtocolError(f"transfer {hello.transfer_id} is already finished")
            transfer = self._active.get(hello.transfer_id)
            if transfer is None:
                self._admit(peer, need)
                transfer = _Transfer(hello, self, peer, need)
                self._reserved += need
                self._active[hello.transfer_id] = transfer
                self.metrics.active.set(len(self._active))
                self.metrics.memory.set(self._reserved + self._retained)
                return transfer
        transfer.check_same(hello, peer)
        return transfer

    def _admit(self, peer: str, need: int) -> None:
        """Check a new transfer against the transfer limits and the memory budget (locked); a peer's own
        uncollected results make room for it, never another peer's."""
        if len(self._active) >= self.limits.max_transfers:
            raise _Refusal(
                "transfers", f"receiver is at its limit of {len(self._active)} transfers in flight"
            )
        mine = sum(1 for t in self._active.values() if t.peer == peer)
        if mine >= self.limits.max_transfers_per_peer:
            raise _Refusal(
                "peer_transfers", f"receiver is at its limit of {mine} transfers in flight per peer"
            )
        budget = self.limits.memory_budget
        while self._reserved + self._retained + need > budget:
            own = next(
                (tid for tid, t in self._finished.items() if t.peer == peer and t.result is not None), None
            )
            if own is None:
                raise _Refusal(
                    "memory",
                    f"receiver is at its memory budget: {need} bytes needed, "
                    f"{budget - self._reserved - self._retained} of {budget} free",
                )
            self._drop_finished(own)

    def _drop_finished(self, tid: uuid.UUID) -> None:
        """Forget a finished transfer nobody collected (locked)."""
        old = self._finished.pop(tid)
        if old.result is not None:
            self._retained -= len(old.result.data)
        self.dropped_results += 1

    def _completed(self, transfer: _Transfer) -> None:
        outcome = "ok" if transfer.error is None else type(transfer.error).__name__
        self.metrics.transfers.labels(outcome).inc()
        with self._lock:
            self._active.pop(transfer.id, None)
            self._reserved -= transfer.reserved
            self._finished[transfer.id] = transfer
            if transfer.result is not None:
                self._retained += len(transfer.result.data)
            mine = [tid for tid, t in self._finished.items() if t.peer == transfer.peer]
            kept = sum(
                len(t.result.data) for t in self._finished.values() if t.peer == transfer.peer and t.result
            )
            for tid in mine[:-1]:  # never the one just finished
                if len(mine) <= self.limits.results_per_peer and kept <= self.retain_bytes:
                    break
                old = self._finished[tid]
                kept -= len(old.result.data) if old.result is not None else 0
                self._drop_finished(tid)
                mine.remove(tid)
            self.metrics.active.set(len(self._active))
            self.metrics.memory.set(self._reserved + self._retained)
            self._finished_cv.notify_all()

    def wait(self, transfer_id: uuid.UUID, timeout: float | None = None) -> ReceivedTransfer:
        """The received payload of ``transfer_id`` once complete; its error if it failed.

        Results are kept until collected, per peer within ``retain_bytes`` and ``results_per_peer``; a
        result pushed out by the same peer's newer ones is counted in ``dropped_results`` and waiting for
        it times out.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while transfer_id not in self._finished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TransferTimeoutError(f"transfer {transfer_id} did not complete within {timeout} s")
                self._finished_cv.wait(remaining)
            transfer = self._finished.pop(transfer_id)
            if transfer.result is not None:
                self._retained -= len(transfer.result.data)
            self.metrics.memory.set(self._reserved + self._retained)
        if transfer.error is not None:
            raise transfer.error
        assert transfer.result is not None
        return transfer.result
