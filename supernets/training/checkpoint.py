"""Checkpoints of a supernet training run and the final trained supernet.

Every file is written atomically (temporary file, then rename) and read with
``torch.load(weights_only=True)``: plain tensors, numbers, strings, lists and dicts, never code. A file
that cannot be read, that holds a field of the wrong kind (a hand-edited or half-converted file: checked by
``check_supernet_fields`` and ``check_train_fields`` as it is read, so no reader meets a ``KeyError`` later), or
that belongs to another space or config, raises ``CheckpointError``; callers refuse to go on rather than
silently start over.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from search_spaces import SearchSpace, get_space, short_text

TRAIN_FORMAT = "hwnas-train-state-1"
SUPERNET_FORMAT = "hwnas-supernet-1"


class CheckpointError(ValueError):
    """A checkpoint that is unreadable, of another format, or of another space or config."""


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename onto ``path``.

    (``supernets`` cannot import ``nas.io``: imports go downward only; this is the torch twin of
    ``nas.io.atomic_write_bytes``.)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _load(path: str | os.PathLike[str], expected_format: str) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read means the file is unusable
        reason = short_text(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is corrupted or unreadable ({reason}); "
                              f"move it away to start this run over") from exc
    if not isinstance(data, dict) or data.get("format") != expected_format:
        raise CheckpointError(f"checkpoint {path} is not a {expected_format} file")
    return data


# What ends a message about a damaged training checkpoint, and about a damaged supernet file.
REMEDY = "move it away to start this run over"
SUPERNET_REMEDY = "move it away and run `nas train` again (it goes on from checkpoints/latest.pt when there is one)"


def _damaged(path: str | os.PathLike[str], reason: str, remedy: str = REMEDY) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is damaged: {reason}; {remedy}")


def _kind(value: Any) -> str:
    """What a field holds, for a message: ``a str ('x')``, ``a Tensor of torch.float32``."""
    if isinstance(value, torch.Tensor):
        return f"a Tensor of {value.dtype} with shape {tuple(value.shape)}"
    text, name = repr(value), type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}" + (f" ({text})" if len(text) <= 40 else "")


def _check_count(data: Mapping[str, Any], path: str | os.PathLike[str], key: str, minimum: int,
                 remedy: str = REMEDY) -> None:
    value = data.get(key)
    if key not in data or isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        held = "is missing" if key not in data else f"is {_kind(value)}"
        raise _damaged(path, f"field {key!r} {held}, not an integer >= {minimum}", remedy)


def _check_weights(data: Mapping[str, Any], path: str | os.PathLike[str], key: str, remedy: str = REMEDY) -> None:
    """A state dict field: a dict of parameter names to tensors."""
    if key not in data:
        raise _damaged(path, f"field {key!r} (the weights) is missing", remedy)
    weights = data[key]
    if not isinstance(weights, dict):
        raise _damaged(path, f"field {key!r} (the weights) is {_kind(weights)}, not a dict of tensors", remedy)
    for name, value in weights.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise _damaged(path, f"field {key!r} holds {_kind(value)} under {name!r}, not a tensor under a "
                                 f"parameter name", remedy)


def _check_text(data: Mapping[str, Any], path: str | os.PathLike[str], key: str, remedy: str = REMEDY) -> None:
    if not isinstance(data.get(key), str) or not data[key]:
        held = "is missing" if key not in data else f"is {_kind(data[key])}"
        raise _damaged(path, f"field {key!r} {held}, not a string", remedy)


def load_weights(module: torch.nn.Module, weights: Mapping[str, torch.Tensor], path: str | os.PathLike[str],
                 space_name: str, remedy: str = REMEDY) -> None:
    """Load ``weights`` (a checked state dict, read from ``path``) into ``module``, the supernet of
    ``space_name``, strictly; ``remedy`` ends the message.

    Raises:
        CheckpointError: a parameter is missing, unexpected or of another shape; the one-line message names
            the first of each (torch's own message runs to one line per key).
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]

    def first(keys: list[str], what: str) -> str:
        more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
        return f"{what} {keys[0]!r}{more}"

    problems = [first(missing, "missing parameter")] if missing else []
    problems += [first(unexpected, "unexpected parameter")] if unexpected else []
    if shapes:
        k = shapes[0]
        problems.append(first(shapes, "parameter") + f" of shape {tuple(weights[k].shape)}, the space's is "
                        f"{tuple(expected[k].shape)}")
    if problems:
        raise CheckpointError(f"supernet {path} does not match space {space_name!r}: {'; '.join(problems)}; "
                              f"{remedy}")
    try:
        module.load_state_dict(weights)
    except RuntimeError as exc:  # what the checks above do not see (a tensor torch cannot copy)
        raise CheckpointError(f"supernet {path} does not match space {space_name!r}: "
                              f"{short_text(str(exc))}; {remedy}") from exc


def check_identity(data: dict[str, Any], path: str | os.PathLike[str], space_name: str, config_hash: str) -> None:
    """Raise ``CheckpointError`` unless the checkpoint belongs to ``space_name`` and ``config_hash``."""
    if data.get("space") != space_name:
        raise CheckpointError(f"checkpoint {path} belongs to space {data.get('space')!r}, not {space_name!r}; "
                              f"use another run folder or move the old run away")
    if data.get("config_hash") != config_hash:
        raise CheckpointError(f"checkpoint {path} was written by another config (hash "
                              f"{data.get('config_hash')}, this config {config_hash}); use another run folder "
                              f"or move the old run away")


def load_train_state(path: str | os.PathLike[str], space_name: str, config_hash: str,
                     phase_epochs: Sequence[int] | None = None) -> dict[str, Any]:
    """A training checkpoint (``train_state``'s dict), its fields checked (``check_train_fields``), and checked
    against the run's identity (and, given the schedule's ``phase_epochs``, its position in it)."""
    data = _load(path, TRAIN_FORMAT)
    check_train_fields(data, path, phase_epochs)
    check_identity(data, path, space_name, config_hash)
    return data


def check_train_fields(data: Mapping[str, Any], path: str | os.PathLike[str],
                       phase_epochs: Sequence[int] | None = None) -> None:
    """``CheckpointError`` naming the first field of a training checkpoint that the loop could not resume from:
    the weights (``model``), the position (``phase``, ``epoch``, ``completed_epochs``: counts; given the
    schedule's epochs per phase, a position in it), the optimizer and scheduler states (dicts, or None between
    phases) and the random state (``torch_rng``, the CPU generator's bytes)."""
    _check_text(data, path, "space")
    _check_text(data, path, "config_hash")
    _check_weights(data, path, "model")
    for key in ("phase", "epoch", "completed_epochs"):
        _check_count(data, path, key, 0)
    for key in ("optimizer", "scheduler"):
        if key not in data or (data[key] is not None and not isinstance(data[key], dict)):
            held = "is missing" if key not in data else f"is {_kind(data[key])}"
            raise _damaged(path, f"field {key!r} {held}, not a dict (or None)")
    rng = data.get("torch_rng")
    size = torch.get_rng_state().numel()
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or tuple(rng.shape) != (size,):
        held = "is missing" if "torch_rng" not in data else f"is {_kind(rng)}"
        raise _damaged(path, f"field 'torch_rng' {held}, not the {size} bytes of a torch.ByteTensor")
    if phase_epochs is None:
        return
    phase, epoch = data["phase"], data["epoch"]
    if phase > len(phase_epochs) or (phase == len(phase_epochs) and epoch != 0) or \
            (phase < len(phase_epochs) and epoch >= phase_epochs[phase]):
        raise _damaged(path, f"its position (phase {phase}, epoch {epoch}) is not in the schedule (epochs per "
                             f"phase: {list(phase_epochs)})")
    done = sum(phase_epochs[:phase]) + epoch
    if data["completed_epochs"] != done:
        raise _damaged(path, f"field 'completed_epochs' is {data['completed_epochs']}, and its position (phase "
                             f"{phase}, epoch {epoch}) comes after {done} epochs")


def train_state(*, space_name: str, config_hash: str, phase: int, epoch: int, model: dict, optimizer: dict | None,
                scheduler: dict | None, rng: torch.Tensor, completed_epochs: int) -> dict[str, Any]:
    """The dict a training checkpoint holds; ``phase``/``epoch`` name the next epoch to train."""
    return {
        "format": TRAIN_FORMAT,
        "space": space_name,
        "config_hash": config_hash,
        "phase": phase,
        "epoch": epoch,
        "completed_epochs": completed_epochs,
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "torch_rng": rng,
    }


def save_supernet(path: str | os.PathLike[str], supernet: torch.nn.Module, space: SearchSpace,
                  config_hash: str, summary: dict[str, Any] | None = None) -> Path:
    """Write the trained supernet: its state dict, the space's name and class count, the config hash."""
    return atomic_torch_save({
        "format": SUPERNET_FORMAT,
        "space": space.name,
        "num_classes": space.num_classes,
        "config_hash": config_hash,
        "summary": summary or {},
        "state_dict": {k: v.detach().cpu() for k, v in supernet.state_dict().items()},  # loads anywhere
    }, path)


def read_supernet_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The contents of a ``supernet.pt`` (format and fields checked: ``check_supernet_fields``)."""
    data = _load(path, SUPERNET_FORMAT)
    check_supernet_fields(data, path)
    return data


def check_supernet_fields(data: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """``CheckpointError`` naming the first field of a supernet file (``save_supernet``'s dict) that its readers
    could not use: the space's name, the class count (an integer >= 1), the config hash, the summary (a dict,
    may be absent) and the weights (``state_dict``: parameter names to tensors)."""
    _check_text(data, path, "space", SUPERNET_REMEDY)
    _check_count(data, path, "num_classes", 1, SUPERNET_REMEDY)
    _check_text(data, path, "config_hash", SUPERNET_REMEDY)
    if not isinstance(data.get("summary", {}), dict):
        raise _damaged(path, f"field 'summary' is {_kind(data['summary'])}, not a dict", SUPERNET_REMEDY)
    _check_weights(data, path, "state_dict", SUPERNET_REMEDY)


def load_supernet_file(path: str | os.PathLike[str]) -> tuple[SearchSpace, torch.nn.Module]:
    """``(space, supernet)`` from a ``supernet.pt``: the space rebuilt from the registry, weights loaded."""
    from supernets import build_supernet

    data = read_supernet_file(path)
    space = get_space(data["space"]).with_num_classes(data["num_classes"])
    supernet = build_supernet(space)
    load_weights(supernet, data["state_dict"], path, space.name, SUPERNET_REMEDY)
    return space, supernet.eval()
