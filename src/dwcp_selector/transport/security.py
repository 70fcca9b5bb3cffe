"""Who may talk to an AMST receiver: pre-shared keys with a MAC on every message, mutual TLS, or nothing.

A receiver and a sender are each given one of three security settings, and nothing else runs:

* :class:`PskAuth` (sender) / :class:`PskKeys` (receiver): each sender holds a key id and a key of at
  least 16 bytes. The HELLO of every stream carries the sender's clock, a fresh nonce and an
  HMAC-SHA256 tag over all of it; the receiver verifies the tag before it allocates anything or looks at
  a baseline. Both ends then derive a per-stream session key from the key, the nonce, the transfer and
  the stream, and every later message (CHUNK, END, and the RESULT coming back) carries a 16-byte
  AES-256-GMAC tag under the session key with a per-direction sequence number as its nonce, verified
  before a single byte of the frame reaches a decoder. A replayed HELLO is refused (the receiver
  remembers every authenticated stream within the clock window); a reordered, dropped or altered
  message fails its tag. The receiver's tag on RESULT proves to the sender that the receiver holds the
  key too.
* :class:`TlsAuth`: the streams run inside TLS (Python's :mod:`ssl`). The recommended mode is mutual TLS
  with a deployment CA: :func:`tls_server_context` requires a client certificate signed by that CA and
  the peer's identity is its certificate's common name.
* :class:`Insecure`: no authentication, only when asked for by name; constructing it warns with
  :class:`InsecureTransportWarning`. Anyone who can connect can then send payloads.

The HELLO and the key derivation use HMAC-SHA256 (a few hundred bytes each). The messages, which carry
every payload byte, use GMAC (AES-GCM authenticating without encrypting, NIST SP 800-38D): with AES-NI
and carry-less multiplication it runs at tens of GB/s on one core where HMAC-SHA256 runs at 1-2 GB/s and
keyed BLAKE2b slower still, so authentication stops being a stage of its own on fast links
(docs/decisions/0009). GMAC's one rule is never to repeat a nonce under a key: every stream has its own
session key (a fresh HELLO nonce) and every message its own (direction, sequence) nonce.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import AuthenticationError, ConfigError

__all__ = [
    "MIN_KEY_BYTES",
    "TAG_BYTES",
    "Insecure",
    "InsecureTransportWarning",
    "PskAuth",
    "PskKeys",
    "ReceiverSecurity",
    "SenderSecurity",
    "TlsAuth",
    "tls_client_context",
    "tls_server_context",
]

MIN_KEY_BYTES = 16
TAG_BYTES = 16
#: A message's GMAC nonce: the direction, three zero bytes and the sequence number (12 bytes).
_SEQ = struct.Struct("<c3xQ")


class InsecureTransportWarning(UserWarning):
    """AMST runs without authentication: anyone who can connect can send payloads."""


def _check_key(key_id: str, key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"AMST key {key_id!r} must be at least {MIN_KEY_BYTES} bytes")
    if not key_id or len(key_id.encode()) > 255:
        raise ConfigError("an AMST key id must be 1..255 bytes of UTF-8")


@dataclass(frozen=True, slots=True)
class PskAuth:
    """A sender's pre-shared key: the id the receiver knows it by and the key itself."""

    key_id: str
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_key(self.key_id, self.key)

    @classmethod
    def from_hex(cls, key_id: str, hex_key: str) -> PskAuth:
        try:
            return cls(key_id, bytes.fromhex(hex_key))
        except ValueError as exc:
            raise ConfigError(f"AMST key {key_id!r} is not hex: {exc}") from exc


class PskKeys:
    """A receiver's pre-shared keys, by key id; the key id is the authenticated peer's identity."""

    def __init__(self, keys: Mapping[str, bytes] | PskAuth) -> None:
        pairs = {keys.key_id: keys.key} if isinstance(keys, PskAuth) else dict(keys)
        if not pairs:
            raise ConfigError("a PSK receiver needs at least one key")
        for key_id, key in pairs.items():
            _check_key(key_id, key)
        self._keys = {k: bytes(v) for k, v in pairs.items()}

    def __repr__(self) -> str:
        return f"PskKeys({sorted(self._keys)})"

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def key(self, key_id: str) -> bytes:
        try:
            return self._keys[key_id]
        except KeyError:
            raise AuthenticationError(f"unknown key id {key_id!r}") from None


@dataclass(frozen=True, slots=True)
class TlsAuth:
    """Streams inside TLS. A receiver's context should require client certificates (mutual TLS); a
    sender's names the receiver's host in ``server_hostname`` when its context checks host names."""

    context: ssl.SSLContext
    server_hostname: str | None = None

    def __post_init__(self) -> None:
        if self.context.verify_mode != ssl.CERT_REQUIRED:
            warnings.warn(
                "AMST TLS context does not verify the peer's certificate: the peer is not authenticated",
                InsecureTransportWarning,
                stacklevel=3,
            )


@dataclass(frozen=True, slots=True)
class Insecure:
    """No authentication at all; only for a trusted network or a test. Warns when constructed."""

    def __post_init__(self) -> None:
        warnings.warn(
            "AMST without authentication: anyone who can connect can send payloads and baselines",
            InsecureTransportWarning,
            stacklevel=3,
        )


SenderSecurity = PskAuth | TlsAuth | Insecure
ReceiverSecurity = PskKeys | PskAuth | TlsAuth | Insecure


def tls_server_context(
    certfile: str | Path, keyfile: str | Path, cafile: str | Path | None = None
) -> ssl.SSLContext:
    """A receiver's TLS context: its certificate, and with ``cafile`` mutual TLS (client certificates
    signed by that CA are required). TLS 1.2 at least."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(cafile) if cafile else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(certfile), str(keyfile))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the receiver's certificate {certfile}: {exc}") from exc
    if cafile is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def tls_client_context(
    cafile: str | Path, certfile: str | Path | None = None, keyfile: str | Path | None = None
) -> ssl.SSLContext:
    """A sender's TLS context: trusts ``cafile``, presents its own certificate for mutual TLS."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cafile))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if certfile is not None:
            ctx.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the sender's TLS files: {exc}") from exc
    return ctx


def hello_tag(key: bytes, hello: bytes | memoryview) -> bytes:
    """The tag a PSK HELLO carries: HMAC-SHA256 over everything before it, truncated."""
    return hmac.new(key, b"AMST2 hello\x00" + bytes(hello), hashlib.sha256).digest()[:TAG_BYTES]


class MessageAuth:
    """Tags and checks the messages of one stream under its session key, one sequence per direction."""

    __slots__ = ("_gmac", "_recv_seq", "_recv_dir", "_send_dir", "_send_seq")

    def __init__(self, key: bytes, nonce: bytes, transfer_id: bytes, stream: int, *, sender: bool) -> None:
        info = b"AMST2 session\x00" + nonce + transfer_id + struct.pack("<H", stream)
        self._gmac = AESGCM(hmac.new(key, info, hashlib.sha256).digest())
        self._send_dir, self._recv_dir = (b"S", b"R") if sender else (b"R", b"S")
        self._send_seq = 0
        self._recv_seq = 0

    def _tag(self, direction: bytes, seq: int, parts: tuple[bytes | memoryview, ...]) -> bytes:
        """GMAC over the message: its last part (the frame, large) as associated data, the parts before it
        (headers, small) as the plaintext whose ciphertext the tag also covers; only the tag is kept."""
        *heads, last = parts
        head = b"".join(heads)
        sealed = self._gmac.encrypt(_SEQ.pack(direction, seq), head, last)
        return sealed[len(head) :]

    def seal(self, *parts: bytes | memoryview) -> bytes:
        """The tag of the next outgoing message, given in the same parts as the receiving end checks it
        (the tag depends on where the last part begins)."""
        tag = self._tag(self._send_dir, self._send_seq, parts)
        self._send_seq += 1
        return tag

    def check(self, tag: bytes | memoryview, *parts: bytes | memoryview, what: str) -> None:
        """Verify the next incoming message's tag, or raise: nothing unverified is used."""
        expected = self._tag(self._recv_dir, self._recv_seq, parts)
        self._recv_seq += 1
        if not hmac.compare_digest(expected, bytes(tag)):
            raise AuthenticationError(f"{what} failed its MAC (altered, replayed, reordered or wrong key)")
