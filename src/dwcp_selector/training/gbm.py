"""Gradient-boosted trees (LightGBM): the classifier of the roadmap, exported to ONNX, and its SHAP values.

Masking works as for the network: a record without a baseline cannot be labelled ``hde``, and at decision
time the ``hde`` probability is zeroed before the argmax.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np

__all__ = ["GbmConfig", "GbmResult", "fit_gbm", "shap_importance"]


@dataclass
class GbmConfig:
    num_leaves: int = 31
    learning_rate: float = 0.05
    n_estimators: int = 400
    min_child_samples: int = 20
    feature_fraction: float = 0.9
    lambda_l2: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class GbmResult:
    onnx: bytes
    model: Any
    best_iteration: int
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def fit_gbm(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: GbmConfig,
    *,
    names: list[str],
    n_classes: int,
    export: bool = True,
) -> GbmResult:
    """A multiclass LightGBM with early stopping on the validation log loss, and its ONNX graph."""
    t0 = time.perf_counter()
    model = lgb.LGBMClassifier(
        objective="multiclass",
        num_class=n_classes,
        num_leaves=config.num_leaves,
        learning_rate=config.learning_rate,
        n_estimators=config.n_estimators,
        min_child_samples=config.min_child_samples,
        colsample_bytree=config.feature_fraction,
        reg_lambda=config.lambda_l2,
        random_state=config.seed,
        n_jobs=2,
        verbose=-1,
    )
    evals: dict[str, Any] = {}
    model.fit(
        x_train,
        y_train,
        eval_X=(x_val,),
        eval_y=(y_val,),
        callbacks=[lgb.early_stopping(30, verbose=False), lgb.record_evaluation(evals)],
    )
    history = [
        {"epoch": i, "val": float(v)} for i, v in enumerate(next(iter(evals.values()))["multi_logloss"])
    ]
    return GbmResult(
        _to_onnx(model, x_train.shape[1]) if export else b"",
        model,
        int(model.best_iteration_ or 0),
        time.perf_counter() - t0,
        history,
    )


def _to_onnx(model: Any, n_features: int) -> bytes:
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converters warn about their own dependencies' deprecations
        onx = convert_lightgbm(
            model, initial_types=[("x", FloatTensorType([None, n_features]))], zipmap=False, target_opset=15
        )
    data: bytes = onx.SerializeToString()
    return data


def shap_importance(
    model: Any, x: np.ndarray, names: list[str], *, rows: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Mean |SHAP value| per feature (summed over classes) on a sample of ``x`` (TreeSHAP)."""
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(len(x), size=min(rows, len(x)), replace=False)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shap's import touches deprecated matplotlib and numba APIs
        import shap

        values = shap.TreeExplainer(model).shap_values(sample)
    arr = np.asarray(values)
    # shap returns classes × rows × features or rows × features × classes depending on its version
    if arr.ndim == 3 and arr.shape[0] == len(sample):
        arr = np.moveaxis(arr, 2, 0)
    importance = np.abs(arr).mean(axis=1).sum(axis=0) if arr.ndim == 3 else np.abs(arr).mean(axis=0)
    order = np.argsort(-importance)
    return {names[i]: float(importance[i]) for i in order}
