"""Baselines: the previous versions HDE encodes against, and the bounded store that keeps them.

A :class:`Baseline` is immutable bytes with an id (the resource it is a version of: a VM, a disk, a file)
and an xxh3-64 checksum computed once. An HDE frame names both, so the decoder can tell a missing baseline
(:class:`~dwcp_selector.errors.BaselineMissingError`) from a wrong one
(:class:`~dwcp_selector.errors.BaselineMismatchError`).

:class:`BaselineStore` keeps recent versions per resource within a memory budget, evicting the least
recently used version first; a sender keeps the versions it encodes against, a receiver the versions it
has reconstructed, and both resolve a frame's baseline through :meth:`BaselineStore.lookup`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Protocol

from .._types import BytesLike
from ..errors import BaselineMismatchError, BaselineMissingError, ConfigError
from .checksum import xxh3

__all__ = ["DEFAULT_STORE_BYTES", "Baseline", "BaselineSource", "BaselineStore"]

DEFAULT_STORE_BYTES = 1 << 30
DEFAULT_VERSIONS_PER_RESOURCE = 2
_MAX_ID_LENGTH = 255


class BaselineSource(Protocol):
    """Anything that resolves the baseline an HDE frame names: a :class:`Baseline` or a store."""

    def lookup(self, baseline_id: str, checksum: int, length: int) -> Baseline: ...


class Baseline:
    """One version of a resource, used as the reference of HDE frames.

    >>> b = Baseline("vm-7", b"old contents")
    >>> b.lookup("vm-7", b.checksum, len(b)) is b
    True
    """

    __slots__ = ("_cache", "checksum", "data", "id")

    def __init__(self, baseline_id: str, data: BytesLike) -> None:
        if not baseline_id or len(baseline_id.encode()) > _MAX_ID_LENGTH:
            raise ConfigError(f"baseline id must be 1..{_MAX_ID_LENGTH} bytes of UTF-8, got {baseline_id!r}")
        self.id = baseline_id
        self.data: bytes = data if isinstance(data, bytes) else bytes(data)
        self.checksum = xxh3(self.data)
        # Derived structures encoders may cache per baseline (e.g. a prefix dictionary); private.
        self._cache: dict[object, object] = {}

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"Baseline(id={self.id!r}, bytes={len(self.data)}, xxh3={self.checksum:016x})"

    def describe(self) -> str:
        return f"{self.id!r} ({len(self.data)} bytes, xxh3 {self.checksum:016x})"

    def lookup(self, baseline_id: str, checksum: int, length: int) -> Baseline:
        """This baseline, if its content is the one the frame names; the id alone does not decide.

        A caller that hands over a baseline explicitly means "decode against this": identical content
        under another name is accepted, different content under the same name is not.
        """
        if checksum != self.checksum or length != len(self.data):
            raise BaselineMismatchError(
                f"frame was encoded against baseline {baseline_id!r} ({length} bytes, xxh3 "
                f"{checksum:016x}), but the baseline supplied is {self.describe()}"
            )
        return self


class BaselineStore:
    """Versions of many resources within a byte budget; least recently used versions are evicted first.

    Thread-safe. ``versions_per_resource`` bounds how many versions of one resource are kept (HDE needs
    the previous one; two lets a receiver still decode a frame encoded against the version before).

    >>> store = BaselineStore(max_bytes=1 << 20)
    >>> v1 = store.put("disk-1", b"a" * 1000)
    >>> store.latest("disk-1") is v1
    True
    """

    def __init__(
        self,
        max_bytes: int = DEFAULT_STORE_BYTES,
        versions_per_resource: int = DEFAULT_VERSIONS_PER_RESOURCE,
    ) -> None:
        if max_bytes <= 0 or versions_per_resource <= 0:
            raise ConfigError("baseline store budget and versions per resource must be positive")
        self.max_bytes = max_bytes
        self.versions_per_resource = versions_per_resource
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, int], Baseline] = OrderedDict()
        self._bytes = 0
        self.evictions = 0

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, resource_id: str, data: BytesLike | Baseline) -> Baseline:
        """Store a new version of ``resource_id`` (as the latest) and return it."""
        baseline = data if isinstance(data, Baseline) else Baseline(resource_id, data)
        if baseline.id != resource_id:
            raise ConfigError(f"baseline id {baseline.id!r} does not match resource id {resource_id!r}")
        if len(baseline) > self.max_bytes:
            raise ConfigError(
                f"baseline of {len(baseline)} bytes exceeds the store budget of {self.max_bytes} bytes"
            )
        key = (resource_id, baseline.checksum)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            self._entries[key] = baseline
            self._bytes += len(baseline)
            versions = [k for k in self._entries if k[0] == resource_id]
            for old in versions[: max(0, len(versions) - self.versions_per_resource)]:
                self._evict(old)
            while self._bytes > self.max_bytes:
                self._evict(next(iter(self._entries)))
        return baseline

    def _evict(self, key: tuple[str, int]) -> None:
        baseline = self._entries.pop(key)
        self._bytes -= len(baseline)
        self.evictions += 1

    def latest(self, resource_id: str) -> Baseline | None:
        """The most recently stored or used version of ``resource_id``, if any is kept."""
        with self._lock:
            for key in reversed(self._entries):
                if key[0] == resource_id:
                    self._entries.move_to_end(key)
                    return self._entries[key]
        return None

    def lookup(self, baseline_id: str, checksum: int, length: int) -> Baseline:
        """The exact version a frame names, or :class:`BaselineMissingError`."""
        with self._lock:
            baseline = self._entries.get((baseline_id, checksum))
            if baseline is not None:
                self._entries.move_to_end((baseline_id, checksum))
            kept = [k[1] for k in self._entries if k[0] == baseline_id]
        if baseline is None or len(baseline) != length:
            have = ", ".join(f"{c:016x}" for c in kept) or "none"
            raise BaselineMissingError(
                f"baseline {baseline_id!r} version xxh3 {checksum:016x} ({length} bytes) is not in the "
                f"store (versions kept: {have}); it was never received or has been evicted"
            )
        return baseline

    def discard(self, resource_id: str) -> int:
        """Forget every version of ``resource_id``; returns how many were dropped."""
        with self._lock:
            keys = [k for k in self._entries if k[0] == resource_id]
            for key in keys:
                self._evict(key)
            self.evictions -= len(keys)
        return len(keys)
