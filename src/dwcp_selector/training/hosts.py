"""Re-pricing records as if other hosts had measured them: one model for a fleet of different nodes.

A record's codec CPU seconds are its measuring host's. Here each record is given a host drawn from a
range that covers real fleets: one global speed factor for the node (log2-uniform in ±``spread``), and a
factor of its own for each codec and direction (log2-normal, ``rate_sd``), because a faster CPU does not
speed every codec up alike (two 2-core hosts measured here differ 2.4× in pure Python and by other
factors per codec). The record's encode and decode seconds are multiplied by those factors, its
``f_host_*`` rates divided by them, and its costs and oracle label recomputed with the cost model, as
link draws are: re-pricing costs no measurement.

The model is given the drawn host's rates as a node would measure them: each ``f_host_*`` rate also
carries an error of its own (log2-normal, ``profile_sd``) that the costs do not. A profile is a few
seconds' snapshot of a host whose speed moves with its neighbours (decision 0008: snapshots of one host
within half an hour differ by up to 1.4× per codec and 1.9× in pure Python, and beside a competitor the
profile moved ×0.5–0.7 where the records moved ×0.9), and a model trained on exact
rates follows every such error into its choices; trained on measured-like ones, it follows a profile as
far as profiles are worth following.

What re-pricing cannot say (how far it is from measuring on the other host: cache sizes, small payloads
whose time is mostly fixed overhead) is measured by ``bench/host_reprice.py``.
"""

from __future__ import annotations

import numpy as np

from ..costmodel import CostModel, Oracle
from ..hostprofile import HOST_FEATURE_STRATEGIES, REFERENCE_RATES
from ..modeling.policy import STRATEGIES
from .data import Split

__all__ = [
    "DEFAULT_PROFILE_SD",
    "DEFAULT_RATE_SD",
    "DEFAULT_SPREAD",
    "FLEET_SEED_OFFSETS",
    "fleet_splits",
    "reprice_for_hosts",
]

#: The node's global speed factor is drawn log2-uniform in ±this: 0.42× to 2.4× the measuring host.
DEFAULT_SPREAD = 1.25
#: Each codec's and direction's own factor around it, log2-normal with this standard deviation.
DEFAULT_RATE_SD = 0.25
#: The error of a measured profile rate, log2-normal with this standard deviation (given to the model,
#: not applied to the costs). 0.4 was sized for single-snapshot profiles; long-run profiles move about
#: 0.05, and on two CPU models' records 0.2 gave the lower validation regret (decision 0008).
DEFAULT_PROFILE_SD = 0.2


#: Evaluation splits re-priced for a fleet, and their seeds' offsets from the training seed (train and
#: validation take +0 and +1): seeds the training never drew.
FLEET_SEED_OFFSETS: dict[str, int] = {"test": 2, "holdout": 3}


def fleet_splits(
    splits: dict[str, Split], cost_model: CostModel, seed: int, names: tuple[str, ...] = ("test", "holdout")
) -> dict[str, Split]:
    """``<name>_fleet`` for each of ``names`` present: the split re-priced on hosts of its own."""
    out = {}
    for name in names:
        if name in splits:
            fleet = reprice_for_hosts(splits[name], cost_model, seed + FLEET_SEED_OFFSETS[name])
            fleet.name = f"{name}_fleet"
            out[fleet.name] = fleet
    return out


def _rates(split: Split, name: str) -> np.ndarray:
    """The measuring host's rate ``name`` of every record (the reference rate where none was stored)."""
    col = split.cols.get(f"f_{name}")
    ref = REFERENCE_RATES[name]
    if col is None:
        return np.full(split.n, ref)
    v = col.astype(np.float64)
    return np.where(np.isfinite(v) & (v > 0), v, ref)


def reprice_for_hosts(
    split: Split,
    cost_model: CostModel,
    seed: int,
    *,
    spread: float = DEFAULT_SPREAD,
    rate_sd: float = DEFAULT_RATE_SD,
    profile_sd: float = DEFAULT_PROFILE_SD,
) -> Split:
    """A copy of ``split`` with every record re-priced on a host of its own (deterministic in ``seed``),
    and the host's rates as the node measures them (``profile_sd``)."""
    n = split.n
    rng = np.random.default_rng([seed, 0x4057])
    err = np.random.default_rng([seed, 0x9F0E])  # its own stream: the host draws stay as they were

    def measured(rate: np.ndarray) -> np.ndarray:
        return rate * np.exp2(err.normal(0.0, profile_sd, n)) if profile_sd > 0 else rate

    g = rng.uniform(-spread, spread, n)
    cols = dict(split.cols)
    size = split.cols["f_payload_bytes"].astype(np.float64)
    cap, util, rtt, loss, cores = (
        split.cols[c].astype(np.float64)
        for c in ("f_capacity_bps", "f_utilization", "f_rtt_s", "f_loss", "f_free_cores")
    )
    costs = np.full((n, len(STRATEGIES)), np.inf)
    for j, s in enumerate(STRATEGIES):
        if s in HOST_FEATURE_STRATEGIES:
            fe = np.exp2(g + rng.normal(0.0, rate_sd, n))
            fd = np.exp2(g + rng.normal(0.0, rate_sd, n))
            cols[f"f_host_{s}_encode_bps"] = measured(_rates(split, f"host_{s}_encode_bps") / fe)
            cols[f"f_host_{s}_decode_bps"] = measured(_rates(split, f"host_{s}_decode_bps") / fd)
        else:  # none: a copy, which follows the node's speed alone
            fe = fd = np.exp2(g)
        b = split.cols[f"o_{s}_bytes"].astype(np.float64)
        e = split.cols[f"o_{s}_encode_s"].astype(np.float64) * fe
        d = split.cols[f"o_{s}_decode_s"].astype(np.float64) * fd
        cols[f"o_{s}_encode_s"], cols[f"o_{s}_decode_s"] = e, d
        offered = np.isfinite(split.cols[f"cost_{s}_s"].astype(np.float64))
        ok = offered & np.isfinite(b) & np.isfinite(e) & np.isfinite(d)
        t = cost_model.transfer_time_array(
            size, np.nan_to_num(b), np.nan_to_num(e), np.nan_to_num(d), cap, util, rtt, loss, cores, s
        )
        costs[:, j] = np.where(ok, t, np.inf)
        cols[f"cost_{s}_s"] = np.where(ok, t, np.nan)
    cols["f_host_python_ops_s"] = measured(
        _rates(split, "host_python_ops_s") / np.exp2(g + rng.normal(0, rate_sd, n))
    )
    labels = Oracle(cost_model).label_array(costs)
    best = costs[np.arange(n), labels]
    others = costs.copy()
    others[np.arange(n), labels] = np.inf
    runner = others.min(axis=1)
    cols["oracle_label"] = np.asarray([STRATEGIES[i] for i in labels], dtype=object)
    cols["oracle_cost_s"] = best
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["runner_up_gap"] = np.where(np.isfinite(runner), runner / best - 1.0, np.nan)
    return Split(split.name, cols)
