"""The accuracy objective: direct evaluation of subnets (cached, in parallel on Ray actors) or a predictor.

Direct: each subnet is extracted from the trained supernet, its batch norms recalibrated on training
images, and classified on the validation split (``supernets.training.evaluate.subnet_accuracy``). Results
are cached by arch id and split in ``accuracy.jsonl`` in the run folder (one JSON object per line,
appended and fsynced per batch; a torn last line is ignored), so no subnet is evaluated twice, across
restarts too. Evaluation runs on Ray actors that each load the supernet and the data once.

Quantised (``DirectEvaluator.evaluate(archs, split, policies)``, a ``search_spaces.PrecisionPolicy`` per arch
with an int8 group): the subnet is extracted and its batch norms recalibrated as for fp32, exported to its
deployed ONNX graph, its activation ranges calibrated on ``nas.quantize.CALIBRATION_IMAGES`` seeded training
images, quantised under the policy (QDQ) and its top-1 measured by ONNX Runtime on the CPU, with the actor's
threads, on the images the fp32 accuracy is measured on. The quantiser is ``nas.quantize.subnet_quantizer``'s,
the one ``nas quantize`` (``prepare_subnet``) writes its models with: the model measured is the model written
for that arch, policy and calibration method. An arch asked for under several policies in one call is
exported and calibrated once. Cached in ``accuracy.jsonl`` too, by arch id, split, policy string and
calibration method (the line records ``policy`` and ``quantization_method``; a line without ``policy`` is fp32,
so the fp32 lines are as they always were). ``DirectEvaluator.group_sensitivities``: how much each precision
group (stem, each stage, head) alone in int8 moves the subnet's outputs (mean KL from fp32 on the validation
images, ``nas.quantize.sensitivities``), least sensitive first; cached in ``sensitivity.jsonl`` beside
``accuracy.jsonl``, kept the same way.

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
from typing import Any, ClassVar

import numpy as np

from search_spaces import (
    Arch,
    PolicyError,
    PrecisionPolicy,
    SearchSpace,
    arch_to_string,
    connect_ray,
    encode_many,
    get_space,
    largest,
    policy_or_none,
    reading,
    sample,
    smallest,
    validate_policy,
)

from .errors import UsageError
from .quantize._ptq import QUANTIZER_ID
from .search_config import DEFAULT_QUANTIZATION_METHOD

__all__ = ["AccuracyCache", "AccuracyPredictor", "DirectEvaluator", "PredictorReport", "SensitivityCache",
           "SubnetEvaluation", "SupernetAccuracy", "check_run_supernet", "evaluate_subnets",
           "fit_accuracy_predictor"]

CACHE_NAME = "accuracy.jsonl"
SENSITIVITY_NAME = "sensitivity.jsonl"
PREDICTOR_NAME = "accuracy_predictor.json"
DEFAULT_METHOD = DEFAULT_QUANTIZATION_METHOD

ArchAccuracyFn = Callable[[Arch, str], float]
"""Accuracy (0..1) of one arch on one split (``"val"`` or ``"test"``)."""


def _read_lines(path: Path | None) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (none when absent); lines that do not parse (torn) are skipped."""
    rows: list[dict[str, Any]] = []
    if path is None or not path.exists():
        return rows
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _append_lines(path: Path | None, lines: Sequence[str]) -> None:
    """Append ``lines`` to ``path`` in one write, then fsync (a torn last line is closed first)."""
    if path is None or not lines:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        # A torn line from an earlier kill must not swallow the first new row.
        if handle.tell() > 0:
            with open(path, "rb") as check:
                check.seek(-1, os.SEEK_END)
                if check.read(1) != b"\n":
                    handle.write("\n")
        handle.write("\n".join(lines) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _policy_key(policy: PrecisionPolicy | None, method: str) -> tuple[str | None, str | None]:
    """(policy string, calibration method) of a cache key; (None, None) for fp32 throughout."""
    policy = policy_or_none(policy)
    return (None, None) if policy is None else (str(policy), method)


class AccuracyCache:
    """Accuracies by (arch id, split, precision policy, calibration method), persisted as JSON lines.

    fp32 (no policy, or fp32 throughout) is one subnet whatever the method: its lines carry neither field. A
    quantised line carries the quantiser's id (``nas.quantize.QUANTIZER_ID``); lines of another quantiser (or of
    none, from before the id) are not read, so those subnets are evaluated again. With ``supernet`` (its
    ``nas.study.supernet_identity``) lines carry it, and lines of another supernet (an import replaced since) are
    not read; lines written before the field are read.
    """

    def __init__(self, path: str | os.PathLike[str] | None, supernet: str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.supernet = supernet
        self._values: dict[tuple[str, str, str | None, str | None], float] = {}
        for row in _read_lines(self.path):
            try:
                if supernet is not None and row.get("supernet", supernet) != supernet:
                    continue
                policy = row.get("policy")
                if policy is not None and row.get("quantizer") != QUANTIZER_ID:
                    continue
                method = None if policy is None else str(row.get("quantization_method", DEFAULT_METHOD))
                self._values[(row["arch_id"], row["split"], policy, method)] = float(row["accuracy"])
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a kill

    def __len__(self) -> int:
        return len(self._values)

    def get(self, arch_id: str, split: str = "val", policy: PrecisionPolicy | None = None,
            method: str = DEFAULT_METHOD) -> float | None:
        """The accuracy of the arch on ``split`` under ``policy`` (None: fp32) calibrated with ``method``."""
        return self._values.get((arch_id, split, *_policy_key(policy, method)))

    def put_many(self, rows: Sequence[tuple[Arch, str, float]],
                 policies: Sequence[PrecisionPolicy | None] | None = None, method: str = DEFAULT_METHOD) -> None:
        """Record ``(arch, split, accuracy)`` rows (under ``policies``, one per row, calibrated with ``method``;
        None: fp32); appended to the file in one write, then fsynced."""
        lines = []
        for i, (arch, split, acc) in enumerate(rows):
            policy, used = _policy_key(policies[i] if policies is not None else None, method)
            self._values[(arch.arch_id, split, policy, used)] = float(acc)
            row: dict[str, Any] = {"arch_id": arch.arch_id, "split": split, "accuracy": float(acc),
                                   "arch": arch.to_dict()}
            if self.supernet is not None:
                row["supernet"] = self.supernet
            if policy is not None:
                row.update(policy=policy, quantization_method=used, quantizer=QUANTIZER_ID)
            lines.append(json.dumps(row, sort_keys=True))
        _append_lines(self.path, lines)


class SensitivityCache:
    """Per-group int8 sensitivities by (arch id, calibration method), persisted as JSON lines.

    A value is one ``(group, kl, accuracy)`` per precision group (``nas.quantize.group_units(space, arch,
    "stage")``), in the subnet's order: KL of the outputs from fp32's and top-1 on the validation images with
    that group alone int8.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self._values: dict[tuple[str, str], list[tuple[str, float, float]]] = {}
        for row in _read_lines(self.path):
            try:
                groups = [(str(g["group"]), float(g["kl"]), float(g["accuracy"])) for g in row["groups"]]
                self._values[(row["arch_id"], str(row["quantization_method"]))] = groups
            except (ValueError, KeyError, TypeError):
                continue

    def __len__(self) -> int:
        return len(self._values)

    def get(self, arch_id: str, method: str = DEFAULT_METHOD) -> list[tuple[str, float, float]] | None:
        return self._values.get((arch_id, method))

    def put_many(self, rows: Sequence[tuple[Arch, list[tuple[str, float, float]]]],
                 method: str = DEFAULT_METHOD) -> None:
        """Record ``(arch, [(group, kl, accuracy), ...])`` rows; appended in one write, then fsynced."""
        lines = []
        for arch, groups in rows:
            values = [(str(g), float(kl), float(acc)) for g, kl, acc in groups]
            self._values[(arch.arch_id, method)] = values
            lines.append(json.dumps({"arch_id": arch.arch_id, "quantization_method": method, "split": "val",
                                     "groups": [{"group": g, "kl": kl, "accuracy": acc} for g, kl, acc in values],
                                     "arch": arch.to_dict()}, sort_keys=True))
        _append_lines(self.path, lines)


class _Actor:
    """Body of the Ray actor: builds the evaluation function once (loading the supernet and data)."""

    def __init__(self, factory: Callable[[], ArchAccuracyFn], threads: int) -> None:
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        self.threads = threads
        self.fn = factory()

    def evaluate(self, arch_dicts: list[dict], split: str) -> list[float]:
        return [float(self.fn(Arch.from_dict(d), split)) for d in arch_dicts]

    def _quantizing(self) -> Any:
        if not callable(getattr(self.fn, "quantized_accuracy", None)):
            raise UsageError("this accuracy function cannot evaluate quantised subnets (a SupernetAccuracy can)")
        return self.fn

    def evaluate_quantized(self, items: list[tuple[dict, list[PrecisionPolicy]]], split: str, method: str
                           ) -> list[list[float]]:
        fn = self._quantizing()
        return [[float(v) for v in fn.quantized_accuracy(Arch.from_dict(d), split, policies, method, self.threads)]
                for d, policies in items]

    def sensitivities(self, arch_dicts: list[dict], method: str) -> list[list[tuple[str, float, float]]]:
        fn = self._quantizing()
        return [fn.group_sensitivities(Arch.from_dict(d), method, self.threads) for d in arch_dicts]


class DirectEvaluator:
    """Direct accuracy of subnets, in fp32 or quantised under a precision policy, cached, evaluated in
    parallel on Ray actors.

    Args:
        factory: a picklable zero-argument callable returning ``(arch, split) -> accuracy``; it runs once in
            each actor (e.g. ``SupernetAccuracy``, which loads the supernet and data there). Quantised
            accuracies and sensitivities need a factory with ``quantizes = True`` whose function also has
            ``quantized_accuracy(arch, split, policies, method, threads) -> [accuracy]`` and
            ``group_sensitivities(arch, method, threads) -> [(group, kl, accuracy)]`` (``SupernetAccuracy``).
        cache: where results are kept (``AccuracyCache``); ``None`` keeps them in memory only.
        workers: Ray actors; 0 evaluates in this process (no Ray).
        threads_per_worker: torch threads in each actor (0 leaves torch's default), and ONNX Runtime's threads
            for quantised subnets (0: ONNX Runtime's default).
        gpus_per_worker: GPUs Ray reserves for each actor (0: CPU actors; the factory decides the device).
        quantization_method: how int8 activation ranges are calibrated (``minmax``, ``entropy``,
            ``percentile``); None: the factory's ``quantization_method`` (``minmax`` when it has none).
        sensitivity_cache: where group sensitivities are kept; None: ``sensitivity.jsonl`` beside the
            accuracy cache's file (in memory when that has none).
    """

    def __init__(self, factory: Callable[[], ArchAccuracyFn], cache: AccuracyCache | None = None,
                 workers: int = 2, threads_per_worker: int = 1, gpus_per_worker: float = 0.0,
                 quantization_method: str | None = None, sensitivity_cache: SensitivityCache | None = None) -> None:
        from .quantize._ptq import check_method

        self.factory = factory
        self.cache = cache if cache is not None else AccuracyCache(None)
        self.sensitivity_cache = sensitivity_cache if sensitivity_cache is not None else SensitivityCache(
            self.cache.path.with_name(SENSITIVITY_NAME) if self.cache.path is not None else None)
        self.workers = workers
        self.threads = threads_per_worker
        self.gpus = gpus_per_worker
        self.quantization_method = check_method(
            quantization_method if quantization_method is not None
            else getattr(factory, "quantization_method", DEFAULT_METHOD))
        self._actors: list[Any] = []
        self._local: _Actor | None = None
        self.evaluations = 0
        self.quantizers_built = 0

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

    def _run(self, method: str, items: list[Any], *args: Any) -> list[Any]:
        """``_Actor.<method>(items, *args)``: in this process, or the items dealt out over the actors."""
        self._start()
        if self._local is not None:
            return getattr(self._local, method)(items, *args)
        import ray

        chunks = [list(range(len(items)))[i::len(self._actors)] for i in range(len(self._actors))]
        refs = [(chunk, getattr(actor, method).remote([items[j] for j in chunk], *args))
                for actor, chunk in zip(self._actors, chunks) if chunk]
        out: list[Any] = [None] * len(items)
        for chunk, ref in refs:
            for j, value in zip(chunk, ray.get(ref)):
                out[j] = value
        return out

    def _check_quantizes(self) -> None:
        if not getattr(self.factory, "quantizes", False):
            raise UsageError(f"the accuracy function {type(self.factory).__name__} cannot evaluate quantised "
                             f"subnets; a SupernetAccuracy (a run's supernet and dataset) can")

    def _policies(self, archs: Sequence[Arch], policies: Sequence[PrecisionPolicy | None] | None
                  ) -> list[PrecisionPolicy | None]:
        """One canonical policy or None (fp32 throughout) per arch; ``UsageError`` for one that does not fit."""
        if policies is None:
            return [None] * len(archs)
        policies = list(policies)
        if len(policies) != len(archs):
            raise UsageError(f"{len(policies)} precision policies for {len(archs)} subnets; give one per subnet "
                             f"(None for fp32)")
        out: list[PrecisionPolicy | None] = []
        for arch, policy in zip(archs, policies):
            if policy is not None and not isinstance(policy, PrecisionPolicy):
                raise UsageError(f"precision policy {policy!r} is not allowed; give a PrecisionPolicy or None (fp32)")
            if policy is not None:
                space = get_space(arch.space)
                try:
                    validate_policy(space, policy, arch)
                except PolicyError as exc:
                    raise UsageError(f"{exc} (subnet {arch_to_string(space, arch)})") from None
            out.append(policy_or_none(policy))
        return out

    def evaluate(self, archs: Sequence[Arch], split: str = "val",
                 policies: Sequence[PrecisionPolicy | None] | None = None) -> np.ndarray:
        """Accuracy of each arch on ``split``, under its precision policy (``policies``: one per arch; None,
        or a policy fp32 throughout, is the fp32 subnet); only what is not in the cache is evaluated (each
        once). Quantised subnets are measured in ONNX Runtime (see the module); an arch asked for under several
        policies is exported and calibrated once.

        Raises:
            UsageError: a policy that does not fit its arch (before any evaluation), or a factory that cannot
                quantise.
        """
        archs = list(archs)
        chosen = self._policies(archs, policies)
        method = self.quantization_method
        missing: dict[str, Arch] = {}
        quantized: dict[str, tuple[Arch, dict[str, PrecisionPolicy]]] = {}
        for arch, policy in zip(archs, chosen):
            if self.cache.get(arch.arch_id, split, policy, method) is not None:
                continue
            if policy is None:
                missing.setdefault(arch.arch_id, arch)
            else:
                quantized.setdefault(arch.arch_id, (arch, {}))[1].setdefault(str(policy), policy)
        if quantized:
            self._check_quantizes()
        if missing:
            todo = list(missing.values())
            values = self._run("evaluate", [a.to_dict() for a in todo], split)
            self.cache.put_many([(a, split, v) for a, v in zip(todo, values)])
            self.evaluations += len(todo)
        if quantized:
            groups = [(arch, list(wanted.values())) for arch, wanted in quantized.values()]
            results = self._run("evaluate_quantized", [(a.to_dict(), ps) for a, ps in groups], split, method)
            rows = [(a, split, v) for (a, ps), vs in zip(groups, results) for v in vs]
            self.cache.put_many(rows, [p for _, ps in groups for p in ps], method)
            self.evaluations += len(rows)
            self.quantizers_built += len(groups)
        return np.array([self.cache.get(a.arch_id, split, p, method) for a, p in zip(archs, chosen)],
                        dtype=np.float64)

    __call__ = evaluate

    def group_sensitivities(self, archs: Sequence[Arch]) -> list[list[tuple[str, float]]]:
        """Per arch, each precision group (stem, each stage, head: ``nas.quantize.group_units(space, arch,
        "stage")`` by ``unit_name``) with the mean KL divergence of the subnet's outputs when that group alone is
        int8 from the fp32 subnet's, on the validation images (``nas.quantize.sensitivities``), least sensitive
        first (ties in group order). Cached in ``sensitivity_cache``; each arch computed once.

        Raises:
            UsageError: a factory that cannot quantise.
        """
        archs = list(archs)
        method = self.quantization_method
        missing: dict[str, Arch] = {}
        for arch in archs:
            if self.sensitivity_cache.get(arch.arch_id, method) is None:
                missing.setdefault(arch.arch_id, arch)
        if missing:
            self._check_quantizes()
            todo = list(missing.values())
            values = self._run("sensitivities", [a.to_dict() for a in todo], method)
            self.sensitivity_cache.put_many(list(zip(todo, values)), method)
            self.quantizers_built += len(todo)
        out = []
        for arch in archs:
            groups = self.sensitivity_cache.get(arch.arch_id, method) or []
            out.append([(g, kl) for g, kl, _ in sorted(groups, key=lambda row: row[1])])  # stable: group order
        return out

    def close(self) -> None:
        if self._actors:
            import ray

            for actor in self._actors:
                ray.kill(actor)
            self._actors = []


IMPORTED_HASH_PREFIX = "ofa-import-"  # an imported supernet's ``config_hash`` (``nas.ofa_zoo.import_ofa_supernet``)


def check_run_supernet(config: Any, run: Any) -> bool:
    """``UsageError`` unless the run's ``supernet.pt`` is the one ``config`` describes, so nothing is searched,
    evaluated or skipped as done on another experiment's weights (another seed may put test images in its
    training split). What ``nas train`` checks before it calls a run trained, for every later stage:

    * trained: the checkpoint's space and ``config_hash`` are the config's (``check_identity``, the same check
      and message as training's);
    * imported from Once-for-All's zoo (its hash ``ofa-import-<sha256>``, no training settings): its space is
      the config's and, when the config's ``supernet`` section names a zoo file that is there, it came from
      that file;
    * a config that imports, on a run whose supernet was trained: refused.

    A missing checkpoint is left to the caller (each names the command that makes one). Returns whether the
    supernet was imported.
    """
    from supernets.training.checkpoint import CheckpointError, check_identity, read_supernet_file

    path = run.supernet_checkpoint
    try:
        data = read_supernet_file(path)
        held = str(data.get("config_hash", ""))
        if not held.startswith(IMPORTED_HASH_PREFIX) and config.supernet is None:
            check_identity(data, path, config.space, config.config_hash)
            _check_data(config, data, run, imported=False)
            return False
        check_identity(data, path, config.space, held)  # an import has no training identity: its space only
    except CheckpointError as exc:
        from .config import differences_note

        raise UsageError(str(exc) + differences_note(run.config_copy, config)) from exc
    _check_data(config, data, run, imported=True)
    if config.supernet is None:
        return True
    if not held.startswith(IMPORTED_HASH_PREFIX):
        raise UsageError(f"run {run.root} holds a trained supernet, and the config imports {config.supernet.path}: "
                         f"use another run_dir")
    from .ofa_zoo import sha256_file

    source = Path(config.supernet.path)
    sha = ((data.get("summary") or {}).get("imported") or {}).get("sha256")
    if source.is_file() and sha != sha256_file(source):
        raise UsageError(f"run {run.root} holds a supernet imported from another file (sha256 {str(sha)[:16]}...); "
                         f"the config imports {source}: use another run_dir")
    return True


def _check_data(config: Any, checkpoint: dict[str, Any], run: Any, imported: bool) -> None:
    """``UsageError`` when the config's data is not what the run's supernet was trained on: files added,
    removed or renamed since training (``nas.data.check_same_data`` against ``run.data_record``; a test image
    could be a training image), or another number of classes than the classifier's (labels shifted, or
    labels it cannot give). An imported supernet may be scored on part of its classes (an ImageNet tree of
    some classes)."""
    if config.dataset is None:
        return
    from .data import check_same_data, num_classes

    if not imported:
        check_same_data(run.data_record, config.dataset)
    if "num_classes" not in checkpoint:
        return
    model, found = int(checkpoint["num_classes"]), num_classes(config.dataset)
    if found > model or (found != model and not imported):
        where = f"dataset.path {config.dataset.path}" if config.dataset.path else f"dataset.kind {config.dataset.kind}"
        raise UsageError(f"{where} has {found} classes and the supernet {run.supernet_checkpoint} classifies {model}"
                         + ("" if imported else ": the data changed since training (a class folder added or "
                            "removed?); restore it, or train in another run_dir"))


@dataclass(frozen=True)
class SupernetAccuracy:
    """Picklable factory of ``(arch, split) -> accuracy`` from a supernet checkpoint and a data source.

    ``data_factory`` (picklable, zero arguments) returns a ``supernets.training.evaluate.DataSource``
    (``nas.data`` builds one from the experiment config). The function it returns also measures quantised
    subnets (``quantized_accuracy``) and their groups' int8 sensitivities (``group_sensitivities``) with
    ``nas.quantize.subnet_quantizer``, as ``nas quantize`` makes them for a run whose config has these
    ``bn_images`` (``train.bn_recal_images``) and ``seed``.
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
    # How int8 activation ranges are calibrated (``search.quantization_method``).
    quantization_method: str = DEFAULT_METHOD
    quantizes: ClassVar[bool] = True

    def __post_init__(self) -> None:
        from .quantize._ptq import check_method

        check_method(self.quantization_method)

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

        try:
            # The default memory format, also on the CPU where training uses channels-last: the quantised
            # subnets must be those `nas quantize` and the export make, bit for bit (their BN recalibration and
            # calibration ranges), and a cached accuracy must not depend on where it was computed.
            execution = Execution.resolve(self.device, "fp32", channels_last=False)
        except DeviceError as exc:
            raise UsageError(str(exc)) from exc
        try:
            space, supernet = load_supernet_file(self.checkpoint)
        except CheckpointError as exc:
            raise UsageError(str(exc)) from exc
        execution.module(supernet)
        if hasattr(data, "to"):
            data.to(execution.device)
        return _SupernetAccuracyFn(self, space, supernet, data, execution)


class _SupernetAccuracyFn:
    """What ``SupernetAccuracy`` returns: the supernet and data loaded once, the subnets' accuracies from them."""

    def __init__(self, settings: SupernetAccuracy, space: SearchSpace, supernet: Any, data: Any,
                 execution: Any) -> None:
        self.settings, self.space, self.supernet, self.data, self.execution = (settings, space, supernet, data,
                                                                              execution)
        self._images: tuple[tuple[str, int], Any] | None = None

    def __call__(self, arch: Arch, split: str) -> float:
        from supernets.training.evaluate import subnet_accuracy

        s = self.settings
        return subnet_accuracy(self.supernet, arch, self.data, split=split, bn_images=s.bn_images,
                               max_images=s.max_images, batch_size=s.batch_size, seed=s.seed,
                               execution=self.execution)

    def split_images(self, split: str, resolution: int) -> Any:
        """The images of ``split`` the fp32 accuracy is measured on (the first ``max_images``), in [0, 1] at
        ``resolution``; the last set is kept when the dataset is in memory (a streamed one is read again)."""
        from .quantize import split_images

        key = (split, resolution)
        if self._images is not None and self._images[0] == key:
            return self._images[1]
        images = split_images(self.data, split, resolution, self.settings.max_images)
        if hasattr(self.data, "splits"):
            self._images = (key, images)
        return images

    def quantizer(self, arch: Arch) -> Any:
        """``arch``'s quantiser, made as ``nas quantize`` makes it (``nas.quantize.subnet_quantizer``)."""
        from .quantize import _flow

        return _flow.subnet_quantizer(self.space, self.supernet, arch, self.data, seed=self.settings.seed,
                                      bn_images=self.settings.bn_images, calibration=_flow.CALIBRATION_IMAGES,
                                      execution=self.execution)

    def quantized_accuracy(self, arch: Arch, split: str, policies: Sequence[PrecisionPolicy], method: str,
                           threads: int = 0) -> list[float]:
        """Top-1 of ``arch`` under each policy in ONNX Runtime (CPU, ``threads``; 0: its default), on the
        images of ``split``; one export and one calibration for all of them."""
        from .quantize import top1

        quantizer = self.quantizer(arch)
        images = self.split_images(split, arch.resolution)
        return [top1(quantizer.quantize(p, method), images, threads=threads) for p in policies]

    def group_sensitivities(self, arch: Arch, method: str, threads: int = 0) -> list[tuple[str, float, float]]:
        """Each group of ``arch`` (``group_units(space, arch, "stage")``) alone in int8: ``(group, KL from fp32,
        top-1)`` on the validation images, in group order."""
        from .quantize import group_units, sensitivities

        quantizer = self.quantizer(arch)
        images = self.split_images("val", arch.resolution)
        units = group_units(self.space, arch, "stage")
        return [(g.group, float(g.kl), float(g.accuracy))
                for g in sensitivities(quantizer, self.space, arch, images, units, method, threads)]


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

    from .data import check_dataset, check_split_sizes, load_dataset

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
    check_run_supernet(config, run)  # another config's supernet (seed, split) is refused, as `nas train` does
    check_dataset(config.dataset)
    check_split_sizes(config.dataset, config.seed, {split: (1, f"nas eval --split {split}")})
    space = config.get_space()
    factory = SupernetAccuracy(str(run.supernet_checkpoint),
                               functools.partial(load_dataset, config.dataset, max(space.resolutions), config.seed),
                               bn_images=config.train.bn_recal_images, max_images=max_images, seed=config.seed,
                               device=config.train.device)
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
