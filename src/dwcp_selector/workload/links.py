"""Link and node draws for staging transfers (DESIGN section 3).

A draw picks a link class from the scenario mix, then its parameters inside the class's ranges, so the
class correlates with the parameters as it does in a real fleet: capacity, RTT and loss log-uniform
within the class, utilisation uniform, jitter a fraction of the RTT. Free cores are log-spread from 0.5
to 32 (production nodes, not the box that measured the codecs), active transfers mostly few.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..link import LINK_CLASSES, LinkState, SystemState

__all__ = ["draw_link", "draw_system"]


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def draw_link(rng: np.random.Generator, mix: Mapping[str, float]) -> LinkState:
    """A link of a class drawn from ``mix`` (class → share), its parameters drawn within the class."""
    names = list(mix)
    p = np.array([mix[n] for n in names], dtype=float)
    cls = LINK_CLASSES[names[int(rng.choice(len(names), p=p / p.sum()))]]
    lo_loss, hi_loss = cls.loss
    if lo_loss == 0 and rng.random() < 0.3:
        loss = 0.0  # a clean data-centre path
    else:
        loss = _log_uniform(rng, max(lo_loss, hi_loss / 1000), hi_loss)
    rtt = _log_uniform(rng, *cls.rtt_s)
    return LinkState(
        capacity_bps=_log_uniform(rng, *cls.capacity_bps),
        rtt_s=rtt,
        loss=loss,
        utilization=float(rng.uniform(*cls.utilization)),
        jitter_s=rtt * float(rng.uniform(0.0, 0.2)),
        link_type=cls.name,
    )


def draw_system(rng: np.random.Generator) -> SystemState:
    """Free cores log-spread over 0.5..32 and a few transfers already running."""
    return SystemState(
        free_cores=round(_log_uniform(rng, 0.5, 32.0), 2),
        active_transfers=int(min(64, rng.geometric(0.3) - 1)),
    )
