"""The AMST wire protocol: what one TCP stream of a transfer carries.

Every stream of a transfer opens with a HELLO naming the transfer, the stream's index and the stream
count, followed by the transfer's manifest (identical on every stream, so any stream can tell the receiver
what to expect). Then CHUNK messages, each one encoded chunk frame with its index, and an END giving the
number of chunks the stream sent. After verifying the whole payload the receiver answers on stream 0 with
a RESULT: ok, or the error that stopped it. All integers are little endian::

    HELLO   b"AMST" | version u8 | type u8 = 1 | transfer id 16 | stream u16 | streams u16 | manifest
    manifest: payload length u64 | chunk size u32 | chunk count u32 | strategy id u8 | payload xxh3 u64 |
              baseline id (u8 length + UTF-8) | baseline xxh3 u64 | baseline length u64 |
              resource id (u8 length + UTF-8)
    CHUNK   type u8 = 2 | chunk index u32 | frame length u32 | frame
    END     type u8 = 3 | chunks sent on this stream u32
    RESULT  type u8 = 4 | status u8 (0 ok, 1 error) | message (u16 length + UTF-8)
"""

from __future__ import annotations

import socket
import struct
import uuid
from dataclasses import dataclass

from ..errors import ProtocolError, StreamBrokenError, TransferTimeoutError

__all__ = [
    "MAGIC",
    "MSG_CHUNK",
    "MSG_END",
    "MSG_RESULT",
    "PROTOCOL_VERSION",
    "Hello",
    "Manifest",
    "recv_exact",
]

MAGIC = b"AMST"
PROTOCOL_VERSION = 1
MSG_HELLO = 1
MSG_CHUNK = 2
MSG_END = 3
MSG_RESULT = 4

_HELLO = struct.Struct("<4sBB16sHH")
_MANIFEST = struct.Struct("<QIIBQ")
_BASELINE = struct.Struct("<QQ")
CHUNK_HEADER = struct.Struct("<BII")
END = struct.Struct("<BI")
RESULT_HEADER = struct.Struct("<BBH")


def recv_exact(sock: socket.socket, n: int, *, what: str, into: memoryview | None = None) -> memoryview:
    """Read exactly ``n`` bytes, or raise: EOF is a broken stream, a timeout a timeout."""
    buf = into[:n] if into is not None else memoryview(bytearray(n))
    got = 0
    while got < n:
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
    def read(cls, sock: socket.socket) -> Manifest:
        fixed = recv_exact(sock, _MANIFEST.size, what="manifest")
        length, chunk_size, count, strategy_id, checksum = _MANIFEST.unpack(fixed)
        bid = _read_text(sock, "baseline id")
        bchecksum, blength = _BASELINE.unpack(recv_exact(sock, _BASELINE.size, what="manifest baseline"))
        rid = _read_text(sock, "resource id")
        return cls(length, chunk_size, count, strategy_id, checksum, bid, bchecksum, blength, rid)


def _read_text(sock: socket.socket, what: str) -> str:
    (n,) = recv_exact(sock, 1, what=what)
    raw = bytes(recv_exact(sock, n, what=what)) if n else b""
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not UTF-8") from exc


@dataclass(frozen=True, slots=True)
class Hello:
    """The first message of every stream."""

    transfer_id: uuid.UUID
    stream_index: int
    stream_count: int
    manifest: Manifest

    def pack(self) -> bytes:
        head = _HELLO.pack(
            MAGIC, PROTOCOL_VERSION, MSG_HELLO, self.transfer_id.bytes, self.stream_index, self.stream_count
        )
        return head + self.manifest.pack()

    @classmethod
    def read(cls, sock: socket.socket) -> Hello:
        raw = recv_exact(sock, _HELLO.size, what="stream hello")
        magic, version, mtype, tid, index, count = _HELLO.unpack(raw)
        if magic != MAGIC:
            raise ProtocolError(f"peer is not speaking AMST (first bytes {bytes(raw[:8])!r})")
        if version != PROTOCOL_VERSION or mtype != MSG_HELLO:
            raise ProtocolError(f"unsupported AMST version {version} or message type {mtype} in hello")
        if not 0 < count <= 1024 or index >= count:
            raise ProtocolError(f"hello names stream {index} of {count}")
        return cls(uuid.UUID(bytes=bytes(tid)), index, count, Manifest.read(sock))


def pack_result(ok: bool, message: str = "") -> bytes:
    raw = message.encode()[:60000]
    return RESULT_HEADER.pack(MSG_RESULT, 0 if ok else 1, len(raw)) + raw


def read_result(sock: socket.socket) -> tuple[bool, str]:
    mtype, status, n = RESULT_HEADER.unpack(recv_exact(sock, RESULT_HEADER.size, what="transfer result"))
    if mtype != MSG_RESULT or status not in (0, 1):
        raise ProtocolError(f"receiver answered with message type {mtype} status {status}, not a result")
    message = bytes(recv_exact(sock, n, what="result message")).decode("utf-8", "replace") if n else ""
    return status == 0, message
