"""An image-folder dataset read from disk batch by batch: for ImageNet-sized trees.

``nas.data`` decodes a ``folder`` dataset into memory up front, which suits small trees; ImageNet would
need about 190 GB per worker. ``StreamingFolderData`` keeps only the file lists (built with
``os.scandir``, sorted) and decodes each batch with Pillow in ``torch.utils.data.DataLoader`` worker
processes. It implements ``supernets.training.DataSource``.

Layout: ``ROOT/train/<class>/<image>`` and ``ROOT/val/<class>/<image>`` (or ``test/``); class names,
sorted, give the labels of every split (``nas.image_folder``, shared with the in-memory loader: images in
sub-folders of a class count, hidden files do not). The ``val`` split is a seeded ``val_fraction`` of the
training files (a file list, never pixels), or the ``val/`` tree when ``test/`` is there too; the ``test``
split is the ``test/`` tree, else ``val/``.

Transforms (Inception-style, written with Pillow, no torchvision): training images are cut with a random
resized crop (area 8-100 %, aspect 3/4-4/3) to ``image_size`` and flipped; evaluation images are resized
so their shorter side is ``round(image_size / 0.875)`` and centre-cropped to ``image_size``. JPEGs are
decoded at a reduced scale (``Image.draft``) whenever the crop still has ``image_size`` pixels to give.

Every augmentation draws from a generator seeded by (epoch seed, position in the epoch), so a seed fixes
the batches whatever the number of loader workers. Workers return uint8 batches (a quarter of the bytes
of floats through shared memory); conversion and ImageNet normalisation happen after the copy to the
device set by ``to`` (pinned memory and ``non_blocking`` copies on CUDA).
"""

from __future__ import annotations

import math
import os
import traceback
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from . import image_folder
from .errors import UsageError
from .image_folder import FileList, FolderIndex, rgb, unreadable

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_CROP_FRACTION = 0.875
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------------------------------------------------
# File lists (``nas.image_folder``, shared with the in-memory loader): streaming needs the split layout.


def _split_root(root: str | os.PathLike[str]) -> Path:
    root = Path(root).expanduser()
    if not (root / "train").is_dir():
        raise UsageError(f"image folder {root} has no train/ folder (expected train/<class>/<image> and "
                         f"val/<class>/<image>)")
    return root


def folder_classes(root: str | os.PathLike[str]) -> tuple[str, ...]:
    """The sorted class names of an image-folder tree (the folders of ``train/``), listing no files.

    Raises:
        UsageError: when ``root/train`` is missing or has fewer than two class folders.
    """
    return image_folder.folder_classes(_split_root(root))


def scan_folder(root: str | os.PathLike[str]) -> FolderIndex:
    """``nas.image_folder.scan_folder`` of a tree in the split layout.

    Raises:
        UsageError: naming the folder or file at fault: no ``train/``, fewer than two class folders, a class
            of ``train/`` without images, an empty image file, no ``val/`` or ``test/``, a class folder in
            that tree which ``train/`` does not have.
    """
    index = image_folder.scan_folder(_split_root(root))
    if index.test is None:
        raise UsageError(f"image folder {root} has no val/ or test/ folder (expected val/<class>/<image>)")
    return index


def _seeded_subset(n: int, keep: int, seed: int, salt: int) -> np.ndarray:
    return np.sort(np.random.default_rng([seed, salt]).permutation(n)[:keep])


# ---------------------------------------------------------------------------------------------------------
# Decoding and transforms (run in the loader workers).


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A crop (left, top, right, bottom) of area ``CROP_SCALE`` and aspect ``CROP_RATIO``, as torchvision's
    ``RandomResizedCrop.get_params``: ten tries, then the centre crop of the nearest allowed aspect."""
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, int(round(width / CROP_RATIO[0]))
    elif ratio > CROP_RATIO[1]:
        w, h = int(round(height * CROP_RATIO[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def centre_crop_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """The part of the image that resizing the shorter side to ``round(size / 0.875)`` and cropping the
    centre ``size`` x ``size`` keeps, in the image's own coordinates."""
    short = round(size / EVAL_CROP_FRACTION)
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    crop = min(size, new_w, new_h)
    left, top = int(round((new_w - crop) / 2)), int(round((new_h - crop) / 2))
    sx, sy = width / new_w, height / new_h
    return left * sx, top * sy, (left + crop) * sx, (top + crop) * sy


class _Images(Dataset):
    """Decoded, transformed images of a ``FileList`` as uint8 ``(3, size, size)`` tensors and labels.

    Keys are ``(file index, epoch seed, position)``: with ``augment`` the crop and flip are drawn from a
    generator seeded by the last two, else the evaluation transform is applied.
    """

    def __init__(self, files: FileList, size: int, augment: bool, flip: bool) -> None:
        self.files = files
        self.size = size
        self.augment = augment
        self.flip = flip

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        from PIL import Image

        index, seed, position = key
        path = self.files.path(index)
        try:
            image = Image.open(path)
            width, height = image.size
        except Exception as exc:  # anything Pillow raises on a user's file means the file is bad
            raise unreadable(path, exc) from None
        mirror = False
        if self.augment:
            rng = np.random.default_rng([seed, position, 1])
            box: tuple[float, float, float, float] = random_resized_crop_box(width, height, rng)
            mirror = self.flip and bool(rng.random() < 0.5)
        else:
            box = centre_crop_box(width, height, self.size)
        try:
            # Decode a JPEG at 1/2, 1/4 or 1/8 scale when the crop keeps at least ``size`` pixels a side.
            left, top, right, bottom = box
            drafted = image.draft("RGB", (math.ceil(width * self.size / (right - left)),
                                          math.ceil(height * self.size / (bottom - top))))
            s = drafted[1][2] / width if drafted else 1.0
            out = rgb(image).resize((self.size, self.size), Image.Resampling.BILINEAR,
                                              box=(left * s, top * s, right * s, bottom * s))
        except Exception as exc:
            raise unreadable(path, exc) from None
        finally:
            image.close()
        if mirror:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.asarray(out, dtype=np.uint8).transpose(2, 0, 1).copy()), int(
            self.files.labels[index])


class _Keys(Sampler):
    """Keys ``(file index, seed, position)`` for ``_Images``, made lazily (an epoch may be a million).

    The i-th key has position ``offset + i * stride``: a rank's keys carry their positions in the whole
    epoch, so an image's crop and flip depend on the seed and its place in the epoch, not on the rank.
    """

    def __init__(self, index: np.ndarray, seed: int, offset: int = 0, stride: int = 1) -> None:
        self.index = index
        self.seed = seed % 2**63
        self.offset = offset
        self.stride = stride

    def __len__(self) -> int:
        return len(self.index)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return ((int(i), self.seed, self.offset + p * self.stride) for p, i in enumerate(self.index))


def _worker_message(exc: UsageError) -> str:
    """The original one-line message of a ``UsageError`` re-raised by the DataLoader, which wraps it in
    "Caught UsageError in DataLoader worker process 0. Original Traceback ..." with the traceback."""
    text = str(exc)
    if "\n" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    prefix = f"{UsageError.__module__}.{UsageError.__qualname__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


# ---------------------------------------------------------------------------------------------------------
# The data source.


class StreamingFolderData:
    """An image-folder tree read from disk per batch; implements ``supernets.training.DataSource``.

    Args:
        root: the folder holding ``train/`` and ``val/`` (or ``test/``, or both), one sub-folder per class.
        image_size: side of the delivered images (the training loop resizes further).
        val_fraction: part of the training files held out (seeded) as the ``val`` split, unless ``root``
            has both ``val/`` (then the ``val`` split) and ``test/``.
        seed: seed of the validation split and of the ``max_*`` subsets.
        workers: DataLoader worker processes (0: decode in the calling process).
        max_train_images: cap on training files after the validation split (a seeded subset).
        max_test_images: cap on test files (a seeded subset).
        flip: horizontal flips in training and calibration batches.
        augment: random resized crops (and flips) in training and calibration batches; without, they get
            the evaluation transform.

    Raises:
        UsageError: when the tree is not usable (see ``scan_folder``); images are decoded only as batches
            are drawn, and an unreadable one then raises ``UsageError`` naming the file.
    """

    def __init__(self, root: str | os.PathLike[str], image_size: int, *, val_fraction: float = 0.1,
                 seed: int = 0, workers: int = 4, max_train_images: int | None = None,
                 max_test_images: int | None = None, flip: bool = True, augment: bool = True) -> None:
        if image_size < 1:
            raise UsageError(f"image_size must be a positive number of pixels, got {image_size}")
        if not 0 <= val_fraction < 1:
            raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if workers < 0:
            raise UsageError(f"workers must be 0 or more, got {workers}")
        index = scan_folder(root)
        self.root = str(Path(root).expanduser())
        self.classes = index.classes
        self.num_classes = len(index.classes)
        self.image_size = image_size
        self.workers = workers
        self.flip = flip
        self.augment = augment
        self.device = torch.device("cpu")
        train, val = index.train, index.val
        if val is None:  # no val/ beside test/: a seeded part of the training files
            order = np.random.default_rng([seed, 2]).permutation(len(train))
            held = int(round(len(train) * val_fraction))
            val, train = train.subset(np.sort(order[:held])), train.subset(np.sort(order[held:]))
        if max_train_images is not None and max_train_images < len(train):
            train = train.subset(_seeded_subset(len(train), max_train_images, seed, 3))
        test = index.test
        if max_test_images is not None and max_test_images < len(test):
            test = test.subset(_seeded_subset(len(test), max_test_images, seed, 4))
        self.files = {"train": train, "val": val, "test": test}
        self._norm: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.files["train"])

    def size(self, split: str) -> int:
        return len(self._split(split))

    def to(self, device: torch.device | str) -> None:
        """Deliver batches on ``device`` (pinned host memory and non-blocking copies when it is CUDA)."""
        self.device = torch.device(device)

    # -- DataSource ----------------------------------------------------------------------------------------

    def steps_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        return (len(self) // world_size) // batch_size

    def train_indices(self, seed: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """This rank's training-file indices for the epoch of ``seed``, in delivery order.

        As ``DistributedSampler(drop_last=True)``: a seeded permutation of the training files, cut to a
        multiple of ``world_size``, of which rank ``r`` takes positions ``r, r + world_size, ...``.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in range for world_size {world_size}")
        n = len(self)
        order = np.random.default_rng([seed % 2**63, 1]).permutation(n)
        return order[: n - n % world_size][rank::world_size]

    def train_batches(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of this rank's shard: shuffled, augmented, normalised; the last partial batch dropped."""
        index = self.train_indices(seed, rank, world_size)
        index = index[: len(index) - len(index) % batch_size]
        dataset = _Images(self.files["train"], self.image_size, self.augment, self.flip)
        loader = self._loader(dataset, _Keys(index, seed, rank, world_size), batch_size, drop_last=True)
        yield from self._deliver(loader)

    def eval_batches(self, split: str, batch_size: int, max_images: int | None = None
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised, centre-cropped batches of ``split`` (``train``, ``val`` or ``test``) in file order."""
        files = self._split(split)
        n = len(files) if max_images is None else min(len(files), max_images)
        dataset = _Images(files, self.image_size, augment=False, flip=False)
        loader = self._loader(dataset, _Keys(np.arange(n), 0), batch_size, drop_last=False)
        yield from self._deliver(loader)

    def calibration_batches(self, num_images: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
        """``num_images`` seeded training images, augmented as in training, for BN recalibration."""
        n = len(self)
        index = np.random.default_rng([seed % 2**63, 5]).permutation(n)[: min(num_images, n)]
        dataset = _Images(self.files["train"], self.image_size, self.augment, self.flip)
        loader = self._loader(dataset, _Keys(index, seed + 12345), batch_size, drop_last=False)
        for x, _ in self._deliver(loader):
            yield x

    # -- internals -----------------------------------------------------------------------------------------

    def _split(self, split: str) -> FileList:
        if split not in self.files:
            raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        return self.files[split]

    def _loader(self, dataset: _Images, keys: _Keys, batch_size: int, drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size, sampler=keys, drop_last=drop_last, num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # DataLoader draws a base seed: keep it off the global generator
        )

    def _deliver(self, loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The loader's uint8 batches as normalised floats on the device; worker errors as one line."""
        mean, std = self._normaliser()
        batches = iter(loader)
        while True:
            message = None
            try:
                x, y = next(batches)
            except StopIteration:
                return
            except UsageError as exc:
                message = _worker_message(exc)
                # The re-raised exception and the loader's frames form a reference cycle that holds the
                # loader; left to the garbage collector, its workers would take 5 s each to stop.
                traceback.clear_frames(exc.__traceback__)
            if message is not None:
                del batches  # the workers stop now
                raise UsageError(message)
            x = x.to(self.device, non_blocking=True).float().sub_(mean).div_(std)
            yield x, y.to(self.device, non_blocking=True)

    def _normaliser(self) -> tuple[torch.Tensor, torch.Tensor]:
        """ImageNet mean and std on the 0..255 scale, shaped (1, 3, 1, 1), on the device."""
        if self.device not in self._norm:
            self._norm[self.device] = (
                torch.tensor(IMAGENET_MEAN, device=self.device).mul(255).view(1, 3, 1, 1),
                torch.tensor(IMAGENET_STD, device=self.device).mul(255).view(1, 3, 1, 1),
            )
        return self._norm[self.device]
