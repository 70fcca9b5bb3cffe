"""AMST under attack: unauthenticated and wrong-key peers, tampering, replays, other peers' baselines and
results, mutual TLS, and the receiver's limits (oversize HELLOs, slow handshakes, floods, deadlines).

Every test talks to a real receiver over real loopback TCP; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import trustme

from dwcp_selector.errors import (
    AuthenticationError,
    BaselineMissingError,
    CapacityError,
    ConfigError,
    CorruptFrameError,
    TransferTimeoutError,
    TransportError,
)
from dwcp_selector.strategies import Baseline, BaselineStore
from dwcp_selector.transport import (
    AmstReceiver,
    AmstSender,
    PskAuth,
    PskKeys,
    ReceiverLimits,
    TlsAuth,
    tls_client_context,
    tls_server_context,
)
from dwcp_selector.transport.protocol import (
    AUTH_PSK,
    CHUNK_HEADER,
    MSG_CHUNK,
    Hello,
    Manifest,
    clock_ms,
    read_result,
)
from dwcp_selector.transport.security import hello_tag
from dwcp_selector.workload import dirty_round, vm_memory

from .conftest import insecure

MiB = 1 << 20
ALICE = PskAuth("alice", b"a" * 32)
BOB = PskAuth("bob", b"b" * 32)
KEYS = PskKeys({"alice": ALICE.key, "bob": BOB.key})


@pytest.fixture
def receiver() -> Iterator[AmstReceiver]:
    with AmstReceiver(("127.0.0.1", 0), security=KEYS, baselines=BaselineStore(), timeout_s=10) as rx:
        yield rx


def _eventually(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached")


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _psk_hello(
    tid: uuid.UUID, manifest: Manifest, key: PskAuth, *, count: int = 1, tag: bytes | None = None
) -> bytes:
    hello = Hello(
        tid, 0, count, manifest, auth=AUTH_PSK, clock_ms=clock_ms(), nonce=os.urandom(16), key_id=key.key_id
    )
    unsigned = hello.pack_unsigned()
    return unsigned + (tag if tag is not None else hello_tag(key.key, unsigned))


def test_security_must_be_chosen() -> None:
    with pytest.raises(ConfigError, match="security="):
        AmstReceiver(("127.0.0.1", 0))
    with pytest.raises(ConfigError, match="security="):
        AmstSender(("127.0.0.1", 1))
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        PskAuth("short", b"x" * 15)


def test_psk_transfer_is_verified_and_attributed(receiver: AmstReceiver) -> None:
    payload = os.urandom(3 * MiB) + b"tail"
    report = AmstSender(receiver.address, security=ALICE).send(payload, "zstd", streams=3)
    got = receiver.wait(report.transfer_id, timeout=10)
    assert bytes(got.data) == payload and got.peer == "alice"
    assert got.wire_bytes == report.wire_bytes  # the tags are counted on both sides


@pytest.mark.parametrize(
    ("security", "expected"),
    [
        (PskAuth("alice", b"w" * 32), "failed its MAC"),
        (PskAuth("mallory", b"m" * 32), "unknown key id"),
    ],
)
def test_wrong_or_unknown_key_gets_nothing_in(
    receiver: AmstReceiver, security: PskAuth, expected: str
) -> None:
    with pytest.raises(AuthenticationError, match=expected):
        AmstSender(receiver.address, security=security).send(
            b"x" * (2 * MiB), "lz4", streams=2, resource_id="r"
        )
    _eventually(lambda: receiver.refusals["auth"] == 2)
    assert receiver.stats()["active_transfers"] == 0 and receiver.stats()["memory_reserved"] == 0
    assert receiver.baselines is not None and len(receiver.baselines) == 0


def test_unauthenticated_sender_is_refused(receiver: AmstReceiver) -> None:
    with pytest.raises(AuthenticationError, match="requires a pre-shared key"):
        AmstSender(receiver.address, security=insecure()).send(b"x" * 1000, "none")
    assert receiver.refusals["auth"] == 1


def test_psk_sender_refuses_an_insecure_receiver() -> None:
    with AmstReceiver(("127.0.0.1", 0), security=insecure()) as rx:
        with pytest.raises(AuthenticationError, match="does not use pre-shared keys"):
            AmstSender(rx.address, security=ALICE).send(b"x" * 1000, "none")


class TamperingProxy:
    """Relays client→server bytes, flipping one bit at byte ``at`` (counted over the first connection)."""

    def __init__(self, target: tuple[str, int], at: int) -> None:
        self.target = target
        self.at = at
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[:2]
        self.first = True
        self.recorded = bytearray()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            at = self.at if self.first else -1
            record = self.first
            self.first = False
            threading.Thread(target=self._pipe, args=(client, upstream, at, record), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, -1, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, at: int, record: bool) -> None:
        moved = 0
        try:
            while chunk := src.recv(65536):
                data = bytearray(chunk)
                if 0 <= at - moved < len(data):
                    data[at - moved] ^= 0x01
                if record:
                    self.recorded += data
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


def test_a_flipped_bit_in_a_frame_fails_its_mac_before_decoding(receiver: AmstReceiver) -> None:
    proxy = TamperingProxy(receiver.address, at=5000)  # inside the first chunk's frame
    tid = uuid.uuid4()
    try:
        with pytest.raises(TransportError):
            AmstSender(proxy.address, security=ALICE).send(os.urandom(2 * MiB), "none", transfer_id=tid)
        with pytest.raises(AuthenticationError, match="failed its MAC"):
            receiver.wait(tid, timeout=10)
    finally:
        proxy.close()
    assert receiver.refusals["message_mac"] == 1


def test_a_replayed_stream_is_refused(receiver: AmstReceiver) -> None:
    proxy = TamperingProxy(receiver.address, at=-1)  # records, alters nothing
    try:
        report = AmstSender(proxy.address, security=ALICE).send(b"v1" * 50000, "lz4", resource_id="r")
        receiver.wait(report.transfer_id, timeout=10)
    finally:
        proxy.close()
    with socket.create_connection(receiver.address, timeout=5) as s:
        s.sendall(bytes(proxy.recorded))
        ok, message = read_result(s)
    assert not ok and "replayed hello" in message


def test_a_forged_ok_is_not_believed() -> None:
    """A server that answers "ok" without the key cannot make a PSK sender believe the transfer landed."""
    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                while len(conn.recv(65536)) == 65536:
                    pass
            conn.sendall(b"\x04\x00\x00\x00" + bytes(16))  # RESULT ok with a made-up tag

    threading.Thread(target=answer, daemon=True).start()
    try:
        with pytest.raises(AuthenticationError, match="receiver's result failed its MAC"):
            AmstSender(server.getsockname()[:2], security=ALICE, timeout_s=5).send(b"y" * 1000, "none")
    finally:
        server.close()


def test_one_peer_can_neither_evict_nor_use_anothers_baseline(receiver: AmstReceiver) -> None:
    rng = np.random.default_rng(3)
    v1 = vm_memory(2 * MiB, rng)
    v2 = dirty_round(v1, rng, dirty_fraction=0.05)
    alice, bob = AmstSender(receiver.address, security=ALICE), AmstSender(receiver.address, security=BOB)
    receiver.wait(alice.send(v1, "zstd", resource_id="vm-42").transfer_id, 10)
    for _ in range(2):  # the eviction attempt of the review: two transfers under the same resource id
        receiver.wait(bob.send(os.urandom(20000), "none", resource_id="vm-42").transfer_id, 10)
    r2 = alice.send(v2, "hde", baseline=Baseline("vm-42", v1), resource_id="vm-42")
    assert bytes(receiver.wait(r2.transfer_id, 10).data) == v2
    with pytest.raises(BaselineMissingError):
        bob.send(v2, "hde", baseline=Baseline("vm-42", v1))


def test_one_peer_cannot_push_out_anothers_results() -> None:
    with AmstReceiver(("127.0.0.1", 0), security=KEYS, limits=ReceiverLimits(results_per_peer=4)) as rx:
        mine = AmstSender(rx.address, security=ALICE).send(b"keep me" * 1000, "lz4").transfer_id
        bob = AmstSender(rx.address, security=BOB)
        for _ in range(32):
            bob.send(b"x", "none")
        assert rx.dropped_results == 28  # bob's own, oldest first
        assert bytes(rx.wait(mine, timeout=1).data) == b"keep me" * 1000


# -- mutual TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    files = {"ca": d / "ca.pem", "other_ca": d / "other.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    other.cert_pem.write_to_path(str(files["other_ca"]))
    for name, issuer, ident in [
        ("server", ca, "localhost"),
        ("node", ca, "node-7.example"),
        ("rogue", other, "node-7.example"),
    ]:
        cert = issuer.issue_cert(ident, common_name=ident)
        files[name] = d / f"{name}.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(files[name]))
    return files


def _tls_receiver(pki: dict[str, Path]) -> AmstReceiver:
    ctx = tls_server_context(pki["server"], pki["server"], cafile=pki["ca"])
    return AmstReceiver(("127.0.0.1", 0), security=TlsAuth(ctx), baselines=BaselineStore(), timeout_s=10)


def test_mutual_tls_transfer_names_the_peer_by_its_certificate(pki: dict[str, Path]) -> None:
    with _tls_receiver(pki) as rx:
        client = TlsAuth(tls_client_context(pki["ca"], pki["node"]), server_hostname="localhost")
        payload = os.urandom(3 * MiB)
        report = AmstSender(rx.address, security=client).send(payload, "lz4", streams=3, resource_id="disk")
        got = rx.wait(report.transfer_id, timeout=10)
        assert bytes(got.data) == payload and got.peer == "node-7.example"


@pytest.mark.parametrize("who", ["no certificate", "another CA"])
def test_mutual_tls_refuses_peers_without_a_deployment_certificate(pki: dict[str, Path], who: str) -> None:
    with _tls_receiver(pki) as rx:
        cert = None if who == "no certificate" else pki["rogue"]
        client = TlsAuth(tls_client_context(pki["ca"], cert), server_hostname="localhost")
        with pytest.raises(TransportError):
            AmstSender(rx.address, security=client, timeout_s=5).send(b"z" * 1000, "none")
        _eventually(lambda: rx.refusals["auth"] >= 1)
        assert rx.stats()["active_transfers"] == 0


def test_a_plain_peer_cannot_talk_to_a_tls_receiver(pki: dict[str, Path]) -> None:
    with _tls_receiver(pki) as rx:
        with pytest.raises(TransportError):
            AmstSender(rx.address, security=insecure(), timeout_s=5).send(b"z" * 1000, "none")
        _eventually(lambda: rx.refusals["auth"] == 1)


def test_tls_sender_refuses_a_receiver_its_ca_did_not_sign(pki: dict[str, Path]) -> None:
    with _tls_receiver(pki) as rx:
        client = TlsAuth(tls_client_context(pki["other_ca"], pki["node"]), server_hostname="localhost")
        with pytest.raises(AuthenticationError, match="TLS handshake"):
            AmstSender(rx.address, security=client, timeout_s=5).send(b"z", "none")


def test_unverified_tls_context_warns() -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with pytest.warns(UserWarning, match="not authenticated"):
        TlsAuth(ctx)


# -- limits ------------------------------------------------------------------------------------------


def test_an_oversize_hello_is_refused_before_anything_is_allocated() -> None:
    limits = ReceiverLimits(memory_budget=256 * MiB)
    with AmstReceiver(("127.0.0.1", 0), security=KEYS, limits=limits, max_payload=4 << 30) as rx:
        before = _rss()
        for _ in range(2):  # the review's 1 GiB HELLO, twice
            manifest = Manifest(1 << 30, 64 << 20, 16, 0, 0)
            with socket.create_connection(rx.address, timeout=5) as s:
                s.sendall(_psk_hello(uuid.uuid4(), manifest, ALICE))
                ok, message = read_result(s)
            assert not ok and "memory budget" in message
        assert rx.refusals["memory"] == 2
        assert _rss() - before < 50 * MiB


def test_unauthenticated_hellos_allocate_nothing(receiver: AmstReceiver) -> None:
    manifest = Manifest(1 << 30, 64 << 20, 16, 0, 0)
    with socket.create_connection(receiver.address, timeout=5) as s:
        s.sendall(_psk_hello(uuid.uuid4(), manifest, ALICE, tag=bytes(16)))
        ok, message = read_result(s)
    assert not ok and "failed its MAC" in message
    assert receiver.stats()["memory_reserved"] == 0


def test_a_slow_handshake_is_cut_at_its_deadline() -> None:
    limits = ReceiverLimits(handshake_timeout_s=0.5)
    with AmstReceiver(("127.0.0.1", 0), security=KEYS, limits=limits) as rx:
        started = time.monotonic()
        with socket.create_connection(rx.address, timeout=5) as s:
            hello = _psk_hello(uuid.uuid4(), Manifest(10, MiB, 1, 0, 0), ALICE)
            with contextlib.suppress(OSError):
                for b in hello[:20]:  # one byte every 0.1 s: each read is quick, the whole is not
                    s.sendall(bytes((b,)))
                    time.sleep(0.1)
            _eventually(lambda: rx.refusals["handshake_timeout"] == 1)
        assert time.monotonic() - started < 3


def test_a_trickling_transfer_is_failed_by_its_overall_deadline() -> None:
    # 4 MiB at the floor of 32 Mbit/s: a deadline of handshake + read timeout + 1 s
    limits = ReceiverLimits(handshake_timeout_s=0.2, min_rate_bps=32e6)
    with AmstReceiver(("127.0.0.1", 0), security=insecure(), limits=limits, timeout_s=0.5) as rx:
        tid = uuid.uuid4()
        manifest = Manifest(4 * MiB, 4 * MiB, 1, 0, 0)
        with socket.create_connection(rx.address, timeout=5) as s:
            s.sendall(Hello(tid, 0, 1, manifest).pack() + CHUNK_HEADER.pack(MSG_CHUNK, 0, 4 * MiB))
            with pytest.raises(TransferTimeoutError, match="deadline"):
                with contextlib.suppress(OSError):
                    for _ in range(60):  # a byte every 0.1 s keeps every read alive
                        s.sendall(b"\0")
                        time.sleep(0.1)
                        if rx.refusals["deadline"]:
                            break
                rx.wait(tid, timeout=5)


def test_transfer_limits_and_the_failed_transfers_memory() -> None:
    limits = ReceiverLimits(max_transfers=2, memory_budget=512 * MiB)
    # the two admitted transfers wait for a second stream that never comes: timeout_s must outlast the
    # third HELLO's refusal on a loaded machine, and their watchdog then frees them
    with AmstReceiver(("127.0.0.1", 0), security=KEYS, limits=limits, timeout_s=5) as rx:
        socks: list[socket.socket] = []
        try:
            for admitted in (1, 2, 2):
                s = socket.create_connection(rx.address, timeout=10)
                socks.append(s)
                s.sendall(_psk_hello(uuid.uuid4(), Manifest(64 * MiB, MiB, 64, 0, 0), ALICE, count=2))
                _eventually(lambda n=admitted: rx.stats()["active_transfers"] == n)
            ok, message = read_result(socks[2])
            assert not ok and "transfers in flight" in message
            assert rx.refusals["transfers"] == 1
            assert int(rx.stats()["memory_reserved"]) > 128 * MiB  # type: ignore[call-overload]
            _eventually(lambda: rx.stats()["active_transfers"] == 0, timeout=15)  # the missing streams
            assert rx.stats()["memory_reserved"] == 0 and rx.stats()["memory_retained"] == 0
        finally:
            for s in socks:
                s.close()


def test_abuse_leaves_a_legitimate_transfer_served_within_budget() -> None:
    """Floods, slow handshakes, oversize and unauthenticated HELLOs beside a real 64 MiB transfer; the
    bench (bench/amst_abuse.py) runs the same with 1,000 abusive connections and reports the figures."""
    from .abuse import run_abuse

    result = run_abuse(abusive=300, payload_mib=64, budget_mib=256)
    assert result["legit_ok"], (result["legit_during"], result["legit_after"], result["refused"])
    assert result["rss_growth_mib"] < 256 + 100, result
    assert result["max_threads"] <= result["thread_bound"], result
    # floods, garbage, forged and oversize HELLOs end on their own (4 x 60); slow ones may still be held
    assert sum(result["refused"].values()) >= 240, result
    assert result["refused"]["too_large"] >= 50 and result["refused"]["auth"] >= 50, result


def test_receiver_answers_capacity_errors_to_senders() -> None:
    limits = ReceiverLimits(max_transfers=1)
    with AmstReceiver(("127.0.0.1", 0), security=KEYS, limits=limits, timeout_s=2) as rx:
        with socket.create_connection(rx.address, timeout=5) as hold:
            hold.sendall(_psk_hello(uuid.uuid4(), Manifest(2 * MiB, MiB, 2, 0, 0), ALICE, count=2))
            _eventually(lambda: rx.stats()["active_transfers"] == 1)
            with pytest.raises(CapacityError, match="transfers in flight"):
                AmstSender(rx.address, security=ALICE).send(b"q" * 1000, "none")


KILLED_SENDER = """
import sys
from dwcp_selector.transport import AmstSender, PskAuth
port = int(sys.argv[1])
data = bytes(range(256)) * (1 << 20)  # 256 MiB
AmstSender(("127.0.0.1", port), security=PskAuth("alice", b"a" * 32), timeout_s=60).send(
    data, "none", streams=4
)
"""


def test_a_killed_sender_process_frees_everything_it_held(receiver: AmstReceiver) -> None:
    """A peer that dies mid-transfer (SIGKILL: no END, no close handshake) fails its transfer at once,
    its reservation and stream threads are released, and the receiver goes on serving."""
    threads = threading.active_count()
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SENDER, str(receiver.address[1])])
    try:
        _eventually(lambda: receiver.stats()["active_transfers"] == 1, timeout=30)
        time.sleep(0.05)  # streams are moving bytes
        assert proc.poll() is None, "the sender finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        _eventually(lambda: receiver.stats()["active_transfers"] == 0, timeout=10)
        assert receiver.stats()["memory_reserved"] == 0
        _eventually(lambda: threading.active_count() <= threads, timeout=10)
        report = AmstSender(receiver.address, security=ALICE).send(b"after" * 1000, "zstd")
        assert receiver.wait(report.transfer_id, timeout=10).data == b"after" * 1000
    finally:
        proc.kill()
        proc.wait(10)


def test_a_transfer_failed_by_a_corrupt_frame_returns_its_memory() -> None:
    """The payload buffer of a transfer that fails while decoding is freed at once, not kept alive by the
    error (its traceback holds the decoder's frames, which hold a view of the buffer)."""
    import gc

    import xxhash

    from dwcp_selector.strategies import PayloadCodec
    from dwcp_selector.transport.protocol import END, MSG_END

    size = 256 * MiB
    frame = bytearray(PayloadCodec(chunk_size=MiB).encode(bytes(MiB), "lz4").frames[0])
    frame[-1] ^= 0xFF  # the last chunk's body is damaged: decoding fails after the payload was allocated
    manifest = Manifest(size, MiB, 256, 1, xxhash.xxh3_64_intdigest(bytes(size)))
    with AmstReceiver(("127.0.0.1", 0), security=insecure(), timeout_s=10) as rx:
        gc.collect()
        before = _rss()
        tid = uuid.uuid4()
        good = PayloadCodec(chunk_size=MiB).encode(bytes(MiB), "lz4").frames[0]
        with socket.create_connection(rx.address, timeout=10) as s:
            s.sendall(Hello(tid, 0, 1, manifest).pack())
            for i in range(255):  # touch the whole payload buffer
                s.sendall(CHUNK_HEADER.pack(MSG_CHUNK, i, len(good)) + good)
            s.sendall(CHUNK_HEADER.pack(MSG_CHUNK, 255, len(frame)) + frame + END.pack(MSG_END, 256))
            ok, message = read_result(s)
        assert not ok and "CorruptFrameError" in message, message
        with pytest.raises(CorruptFrameError):
            rx.wait(tid, timeout=10)
        assert _rss() - before < 64 * MiB, f"{(_rss() - before) / MiB:.0f} MiB still held after the failure"
