"""Experiment configs: one YAML file per experiment, parsed once (``yaml.safe_load``) into frozen dataclasses.

Format (every key optional except ``name`` and ``space``)::

    name: quickstart            # run folder name: runs/<name>/ under the current directory (letters, digits, -, _, .)
    space: ofa_mbv3_cifar       # a registered space (``nas spaces``)
    seed: 0
    run_dir: null               # another run folder (relative paths resolve against the current directory)
    dataset: {kind: digits, path: null, val_fraction: 0.1, ...}     # nas.data.DatasetConfig
    train:                                                          # supernets.training.TrainSettings
      strategy: sandwich                   # (the default) or progressive_shrinking
      epochs_scale: 0.1                    # scales every phase's epochs
      lr: 0.1
      phases:                              # optional; default: the strategy's schedule (OFA / sandwich)
        - {name: full, epochs: 2, lr: 0.1, elastic: {resolutions: [24, 32]}}
        - {name: kernel, epochs: 2, lr: 0.03, elastic: {kernel_sizes: [3, 5, 7]}, distill_weight: 1.0}
    ray: {address: null, num_workers: 1, cpus_per_worker: 1, max_failures: 2}   # RaySettings (counts <= 100000)
    supernet: {import: ofa, path: ..., accuracy_predictor: ...}   # optional: import, do not train (SupernetImport)
    devices: [local-cpu-1t-ort, {id: note10, max_latency_ms: 20}]   # or a mapping; nas.search_config
    latency: {table: true, fit_samples: 0, ...}                     # nas.latency_config.LatencySettings
    search: {sampler: nsga2, n_trials: 500, ...}                    # nas.search_config.SearchConfig

With a ``supernet`` section the experiment imports a published supernet (Once-for-All's model zoo) instead
of training one: the ``train`` stage of ``nas run`` becomes an import, and ``dataset`` may be left out, in
which case there is no data (``config.dataset is None``): accuracy comes from the imported predictor only
(``search.accuracy: predictor`` is then required) and exports keep the supernet's batch-norm statistics.

Every section is parsed and checked when the file is read, so a mistake in any of them (an unknown key, a
number out of range or not finite, a resolution the space lacks) stops ``nas train``, ``nas search`` and
``nas run`` before any work. Unknown keys and bad values raise ``UsageError`` naming the key and what is
allowed. Relative paths
(``run_dir``, ``dataset.path``) resolve against the current directory. To add a typed section later, write
its frozen dataclass, add a parser to ``SECTION_PARSERS`` and change the field's type below.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import stat
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from search_spaces import SearchSpace, UnknownSpaceError, get_space, ray_address_problem, short_text
from supernets.training import (
    DEVICES,
    ELASTIC_DIMENSIONS,
    GRADIENT_SYNCS,
    PRECISIONS,
    SANDWICH_SUBSETS,
    STRATEGIES,
    Phase,
    RaySettings,
    TrainSettings,
    check_recipe,
    make_phase,
    validate_phase,
)

from .data import DATASET_KINDS, DatasetConfig
from .errors import UsageError
from .latency_config import LatencySettings
from .search_config import SearchConfig

SUPERNET_IMPORTS = ("ofa",)
"""Kinds of published supernets a config can import (``supernet: {import: ofa, ...}``)."""


@dataclass(frozen=True)
class SupernetImport:
    """The ``supernet`` section: a published supernet (and accuracy predictor) imported instead of trained."""

    # Whose files: ``ofa`` (Once-for-All's model zoo; ``nas.ofa_zoo``).
    kind: str
    # The supernet checkpoint, absolute (``~`` and ``$VARS`` expanded, relative paths against the current
    # directory when the config is read).
    path: str
    # The zoo's accuracy predictor (``acc_predictor.pth``), absolute; None: none imported.
    accuracy_predictor: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The section as written in a config (``import`` is the YAML key of ``kind``)."""
        return {"import": self.kind, "path": self.path, "accuracy_predictor": self.accuracy_predictor}


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: what is trained (or imported), on which data, where, how latency is measured and how
    the search runs (its ``search`` holds the ``devices`` section too)."""

    name: str
    space: str
    seed: int = 0
    run_dir: str | None = None
    # None only in an import config without a ``dataset`` section: no data at all.
    dataset: DatasetConfig | None = field(default_factory=DatasetConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    ray: RaySettings = field(default_factory=RaySettings)
    latency: LatencySettings = field(default_factory=LatencySettings)
    search: SearchConfig = field(default_factory=SearchConfig)
    # A published supernet to import instead of training (None: train).
    supernet: SupernetImport | None = None
    # The file it was read from (None when built in code).
    source: str | None = field(default=None, compare=False)

    def get_space(self) -> SearchSpace:
        """The registered space named by ``space``."""
        try:
            return get_space(self.space)
        except UnknownSpaceError as exc:
            raise UsageError(f"space: {exc}") from exc

    def training_identity(self) -> dict[str, Any]:
        """The settings that define the trained weights (checked against every checkpoint)."""
        defaults = {f.name: f.default for f in dataclasses.fields(TrainSettings)
                    if f.name in TrainSettings.LATER_FIELDS}
        train = {k: v for k, v in _plain(self.train).items() if k not in TrainSettings.EXECUTION_FIELDS
                 and not (k in defaults and v == defaults[k])}
        return {"space": self.space, "seed": self.seed, "dataset": _plain(self.dataset), "train": train}

    def identity_differences(self, other: ExperimentConfig) -> list[str]:
        """Where ``other``'s training identity differs from this one's, each as ``key: OTHER -> THIS`` (dotted
        keys, list items by index: ``train.phases[0].lr``), in key order; empty when they match."""
        mine, theirs = _flat(self.training_identity()), _flat(other.training_identity())

        def shown(flat: dict[str, Any], key: str) -> str:
            return _shown(flat[key]) if key in flat else "(absent)"

        return [f"{key}: {shown(theirs, key)} -> {shown(mine, key)}" for key in sorted(mine.keys() | theirs.keys())
                if key not in mine or key not in theirs or mine[key] != theirs[key]]

    @property
    def config_hash(self) -> str:
        """A 16-hex-digit hash of ``training_identity`` (ray, paths and later stages do not count)."""
        canonical = json.dumps(self.training_identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-ready form with every default filled in (the run folder's config copy)."""
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
               if f.name not in ("source", "search", "latency")}
        out["train"]["phases"] = [_phase_dict(p) for p in self.train.phases]
        out["supernet"] = self.supernet.to_dict() if self.supernet is not None else None
        out["latency"] = self.latency.to_dict()
        out.update(self.search.to_dict())  # devices and search
        return out


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """``value`` (plain dicts and lists) as ``{dotted key: leaf}``; a list of (name, value) pairs (a phase's
    elastic dimensions) counts as a mapping."""
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], str) for v in value):
        value = dict(value)
    if isinstance(value, Mapping):
        items = [(f"{prefix}.{k}" if prefix else str(k), v) for k, v in value.items()]
    elif isinstance(value, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple)) for v in value):
        items = [(f"{prefix}[{i}]", v) for i, v in enumerate(value)]
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in items:
        out.update(_flat(item, key))
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _phase_dict(phase: Phase) -> dict[str, Any]:
    d = _plain(phase)
    d["elastic"] = {k: list(v) for k, v in phase.elastic}
    return d


# ---------------------------------------------------------------------------------------------------------
# Parsing.


def _fmt_allowed(values: Any) -> str:
    return ", ".join(str(v) for v in values)


def _mapping(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise UsageError(f"{where} must be a mapping of keys to values, got {type(raw).__name__}")
    return dict(raw)


def _check_keys(raw: Mapping[str, Any], where: str, allowed: typing.Iterable[str]) -> None:
    allowed = list(allowed)
    for key in raw:
        if key not in allowed:
            raise UsageError(f"{where}: unknown key {key!r}; allowed: {_fmt_allowed(allowed)}")


INT_LIMIT = 2**63 - 1
"""Largest integer a config may hold (every count ends up in a numpy or torch int64)."""

SEED_LIMIT = 2**32 - 1
"""Largest seed (numpy's legacy and scikit-learn's ``random_state`` limit); seeds are >= 0 (numpy's
``default_rng`` refuses negative ones)."""

RAY_COUNT_LIMIT = 100_000
"""Largest count of the ``ray`` section (workers, CPUs or GPUs per worker, CPUs, restarts): Ray refuses
resource quantities above 1e14 only once it runs, and no cluster comes near this."""

THREAD_LIMIT = 1024
"""Largest count of threads or loader processes per worker."""

IMAGE_SIDE_LIMIT = 4096
"""Largest side of the stored images (``dataset.image_size``) and of a crop's padding, in pixels."""

IMAGE_COUNT_LIMIT = 10_000_000
"""Largest number of images of a setting that counts them (``train.bn_recal_images``)."""

CONFIG_SIZE_LIMIT = 4 * 2**20
"""Largest config file read, in bytes (configs are a few kilobytes; a device or a huge file is refused)."""

_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
"""A run name: a plain folder name that does not start with a dot."""


def _shown(value: Any) -> str:
    """``repr(value)``, cut to 40 characters (a 400-digit number in a one-line error helps nobody)."""
    if isinstance(value, int) and abs(value) >= 10**40:
        return f"a number of about {round(value.bit_length() * math.log10(2))} digits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """``value`` checked against a simple annotation (int, float, str, bool, optional of those)."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None:
        if type(None) in options:
            return None
        raise UsageError(f"{key} must not be empty")
    for kind in options:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > INT_LIMIT:
                raise UsageError(f"{key}: {_shown(value)} is not allowed; expected an integer of at most "
                                 f"{INT_LIMIT}")
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond float's range
                number = math.inf
            if not math.isfinite(number):
                raise UsageError(f"{key}: {_shown(value)} is not allowed; expected a finite number")
            return number
        if kind is str and isinstance(value, str):
            return value
    names = " or ".join("null" if k is type(None) else k.__name__ for k in options)
    raise UsageError(f"{key}: {_shown(value)} is not allowed; expected {names}")


def check_seed(value: Any, key: str) -> int:
    """``value`` as a seed (an integer in [0, ``SEED_LIMIT``]); ``UsageError`` naming ``key`` otherwise. The one
    seed check: the config's ``seed`` and the command line's ``--seed`` options."""
    seed = _coerce(value, int, key)
    if not 0 <= seed <= SEED_LIMIT:
        raise UsageError(f"{key}: {seed} is not allowed; a seed is an integer from 0 to {SEED_LIMIT}")
    return seed


def _parse_dataclass(cls: type, raw: Any, where: str, skip: tuple[str, ...] = (),
                     checks: Mapping[str, Callable[[Any], str | None]] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``cls`` from ``raw``, each field type- and range-checked."""
    raw = _mapping(raw, where)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    _check_keys(raw, where, names)
    kwargs = {}
    for name in names:
        if name in skip or name not in raw:
            continue
        key = f"{where}.{name}"
        kwargs[name] = _coerce(raw[name], hints[name], key)
        problem = (checks or {}).get(name, lambda _v: None)(kwargs[name])
        if problem:
            raise UsageError(f"{key}: {_shown(kwargs[name])} is not allowed; {problem}")
    return kwargs


def _positive(value: Any) -> str | None:
    return None if value is None or value > 0 else "must be > 0"


def _non_negative(value: Any) -> str | None:
    return None if value is None or value >= 0 else "must be >= 0"


def _fraction(value: Any) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def _in_range(low: int, high: int) -> Callable[[Any], str | None]:
    """From ``low`` (0, or 1 for an integer) to ``high``; said as ``_positive`` / ``_non_negative`` say the first."""
    floor = "> 0" if low == 1 else f">= {low}"
    return lambda value: None if value is None or low <= value <= high else f"must be {floor} and <= {high}"


def _ray_address(value: Any) -> str | None:
    problem = None if value is None else ray_address_problem(value)
    return problem and f"{problem}; or null to start Ray here"


def _held_out_fraction(value: Any) -> str | None:
    """A part held out as a split that must not be empty (the test split of data without one of its own)."""
    return None if 0 < value < 1 else "must be in (0, 1): a split that holds no images would be scored as 0"


def _one_of(allowed: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda value: None if value in allowed else f"allowed: {_fmt_allowed(allowed)}"


def parse_dataset(raw: Any) -> DatasetConfig:
    config = DatasetConfig(**_parse_dataclass(DatasetConfig, raw, "dataset", checks={
        "kind": _one_of(DATASET_KINDS), "val_fraction": _fraction, "test_fraction": _held_out_fraction,
        "max_train_images": _positive, "max_test_images": _positive, "crop_padding": _in_range(0, IMAGE_SIDE_LIMIT),
        "image_size": _in_range(1, IMAGE_SIDE_LIMIT), "loader_workers": _in_range(0, THREAD_LIMIT),
    }))
    if config.kind != "folder" and config.stream:
        raise UsageError(f"dataset.stream: true is for kind folder (an image tree read from disk per batch); "
                         f"kind {config.kind} is held in memory: remove it")
    if config.kind == "digits" and config.path is not None:
        raise UsageError(f"dataset.path: {_shown(config.path)} is not allowed with kind digits (scikit-learn's "
                         f"bundled images, read from no path); remove it, or set kind to cifar10 or folder")
    return config


def _parse_phase(raw: Any, where: str, space: SearchSpace) -> Phase:
    raw = _mapping(raw, where)
    kwargs = _parse_dataclass(Phase, raw, where, skip=("elastic",), checks={
        "epochs": _positive, "lr": _positive, "subnets_per_step": _positive, "distill_weight": _non_negative})
    for required in ("epochs", "lr"):
        if required not in kwargs:
            raise UsageError(f"{where}: {required} is required")
    elastic = _mapping(raw.get("elastic"), f"{where}.elastic")
    _check_keys(elastic, f"{where}.elastic", ELASTIC_DIMENSIONS)
    for dimension, values in elastic.items():
        if not isinstance(values, list) or not values:
            raise UsageError(f"{where}.elastic.{dimension} must be a non-empty list of values")
    kwargs.setdefault("name", where.rsplit(".", 1)[-1])
    phase = make_phase(kwargs.pop("name"), kwargs.pop("epochs"), kwargs.pop("lr"), elastic, **kwargs)
    try:
        return validate_phase(space, phase)
    except ValueError as exc:
        raise UsageError(f"{where}: {exc}") from exc


def parse_train(raw: Any, space: SearchSpace) -> TrainSettings:
    raw = _mapping(raw, "train")
    kwargs = _parse_dataclass(TrainSettings, raw, "train", skip=("phases",), checks={
        "strategy": _one_of(STRATEGIES), "epochs_scale": _positive, "lr": _positive, "batch_size": _positive,
        "momentum": _fraction, "weight_decay": _non_negative, "kd_temperature": _positive,
        "kernel_transform_lr": _non_negative, "sandwich_labels": _one_of(SANDWICH_SUBSETS),
        "sandwich_dropout": _one_of(SANDWICH_SUBSETS),
        "max_steps_per_epoch": _positive, "bn_recal_images": _in_range(0, IMAGE_COUNT_LIMIT),
        "eval_random_subnets": _in_range(0, 1_000), "max_val_images": _positive,
        "threads_per_worker": _in_range(1, THREAD_LIMIT),
        "label_smoothing": _fraction, "device": _one_of(DEVICES), "precision": _one_of(PRECISIONS),
        "gradient_sync": _one_of(GRADIENT_SYNCS),
    })
    phases = raw.get("phases")
    if phases is not None:
        if not isinstance(phases, list):
            raise UsageError("train.phases must be a list of phases")
        kwargs["phases"] = tuple(_parse_phase(p, f"train.phases[{i}]", space) for i, p in enumerate(phases))
    settings = TrainSettings(**kwargs)
    try:
        check_recipe(settings, space)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return settings


def parse_ray(raw: Any) -> RaySettings:
    counts = _in_range(1, RAY_COUNT_LIMIT)
    return RaySettings(**_parse_dataclass(RaySettings, raw, "ray", checks={
        "address": _ray_address, "num_workers": counts, "cpus_per_worker": counts, "num_cpus": counts,
        "max_failures": _in_range(0, RAY_COUNT_LIMIT), "gpus_per_worker": _in_range(0, RAY_COUNT_LIMIT)}))


SECTION_PARSERS: dict[str, Callable[[Any, SearchSpace], Any]] = {
    "dataset": lambda raw, _space: parse_dataset(raw),
    "train": parse_train,
    "ray": lambda raw, _space: parse_ray(raw),
}
"""Typed sections: each parser gets the raw section and the experiment's space."""


def _import_path(value: Any, key: str) -> str:
    """A file path of the ``supernet`` section: ``~`` and ``$VARS`` expanded, made absolute."""
    text = _coerce(value, str, key)
    expanded = os.path.expandvars(os.path.expanduser(text))
    if "$" in expanded:
        raise UsageError(f"{key}: {text!r} names an environment variable that is not set")
    return str(Path(expanded).resolve())


def parse_supernet(raw: Any, space: SearchSpace) -> SupernetImport:
    """The ``supernet`` section; only spaces whose published weights exist may import them."""
    from .ofa_zoo import OFA_SUPERNET_SPACES

    raw = _mapping(raw, "supernet")
    _check_keys(raw, "supernet", ("import", "path", "accuracy_predictor"))
    for required in ("import", "path"):
        if required not in raw:
            raise UsageError(f"supernet.{required} is required (e.g. supernet: {{import: ofa, path: "
                             f"ofa_mbv3_d234_e346_k357_w1.2.pth}})")
    kind = _coerce(raw["import"], str, "supernet.import")
    if kind not in SUPERNET_IMPORTS:
        raise UsageError(f"supernet.import: {kind!r} is not allowed; allowed: {_fmt_allowed(SUPERNET_IMPORTS)}")
    if space.name not in OFA_SUPERNET_SPACES:
        raise UsageError(f"supernet: space {space.name!r} has no Once-for-All zoo supernet to import; spaces "
                         f"that do: {_fmt_allowed(OFA_SUPERNET_SPACES)}")
    predictor = raw.get("accuracy_predictor")
    return SupernetImport(kind=kind, path=_import_path(raw["path"], "supernet.path"),
                          accuracy_predictor=None if predictor is None else
                          _import_path(predictor, "supernet.accuracy_predictor"))


def _check_data_for_import(config: ExperimentConfig) -> None:
    """Without data, accuracy can only come from an imported predictor: say so before any work."""
    if config.dataset is not None:
        return
    if config.supernet is None or config.supernet.accuracy_predictor is None:
        raise UsageError("config: no dataset, so accuracy must come from an imported predictor: set "
                         "supernet.accuracy_predictor (or add a dataset section)")
    accuracy = config.search.accuracy
    if accuracy != "predictor":
        raise UsageError(f"search.accuracy: {accuracy!r} needs data to evaluate subnets, and the config has no "
                         f"dataset; set search.accuracy: predictor (or add a dataset section)")


def parse_config(raw: Any, source: str | None = None) -> ExperimentConfig:
    """An ``ExperimentConfig`` from the mapping a YAML file holds."""
    raw = _mapping(raw, "config")
    top = ("name", "space", "seed", "run_dir")
    _check_keys(raw, "config", (*top, *SECTION_PARSERS, "supernet", "devices", "latency", "search"))
    for required in ("name", "space"):
        if required not in raw:
            raise UsageError(f"config: {required} is required")
    name = _coerce(raw["name"], str, "name")
    if _NAME.fullmatch(name) is None:
        raise UsageError(f"name: {_shown(name)} is not allowed; a plain folder name (letters, digits, -, _ and "
                         f"dots, not first)")
    kwargs: dict[str, Any] = {"name": name, "space": _coerce(raw["space"], str, "space"), "source": source}
    if "seed" in raw:
        kwargs["seed"] = check_seed(raw["seed"], "seed")
    if "run_dir" in raw:
        kwargs["run_dir"] = _coerce(raw["run_dir"], str | None, "run_dir")
        if kwargs["run_dir"] == "":
            raise UsageError("run_dir: '' is not allowed; a folder path, or null for runs/<name>")
    config = ExperimentConfig(**kwargs)
    space = config.get_space()
    typed = {key: parser(raw.get(key), space) for key, parser in SECTION_PARSERS.items()}
    if raw.get("supernet") is not None:
        typed["supernet"] = parse_supernet(raw["supernet"], space)
        if raw.get("dataset") is None:
            typed["dataset"] = None
    typed["search"] = SearchConfig.parse(raw.get("search"), raw.get("devices"))
    typed["latency"] = LatencySettings.parse(raw.get("latency"))
    config = dataclasses.replace(config, **typed)
    _check_resolutions(config, space)
    _check_data_for_import(config)
    _check_validation_split(config)
    return config


def _check_validation_split(config: ExperimentConfig) -> None:
    """A config that trains validates after every epoch: its ``val_fraction`` must hold images out.

    An imported supernet is not trained, so 0 is allowed there (``nas eval`` on the test split keeps every
    training image for batch-norm recalibration); work that scores subnets on the validation split checks its
    size where it starts (``nas.data.check_split_sizes``), which also catches a fraction that rounds to no image.
    """
    if config.supernet is None and config.dataset is not None and config.dataset.val_fraction == 0:
        raise UsageError("dataset.val_fraction: 0.0 is not allowed; must be in (0, 1): training scores subnets "
                         "on that part of the training images after every epoch")


def _check_resolutions(config: ExperimentConfig, space: SearchSpace) -> None:
    """The resolutions the search may pick exist in the space and in the lookup table ``nas run`` builds."""
    config.search.restrict(space)  # search.resolutions outside the space: one line naming them
    bad = [r for r in config.latency.resolutions if r not in space.resolutions]
    if bad:
        raise UsageError(f"latency.resolutions {bad} are not in space {space.name!r}; allowed: "
                         f"{', '.join(map(str, space.resolutions))}")
    searched = set(config.search.resolutions or space.resolutions)
    table = set(config.latency.resolutions)
    if config.latency.table and table and not searched <= table:
        raise UsageError(f"search may pick resolutions {sorted(searched - table)} that latency.resolutions "
                         f"{sorted(table)} leaves out of the table; set search.resolutions to a subset of "
                         f"latency.resolutions")


class _DuplicateKeyError(ValueError):
    """A mapping of the config names one key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last silently, so a
    second ``train:`` section would replace the first without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise _DuplicateKeyError(f"key {key!r} appears twice in one mapping (lines {seen[key]} and "
                                             f"{key_node.start_mark.line + 1}); keep one")
                seen[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                break
        return super().construct_mapping(node, deep=deep)


def differences_note(config_copy: Path, config: ExperimentConfig, shown: int = 3) -> str:
    """``". The run's config.yaml -> this config: KEY: A -> B; ..."``: the training settings that make a run
    folder's checkpoints another config's, read from the run's config copy (``config_copy``), for the end of the
    one-line refusal; empty when the copy is missing, unreadable or the same."""
    if not config_copy.is_file():
        return ""
    try:
        differences = config.identity_differences(load_config(config_copy))
    except UsageError:
        return ""
    if not differences:
        return ""
    more = f"; and {len(differences) - shown} more" if len(differences) > shown else ""
    return f". The run's config.yaml -> this config: {'; '.join(differences[:shown])}{more}"


def load_config(path: str | Path, *, epochs_scale: float | None = None) -> ExperimentConfig:
    """Read and validate an experiment config file; ``epochs_scale`` overrides ``train.epochs_scale``."""
    path = Path(path)
    try:
        # Not a folder, a device (/dev/zero reads forever) or a pipe (opening one waits for a writer).
        if not stat.S_ISREG(path.stat().st_mode):
            raise UsageError(f"config {path} is not a regular file; a config is a YAML text file")
        with path.open("rb") as file:
            data = file.read(CONFIG_SIZE_LIMIT + 1)
        if len(data) > CONFIG_SIZE_LIMIT:
            raise UsageError(f"config {path} is larger than {CONFIG_SIZE_LIMIT // 2**20} MiB; a config is a small "
                             f"YAML text file")
        text = data.decode("utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"config {path} is not UTF-8 text (byte {exc.start}); a config is a YAML text file") from exc
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKeyError as exc:
        raise UsageError(f"config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    except (ValueError, RecursionError) as exc:  # an integer of over 4300 digits; lists nested thousands deep
        raise UsageError(f"config {path} cannot be read: {short_text(str(exc).splitlines()[0])}") from exc
    config = parse_config(raw, source=str(path))
    if epochs_scale is not None:
        epochs_scale = _coerce(epochs_scale, float, "--epochs-scale")  # nan and inf: one line, as in the file
        problem = _positive(epochs_scale)
        if problem:
            raise UsageError(f"--epochs-scale: {epochs_scale} is not allowed; {problem}")
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs_scale=epochs_scale))
    return config


def config_to_yaml(config: ExperimentConfig) -> str:
    """The config with every default filled in, as YAML (what the run folder keeps)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
