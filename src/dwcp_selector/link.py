"""What we know about the network path and the nodes before a transfer starts.

:class:`LinkState` and :class:`SystemState` are the inputs the cost model (``costmodel.py``) prices a
transfer with, and the link half of the selector's features. :data:`LINK_CLASSES` is the table of
DESIGN section 3: the parameter ranges of each link class, which the workload generator draws from, and
the typical values the CLI uses when the user names a class but not its parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError

__all__ = [
    "LINK_CLASSES",
    "LinkClass",
    "LinkState",
    "SystemState",
    "link_from_class",
]


@dataclass(frozen=True, slots=True)
class LinkState:
    """The path between sender and receiver, as measured before the transfer.

    ``capacity_bps`` is the raw link rate in bit/s, ``utilization`` the share of it other traffic uses
    (0 ≤ u < 1), ``rtt_s`` the round-trip time in seconds, ``loss`` the packet loss probability and
    ``jitter_s`` the RTT's standard deviation. ``link_type`` names the class (dc, metro, wan, edge) when
    known.

    >>> link = LinkState(capacity_bps=1e9, rtt_s=0.01, loss=0.0, utilization=0.5)
    >>> link.available_bps
    500000000.0
    """

    capacity_bps: float
    rtt_s: float
    loss: float = 0.0
    utilization: float = 0.0
    jitter_s: float = 0.0
    link_type: str | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.capacity_bps) and self.capacity_bps > 0):
            raise ConfigError(f"link capacity must be a positive number of bit/s, got {self.capacity_bps!r}")
        if not (math.isfinite(self.rtt_s) and self.rtt_s > 0):
            raise ConfigError(f"link RTT must be a positive number of seconds, got {self.rtt_s!r}")
        if not (0.0 <= self.loss < 1.0):
            raise ConfigError(f"link loss must be a probability in [0, 1), got {self.loss!r}")
        if not (0.0 <= self.utilization < 1.0):
            raise ConfigError(f"link utilization must be in [0, 1), got {self.utilization!r}")
        if not (math.isfinite(self.jitter_s) and self.jitter_s >= 0):
            raise ConfigError(f"link jitter must be a non-negative number of seconds, got {self.jitter_s!r}")
        if self.link_type is not None and self.link_type not in LINK_CLASSES:
            raise ConfigError(
                f"unknown link type {self.link_type!r}; expected one of {', '.join(LINK_CLASSES)}"
            )

    @property
    def available_bps(self) -> float:
        """Bandwidth left for this transfer: capacity × (1 − utilization)."""
        return self.capacity_bps * (1.0 - self.utilization)


@dataclass(frozen=True, slots=True)
class SystemState:
    """The nodes at both ends: free CPU cores (fractions allowed) and transfers already running.

    Production nodes, not the box that measured the codecs: the workload draws 0.5 to 32 free cores.
    """

    free_cores: float = 4.0
    active_transfers: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.free_cores) and self.free_cores > 0):
            raise ConfigError(f"free cores must be a positive number, got {self.free_cores!r}")
        if self.active_transfers < 0:
            raise ConfigError(f"active transfers must be >= 0, got {self.active_transfers!r}")


@dataclass(frozen=True, slots=True)
class LinkClass:
    """One row of the link table (DESIGN section 3): ranges to draw from and typical values."""

    name: str
    capacity_bps: tuple[float, float]
    rtt_s: tuple[float, float]
    loss: tuple[float, float]
    utilization: tuple[float, float]

    @property
    def typical(self) -> LinkState:
        """A representative link of the class: log-midpoints of capacity, RTT and loss, mean utilization.

        A class whose loss range starts at 0 takes a tenth of its upper loss bound as typical.
        """
        lo_loss, hi_loss = self.loss
        loss = math.sqrt(lo_loss * hi_loss) if lo_loss > 0 else hi_loss / 10
        return LinkState(
            capacity_bps=_round_sig(math.sqrt(self.capacity_bps[0] * self.capacity_bps[1])),
            rtt_s=_round_sig(math.sqrt(self.rtt_s[0] * self.rtt_s[1])),
            loss=_round_sig(loss),
            utilization=round(sum(self.utilization) / 2, 3),
            link_type=self.name,
        )


def _round_sig(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


LINK_CLASSES: dict[str, LinkClass] = {
    "dc": LinkClass("dc", (10e9, 100e9), (0.05e-3, 0.5e-3), (0.0, 1e-5), (0.0, 0.8)),
    "metro": LinkClass("metro", (1e9, 10e9), (1e-3, 10e-3), (1e-6, 1e-4), (0.0, 0.8)),
    "wan": LinkClass("wan", (50e6, 2e9), (20e-3, 200e-3), (1e-5, 5e-3), (0.0, 0.9)),
    "edge": LinkClass("edge", (5e6, 200e6), (10e-3, 100e-3), (1e-4, 3e-2), (0.0, 0.9)),
}


def link_from_class(
    link_type: str,
    *,
    bandwidth_mbps: float | None = None,
    rtt_ms: float | None = None,
    loss: float | None = None,
    utilization: float | None = None,
) -> LinkState:
    """The typical link of a class, with any parameter the caller gives put in its place.

    >>> link_from_class("wan", rtt_ms=80).rtt_s
    0.08
    """
    try:
        cls = LINK_CLASSES[link_type]
    except KeyError:
        raise ConfigError(
            f"unknown link class {link_type!r}; expected one of {', '.join(LINK_CLASSES)}"
        ) from None
    t = cls.typical
    return LinkState(
        capacity_bps=bandwidth_mbps * 1e6 if bandwidth_mbps is not None else t.capacity_bps,
        rtt_s=rtt_ms / 1e3 if rtt_ms is not None else t.rtt_s,
        loss=loss if loss is not None else t.loss,
        utilization=utilization if utilization is not None else t.utilization,
        link_type=t.link_type,
    )
