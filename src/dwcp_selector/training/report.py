"""A self-contained HTML page of a selection model's evaluation: tables and plots of every metric.

Stage: training / evaluation reporting. Input is the dict :func:`.evaluation.evaluate_choices` (or
:func:`.policy_eval.evaluate_artifact`) returns with ``with_arrays=True``, plus optional training extras
(learning curves, SHAP importances, the candidate comparison, cross-validation folds, notes). Output is one
HTML file with the plots embedded as base64 PNG: no external assets, no JavaScript, so it can be attached
to a model artifact or a review and opened anywhere.

Fractions (rates, regret, gains) are shown as percentages; regret is realized / oracle time - 1, gains are
baseline time / model time - 1 (aggregate: over summed times; per transfer: mean of the ratios).
"""

from __future__ import annotations

import base64
import html
import io
import math
import numbers
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ..link import LINK_CLASSES
from ..modeling.policy import STRATEGIES

# headless: the report is rendered by the training CLI and by tests, never shown on a display
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["render_report", "write_report"]

_DASH = "–"
_BASELINE_NAMES = ("heuristic", "static", "probe")
_TIERS = ("fast", "light", "rich")
_DPI = 100
# a step plot of millions of points costs seconds to rasterize and looks the same as a few thousand
_MAX_CURVE_POINTS = 2000
# regret is often exactly 0 (the oracle's own choice); the offset keeps it on a log axis
_REGRET_FLOOR = 1e-4
_LINK_COLOURS = {"dc": "#1f77b4", "metro": "#2ca02c", "wan": "#ff7f0e", "edge": "#d62728"}
_BASELINE_COLOURS = {"heuristic": "#9467bd", "static": "#8c564b", "probe": "#17becf"}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #333; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; padding-bottom: .15em; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: .92em; }
th, td { border: 1px solid #ddd; padding: .25em .7em; }
th { background: #f3f3f3; text-align: left; }
td { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child { text-align: left; }
tr.best td { font-weight: 600; background: #eef6ee; }
tr.agg td { font-style: italic; background: #fafafa; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
p.hint { color: #555; font-size: .9em; }
p.missing { color: #888; font-style: italic; }
nav ul { columns: 2; padding-left: 1.2em; }
code { background: #f5f5f5; padding: 0 .2em; }
"""


def _is_num(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _pct(x: Any, *, signed: bool = False) -> str:
    if not _is_num(x):
        return _DASH if x is None else str(x)
    v = float(x)
    if not math.isfinite(v):
        return str(v)
    return f"{v * 100:+.2f} %" if signed else f"{v * 100:.2f} %"


def _seconds(x: Any) -> str:
    if not _is_num(x):
        return _DASH if x is None else str(x)
    v = float(x)
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a == 0:
        return "0 s"
    if a < 1e-3:
        return f"{v * 1e6:.1f} µs"
    if a < 1:
        return f"{v * 1e3:.2f} ms"
    return f"{v:.2f} s"


def _bytes(x: Any) -> str:
    if not _is_num(x):
        return _DASH if x is None else str(x)
    v = float(x)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(v) >= scale:
            return f"{v / scale:.2f} {unit}"
    return f"{v:.0f} B"


def _plain(x: Any) -> str:
    if x is None or (isinstance(x, Mapping | list | tuple) and not x):
        return _DASH
    if isinstance(x, bool) or isinstance(x, str):
        return str(x)
    if isinstance(x, numbers.Integral):
        return f"{int(x):,}"
    if _is_num(x):
        v = float(x)
        if math.isfinite(v) and v.is_integer() and abs(v) < 1e15:
            return f"{int(v):,}"
        return f"{v:.4g}"
    if isinstance(x, Mapping):
        return ", ".join(f"{k}={_by_key(str(k), v)}" for k, v in x.items())
    if isinstance(x, list | tuple):
        return ", ".join(_plain(v) for v in x)
    return str(x)


_FRACTION_HINTS = ("rate", "accuracy", "regret", "gain", "gap", "share", "precision", "recall", "f1", "ece")


def _by_key(key: str, x: Any) -> str:
    """Format by what the key's name says the value is (used for caller-supplied records)."""
    if not _is_num(x):
        return _plain(x)
    k = key.lower()
    if k.endswith("_s") or k.endswith("seconds"):
        return _seconds(x)
    if "bytes" in k:
        return _bytes(x)
    if any(h in k for h in _FRACTION_HINTS) and "points" not in k:
        return _pct(x, signed="gain" in k)
    return _plain(x)


def _num_or_none(x: Any) -> float | None:
    if not _is_num(x):
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, row_classes: Sequence[str] | None = None
) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes is not None and i < len(row_classes) else ""
        attr = f' class="{_e(cls)}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv_table(pairs: Iterable[tuple[str, str]], headers: tuple[str, str] = ("metric", "value")) -> str:
    return _table(headers, [[k, v] for k, v in pairs])


def _img(uri: str | None, alt: str) -> str:
    if uri is None:
        return f'<p class="missing">{_e(alt)}: nothing to plot.</p>'
    return f'<figure><img src="{uri}" alt="{_e(alt)}"></figure>'


def _hint(text: str) -> str:
    return f'<p class="hint">{_e(text)}</p>'


def _columns(records: Sequence[Mapping[str, Any]], first: Sequence[str]) -> list[str]:
    """Columns for caller-supplied dicts: ``first`` when present, then every other key as it appears."""
    cols = [c for c in first if any(c in r for r in records)]
    for r in records:
        cols += [str(k) for k in r if str(k) not in cols]
    return cols


def _fig_uri(fig: Figure) -> str:
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thin(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, empirical CDF) of sorted values, at most ``_MAX_CURVE_POINTS`` of them."""
    n = len(sorted_values)
    cdf = np.arange(1, n + 1, dtype=np.float64) / n
    if n > _MAX_CURVE_POINTS:
        idx = np.unique(np.linspace(0, n - 1, _MAX_CURVE_POINTS).astype(np.int64))
        return sorted_values[idx], cdf[idx]
    return sorted_values, cdf


def _strategy_labels(k: int) -> list[str]:
    return list(STRATEGIES) if k == len(STRATEGIES) else [str(i) for i in range(k)]


def _plot_confusion(confusion: Any) -> str | None:
    if confusion is None:
        return None
    c = np.asarray(confusion, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.size == 0:
        return None
    k = c.shape[0]
    row_sum = c.sum(axis=1, keepdims=True)
    # colour by share of the oracle row, so rare labels are as readable as common ones
    share = np.divide(c, row_sum, out=np.zeros_like(c), where=row_sum > 0)
    labels = _strategy_labels(k)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            colour = "white" if share[i, j] > 0.55 else "#222"
            ax.text(
                j,
                i,
                f"{int(c[i, j]):,}\n{share[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=8,
                color=colour,
            )
    ax.set_xticks(range(k), labels)
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("chosen")
    ax.set_ylabel("oracle")
    ax.set_title("Confusion matrix (colour: share of oracle row)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _fig_uri(fig)


def _plot_reliability(calibration: Any) -> str | None:
    if not isinstance(calibration, Mapping):
        return None
    bins = [b for b in calibration.get("bins") or [] if isinstance(b, Mapping)]
    pts = [
        (float(b["confidence"]), float(b["accuracy"]), int(b.get("n", 0)))
        for b in bins
        if _num_or_none(b.get("confidence")) is not None and _num_or_none(b.get("accuracy")) is not None
    ]
    if not pts:
        return None
    conf = np.array([p[0] for p in pts])
    acc = np.array([p[1] for p in pts])
    n = np.array([p[2] for p in pts], dtype=np.float64)
    ece = _num_or_none(calibration.get("ece"))
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="perfect calibration")
    ax.plot(conf, acc, color="#1f77b4", linewidth=1.2)
    sizes = 20 + 180 * n / max(float(n.max()), 1.0)
    ax.scatter(conf, acc, s=sizes, color="#1f77b4", alpha=0.8, zorder=3, label="bin (area ∝ rows)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("mean confidence of the chosen strategy")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability" + (f" (ECE = {ece * 100:.2f} %)" if ece is not None else ""))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _fig_uri(fig)


def _link_order(keys: Iterable[Any]) -> list[str]:
    present = [str(k) for k in keys]
    known = [k for k in LINK_CLASSES if k in present]
    return known + sorted(k for k in set(present) if k not in LINK_CLASSES)


def _plot_regret(arrays: Mapping[str, Any]) -> str | None:
    if arrays.get("regret") is None or arrays.get("links") is None:
        return None
    regret = np.asarray(arrays["regret"], dtype=np.float64)
    links = np.asarray(arrays["links"], dtype=object)
    if regret.size == 0 or links.shape != regret.shape:
        return None
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    drawn = 0
    for link in _link_order(set(links.tolist())):
        r = regret[(links == link) & np.isfinite(regret)]
        if r.size == 0:
            continue
        # regret below 0 would only be float noise around the oracle itself
        x, y = _thin(np.sort(np.clip(r, 0.0, None)) + _REGRET_FLOOR)
        label = f"{link} (n={r.size:,}, mean {r.mean() * 100:.2f} %)"
        ax.step(x, y, where="post", label=label, color=_LINK_COLOURS.get(link))
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(f"regret + {_REGRET_FLOOR:g}   (realized / oracle time - 1)")
    ax.set_ylabel("share of transfers ≤ x")
    ax.set_title("Regret distribution per link type (CDF)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return _fig_uri(fig)


def _plot_gain(arrays: Mapping[str, Any]) -> str | None:
    base = arrays.get("baselines")
    if arrays.get("realized") is None or not isinstance(base, Mapping):
        return None
    realized = np.asarray(arrays["realized"], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    drawn = 0
    for name in _BASELINE_NAMES:
        if base.get(name) is None:
            continue
        t = np.asarray(base[name], dtype=np.float64)
        if t.shape != realized.shape:
            continue
        ok = np.isfinite(t) & np.isfinite(realized) & (t > 0) & (realized > 0)
        if not ok.any():
            continue
        ratio = t[ok] / realized[ok]
        x, y = _thin(np.sort(ratio))
        faster, slower = np.mean(ratio > 1) * 100, np.mean(ratio < 1) * 100
        label = f"{name} (model faster on {faster:.1f} %, slower on {slower:.1f} %)"
        ax.step(x, y, where="post", label=label, color=_BASELINE_COLOURS.get(name))
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.axvline(1.0, color="#333", linewidth=1, linestyle="--")
    ax.set_xscale("log")
    # ratios often span less than a decade: label 1-2-5 steps in plain numbers, not overlapping minor powers
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("baseline time / model time   (> 1: the model is faster)")
    ax.set_ylabel("share of transfers ≤ x")
    ax.set_title("Per-transfer speed-up against each baseline (CDF)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    return _fig_uri(fig)


def _plot_by_link(by_link: Any) -> str | None:
    if not isinstance(by_link, Mapping):
        return None
    groups = [
        k
        for k in _link_order(by_link.keys())
        if isinstance(by_link[k], Mapping) and (by_link[k].get("rows") or 0) > 0
    ]
    if not groups:
        return None
    near = [(_num_or_none(by_link[k].get("near_optimal_rate")) or 0.0) * 100 for k in groups]
    regret = [(_num_or_none(by_link[k].get("regret_mean")) or 0.0) * 100 for k in groups]
    names = [f"{k}\n(n={int(by_link[k]['rows']):,})" for k in groups]
    colours = [_LINK_COLOURS.get(k, "#7f7f7f") for k in groups]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.5, 3.6))
    a1.bar(names, near, color=colours)
    a1.set_ylim(0, 100)
    a1.set_ylabel("near-optimal rate (%)")
    a1.set_title("Near-optimal (within 1 % of the oracle)")
    a2.bar(names, regret, color=colours)
    a2.set_ylabel("mean regret (%)")
    a2.set_title("Mean regret")
    for ax, vals in ((a1, near), (a2, regret)):
        for i, v in enumerate(vals):
            ax.annotate(f"{v:.1f}", (i, v), ha="center", va="bottom", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _fig_uri(fig)


def _plot_shap(shap: Mapping[str, Any], top: int = 20) -> str | None:
    items = [(str(k), float(v)) for k, v in shap.items() if _num_or_none(v) is not None][:top]
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 0.28 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#1f77b4")
    ax.invert_yaxis()
    ax.set_xlabel("mean |SHAP value|")
    ax.set_title(f"Feature importance (top {len(items)})")
    ax.grid(alpha=0.3, axis="x")
    return _fig_uri(fig)


def _plot_curves(curves: Mapping[str, Any]) -> str | None:
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["#1f77b4"])
    values: list[float] = []
    for i, (name, history) in enumerate(curves.items()):
        if not isinstance(history, Sequence):
            continue
        pts = [h for h in history if isinstance(h, Mapping)]
        colour = colours[i % len(colours)]
        for key, style in (("val", "-"), ("train", "--")):
            xy = [
                (float(h.get("epoch", j)), float(h[key]))
                for j, h in enumerate(pts)
                if _num_or_none(h.get(key)) is not None
            ]
            if not xy:
                continue
            ax.plot([p[0] for p in xy], [p[1] for p in xy], style, color=colour, label=f"{name} {key}")
            values += [p[1] for p in xy]
    if not values:
        plt.close(fig)
        return None
    # curves of different families share the axis, so their losses can differ by orders of magnitude
    if min(values) > 0 and max(values) / min(values) > 10:
        ax.set_yscale("log")
    ax.set_xlabel("epoch / boosting round")
    ax.set_ylabel("loss")
    ax.set_title("Learning curves (solid: validation, dashed: train)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2 if len(ax.get_lines()) > 8 else 1)
    return _fig_uri(fig)


def _plot(fn: Callable[..., str | None], arg: Any, alt: str) -> str:
    """The figure as HTML; a malformed input yields a note saying so, never a lost report."""
    before = set(plt.get_fignums())
    try:
        uri = fn(arg)
    except Exception as exc:
        # close only what the failed plot opened: a caller's own pyplot figures are not ours to close
        for num in set(plt.get_fignums()) - before:
            plt.close(num)
        return f'<p class="missing">{_e(alt)}: plot failed ({_e(type(exc).__name__)}: {_e(exc)}).</p>'
    return _img(uri, alt)


def _headline(r: Mapping[str, Any]) -> str:
    decisive = _pct(r.get("decisive_accuracy"))
    if r.get("decisive_rows") is not None:
        decisive += f" (on {_plain(r.get('decisive_rows'))} rows)"
    pairs = [
        ("rows", _plain(r.get("rows"))),
        ("near-optimal rate (within 1 % of the oracle)", _pct(r.get("near_optimal_rate"))),
        ("near-optimal rate, counting decision time", _pct(r.get("near_optimal_rate_with_decision_time"))),
        ("accuracy (chose the oracle's label)", _pct(r.get("accuracy"))),
        ("accuracy where the runner-up is ≥ 5 % worse", decisive),
        ("macro F1", _pct(r.get("macro_f1"))),
        ("regret, mean", _pct(r.get("regret_mean"))),
        ("regret, p95", _pct(r.get("regret_p95"))),
        ("regret, p99", _pct(r.get("regret_p99"))),
        ("gap to the oracle (Σ time / Σ oracle time - 1)", _pct(r.get("oracle_gap"))),
        ("mean decision time", _seconds(r.get("decision_s_mean"))),
        ("best static policy", _plain(r.get("static_policy"))),
    ]
    for name in _BASELINE_NAMES:
        agg, per = r.get(f"gain_vs_{name}"), r.get(f"per_transfer_gain_vs_{name}")
        if agg is None and per is None:
            continue
        pairs.append(
            (
                f"throughput gain vs {name} (aggregate / per transfer)",
                f"{_pct(agg, signed=True)} / {_pct(per, signed=True)}",
            )
        )
    ece = r.get("calibration", {}).get("ece") if isinstance(r.get("calibration"), Mapping) else None
    if ece is not None:
        pairs.append(("expected calibration error", _pct(ece)))
    return _kv_table(pairs)


def _baselines(r: Mapping[str, Any]) -> str | None:
    rows = [
        [
            "model",
            _pct(r.get("near_optimal_rate")),
            _pct(r.get("accuracy")),
            _pct(r.get("regret_mean")),
            _pct(r.get("regret_p95")),
            _DASH,
            _DASH,
        ]
    ]
    for name in _BASELINE_NAMES:
        b = r.get(f"baseline_{name}")
        if not isinstance(b, Mapping):
            continue
        label = f"static ({r['static_policy']})" if name == "static" and r.get("static_policy") else name
        rows.append(
            [
                label,
                _pct(b.get("near_optimal_rate")),
                _pct(b.get("accuracy")),
                _pct(b.get("regret_mean")),
                _pct(b.get("regret_p95")),
                _pct(r.get(f"gain_vs_{name}"), signed=True),
                _pct(r.get(f"per_transfer_gain_vs_{name}"), signed=True),
            ]
        )
    if len(rows) == 1:
        return None
    headers = [
        "policy",
        "near-optimal",
        "accuracy",
        "regret mean",
        "regret p95",
        "model gain (aggregate)",
        "model gain (per transfer)",
    ]
    return _table(headers, rows)


def _per_class(r: Mapping[str, Any]) -> str | None:
    per = r.get("per_class")
    if not isinstance(per, Mapping) or not per:
        return None
    order = [s for s in STRATEGIES if s in per] + [str(s) for s in per if s not in STRATEGIES]
    rows = []
    for s in order:
        m = per[s] if isinstance(per[s], Mapping) else {}
        rows.append(
            [s, _pct(m.get("precision")), _pct(m.get("recall")), _pct(m.get("f1")), _plain(m.get("support"))]
        )
    return _table(["strategy", "precision", "recall", "F1", "support (oracle rows)"], rows)


def _confusion_table(confusion: Any) -> str | None:
    c = np.asarray(confusion) if confusion is not None else None
    if c is None or c.ndim != 2 or c.shape[0] != c.shape[1] or c.size == 0:
        return None
    labels = _strategy_labels(c.shape[0])
    rows = [[f"oracle {labels[i]}"] + [_plain(int(v)) for v in c[i]] for i in range(c.shape[0])]
    return _table(["", *(f"chose {s}" for s in labels)], rows)


def _calibration_table(calibration: Any) -> str | None:
    if not isinstance(calibration, Mapping):
        return None
    bins = [b for b in calibration.get("bins") or [] if isinstance(b, Mapping)]
    if not bins:
        return None
    rows = [
        [
            f"{_plain(b.get('lo'))}–{_plain(b.get('hi'))}",
            _plain(b.get("n")),
            _pct(b.get("confidence")),
            _pct(b.get("accuracy")),
        ]
        for b in bins
    ]
    return _table(["confidence bin", "rows", "mean confidence", "accuracy"], rows)


def _group_table(groups: Any, key_name: str, order: Sequence[str] | None = None) -> str | None:
    if not isinstance(groups, Mapping) or not groups:
        return None
    keys = list(order) if order is not None else sorted(str(k) for k in groups)
    cols = [
        ("accuracy", "accuracy", False),
        ("near-optimal", "near_optimal_rate", False),
        ("regret mean", "regret_mean", False),
        ("regret p95", "regret_p95", False),
        ("gain vs heuristic", "gain_vs_heuristic", True),
        ("gain vs static", "gain_vs_static", True),
        ("gain vs probe", "gain_vs_probe", True),
        ("oracle gap", "oracle_gap", False),
    ]
    rows = []
    for k in keys:
        g = groups.get(k)
        if not isinstance(g, Mapping):
            continue
        if not g.get("rows"):
            rows.append([k, "0"] + [_DASH] * len(cols))
            continue
        rows.append([k, _plain(g.get("rows"))] + [_pct(g.get(f), signed=s) for _, f, s in cols])
    if not rows:
        return None
    return _table([key_name, "rows", *(c[0] for c in cols)], rows)


def _deployment(r: Mapping[str, Any]) -> str | None:
    parts: list[str] = []
    shares = r.get("tier_shares")
    times = r.get("decision_times")
    if isinstance(shares, Mapping) and shares:
        times = times if isinstance(times, Mapping) else {}
        keys = [t for t in _TIERS if t in shares or f"{t}_s" in times]
        keys += [str(t) for t in shares if t not in keys]
        rows = [[t, _pct(shares.get(t)), _seconds(times.get(f"{t}_s"))] for t in keys]
        parts.append(
            "<h3>Decision tiers</h3>" + _table(["tier", "share of transfers", "decision time"], rows)
        )
    elif isinstance(times, Mapping) and times:
        parts.append(
            "<h3>Decision times</h3>"
            + _kv_table([(str(k), _seconds(v)) for k, v in times.items()], ("tier", "seconds"))
        )
    policy = r.get("policy")
    if isinstance(policy, Mapping) and policy:
        parts.append(
            "<h3>Policy</h3>"
            + _hint(
                "fast path (no model: the cached decision or the fast rule) when transmit time < "
                "fast_factor × light decision time; "
                "rich tier when transmit time ≥ rich_factor × rich decision time."
            )
            + _kv_table([(str(k), _plain(v)) for k, v in policy.items()], ("parameter", "value"))
        )
    model = r.get("model")
    if isinstance(model, Mapping) and model:
        parts.append(
            "<h3>Model</h3>"
            + _kv_table([(str(k), _by_key(str(k), v)) for k, v in model.items()], ("field", "value"))
        )
    return "".join(parts) or None


def _cv_table(cv: Sequence[Mapping[str, Any]]) -> str:
    cols = _columns(cv, ("fold", "rows", "near_optimal_rate", "regret_mean", "regret_p95", "accuracy"))
    rows = [[_by_key(c, f.get(c)) for c in cols] for f in cv]
    classes = [""] * len(rows)
    mean_row, std_row = ["mean"], ["std"]
    for c in cols[1:]:
        vals = [float(f[c]) for f in cv if _num_or_none(f.get(c)) is not None]
        if len(vals) == len(cv) and vals and c != "rows":
            mean_row.append(_by_key(c, float(np.mean(vals))))
            std_row.append(_by_key(c, float(np.std(vals))))
        elif c == "rows" and vals:
            mean_row.append(_plain(int(sum(vals))) + " total")
            std_row.append("")
        else:
            mean_row.append("")
            std_row.append("")
    if len(cv) >= 2:
        rows += [mean_row, std_row]
        classes += ["agg", "agg"]
    return _table(cols, rows, row_classes=classes)


def _candidates_table(cands: Sequence[Mapping[str, Any]]) -> str:
    first = ("name", "val_regret_mean", "val_near_optimal_rate", "val_accuracy")
    cols = _columns(cands, first)
    regrets = [_num_or_none(c.get("val_regret_mean")) for c in cands]
    finite = [v for v in regrets if v is not None]
    best = min(finite) if finite else None
    classes = ["best" if best is not None and v == best else "" for v in regrets]
    rows = [[_by_key(col, c.get(col)) for col in cols] for c in cands]
    return _table(cols, rows, row_classes=classes)


def _records(x: Any) -> list[Mapping[str, Any]]:
    if not isinstance(x, Sequence) or isinstance(x, str):
        return []
    return [r for r in x if isinstance(r, Mapping)]


def render_report(report: Mapping[str, Any], *, title: str, extra: Mapping[str, Any] | None = None) -> str:
    """Return the HTML text of the report (writes nothing)."""
    ex: Mapping[str, Any] = extra or {}
    arrays = report.get("_arrays")
    arrays = arrays if isinstance(arrays, Mapping) else {}
    sections: list[tuple[str, str, str]] = []

    def add(anchor: str, heading: str, body: str | None) -> None:
        if body:
            sections.append((anchor, heading, body))

    add(
        "headline",
        "Headline metrics",
        _hint(
            "Regret = realized time (chosen strategy + decision time) / oracle time - 1. Gains are how "
            "much faster the model is than a baseline: aggregate over summed times, per transfer as the "
            "mean ratio."
        )
        + _headline(report),
    )
    base_tbl = _baselines(report)
    if base_tbl is not None:
        gain_plot = _plot(_plot_gain, arrays, "speed-up against the baselines") if arrays else ""
        add(
            "baselines",
            "Model against the baselines",
            _hint(
                "heuristic: the rule list on decision-time features; static: the best single policy on this "
                "data; probe: every strategy on a 64 KiB sample, paying its time. Positive gain: the model "
                "is faster."
            )
            + base_tbl
            + gain_plot,
        )
    cls_body = [
        _plot(_plot_confusion, report.get("confusion"), "confusion matrix"),
        _confusion_table(report.get("confusion")) or "",
        _per_class(report) or "",
    ]
    add("classes", "Per-strategy choices", "".join(cls_body) if any(cls_body[1:]) else None)
    cal = report.get("calibration")
    cal_tbl = _calibration_table(cal)
    add(
        "calibration",
        "Calibration",
        (_plot(_plot_reliability, cal, "reliability curve") + cal_tbl)
        if cal_tbl is not None
        else '<p class="missing">No confidence values: calibration not measured.</p>',
    )
    link_tbl = _group_table(
        report.get("by_link"), "link type", _link_order((report.get("by_link") or {}).keys())
    )
    link_body = [
        _plot(_plot_by_link, report.get("by_link"), "near-optimal rate and regret per link type"),
        link_tbl or "",
        _plot(_plot_regret, arrays, "regret distribution per link type") if arrays else "",
    ]
    add("links", "By link type", "".join(link_body) if link_tbl else None)
    add("types", "By payload type", _group_table(report.get("by_type"), "payload type"))
    add("deployment", "Decision tiers, policy and model", _deployment(report))

    shap = ex.get("shap")
    if isinstance(shap, Mapping) and shap:
        add("shap", "Feature importance", _plot(_plot_shap, shap, "SHAP feature importance"))
    curves = ex.get("learning_curves")
    if isinstance(curves, Mapping) and curves:
        add("curves", "Learning curves", _plot(_plot_curves, curves, "learning curves"))
    cands = _records(ex.get("candidates"))
    if cands:
        add(
            "candidates",
            "Candidates",
            _hint(
                "Validation metrics of every fitted candidate; the highlighted row has the lowest mean "
                "regret."
            )
            + _candidates_table(cands),
        )
    cv = _records(ex.get("cv"))
    if cv:
        add("cv", "Cross-validation", _cv_table(cv))
    notes = ex.get("notes")
    if isinstance(notes, Sequence) and not isinstance(notes, str) and notes:
        add("notes", "Notes", "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")

    summary = ex.get("summary")
    header = ""
    if isinstance(summary, Mapping) and summary:
        header = _kv_table([(str(k), _plain(v)) for k, v in summary.items()], ("run", ""))
    nav = (
        "<nav><ul>" + "".join(f'<li><a href="#{a}">{_e(h)}</a></li>' for a, h, _ in sections) + "</ul></nav>"
    )
    body = "".join(f'<section id="{a}"><h2>{_e(h)}</h2>{b}</section>' for a, h, b in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{_e(title)}</h1>\n{header}\n{nav}\n{body}\n"
        "</body>\n</html>\n"
    )


def write_report(
    report: Mapping[str, Any],
    path: str | pathlib.Path,
    *,
    title: str,
    extra: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Render the report and write it to ``path`` (UTF-8, parent directories created); returns the path."""
    out = pathlib.Path(path)
    text = render_report(report, title=title, extra=extra)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
