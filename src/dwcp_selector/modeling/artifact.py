"""The model directory: ONNX files plus a manifest, verified on load.

    MODEL_DIR/
      manifest.json   schema, library and onnxruntime versions, model kind (cost model in the loop or
                      classifier) and family, per tier: the ONNX file, its sha256, the feature spec and
                      outputs; label set; cost-model parameters and fingerprint; training-data
                      fingerprint; decision times, policy and fast rule; metrics
      light.onnx      the light tier's model (basic features)
      rich.onnx       the rich tier's model (probe and similarity features)
      MODEL_CARD.md   architecture, data, metrics, limitations

Loading refuses (:class:`~dwcp_selector.errors.ArtifactError`) a directory without a manifest, a manifest
of another schema, an ONNX file whose sha256 is not the manifest's (tampered or swapped), a label set or
cost model other than this build's, and a model made by another major version of the library.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..costmodel import CostModel, CostParams
from ..errors import ArtifactError, ConfigError
from .featurize import FeatureSpec
from .policy import STRATEGIES, DecisionTimes, FastRule, PolicyParams

__all__ = ["MANIFEST", "MODEL_SCHEMA", "ModelArtifact", "TierModel", "load_artifact", "save_artifact"]

MODEL_SCHEMA = "dwcp-model/1"
MANIFEST = "manifest.json"
CMIL = "cmil"
CLASSIFIER = "classifier"


@dataclass
class TierModel:
    tier: str
    onnx: bytes
    spec: FeatureSpec
    outputs: list[str]


@dataclass
class ModelArtifact:
    kind: str  # "cmil" or "classifier"
    family: str  # "mlp" or "lgbm"
    tiers: dict[str, TierModel]
    times: DecisionTimes
    policy: PolicyParams
    temperature: float = 1.0
    cost_params: CostParams = field(default_factory=CostParams)
    data_fingerprint: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    fast_rule: FastRule = field(default_factory=FastRule)
    path: Path | None = None

    @property
    def label_set(self) -> list[str]:
        return list(STRATEGIES)

    def size_bytes(self) -> int:
        return sum(len(t.onnx) for t in self.tiers.values())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_artifact(artifact: ModelArtifact, out_dir: str | Path, *, key: bytes | None = None) -> Path:
    """Write the ONNX files and the manifest (the manifest last: a directory with one is complete).

    With ``key`` the manifest is also signed (HMAC-SHA256; the ONNX files are bound by their sha256 in
    it), and a loader given the same key refuses any other."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    tiers = {}
    for name, tm in artifact.tiers.items():
        file = f"{name}.onnx"
        (out / file).write_bytes(tm.onnx)
        tiers[name] = {
            "file": file,
            "sha256": _sha256(tm.onnx),
            "spec": tm.spec.to_dict(),
            "outputs": tm.outputs,
        }
    import onnxruntime

    manifest = {
        "schema": MODEL_SCHEMA,
        "library_version": __version__,
        "onnxruntime_version": onnxruntime.__version__,
        "kind": artifact.kind,
        "family": artifact.family,
        "label_set": artifact.label_set,
        "cost_params": artifact.cost_params.to_dict(),
        "cost_params_fingerprint": artifact.cost_params.fingerprint,
        "data_fingerprint": artifact.data_fingerprint,
        "tiers": tiers,
        "times": artifact.times.to_dict(),
        "policy": artifact.policy.to_dict(),
        "fast_rule": artifact.fast_rule.to_dict(),
        "temperature": artifact.temperature,
        "metrics": artifact.metrics,
        "extra": artifact.extra,
    }
    body = json.dumps(manifest, indent=2, sort_keys=True)
    manifest["checksum"] = _sha256(body.encode())
    if key is not None:
        manifest["signature"] = _sign(body.encode(), key)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    artifact.path = out
    return out


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"dwcp-model-key:" + key).hexdigest()[:12]


def _sign(body: bytes, key: bytes) -> dict[str, str]:
    """HMAC-SHA256 of the manifest body, and which key made it (a hash of it, never the key)."""
    return {"alg": "hmac-sha256", "key_id": _key_id(key), "mac": hmac.new(key, body, "sha256").hexdigest()}


def _major(version: object) -> str:
    return str(version).split(".")[0]


def load_artifact(
    model_dir: str | Path, *, cost_model: CostModel | None = None, key: bytes | None = None
) -> ModelArtifact:
    """Read and verify a model directory; every mismatch is an :class:`ArtifactError` saying which.

    With ``key`` (``DWCP_MODEL_KEY``), a manifest that is unsigned or signed with another key is
    refused: the unkeyed checksum alone proves nothing against a tampered manifest."""
    path = Path(model_dir)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path} is not a model directory: no {MANIFEST}") from exc
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {path / MANIFEST}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("schema") != MODEL_SCHEMA:
        raise ArtifactError(f"{path / MANIFEST} is not a {MODEL_SCHEMA} manifest")
    stated = manifest.pop("checksum", None)
    signature = manifest.pop("signature", None)
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    if stated != _sha256(body):
        raise ArtifactError(f"{path / MANIFEST} was modified after the model was written (checksum mismatch)")
    if key is not None:
        # the checksum is unkeyed (anyone can recompute it); with a key, only its holder can sign
        if not isinstance(signature, dict):
            raise ArtifactError(f"{path / MANIFEST} is not signed, and a model key is configured")
        if not hmac.compare_digest(str(signature.get("mac", "")), _sign(body, key)["mac"]):
            raise ArtifactError(
                f"{path / MANIFEST} is not signed with the configured model key (key id "
                f"{signature.get('key_id')!r}, configured {_key_id(key)!r})"
            )
    if _major(manifest.get("library_version")) != _major(__version__):
        raise ArtifactError(
            f"model made by dwcp-selector {manifest.get('library_version')}; this is {__version__} "
            "(a different major version): retrain or use the matching version"
        )
    if manifest.get("label_set") != list(STRATEGIES):
        raise ArtifactError(f"model's label set {manifest.get('label_set')} is not {list(STRATEGIES)}")
    try:
        cost_params = CostParams.from_dict(manifest["cost_params"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path / MANIFEST} has invalid cost-model parameters: {exc}") from exc
    if manifest.get("cost_params_fingerprint") != cost_params.fingerprint:
        raise ArtifactError(
            f"{path / MANIFEST} states cost model {manifest.get('cost_params_fingerprint')} but its "
            f"parameters are {cost_params.fingerprint}"
        )
    # A model prices with the cost model it was trained for; a caller that needs a given one says so.
    if cost_model is not None and cost_params.fingerprint != cost_model.params.fingerprint:
        raise ArtifactError(
            f"model was trained for cost model {cost_params.fingerprint}, the caller prices with "
            f"{cost_model.params.fingerprint}: its labels and costs would not match"
        )
    try:
        return _build(path, manifest, cost_params)
    except ArtifactError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # the checksum is unkeyed: a manifest rewritten without a field checks out, so every field is
        # read defensively and a missing or malformed one is named
        raise ArtifactError(
            f"{path / MANIFEST} has a missing or malformed field ({type(exc).__name__}: {exc})"
        ) from exc


def _build(path: Path, manifest: dict[str, Any], cost_params: CostParams) -> ModelArtifact:
    tiers = {}
    for name, t in manifest.get("tiers", {}).items():
        file = path / str(t["file"])
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise ArtifactError(f"model file {file.name} is missing: {exc}") from exc
        if _sha256(data) != t.get("sha256"):
            raise ArtifactError(
                f"model file {file.name} does not match its manifest's sha256 (tampered or swapped)"
            )
        try:
            spec = FeatureSpec.from_dict(t["spec"])
        except ConfigError as exc:
            raise ArtifactError(
                f"{file.name} was trained on other input features than this version computes ({exc}): "
                "retrain it with this version"
            ) from exc
        tiers[name] = TierModel(name, data, spec, list(t["outputs"]))
    if not tiers:
        raise ArtifactError(f"{path / MANIFEST} lists no model")
    try:
        fast_rule = FastRule.from_dict(manifest.get("fast_rule", {"types": [], "cells": []}))
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path / MANIFEST} has an invalid fast rule: {exc}") from exc
    return ModelArtifact(
        kind=str(manifest["kind"]),
        family=str(manifest["family"]),
        tiers=tiers,
        times=DecisionTimes(**manifest["times"]),
        policy=PolicyParams(**manifest["policy"]),
        temperature=float(manifest.get("temperature", 1.0)),
        cost_params=cost_params,
        data_fingerprint=str(manifest.get("data_fingerprint", "")),
        metrics=dict(manifest.get("metrics", {})),
        extra=dict(manifest.get("extra", {})),
        fast_rule=fast_rule,
        path=path,
    )
