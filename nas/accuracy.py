"""The accuracy objective: direct evaluation of subnets (cached, in parallel on Ray actors) or a predictor.

Direct: each subnet is extracted from the trained supernet, its batch norms recalibrated on training
images, and classified on the validation split (``supernets.training.evaluate.subnet_accuracy``). Results
are cached by arch id and split in ``accuracy.jsonl`` in the run folder (one JSON object per line,
appended and fsynced per batch; a torn last line is ignored), so no subnet is evaluated twice, across
restarts too. Evaluation runs on Ray actors that each load the supernet and the data once.

Predictor: a small MLP on the fixed-length arch encoding (as Once-for-All's accuracy predictor), fitted on
directly evaluated random subnets; its RMSE and rank correlations on held-out subnets are reported.
Saved as JSON (weights as lists), never pickled.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces import (
    Arch,
    SearchSpace,
    connect_ray,
    encode_many,
    get_space,
    largest,
    reading,
    sample,
    smallest,
)

from .errors import UsageError

__all__ = ["AccuracyCache", "AccuracyPredictor", "DirectEvaluator", "PredictorReport", "SubnetEvaluation",
           "SupernetAccuracy", "evaluate_subnets", "fit_accuracy_predictor"]

CACHE_NAME = "accuracy.jsonl"
PREDICTOR_NAME = "accuracy_predictor.json"

ArchAccuracyFn = Callable[[Arch, str], float]
"""Accuracy (0..1) of one arch on one split (``"val"`` or ``"test"``)."""


class AccuracyCache:
    """Accuracies by (arch id, split), persisted as JSON lines."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self._values: dict[tuple[str, str], float] = {}
        if self.path is not None and self.path.exists():
            with open(self.path, encoding="utf-8") as handle:
                for line in handle:
                    try:
                        row = json.loads(line)
                        self._values[(row["arch_id"], row["split"])] = float(row["accuracy"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a line torn by a kill

    def __len__(self) -> int:
        return len(self._values)

    def get(self, arch_id: str, split: str = "val") -> float | None:
        return self._values.get((arch_id, split))

    def put_many(self, rows: Sequence[tuple[Arch, str, float]]) -> None:
        """Record ``(arch, split, accuracy)`` rows; appended to the file in one write, then fsynced."""
        lines = []
        for arch, split, acc in rows:
            self._values[(arch.arch_id, split)] = float(acc)
            lines.append(json.dumps({"arch_id": arch.arch_id, "split": split, "accuracy": float(acc),
                                     "arch": arch.to_dict()}, sort_keys=True))
        if self.path is None or not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            # A torn line from an earlier kill must not swallow the first new row.
            if handle.tell() > 0:
                with open(self.path, "rb") as check:
                    check.seek(-1, os.SEEK_END)
                    if check.read(1) != b"\n":
                        handle.write("\n")
            handle.write("\n".join(lines) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


class _Actor:
    """Body of the Ray actor: builds the evaluation function once (loading the supernet and data)."""

    def __init__(self, factory: Callable[[], ArchAccuracyFn], threads: int) -> None:
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        self.fn = factory()

    def evaluate(self, arch_dicts: list[dict], split: str) -> list[float]:
        return [float(self.fn(Arch.from_dict(d), split)) for d in arch_dicts]


class DirectEvaluator:
    """Direct accuracy of subnets, cached, evaluated in parallel on Ray actors.

    Args:
        factory: a picklable zero-argument callable returning ``(arch, split) -> accuracy``; it runs once in
            each actor (e.g. ``SupernetAccuracy``, which loads the supernet and data there).
        cache: where results are kept (``AccuracyCache``); ``None`` keeps them in memory only.
        workers: Ray actors; 0 evaluates in this process (no Ray).
        threads_per_worker: torch threads in each actor (0 leaves torch's default).
        gpus_per_worker: GPUs Ray reserves for each actor (0: CPU actors; the factory decides the device).
    """

    def __init__(self, factory: Callable[[], ArchAccuracyFn], cache: AccuracyCache | None = None,
                 workers: int = 2, threads_per_worker: int = 1, gpus_per_worker: float = 0.0) -> None:
        self.factory = factory
        self.cache = cache if cache is not None else AccuracyCache(None)
        self.workers = workers
        self.threads = threads_per_worker
        self.gpus = gpus_per_worker
        self._actors: list[Any] = []
        self._local: _Actor | None = None
        self.evaluations = 0

    def _start(self) -> None:
        if not (self._actors or self._local):
            check = getattr(self.factory, "check", None)
            if callable(check):  # a damaged input is named here, in one line, not inside each actor
                check()
        if self.workers <= 0:
            if self._local is None:
                self._local = _Actor(self.factory, 0)
            return
        if self._actors:
            return
        import ray

        connect_ray(num_cpus=max(self.workers, 1), log_to_driver=False, logging_level=logging.WARNING)
        actor_cls = ray.remote(num_cpus=1, num_gpus=self.gpus)(_Actor)
        self._actors = [actor_cls.remote(self.factory, self.threads) for _ in range(self.workers)]

    def evaluate(self, archs: Sequence[Arch], split: str = "val") -> np.ndarray:
        """Accuracy of each arch on ``split``; only archs not in the cache are evaluated (each once)."""
        missing: dict[str, Arch] = {}
        for arch in archs:
            if self.cache.get(arch.arch_id, split) is None:
                missing.setdefault(arch.arch_id, arch)
        if missing:
            todo = list(missing.values())
            self._start()
            if self._local is not None:
                values = self._local.evaluate([a.to_dict() for a in todo], split)
            else:
                import ray

                chunks = [todo[i::len(self._actors)] for i in range(len(self._actors))]
                refs = [actor.evaluate.remote([a.to_dict() for a in chunk], split)
                        for actor, chunk in zip(self._actors, chunks) if chunk]
                results = ray.get(refs)
                by_id = {a.arch_id: v for chunk, res in zip([c for c in chunks if c], results)
                         for a, v in zip(chunk, res)}
                values = [by_id[a.arch_id] for a in todo]
            self.cache.put_many([(a, split, v) for a, v in zip(todo, values)])
            self.evaluations += len(todo)
        return np.array([self.cache.get(a.arch_id, split) for a in archs], dtype=np.float64)

    __call__ = evaluate

    def close(self) -> None:
        if self._actors:
            import ray

            for actor in self._actors:
                ray.kill(actor)
            self._actors = []


@dataclass(frozen=True)
class SupernetAccuracy:
    """Picklable factory of ``(arch, split) -> accuracy`` from a supernet checkpoint and a data source.

    ``data_factory`` (picklable, zero arguments) returns a ``supernets.training.evaluate.DataSource``
    (``nas.data`` builds one from the experiment config).
    """

    checkpoint: str
    data_factory: Callable[[], Any]
    bn_images: int = 2000
    max_images: int | None = None
    batch_size: int = 200
    seed: int = 0
    # ``train.device`` values: ``auto`` evaluates on CUDA when this process (actor) has a GPU. Always fp32
    # in the default memory format, so a cached accuracy does not depend on where it was computed.
    device: str = "auto"

    def check(self) -> None:
        """Read the checkpoint in this process: ``UsageError`` naming it when it is damaged or foreign."""
        from supernets.training.checkpoint import CheckpointError, read_supernet_file

        try:
            read_supernet_file(self.checkpoint)
        except CheckpointError as exc:
            raise UsageError(str(exc)) from exc

    def __call__(self) -> ArchAccuracyFn:
        return self.with_data(self.data_factory())

    def with_data(self, data: Any) -> ArchAccuracyFn:
        """``(arch, split) -> accuracy`` on ``data`` (what ``data_factory`` returns), moved to the device."""
        from supernets.training.checkpoint import CheckpointError, load_supernet_file
        from supernets.training.device import DeviceError, Execution
        from supernets.training.evaluate import subnet_accuracy

        try:
            execution = Execution.resolve(self.device, "fp32", channels_last=False)
        except DeviceError as exc:
            raise UsageError(str(exc)) from exc
        try:
            _, supernet = load_supernet_file(self.checkpoint)
        except CheckpointError as exc:
            raise UsageError(str(exc)) from exc
        execution.module(supernet)
        if hasattr(data, "to"):
            data.to(execution.device)

        def fn(arch: Arch, split: str) -> float:
            return subnet_accuracy(supernet, arch, data, split=split, bn_images=self.bn_images,
                                   max_images=self.max_images, batch_size=self.batch_size, seed=self.seed,
                                   execution=execution)

        return fn


# --- predictor -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictorReport:
    """Held-out quality of an accuracy predictor."""

    n_train: int
    n_test: int
    rmse: float
    spearman: float
    kendall: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AccuracyPredictor:
    """A small ReLU MLP on ``encode(space, arch)`` predicting accuracy (fitted with scikit-learn)."""

    def __init__(self, space: SearchSpace | str, hidden: tuple[int, ...] = (128, 128), seed: int = 0) -> None:
        self.space = get_space(space)
        self.hidden = tuple(hidden)
        self.seed = seed
        self.weights: list[np.ndarray] = []
        self.biases: list[np.ndarray] = []
        self.y_mean = 0.0
        self.y_std = 1.0

    def fit(self, archs: Sequence[Arch], accuracies: Sequence[float]) -> AccuracyPredictor:
        from sklearn.neural_network import MLPRegressor

        x = encode_many(self.space, archs).astype(np.float64)
        y = np.asarray(accuracies, dtype=np.float64)
        self.y_mean, self.y_std = float(y.mean()), float(y.std()) or 1.0
        # L-BFGS: the training sets are small (hundreds of subnets), where it converges fastest.
        mlp = MLPRegressor(hidden_layer_sizes=self.hidden, solver="lbfgs", alpha=1e-3, max_iter=500,
                           random_state=self.seed)
        mlp.fit(x, (y - self.y_mean) / self.y_std)
        self.weights = [np.asarray(w) for w in mlp.coefs_]
        self.biases = [np.asarray(b) for b in mlp.intercepts_]
        return self

    def predict_encoded(self, x: np.ndarray) -> np.ndarray:
        if not self.weights:
            raise RuntimeError("the accuracy predictor is not fitted")
        h = np.asarray(x, dtype=np.float64)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w + b
            if i < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        return h.ravel() * self.y_std + self.y_mean

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        """Predicted accuracies, clipped to [0, 1] (an MLP fitted on fractions may step just outside)."""
        return np.clip(self.predict_encoded(encode_many(self.space, archs)), 0.0, 1.0)

    __call__ = predict

    def to_dict(self) -> dict[str, Any]:
        return {"format": "hwnas-accuracy-mlp-1", "space": self.space.name, "hidden": list(self.hidden),
                "seed": self.seed, "y_mean": self.y_mean, "y_std": self.y_std,
                "weights": [w.tolist() for w in self.weights], "biases": [b.tolist() for b in self.biases]}

    def save(self, path: str | os.PathLike[str]) -> Path:
        from .io import atomic_write_json

        return atomic_write_json(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AccuracyPredictor:
        remedy = "move it away and run `nas search CONFIG` again to refit it"
        with reading(path, "accuracy predictor", remedy):
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("format") != "hwnas-accuracy-mlp-1":
                raise ValueError("not an accuracy predictor file")
            pred = cls(data["space"], tuple(data["hidden"]), int(data["seed"]))
            pred.y_mean, pred.y_std = float(data["y_mean"]), float(data["y_std"])
            pred.weights = [np.asarray(w, dtype=np.float64) for w in data["weights"]]
            pred.biases = [np.asarray(b, dtype=np.float64) for b in data["biases"]]
        return pred


def evaluate_predictor(predictor: Callable[[Sequence[Arch]], np.ndarray], archs: Sequence[Arch],
                       accuracies: Sequence[float], n_train: int = 0) -> PredictorReport:
    from scipy.stats import kendalltau, spearmanr

    y = np.asarray(accuracies, dtype=np.float64)
    p = np.asarray(predictor(archs), dtype=np.float64)
    return PredictorReport(n_train=n_train, n_test=len(y), rmse=float(np.sqrt(np.mean((p - y) ** 2))),
                           spearman=float(spearmanr(p, y).statistic), kendall=float(kendalltau(p, y).statistic))


def fit_accuracy_predictor(space: SearchSpace | str, evaluate: Callable[[Sequence[Arch]], np.ndarray],
                           n_samples: int = 200, holdout: float = 0.2, seed: int = 0,
                           hidden: tuple[int, ...] = (128, 128)) -> tuple[AccuracyPredictor, PredictorReport]:
    """Evaluate ``n_samples`` seeded random subnets (plus the largest and smallest) directly, fit the MLP on
    all but a held-out ``holdout`` share of the random ones, and report on that share."""
    space = get_space(space)
    archs = sample(space, n_samples, seed)
    n_test = max(2, int(round(holdout * n_samples)))
    train, test = archs[n_test:] + [largest(space), smallest(space)], archs[:n_test]
    y_all = np.asarray(evaluate(train + test), dtype=np.float64)
    y_train, y_test = y_all[:len(train)], y_all[len(train):]
    predictor = AccuracyPredictor(space, hidden, seed).fit(train, y_train)
    return predictor, evaluate_predictor(predictor.predict, test, y_test, n_train=len(train))


# --- one-off evaluation (``nas eval``) ------------------------------------------------------------------------


@dataclass(frozen=True)
class SubnetEvaluation:
    """Top-1 of one subnet inherited from a run's supernet."""

    arch_string: str
    arch_id: str
    split: str
    accuracy: float
    images: int          # evaluated
    bn_images: int       # training images its batch norms were recalibrated on (0: the supernet's statistics)
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def evaluate_subnets(config: Any, run: Any, archs: Sequence[Arch], split: str = "test",
                     max_images: int | None = None) -> list[SubnetEvaluation]:
    """Each arch extracted from the run's supernet (trained or imported), batch norms recalibrated on
    ``train.bn_recal_images`` training images as Once-for-All does before evaluating a subnet, top-1 on
    ``split`` (``test``: the dataset's test or ``val/`` tree; ``val``: the held-out training images) on
    ``train.device``, in this process. With a streaming ``folder`` dataset (ImageNet) images are decoded
    batch by batch: resized so the shorter side is ``image_size / 0.875``, centre-cropped, normalised with
    ImageNet's mean and std, then resized to the subnet's resolution.
    """
    import time

    from search_spaces import arch_to_string

    from .data import check_dataset, load_dataset

    if config.dataset is None:
        raise UsageError("the config has no dataset to evaluate on; add a dataset section (e.g. {kind: folder, "
                         "path: /data/imagenet, stream: true})")
    if split not in ("val", "test"):
        raise UsageError(f"split {split!r} is not allowed; allowed: val, test")
    if max_images is not None and max_images < 1:
        raise UsageError(f"max images: {max_images} is not allowed; must be >= 1")
    if not run.supernet_checkpoint.is_file():
        raise UsageError(f"run {run.root} has no supernet ({run.supernet_checkpoint}); run `nas train CONFIG` "
                         f"first (it imports the supernet when the config names one)")
    check_dataset(config.dataset)
    space = config.get_space()
    factory = SupernetAccuracy(str(run.supernet_checkpoint),
                               functools.partial(load_dataset, config.dataset, max(space.resolutions), config.seed),
                               bn_images=config.train.bn_recal_images, max_images=max_images, seed=config.seed,
                               device=config.train.device)
    factory.check()
    data = factory.data_factory()
    images = data.size(split) if max_images is None else min(data.size(split), max_images)
    fn = factory.with_data(data)
    results = []
    for arch in archs:
        started = time.perf_counter()
        value = fn(arch, split)
        results.append(SubnetEvaluation(arch_string=arch_to_string(space, arch), arch_id=arch.arch_id, split=split,
                                        accuracy=float(value), images=images, bn_images=config.train.bn_recal_images,
                                        seconds=time.perf_counter() - started))
    return results
