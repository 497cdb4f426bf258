"""Datasets for supernet training and evaluation, in plain torch (no torchvision).

Three kinds, chosen by the config's ``dataset.kind``:

- ``digits``: scikit-learn's bundled handwritten digits (1,797 real 8 x 8 images), upsampled to the
  space's largest resolution and replicated to 3 channels. The embedded default: no download.
- ``cifar10``: CIFAR-10 from ``dataset.path`` or the ``HWNAS_CIFAR10`` environment variable, either as
  ``.npz`` shards (``train_0.npz`` ... ``train_4.npz``, ``test.npz``, each with uint8 ``x`` (N, 32, 32, 3)
  and ``y``; read with ``allow_pickle=False``) or as the standard ``cifar-10-batches-py`` folder. That
  standard release is itself a set of Python pickles; it is read with an unpickler that only admits the
  numpy array constructors it needs, so no code in the file can run.
- ``folder``: an image-folder tree read with Pillow, one sub-folder per class (layout and checks:
  ``nas.image_folder``); with ``train/`` and ``test/`` (or ``val/``) sub-trees those are the splits (and
  ``val/`` beside ``test/`` the validation split), else a seeded test split is held out. With
  ``stream: true`` nothing is loaded up front: ``nas.streaming`` decodes batches in loader processes.

Every split is kept in memory as a uint8 tensor ``(N, 3, H, W)``, on the training device once the loop
calls ``to(device)`` (CIFAR-10 is 150 MB); augmentation (random crop with zero padding after
normalisation, horizontal flip) and normalisation run on whole batches there, so a GPU step never waits
on the host. The validation split
is a seeded part of the training set; the test split is only used for final reports.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UsageError
from .image_folder import FileList, folder_classes, read_rgb, scan_folder

if TYPE_CHECKING:
    from .streaming import StreamingFolderData

DATASET_KINDS = ("digits", "cifar10", "folder")
CIFAR10_ENV = "HWNAS_CIFAR10"
CIFAR10_CLASSES = 10


@dataclass(frozen=True, slots=True)
class DatasetConfig:
    """The ``dataset`` section of an experiment config."""

    # One of ``DATASET_KINDS``.
    kind: str = "digits"
    # Folder of ``cifar10`` / ``folder`` data; relative paths resolve against the current directory.
    path: str | None = None
    # Part of the training images held out for validation (seeded).
    val_fraction: float = 0.1
    # Part held out for testing when the data has no test split of its own (digits, flat folders).
    test_fraction: float = 0.2
    # Cap on training images after the validation split (None: all), a seeded subset.
    max_train_images: int | None = None
    # Cap on test images (None: all), the first ones in a seeded order.
    max_test_images: int | None = None
    # Random crop with padding and flips during training.
    augment: bool = True
    # Padding of the random crop in pixels (None: an eighth of the image side, 4 at 32).
    crop_padding: int | None = None
    # Horizontal flips (None: on, except for digits, whose mirror images are other symbols).
    flip: bool | None = None
    # Side of the stored images (None: the space's largest resolution; CIFAR-10 keeps its 32).
    image_size: int | None = None
    # ``folder`` only: stream images from disk (decoded by ``loader_workers`` processes per training
    # worker, random-resized crops) instead of loading the tree into memory; for ImageNet-sized trees.
    stream: bool = False
    # Decoding processes per training worker when streaming (0: decode in the training process).
    loader_workers: int = 4


class ImageData:
    """Train / val / test splits as uint8 tensors; implements ``supernets.training.DataSource``."""

    def __init__(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                 test: tuple[torch.Tensor, torch.Tensor], num_classes: int, augment: bool = True,
                 crop_padding: int = 4, flip: bool = True) -> None:
        self.splits = {"train": train, "val": val, "test": test}
        self.num_classes = num_classes
        self.augment = augment
        self.crop_padding = crop_padding
        self.flip = flip
        x = train[0].float() / 255
        self.mean = x.mean((0, 2, 3)).view(1, 3, 1, 1)
        self.std = x.std((0, 2, 3)).clamp_min(1e-3).view(1, 3, 1, 1)
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> None:
        """Keep every split (uint8) on ``device``: batches are cut, normalised and augmented there."""
        device = torch.device(device)
        self.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in self.splits.items()}
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        self.device = device

    def __len__(self) -> int:
        return len(self.splits["train"][1])

    def size(self, split: str) -> int:
        return len(self.splits[split][1])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255 - self.mean) / self.std

    def augment_batch(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop (zero padding, after normalisation) and horizontal flip of a float batch."""
        n, _, h, w = x.shape
        pad, device = self.crop_padding, x.device
        if pad > 0:  # the random numbers come from the (CPU) generator: the same on every device
            padded = F.pad(x, (pad, pad, pad, pad))
            dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(device)
            dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(device)
            rows = (dy.view(n, 1, 1, 1) + torch.arange(h, device=device).view(1, 1, h, 1)).expand(n, 3, h, w + 2 * pad)
            cols = (dx.view(n, 1, 1, 1) + torch.arange(w, device=device).view(1, 1, 1, w)).expand(n, 3, h, w)
            x = padded.gather(2, rows).gather(3, cols)
        if self.flip:
            flip = (torch.rand(n, generator=generator) < 0.5).to(device)
            x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
        return x

    def steps_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        return (len(self) // world_size) // batch_size

    def train_batches(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled, augmented, normalised batches (this rank's shard; last partial dropped)."""
        x, y = self.splits["train"]
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[rank::world_size]
        generator = torch.Generator().manual_seed(seed * 31 + rank + 1)
        order = order.to(self.device)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            index = order[start:start + batch_size]
            batch = self.normalize(x[index])
            if self.augment:
                batch = self.augment_batch(batch, generator)
            yield batch, y[index]

    def eval_batches(self, split: str, batch_size: int, max_images: int | None = None
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised batches of ``split`` (``train``, ``val`` or ``test``) in order, no augmentation."""
        x, y = self.splits[split]
        n = len(y) if max_images is None else min(len(y), max_images)
        for start in range(0, n, batch_size):
            end = min(n, start + batch_size)
            yield self.normalize(x[start:end]), y[start:end]

    def calibration_batches(self, num_images: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
        """``num_images`` seeded training images, augmented as in training, for BN recalibration."""
        x, _ = self.splits["train"]
        generator = torch.Generator().manual_seed(seed + 12345)
        index = torch.randperm(len(x), generator=generator)[:num_images].to(self.device)
        for start in range(0, len(index), batch_size):
            batch = self.normalize(x[index[start:start + batch_size]])
            yield self.augment_batch(batch, generator) if self.augment else batch



# ---------------------------------------------------------------------------------------------------------
# Splitting and resizing.


def _held(n: int, fraction: float) -> int:
    """How many of ``n`` images a split of ``fraction`` holds out (the one rounding rule: ``split_sizes``
    predicts what ``_split`` cuts)."""
    return int(round(n * fraction))


def _split(n: int, fraction: float, seed: int, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded permutation of ``range(n)`` cut into (kept, held out ``fraction``)."""
    order = np.random.default_rng([seed, salt]).permutation(n)
    held = _held(n, fraction)
    return np.sort(order[held:]), np.sort(order[:held])


def _resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)


def _assemble(cfg: DatasetConfig, seed: int, x: torch.Tensor, y: torch.Tensor,
              test: tuple[torch.Tensor, torch.Tensor] | None, num_classes: int, size: int,
              default_flip: bool, val: tuple[torch.Tensor, torch.Tensor] | None = None) -> ImageData:
    """Hold out test and validation splits (where the data has none of its own), cap the training set,
    resize, wrap."""
    if test is None:
        keep, held = _split(len(y), cfg.test_fraction, seed, 1)
        test = (x[held], y[held])
        x, y = x[keep], y[keep]
    if val is None:
        keep, held = _split(len(y), cfg.val_fraction, seed, 2)
        val = (x[held], y[held])
        x, y = x[keep], y[keep]
    if cfg.max_train_images is not None and cfg.max_train_images < len(y):
        subset = np.sort(np.random.default_rng([seed, 3]).permutation(len(y))[: cfg.max_train_images])
        x, y = x[subset], y[subset]
    if cfg.max_test_images is not None and cfg.max_test_images < len(test[1]):
        subset = np.sort(np.random.default_rng([seed, 4]).permutation(len(test[1]))[: cfg.max_test_images])
        test = (test[0][subset], test[1][subset])
    splits = [(_resize_uint8(a, size).contiguous(), b.long()) for a, b in ((x, y), val, test)]
    padding = cfg.crop_padding if cfg.crop_padding is not None else max(1, size // 8)
    flip = default_flip if cfg.flip is None else cfg.flip
    return ImageData(splits[0], splits[1], splits[2], num_classes, cfg.augment, padding, flip)


# ---------------------------------------------------------------------------------------------------------
# Sources.


def load_digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as uint8 ``(1797, 3, 8, 8)`` images (0..16 scaled to 0..255) and labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.round(bunch.images * (255 / 16)).astype(np.uint8))
    return images.unsqueeze(1).expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(bunch.target.astype(np.int64))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: the standard CIFAR-10 batches, nothing that runs."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as handle:
        batch = _ArrayUnpickler(io.BytesIO(handle.read()), encoding="bytes").load()
    data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, np.asarray(batch[b"labels"])


def resolve_cifar10_path(cfg: DatasetConfig) -> Path:
    """The CIFAR-10 folder from the config or ``HWNAS_CIFAR10``; ``UsageError`` when absent or unreadable."""
    given = cfg.path or os.environ.get(CIFAR10_ENV)
    if not given:
        raise UsageError(f"dataset.kind is cifar10 but no path is given: set dataset.path in the config or the "
                         f"{CIFAR10_ENV} environment variable to a folder with train_*.npz/test.npz or "
                         f"cifar-10-batches-py")
    path = Path(given).expanduser()
    if (path / "cifar-10-batches-py").is_dir():
        path = path / "cifar-10-batches-py"
    if not ((path / "train_0.npz").is_file() or (path / "data_batch_1").is_file()):
        raise UsageError(f"CIFAR-10 not found at {path} (from {'dataset.path' if cfg.path else CIFAR10_ENV}): "
                         f"expected train_0.npz ... test.npz or data_batch_1 ... test_batch; set dataset.path "
                         f"or {CIFAR10_ENV}")
    return path


def cifar10_files(path: Path) -> list[Path]:
    """The shard files of a CIFAR-10 folder: the training shards from the first to the last present (a part
    of CIFAR-10 may stop early, as ``cifar_pack.py``'s; one missing in between is reported by
    ``check_cifar10_files``), then the test shard."""
    npz = (path / "train_0.npz").is_file()
    train = [path / (f"train_{i}.npz" if npz else f"data_batch_{i + 1}") for i in range(5)]
    last = max(i for i, f in enumerate(train) if f.is_file())
    return train[:last + 1] + [path / ("test.npz" if npz else "test_batch")]


def check_cifar10_files(path: Path) -> None:
    """Raise ``UsageError`` naming the first missing, truncated or malformed shard (reads no pixels of npz
    shards: their zip directory and array headers only)."""
    files = cifar10_files(path)
    for file in files:
        if not file.is_file():
            later = "" if file == files[-1] else f" ({files[-2].name} is there)"
            raise UsageError(f"CIFAR-10 shard {file} is missing{later}")
        if file.suffix != ".npz":
            with open(file, "rb") as handle:  # a whole pickle ends with its STOP opcode
                handle.seek(0, os.SEEK_END)
                if handle.tell() == 0 or (handle.seek(-1, os.SEEK_END) and handle.read(1) != b"."):
                    raise UsageError(f"CIFAR-10 shard {file} is truncated (it does not end as a pickle does)")
        else:
            _npz_images(file)


def _npz_images(file: Path) -> int:
    """The number of images of an npz CIFAR-10 shard, from its zip directory and ``x`` header (no pixels read);
    ``UsageError`` naming a truncated or malformed shard."""
    import zipfile

    try:
        with zipfile.ZipFile(file) as archive:
            names = set(archive.namelist())
            if not {"x.npy", "y.npy"} <= names:
                raise UsageError(f"CIFAR-10 shard {file} lacks the arrays x and y (has {sorted(names)})")
            with archive.open("x.npy") as handle:
                version = np.lib.format.read_magic(handle)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                    else np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(handle)
            size = archive.getinfo("x.npy").file_size
            with archive.open("y.npy") as handle:
                labels = np.lib.format.read_array(handle, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise UsageError(f"CIFAR-10 shard {file} is truncated or not an npz file ({exc})") from exc
    if len(shape) != 4 or tuple(shape[1:]) != (32, 32, 3) or dtype != np.uint8:
        raise UsageError(f"CIFAR-10 shard {file}: x has shape {shape} {dtype}, expected (N, 32, 32, 3) uint8")
    if size < int(np.prod(shape)):
        raise UsageError(f"CIFAR-10 shard {file} is truncated")
    _check_cifar10_labels(file, labels, int(shape[0]))
    return int(shape[0])


def _check_cifar10_labels(file: Path, labels: np.ndarray, images: int) -> None:
    """``UsageError`` unless ``labels`` are one integer class in ``0 .. 9`` per image of the shard."""
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UsageError(f"CIFAR-10 shard {file}: y has shape {labels.shape} {labels.dtype}, expected one integer "
                         f"label per image, shape ({images},)")
    if len(labels) != images:
        raise UsageError(f"CIFAR-10 shard {file} has {images} images and {len(labels)} labels; they must pair up")
    outside = labels[(labels < 0) | (labels >= CIFAR10_CLASSES)]
    if len(outside):
        raise UsageError(f"CIFAR-10 shard {file}: label {int(outside[0])} is outside 0..{CIFAR10_CLASSES - 1} "
                         f"({len(outside)} such label(s))")


def _read_cifar10_shard(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one CIFAR-10 shard of either format; ``UsageError`` naming a shard that cannot be read."""
    try:
        if file.suffix != ".npz":
            x, y = _read_cifar_batch(file)
        else:
            with np.load(file, allow_pickle=False) as f:
                x, y = np.ascontiguousarray(f["x"].transpose(0, 3, 1, 2)), f["y"]
    except (OSError, ValueError, EOFError, KeyError, pickle.UnpicklingError) as exc:
        raise UsageError(f"cannot read CIFAR-10 shard {file}: {type(exc).__name__}: {exc}") from exc
    _check_cifar10_labels(file, y, len(x))
    return x, y.astype(np.int64)


def load_cifar10_arrays(path: Path) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((train x, y), (test x, y)) as uint8 NCHW tensors and int64 labels, from either format."""
    files = cifar10_files(path)
    shards = [_read_cifar10_shard(f) for f in files[:-1]]
    test = _read_cifar10_shard(files[-1])
    x = np.concatenate([s[0] for s in shards])
    y = np.concatenate([s[1] for s in shards])
    return (torch.from_numpy(x), torch.from_numpy(y)), (torch.from_numpy(test[0]), torch.from_numpy(test[1]))


def _folder_root(cfg: DatasetConfig) -> Path:
    if not cfg.path:
        raise UsageError("dataset.kind is folder but dataset.path is not set; give the image-folder root")
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise UsageError(f"dataset.path {root} is not a folder (expected one sub-folder of images per class)")
    return root


def _read_files(files: FileList, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of ``files`` decoded and resized to ``size`` (uint8 ``(N, 3, size, size)``) and their labels."""
    images = [read_rgb(files.path(i), size) for i in range(len(files))]
    return torch.from_numpy(np.stack(images)), torch.from_numpy(files.labels.astype(np.int64))


def num_classes(cfg: DatasetConfig) -> int:
    """The number of classes of the dataset, without loading its images."""
    if cfg.kind == "folder":
        if cfg.stream:
            from .streaming import folder_classes as streamed_classes

            return len(streamed_classes(_folder_root(cfg)))
        return len(folder_classes(_folder_root(cfg)))
    return CIFAR10_CLASSES


def check_dataset(cfg: DatasetConfig) -> None:
    """Raise ``UsageError`` now if the dataset cannot be found or a file of it is damaged (reads no pixels:
    CIFAR-10 shard headers and labels, a folder's file list and sizes)."""
    if cfg.kind == "cifar10":
        check_cifar10_files(resolve_cifar10_path(cfg))
    elif cfg.kind == "folder" and cfg.stream:
        from .streaming import scan_folder as scan_split_layout

        scan_split_layout(_folder_root(cfg))
    elif cfg.kind == "folder":
        scan_folder(_folder_root(cfg))
    elif cfg.kind != "digits":
        raise UsageError(f"dataset.kind {cfg.kind!r} is not known; allowed: {', '.join(DATASET_KINDS)}")


def load_dataset(cfg: DatasetConfig, resolution: int, seed: int = 0) -> ImageData | StreamingFolderData:
    """The dataset of ``cfg`` with images stored (or streamed) at ``cfg.image_size`` or ``resolution``."""
    size = cfg.image_size or resolution
    if cfg.kind == "folder" and cfg.stream:
        from .streaming import StreamingFolderData

        return StreamingFolderData(_folder_root(cfg), size, val_fraction=cfg.val_fraction, seed=seed,
                                   workers=cfg.loader_workers, max_train_images=cfg.max_train_images,
                                   max_test_images=cfg.max_test_images, flip=cfg.flip is not False,
                                   augment=cfg.augment)
    check_dataset(cfg)
    if cfg.kind == "digits":
        x, y = load_digits_arrays()
        return _assemble(cfg, seed, x, y, None, 10, size, default_flip=False)
    if cfg.kind == "cifar10":
        (x, y), test = load_cifar10_arrays(resolve_cifar10_path(cfg))
        return _assemble(cfg, seed, x, y, test, 10, cfg.image_size or 32, default_flip=True)
    index = scan_folder(_folder_root(cfg))
    x, y = _read_files(index.train, size)
    val, test = (None if files is None else _read_files(files, size) for files in (index.val, index.test))
    return _assemble(cfg, seed, x, y, test, len(index.classes), size, default_flip=True, val=val)


# ---------------------------------------------------------------------------------------------------------
# Split sizes, known before any work.

_SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}
_SPLIT_FIXES = {
    "train": "lower train.batch_size or raise dataset.max_train_images",
    "val": "raise dataset.val_fraction (the part of the training images held out for validation)",
    "test": "raise dataset.test_fraction or dataset.max_test_images",
}


def _source_sizes(cfg: DatasetConfig) -> tuple[int, int | None, int | None]:
    """(training images, the data's own validation images, its own test images; None for a split held out
    of the training images)."""
    if cfg.kind == "digits":
        return len(load_digits_arrays()[1]), None, None
    if cfg.kind == "cifar10":
        counts = [_npz_images(f) if f.suffix == ".npz" else len(_read_cifar10_shard(f)[1])
                  for f in cifar10_files(resolve_cifar10_path(cfg))]
        return sum(counts[:-1]), None, counts[-1]
    index = scan_folder(_folder_root(cfg))
    return len(index.train), *(None if files is None else len(files) for files in (index.val, index.test))


def split_sizes(cfg: DatasetConfig, seed: int = 0) -> dict[str, int]:
    """Images in the ``train``, ``val`` and ``test`` splits ``load_dataset(cfg, ..., seed)`` gives, read from
    file lists and shard headers (no image is decoded; digits and pickled CIFAR-10 batches are small enough to
    load). ``UsageError`` when the data cannot be found."""
    if cfg.kind == "folder" and cfg.stream:  # its index lists the files without decoding them
        data = load_dataset(cfg, cfg.image_size or 1, seed)
        return {split: data.size(split) for split in _SPLIT_NAMES}
    check_dataset(cfg)
    train, val, test = _source_sizes(cfg)
    if test is None:
        test = _held(train, cfg.test_fraction)
        train -= test
    if val is None:
        val = _held(train, cfg.val_fraction)
        train -= val
    if cfg.max_train_images is not None:
        train = min(train, cfg.max_train_images)
    if cfg.max_test_images is not None:
        test = min(test, cfg.max_test_images)
    return {"train": train, "val": val, "test": test}


def check_split_sizes(cfg: DatasetConfig, seed: int, least: Mapping[str, tuple[int, str]]) -> dict[str, int]:
    """``split_sizes``, or ``UsageError`` when a split holds fewer images than the work needs (a split held out
    by a fraction that rounds to no image, a training split smaller than one batch): refused before the work
    starts rather than an empty split scored as 0 or a worker failing after the run folder was made.

    Args:
        least: per split, the fewest images and what needs them, e.g.
            ``{"train": (64, "one batch of 64"), "val": (1, "the validation after every epoch")}``.
    """
    sizes = split_sizes(cfg, seed)
    for split, (count, needed_by) in least.items():
        if sizes[split] < count:
            raise UsageError(f"dataset: the {_SPLIT_NAMES[split]} split holds {sizes[split]} image(s), and "
                             f"{needed_by} needs {count}; {_SPLIT_FIXES[split]}")
    return sizes


# ---------------------------------------------------------------------------------------------------------
# The files a run trained on.


def data_fingerprint(cfg: DatasetConfig) -> dict[str, Any] | None:
    """What identifies the files of a dataset, without decoding any: for a folder, per tree, the number of
    images and a SHA-256 of their labels and paths; for CIFAR-10, the shards' names and sizes; None for the
    bundled digits. The held-out splits are seeded permutations of these lists, so the same fingerprint means
    the same training, validation and test images."""
    if cfg.kind == "folder":
        if cfg.stream:
            from .streaming import scan_folder as scan_split_layout

            index = scan_split_layout(_folder_root(cfg))
        else:
            index = scan_folder(_folder_root(cfg))
        trees: dict[str, Any] = {"kind": "folder", "classes": list(index.classes)}
        for split, files in (("train", index.train), ("val", index.val), ("test", index.test)):
            if files is not None:
                digest = hashlib.sha256()
                for name, label in zip(files.names, files.labels):
                    digest.update(b"%d/%s\n" % (int(label), bytes(name)))
                trees[split] = {"images": len(files), "sha256": digest.hexdigest()}
        return trees
    if cfg.kind == "cifar10":
        return {"kind": "cifar10",
                "shards": {f.name: f.stat().st_size for f in cifar10_files(resolve_cifar10_path(cfg))}}
    return None


def record_data(path: str | os.PathLike[str], cfg: DatasetConfig) -> None:
    """Keep ``data_fingerprint(cfg)`` at ``path`` (a run's, when it starts training), or check it against the
    one kept there (``check_same_data``)."""
    from .io import atomic_write_json

    if Path(path).is_file():
        check_same_data(path, cfg)
    else:
        atomic_write_json(path, data_fingerprint(cfg))


def check_same_data(path: str | os.PathLike[str], cfg: DatasetConfig) -> None:
    """``UsageError`` when the dataset's files are not those fingerprinted at ``path`` (nothing kept there:
    nothing to check, as for runs trained before fingerprints were kept): images added, removed or renamed
    since training would move images between the held-out splits and the training split, so a test image
    could be one the supernet trained on."""
    import json

    path = Path(path)
    if not path.is_file():
        return
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{path} is damaged ({type(exc).__name__}); move it away to use the run without the "
                         f"check that its data is unchanged") from exc
    now = data_fingerprint(cfg)
    if kept == now:
        return
    where = f"dataset.path {cfg.path}" if cfg.path else f"dataset.kind {cfg.kind}"
    if not isinstance(kept, dict) or not isinstance(now, dict) or kept.get("kind") != now.get("kind"):
        change = "another kind of data"
    elif kept.get("classes") != now.get("classes"):
        change = "its class folders differ"
    else:
        changes = []
        for tree in (s for s in ("train", "val", "test", "shards") if kept.get(s) != now.get(s)):
            then, current = (d.get("images") if isinstance(d, dict) and tree != "shards" else None
                             for d in (kept.get(tree), now.get(tree)))
            changes.append(f"{tree}: {then} images then, {current} now" if then != current
                           else f"its {tree} files differ")
        change = "; ".join(changes)
    raise UsageError(f"{where} changed since this run trained on it ({change}): the held-out validation and test "
                     f"images would not be those training held out; restore the data, or train in another run_dir "
                     f"(the fingerprint kept: {path})")
