"""The AMST sender: a payload as independently encoded chunks over n parallel TCP streams.

The stream count comes from the link (``CostModel.streams``: enough streams for their aggregate Mathis
rate to cover the available bandwidth, 1..64) or is given. Chunks are handed out from one queue, so a slow
stream takes fewer chunks; each stream thread encodes its chunks itself, which spreads encoding over the
cores (the codecs release the GIL). Encoding is chunk-parallel for every strategy: a chunk coded with
context reads the payload bytes before it, which the sender has. The send is complete only when the
receiver answers that it reassembled and verified the payload; otherwise :meth:`AmstSender.send` raises
the receiver's error, or the local stream failure, naming what did not arrive.

``security`` says how the sender proves itself (:mod:`.security`): with a pre-shared key every message
carries a MAC and the receiver's answer must carry one too, so an ok that is not the receiver's is never
believed; with TLS every stream runs inside TLS.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass

import xxhash

from .. import errors as _errors
from .._types import BytesLike
from ..costmodel import DEFAULT_CHUNK_SIZE, CostModel
from ..errors import (
    AuthenticationError,
    ConfigError,
    DwcpError,
    StreamBrokenError,
    TransferTimeoutError,
    TransportError,
)
from ..link import LinkState
from ..strategies import Baseline, ChunkContext, Registry, default_registry
from ..strategies.base import as_view
from .protocol import (
    AUTH_NONE,
    AUTH_PSK,
    CHUNK_HEADER,
    END,
    MSG_CHUNK,
    MSG_END,
    Hello,
    Manifest,
    clock_ms,
    read_result,
)
from .security import Insecure, MessageAuth, PskAuth, SenderSecurity, TlsAuth, hello_tag

__all__ = ["AmstSender", "SendReport"]


@dataclass(frozen=True, slots=True)
class SendReport:
    """What a completed, receiver-verified transfer took."""

    transfer_id: uuid.UUID
    strategy: str
    payload_bytes: int
    wire_bytes: int
    streams: int
    chunks: int
    elapsed_s: float
    #: encoder seconds summed over chunks (the streams encode in parallel, so this can exceed elapsed_s)
    encode_s: float = 0.0
    #: the receiver's decoder seconds summed over chunks, verification included (None: not reported)
    decode_s: float | None = None

    @property
    def throughput_bps(self) -> float:
        return 8.0 * self.payload_bytes / self.elapsed_s if self.elapsed_s > 0 else float("inf")


def send_parts(sock: socket.socket, parts: list[bytes]) -> None:
    """Send every byte of ``parts`` without joining them (one sendmsg may send only part: loop)."""
    if isinstance(sock, ssl.SSLSocket):  # TLS records are built from each write; no sendmsg
        for part in parts:
            sock.sendall(part)
        return
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


def _error_from_receiver(message: str) -> DwcpError:
    """Rebuild the receiver's typed error from its ``Name: text`` result message."""
    name, _, text = message.partition(": ")
    cls = getattr(_errors, name, None)
    if isinstance(cls, type) and issubclass(cls, DwcpError):
        return cls(f"receiver: {text}")
    return TransportError(f"receiver: {message}")


def _reported_decode_s(message: str) -> float | None:
    """The decode seconds a receiver's ok reports (an older receiver's ok has an empty message)."""
    try:
        value = json.loads(message).get("decode_s") if message else None
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and value >= 0 else None


class AmstSender:
    """Sends payloads to an :class:`~dwcp_selector.transport.AmstReceiver`."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        registry: Registry | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        timeout_s: float = 30.0,
        cost_model: CostModel | None = None,
        security: SenderSecurity | None = None,
    ) -> None:
        if security is None:
            raise ConfigError(
                "AmstSender needs security=: PskAuth (a pre-shared key), TlsAuth (TLS), "
                "or Insecure() to send without authentication"
            )
        if not isinstance(security, PskAuth | TlsAuth | Insecure):
            raise ConfigError(f"AmstSender security must be PskAuth, TlsAuth or Insecure, not {security!r}")
        self.security = security
        self.address = address
        self.registry = registry or default_registry()
        self.chunk_size = chunk_size
        self.timeout_s = timeout_s
        self.cost_model = cost_model or CostModel()

    def _secure(self, sock: socket.socket, index: int) -> socket.socket:
        """The stream's socket, inside TLS when the sender uses TLS."""
        if not isinstance(self.security, TlsAuth):
            return sock
        try:
            return self.security.context.wrap_socket(sock, server_hostname=self.security.server_hostname)
        except (ssl.SSLError, ssl.CertificateError) as exc:
            sock.close()
            raise AuthenticationError(f"TLS handshake on stream {index} failed: {exc}") from exc
        except OSError as exc:
            sock.close()
            raise StreamBrokenError(f"TLS handshake on stream {index} failed: {exc}") from exc

    def streams_for(self, link: LinkState) -> int:
        return self.cost_model.streams(link)

    def send(
        self,
        payload: BytesLike,
        strategy: str,
        *,
        streams: int | None = None,
        link: LinkState | None = None,
        baseline: Baseline | None = None,
        payload_type: str | None = None,
        resource_id: str = "",
        transfer_id: uuid.UUID | None = None,
    ) -> SendReport:
        """Encode and send ``payload``; returns once the receiver has verified it, else raises.

        ``resource_id`` names the resource this payload is a version of: a receiver keeping baselines
        stores it as that resource's latest version, ready for the next HDE transfer.
        """
        encoder = self.registry.get(strategy)
        view = as_view(payload)
        size = len(view)
        chunk_count = max(1, -(-size // self.chunk_size))
        wanted = streams if streams is not None else (self.streams_for(link) if link is not None else 1)
        if wanted < 1:
            raise TransportError(f"stream count must be at least 1, got {wanted}")
        n = min(wanted, chunk_count)
        if encoder.needs_baseline and baseline is None:
            raise _errors.StrategyError(f"strategy {strategy!r} needs a baseline")
        manifest = Manifest(
            payload_length=size,
            chunk_size=self.chunk_size,
            chunk_count=chunk_count,
            strategy_id=encoder.strategy_id,
            payload_checksum=xxhash.xxh3_64_intdigest(view),
            baseline_id=baseline.id if baseline is not None and encoder.needs_baseline else "",
            baseline_checksum=baseline.checksum if baseline is not None and encoder.needs_baseline else 0,
            baseline_length=len(baseline) if baseline is not None and encoder.needs_baseline else 0,
            resource_id=resource_id,
        )
        transfer_id = transfer_id or uuid.uuid4()
        started = time.perf_counter()
        socks: list[socket.socket] = []
        try:
            for i in range(n):
                try:
                    sock = socket.create_connection(self.address, timeout=self.timeout_s)
                except OSError as exc:
                    raise TransportError(f"cannot open stream {i} to {self.address}: {exc}") from exc
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                socks.append(self._secure(sock, i))
            plan = encoder.plan(view, baseline)
            next_index = itertools.count()
            lock = threading.Lock()
            failures: dict[int, BaseException] = {}
            wire = [0] * n
            encode_s = [0.0] * n
            psk = self.security if isinstance(self.security, PskAuth) else None
            nonce = os.urandom(16)
            auths = [
                MessageAuth(psk.key, nonce, transfer_id.bytes, i, sender=True) if psk is not None else None
                for i in range(n)
            ]

            def run(i: int) -> None:
                sock = socks[i]
                auth = auths[i]
                sent = 0
                try:
                    hello = Hello(
                        transfer_id,
                        i,
                        n,
                        manifest,
                        auth=AUTH_PSK if psk is not None else AUTH_NONE,
                        clock_ms=clock_ms(),
                        nonce=nonce,
                        key_id=psk.key_id if psk is not None else "",
                    )
                    unsigned = hello.pack_unsigned()
                    sock.sendall(unsigned + (hello_tag(psk.key, unsigned) if psk is not None else b""))
                    while True:
                        with lock:
                            index = next(next_index)
                        if index >= chunk_count:
                            break
                        start = index * self.chunk_size
                        context = ChunkContext(
                            offset=start,
                            payload_length=size,
                            payload_type=payload_type,
                            plan=plan,
                            payload=view,
                        )
                        t0 = time.perf_counter()
                        frame = encoder.encode(
                            view[start : start + self.chunk_size], baseline=baseline, context=context
                        )
                        encode_s[i] += time.perf_counter() - t0
                        head = CHUNK_HEADER.pack(MSG_CHUNK, index, len(frame))
                        parts = [head, frame] if auth is None else [head, frame, auth.seal(head, frame)]
                        send_parts(sock, parts)
                        wire[i] += sum(len(p) for p in parts)
                        sent += 1
                    end = END.pack(MSG_END, sent)
                    sock.sendall(end if auth is None else end + auth.seal(end))
                except BaseException as exc:  # recorded and reported below, never lost
                    failures[i] = exc
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

            threads = [threading.Thread(target=run, args=(i,), name=f"amst-send-{i}") for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            result: tuple[bool, str] | None = None
            result_error: DwcpError | None = None
            try:
                result = read_result(socks[0], auths[0])
            except AuthenticationError:
                raise
            except DwcpError as exc:
                result_error = exc
            if result is not None and not result[0]:
                raise _error_from_receiver(result[1])
            if result is None:
                if failures:
                    i, failure = sorted(failures.items())[0]
                    if isinstance(failure, DwcpError):
                        raise failure
                    raise StreamBrokenError(
                        f"stream {i} of {n} failed after sending part of its chunks ({failure}); "
                        f"the receiver did not confirm the transfer ({result_error})"
                    ) from failure
                assert result_error is not None
                if isinstance(result_error, TransferTimeoutError):
                    raise result_error
                raise StreamBrokenError(
                    f"receiver did not confirm the transfer: {result_error}"
                ) from result_error
            return SendReport(
                transfer_id=transfer_id,
                strategy=encoder.name,
                payload_bytes=size,
                wire_bytes=sum(wire),
                streams=n,
                chunks=chunk_count,
                elapsed_s=time.perf_counter() - started,
                encode_s=sum(encode_s),
                decode_s=_reported_decode_s(result[1]),
            )
        finally:
            for s in socks:
                with contextlib.suppress(OSError):
                    s.close()
