"""Deterministic, salted hash assignment of experiment units to arms.

A unit (a transfer, a resource, or a node: whatever the experiment randomises) hashes, with the
experiment's salt, to a point ``u`` in [0, 1); it is in ``treatment`` when ``u < share``. The point
never changes, so raising the share from 1 % to 10 % moves only control units into treatment and none
back (assignment is sticky as the rollout grows), and two experiments with different salts split the
same units independently.

>>> a = Assignment("exp-1", share=0.10)
>>> a.arm("vm-7") == a.arm("vm-7")
True
>>> a.arm("vm-7")[0] == "treatment" or a.with_share(0.5).arm("vm-7")[0] in ("control", "treatment")
True
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from ..errors import ConfigError

__all__ = ["ARMS", "UNITS", "Assignment"]

ARMS = ("control", "treatment")
UNITS = ("transfer", "resource", "node")
_SCALE = float(1 << 64)


@dataclass(frozen=True, slots=True)
class Assignment:
    """``experiment``'s split of ``unit`` ids: ``share`` of them in treatment."""

    experiment: str
    share: float
    unit: str = "resource"
    salt: str = ""

    def __post_init__(self) -> None:
        if not self.experiment:
            raise ConfigError("an experiment needs a name")
        if not 0.0 <= self.share <= 1.0:
            raise ConfigError(f"treatment share must be in [0, 1], got {self.share}")
        if self.unit not in UNITS:
            raise ConfigError(f"experiment unit must be one of {list(UNITS)}, got {self.unit!r}")

    def point(self, unit_id: str) -> float:
        """The unit's fixed point in [0, 1) under this experiment's salt."""
        key = f"{self.salt or self.experiment}\0{unit_id}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / _SCALE

    def arm(self, unit_id: str) -> tuple[str, float]:
        """(arm, propensity): the arm of ``unit_id`` and the probability of being assigned to it."""
        if self.point(unit_id) < self.share:
            return "treatment", self.share
        return "control", 1.0 - self.share

    def with_share(self, share: float) -> Assignment:
        """The same split at another share (sticky: a treatment unit stays in treatment as it grows)."""
        return replace(self, share=share)
