"""The AMST receiver: accepts the parallel streams of transfers, decodes chunks, verifies, answers.

Each stream is served by its own thread (the codecs release the GIL, so chunks decode in parallel). A
chunk coded with context (its frame header names how many payload bytes before it it needs) waits until
those bytes are decoded; whichever thread completes them decodes the waiting chunks, so chunks of
ordered strategies decode in order as soon as they can and the others in parallel. A transfer
completes when every stream has sent END, every chunk has arrived exactly once and decoded, and the whole
payload's checksum matches; the receiver then answers "ok" on stream 0. Anything else (a stream that
closes early, a missing stream, garbage, a frame that does not decode, a baseline it lacks) fails the
transfer with a typed error that names what is missing, closes its streams so the sender learns at once,
and is what :meth:`AmstReceiver.wait` raises. A connection that is not AMST at all is dropped and counted;
it never disturbs other transfers.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import xxhash

from ..errors import (
    BaselineMissingError,
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
from .protocol import CHUNK_HEADER, END, MSG_CHUNK, MSG_END, Hello, pack_result, recv_exact

__all__ = ["DEFAULT_MAX_PAYLOAD", "AmstReceiver", "ReceivedTransfer"]

DEFAULT_MAX_PAYLOAD = 4 << 30
DEFAULT_TIMEOUT_S = 30.0
#: Finished transfers kept for :meth:`AmstReceiver.wait`; the oldest go first past either bound.
_RETAINED = 32


@dataclass
class ReceivedTransfer:
    """A payload that arrived complete and verified."""

    transfer_id: uuid.UUID
    data: bytearray
    strategy: str
    streams: int
    wire_bytes: int
    elapsed_s: float
    resource_id: str


def _frame_limit(chunk_size: int) -> int:
    # An encoded chunk can exceed the chunk (incompressible data, headers); anything far beyond is garbage.
    return chunk_size + chunk_size // 8 + 65536


class _Transfer:
    def __init__(self, hello: Hello, receiver: AmstReceiver) -> None:
        m = hello.manifest
        self.id = hello.transfer_id
        self.manifest = m
        self.stream_count = hello.stream_count
        self.rx = receiver
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.error: DwcpError | None = None
        self.sockets: dict[int, socket.socket] = {}
        self.ended: dict[int, int] = {}
        self.wire_bytes = 0
        self.started = time.perf_counter()
        self.result: ReceivedTransfer | None = None
        if m.payload_length > receiver.max_payload:
            raise ProtocolError(
                f"transfer of {m.payload_length} bytes exceeds the limit of {receiver.max_payload}"
            )
        if not 0 < m.chunk_size <= MAX_CHUNK_SIZE:
            raise ProtocolError(f"chunk size {m.chunk_size} outside 1..{MAX_CHUNK_SIZE}")
        if m.chunk_count != max(1, -(-m.payload_length // m.chunk_size)):
            raise ProtocolError(f"manifest: {m.chunk_count} chunks for {m.payload_length} bytes")
        self.encoder = receiver.registry.by_id(m.strategy_id)
        self.baseline: Baseline | None = None
        if m.baseline_id:
            if receiver.baselines is None:
                raise BaselineMissingError(
                    f"transfer needs baseline {m.baseline_id!r} but the receiver keeps no baselines"
                )
            self.baseline = receiver.baselines.lookup(m.baseline_id, m.baseline_checksum, m.baseline_length)
        self.output = bytearray(m.payload_length)
        self.received = bytearray(m.chunk_count)
        self.decoded = bytearray(m.chunk_count)
        # frames that arrived before the payload bytes they depend on: index -> (header, frame bytes)
        self.waiting: dict[int, tuple[FrameHeader, bytes]] = {}
        self.timer = threading.Timer(receiver.timeout_s, self._connect_timeout)
        self.timer.daemon = True
        self.timer.start()

    def _connect_timeout(self) -> None:
        with self.lock:
            missing = [i for i in range(self.stream_count) if i not in self.sockets]
        if missing and not self.done.is_set():
            self.fail(TransferTimeoutError(f"transfer {self.id}: streams {missing} never connected"))

    def check_same(self, hello: Hello) -> None:
        if hello.manifest != self.manifest or hello.stream_count != self.stream_count:
            raise ProtocolError(
                f"stream {hello.stream_index} of transfer {self.id} disagrees on the manifest"
            )

    def attach(self, index: int, sock: socket.socket) -> None:
        """Register a stream's socket; the transfer's conclusion closes every registered socket."""
        with self.lock:
            if self.done.is_set():
                raise ProtocolError(f"stream {index} arrived after transfer {self.id} concluded")
            if index in self.sockets:
                raise ProtocolError(f"stream {index} of transfer {self.id} connected twice")
            self.sockets[index] = sock

    def missing_chunks(self) -> list[int]:
        return [i for i, got in enumerate(self.received) if not got]

    def chunk_length(self, index: int) -> int:
        m = self.manifest
        if index < m.chunk_count - 1:
            return m.chunk_size
        return m.payload_length - m.chunk_size * (m.chunk_count - 1)

    def serve(self, index: int, sock: socket.socket) -> None:
        """Read this stream's chunks until its END."""
        m = self.manifest
        limit = _frame_limit(m.chunk_size)
        buf = memoryview(bytearray(limit))
        count = 0
        while True:
            if self.done.is_set():
                return
            (mtype,) = recv_exact(sock, 1, what=f"message type on stream {index}")
            if mtype == MSG_END:
                _, sent = END.unpack(b"\x03" + bytes(recv_exact(sock, END.size - 1, what="end")))
                if sent != count:
                    raise ProtocolError(f"stream {index} says it sent {sent} chunks; {count} arrived")
                self.stream_ended(index, count)
                return
            if mtype != MSG_CHUNK:
                raise ProtocolError(f"stream {index} sent unknown message type {mtype}")
            rest = recv_exact(sock, CHUNK_HEADER.size - 1, what="chunk header")
            _, chunk_index, frame_len = CHUNK_HEADER.unpack(b"\x02" + bytes(rest))
            if chunk_index >= m.chunk_count:
                raise ProtocolError(
                    f"stream {index} sent chunk {chunk_index} of a {m.chunk_count}-chunk transfer"
                )
            if frame_len > limit:
                raise ProtocolError(
                    f"chunk {chunk_index} frame of {frame_len} bytes exceeds the limit {limit}"
                )
            frame = recv_exact(sock, frame_len, what=f"chunk {chunk_index} on stream {index}", into=buf)
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
                self.wire_bytes += frame_len + CHUNK_HEADER.size
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
        while True:
            start = chunk_index * size
            history = memoryview(self.output)[start - header.context_length : start]
            data = self.encoder.decode_parsed(header, body, self.baseline, history)
            self.output[start : start + len(data)] = data
            with self.lock:
                self.decoded[chunk_index] = 1
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
        if xxhash.xxh3_64_intdigest(self.output) != self.manifest.payload_checksum:
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
            )
            self.done.set()
        if self.manifest.resource_id and self.rx.baselines is not None:
            self.rx.baselines.put(self.manifest.resource_id, bytes(self.output))
        self._conclude(pack_result(True, ""))

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
            self.error = exc
            self.done.set()
        self._conclude(pack_result(False, f"{type(exc).__name__}: {exc}"))

    def _conclude(self, message: bytes) -> None:
        """Record the outcome first (so ``wait`` sees it before the sender does), then answer and close.

        Called once, by whichever of finish or fail set ``done`` under the lock.
        """
        self.timer.cancel()
        self.rx._completed(self)
        sock = self.sockets.get(0)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.sendall(message)
        with self.lock:
            socks = list(self.sockets.values())
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


class AmstReceiver:
    """Listens for AMST transfers; use as a context manager, or :meth:`start` and :meth:`close`.

    ``wait(transfer_id)`` returns a transfer's verified payload or raises the error that stopped it; the
    sender's :class:`~dwcp_selector.transport.SendReport` carries the id.
    """

    def __init__(
        self,
        address: tuple[str, int] = ("127.0.0.1", 0),
        *,
        registry: Registry | None = None,
        baselines: BaselineStore | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retain_bytes: int | None = None,
    ) -> None:
        self.registry = registry or default_registry()
        # Received payloads nobody has collected yet are bounded too: by default one maximal payload.
        self.retain_bytes = retain_bytes if retain_bytes is not None else max_payload
        self.dropped_results = 0
        self.baselines = baselines
        self.max_payload = max_payload
        self.timeout_s = timeout_s
        self._listener = socket.create_server(address, backlog=128)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._active: dict[uuid.UUID, _Transfer] = {}
        self._finished: OrderedDict[uuid.UUID, _Transfer] = OrderedDict()
        self._finished_cv = threading.Condition(self._lock)
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
        for t in active:
            t.fail(TransportError("receiver shut down"))
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                sock, peer = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock, peer), name="amst-stream", daemon=True).start()

    def _serve(self, sock: socket.socket, peer: object) -> None:
        sock.settimeout(self.timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            hello = Hello.read(sock)
        except DwcpError as exc:
            self._reject(sock, peer, exc)
            return
        try:
            transfer = self._transfer_for(hello)
        except Exception as exc:
            if not isinstance(exc, DwcpError):
                exc = TransportError(f"receiver could not start transfer {hello.transfer_id}: {exc!r}")
            with contextlib.suppress(OSError):
                sock.sendall(pack_result(False, f"{type(exc).__name__}: {exc}"))
            self._reject(sock, peer, exc)
            return
        try:
            transfer.attach(hello.stream_index, sock)
        except DwcpError as exc:
            self._reject(sock, peer, exc)  # not registered: nobody else would close it
            transfer.fail(exc)
            return
        try:
            transfer.serve(hello.stream_index, sock)
        except DwcpError as exc:
            transfer.fail(exc, stream=hello.stream_index)
        except Exception as exc:  # a bug must fail the transfer, never leave the sender hanging
            transfer.fail(TransportError(f"receiver error on stream {hello.stream_index}: {exc!r}"))

    def _reject(self, sock: socket.socket, peer: object, exc: DwcpError) -> None:
        with self._lock:
            self.rejected_connections += 1
            self.last_rejection = f"{peer}: {type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError):
            sock.close()

    def _transfer_for(self, hello: Hello) -> _Transfer:
        with self._lock:
            if hello.transfer_id in self._finished:
                raise ProtocolError(f"transfer {hello.transfer_id} is already finished")
            transfer = self._active.get(hello.transfer_id)
            if transfer is None:
                transfer = _Transfer(hello, self)
                self._active[hello.transfer_id] = transfer
                return transfer
        transfer.check_same(hello)
        return transfer

    def _completed(self, transfer: _Transfer) -> None:
        with self._lock:
            self._active.pop(transfer.id, None)
            self._finished[transfer.id] = transfer
            retained = sum(len(t.output) for t in self._finished.values() if t.result is not None)
            while len(self._finished) > 1 and (
                len(self._finished) > _RETAINED or retained > self.retain_bytes
            ):
                _, old = self._finished.popitem(last=False)
                if old.result is not None:
                    retained -= len(old.output)
                self.dropped_results += 1
            self._finished_cv.notify_all()

    def wait(self, transfer_id: uuid.UUID, timeout: float | None = None) -> ReceivedTransfer:
        """The received payload of ``transfer_id`` once complete; its error if it failed.

        Results are kept until collected, within ``retain_bytes`` and 32 transfers; a result pushed out
        by newer ones is counted in ``dropped_results`` and waiting for it times out.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while transfer_id not in self._finished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TransferTimeoutError(f"transfer {transfer_id} did not complete within {timeout} s")
                self._finished_cv.wait(remaining)
            transfer = self._finished.pop(transfer_id)
        if transfer.error is not None:
            raise transfer.error
        assert transfer.result is not None
        return transfer.result
