"""Latency predictors behind one interface, saved as plain JSON (no pickle).

Every predictor answers ``fit(archs, latencies_ms)`` and ``predict(archs) -> np.ndarray`` (ms), and
round-trips through ``save(path)`` / ``load_predictor(path, space, table)``. Kinds:

- ``table``: the lookup-table sum (``fit`` does nothing);
- ``table_linear``: ``a * table_sum + b`` fitted on end-to-end measurements (absorbs per-call overhead
  and fusion across layers that per-layer timing cannot see);
- ``ridge``: ridge regression on arch features (one-hot encoding, per-stage MACs, resolution), the ridge
  strength chosen by cross-validation; with a table the table sum is one more feature;
- ``mlp``: a small numpy MLP on the same features predicting log latency;
- ``flops``: the FLOPs-proportional baseline ``c * MACs`` (a proxy, reported to show how it misleads).

``ridge``, ``mlp`` and ``flops`` work from end-to-end measurements alone, without a table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from search_spaces import Arch, SearchSpace, reading

from .devices import LatencyError, atomic_write_json, read_versioned_json
from .layers import arch_features, network_macs
from .lut import LookupTable

PREDICTOR_FORMAT = "hwnas-latency-predictor"
PREDICTOR_VERSION = 1


class Predictor:
    """Predicts the end-to-end latency (ms) of archs of one space on one device.

    Contract: ``fit`` returns ``self``; ``predict`` returns one float64 per arch, in ms; ``save`` writes a
    JSON file that ``load_predictor`` reads back into an equal predictor (same predictions). Predictors
    that need a table get it at construction and on load; the table itself is not copied into the file.
    """

    kind: ClassVar[str] = ""
    needs_table: ClassVar[bool] = False

    def __init__(self, space: SearchSpace, table: LookupTable | None = None) -> None:
        if self.needs_table and table is None:
            raise LatencyError(f"predictor {self.kind!r} needs a lookup table; build one with "
                               f"'nas latency build' or use a table-free kind (ridge, mlp, flops)")
        self.space = space
        self.table = table

    def fit(self, archs: Sequence[Arch], latencies_ms: Sequence[float]) -> Predictor:
        return self

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {}

    def set_params(self, params: dict[str, Any]) -> None:
        pass

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_json(path, {"format": PREDICTOR_FORMAT, "version": PREDICTOR_VERSION, "kind": self.kind,
                                 "space": self.space.name, "params": self.params()})

    def _table_sums(self, archs: Sequence[Arch]) -> np.ndarray:
        assert self.table is not None
        return np.asarray(self.table.predict(self.space, archs), dtype=float)


class TableSumPredictor(Predictor):
    kind = "table"
    needs_table = True

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        return self._table_sums(archs)


class TableLinearPredictor(Predictor):
    kind = "table_linear"
    needs_table = True

    def __init__(self, space: SearchSpace, table: LookupTable | None = None) -> None:
        super().__init__(space, table)
        self.scale, self.offset = 1.0, 0.0

    def fit(self, archs: Sequence[Arch], latencies_ms: Sequence[float]) -> Predictor:
        x = self._table_sums(archs)
        y = np.asarray(latencies_ms, dtype=float)
        # Weighted by 1 / y so that relative errors count, as the accuracy targets do.
        w = 1.0 / np.maximum(y, 1e-9)
        a = np.stack([x, np.ones_like(x)], axis=1) * w[:, None]
        self.scale, self.offset = (float(v) for v in np.linalg.lstsq(a, y * w, rcond=None)[0])
        return self

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        return self.scale * self._table_sums(archs) + self.offset

    def params(self) -> dict[str, Any]:
        return {"scale": self.scale, "offset": self.offset}

    def set_params(self, params: dict[str, Any]) -> None:
        self.scale, self.offset = float(params["scale"]), float(params["offset"])


class FlopsPredictor(Predictor):
    kind = "flops"

    def __init__(self, space: SearchSpace, table: LookupTable | None = None) -> None:
        super().__init__(space, table)
        self.ms_per_gmac = 0.0

    def _gmacs(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.array([network_macs(self.space, a) / 1e9 for a in archs])

    def fit(self, archs: Sequence[Arch], latencies_ms: Sequence[float]) -> Predictor:
        x, y = self._gmacs(archs), np.asarray(latencies_ms, dtype=float)
        self.ms_per_gmac = float(x @ y / (x @ x))
        return self

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        return self.ms_per_gmac * self._gmacs(archs)

    def params(self) -> dict[str, Any]:
        return {"ms_per_gmac": self.ms_per_gmac}

    def set_params(self, params: dict[str, Any]) -> None:
        self.ms_per_gmac = float(params["ms_per_gmac"])


class _FeaturePredictor(Predictor):
    """Shared by regressors on arch features (plus the table sum when a table is given)."""

    def __init__(self, space: SearchSpace, table: LookupTable | None = None, seed: int = 0) -> None:
        super().__init__(space, table)
        self.seed = seed
        self.mean = np.zeros(0)
        self.std = np.ones(0)
        self.use_table = table is not None

    def _features(self, archs: Sequence[Arch]) -> np.ndarray:
        x = arch_features(self.space, list(archs))
        if self.use_table:
            if self.table is None:
                raise LatencyError(f"this {self.kind!r} predictor was fitted with a lookup table; load it "
                                   f"with the table")
            x = np.concatenate([x, self._table_sums(archs)[:, None]], axis=1)
        return x

    def _standardized(self, archs: Sequence[Arch], fit: bool = False) -> np.ndarray:
        x = self._features(archs)
        if fit:
            self.mean = x.mean(axis=0)
            self.std = np.where(x.std(axis=0) > 1e-12, x.std(axis=0), 1.0)
        return (x - self.mean) / self.std

    def _base_params(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "use_table": self.use_table,
                "seed": self.seed}

    def _set_base(self, params: dict[str, Any]) -> None:
        self.mean, self.std = np.asarray(params["mean"]), np.asarray(params["std"])
        self.use_table, self.seed = bool(params["use_table"]), int(params["seed"])


class RidgePredictor(_FeaturePredictor):
    kind = "ridge"
    alphas = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)

    def __init__(self, space: SearchSpace, table: LookupTable | None = None, seed: int = 0) -> None:
        super().__init__(space, table, seed)
        self.coef = np.zeros(0)
        self.intercept = 0.0
        self.alpha = 1.0

    @staticmethod
    def _solve(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
        xm, ym = x.mean(axis=0), y.mean()
        xc = x - xm
        coef = np.linalg.solve(xc.T @ xc + alpha * len(y) * np.eye(x.shape[1]), xc.T @ (y - ym))
        return coef, float(ym - xm @ coef)

    def fit(self, archs: Sequence[Arch], latencies_ms: Sequence[float]) -> Predictor:
        x = self._standardized(archs, fit=True)
        y = np.asarray(latencies_ms, dtype=float)
        folds = np.random.default_rng(self.seed).permutation(len(y)) % min(5, len(y))
        best = (np.inf, self.alphas[0])
        for alpha in self.alphas:
            err = 0.0
            for f in range(folds.max() + 1):
                train, test = folds != f, folds == f
                if train.sum() < 2 or test.sum() == 0:
                    continue
                coef, b = self._solve(x[train], y[train], alpha)
                err += float(np.sum(((x[test] @ coef + b) / y[test] - 1.0) ** 2))
            best = min(best, (err, alpha))
        self.alpha = best[1]
        self.coef, self.intercept = self._solve(x, y, self.alpha)
        return self

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        return self._standardized(archs) @ self.coef + self.intercept

    def params(self) -> dict[str, Any]:
        return {**self._base_params(), "coef": self.coef.tolist(), "intercept": self.intercept,
                "alpha": self.alpha}

    def set_params(self, params: dict[str, Any]) -> None:
        self._set_base(params)
        self.coef, self.intercept = np.asarray(params["coef"]), float(params["intercept"])
        self.alpha = float(params["alpha"])


class MLPPredictor(_FeaturePredictor):
    """Two hidden layers (tanh), trained full-batch with Adam on log latency; seeded."""

    kind = "mlp"

    def __init__(self, space: SearchSpace, table: LookupTable | None = None, seed: int = 0,
                 hidden: int = 32, steps: int = 3000, lr: float = 3e-3, weight_decay: float = 1e-4) -> None:
        super().__init__(space, table, seed)
        self.hidden, self.steps, self.lr, self.weight_decay = hidden, steps, lr, weight_decay
        self.weights: list[np.ndarray] = []
        self.y_mean, self.y_std = 0.0, 1.0

    def _forward(self, x: np.ndarray, weights: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        w1, b1, w2, b2, w3, b3 = weights
        h1 = np.tanh(x @ w1 + b1)
        h2 = np.tanh(h1 @ w2 + b2)
        return (h2 @ w3 + b3)[:, 0], [h1, h2]

    def fit(self, archs: Sequence[Arch], latencies_ms: Sequence[float]) -> Predictor:
        x = self._standardized(archs, fit=True)
        y = np.log(np.asarray(latencies_ms, dtype=float))
        self.y_mean, self.y_std = float(y.mean()), float(y.std() or 1.0)
        t = (y - self.y_mean) / self.y_std
        rng = np.random.default_rng(self.seed)
        d, h = x.shape[1], self.hidden
        ws = [rng.normal(0, 1 / np.sqrt(d), (d, h)), np.zeros(h), rng.normal(0, 1 / np.sqrt(h), (h, h)),
              np.zeros(h), rng.normal(0, 1 / np.sqrt(h), (h, 1)), np.zeros(1)]
        m = [np.zeros_like(w) for w in ws]
        v = [np.zeros_like(w) for w in ws]
        n = len(t)
        for step in range(1, self.steps + 1):
            out, (h1, h2) = self._forward(x, ws)
            g_out = (2.0 / n) * (out - t)[:, None]
            g_w3, g_b3 = h2.T @ g_out, g_out.sum(0)
            g_h2 = (g_out @ ws[4].T) * (1 - h2 ** 2)
            g_w2, g_b2 = h1.T @ g_h2, g_h2.sum(0)
            g_h1 = (g_h2 @ ws[2].T) * (1 - h1 ** 2)
            g_w1, g_b1 = x.T @ g_h1, g_h1.sum(0)
            grads = [g_w1, g_b1, g_w2, g_b2, g_w3, g_b3]
            for i, g in enumerate(grads):
                if i % 2 == 0:
                    g = g + self.weight_decay * ws[i]
                m[i] = 0.9 * m[i] + 0.1 * g
                v[i] = 0.999 * v[i] + 0.001 * g * g
                m_hat = m[i] / (1 - 0.9 ** step)
                v_hat = v[i] / (1 - 0.999 ** step)
                ws[i] = ws[i] - self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)
        self.weights = ws
        return self

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        out, _ = self._forward(self._standardized(archs), self.weights)
        return np.exp(out * self.y_std + self.y_mean)

    def params(self) -> dict[str, Any]:
        return {**self._base_params(), "hidden": self.hidden, "steps": self.steps, "lr": self.lr,
                "weight_decay": self.weight_decay, "y_mean": self.y_mean, "y_std": self.y_std,
                "weights": [w.tolist() for w in self.weights]}

    def set_params(self, params: dict[str, Any]) -> None:
        self._set_base(params)
        self.hidden, self.steps = int(params["hidden"]), int(params["steps"])
        self.lr, self.weight_decay = float(params["lr"]), float(params["weight_decay"])
        self.y_mean, self.y_std = float(params["y_mean"]), float(params["y_std"])
        self.weights = [np.asarray(w, dtype=float) for w in params["weights"]]


class ResidualPredictor(_FeaturePredictor):
    """A prior, scaled to the device, times a learned correction that cross-validation may switch off.

    The prior is the device's lookup-table sum where a table exists, else the subnet's MACs. It is first scaled
    by the geometric mean of measured / prior (one parameter: right from a single sample). The correction is a
    ridge regression of the log-residual, ``log(measured / scaled prior)``, on the arch features; its strength
    is chosen by leave-one-out (few samples) or 5-fold cross-validation among ``alphas`` and *none at all*,
    so with a handful of samples, or samples the features cannot explain, it stays the scaled prior.
    """

    kind = "residual"
    alphas = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)

    def __init__(self, space: SearchSpace, table: LookupTable | None = None, seed: int = 0) -> None:
        super().__init__(space, table, seed)
        self.use_table = False  # the table enters as the prior, not as a feature
        self.prior_kind = "table" if table is not None else "macs"
        self.scale = 1.0
        self.coef = np.zeros(0)
        self.intercept = 0.0
        self.alpha: float | None = None  # None: the correction is off (prior only)

    def _prior(self, archs: Sequence[Arch]) -> np.ndarray:
        if self.prior_kind == "table":
            if self.table is None:
                raise LatencyError("this 'residual' predictor's prior is a lookup table; load it with the table")
            return self._table_sums(archs)
        return np.array([network_macs(self.space, a) / 1e9 for a in archs])

    def fit(self, archs: Sequence[Arch], latencies_ms: Sequence[float]) -> Predictor:
        y = np.asarray(latencies_ms, dtype=float)
        if len(y) == 0 or not np.all(y > 0):
            raise LatencyError("the residual predictor needs at least one positive measured latency")
        prior = self._prior(archs)
        self.scale = float(np.exp(np.mean(np.log(y / prior))))
        residual = np.log(y / (self.scale * prior))
        x = self._standardized(archs, fit=True)
        self.alpha, self.coef, self.intercept = None, np.zeros(x.shape[1]), 0.0
        n = len(y)
        if n < 4:
            return self
        folds = np.arange(n) if n <= 20 else np.random.default_rng(self.seed).permutation(n) % 5
        best_err = self._cv(x, residual, folds, None)
        for alpha in self.alphas:
            err = self._cv(x, residual, folds, alpha)
            if err < best_err:
                best_err, self.alpha = err, alpha
        if self.alpha is not None:
            self.coef, self.intercept = RidgePredictor._solve(x, residual, self.alpha)
        return self

    @staticmethod
    def _cv(x: np.ndarray, residual: np.ndarray, folds: np.ndarray, alpha: float | None) -> float:
        """Squared log error of held-out folds; ``alpha`` None: the scaled prior alone (its log-scale refitted
        on the training part, so both sides are judged the same way)."""
        err = 0.0
        for f in np.unique(folds):
            train, test = folds != f, folds == f
            shift = residual[train].mean()
            if alpha is None:
                pred = np.full(test.sum(), shift)
            else:
                coef, b = RidgePredictor._solve(x[train], residual[train], alpha)
                pred = x[test] @ coef + b
            err += float(np.sum((residual[test] - pred) ** 2))
        return err

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        correction = self._standardized(archs) @ self.coef + self.intercept if self.alpha is not None else 0.0
        return self.scale * self._prior(archs) * np.exp(correction)

    def params(self) -> dict[str, Any]:
        return {**self._base_params(), "prior": self.prior_kind, "scale": self.scale, "coef": self.coef.tolist(),
                "intercept": self.intercept, "alpha": self.alpha}

    def set_params(self, params: dict[str, Any]) -> None:
        self._set_base(params)
        self.prior_kind, self.scale = str(params["prior"]), float(params["scale"])
        self.coef, self.intercept = np.asarray(params["coef"], dtype=float), float(params["intercept"])
        self.alpha = None if params["alpha"] is None else float(params["alpha"])


PREDICTOR_KINDS: dict[str, type[Predictor]] = {
    cls.kind: cls for cls in (TableSumPredictor, TableLinearPredictor, RidgePredictor, MLPPredictor,
                              FlopsPredictor, ResidualPredictor)
}


def make_predictor(kind: str, space: SearchSpace, table: LookupTable | None = None) -> Predictor:
    """A new predictor of ``kind`` (one of ``PREDICTOR_KINDS``)."""
    if kind not in PREDICTOR_KINDS:
        raise LatencyError(f"unknown predictor kind {kind!r}; allowed: {', '.join(PREDICTOR_KINDS)}")
    return PREDICTOR_KINDS[kind](space, table)


def load_predictor(path: str | os.PathLike[str], space: SearchSpace,
                   table: LookupTable | None = None) -> Predictor:
    """Read a predictor written by ``Predictor.save`` (plain JSON; nothing is executed)."""
    path = Path(path)
    remedy = "move it away and run 'nas latency fit' again to refit it"
    data = read_versioned_json(path, PREDICTOR_FORMAT, PREDICTOR_VERSION, "predictor", remedy)
    with reading(path, "latency predictor", remedy):
        file_space, kind, params = data["space"], data["kind"], dict(data["params"])
    if file_space != space.name:
        raise LatencyError(f"{path} predicts space {file_space!r}, not {space.name!r}")
    cls = PREDICTOR_KINDS.get(kind)
    if cls is None:
        raise LatencyError(f"{path}: unknown predictor kind {kind!r}")
    wants_table = cls.needs_table or params.get("use_table") or params.get("prior") == "table"
    predictor = cls(space, table if wants_table else None)
    with reading(path, "latency predictor", remedy):
        predictor.set_params(params)
    return predictor
