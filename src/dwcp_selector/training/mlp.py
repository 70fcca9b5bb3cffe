"""Dense networks in PyTorch: the roadmap's 64-32-16 classifier and the cost model's regressor.

Both share one body (Linear-ReLU-Dropout ×3) and differ in head and loss:

* **classifier** - 4 logits; ``hde`` masked out without a baseline; loss plain cross-entropy, or the
  cost-sensitive loss: the *expected regret* Σ p_s · (cost_s / cost_oracle − 1) (clipped), plus the
  negative log of the probability given to the *near-optimal set* (every offered strategy within the
  oracle's 1 % tie tolerance: the oracle's label is only the first of them in a fixed order, so plain
  cross-entropy punishes a choice that costs nothing), plus a little cross-entropy so that ties still
  lean to the oracle's order;
* **regressor** (cost model in the loop) - 12 outputs: per strategy log2 ratio, log2 encode and decode
  CPU seconds; masked mean squared error (``hde`` rows without a baseline carry no target).

Training standardises inputs (statistics from the training rows, folded into the exported first layer),
uses Adam, stops early on the validation loss, keeps the best epoch and logs both losses to TensorBoard.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..costmodel import DEFAULT_TIE_TOLERANCE
from ..modeling.onnx_graph import mlp_to_onnx

__all__ = ["MlpConfig", "MlpResult", "fit_mlp"]

HIDDEN = (64, 32, 16)
REGRET_CLIP = 5.0


@dataclass
class MlpConfig:
    lr: float = 3e-3
    dropout: float = 0.1
    batch_size: int = 512
    weight_decay: float = 1e-5
    max_epochs: int = 200
    patience: int = 12
    loss: str = "ce"  # "ce", "cost" (classifier) or "mse" (regressor)
    seed: int = 0
    # the cost-sensitive loss's terms beside the expected regret (``bench/loss_ablation.py`` compares them):
    # the near-optimal set's negative log-likelihood, and the cross-entropy on the oracle's label
    near_weight: float = 1.0
    ce_weight: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class MlpResult:
    onnx: bytes
    softmax: bool
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


class _Net(nn.Module):
    def __init__(self, n_in: int, n_out: int, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_in
        for h in HIDDEN:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, n_out))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out

    def dense_layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [
            (m.weight.detach().numpy().astype(np.float32), m.bias.detach().numpy().astype(np.float32))
            for m in self.body
            if isinstance(m, nn.Linear)
        ]


def _loss_fn(
    kind: str, near_weight: float = MlpConfig.near_weight, ce_weight: float = MlpConfig.ce_weight
) -> Callable[..., torch.Tensor]:
    if kind == "mse":

        def mse(out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
            err = (out - y) ** 2 * mask
            return err.sum() / mask.sum().clamp(min=1.0)

        return mse

    def classify(
        out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, regret: torch.Tensor
    ) -> torch.Tensor:
        logits = out.masked_fill(~mask, -1e9)
        ce = nn.functional.cross_entropy(logits, y)
        if kind == "ce":
            return ce
        logp = torch.log_softmax(logits, dim=1)
        expected = (logp.exp() * regret).sum(dim=1).mean()
        loss = expected + ce_weight * ce
        if near_weight:
            near = mask & (regret <= DEFAULT_TIE_TOLERANCE)
            loss = loss - near_weight * torch.logsumexp(logp.masked_fill(~near, -1e9), dim=1).mean()
        return loss

    return classify


def fit_mlp(
    x_train: np.ndarray,
    y_train: np.ndarray,
    mask_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    mask_val: np.ndarray,
    config: MlpConfig,
    *,
    regret_train: np.ndarray | None = None,
    regret_val: np.ndarray | None = None,
    log_dir: str | Path | None = None,
    name: str = "mlp",
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> MlpResult:
    """Train one network; returns its ONNX graph (standardisation folded in) and the learning curve.

    For a classifier ``y`` holds label indices and ``mask`` the offered strategies; for the regressor
    ``y`` holds the targets and ``mask`` which of them exist.
    """
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    # a 64-32-16 network on batches of hundreds: one thread beats two fighting over small matrices
    torch.set_num_threads(1)
    rng = np.random.default_rng(config.seed)
    classifier = config.loss in ("ce", "cost")
    mean = x_train.mean(axis=0).astype(np.float32)
    std = x_train.std(axis=0).astype(np.float32)
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)

    def tensors(
        x: np.ndarray, y: np.ndarray, m: np.ndarray, r: np.ndarray | None
    ) -> tuple[torch.Tensor, ...]:
        xs = torch.from_numpy(((x - mean) / std).astype(np.float32))
        ys = torch.from_numpy(y.astype(np.int64 if classifier else np.float32))
        ms = torch.from_numpy(m.astype(bool) if classifier else m.astype(np.float32))
        rs = (
            torch.from_numpy(np.minimum(np.nan_to_num(r, posinf=REGRET_CLIP), REGRET_CLIP).astype(np.float32))
            if r is not None
            else torch.zeros(1)
        )
        return xs, ys, ms, rs

    xt, yt, mt, rt = tensors(x_train, y_train, mask_train, regret_train)
    xv, yv, mv, rv = tensors(x_val, y_val, mask_val, regret_val)
    n_out = int(mask_train.shape[1])
    net = _Net(x_train.shape[1], n_out, config.dropout)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = _loss_fn(config.loss, config.near_weight, config.ce_weight)
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(Path(log_dir) / name))
    best = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch = 0
    history: list[dict[str, float]] = []
    n = len(xt)
    for epoch in range(config.max_epochs):
        net.train()
        order = torch.from_numpy(rng.permutation(n))
        total = 0.0
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            opt.zero_grad()
            loss = loss_fn(net(xt[idx]), yt[idx], mt[idx], rt[idx] if regret_train is not None else rt)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += loss.detach().item() * len(idx)
        net.eval()
        with torch.no_grad():
            val = float(loss_fn(net(xv), yv, mv, rv if regret_val is not None else rv))
        train_loss = total / max(1, n)
        history.append({"epoch": epoch, "train": train_loss, "val": val})
        if writer is not None:
            writer.add_scalars("loss", {"train": train_loss, "val": val}, epoch)
        if on_epoch is not None:
            on_epoch(epoch, train_loss, val)
        if val < best - 1e-6:
            best, best_epoch = val, epoch
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        elif epoch - best_epoch >= config.patience:
            break
    if writer is not None:
        writer.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    onnx = mlp_to_onnx(net.dense_layers(), mean=mean, std=std, softmax=classifier, name=name)
    return MlpResult(onnx, classifier, best_epoch, history, time.perf_counter() - t0)
