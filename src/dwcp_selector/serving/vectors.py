"""Test vectors for the clients of the HTTP service: inputs and the answers a model directory gives.

``test_vectors.json`` in a model directory holds about 200 requests in the exact body form of
``POST /v1/select`` (precomputed sample statistics, never a payload sample; a few with neither, which
the service answers with the heuristic), and for each the two answers a client can check itself against:

``heuristic``
    the rule heuristic's strategy on the same inputs (:func:`~dwcp_selector.modeling.baselines.
    heuristic_rule`; entropy 0 when no statistics are given, the similarity only with a baseline), which a
    client's own port of the heuristic must equal on every vector;
``service``
    what the service answers that does not depend on time: ``strategy``, ``tier`` (``fast``, ``light``,
    ``rich`` or ``heuristic``), ``fallback`` (the reason, or ``null`` when the model decided) and
    ``confidence`` (rounded to 6 decimals; compare within :data:`CONFIDENCE_TOLERANCE`), computed by the
    service's own decoder and decision function in process (``http._Service.decide``:
    ``GuardedSelector``'s guards, the fast path, the light tier); :func:`check_test_vectors` also
    checks that the batch path (``_Service.decide_batch``) answers the same.

The inputs cover every payload type the model knows (and one it does not), sizes from 0 bytes to
tens of GiB, with and without a baseline, similarities and entropies on both sides of the heuristic's
thresholds, links of every class and links without one on both sides of 1 ms RTT and of 100 and
500 Mbit/s available; every threshold of the heuristic is hit exactly and by one ulp on either side.
Every input names its node (``free_cores``); the host the model prices decisions for is the reference
host (``hostprofile.REFERENCE_RATES``), as in the service, which loads its model without a host
profile, so the answers are the same on every machine.

Two things are left out as not deterministic: latencies, and the ``deadline`` fallback (a model decision
over the guard's 2 ms deadline sends the next second of decisions to the heuristic); the vectors are
computed without that deadline, and a client comparing against a live service should accept a
``deadline`` fallback whose strategy is the heuristic's.
"""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, ConfigError
from ..link import LINK_CLASSES, LinkState
from ..modeling.baselines import (
    HEURISTIC_FAST_BANDWIDTH_BPS,
    HEURISTIC_HIGH_ENTROPY,
    HEURISTIC_LOW_BANDWIDTH_BPS,
    HEURISTIC_LOW_RTT_S,
    HEURISTIC_MIN_BYTES,
    HEURISTIC_SIMILAR,
    heuristic_rule,
)
from ..modeling.featurize import PAYLOAD_TYPES
from .guarded import GuardedSelector
from .http import MAX_BATCH, DecisionOut, SelectIn, _decode, _HttpError, _select, _Service

__all__ = [
    "CONFIDENCE_TOLERANCE",
    "VECTORS_FILE",
    "VECTORS_SCHEMA",
    "check_test_vectors",
    "compute_test_vectors",
    "heuristic_answer",
    "vector_inputs",
    "write_test_vectors",
]

VECTORS_FILE = "test_vectors.json"
VECTORS_SCHEMA = "dwcp-test-vectors/1"
#: confidences are floats out of a network: equal to this much across machines and runtimes
CONFIDENCE_TOLERANCE = 1e-5
_SEED = 20261203
_GIB = 1 << 30

# a link that decides nothing by itself: slow enough for none of the fast-link rules, fast enough for
# none of the slow-link ones
_MID = {"capacity_bps": 300e6, "rtt_s": 0.02, "loss": 1e-5, "utilization": 0.0, "link_type": "wan"}
_FAST = {"capacity_bps": 10e9, "rtt_s": 2e-4, "loss": 0.0, "utilization": 0.1, "link_type": "dc"}
_SLOW = {"capacity_bps": 50e6, "rtt_s": 0.05, "loss": 1e-3, "utilization": 0.2, "link_type": "edge"}
_SIMILAR = 0.95  # a baseline similar enough for the heuristic's delta rule


def _up(x: float) -> float:
    return math.nextafter(x, math.inf)


def _down(x: float) -> float:
    return math.nextafter(x, -math.inf)


def _body(
    size: int,
    *,
    payload_type: str = "database",
    entropy: float | None = 5.0,
    zero_fraction: float = 0.05,
    text_fraction: float = 0.2,
    has_baseline: bool = False,
    similarity: float | None = None,
    link: dict[str, Any] | None = None,
    free_cores: float = 4.0,
) -> dict[str, Any]:
    body: dict[str, Any] = {"payload_bytes": size, "payload_type": payload_type}
    if entropy is not None:
        body["stats"] = {"entropy": entropy, "zero_fraction": zero_fraction, "text_fraction": text_fraction}
    body["has_baseline"] = has_baseline
    if similarity is not None:
        body["similarity"] = similarity
    body["link"] = dict(link or _MID)
    body["free_cores"] = free_cores
    return body


def _boundaries() -> list[tuple[str, dict[str, Any]]]:
    """Every threshold of the heuristic exactly, and one ulp (or one byte) on either side, each where
    its rule is the one that decides; then the order of the rules (first match wins)."""
    mb, e, rtt = HEURISTIC_MIN_BYTES, HEURISTIC_HIGH_ENTROPY, HEURISTIC_LOW_RTT_S
    fast, low, sim = HEURISTIC_FAST_BANDWIDTH_BPS, HEURISTIC_LOW_BANDWIDTH_BPS, HEURISTIC_SIMILAR
    out: list[tuple[str, dict[str, Any]]] = []
    for size in (0, 1, mb - 1, mb, mb + 1):
        out.append((f"size {size} B", _body(size)))
        out.append((f"size {size} B, slow link, baseline", _body(size, link=_SLOW, has_baseline=True)))
    for name, ent in (("0", 0.0), ("7.5-ulp", _down(e)), ("7.5", e), ("7.5+ulp", _up(e)), ("8", 8.0)):
        out.append((f"entropy {name}", _body(4 << 20, entropy=ent)))
        out.append((f"entropy {name}, fast link", _body(4 << 20, entropy=ent, link=_FAST)))
    # the fast-link rule's thresholds, where a similar baseline (hde) is next in line
    for name, r in (("1ms-ulp", _down(rtt)), ("1ms", rtt), ("1ms+ulp", _up(rtt))):
        link = {"capacity_bps": 10e9, "rtt_s": r, "loss": 0.0, "utilization": 0.0}
        out.append(
            (
                f"rtt {name}, 10 Gbit/s, similar baseline",
                _body(64 << 20, link=link, has_baseline=True, similarity=_SIMILAR),
            )
        )
        out.append((f"rtt {name}, 10 Gbit/s", _body(64 << 20, link=link)))
    for name, cap, u in (
        ("500M-ulp", _down(fast), 0.0),
        ("500M", fast, 0.0),
        ("500M+ulp", _up(fast), 0.0),
        ("1G at u=0.5 (500M)", 1e9, 0.5),
        ("625M at u=0.2 (500M after rounding)", 625e6, 0.2),
    ):
        link = {"capacity_bps": cap, "rtt_s": 5e-4, "loss": 0.0, "utilization": u}
        out.append(
            (
                f"available {name}, rtt 0.5 ms, similar baseline",
                _body(64 << 20, link=link, has_baseline=True, similarity=_SIMILAR),
            )
        )
    for name, s in (("0.8-ulp", _down(sim)), ("0.8", sim), ("0.8+ulp", _up(sim)), ("0", 0.0), ("1", 1.0)):
        out.append((f"similarity {name}, baseline", _body(16 << 20, has_baseline=True, similarity=s)))
        out.append((f"similarity {name}, no baseline", _body(16 << 20, has_baseline=False, similarity=s)))
    out.append(("similarity absent, baseline", _body(16 << 20, has_baseline=True)))
    for name, cap, u in (
        ("100M-ulp", _down(low), 0.0),
        ("100M", low, 0.0),
        ("100M+ulp", _up(low), 0.0),
        ("200M at u=0.5 (100M)", 200e6, 0.5),
    ):
        link = {"capacity_bps": cap, "rtt_s": 0.03, "loss": 1e-4, "utilization": u}
        out.append((f"available {name}, no baseline", _body(8 << 20, link=link)))
        out.append((f"available {name}, baseline", _body(8 << 20, link=link, has_baseline=True)))
    # first match wins: each rule ahead of every later one that would also match
    out.append(
        ("order: tiny beats fast link", _body(100, link=_FAST, has_baseline=True, similarity=_SIMILAR))
    )
    out.append(
        (
            "order: high entropy beats fast link",
            _body(1 << 20, entropy=7.9, link=_FAST, has_baseline=True, similarity=_SIMILAR),
        )
    )
    out.append(
        (
            "order: high entropy beats slow link",
            _body(1 << 20, entropy=7.9, link=_SLOW, has_baseline=True, similarity=_SIMILAR),
        )
    )
    out.append(
        (
            "order: fast link beats similar baseline",
            _body(1 << 30, link=_FAST, has_baseline=True, similarity=_SIMILAR),
        )
    )
    out.append(
        ("order: similar baseline on a mid link", _body(1 << 30, has_baseline=True, similarity=_SIMILAR))
    )
    out.append(
        (
            "order: similar baseline beats slow link",
            _body(1 << 30, link=_SLOW, has_baseline=True, similarity=_SIMILAR),
        )
    )
    out.append(("order: slow link, dissimilar baseline", _body(1 << 30, link=_SLOW, has_baseline=True)))
    out.append(("order: slow link, no baseline", _body(1 << 30, link=_SLOW)))
    out.append(("order: otherwise", _body(1 << 30)))
    # the service's own fallbacks: a payload type the model does not know, nothing known of the content
    out.append(("fallback: unknown payload type", _body(8 << 20, payload_type="martian")))
    out.append(("fallback: unknown payload type, slow", _body(8 << 20, payload_type="x", link=_SLOW)))
    out.append(("fallback: no statistics", _body(8 << 20, entropy=None)))
    out.append(("fallback: no statistics, tiny", _body(10, entropy=None, link=_FAST)))
    out.append(
        (
            "fallback: no statistics, slow, baseline",
            _body(8 << 20, entropy=None, link=_SLOW, has_baseline=True, similarity=_SIMILAR),
        )
    )
    return out


def _round(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _drawn(count: int) -> list[tuple[str, dict[str, Any]]]:
    """Seeded draws over every payload type, every link class (and links with no class on both sides of
    the heuristic's link thresholds), sizes from 100 B to 64 GiB, entropies near 7.5 and anywhere."""
    rng = random.Random(_SEED)
    types = [*PAYLOAD_TYPES]
    classes = [*LINK_CLASSES, None]
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(count):
        payload_type = types[i % len(types)]
        cls = classes[(i // len(types) + i) % len(classes)]
        if cls is None:  # no class: RTT 0.1-20 ms, available 20 Mbit/s-5 Gbit/s
            link: dict[str, Any] = {
                "capacity_bps": _round(_log_uniform(rng, 20e6, 5e9)),
                "rtt_s": _round(_log_uniform(rng, 1e-4, 2e-2)),
                "loss": _round(_log_uniform(rng, 1e-6, 1e-3)),
                "utilization": _round(rng.uniform(0.0, 0.8), 2),
            }
        else:
            c = LINK_CLASSES[cls]
            link = {
                "capacity_bps": _round(_log_uniform(rng, *c.capacity_bps)),
                "rtt_s": _round(_log_uniform(rng, *c.rtt_s)),
                "loss": _round(rng.uniform(*c.loss)),
                "utilization": _round(rng.uniform(*c.utilization), 2),
                "link_type": cls,
            }
        size = round(_log_uniform(rng, 100, 64 * _GIB))
        entropy = _round(rng.uniform(7.0, 8.0) if rng.random() < 0.35 else rng.uniform(0.0, 8.0), 3)
        has_baseline = rng.random() < 0.5
        similarity = _round(rng.random(), 3) if has_baseline and rng.random() < 0.8 else None
        body = _body(
            size,
            payload_type=payload_type,
            entropy=entropy,
            zero_fraction=_round(rng.random() * (1.0 - entropy / 8.0), 3),
            text_fraction=_round(rng.random() * 0.9, 3),
            has_baseline=has_baseline,
            similarity=similarity,
            link=link,
            free_cores=_round(_log_uniform(rng, 0.5, 32.0), 3),
        )
        out.append((f"drawn {i}: {payload_type}, {cls or 'no class'}, {size} B", body))
    return out


def vector_inputs() -> list[tuple[str, dict[str, Any]]]:
    """The vectors' names and request bodies (the same on every call)."""
    boundaries = _boundaries()
    return boundaries + _drawn(200 - len(boundaries))


def heuristic_answer(body: dict[str, Any]) -> str:
    """The rule heuristic on a request body's inputs, as the service reads them."""
    link = body["link"]
    stats = body.get("stats")
    has_baseline = bool(body.get("has_baseline", False))
    return heuristic_rule(
        int(body["payload_bytes"]),
        float(stats["entropy"]) if stats else 0.0,
        has_baseline,
        body.get("similarity") if has_baseline else None,
        LinkState(
            capacity_bps=link["capacity_bps"],
            rtt_s=link["rtt_s"],
            loss=link.get("loss", 0.0),
            utilization=link.get("utilization", 0.0),
            link_type=link.get("link_type"),
        ),
    )


_selector_log = logging.getLogger("dwcp_selector.serving.selector")


class _NoHostProfileWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "no host profile" not in record.getMessage()


class _Answers:
    """The service's decision functions on one model directory, as the service builds them, without the
    deadline cool-off (timing-dependent, see the module's documentation); bodies are decoded by the
    service's own decoder, so a vector that the service would refuse is refused here."""

    def __init__(self, model_dir: Path, key: bytes | None) -> None:
        quiet = _NoHostProfileWarning()
        _selector_log.addFilter(quiet)  # the reference host is meant: no warning that none is given
        try:
            guard = GuardedSelector(model_dir, model_key=key, deadline_s=math.inf)
        finally:
            _selector_log.removeFilter(quiet)
        if guard.selector is None:
            raise ArtifactError(f"{model_dir}: cannot compute test vectors, {guard.load_error}")
        self.service = _Service(guard, model_dir.name)

    @staticmethod
    def request(body: Any) -> SelectIn:
        """``body`` as the service decodes it; :class:`ConfigError` when the service would refuse it."""
        try:
            request: SelectIn = _decode(_select, json.dumps(body).encode())
        except _HttpError as exc:
            raise ConfigError(f"not a valid request body (HTTP {exc.status}): {exc.detail}") from exc
        return request

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        """The service's answer to ``body`` alone (``POST /v1/select``)."""
        return _deterministic(self.service.decide(self.request(body)))

    def batch(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The service's answers to ``bodies`` in one batch (``POST /v1/select:batch``)."""
        out: list[dict[str, Any]] = []
        for start in range(0, len(bodies), MAX_BATCH):
            reqs = [self.request(b) for b in bodies[start : start + MAX_BATCH]]
            out += [_deterministic(d) for d in self.service.decide_batch(reqs).decisions]
        return out


def _deterministic(d: DecisionOut) -> dict[str, Any]:
    """What of a service answer does not depend on time."""
    return {
        "strategy": d.strategy,
        "tier": d.tier,
        "fallback": d.fallback,
        "confidence": round(d.confidence, 6),
    }


def _manifest_checksum(model_dir: Path) -> str:
    try:
        manifest = json.loads((model_dir / "manifest.json").read_text())
        return str(manifest["checksum"])
    except FileNotFoundError as exc:
        raise ArtifactError(f"{model_dir} is not a model directory: no manifest.json") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"cannot read the checksum of {model_dir / 'manifest.json'}: {exc}") from exc


def compute_test_vectors(model_dir: str | Path, *, key: bytes | None = None) -> dict[str, Any]:
    """The vectors document for ``model_dir`` (what :func:`write_test_vectors` writes)."""
    path = Path(model_dir)
    checksum = _manifest_checksum(path)
    answers = _Answers(path, key)
    vectors = [
        {"name": name, "request": body, "heuristic": heuristic_answer(body), "service": answers.answer(body)}
        for name, body in vector_inputs()
    ]
    return {
        "schema": VECTORS_SCHEMA,
        "model_checksum": checksum,
        "host_profile": "reference",
        "confidence_tolerance": CONFIDENCE_TOLERANCE,
        "vectors": vectors,
    }


def write_test_vectors(model_dir: str | Path, *, key: bytes | None = None) -> Path:
    """Compute the vectors of ``model_dir`` and write them to its ``test_vectors.json``."""
    path = Path(model_dir)
    doc = compute_test_vectors(path, key=key)
    head = {k: v for k, v in doc.items() if k != "vectors"}
    lines = [json.dumps(v) for v in doc["vectors"]]  # one vector a line: diffs name the vectors changed
    text = json.dumps(head)[:-1] + ', "vectors": [\n' + ",\n".join(lines) + "\n]}\n"
    out = path / VECTORS_FILE
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return out


def check_test_vectors(model_dir: str | Path, *, key: bytes | None = None) -> list[str]:
    """Every way ``model_dir``'s ``test_vectors.json`` disagrees with what the model and the heuristic
    answer now (empty when it agrees): another model's checksum, a missing or changed vector, a
    different answer."""
    path = Path(model_dir)
    file = path / VECTORS_FILE
    try:
        doc = json.loads(file.read_text())
    except FileNotFoundError as exc:
        raise ArtifactError(
            f"{path} has no {VECTORS_FILE} (write it with 'dwcp-selector models vectors')"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {file}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("schema") != VECTORS_SCHEMA:
        raise ArtifactError(f"{file} is not a {VECTORS_SCHEMA} document")
    stored = doc.get("vectors")
    if not isinstance(stored, list) or not all(isinstance(v, dict) for v in stored):
        raise ArtifactError(f"{file} has no list of vectors")
    mismatches: list[str] = []
    checksum = _manifest_checksum(path)
    if doc.get("model_checksum") != checksum:
        mismatches.append(
            f"model_checksum {doc.get('model_checksum')!r} is not the manifest's {checksum!r}: "
            "the vectors were written for another model"
        )
    inputs = vector_inputs()
    if [v.get("request") for v in stored] != [body for _, body in inputs]:
        mismatches.append(f"the inputs are not this version's {len(inputs)} inputs: write the vectors again")
    answers = _Answers(path, key)
    valid: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for i, v in enumerate(stored):
        name, body = str(v.get("name", f"#{i}")), v.get("request")
        try:
            answers.request(body)
        except ConfigError as exc:  # a vector that is no valid body is a mismatch
            mismatches.append(f"{name}: {' '.join(str(exc).split())}")
            continue
        assert isinstance(body, dict)
        heuristic = heuristic_answer(body)
        if v.get("heuristic") != heuristic:
            mismatches.append(f"{name}: heuristic {v.get('heuristic')!r}, now {heuristic!r}")
        was = v.get("service")
        if not isinstance(was, dict):
            mismatches.append(f"{name}: no service answer")
            continue
        mismatches += _differences(f"{name}: service", was, answers.answer(body))
        valid.append((name, body, was))
    batch = answers.batch([body for _, body, _ in valid])
    for (name, _, was), now in zip(valid, batch, strict=True):
        mismatches += _differences(f"{name}: service in a batch", was, now)
    return mismatches


def _differences(what: str, was: dict[str, Any], now: dict[str, Any]) -> list[str]:
    out = [
        f"{what} {field} {was.get(field)!r}, now {now[field]!r}"
        for field in ("strategy", "tier", "fallback")
        if was.get(field) != now[field]
    ]
    conf = was.get("confidence")
    if not isinstance(conf, int | float) or abs(conf - now["confidence"]) > CONFIDENCE_TOLERANCE:
        out.append(f"{what} confidence {conf!r}, now {now['confidence']!r}")
    return out
