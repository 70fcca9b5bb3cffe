"""Evaluate a trained model on every split of its dataset and render ``docs/model-results.md``.

    dwcp-selector export --store sqlite:///data/staging-100k.db --out data/dataset-100k \\
        --holdout-type database
    dwcp-selector train --data data/dataset-100k --out out/model-100k --trials 12 --folds 5
    python bench/label_repeatability.py --store sqlite:///data/staging-100k.db   # optional: the ceiling
    python bench/model_report.py --model out/model-100k --data data/dataset-100k \
        [--fresh NAME=DIR ...]   # collections made after training (export --all-test), e.g. another host
    python bench/model_report.py --model out/model-100k --add-fresh --fresh NAME=DIR \
        [--ceiling NAME=bench/results/label_repeatability_X.json]   # one more collection, later

``--add-fresh`` evaluates only the ``--fresh`` collections and merges them into the stored results (the
model must be the one they describe), so a collection made on another host, another day, joins the page
without the training dataset. ``--ceiling`` gives a collection the label repeatability of its own records
(``bench/label_repeatability.py --fraction 1`` on its store): the near-optimal rate any selector trained
on such labels could reach there.

``--fresh`` evaluates the model on each such collection (by link class, and on its ``executable``
records, the real source no model trains on); the results of ``bench/loaded_collection.py`` go beside them.

Writes ``bench/results/model.json`` (the training summary and the evaluation of each split) and the page;
every figure in the page comes from that JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from _common import (
    HEADLINE,
    RESULTS,
    encoders_of,
    headline_figures,
    label_provenance,
    machine,
    provenance_note,
    rerender,
    write,
)
from dwcp_selector.costmodel import CostModel
from dwcp_selector.modeling.artifact import ModelArtifact, load_artifact
from dwcp_selector.modeling.decide import Decider
from dwcp_selector.modeling.policy import FastRule, PolicyParams
from dwcp_selector.modeling.runtime import TieredModel
from dwcp_selector.modeling.timing import measure_decision_times
from dwcp_selector.training.data import Split, load_dataset
from dwcp_selector.training.policy_eval import evaluate_artifact, fit_policy, model_outputs

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "model-results.md"


def pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x * 100:.{digits}f} %"


def signed(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:+.1f} %"


def headline(name: str, r: dict[str, Any]) -> str:
    return (
        f"| {name} | {r['rows']:,} | {pct(r['near_optimal_rate'])} | {pct(r['decisive_accuracy'])} | "
        f"{pct(r['accuracy'])} | {r['macro_f1']:.3f} | {pct(r['regret_mean'])} | {pct(r['regret_p95'])} | "
        f"{signed(r['gain_vs_heuristic'])} | {signed(r['gain_vs_static'])} | {signed(r['gain_vs_probe'])} | "
        f"{signed(r['per_transfer_gain_vs_probe'])} | {pct(r['oracle_gap'])} |"
    )


def _fresh(artifact: ModelArtifact, data: Path, ceiling: Path | None = None) -> dict[str, Any]:
    """The model on a collection made after its training: overall, by link, on the held-out source (and
    the labels' own ceiling there, when ``ceiling`` names a repeatability result of the collection)."""
    splits, _, manifest = load_dataset(data)
    split = splits["test"]
    r = evaluate_artifact(artifact, split)
    hosts = split.cols.get("host_cpu")
    profiles = split.cols.get("host_profile_id")
    return {
        "data": str(data),
        "created_at": manifest.get("created_at"),
        "host_cpu": sorted({str(h) for h in hosts}) if hosts is not None else [],
        "host_profiles": len({str(p) for p in profiles}) if profiles is not None else 0,
        **headline_figures(r),
        "executable": {m: r["by_type"].get("executable", {}).get(m) for m in HEADLINE},
        "ceiling": _ceiling(ceiling) if ceiling is not None else None,
    }


def _ceiling(path: Path) -> dict[str, Any]:
    rep = json.loads(path.read_text())
    return {
        "near_optimal_rate": rep["near_optimal_rate"],
        "decisive_agreement": rep["decisive_agreement"],
        "rows": rep["rows"],
        "by_link": {k: v["near_optimal_rate"] for k, v in rep["by_link"].items()},
        "command": rep["command"],
        "machine": rep["machine"],
    }


def _fresh_lines(doc: dict[str, Any]) -> list[str]:
    fresh, loaded = doc.get("fresh") or {}, doc.get("loaded") or {}
    if not fresh and not loaded:
        return []
    lines = [
        "",
        "## Fresh collections, never seen in training",
        "",
        "Each is a `collect` of its own (other seeds) exported with `--all-test`; `executable` is the real "
        "source held out of training entirely; the host column names the CPU, the cores the collector could "
        "use (1 when pinned with `taskset`), the host profiles its records carry and the day. Each cell: "
        "near-optimal / mean regret / p95 regret. An evaluation charges the decision times the model's "
        "manifest carries, so it does not depend on the host that runs it; rows added later "
        "(`--add-fresh`) say when and where they were evaluated.",
        "",
        "| collection | host | rows | all | decisive acc. | dc | metro | wan | edge | executable |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ceilings: list[str] = []

    def cell(r: dict[str, Any] | None) -> str:
        if not r or r.get("near_optimal_rate") is None:
            return "–"
        return f"{pct(r['near_optimal_rate'])} / {pct(r['regret_mean'])} / {pct(r['regret_p95'])}"

    for name, r in fresh.items():
        bl = r["by_link"]
        later = r.get("evaluated")
        where = f" (evaluated {later['date']}, {later['cpu']})" if later else ""
        lines.append(
            f"| {name}{where} | {', '.join(r['host_cpu'])} ({r['host_profiles']} "
            f"profile{'s' if r['host_profiles'] != 1 else ''}), "
            f"{r['created_at'][:10]} | "
            f"{r['rows']:,} | {cell(r)} | {pct(r['decisive_accuracy'])} | "
            + " | ".join(cell(bl.get(k)) for k in ("dc", "metro", "wan", "edge"))
            + f" | {cell(r['executable'])} |"
        )
        c = r.get("ceiling")
        if c:
            links = ", ".join(f"{k} {pct(v)}" for k, v in c["by_link"].items())
            ceilings.append(
                f"**{name}**: its own labels measured twice (`{c['command']}`, {c['machine']['cpu']}, "
                f"{c['machine']['date'][:10]}) agree near-optimally on {pct(c['near_optimal_rate'])} of "
                f"{c['rows']:,} records ({links}; decisive labels agree on {pct(c['decisive_agreement'])}): "
                f"the ceiling of any selector trained on such labels, against the model's "
                f"{pct(r['near_optimal_rate'])}."
            )
    for text in ceilings:
        lines += ["", text]
    for d in loaded.values():
        moved = d["cpu_rate_loaded_over_quiet"]
        prof = d["profile_rate_loaded_over_quiet"]
        kind = d.get("competitor", "cpu")
        history = (
            f", one node's profile history shared by both runs ({d['history']} quiet calibrations, one "
            "under load; the records carry its long-run profile)"
            if d.get("history")
            else ", each run with a profile of its own"
        )
        evaluation = d.get("evaluation") or {}
        judged = (
            " The model "
            + f"`{d.get('model')}`: "
            + ", ".join(
                f"{name} {pct(r['near_optimal_rate'])} near-optimal, {pct(r['regret_mean'])} mean regret"
                for name, r in evaluation.items()
            )
            + "."
            if evaluation
            else ""
        )
        lines += [
            "",
            f"**The same records beside a {kind}-bound competitor on the collector's core{history}** "
            f"(`{d['command']}`, {d['machine']['cpu']}, {d['machine']['date']}): wall time per record "
            f"×{d['wall_slowdown']:.2f}; the CPU-time rates the labels price moved "
            + ", ".join(f"{k.replace('_', ' ')} ×{v:.2f}" for k, v in moved.items())
            + "; the host profile "
            + ", ".join(f"{k.replace('_', ' ')} ×{v:.2f}" for k, v in prof.items())
            + f" (loaded / quiet). Labels agree on {pct(d['label_agreement'])}.{judged}",
        ]
    return lines


def _by_host(artifact: ModelArtifact, splits: dict[str, Split]) -> dict[str, dict[str, Any]]:
    """The test and holdout splits cut by the CPU that measured each record, when they hold several."""
    out: dict[str, dict[str, Any]] = {}
    for name in ("test", "holdout"):
        split = splits.get(name)
        hosts = split.cols.get("host_cpu") if split is not None else None
        if split is None or hosts is None:
            continue
        names = np.asarray([str(h) for h in hosts], dtype=object)
        if len(set(names)) < 2:
            continue
        out[name] = {
            h: headline_figures(evaluate_artifact(artifact, split.take(np.flatnonzero(names == h))))
            for h in sorted(set(names))
        }
    return out


def _host_lines(by_host: dict[str, dict[str, Any]]) -> list[str]:
    if not by_host:
        return []
    lines = [
        "",
        "The same splits cut by the CPU whose collection measured each record (a fleet's store holds several "
        "hosts' records; the model sees each record's own host profile). Each cell: near-optimal / mean "
        "regret / p95 regret.",
        "",
        "| split | host | rows | all | decisive acc. | dc | metro | wan | edge |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for split, hosts in by_host.items():
        for host, r in hosts.items():
            links = [r["by_link"].get(k) for k in ("dc", "metro", "wan", "edge")]
            cells = [
                "–"
                if not x
                else f"{pct(x['near_optimal_rate'])} / {pct(x['regret_mean'])} / {pct(x['regret_p95'])}"
                for x in [r, *links]
            ]
            lines.append(
                f"| {split} | {host} | {r['rows']:,} | {cells[0]} | {pct(r['decisive_accuracy'])} | "
                + " | ".join(cells[1:])
                + " |"
            )
    return lines


def render(doc: dict[str, Any]) -> str:
    s, ev, m = doc["training"], doc["evaluation"], doc["machine"]
    test = ev.get("test") or ev["val"]
    lines = [
        "# Model results",
        "",
        "Generated by `python bench/model_report.py` (commands in its docstring) on "
        f"{m['date']}, {m['cpu']}, {m['cores']} cores, Python {m['python']}, dwcp-selector "
        f"{m['dwcp_selector']}. Definitions: DESIGN section 5 and `docs/training.md`. Gains are aggregate "
        "(Σ baseline time / Σ model time − 1) unless marked per transfer; every model figure includes the "
        "decision's own time, measured on this host.",
        "",
        provenance_note(doc.get("labels")),
        "",
        f"Chosen by validation mean regret: **{s['chosen']}** "
        f"({doc['model']['size_bytes']:,} bytes of ONNX), "
        f"trained in {s['seconds'] / 60:.1f} min on {doc['dataset_rows']['train']:,} records. Decision "
        "times (median, this host): "
        + ", ".join(f"{k.removesuffix('_s')} {v * 1e6:.1f} µs" for k, v in s["decision_times"].items())
        + f"; policy: fast path below {s['policy']['fast_factor']:g} × the light decision time of transmit "
        f"time, rich tier from {s['policy']['rich_factor']:g} × the rich decision time.",
        "",
        "## Every split",
        "",
        "| split | rows | near-optimal | decisive acc. | accuracy | macro-F1 | mean regret | p95 regret "
        "| vs heuristic | vs best static | vs probe | vs probe, per transfer | oracle gap |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("train", "val", "test", "holdout", "test_fleet", "holdout_fleet"):
        if name in ev:
            lines.append(headline(name, ev[name]))
    lines += _host_lines(doc.get("by_host") or {})
    if "test_fleet" in ev:
        lines += [
            "",
            "`test_fleet` and `holdout_fleet` are the test and holdout records re-priced as if other hosts "
            "had measured them: each record on a host of its own, 0.42×–2.4× this one's speed with each "
            "codec's own factor (`training/hosts.py`, a seed the training never used), and the model given "
            "that host's profile. One model serves the whole range.",
        ]
    nf = doc["without_fast_path"]
    lines += [
        "",
        f"Without the fast path (the light model on every transfer, its time charged) the test split gives "
        f"near-optimal {pct(nf['near_optimal_rate'])}, decisive accuracy {pct(nf['decisive_accuracy'])}, "
        f"accuracy {pct(nf['accuracy'])}, but mean regret {pct(nf['regret_mean'])} and p95 "
        f"{pct(nf['regret_p95'])} (dc: {pct(nf['by_link']['dc']['regret_mean'])} mean): on short transfers "
        "the decision would cost more than a better choice saves, which is why the fitted policy skips it.",
    ]
    fr = doc["fast_rule"]
    lines += [
        "",
        f"The fast path answers from the fast rule ({fr['cells']} cells, fitted on the training split). The "
        "same model and policy with `none` on every fast-path transfer instead, as first designed:",
        "",
        "| split | fast-path share | fast path | near-optimal | mean regret | p95 regret |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for split, ab in fr["ablation"].items():
        for label, key in (("fast rule", "with_rule"), ("`none`", "none_only")):
            f = ab[key]
            lines.append(
                f"| {split} | {pct(f['fast_share'])} | {label} | {pct(f['near_optimal_rate'])} | "
                f"{pct(f['regret_mean'])} | {pct(f['regret_p95'])} |"
            )
    sr = doc.get("single_row_paths")
    if sr:
        lines += [
            "",
            "What the decision's own time is worth: the same model with its light decision built and run "
            "compiled (as shipped) and in onnxruntime (the row built in Python, one `run` per decision), "
            "both timed now on this host, each with its policy fitted on validation for those times "
            "(test split):",
            "",
            "| single rows | light decision | fast factor | fast-path share | near-optimal | mean regret | "
            "dc mean regret |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {name} | {f['light_us']:.1f} µs | {f['fast_factor']:g} | {pct(f['fast_share'])} | "
            f"{pct(f['near_optimal_rate'])} | {pct(f['regret_mean'])} | {pct(f['dc_regret_mean'])} |"
            for name, f in sr.items()
        ]
    lines += _fresh_lines(doc)
    gap = (ev["train"]["near_optimal_rate"] - ev["val"]["near_optimal_rate"]) * 100
    lines += [
        "",
        f"Train–validation gap: {gap:.2f} points of near-optimal rate. The holdout split is every session "
        f"of the payload families {', '.join(doc['holdout_types'])}, which no model saw in training. The "
        f"best static strategy on the test split is `{test['static_policy']}`.",
        "",
        "## Test split by link class",
        "",
        "| link | rows | near-optimal | mean regret | p95 regret | vs heuristic | vs static | vs probe |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for link, r in test["by_link"].items():
        if r.get("rows"):
            lines.append(
                f"| {link} | {r['rows']:,} | {pct(r['near_optimal_rate'])} | {pct(r['regret_mean'])} | "
                f"{pct(r['regret_p95'])} | {signed(r['gain_vs_heuristic'])} | "
                f"{signed(r['gain_vs_static'])} | {signed(r['gain_vs_probe'])} |"
            )
    rep = doc.get("label_repeatability")
    if rep:
        lines += [
            "",
            "## How good labels can be: the same transfers measured twice",
            "",
            f"`{rep['command']}` — measured {rep['machine']['date']}: {rep['rows']:,} records of "
            f"{rep['sessions']} sessions (of {rep['of_sessions']}) of the staging store measured again on "
            "this host, every transfer identical but for its timings. The first measurement's label, taken "
            "as a decision and judged by the second measurement's costs, is the ceiling of any selector "
            "learned from such labels; the model's near-optimal rate on the test split beside it (model "
            "tier alone: every transfer decided by the light model, no fast path; with the policy).",
            "",
            "| link | labels agree | decisive agree | ceiling: near-optimal | model tier | with the policy |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        model_tier = doc["model_tier_near_optimal"]
        for link, r in [("all", rep), *rep["by_link"].items()]:
            policy = (
                test["near_optimal_rate"] if link == "all" else test["by_link"][link]["near_optimal_rate"]
            )
            lines.append(
                f"| {link} | {pct(r['label_agreement'])} | {pct(r['decisive_agreement'])} | "
                f"{pct(r['near_optimal_rate'])} | {pct(model_tier.get(link))} | {pct(policy)} |"
            )
    lines += [
        "",
        "## By payload family (test, and the held-out families)",
        "",
        "| family | split | rows | near-optimal | mean regret | p95 regret | vs heuristic | vs probe |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for split in ("test", "holdout"):
        for family, r in ev.get(split, {}).get("by_type", {}).items():
            if r.get("rows"):
                lines.append(
                    f"| {family} | {split} | {r['rows']:,} | {pct(r['near_optimal_rate'])} | "
                    f"{pct(r['regret_mean'])} | {pct(r['regret_p95'])} | {signed(r['gain_vs_heuristic'])} | "
                    f"{signed(r['gain_vs_probe'])} |"
                )
    lines += [
        "",
        "## Per class (test)",
        "",
        "Beside the model, the labels' own ceiling: the first measurement's label against the second's "
        "(`bench/label_repeatability.py`, section above), where that was measured.",
        "",
        "| label | support | precision | recall | F1 | ceiling: precision | ceiling: recall |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    ceiling = (rep or {}).get("per_class", {})
    for label, r in test["per_class"].items():
        c = ceiling.get(label, {})
        lines.append(
            f"| {label} | {r['support']:,} | {pct(r['precision'])} | {pct(r['recall'])} | {r['f1']:.3f} | "
            f"{pct(c.get('precision'))} | {pct(c.get('recall'))} |"
        )
    conf = test["confusion"]
    names = list(test["per_class"])
    lines += [
        "",
        "Confusion matrix (rows: oracle label, columns: choice):",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    lines += [f"| {names[i]} | " + " | ".join(f"{v:,}" for v in row) + " |" for i, row in enumerate(conf)]
    lines += [
        "",
        "## Baselines on the test split",
        "",
        "| policy | near-optimal | accuracy | mean regret | p95 regret |",
        "|---|---:|---:|---:|---:|",
        f"| model ({s['chosen']}) | {pct(test['near_optimal_rate'])} | {pct(test['accuracy'])} | "
        f"{pct(test['regret_mean'])} | {pct(test['regret_p95'])} |",
    ]
    for b in ("heuristic", "static", "probe"):
        r = test[f"baseline_{b}"]
        label = f"static ({test['static_policy']})" if b == "static" else b
        lines.append(
            f"| {label} | {pct(r['near_optimal_rate'])} | {pct(r['accuracy'])} | {pct(r['regret_mean'])} | "
            f"{pct(r['regret_p95'])} |"
        )
    lines += [
        "",
        "## Candidates (validation)",
        "",
        "| candidate | mean regret | near-optimal | accuracy | light decision µs | fit s "
        "| hyper-parameters |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in s["candidates"]:
        t = c["decision_times"] or {}
        hp = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in c["hyperparameters"].items()}
        lines.append(
            f"| {c['name']} | {pct(c['val_regret_mean'])} | {pct(c['val_near_optimal_rate'])} | "
            f"{pct(c['val_accuracy'])} | {t.get('light_s', 0) * 1e6:.1f} | {c['fit_seconds']:.0f} | "
            f"`{json.dumps(hp)}` |"
        )
    if s.get("cv"):
        lines += [
            "",
            f"## {len(s['cv'])}-fold cross-validation of {s['chosen']} (grouped by session, training split)",
            "",
            "| fold | rows | near-optimal | mean regret | p95 regret | accuracy |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {f['fold']} | {f['rows']:,} | {pct(f['near_optimal_rate'])} | {pct(f['regret_mean'])} | "
            f"{pct(f['regret_p95'])} | {pct(f['accuracy'])} |"
            for f in s["cv"]
        ]
    if s.get("shap"):
        lines += [
            "",
            "## What the trees look at (TreeSHAP, clf-lgbm light tier, validation sample)",
            "",
            "| feature | mean abs SHAP |",
            "|---|---:|",
        ]
        lines += [f"| `{k}` | {v:.3f} |" for k, v in list(s["shap"].items())[:12]]
    lines.append("")
    return "\n".join(lines)


def _fast_figures(report: dict[str, Any]) -> dict[str, float]:
    return {
        "fast_share": report["tier_shares"]["fast"],
        "near_optimal_rate": report["near_optimal_rate"],
        "regret_mean": report["regret_mean"],
        "regret_p95": report["regret_p95"],
    }


def _single_row_paths(artifact: ModelArtifact, val: Split, test: Split) -> dict[str, dict[str, float]]:
    """The model with single rows compiled (as shipped) and in onnxruntime: both decision paths timed now,
    on this host, each policy fitted on validation with its own times, evaluated on test."""
    cm = CostModel(artifact.cost_params)
    # the choices are the same whichever runtime answers single rows (batches run in onnxruntime)
    outputs, _ = model_outputs(TieredModel(artifact), val, cm)
    out = {}
    for path in ("compiled", "onnxruntime"):
        model = TieredModel(artifact)
        decider = Decider(model, cm)
        if path == "onnxruntime":
            for tier in model.tiers.values():
                tier.dense = None
            decider.light_row = None
        times = measure_decision_times(decider, calls=1000)
        policy, _ = fit_policy(outputs, val, times, cm, artifact.fast_rule)
        report = evaluate_artifact(dataclasses.replace(artifact, times=times, policy=policy), test, cm)
        out[path] = _fast_figures(report) | {
            "light_us": times.light_s * 1e6,
            "fast_factor": policy.fast_factor,
            "dc_regret_mean": report["by_link"]["dc"]["regret_mean"],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--data", type=Path)
    ap.add_argument(
        "--fresh",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a collection made after training (exported with --all-test), evaluated on its own",
    )
    ap.add_argument(
        "--render-only", action="store_true", help="rewrite the page from bench/results/model.json alone"
    )
    ap.add_argument(
        "--ceiling",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a --fresh collection's label repeatability (bench/label_repeatability.py on its store)",
    )
    ap.add_argument(
        "--add-fresh",
        action="store_true",
        help="evaluate only the --fresh collections and merge them into bench/results/model.json",
    )
    args = ap.parse_args()
    if args.render_only:
        rerender("model", OUT, render)
        return
    ceilings = {name: Path(p) for name, p in (c.split("=", 1) for c in args.ceiling)}
    fresh_dirs = dict(f.split("=", 1) for f in args.fresh)
    if unknown := set(ceilings) - set(fresh_dirs):
        ap.error(f"--ceiling for no --fresh collection: {', '.join(sorted(unknown))}")
    if args.add_fresh:
        if args.model is None or not fresh_dirs:
            ap.error("--add-fresh needs --model and at least one --fresh")
        _add_fresh(load_artifact(args.model), fresh_dirs, ceilings)
        return
    if args.model is None or args.data is None:
        ap.error("--model and --data are required (or --render-only)")
    artifact = load_artifact(args.model)
    splits, _, manifest = load_dataset(args.data)
    evaluation = {name: evaluate_artifact(artifact, split) for name, split in splits.items()}
    draws = artifact.extra.get("host_draws")
    if draws:  # the same records priced on a fleet of hosts the model never saw (training/hosts.py)
        from dwcp_selector.costmodel import CostModel
        from dwcp_selector.training.hosts import fleet_splits

        cm = CostModel(artifact.cost_params)
        for name, fleet in fleet_splits(splits, cm, int(draws["seed"])).items():
            evaluation[name] = evaluate_artifact(artifact, fleet)
    # the same model without the fast path (its light tier on every transfer): what the policy trades
    always = dataclasses.replace(artifact, policy=PolicyParams(fast_factor=0.0, rich_factor=float("inf")))
    test_name = "test" if "test" in splits else "val"
    no_fast = evaluate_artifact(always, splits[test_name])
    # the same policy with the first design's fast path (`none` on every fast-path transfer)
    no_rule = dataclasses.replace(artifact, fast_rule=FastRule())
    rule_ablation = {
        name: {
            "with_rule": _fast_figures(evaluation[name]),
            "none_only": _fast_figures(evaluate_artifact(no_rule, splits[name])),
        }
        for name in (test_name, "holdout")
        if name in splits
    }
    single_row = _single_row_paths(artifact, splits["val"], splits[test_name])
    training = json.loads((args.model / "training.json").read_text())
    repeat = RESULTS / "label_repeatability.json"
    doc = {
        "machine": machine(),
        "labels": label_provenance(_dataset_encoders(args.data)),
        "model": {"size_bytes": artifact.size_bytes(), "kind": artifact.kind, "family": artifact.family},
        "dataset_rows": manifest["rows"],
        "holdout_types": manifest.get("holdout_types", []),
        "training": training,
        "evaluation": evaluation,
        "by_host": _by_host(artifact, splits),
        "without_fast_path": {
            k: no_fast[k]
            for k in ("near_optimal_rate", "accuracy", "decisive_accuracy", "regret_mean", "regret_p95")
        }
        | {"by_link": no_fast["by_link"]},
        "fast_rule": {"cells": len(artifact.fast_rule.cells), "ablation": rule_ablation},
        "single_row_paths": single_row,
        "model_tier_near_optimal": {"all": no_fast["near_optimal_rate"]}
        | {k: v["near_optimal_rate"] for k, v in no_fast["by_link"].items() if v.get("rows")},
        "label_repeatability": json.loads(repeat.read_text()) if repeat.exists() else None,
        "fresh": {name: _fresh(artifact, Path(d), ceilings.get(name)) for name, d in fresh_dirs.items()},
        "loaded": {
            p.stem.removeprefix("loaded_collection_"): json.loads(p.read_text())
            for p in sorted(RESULTS.glob("loaded_collection_*.json"))
        },
    }
    _publish(doc)


def _dataset_encoders(data: Path) -> str | None:
    """The library versions that measured an exported dataset's records (its Parquet splits)."""
    import pyarrow.parquet as pq

    parts = sorted(data.glob("*.parquet"))
    return encoders_of(*(pq.read_table(p, columns=["library_version"]) for p in parts))


def _publish(doc: dict[str, Any]) -> None:
    """Store the results (plain JSON numbers) and render the page from them."""
    doc = json.loads(json.dumps(doc, default=float))
    print(f"wrote {write('model', doc)}")
    OUT.write_text(render(doc))
    print(f"wrote {OUT}")


def _add_fresh(artifact: ModelArtifact, fresh_dirs: dict[str, str], ceilings: dict[str, Path]) -> None:
    """Merge the evaluation of more fresh collections into the stored results and render the page."""
    path = RESULTS / "model.json"
    doc = json.loads(path.read_text())
    described = doc["model"]
    mine = {"size_bytes": artifact.size_bytes(), "kind": artifact.kind, "family": artifact.family}
    if described != mine:
        raise SystemExit(f"bench/results/model.json describes another model ({described}, not {mine})")
    added = {
        name: _fresh(artifact, Path(d), ceilings.get(name)) | {"evaluated": machine()}
        for name, d in fresh_dirs.items()
    }
    # the newest first, as the page lists them
    doc["fresh"] = added | {k: v for k, v in (doc.get("fresh") or {}).items() if k not in added}
    _publish(doc)


if __name__ == "__main__":
    main()
