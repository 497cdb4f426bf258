"""Latency predictors behind one interface, saved as plain JSON (no pickle).

Every predictor answers ``fit(archs, latencies_ms)`` and ``predict(archs) -> np.ndarray`` (ms), and
round-trips through ``save(path)`` / ``load_predictor(path, space, table)``. Kinds:

- ``table``: the lookup-table sum (``fit`` does nothing);
- ``table_linear``: ``a * table_sum + b`` fitted on end-to-end measurements (absorbs per-call overhead
  and fusion across layers that per-layer timing cannot see);
- ``ridge``: ridge regression on arch features (one-hot encoding, per-stage MACs, resolution), the ridge
  strength chosen by cross-validation; with a table the table sum is one more feature;
- ``mlp``: a small numpy MLP on the same features predicting log latency;
- ``flops``: the FLOPs-proportional baseline ``c * MACs`` (a proxy, reported to show how it misleads);
- ``residual``: a prior (the table sum, else MACs) scaled to the device, times a learned log-residual correction
  that cross-validation may switch off;
- ``transfer``: the same on top of *another device's* fitted predictor or table (the prior), for a new device
  measured on a handful of subnets (HELP / nn-Meter adaptation).

``ridge``, ``mlp``, ``flops`` and ``residual`` work from end-to-end measurements alone, without a table.

Quantised and mixed-precision subnets: ``fit(archs, y, policies)`` and ``predict_mixed(archs, policies)`` take one
``PrecisionPolicy`` per subnet (None: fp32). ``table``, ``table_linear`` and ``residual`` (with its table prior) read
the table sum at each layer group's precision (``LookupTable.predict(space, archs, policies)``); the other kinds
do not see precision and refuse a policy that is not all fp32.
Fitting runs with one BLAS / OpenMP / torch thread (``fit_threads``): on small matrices more threads only
contend (an MLP on 1,000 samples took 66 s with two OpenBLAS threads on a loaded 2-core machine, 3.5 s with one).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from search_spaces import Arch, PrecisionPolicy, SearchSpace, reading

from .devices import LatencyError, atomic_write_json, read_versioned_json
from .layers import arch_features, network_gmacs
from .lut import LookupTable

PREDICTOR_FORMAT = "hwnas-latency-predictor"
PREDICTOR_VERSION = 1


def _number(params: Mapping[str, Any], name: str) -> float:
    """A finite number of a predictor file (``ValueError`` naming the parameter otherwise)."""
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"parameter {name!r} is {value!r}, not a finite number")
    return float(value)


def _array(params: Mapping[str, Any], name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A finite float array of a predictor file, of ``shape`` where given (``ValueError`` naming it otherwise)."""
    value = np.asarray(params[name], dtype=float)
    if shape is not None and value.shape != shape:
        raise ValueError(f"parameter {name!r} has shape {value.shape}, not {shape}")
    if not np.isfinite(value).all():
        raise ValueError(f"parameter {name!r} holds a value that is not a finite number")
    return value


class Predictor:
    """Predicts the end-to-end latency (ms) of archs of one space on one device.

    Contract: ``fit`` returns ``self``; ``predict`` returns one float64 per arch, in ms; ``save`` writes a
    JSON file that ``load_predictor`` reads back into an equal predictor (same predictions). Predictors
    that need a table get it at construction and on load; the table itself is not copied into the file.
    """

    kind: ClassVar[str] = ""
    needs_table: ClassVar[bool] = False
    # Whether the predictor reads the table at each group's precision (``fit`` / ``predict_mixed`` policies).
    reads_precision: ClassVar[bool] = False
    # The policies of the archs being fitted or predicted, in their order (set by ``fit`` / ``predict_mixed``).
    _policies: list[PrecisionPolicy | None] | None = None

    def __init__(self, space: SearchSpace, table: LookupTable | None = None) -> None:
        if self.needs_table and table is None:
            raise LatencyError(f"predictor {self.kind!r} needs a lookup table; build one with "
                               f"'nas latency build' or use a table-free kind (ridge, mlp, flops)")
        self.space = space
        self.table = table

    def fit(self, archs: Sequence[Arch], latencies_ms: Sequence[float],
            policies: Sequence[PrecisionPolicy | None] | None = None) -> Predictor:
        """Fit on measured latencies (ms); with one BLAS / OpenMP / torch thread (``fit_threads``). ``policies``:
        each subnet's precision policy (None: fp32), for kinds that read the table per precision."""
        archs = list(archs)
        with fit_threads(), self._with_policies(archs, policies):
            self._fit(archs, np.asarray(latencies_ms, dtype=float))
        return self

    def predict_mixed(self, archs: Sequence[Arch], policies: Sequence[PrecisionPolicy | None] | None = None
                      ) -> np.ndarray:
        """``predict`` of subnets that each run under a precision policy (None: fp32)."""
        archs = list(archs)
        with self._with_policies(archs, policies):
            return self.predict(archs)

    def _can_read_precision(self) -> bool:
        return self.reads_precision

    @contextlib.contextmanager
    def _with_policies(self, archs: list[Arch], policies: Sequence[PrecisionPolicy | None] | None
                       ) -> Iterator[None]:
        if policies is None or all(p is None or p.is_uniform("fp32") for p in policies):
            yield
            return
        policies = list(policies)
        if len(policies) != len(archs):
            raise LatencyError(f"{len(policies)} precision policies for {len(archs)} subnets; give one each")
        if not self._can_read_precision():
            raise LatencyError(f"predictor {self.kind!r} does not see precision; quantised or mixed subnets "
                               f"need table, table_linear or residual over a table with their precisions' entries")
        self._policies = policies
        try:
            yield
        finally:
            self._policies = None

    def _fit(self, archs: list[Arch], y: np.ndarray) -> None:
        pass

    def fresh(self) -> Predictor:
        """An unfitted predictor of the same kind, table and prior (to refit on other samples)."""
        return type(self)(self.space, self.table)

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {}

    def set_params(self, params: dict[str, Any]) -> None:
        pass

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the predictor as JSON; one fitted over a table records the table's ``table_id`` (``load_predictor``
        refuses it with another table). The ``table`` kind holds nothing fitted: it reads any table."""
        data = {"format": PREDICTOR_FORMAT, "version": PREDICTOR_VERSION, "kind": self.kind, "space": self.space.name}
        if self.table is not None and self.table.table_id and self.kind != "table":
            data["table_id"] = self.table.table_id
        atomic_write_json(path, {**data, "params": self.params()})

    def _table_sums(self, archs: Sequence[Arch]) -> np.ndarray:
        assert self.table is not None
        archs = list(archs)
        policies = self._policies if self._policies is not None and len(self._policies) == len(archs) else None
        return np.asarray(self.table.predict(self.space, archs, policies), dtype=float)


class TableSumPredictor(Predictor):
    kind = "table"
    needs_table = True
    reads_precision = True

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        return self._table_sums(archs)


class TableLinearPredictor(Predictor):
    kind = "table_linear"
    needs_table = True
    reads_precision = True

    def __init__(self, space: SearchSpace, table: LookupTable | None = None) -> None:
        super().__init__(space, table)
        self.scale, self.offset = 1.0, 0.0

    def _fit(self, archs: list[Arch], y: np.ndarray) -> None:
        x = self._table_sums(archs)
        # Weighted by 1 / y so that relative errors count, as the accuracy targets do.
        w = 1.0 / np.maximum(y, 1e-9)
        a = np.stack([x, np.ones_like(x)], axis=1) * w[:, None]
        self.scale, self.offset = (float(v) for v in np.linalg.lstsq(a, y * w, rcond=None)[0])

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        return self.scale * self._table_sums(archs) + self.offset

    def params(self) -> dict[str, Any]:
        return {"scale": self.scale, "offset": self.offset}

    def set_params(self, params: dict[str, Any]) -> None:
        self.scale, self.offset = _number(params, "scale"), _number(params, "offset")


class FlopsPredictor(Predictor):
    kind = "flops"

    def __init__(self, space: SearchSpace, table: LookupTable | None = None) -> None:
        super().__init__(space, table)
        self.ms_per_gmac = 0.0

    def _gmacs(self, archs: Sequence[Arch]) -> np.ndarray:
        return network_gmacs(self.space, archs)

    def _fit(self, archs: list[Arch], y: np.ndarray) -> None:
        x = self._gmacs(archs)
        self.ms_per_gmac = float(x @ y / (x @ x))

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        return self.ms_per_gmac * self._gmacs(archs)

    def params(self) -> dict[str, Any]:
        return {"ms_per_gmac": self.ms_per_gmac}

    def set_params(self, params: dict[str, Any]) -> None:
        self.ms_per_gmac = _number(params, "ms_per_gmac")


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
        from search_spaces import smallest

        self.use_table, self.seed = bool(params["use_table"]), int(params["seed"])
        # The features' width: a file whose arrays have another (of another space version) cannot predict.
        self.width = arch_features(self.space, [smallest(self.space)]).shape[1] + int(self.use_table)
        self.mean, self.std = _array(params, "mean", (self.width,)), _array(params, "std", (self.width,))


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

    def _fit(self, archs: list[Arch], y: np.ndarray) -> None:
        x = self._standardized(archs, fit=True)
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

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        return self._standardized(archs) @ self.coef + self.intercept

    def params(self) -> dict[str, Any]:
        return {**self._base_params(), "coef": self.coef.tolist(), "intercept": self.intercept,
                "alpha": self.alpha}

    def set_params(self, params: dict[str, Any]) -> None:
        self._set_base(params)
        self.coef, self.intercept = _array(params, "coef", (self.width,)), _number(params, "intercept")
        self.alpha = _number(params, "alpha")


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

    def _fit(self, archs: list[Arch], latencies_ms: np.ndarray) -> None:
        x = self._standardized(archs, fit=True)
        y = np.log(latencies_ms)
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
        self.lr, self.weight_decay = _number(params, "lr"), _number(params, "weight_decay")
        self.y_mean, self.y_std = _number(params, "y_mean"), _number(params, "y_std")
        h = self.hidden
        shapes = [(self.width, h), (h,), (h, h), (h,), (h, 1), (1,)]
        weights = list(params["weights"])
        if len(weights) != len(shapes):
            raise ValueError(f"parameter 'weights' has {len(weights)} arrays, not {len(shapes)}")
        self.weights = [_array({f"weights[{i}]": w}, f"weights[{i}]", shape)
                        for i, (w, shape) in enumerate(zip(weights, shapes))]


class ResidualPredictor(_FeaturePredictor):
    """A prior, scaled to the device, times a learned correction that cross-validation may switch off.

    The prior is the device's lookup-table sum where a table exists, else the subnet's MACs (``transfer``:
    another device's predictor). It is first scaled by the geometric mean of measured / prior (one parameter:
    right from a single sample). The correction models the log-residual ``r = log(measured / scaled prior)``;
    cross-validation (leave-one-out up to 20 samples, else 5-fold) chooses among, simplest first:

    - ``scale``: no correction (the scaled prior);
    - ``power``: ``r = b + g * log prior`` (a device whose latencies are a power of the prior's; ``1 + g`` kept
      in [0.25, 4], so the prior's ranking is kept);
    - ``curve``: ``r = b + g * log prior + h * log prior ** 2`` (a smooth monotone distortion of the prior,
      e.g. a fixed overhead plus a power; only where it stays increasing over the measured range);
    - ``affine``: ``a * prior + c`` with ``a, c >= 0`` (a fixed per-call overhead the prior does not see);
    - ``blend`` / ``blend_affine`` (``transfer`` only): ``a * prior + b * GMACs [+ c]``, all ``>= 0``: another
      device's latency is rarely a function of this one's alone; where the two differ in per-layer overhead
      against arithmetic, a sum of the source's prediction and the MACs separates them from a few samples;
    - ``ridge``: ``power`` plus a ridge regression on the arch features, its strength one of ``alphas``;

    the linear ones fitted on relative errors; keeping the simplest whose cross-validated squared log error is
    within one standard error of the best (so a handful of samples, or samples the features cannot explain,
    leave the scaled prior).
    """

    kind = "residual"
    alphas = (100.0, 10.0, 1.0, 0.1, 0.01, 0.001)  # strongest (simplest) first
    power_bounds = (-0.75, 3.0)
    linear_modes: ClassVar[tuple[str, ...]] = ("affine", "blend", "blend_affine")
    blends_macs: ClassVar[bool] = False  # whether ``blend`` / ``blend_affine`` are candidates

    def __init__(self, space: SearchSpace, table: LookupTable | None = None, seed: int = 0) -> None:
        super().__init__(space, table, seed)
        self.use_table = False  # the table enters as the prior, not as a feature
        self.prior_kind = "table" if table is not None else "macs"
        self.scale = 1.0
        self.mode = "scale"
        self.power = 0.0
        self.curvature = 0.0
        self.lp_mean, self.lp_std = 0.0, 1.0
        self.coef = np.zeros(0)
        self.intercept = 0.0
        self.alpha: float | None = None  # the ridge strength when mode == "ridge"
        self.weights = np.zeros(0)  # the linear modes' weights: prior, [GMACs], [constant]
        self.cv_error: dict[str, float] = {}  # mean held-out squared log error of each candidate solved

    def _can_read_precision(self) -> bool:
        return self.prior_kind == "table" and not self.use_table

    def _prior(self, archs: Sequence[Arch]) -> np.ndarray:
        if self.prior_kind == "table":
            if self.table is None:
                raise LatencyError("this 'residual' predictor's prior is a lookup table; load it with the table")
            return self._table_sums(archs)
        return network_gmacs(self.space, archs)

    def prior(self, archs: Sequence[Arch]) -> np.ndarray:
        """The unscaled prior of ``archs`` (table sum, GMACs or the source device's prediction)."""
        return np.asarray(self._prior(list(archs)), dtype=float)

    def _fit(self, archs: list[Arch], y: np.ndarray) -> None:
        if len(y) == 0 or not np.all(y > 0):
            raise LatencyError(f"the {self.kind} predictor needs at least one positive measured latency")
        prior = self.prior(archs)
        if not np.all(prior > 0):
            raise LatencyError(f"the {self.kind} predictor's prior is not positive for every subnet")
        lp = np.log(prior)
        self.scale = float(np.exp(np.mean(np.log(y) - lp)))
        residual = np.log(y) - np.log(self.scale) - lp
        # Centred, not scaled: ``power`` is the exponent's change itself (bounded by ``power_bounds``).
        self.lp_mean, self.lp_std = float(lp.mean()), 1.0
        lps = lp - self.lp_mean
        x = self._standardized(archs, fit=True)
        self.mode, self.power, self.curvature, self.alpha = "scale", 0.0, 0.0, None
        self.coef, self.intercept, self.cv_error = np.zeros(x.shape[1]), 0.0, {}
        self.weights = np.zeros(0)
        n = len(y)
        if n < 4:
            return
        folds = np.arange(n) if n <= 20 else np.random.default_rng(self.seed).permutation(n) % 5
        candidates: list[tuple[str, float | None]] = [("scale", None), ("power", None), ("affine", None)]
        candidates += [("blend", None), ("curve", None), ("blend_affine", None)] if self.blends_macs else \
            [("curve", None)]
        candidates += [("ridge", a) for a in self.alphas]
        gmacs = network_gmacs(self.space, archs) if self.blends_macs else None
        errors = [self._linear_cv(self._linear_columns(prior, gmacs, mode), y, folds)
                  if mode in self.linear_modes else self._cv(x, lps, residual, folds, mode, alpha)
                  for mode, alpha in candidates]
        means = np.array([e.mean() for e in errors])
        best = int(np.argmin(means))
        bound = means[best] + errors[best].std(ddof=1) / np.sqrt(n)
        choice = next(i for i in range(len(candidates)) if means[i] <= bound)
        self.cv_error = {(m if a is None else f"{m}:{a:g}"): float(v) for (m, a), v in zip(candidates, means)
                         if np.isfinite(v)}
        self.mode, self.alpha = candidates[choice]
        if self.mode in self.linear_modes:
            self.weights = self._linear_solve(self._linear_columns(prior, gmacs, self.mode), y)
        elif self.mode != "scale":
            solved = self._solve(x, lps, residual, self.mode, self.alpha)
            assert solved is not None  # a candidate that cannot be solved has an infinite CV error
            self.power, self.curvature, self.coef, self.intercept = solved

    @staticmethod
    def _linear_columns(prior: np.ndarray, gmacs: np.ndarray | None, mode: str) -> np.ndarray:
        """The columns a linear mode weighs: the prior, [GMACs (``network_gmacs``)], [a constant]."""
        columns = [prior]
        if mode in ("blend", "blend_affine"):
            assert gmacs is not None
            columns.append(gmacs)
        if mode in ("affine", "blend_affine"):
            columns.append(np.ones_like(prior))
        return np.stack(columns, axis=1)

    @staticmethod
    def _linear_solve(columns: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Non-negative weights of ``columns`` minimising the squared relative error to ``y``."""
        from scipy.optimize import nnls

        weights, _ = nnls(columns / y[:, None], np.ones_like(y))
        return weights

    @classmethod
    def _linear_cv(cls, columns: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
        """Held-out squared log error per sample of a linear mode (infinite where it predicts <= 0)."""
        err = np.zeros(len(y))
        for f in np.unique(folds):
            train, test = folds != f, folds == f
            if train.sum() <= columns.shape[1]:
                return np.full(len(y), np.inf)
            pred = columns[test] @ cls._linear_solve(columns[train], y[train])
            if not np.all(pred > 0):
                return np.full(len(y), np.inf)
            err[test] = (np.log(y[test]) - np.log(pred)) ** 2
        return err

    @classmethod
    def _solve(cls, x: np.ndarray, lps: np.ndarray, r: np.ndarray, mode: str, alpha: float | None
               ) -> tuple[float, float, np.ndarray, float] | None:
        """``(power, curvature, coef, intercept)`` of ``r ~ b + g * lps [+ h * lps**2] [+ x @ w]`` (``w``
        ridge-penalised by ``alpha``); None for a ``curve`` that would not stay increasing."""
        if mode == "curve":
            z = np.stack([lps, lps ** 2], axis=1)
            zm, rm = z.mean(axis=0), r.mean()
            zc = z - zm
            g, h = np.linalg.solve(zc.T @ zc + len(r) * 1e-6 * np.eye(2), zc.T @ (r - rm))
            slopes = 1.0 + g + 2.0 * h * np.array([lps.min(), lps.max()])
            if slopes.min() < 1.0 + cls.power_bounds[0] or slopes.max() > 1.0 + cls.power_bounds[1]:
                return None
            return float(g), float(h), np.zeros(x.shape[1]), float(rm - zm @ np.array([g, h]))
        z = lps[:, None] if mode == "power" else np.concatenate([lps[:, None], x], axis=1)
        penalty = np.full(z.shape[1], 0.0 if alpha is None else float(alpha))
        penalty[0] = 1e-6  # the power term is (almost) free
        zm, rm = z.mean(axis=0), r.mean()
        zc = z - zm
        w = np.linalg.solve(zc.T @ zc + len(r) * np.diag(penalty), zc.T @ (r - rm))
        lo, hi = cls.power_bounds
        if not lo <= w[0] <= hi:  # keep the prior's ranking: refit the rest with the power at its bound
            g = float(np.clip(w[0], lo, hi))
            rest = r - g * lps
            if mode == "power":
                return g, 0.0, np.zeros(x.shape[1]), float(rest.mean())
            solved = cls._solve(x, np.zeros_like(lps), rest, "ridge", alpha)
            assert solved is not None
            return g, 0.0, solved[2], solved[3]
        coef = np.zeros(x.shape[1]) if mode == "power" else w[1:]
        return float(w[0]), 0.0, coef, float(rm - zm @ w)

    @classmethod
    def _cv(cls, x: np.ndarray, lps: np.ndarray, residual: np.ndarray, folds: np.ndarray, mode: str,
            alpha: float | None) -> np.ndarray:
        """Held-out squared log error per sample; ``scale``: the prior alone (its log-scale refitted on the
        training part, so every candidate is judged the same way)."""
        err = np.zeros(len(residual))
        for f in np.unique(folds):
            train, test = folds != f, folds == f
            if mode == "scale":
                pred = np.full(test.sum(), residual[train].mean())
            else:
                solved = cls._solve(x[train], lps[train], residual[train], mode, alpha)
                if solved is None:
                    err[:] = np.inf
                    return err
                g, h, coef, b = solved
                pred = g * lps[test] + h * lps[test] ** 2 + x[test] @ coef + b
            err[test] = (residual[test] - pred) ** 2
        return err

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        archs = list(archs)
        prior = self.prior(archs)
        if self.mode == "scale":
            return self.scale * prior
        if self.mode in self.linear_modes:
            gmacs = network_gmacs(self.space, archs) if self.mode != "affine" else None
            return self._linear_columns(prior, gmacs, self.mode) @ self.weights
        lps = (np.log(prior) - self.lp_mean) / self.lp_std
        correction = self.power * lps + self.curvature * lps ** 2 + self.intercept
        if self.mode == "ridge":
            correction = correction + self._standardized(archs) @ self.coef
        return self.scale * prior * np.exp(correction)

    def params(self) -> dict[str, Any]:
        return {**self._base_params(), "prior": self.prior_kind, "scale": self.scale, "mode": self.mode,
                "power": self.power, "curvature": self.curvature, "lp_mean": self.lp_mean, "lp_std": self.lp_std,
                "coef": self.coef.tolist(),
                "intercept": self.intercept, "alpha": self.alpha, "weights": self.weights.tolist(),
                "cv_error": self.cv_error}

    def set_params(self, params: dict[str, Any]) -> None:
        self._set_base(params)
        self.prior_kind, self.scale = str(params["prior"]), _number(params, "scale")
        self.coef, self.intercept = _array(params, "coef"), _number(params, "intercept")
        self.alpha = None if params["alpha"] is None else _number(params, "alpha")
        # Files from before the power term: a correction was on exactly when alpha was set.
        self.mode = str(params.get("mode", "scale" if self.alpha is None else "ridge"))
        if self.mode not in ("scale", "power", "curve", "ridge", *self.linear_modes):
            raise ValueError(f"unknown residual mode {self.mode!r}")
        self.weights = _array({"weights": params.get("weights", [])}, "weights")
        if self.mode == "ridge" and self.coef.shape != (self.width,):
            raise ValueError(f"parameter 'coef' has shape {self.coef.shape}, not ({self.width},)")
        if self.mode in self.linear_modes and len(self.weights) != (3 if self.mode == "blend_affine" else 2):
            raise ValueError(f"residual mode {self.mode!r} needs its weights")
        defaults = {"power": 0.0, "curvature": 0.0, "lp_mean": 0.0, "lp_std": 1.0, **params}
        self.power, self.curvature = _number(defaults, "power"), _number(defaults, "curvature")
        self.lp_mean, self.lp_std = _number(defaults, "lp_mean"), _number(defaults, "lp_std")
        self.cv_error = {str(k): float(v) for k, v in dict(params.get("cv_error", {})).items()}


class TransferPredictor(ResidualPredictor):
    """``residual`` on top of another device's predictor: its prediction is the prior, scaled to this device and
    corrected as far as cross-validation on this device's few measurements allows (HELP, nn-Meter adaptation).

    With ``candidates`` (several of the source device's predictors, by name) ``fit`` fits one transfer on each
    and predicts their weighted geometric mean, a member's weight ``exp(-(e - e_best) / e_best)`` from its best
    cross-validated squared log error ``e`` on this device's samples: which of another device's predictors
    carries over is a property of the pair (on this machine, the torch device's lookup table ranks ONNX Runtime
    latencies better than its best-ranked learned predictor does), and from 10 samples a weighted mean of them
    measured better than keeping the one with the lowest error (``experiments/benchmarks/README_latency.md``).
    ``source`` and ``mode`` are then the heaviest member's.

    The source predictor is copied into this one's file (kind, parameters and device id): refitting the source
    later does not change this predictor. A source that reads a lookup table reads its own device's table.
    """

    kind = "transfer"
    blends_macs = True

    def __init__(self, space: SearchSpace, table: LookupTable | None = None, seed: int = 0,
                 source: Predictor | None = None, source_device: str = "",
                 candidates: Mapping[str, Predictor] | None = None) -> None:
        candidates = dict(candidates or {})
        if source is None and candidates:
            source = next(iter(candidates.values()))
        if source is None:
            raise LatencyError("a 'transfer' predictor starts from another device's predictor or table: "
                               "name it with --from DEVICE")
        for candidate in (source, *candidates.values()):
            if candidate.space.name != space.name:
                raise LatencyError(f"the source predictor is of space {candidate.space.name!r}, not "
                                   f"{space.name!r}")
        super().__init__(space, None, seed)
        self.source, self.source_device = source, source_device
        self.candidates = candidates
        self.prior_kind = "device"
        self.members: list[tuple[float, TransferPredictor]] = []  # (weight, transfer on one source), heaviest first
        self.candidate_kinds = [p.kind for p in candidates.values()]  # what fit chose among (saved)

    def _prior(self, archs: Sequence[Arch]) -> np.ndarray:
        return self.source.predict(archs)

    def _fit(self, archs: list[Arch], y: np.ndarray) -> None:
        self.members = []
        trials = []
        for candidate in self.candidates.values() if len(self.candidates) > 1 else ():
            trial = TransferPredictor(self.space, None, self.seed, candidate, self.source_device)
            trial._fit(archs, y)
            trials.append((min(trial.cv_error.values(), default=float("inf")), trial))
        errors = np.array([e for e, _ in trials])
        if not trials or not np.all(np.isfinite(errors)):  # one candidate, or too few samples to judge them
            super()._fit(archs, y)
            return
        best = float(errors.min())
        weights = np.exp(-(errors - best) / max(best, 1e-12))
        weights /= weights.sum()
        order = np.argsort(-weights, kind="stable")
        members = [(float(weights[i]), trials[i][1]) for i in order if weights[i] >= 1e-3]
        heaviest = members[0][1]
        self.source = heaviest.source
        ResidualPredictor.set_params(self, heaviest.params())
        if len(members) > 1:
            total = sum(w for w, _ in members)
            self.members = [(w / total, t) for w, t in members]

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        if not self.members:
            return super().predict(archs)
        archs = list(archs)
        return np.exp(sum(w * np.log(t.predict(archs)) for w, t in self.members))

    def fresh(self) -> Predictor:
        return TransferPredictor(self.space, None, self.seed, self.source, self.source_device, self.candidates)

    def params(self) -> dict[str, Any]:
        params = {**super().params(), "source": {"device": self.source_device, "kind": self.source.kind,
                                                 "params": self.source.params()}}
        if self.members:
            params["members"] = [{"weight": w, "params": t.params()} for w, t in self.members]
        if self.candidate_kinds:
            params["candidates"] = list(self.candidate_kinds)
        return params


PREDICTOR_KINDS: dict[str, type[Predictor]] = {
    cls.kind: cls for cls in (TableSumPredictor, TableLinearPredictor, RidgePredictor, MLPPredictor,
                              FlopsPredictor, ResidualPredictor, TransferPredictor)
}


@contextlib.contextmanager
def fit_threads(n: int = 1) -> Iterator[None]:
    """Run the block with ``n`` BLAS / OpenMP threads (threadpoolctl) and, when torch is loaded, ``n`` torch
    threads; the previous limits come back afterwards. Every ``Predictor.fit`` runs inside it."""
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        if torch is not None and before != n:
            torch.set_num_threads(n)
        with threadpool_limits(limits=n):
            yield
    finally:
        if torch is not None and before is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)


def make_predictor(kind: str, space: SearchSpace, table: LookupTable | None = None, *,
                   source: Predictor | None = None, source_device: str = "",
                   candidates: Mapping[str, Predictor] | None = None) -> Predictor:
    """A new predictor of ``kind`` (one of ``PREDICTOR_KINDS``); ``transfer`` takes the ``source`` predictor of
    device ``source_device``, or ``candidates`` to choose it from when fitted."""
    if kind not in PREDICTOR_KINDS:
        raise LatencyError(f"unknown predictor kind {kind!r}; allowed: {', '.join(PREDICTOR_KINDS)}")
    if kind == "transfer":
        return TransferPredictor(space, None, source=source, source_device=source_device, candidates=candidates)
    return PREDICTOR_KINDS[kind](space, table)


TableOf = Callable[[str], "LookupTable | None"]


def _from_record(space: SearchSpace, kind: Any, params: Mapping[str, Any], table: LookupTable | None,
                 tables_of: TableOf | None, where: str, device: str = "") -> Predictor:
    cls = PREDICTOR_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise LatencyError(f"{where}: unknown predictor kind {kind!r}")
    params = dict(params)
    if cls is TransferPredictor:
        source = dict(params["source"])
        source_device = str(source["device"])
        source_table = tables_of(source_device) if tables_of is not None else None
        inner = _from_record(space, source["kind"], source["params"], source_table, tables_of,
                             f"{where} (source device {source_device!r})", source_device)
        transfer = TransferPredictor(space, None, source=inner, source_device=source_device)
        transfer.candidate_kinds = [str(k) for k in params.get("candidates", [])]
        for member in params.get("members", []):
            inner_transfer = _from_record(space, "transfer", member["params"], None, tables_of, where, device)
            assert isinstance(inner_transfer, TransferPredictor)
            transfer.members.append((float(member["weight"]), inner_transfer))
        predictor: Predictor = transfer
    else:
        wants_table = cls.needs_table or params.get("use_table") or params.get("prior") == "table"
        if wants_table and table is None and device:
            raise LatencyError(f"{where}: the source predictor reads device {device!r}'s lookup table of "
                               f"{space.name!r}, which is not there")
        predictor = cls(space, table if wants_table else None)
    predictor.set_params(params)
    return predictor


def load_predictor(path: str | os.PathLike[str], space: SearchSpace, table: LookupTable | None = None,
                   tables_of: TableOf | None = None) -> Predictor:
    """Read a predictor written by ``Predictor.save`` (plain JSON; nothing is executed). ``tables_of(device)``
    gives another device's table, for a ``transfer`` predictor whose source reads one."""
    path = Path(path)
    remedy = "move it away and run 'nas latency fit' again to refit it"
    data = read_versioned_json(path, PREDICTOR_FORMAT, PREDICTOR_VERSION, "predictor", remedy)
    with reading(path, "latency predictor", remedy):
        file_space, kind, params = data["space"], data["kind"], dict(data["params"])
        fitted_over = str(data.get("table_id") or "")
    if file_space != space.name:
        raise LatencyError(f"{path} predicts space {file_space!r}, not {space.name!r}")
    if fitted_over and table is not None and table.table_id != fitted_over:
        raise LatencyError(f"{path} was fitted over another lookup table of {space.name!r} on {table.device.id!r} "
                           f"(table {fitted_over}; the device's table is now {table.table_id or 'an older one'}, "
                           f"rebuilt or replaced since): run 'nas latency fit' again to fit it over this table")
    if kind not in PREDICTOR_KINDS:
        raise LatencyError(f"{path}: unknown predictor kind {kind!r}")
    with reading(path, "latency predictor", remedy):
        return _from_record(space, kind, params, table, tables_of, str(path))
