"""Checkpoints of a supernet training run and the final trained supernet.

Every file is written atomically (temporary file, then rename) and read with
``torch.load(weights_only=True)``: plain tensors, numbers, strings, lists and dicts, never code. A file
that cannot be read, or that belongs to another space or config, raises ``CheckpointError``; callers
refuse to go on rather than silently start over.
"""

from __future__ import annotations

import io
import os
import tempfile
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


def check_identity(data: dict[str, Any], path: str | os.PathLike[str], space_name: str, config_hash: str) -> None:
    """Raise ``CheckpointError`` unless the checkpoint belongs to ``space_name`` and ``config_hash``."""
    if data.get("space") != space_name:
        raise CheckpointError(f"checkpoint {path} belongs to space {data.get('space')!r}, not {space_name!r}; "
                              f"use another run folder or move the old run away")
    if data.get("config_hash") != config_hash:
        raise CheckpointError(f"checkpoint {path} was written by another config (hash "
                              f"{data.get('config_hash')}, this config {config_hash}); use another run folder "
                              f"or move the old run away")


def load_train_state(path: str | os.PathLike[str], space_name: str, config_hash: str) -> dict[str, Any]:
    """A training checkpoint (``save_train_state``'s dict), checked against the run's identity."""
    data = _load(path, TRAIN_FORMAT)
    check_identity(data, path, space_name, config_hash)
    return data


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
    """The raw contents of a ``supernet.pt`` (checked format)."""
    return _load(path, SUPERNET_FORMAT)


def load_supernet_file(path: str | os.PathLike[str]) -> tuple[SearchSpace, torch.nn.Module]:
    """``(space, supernet)`` from a ``supernet.pt``: the space rebuilt from the registry, weights loaded."""
    from supernets import build_supernet

    data = read_supernet_file(path)
    space = get_space(data["space"]).with_num_classes(int(data["num_classes"]))
    supernet = build_supernet(space)
    try:
        supernet.load_state_dict(data["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"supernet {path} does not match space {space.name!r}: "
                              f"{str(exc).splitlines()[0]}") from exc
    return space, supernet.eval()
