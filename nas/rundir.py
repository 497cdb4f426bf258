"""One class owns every path of a run: ``RunDir``.

A run folder is ``runs/<experiment name>/`` under the current directory unless the config's ``run_dir``
or the command line's ``--run-dir`` says otherwise. Layout::

    RUN/config.yaml              the config as run (every default filled in) and its hash
    RUN/metrics.jsonl            one JSON line per training epoch
    RUN/checkpoints/latest.pt    training state after the last finished epoch (resumption)
    RUN/checkpoints/teacher.pt   the full network after the first phase (distillation teacher)
    RUN/checkpoints/supernet.pt  the trained supernet (state dict, space name, config hash)
    RUN/ray/                     Ray Train's own storage (its checkpoints and logs)
    RUN/search/  RUN/fronts/  RUN/plots/  RUN/exports/    later stages
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError
from .io import atomic_write_text, check_writable

if TYPE_CHECKING:
    from torch import nn

    from search_spaces import SearchSpace

    from .config import ExperimentConfig


# Longest file name and path where the file system does not say (Linux's limits).
_NAME_MAX, _PATH_MAX = 255, 4096
# Room left for the deepest file a run writes below its folder (``checkpoints/.supernet.pt.XXXX.tmp``).
_DEEPEST_INSIDE = 64


def _checked_root(root: str | os.PathLike[str]) -> Path:
    """The absolute run folder; ``UsageError`` when no file system could hold it (a NUL, a name too long)."""
    text = os.fspath(root)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text:  # Path("") is the current folder: a run would be written among whatever is there
        raise UsageError("run folder '' is not allowed; give a folder path (--run-dir, the config's run_dir) or "
                         "leave it out for runs/<name>")
    if "\0" in text:
        raise UsageError(f"run folder {text!r} contains a NUL character; name the run (the config's name or "
                         f"--run-dir) with letters, digits, - and _")
    path = Path(os.path.abspath(Path(text).expanduser()))
    existing = path
    while existing != existing.parent:
        try:
            if existing.exists():
                break
        except OSError:  # a name too long to look up
            pass
        existing = existing.parent
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = _NAME_MAX, _PATH_MAX
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > name_max:
            raise UsageError(f"run folder name {part[:40]!r}... is {size} bytes, over this file system's "
                             f"{name_max} per name; give the run (the config's name or --run-dir) a shorter name")
    size = len(os.fsencode(str(path)))
    if size + _DEEPEST_INSIDE > path_max:
        raise UsageError(f"run folder path {str(path)[:40]!r}... is {size} bytes; with the files a run writes "
                         f"inside it that is over this file system's {path_max}; choose a shorter --run-dir")
    return path.resolve()


class RunDir:
    """The paths of one run folder (absolute); creating folders is explicit (``create``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = _checked_root(root)

    @classmethod
    def for_config(cls, config: ExperimentConfig, override: str | os.PathLike[str] | None = None) -> RunDir:
        """``override`` (``--run-dir``), else the config's ``run_dir``, else ``runs/<name>`` under cwd."""
        if override is not None:
            return cls(override)
        if config.run_dir:
            return cls(config.run_dir)
        return cls(Path.cwd() / "runs" / config.name)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def create(self) -> RunDir:
        """Make the run folder and ``checkpoints/``; ``UsageError`` naming the path when that is impossible (a
        file in the way, no permission)."""
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            in_way = _file_in_way(self.checkpoints)
            reason = f"{in_way} is a file" if in_way is not None else (exc.strerror or str(exc))
            raise UsageError(f"cannot create run folder {self.checkpoints} ({reason}); choose another --run-dir "
                             f"or move what is in the way") from exc
        return self

    def check_writable(self) -> RunDir:
        """Fail before any work when a file training writes cannot be written: ``UsageError`` naming it (a file
        where the run folder or ``checkpoints/`` should be, a folder where a checkpoint should be, no
        permission). Without it the last epoch's work is lost when the supernet cannot be saved."""
        for path in (self.config_copy, self.metrics, self.train_lock, self.writer_lock, self.latest_checkpoint,
                     self.teacher_checkpoint, self.supernet_checkpoint, self.data_record, self.logs / "ray.log"):
            try:
                check_writable(path)
            except UsageError as exc:
                in_way = _file_in_way(path.parent)
                reason = ("it is a folder" if path.is_dir() else f"{in_way} is a file" if in_way is not None
                          else getattr(exc.__cause__, "strerror", None) or str(exc.__cause__))
                raise UsageError(f"run {self.root} cannot be written: {path} ({reason}); move what is in the way "
                                 f"or choose another --run-dir") from exc
        return self

    # Training.
    @property
    def config_copy(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest_checkpoint(self) -> Path:
        return self.checkpoints / "latest.pt"

    @property
    def teacher_checkpoint(self) -> Path:
        return self.checkpoints / "teacher.pt"

    @property
    def data_record(self) -> Path:
        """The fingerprint of the files training started on (``nas.data.record_data``)."""
        return self.checkpoints / "data.json"

    @property
    def supernet_checkpoint(self) -> Path:
        return self.checkpoints / "supernet.pt"

    @property
    def logs(self) -> Path:
        """Ray's and Ray Train's own output (``logs/ray.log``) unless the command ran with ``-v``."""
        return self.root / "logs"

    @property
    def ray_storage(self) -> Path:
        return self.root / "ray"

    @property
    def train_lock(self) -> Path:
        """Held by a running ``nas train`` (one per run)."""
        return self.root / "train.lock"

    @property
    def writer_lock(self) -> Path:
        """Held by the process writing the checkpoints while it trains (``supernets.training.lock``)."""
        return self.checkpoints / "writer.lock"

    # Later stages.
    @property
    def search(self) -> Path:
        return self.root / "search"

    @property
    def fronts(self) -> Path:
        return self.root / "fronts"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    def write_config(self, config: ExperimentConfig) -> Path:
        """Keep the config as run, with its hash in a comment, atomically."""
        from .config import config_to_yaml

        header = f"# config_hash: {config.config_hash}\n# source: {config.source}\n"
        return atomic_write_text(self.config_copy, header + config_to_yaml(config))

    def is_trained(self) -> bool:
        return self.supernet_checkpoint.is_file()


def _file_in_way(folder: Path) -> Path | None:
    """The file (not a folder) at ``folder`` or at one of its parents, if any: what keeps it from being made."""
    for path in (folder, *folder.parents):
        try:
            if path.exists():
                return None if path.is_dir() else path
        except OSError:
            return None
    return None


def load_supernet(run_dir: str | os.PathLike[str] | RunDir) -> tuple[SearchSpace, nn.Module]:
    """``(space, supernet)`` of a finished training run; ``UsageError`` when absent or unreadable."""
    from supernets.training import CheckpointError, load_supernet_file

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if not run.supernet_checkpoint.is_file():
        raise UsageError(f"run {run.root} has no trained supernet ({run.supernet_checkpoint} is missing); "
                         f"run `nas train CONFIG` first")
    try:
        return load_supernet_file(run.supernet_checkpoint)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from exc
