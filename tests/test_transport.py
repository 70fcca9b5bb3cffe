"""AMST over loopback: several streams, every strategy, a stream killed mid-transfer, garbage peers."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
import uuid

import numpy as np
import pytest

from dwcp_selector.errors import (
    BaselineMissingError,
    DwcpError,
    ProtocolError,
    StreamBrokenError,
    TransferTimeoutError,
    TransportError,
)
from dwcp_selector.link import LinkState, link_from_class
from dwcp_selector.strategies import Baseline, BaselineStore
from dwcp_selector.transport import AmstReceiver, AmstSender, PskAuth, PskKeys
from dwcp_selector.workload import dirty_round, logs_json, vm_memory

from .conftest import insecure

MiB = 1 << 20
PSK = PskAuth("node-a", bytes(range(32)))


@pytest.fixture
def receiver():  # type: ignore[no-untyped-def]
    with AmstReceiver(("127.0.0.1", 0), security=PskKeys(PSK), baselines=BaselineStore(), timeout_s=10) as rx:
        yield rx


@pytest.fixture
def open_receiver():  # type: ignore[no-untyped-def]
    """A receiver without authentication, for tests that speak the raw protocol to it."""
    with AmstReceiver(("127.0.0.1", 0), security=insecure(), timeout_s=10) as rx:
        yield rx


@pytest.mark.parametrize("strategy", ["none", "lz4", "zstd"])
def test_eight_streams_move_and_verify_a_payload(receiver: AmstReceiver, strategy: str) -> None:
    rng = np.random.default_rng(1)
    payload = logs_json(9 * MiB + 123, rng)
    report = AmstSender(receiver.address, security=PSK).send(payload, strategy, streams=8)
    got = receiver.wait(report.transfer_id, timeout=30)
    assert bytes(got.data) == payload
    assert report.streams == got.streams == 8 and report.chunks == 10
    assert got.wire_bytes == report.wire_bytes
    if strategy != "none":
        assert report.wire_bytes < len(payload) / 2


def test_hde_transfer_and_receiver_keeps_the_new_version(receiver: AmstReceiver) -> None:
    rng = np.random.default_rng(2)
    v1 = vm_memory(6 * MiB, rng)
    v2 = dirty_round(v1, rng, dirty_fraction=0.05)
    v3 = dirty_round(v2, rng, dirty_fraction=0.02)
    sender = AmstSender(receiver.address, security=PSK)
    first = sender.send(v1, "zstd", streams=4, resource_id="vm-42")
    assert bytes(receiver.wait(first.transfer_id, 30).data) == v1
    # the receiver stored v1 as vm-42's latest version: v2 travels as a delta against it
    r2 = sender.send(v2, "hde", streams=4, baseline=Baseline("vm-42", v1), resource_id="vm-42")
    assert bytes(receiver.wait(r2.transfer_id, 30).data) == v2
    assert r2.wire_bytes < len(v2) / 200
    r3 = sender.send(v3, "hde", streams=4, baseline=Baseline("vm-42", v2), resource_id="vm-42")
    assert bytes(receiver.wait(r3.transfer_id, 30).data) == v3


def test_receiver_without_the_baseline_refuses_clearly(receiver: AmstReceiver) -> None:
    tid = uuid.uuid4()
    with pytest.raises(BaselineMissingError, match="vm-unknown"):
        AmstSender(receiver.address, security=PSK).send(
            b"new" * 100000,
            "hde",
            streams=2,
            baseline=Baseline("vm-unknown", b"old" * 100000),
            transfer_id=tid,
        )


def test_streams_are_sized_from_the_link() -> None:
    sender = AmstSender(("127.0.0.1", 1), security=PSK)
    assert sender.streams_for(link_from_class("dc")) == 1
    lossy = LinkState(capacity_bps=1e9, rtt_s=0.1, loss=1e-3)
    assert sender.streams_for(lossy) == 64


class KillingProxy:
    """A TCP relay that cuts the ``victim``-th connection after ``after_bytes`` client bytes."""

    def __init__(self, target: tuple[str, int], victim: int, after_bytes: int) -> None:
        self.target = target
        self.victim = victim
        self.after_bytes = after_bytes
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[:2]
        self.count = 0
        self.killed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            index = self.count
            self.count += 1
            limit = self.after_bytes if index == self.victim else None
            threading.Thread(target=self._pipe, args=(client, upstream, limit), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        moved = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and moved + len(data) >= limit:
                    dst.sendall(data[: limit - moved])
                    self.killed.set()
                    break
                dst.sendall(data)
                moved += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.listener.close()


def test_a_killed_stream_is_a_clear_error_on_both_sides(receiver: AmstReceiver) -> None:
    payload = os.urandom(48 * MiB)  # ~6 chunks a stream: the cut lands mid-transfer
    proxy = KillingProxy(receiver.address, victim=3, after_bytes=2 * MiB + 12345)
    tid = uuid.uuid4()
    try:
        with pytest.raises(StreamBrokenError) as sender_err:
            AmstSender(proxy.address, security=PSK).send(payload, "none", streams=8, transfer_id=tid)
        assert proxy.killed.is_set()
        with pytest.raises(StreamBrokenError) as receiver_err:
            receiver.wait(tid, timeout=10)
    finally:
        proxy.close()
    msg = str(receiver_err.value)
    assert re.search(r"stream \d of 8 failed", msg) and "chunks not received" in msg
    assert "stream" in str(sender_err.value)
    # the receiver is still healthy afterwards
    ok = AmstSender(receiver.address, security=PSK).send(b"after" * 1000, "lz4", streams=2)
    assert bytes(receiver.wait(ok.transfer_id, 10).data) == b"after" * 1000


def test_garbage_peer_is_dropped_and_counted(receiver: AmstReceiver) -> None:
    with socket.create_connection(receiver.address) as s:
        s.sendall(os.urandom(4096))
        s.settimeout(5)
        with contextlib.suppress(OSError):
            while s.recv(4096):
                pass
    deadline = time.monotonic() + 5
    while receiver.rejected_connections == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert receiver.rejected_connections == 1
    assert "not speaking AMST" in (receiver.last_rejection or "")
    ok = AmstSender(receiver.address, security=PSK).send(b"x" * 5000, "zstd")
    assert bytes(receiver.wait(ok.transfer_id, 10).data) == b"x" * 5000


def test_garbage_after_a_valid_hello_fails_the_transfer(open_receiver: AmstReceiver) -> None:
    from dwcp_selector.transport.protocol import Hello, Manifest, read_result

    tid = uuid.uuid4()
    manifest = Manifest(payload_length=10, chunk_size=MiB, chunk_count=1, strategy_id=0, payload_checksum=0)
    with socket.create_connection(open_receiver.address) as s:
        s.sendall(Hello(tid, 0, 1, manifest).pack() + b"\x99garbage")
        s.settimeout(5)
        ok, message = read_result(s)
    assert not ok and "unknown message type" in message
    with pytest.raises(ProtocolError):
        open_receiver.wait(tid, timeout=5)


def test_sender_facing_a_non_amst_server_fails_clearly() -> None:
    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    try:
        with pytest.raises(TransportError):
            AmstSender(server.getsockname()[:2], security=PSK, timeout_s=5).send(b"y" * 100, "none")
    finally:
        server.close()


def test_missing_stream_times_out(open_receiver: AmstReceiver) -> None:
    from dwcp_selector.transport.protocol import Hello, Manifest

    open_receiver.timeout_s = 0.5
    tid = uuid.uuid4()
    manifest = Manifest(
        payload_length=MiB + 10, chunk_size=MiB, chunk_count=2, strategy_id=0, payload_checksum=0
    )
    with socket.create_connection(open_receiver.address) as s:
        s.sendall(Hello(tid, 0, 2, manifest).pack())  # announces 2 streams, opens 1
        with pytest.raises(TransferTimeoutError, match="never connected"):
            open_receiver.wait(tid, timeout=10)


def test_a_stream_timing_out_names_the_stream_that_never_came(open_receiver: AmstReceiver) -> None:
    # The connected stream's read timeout and the connect watchdog have the same length; whichever fires
    # first, the error names the missing stream. Here the watchdog is stopped, so the read timeout decides.
    from dwcp_selector.transport.protocol import Hello, Manifest

    open_receiver.timeout_s = 0.5
    tid = uuid.uuid4()
    manifest = Manifest(
        payload_length=MiB + 10, chunk_size=MiB, chunk_count=2, strategy_id=0, payload_checksum=0
    )
    with socket.create_connection(open_receiver.address) as s:
        s.sendall(Hello(tid, 0, 2, manifest).pack())
        deadline = time.monotonic() + 5
        while tid not in open_receiver._active and time.monotonic() < deadline:
            time.sleep(0.005)
        open_receiver._active[tid].timers[0].cancel()
        with pytest.raises(TransferTimeoutError, match=r"streams \[1\] never connected \(stream 0: "):
            open_receiver.wait(tid, timeout=10)


def test_nothing_listening_is_a_transport_error() -> None:
    s = socket.create_server(("127.0.0.1", 0))
    address = s.getsockname()[:2]
    s.close()
    with pytest.raises(TransportError, match="cannot open stream"):
        AmstSender(address, security=PSK, timeout_s=2).send(b"z", "none")


def test_all_errors_are_dwcp_errors() -> None:
    assert issubclass(StreamBrokenError, DwcpError)


@pytest.mark.slow
def test_one_gibibyte_over_eight_streams() -> None:
    payload = np.random.default_rng(0).integers(0, 256, size=1 << 30, dtype=np.uint8).tobytes()
    with AmstReceiver(("127.0.0.1", 0), security=PskKeys(PSK), max_payload=2 << 30) as rx:
        report = AmstSender(rx.address, security=PSK).send(payload, "none", streams=8)
        got = rx.wait(report.transfer_id, timeout=120)
        assert got.data == payload


def test_send_parts_survives_partial_sends() -> None:
    from dwcp_selector.transport.sender import send_parts

    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.settimeout(10)  # a socket with a timeout is non-blocking inside: sendmsg sends what fits
    parts = [b"head", os.urandom(3 * MiB), b"", os.urandom(12345)]
    got = bytearray()

    def read() -> None:
        while len(got) < sum(map(len, parts)):
            got.extend(b.recv(1000))

    reader = threading.Thread(target=read)
    reader.start()
    send_parts(a, parts)
    reader.join(10)
    a.close()
    b.close()
    assert bytes(got) == b"".join(parts)


def test_uncollected_results_are_bounded() -> None:
    with AmstReceiver(("127.0.0.1", 0), security=PskKeys(PSK), retain_bytes=3 * MiB) as rx:
        sender = AmstSender(rx.address, security=PSK)
        ids = [sender.send(os.urandom(2 * MiB), "none", streams=2).transfer_id for _ in range(3)]
        assert rx.dropped_results == 2
        assert len(rx.wait(ids[-1], timeout=5).data) == 2 * MiB
        with pytest.raises(TransferTimeoutError):
            rx.wait(ids[0], timeout=0.2)


def test_a_frame_held_back_resumes_when_its_context_is_decoded(open_receiver: AmstReceiver) -> None:
    """Back-pressure must not stall: a frame held back (the waiting room full of later frames) goes on
    as soon as the chunks before it are decoded, even when that decode frees no room."""
    import xxhash

    from dwcp_selector.strategies import PayloadCodec
    from dwcp_selector.transport.protocol import CHUNK_HEADER, END, MSG_CHUNK, MSG_END, Hello, Manifest

    chunk = 64 << 10
    data = logs_json(12 * chunk, np.random.default_rng(2))
    enc = PayloadCodec(chunk_size=chunk).encode(data, "zstd")
    assert len(enc.frames) == 12 and all(
        PayloadCodec().registry.parse(f)[0].context_length for f in enc.frames[1:]
    )
    manifest = Manifest(len(data), chunk, 12, enc.strategy_id, xxhash.xxh3_64_intdigest(data))
    tid = uuid.uuid4()

    def chunks(indexes: list[int]) -> bytes:
        return b"".join(CHUNK_HEADER.pack(MSG_CHUNK, i, len(enc.frames[i])) + enc.frames[i] for i in indexes)

    with (
        socket.create_connection(open_receiver.address, timeout=10) as a,
        socket.create_connection(open_receiver.address, timeout=10) as b,
    ):
        a.sendall(Hello(tid, 0, 2, manifest).pack())
        b.sendall(Hello(tid, 1, 2, manifest).pack())
        # stream 1: chunks 4..11 fill the waiting room (2 streams: 8 frames), then chunk 2 is held back
        b.sendall(chunks([*range(4, 12), 2]) + END.pack(MSG_END, 9))
        time.sleep(0.3)
        # stream 0: 0 and 1 complete chunk 2's context (and free no room), then 3
        a.sendall(chunks([0, 1, 3]) + END.pack(MSG_END, 3))
        got = open_receiver.wait(tid, timeout=15)
    assert got.data == data
