"""The AMST wire protocol: what one TCP stream of a transfer carries.

Every stream of a transfer opens with a HELLO naming the transfer, the stream's index and the stream
count, how the sender authenticates, followed by the transfer's manifest (identical on every stream, so
any stream can tell the receiver what to expect). Then CHUNK messages, each one encoded chunk frame with
its index, and an END giving the number of chunks the stream sent. After verifying the whole payload the
receiver answers on stream 0 with a RESULT: ok, or the error that stopped it. All integers are little
endian::

    HELLO   b"AMST" | version u8 = 2 | type u8 = 1 | transfer id 16 | stream u16 | streams u16 |
            auth u8 (0 none or TLS, 1 PSK) | sender clock ms u64 | nonce 16 |
            key id (u8 length + UTF-8) | manifest | PSK: tag 16
    manifest: payload length u64 | chunk size u32 | chunk count u32 | strategy id u8 | payload xxh3 u64 |
              baseline id (u8 length + UTF-8) | baseline xxh3 u64 | baseline length u64 |
              resource id (u8 length + UTF-8)
    CHUNK   type u8 = 2 | chunk index u32 | frame length u32 | frame | PSK: tag 16
    END     type u8 = 3 | chunks sent on this stream u32 | PSK: tag 16
    RESULT  type u8 = 4 | status u8 | message (u16 length + UTF-8) | PSK and status 0 or 1: tag 16

RESULT status 0 is ok, 1 the error that failed an accepted transfer, 2 a refusal before the stream was
accepted (bad or unknown key, a limit, not AMST): a refusal carries no tag, so it can only ever fail a
transfer. With PSK the HELLO's tag is HMAC-SHA256 under the sender's key and the others are under the
stream's session key (:mod:`.security`).
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
from dataclasses import dataclass

from ..errors import ProtocolError, StreamBrokenError, TransferTimeoutError
from .security import TAG_BYTES, MessageAuth

__all__ = [
    "AUTH_NONE",
    "AUTH_PSK",
    "MAGIC",
    "MSG_CHUNK",
    "MSG_END",
    "MSG_RESULT",
    "PROTOCOL_VERSION",
    "Hello",
    "Manifest",
    "Reader",
    "recv_exact",
]

MAGIC = b"AMST"
PROTOCOL_VERSION = 2
MSG_HELLO = 1
MSG_CHUNK = 2
MSG_END = 3
MSG_RESULT = 4
AUTH_NONE = 0
AUTH_PSK = 1
RESULT_OK = 0
RESULT_ERROR = 1
RESULT_REFUSED = 2

_HELLO = struct.Struct("<4sBB16sHHBQ16s")
_MANIFEST = struct.Struct("<QIIBQ")
_BASELINE = struct.Struct("<QQ")
CHUNK_HEADER = struct.Struct("<BII")
END = struct.Struct("<BI")
RESULT_HEADER = struct.Struct("<BBH")


def recv_exact(
    sock: socket.socket,
    n: int,
    *,
    what: str,
    into: memoryview | None = None,
    deadline: float | None = None,
) -> memoryview:
    """Read exactly ``n`` bytes, or raise: EOF is a broken stream, a timeout a timeout.

    With ``deadline`` (a :func:`time.monotonic` instant) the whole read must finish by then, however the
    bytes trickle in; without it each read waits up to the socket's own timeout.
    """
    buf = into[:n] if into is not None else memoryview(bytearray(n))
    got = 0
    while got < n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransferTimeoutError(f"deadline passed while reading {what} ({got} of {n} bytes)")
            sock.settimeout(remaining)
        try:
            k = sock.recv_into(buf[got:], n - got)
        except TimeoutError as exc:
            raise TransferTimeoutError(f"peer stopped sending while reading {what}") from exc
        except OSError as exc:
            raise StreamBrokenError(f"stream failed while reading {what}: {exc}") from exc
        if k == 0:
            raise StreamBrokenError(f"stream closed by the peer while reading {what} ({got} of {n} bytes)")
        got += k
    return buf


class Reader:
    """Reads a message's fields off a socket by a deadline, keeping the raw bytes for its MAC."""

    __slots__ = ("deadline", "raw", "sock")

    def __init__(self, sock: socket.socket, deadline: float | None = None) -> None:
        self.sock = sock
        self.deadline = deadline
        self.raw = bytearray()

    def read(self, n: int, what: str) -> bytes:
        data = bytes(recv_exact(self.sock, n, what=what, deadline=self.deadline)) if n else b""
        self.raw += data
        return data

    def text(self, what: str) -> str:
        (n,) = self.read(1, what)
        try:
            return self.read(n, what).decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{what} is not UTF-8") from exc


@dataclass(frozen=True, slots=True)
class Manifest:
    """What the receiver must reassemble: sizes, strategy, checksum and the baseline the frames need."""

    payload_length: int
    chunk_size: int
    chunk_count: int
    strategy_id: int
    payload_checksum: int
    baseline_id: str = ""
    baseline_checksum: int = 0
    baseline_length: int = 0
    resource_id: str = ""

    def pack(self) -> bytes:
        bid = self.baseline_id.encode()
        rid = self.resource_id.encode()
        if len(bid) > 255 or len(rid) > 255:
            raise ProtocolError("baseline and resource ids are limited to 255 bytes")
        return b"".join(
            (
                _MANIFEST.pack(
                    self.payload_length,
                    self.chunk_size,
                    self.chunk_count,
                    self.strategy_id,
                    self.payload_checksum,
                ),
                bytes((len(bid),)),
                bid,
                _BASELINE.pack(self.baseline_checksum, self.baseline_length),
                bytes((len(rid),)),
                rid,
            )
        )

    @classmethod
    def read(cls, r: Reader) -> Manifest:
        length, chunk_size, count, strategy_id, checksum = _MANIFEST.unpack(
            r.read(_MANIFEST.size, "manifest")
        )
        bid = r.text("baseline id")
        bchecksum, blength = _BASELINE.unpack(r.read(_BASELINE.size, "manifest baseline"))
        rid = r.text("resource id")
        return cls(length, chunk_size, count, strategy_id, checksum, bid, bchecksum, blength, rid)


@dataclass(frozen=True, slots=True)
class Hello:
    """The first message of every stream; ``tag`` is its PSK MAC (empty without PSK)."""

    transfer_id: uuid.UUID
    stream_index: int
    stream_count: int
    manifest: Manifest
    auth: int = AUTH_NONE
    clock_ms: int = 0
    nonce: bytes = bytes(16)
    key_id: str = ""
    tag: bytes = b""

    def pack_unsigned(self) -> bytes:
        """The HELLO without its tag: what the PSK tag is computed over."""
        kid = self.key_id.encode()
        if len(kid) > 255 or len(self.nonce) != 16:
            raise ProtocolError("the key id is limited to 255 bytes and the nonce is 16 bytes")
        head = _HELLO.pack(
            MAGIC,
            PROTOCOL_VERSION,
            MSG_HELLO,
            self.transfer_id.bytes,
            self.stream_index,
            self.stream_count,
            self.auth,
            self.clock_ms,
            self.nonce,
        )
        return head + bytes((len(kid),)) + kid + self.manifest.pack()

    def pack(self) -> bytes:
        return self.pack_unsigned() + self.tag

    @classmethod
    def read(cls, sock: socket.socket, deadline: float | None = None) -> tuple[Hello, bytes]:
        """The HELLO and the bytes its tag covers; the tag itself is read but not checked here."""
        r = Reader(sock, deadline)
        raw = r.read(_HELLO.size, "stream hello")
        magic, version, mtype, tid, index, count, auth, clock_ms, nonce = _HELLO.unpack(raw)
        if magic != MAGIC:
            raise ProtocolError(f"peer is not speaking AMST (first bytes {raw[:8]!r})")
        if version != PROTOCOL_VERSION or mtype != MSG_HELLO:
            raise ProtocolError(f"unsupported AMST version {version} or message type {mtype} in hello")
        if not 0 < count <= 1024 or index >= count:
            raise ProtocolError(f"hello names stream {index} of {count}")
        if auth not in (AUTH_NONE, AUTH_PSK):
            raise ProtocolError(f"hello names unknown authentication {auth}")
        key_id = r.text("key id")
        manifest = Manifest.read(r)
        signed = bytes(r.raw)
        tag = bytes(recv_exact(sock, TAG_BYTES, what="hello tag", deadline=deadline)) if auth else b""
        hello = cls(uuid.UUID(bytes=tid), index, count, manifest, auth, clock_ms, nonce, key_id, tag)
        return hello, signed


def pack_result(status: int, message: str = "", auth: MessageAuth | None = None) -> bytes:
    """A RESULT; tagged under ``auth`` unless it is a refusal, which never carries a tag."""
    raw = message.encode()[:60000]
    header = RESULT_HEADER.pack(MSG_RESULT, status, len(raw))
    if auth is not None and status != RESULT_REFUSED:
        return header + raw + auth.seal(header, raw)
    return header + raw


def read_result(sock: socket.socket, auth: MessageAuth | None = None) -> tuple[bool, str]:
    """The receiver's answer; with ``auth`` an ok (or error) must carry the receiver's valid tag."""
    header = bytes(recv_exact(sock, RESULT_HEADER.size, what="transfer result"))
    mtype, status, n = RESULT_HEADER.unpack(header)
    if mtype != MSG_RESULT or status not in (RESULT_OK, RESULT_ERROR, RESULT_REFUSED):
        raise ProtocolError(f"receiver answered with message type {mtype} status {status}, not a result")
    raw = bytes(recv_exact(sock, n, what="result message")) if n else b""
    if auth is not None and status != RESULT_REFUSED:
        tag = recv_exact(sock, TAG_BYTES, what="result tag")
        auth.check(tag, header, raw, what="the receiver's result")
    return status == RESULT_OK, raw.decode("utf-8", "replace")


def clock_ms() -> int:
    return int(time.time() * 1000)
