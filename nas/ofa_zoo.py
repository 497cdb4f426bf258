"""Once-for-All's model zoo in hwnas: its ImageNet supernets as ready runs, its accuracy predictor.

A zoo supernet (``ofa_mbv3_d234_e346_k357_w1.0`` / ``_w1.2``, read with ``torch.load(weights_only=True)``)
has 475 tensors named after Once-for-All's modules. Each is renamed onto hwnas's supernet of the same space
by structure (``blocks.k`` is the first block or ``stages[s][b]`` in order of the space's stages and their
deepest depth; ``depth_conv.conv.7to5_matrix`` is ``depthwise.conv.transform_7to5``), and every name and
shape is checked before anything is written: a file of another width or of another kind fails on the first
tensor that does not fit, in one line. Both networks compute the same function (same channel order, same
kernel transforms, same squeeze-excite widths), so extracted subnets equal Once-for-All's own
``get_active_subnet`` outputs.

The run written is an ordinary hwnas run: ``RUN/checkpoints/supernet.pt`` in hwnas's format, with the
source file and its sha256 in the checkpoint's summary and in ``RUN/import.json``.

The tutorial accuracy predictor (an MLP on a 128-D one-hot: kernel sizes and expand ratios per block slot,
then ``(r - 112) // 16`` of the resolution) is exactly an MLP on hwnas's own encoding: each hwnas feature
is one of Once-for-All's or none (``encoding_matrix``), so that matrix folds into the first layer and the
predictor is saved as an ordinary ``hwnas-accuracy-mlp-1`` file at ``RUN/search/accuracy_predictor.json``
(JSON, never pickle), with the resolutions it covers and its provenance as extra keys.
``OFAAccuracyPredictor`` reads it back and refuses archs at resolutions it was not trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .io import atomic_write_json
from .rundir import RunDir

__all__ = ["IMPORT_RECORD_NAME", "OFA_PREDICTOR_RESOLUTIONS", "OFA_SUPERNET_SPACES", "ImportedPredictor",
           "ImportedSupernet", "OFAAccuracyPredictor", "build_imported_supernet", "covers_resolutions",
           "encoding_matrix",
           "hwnas_to_ofa_name", "import_ofa_accuracy_predictor", "import_ofa_supernet",
           "load_ofa_predictor_layers", "load_ofa_state_dict", "map_ofa_state_dict", "ofa_predictor_features",
           "ofa_to_hwnas_name", "sha256_file", "to_ofa_state_dict"]

IMPORT_RECORD_NAME = "import.json"
OFA_SUPERNET_SPACES = ("ofa_mbv3_w1.0", "ofa_mbv3_w1.2")

# Once-for-All's name inside one MBConv block -> hwnas's (``blocks.k.conv.`` stripped first).
_BLOCK_RULES = (
    (r"inverted_bottleneck\.conv\.conv\.(weight)", r"expand.conv.\1"),
    (r"inverted_bottleneck\.bn\.bn\.(\w+)", r"expand.bn.\1"),
    (r"depth_conv\.conv\.conv\.(weight)", r"depthwise.conv.\1"),
    (r"depth_conv\.conv\.(\d+)to(\d+)_matrix", r"depthwise.conv.transform_\1to\2"),
    (r"depth_conv\.bn\.bn\.(\w+)", r"depthwise.bn.\1"),
    (r"depth_conv\.se\.fc\.(reduce|expand)\.(weight|bias)", r"se.\1.\2"),
    (r"point_linear\.conv\.conv\.(weight)", r"project.conv.\1"),
    (r"point_linear\.bn\.bn\.(\w+)", r"project.bn.\1"),
)
# The fixed first block (plain layers: conv ``0``, batch norm ``1``).
_FIRST_BLOCK_RULES = (
    (r"depth_conv\.conv\.(weight)", r"depthwise.0.\1"),
    (r"depth_conv\.bn\.(\w+)", r"depthwise.1.\1"),
    (r"point_linear\.conv\.(weight)", r"project.0.\1"),
    (r"point_linear\.bn\.(\w+)", r"project.1.\1"),
)
_OUTER_RULES = (
    (r"first_conv\.conv\.(weight)", r"stem.0.\1"),
    (r"first_conv\.bn\.(\w+)", r"stem.1.\1"),
    (r"final_expand_layer\.conv\.(weight)", r"head.final_expand.conv.\1"),
    (r"final_expand_layer\.bn\.(\w+)", r"head.final_expand.bn.\1"),
    (r"feature_mix_layer\.conv\.(weight)", r"head.feature.0.\1"),
    (r"classifier\.linear\.(weight|bias)", r"head.classifier.\1"),
)


def _apply(rules: tuple[tuple[str, str], ...], name: str) -> str | None:
    for pattern, replacement in rules:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


def _block_slots(space) -> list[tuple[int, int]]:
    """``(stage, block)`` of Once-for-All's ``blocks.1``, ``blocks.2``, ... (each stage at its deepest)."""
    return [(s, b) for s, spec in enumerate(space.stages) for b in range(max(spec.depths))]


def ofa_to_hwnas_name(space, name: str) -> str | None:
    """hwnas's state-dict key for Once-for-All's tensor ``name``, or ``None`` if it has no counterpart."""
    outer = _apply(_OUTER_RULES, name)
    if outer is not None:
        return outer
    match = re.fullmatch(r"blocks\.(\d+)\.conv\.(.+)", name)
    if match is None:
        return None
    index, rest = int(match.group(1)), match.group(2)
    if index == 0:
        inner = _apply(_FIRST_BLOCK_RULES, rest)
        return None if inner is None else f"first_block.{inner}"
    slots = _block_slots(space)
    if index > len(slots):
        return None
    inner = _apply(_BLOCK_RULES, rest)
    stage, block = slots[index - 1]
    return None if inner is None else f"stages.{stage}.{block}.{inner}"


def _inverse(rules: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """``rules`` run backwards: each rule's groups swap places with its back-references."""
    out = []
    for pattern, replacement in rules:
        groups = re.findall(r"\((?:[^()]|\([^()]*\))*\)", pattern)
        backward, forward = re.escape(replacement), pattern
        for number, group in enumerate(groups, start=1):
            backward = backward.replace(re.escape(f"\\{number}"), group, 1)
            forward = forward.replace(group, f"\\{number}", 1)
        out.append((backward, forward.replace("\\.", ".")))
    return tuple(out)


_OUTER_INVERSE, _FIRST_BLOCK_INVERSE, _BLOCK_INVERSE = (_inverse(r) for r in
                                                       (_OUTER_RULES, _FIRST_BLOCK_RULES, _BLOCK_RULES))


def hwnas_to_ofa_name(space, name: str) -> str | None:
    """Once-for-All's name for hwnas's state-dict key ``name`` (the inverse of ``ofa_to_hwnas_name``)."""
    outer = _apply(_OUTER_INVERSE, name)
    if outer is not None:
        return outer
    if name.startswith("first_block."):
        inner = _apply(_FIRST_BLOCK_INVERSE, name[len("first_block."):])
        return None if inner is None else f"blocks.0.conv.{inner}"
    match = re.fullmatch(r"stages\.(\d+)\.(\d+)\.(.+)", name)
    if match is None:
        return None
    slot = (int(match.group(1)), int(match.group(2)))
    slots = _block_slots(space)
    inner = _apply(_BLOCK_INVERSE, match.group(3))
    return None if inner is None or slot not in slots else f"blocks.{slots.index(slot) + 1}.conv.{inner}"


def to_ofa_state_dict(space, state: Mapping[str, Any]) -> dict[str, Any]:
    """hwnas's supernet state dict under Once-for-All's names: what a zoo checkpoint's ``state_dict`` holds.

    Used to write checkpoints in the zoo's format (``experiments/ofa_zoo/make_standin.py``) and to check
    the mapping both ways.
    """
    out = {}
    for name, value in state.items():
        ofa = hwnas_to_ofa_name(space, name)
        if ofa is None:
            raise UsageError(f"tensor {name!r} of space {space.name!r} has no Once-for-All counterpart")
        out[ofa] = value
    return out


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape)


def map_ofa_state_dict(ofa_state: Mapping[str, Any], target_state: Mapping[str, Any], space,
                       source: str = "the file") -> dict[str, Any]:
    """Once-for-All's tensors renamed onto ``target_state``'s keys, every name and shape checked.

    Raises ``UsageError`` naming the first tensor (in the file's order) without a counterpart or with
    another shape, else the first of hwnas's tensors the file lacks.
    """
    import torch

    mapped: dict[str, Any] = {}
    for name, value in ofa_state.items():
        if not isinstance(value, torch.Tensor):
            raise UsageError(f"{source}: entry {name!r} is not a tensor; expected a Once-for-All "
                             f"MobileNetV3 supernet state dict")
        target = ofa_to_hwnas_name(space, name)
        if target is None or target not in target_state:
            raise UsageError(f"{source}: tensor {name!r} has no counterpart in space {space.name!r}; "
                             f"expected a Once-for-All ofa_mbv3_d234_e346_k357 supernet")
        expected = _shape(target_state[target])
        if _shape(value) != expected:
            raise UsageError(f"{source}: tensor {name!r} has shape {list(_shape(value))}, space "
                             f"{space.name!r} expects {list(expected)} ({target}); is the file of another "
                             f"width? spaces: {', '.join(OFA_SUPERNET_SPACES)}")
        _check_values(source, name, value, target_state[target].is_floating_point())
        mapped[target] = value
    missing = [key for key in target_state if key not in mapped]
    if missing:
        raise UsageError(f"{source}: lacks {len(missing)} of space {space.name!r}'s {len(target_state)} "
                         f"tensors, first {missing[0]!r}; expected a whole Once-for-All supernet")
    return mapped


def _check_values(source: str, name: str, value: Any, floating: bool) -> None:
    """``UsageError`` for a tensor a sound zoo file cannot hold: a ``floating`` one (weights, batch-norm
    statistics) of another kind (integers, a quantised tensor) or with NaN or infinite values (a damaged file)."""
    import torch

    if floating and not value.is_floating_point():
        raise UsageError(f"{source}: tensor {name!r} is {str(value.dtype).removeprefix('torch.')}, not floating "
                         f"point; expected a Once-for-All checkpoint of float weights")
    if value.is_floating_point():
        bad = int((~torch.isfinite(value)).sum())
        if bad:
            raise UsageError(f"{source}: tensor {name!r} holds {bad} NaN or infinite value(s); the file is damaged "
                             f"(compare its sha256 with the published one, or download it again)")


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _short_reason(exc: BaseException) -> str:
    """The first sentence of ``exc``'s message (its type when it has none), shortened by ``short_text``:
    torch.load's reasons run to paragraphs. Of a weights-only refusal, the unpickler's own reason
    (``Unsupported global: ...``) is kept, not its advice to load unsafely."""
    from search_spaces import short_text

    raw = str(exc).split("WeightsUnpickler error:", 1)[-1]
    return short_text(raw, first_sentence=True) or type(exc).__name__


def _check_zoo_file(path: Path, what: str) -> None:
    """``UsageError`` unless ``path`` is a regular, non-empty file (``what`` it should be, for the message)."""
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder; give the file itself (e.g. {path}/FILE.pth)")
    if not path.exists():
        raise UsageError(f"{what} {path} does not exist")
    if not path.is_file():
        raise UsageError(f"{what} {path} is not a regular file (a device or a pipe); give the .pth file itself")
    if path.stat().st_size == 0:
        raise UsageError(f"{what} {path} is an empty file (a download or copy that did not finish?)")


def _read_torch_file(path: Path, what: str) -> Any:
    import torch

    _check_zoo_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read means it is not such a file
        raise UsageError(f"{path} is not a readable {what} (torch.load with weights_only failed: "
                         f"{_short_reason(exc)})") from None


def load_ofa_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The state dict of a zoo checkpoint (``{"state_dict": ...}``, or a bare state dict), read safely."""
    path = Path(path)
    data = _read_torch_file(path, "Once-for-All checkpoint")
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not data:
        raise UsageError(f"{path} holds no state dict; expected a Once-for-All checkpoint "
                         f"({{'state_dict': ...}})")
    return dict(data)


@dataclass(frozen=True, slots=True)
class ImportedSupernet:
    """What ``import_ofa_supernet`` wrote."""

    run_dir: Path          # the run folder
    checkpoint: Path       # RUN/checkpoints/supernet.pt (hwnas's format)
    record: Path           # RUN/import.json
    space: str             # the space's name
    source: str            # the zoo file, absolute
    sha256: str            # of the zoo file
    tensors: int           # tensors mapped
    config_hash: str       # "ofa-import-<sha256[:16]>"

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "checkpoint": str(self.checkpoint), "record": str(self.record),
                "space": self.space, "source": self.source, "sha256": self.sha256, "tensors": self.tensors,
                "config_hash": self.config_hash}


def build_imported_supernet(path: str | os.PathLike[str], space_name: str):
    """``(space, supernet, sha256)``: the zoo file's weights loaded into hwnas's supernet of ``space_name``."""
    from search_spaces import get_space
    from supernets import build_supernet

    if space_name not in OFA_SUPERNET_SPACES:
        raise UsageError(f"space {space_name!r} has no Once-for-All zoo supernet; allowed: "
                         f"{', '.join(OFA_SUPERNET_SPACES)}")
    path = Path(path).expanduser().resolve()
    ofa_state = load_ofa_state_dict(path)
    space = get_space(space_name)
    supernet = build_supernet(space)
    mapped = map_ofa_state_dict(ofa_state, supernet.state_dict(), space, source=str(path))
    supernet.load_state_dict(mapped, strict=True)
    return space, supernet.eval(), sha256_file(path)


def _check_no_results(run: RunDir, what: str, held: str | None) -> None:
    """Refuse replacing the run's imported ``what`` (zoo file sha256 ``held``) by another file while the run
    holds results measured with it (a study, accuracies, fronts): they would describe what the run no longer
    has (a query would export other weights under their accuracies; a resumed search would mix two)."""
    from .search_paths import search_paths

    paths = search_paths(run)
    results = [p for p in (paths.journal, paths.accuracy_cache, paths.fronts) if p.exists()]
    if results:
        raise UsageError(f"run {run.root} holds results measured with the {what} imported from another file "
                         f"(sha256 {str(held)[:16]}...): {results[0].relative_to(run.root)}; import into another "
                         f"--run-dir (or move the run's search/ and fronts/ away first)")


def _check_import_target(run: RunDir, digest: str | None = None) -> None:
    """Refuse a run whose supernet was trained here, or is being trained (its checkpoints would be mixed with
    the import's); an earlier import may be replaced, but by another file (sha256 other than ``digest``) only
    while the run holds nothing measured on it (a study, accuracies, fronts): those would then describe a
    supernet the run no longer has, and a query would export other weights under their accuracies."""
    from supernets.training.checkpoint import read_supernet_file

    if run.supernet_checkpoint.is_file():
        existing = read_supernet_file(run.supernet_checkpoint)
        if not str(existing.get("config_hash", "")).startswith("ofa-import-"):
            raise UsageError(f"run {run.root} already holds a trained supernet; import into another --run-dir")
        held = ((existing.get("summary") or {}).get("imported") or {}).get("sha256")
        if digest is not None and held != digest:
            _check_no_results(run, "supernet", held)
    for partial in (run.latest_checkpoint, run.teacher_checkpoint):
        if partial.exists():
            raise UsageError(f"run {run.root} has a supernet in training ({partial.relative_to(run.root)}); "
                             f"import into another --run-dir")


def import_ofa_supernet(path: str | os.PathLike[str], space_name: str,
                        run_dir: str | os.PathLike[str] | RunDir) -> ImportedSupernet:
    """Write a run folder whose supernet is the zoo checkpoint ``path`` mapped onto ``space_name``.

    Everything is checked before anything is written; an existing supernet in ``run_dir`` is replaced
    only when it came from an import (a trained run is refused).
    """
    from supernets.training import FileLock, LockBusyError
    from supernets.training.checkpoint import save_supernet

    from .search_paths import search_lock

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    run.check_writable()
    _check_import_target(run, sha256_file(path) if Path(path).expanduser().is_file() else None)
    space, supernet, digest = build_imported_supernet(path, space_name)
    source = str(Path(path).expanduser().resolve())
    config_hash = f"ofa-import-{digest[:16]}"
    provenance = {"source": "once-for-all", "kind": "supernet", "file": source, "sha256": digest,
                  "space": space.name, "tensors": len(supernet.state_dict())}
    run.create()
    # Neither a training nor a search of the run may run while its supernet is swapped.
    try:
        lock = FileLock(run.train_lock, f"run {run.root}").acquire()
    except LockBusyError as exc:
        raise UsageError(str(exc)) from exc
    try:
        with search_lock(run):
            _check_import_target(run, digest)  # again, now that nobody else can write the run
            checkpoint = save_supernet(run.supernet_checkpoint, supernet, space, config_hash,
                                       summary={"imported": provenance})
            record = atomic_write_json(run.root / IMPORT_RECORD_NAME, {**provenance, "config_hash": config_hash})
    finally:
        lock.release()
    return ImportedSupernet(run_dir=run.root, checkpoint=checkpoint, record=record, space=space.name,
                            source=source, sha256=digest, tensors=provenance["tensors"], config_hash=config_hash)


# --- Once-for-All's tutorial accuracy predictor -------------------------------------------------------------

OFA_PREDICTOR_LAYERS = ("0", "2", "4", "6")  # Linear 128->400, 400->400, 400->400, 400->1 (ReLU between)
OFA_PREDICTOR_RESOLUTIONS = (160, 176, 192, 208, 224)  # what the tutorial's predictor was trained on
_OFA_KERNELS, _OFA_EXPANDS = (3, 5, 7), (3.0, 4.0, 6.0)
_OFA_SLOTS, _OFA_RESOLUTION_SLOTS = 20, 8
OFA_PREDICTOR_FEATURES = 3 * _OFA_SLOTS * 2 + _OFA_RESOLUTION_SLOTS  # 128


def ofa_resolution_slot(resolution: int) -> int:
    """Once-for-All's resolution one-hot index, ``(r - 112) // 16``."""
    return (int(resolution) - 112) // 16


def ofa_predictor_features(config: Mapping[str, Any]) -> np.ndarray:
    """The tutorial's 128-D one-hot of an OFA config (``ks``, ``e`` per slot, ``d`` per stage, ``r``).

    Kernel sizes then expand ratios, 3 per block slot, zero for slots beyond a stage's depth; then 8
    resolution slots at ``(r - 112) // 16``. (The reference encoding; hwnas archs use ``encoding_matrix``.)
    """
    r = config["r"][0] if isinstance(config["r"], (list, tuple)) else config["r"]
    x = np.zeros(OFA_PREDICTOR_FEATURES, dtype=np.float64)
    slots = _OFA_SLOTS // len(config["d"])
    for s, depth in enumerate(config["d"]):
        for b in range(int(depth)):
            i = s * slots + b
            x[3 * i + _OFA_KERNELS.index(int(config["ks"][i]))] = 1.0
            x[60 + 3 * i + _OFA_EXPANDS.index(float(config["e"][i]))] = 1.0
    x[120 + ofa_resolution_slot(r)] = 1.0
    return x


def encoding_matrix(space, resolutions: tuple[int, ...] = OFA_PREDICTOR_RESOLUTIONS) -> np.ndarray:
    """``M`` (hwnas features x 128) with ``encode(space, a) @ M`` = the tutorial's one-hot of ``a``.

    Each hwnas feature maps onto at most one of Once-for-All's (depth features onto none; resolutions
    outside ``resolutions`` onto none, which is why the predictor refuses them). Built from
    ``encoding_names`` so it follows hwnas's encoding order whatever it is.
    """
    from search_spaces import encoding_names

    slots = _block_slots(space)
    if space.family != "ofa_mbv3" or len(slots) != _OFA_SLOTS:
        raise UsageError(f"Once-for-All's accuracy predictor scores ofa_mbv3 spaces with {_OFA_SLOTS} block "
                         f"slots, not {space.name!r}; allowed: {', '.join(OFA_SUPERNET_SPACES)}")
    slot_of = {sb: i for i, sb in enumerate(slots)}
    names = encoding_names(space)
    matrix = np.zeros((len(names), OFA_PREDICTOR_FEATURES), dtype=np.float64)
    for row, name in enumerate(names):
        if match := re.fullmatch(r"resolution=(\d+)", name):
            r = int(match.group(1))
            if r in resolutions:
                matrix[row, 120 + ofa_resolution_slot(r)] = 1.0
        elif match := re.fullmatch(r"s(\d+)\.b(\d+)\.(kernel_size|expand_ratio)=([\d.]+)", name):
            i = slot_of[(int(match.group(1)), int(match.group(2)))]
            value = float(match.group(4))
            choices, offset = (_OFA_KERNELS, 0) if match.group(3) == "kernel_size" else (_OFA_EXPANDS, 60)
            if value not in choices:
                raise UsageError(f"space {space.name!r} allows {match.group(3)} {value:g}, which Once-for-All's "
                                 f"predictor does not encode (allowed: {', '.join(f'{c:g}' for c in choices)})")
            matrix[row, offset + 3 * i + choices.index(value)] = 1.0
        elif not re.fullmatch(r"s\d+\.depth=\d+", name):
            raise UsageError(f"space {space.name!r} has feature {name!r}, which Once-for-All's predictor does "
                             f"not encode; allowed spaces: {', '.join(OFA_SUPERNET_SPACES)}")
    return matrix


def load_ofa_predictor_layers(path: str | os.PathLike[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(weight (out, in), bias (out,)), ...]`` of the tutorial predictor's four Linear layers, checked."""
    import torch

    path = Path(path)
    state = _read_torch_file(path, "Once-for-All accuracy predictor")
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise UsageError(f"{path} holds no state dict; expected the tutorial accuracy predictor's "
                         f"(keys 0.weight ... 6.bias)")
    expected_keys = [f"{layer}.{kind}" for layer in OFA_PREDICTOR_LAYERS for kind in ("weight", "bias")]
    sizes = (OFA_PREDICTOR_FEATURES, 400, 400, 400, 1)
    expected_shapes = [shape for n_in, n_out in zip(sizes, sizes[1:]) for shape in ((n_out, n_in), (n_out,))]
    if list(state) != expected_keys:
        extra = [k for k in state if k not in expected_keys]
        missing = [k for k in expected_keys if k not in state]
        what = f"unexpected tensor {extra[0]!r}" if extra else f"lacks {missing[0]!r}" if missing else \
            f"keys in another order ({', '.join(state)})"
        raise UsageError(f"{path}: {what}; expected the tutorial accuracy predictor "
                         f"(keys {', '.join(expected_keys)})")
    for key, shape in zip(expected_keys, expected_shapes):
        value = state[key]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise UsageError(f"{path}: tensor {key!r} has shape {got}, the tutorial predictor's is {list(shape)}")
        _check_values(str(path), key, value, floating=True)
    return [(state[f"{layer}.weight"].double().numpy(), state[f"{layer}.bias"].double().numpy())
            for layer in OFA_PREDICTOR_LAYERS]


class OFAAccuracyPredictor:
    """Once-for-All's tutorial predictor on hwnas archs, refusing resolutions it was not trained on.

    Holds an ``nas.accuracy.AccuracyPredictor`` whose first layer folds ``encoding_matrix`` in (so the
    saved file is an ordinary ``hwnas-accuracy-mlp-1`` predictor), plus the covered resolutions.
    """

    def __init__(self, mlp, resolutions: tuple[int, ...]) -> None:
        self.mlp = mlp
        self.space = mlp.space
        self.resolutions = tuple(resolutions)

    @classmethod
    def from_layers(cls, space, layers: list[tuple[np.ndarray, np.ndarray]],
                    resolutions: tuple[int, ...] = OFA_PREDICTOR_RESOLUTIONS) -> OFAAccuracyPredictor:
        from .accuracy import AccuracyPredictor

        mlp = AccuracyPredictor(space, hidden=tuple(w.shape[0] for w, _ in layers[:-1]))
        first = encoding_matrix(space, resolutions) @ layers[0][0].T  # rows: copies of OFA's columns
        mlp.weights = [first] + [w.T.copy() for w, _ in layers[1:]]
        mlp.biases = [b.copy() for _, b in layers]
        mlp.y_mean, mlp.y_std = 0.0, 1.0
        return cls(mlp, tuple(r for r in resolutions if r in space.resolutions))

    def check(self, archs) -> None:
        for arch in archs:
            if arch.resolution not in self.resolutions:
                raise UsageError(f"Once-for-All's accuracy predictor does not cover resolution {arch.resolution} "
                                 f"(arch {arch.arch_id}); covered: {', '.join(map(str, self.resolutions))}")

    def predict(self, archs) -> np.ndarray:
        """Once-for-All's outputs exactly (not clipped: a value outside [0, 1] means a wrong file, and the
        search says so)."""
        from search_spaces import encode_many

        archs = list(archs)
        self.check(archs)
        return self.mlp.predict_encoded(encode_many(self.space, archs))

    __call__ = predict

    def to_dict(self) -> dict[str, Any]:
        return {**self.mlp.to_dict(), "resolutions": list(self.resolutions)}

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_json(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> OFAAccuracyPredictor:
        """Read a saved predictor (``AccuracyPredictor.load`` reads the same file, without the check)."""
        from search_spaces import reading

        from .accuracy import AccuracyPredictor

        mlp = AccuracyPredictor.load(path)
        with reading(path, "accuracy predictor", "import it again (`nas import ofa-accuracy-predictor FILE --run-dir "
                     "RUN`), or move it away"):
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            resolutions = data.get("resolutions", list(mlp.space.resolutions))
            if not isinstance(resolutions, list) or not resolutions or \
                    not all(type(r) is int and r in mlp.space.resolutions for r in resolutions):
                raise ValueError(f"'resolutions' is {json.dumps(resolutions)[:60]}, not a list of the resolutions "
                                 f"of space {mlp.space.name!r}")
        return cls(mlp, tuple(resolutions))


def covers_resolutions(path: str | os.PathLike[str]) -> bool:
    """True when the saved accuracy predictor at ``path`` names the resolutions it covers (an import)."""
    try:
        return "resolutions" in json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # AccuracyPredictor.load reports what is wrong with the file


@dataclass(frozen=True, slots=True)
class ImportedPredictor:
    """What ``import_ofa_accuracy_predictor`` wrote."""

    path: Path                      # RUN/search/accuracy_predictor.json
    space: str
    resolutions: tuple[int, ...]    # the space's resolutions the predictor covers
    source: str
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "space": self.space, "resolutions": list(self.resolutions),
                "source": self.source, "sha256": self.sha256}


def import_ofa_accuracy_predictor(path: str | os.PathLike[str], run_dir: str | os.PathLike[str] | RunDir,
                                  space_name: str | None = None) -> ImportedPredictor:
    """Write Once-for-All's tutorial predictor into ``RUN/search/accuracy_predictor.json`` (JSON, no pickle).

    The space is ``space_name``, else that of the run's supernet, else ``ofa_mbv3_w1.2``; a ``space_name`` other
    than the run's supernet's, or a run whose supernet is of a space the predictor does not score (a trained
    ``ofa_mbv3_cifar`` run), is refused. So is a predictor the run's search fitted (a file without an
    ``imported`` record, told apart as ``_import_plan`` does), before anything is read; an earlier import is
    replaced.
    """
    from search_spaces import get_space

    from .accuracy import PREDICTOR_NAME
    from .search_paths import search_lock

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    target = run.search / PREDICTOR_NAME
    if target.is_file() and _imported_sha(target) is None:  # as the config route (``_import_plan``) refuses it
        raise UsageError(f"run {run.root} already holds an accuracy predictor not imported (fitted by its search: "
                         f"{target}); import into another --run-dir, or move that file away first")
    run_space = _supernet_space(run)
    if run_space is not None and run_space not in OFA_SUPERNET_SPACES:
        raise UsageError(f"run {run.root} holds a supernet of space {run_space!r}, which Once-for-All's predictor "
                         f"does not score (it scores {', '.join(OFA_SUPERNET_SPACES)}); import into another --run-dir")
    if run_space is not None and space_name is not None and space_name != run_space:
        raise UsageError(f"--space {space_name} contradicts run {run.root}, whose supernet is of space "
                         f"{run_space!r}; give --space {run_space} (or leave it out), or import into another "
                         f"--run-dir")
    space_name = space_name or run_space or "ofa_mbv3_w1.2"
    if space_name not in OFA_SUPERNET_SPACES:
        raise UsageError(f"space {space_name!r} is not one Once-for-All's predictor scores; allowed: "
                         f"{', '.join(OFA_SUPERNET_SPACES)}")
    space = get_space(space_name)
    layers = load_ofa_predictor_layers(path)
    predictor = OFAAccuracyPredictor.from_layers(space, layers)
    source = str(Path(path).expanduser().resolve())
    digest = sha256_file(source)
    data = {**predictor.to_dict(), "imported": {"source": "once-for-all", "kind": "accuracy-predictor",
                                                "file": source, "sha256": digest}}
    with search_lock(run):  # not while a search of the run reads it
        held = _imported_sha(target)
        if held is not None and held != digest:
            _check_no_results(run, "accuracy predictor", held)
        target = atomic_write_json(target, data, indent=None)
    return ImportedPredictor(path=target, space=space.name, resolutions=predictor.resolutions, source=source,
                             sha256=digest)


# --- an experiment config's ``supernet: {import: ofa, ...}`` --------------------------------------------------


def _import_record(run: RunDir) -> dict[str, Any]:
    """The run's ``import.json`` (what ``import_ofa_supernet`` wrote); empty when there is none. A damaged one
    is a ``DamagedFileError`` naming it."""
    from search_spaces import reading

    record = run.root / IMPORT_RECORD_NAME
    if not record.is_file():
        return {}
    with reading(record, "import record", "import the supernet again (`nas import ofa-supernet ... --run-dir "
                 f"{run.root}`) to rewrite it, or give --space"):
        data = json.loads(record.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("space", ""), str):
            raise ValueError(f"expected a JSON object with the space's name; got {str(data)[:60]}")
    return data


def _supernet_space(run: RunDir) -> str | None:
    """The space of the run's supernet (trained or imported), else of its import record; None when it has
    neither. A damaged checkpoint is a ``CheckpointError`` naming it."""
    from supernets.training.checkpoint import read_supernet_file

    if run.supernet_checkpoint.is_file():
        return str(read_supernet_file(run.supernet_checkpoint)["space"])
    return _import_record(run).get("space") or None


def _imported_sha(path: Path) -> str | None:
    """The zoo file's sha256 recorded in an imported supernet checkpoint or predictor file (None: not imported).
    A predictor file that cannot be read is a ``DamagedFileError`` naming it (it may be a fitted one)."""
    from search_spaces import reading

    if not path.is_file():
        return None
    if path.suffix == ".json":
        with reading(path, "accuracy predictor", "move it away if it is not needed (a search that fits its own "
                     "predictor writes it again)"):
            data = json.loads(path.read_text(encoding="utf-8"))
            return (data.get("imported") or {}).get("sha256")
    from supernets.training.checkpoint import CheckpointError, read_supernet_file

    try:
        summary = read_supernet_file(path).get("summary") or {}
    except CheckpointError as exc:
        raise UsageError(str(exc)) from exc
    return (summary.get("imported") or {}).get("sha256")


def _import_plan(source: Any, space_name: str, run: RunDir) -> list[tuple[str, Path, str]]:
    """``(what, zoo file, sha256)`` still to import for the config's ``supernet`` section ``source``.

    What the run holds already from the same files counts as done; anything else there (a trained supernet, a
    fitted predictor, another zoo file's import) is refused, so nothing is replaced behind the user's back.
    """
    from .accuracy import PREDICTOR_NAME

    wanted = [("supernet", Path(source.path), run.supernet_checkpoint)]
    if source.accuracy_predictor is not None:
        wanted.append(("accuracy predictor", Path(source.accuracy_predictor), run.search / PREDICTOR_NAME))
    todo = []
    for what, zoo_file, target in wanted:
        _check_zoo_file(zoo_file, f"supernet: the {what} file")
        digest = sha256_file(zoo_file)
        held = _imported_sha(target)
        if held == digest:
            continue
        if target.is_file():
            origin = (f"imported from another file (sha256 {held[:16]}...)" if held
                      else "not imported (trained or fitted)")
            raise UsageError(f"run {run.root} already holds a {what} {origin}; the config imports {zoo_file}: "
                             f"use another run_dir")
        todo.append((what, zoo_file, digest))
    return todo


def is_imported(source: Any, space_name: str, run: RunDir) -> bool:
    """True when the run holds exactly what the config's ``supernet`` section imports."""
    return not _import_plan(source, space_name, run)


def import_for_config(source: Any, space_name: str, run: RunDir) -> list[Any]:
    """Import what the config's ``supernet`` section names into ``run`` (what is there already is kept);
    returns the ``ImportedSupernet`` / ``ImportedPredictor`` records written."""
    done: list[Any] = []
    for what, zoo_file, _digest in _import_plan(source, space_name, run):
        if what == "supernet":
            done.append(import_ofa_supernet(zoo_file, space_name, run))
        else:
            done.append(import_ofa_accuracy_predictor(zoo_file, run, space_name=space_name))
    return done
