"""Image-folder trees: the layout, class names, file lists and decoding that both folder loaders share
(``nas.data`` reads the tree into memory, ``nas.streaming`` decodes it batch by batch).

Layouts (``folder_trees``):

- split: ``ROOT/train/<class>/...`` with ``ROOT/test/`` or ``ROOT/val/`` as the test split; with both
  ``test/`` and ``val/``, ``val/`` is the validation split (instead of a seeded part of the training images).
- flat (no ``train/``): ``ROOT/<class>/...``; the loader holds test and validation images out, seeded. A
  flat root whose ``test/`` or ``val/`` folder holds class folders of the root looks like a split layout
  without ``train/``, and is refused rather than read as one more class.

A class's images are every image file under its folder, sub-folders included (relative paths, sorted; hidden
files and folders, such as macOS's ``._name.jpg``, skipped). Classes are the sorted folder names of the
training tree. ``scan_folder`` refuses, naming the folder or file: fewer than two classes, a training class
without images, a class folder of ``val/`` or ``test/`` that the training tree lacks, an empty split, an
empty image file. Nothing is decoded to build the lists.

Decoding (``read_rgb``): every Pillow mode to 8-bit RGB; 16- and 32-bit integer images (``I;16``, ``I``, as
16-bit PNGs and TIFFs open) are scaled from 16 bits, where Pillow's own conversion would clip them to white.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import UsageError

if TYPE_CHECKING:
    from PIL import Image as PILImage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
TEST_FOLDERS = ("test", "val")  # the test split's folder, in order of preference
_WIDE_INTEGER_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


@dataclass(frozen=True)
class FileList:
    """Image files of one split: ``root/classes[label]/name`` (``name`` may have sub-folders).

    Names are one numpy bytes array rather than a list of strings: DataLoader workers read it without
    touching per-item reference counts, so the forked copy-on-write pages stay shared (a Python list of a
    million paths is copied into every worker as it is read).
    """

    root: str
    classes: tuple[str, ...]
    names: np.ndarray  # bytes (os.fsencode of the path below the class folder), dtype S
    labels: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        label = int(self.labels[index])
        return os.path.join(self.root, self.classes[label], os.fsdecode(bytes(self.names[index])))

    def subset(self, index: np.ndarray) -> FileList:
        return FileList(self.root, self.classes, self.names[index], self.labels[index])


@dataclass(frozen=True)
class FolderIndex:
    """What ``scan_folder`` found: the class names and the file lists of the trees present (``val`` and
    ``test`` are None where the layout has no such folder)."""

    classes: tuple[str, ...]
    train: FileList
    val: FileList | None
    test: FileList | None


def _hidden(name: str) -> bool:
    return name.startswith(".")


def is_image_name(name: str) -> bool:
    return not _hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def class_dirs(tree: Path) -> list[str]:
    """The sorted names of the (non-hidden) folders in ``tree``."""
    with os.scandir(tree) as entries:
        return sorted(e.name for e in entries if not _hidden(e.name) and e.is_dir())


def folder_trees(root: str | os.PathLike[str]) -> tuple[Path, Path | None, Path | None]:
    """(training tree, validation tree or None, test tree or None) of an image-folder root (module docstring).

    Raises:
        UsageError: when ``root`` is not a folder, or is a flat tree whose ``test/`` or ``val/`` holds class
            folders of the root.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UsageError(f"image folder {root} is not a folder (expected one sub-folder of images per class, or "
                         f"train/<class>/ and val/<class>/)")
    if (root / "train").is_dir():
        present = {n: root / n for n in TEST_FOLDERS if (root / n).is_dir()}
        if "test" in present:
            return root / "train", present.get("val"), present["test"]
        return root / "train", None, present.get("val")
    names = set(class_dirs(root))
    for split in TEST_FOLDERS:
        if split in names:
            shared = sorted((set(class_dirs(root / split)) & names) - {split})
            if shared:
                raise UsageError(f"{root / split} holds class folders of {root} ({', '.join(shared[:3])}"
                                 f"{', ...' if len(shared) > 3 else ''}) as a {split} split would, but {root} has no "
                                 f"train/ folder: put the training class folders under {root / 'train'}")
    return root, None, None


def folder_classes(root: str | os.PathLike[str]) -> tuple[str, ...]:
    """The sorted class names of an image-folder tree (the folders of its training tree), listing no images.

    Raises:
        UsageError: as ``folder_trees``, or when the training tree has fewer than two class folders.
    """
    tree = folder_trees(root)[0]
    classes = tuple(class_dirs(tree))
    if not classes:
        raise UsageError(f"{tree} has no class sub-folders (expected one folder of images per class)")
    if len(classes) < 2:
        raise UsageError(f"{tree} has one class folder ({classes[0]}); a classifier needs at least two")
    return classes


def _class_images(folder: Path) -> list[bytes]:
    """Image paths below one class folder (sub-folders included, each real folder once), sorted; ``UsageError``
    on an empty image file."""
    found: list[str] = []
    seen: set[str] = set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not _hidden(d)]
        for name in files:
            if not is_image_name(name):
                continue
            path = os.path.join(top, name)
            try:
                size = os.stat(path).st_size
            except OSError as exc:  # a broken link
                raise UsageError(f"cannot read image {path} ({exc.strerror}); remove or replace it") from None
            if size == 0:
                raise UsageError(f"image file {path} is empty; remove or replace it")
            found.append(os.path.relpath(path, folder))
    return sorted(os.fsencode(p) for p in found)


def _file_list(tree: Path, classes: tuple[str, ...], present: list[str], split: str) -> FileList:
    """The images of the ``present`` class folders of ``tree``, labelled by their place in ``classes``."""
    label_of = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in present if name not in label_of]
    if unknown:
        raise UsageError(f"class folder {tree / unknown[0]} is not a class of the training tree "
                         f"({len(unknown)} such folder(s)); every class needs training images")
    names: list[bytes] = []
    labels: list[int] = []
    for name in present:
        found = _class_images(tree / name)
        if split == "train" and not found:
            raise UsageError(f"class folder {tree / name} has no images ({', '.join(IMAGE_SUFFIXES)}, sub-folders "
                             f"included); every class of the training tree needs at least one")
        names += found
        labels += [label_of[name]] * len(found)
    if not names:
        raise UsageError(f"{tree} has no images in class sub-folders (expected {tree.name}/<class>/<image>)")
    return FileList(str(tree), classes, np.array(names, dtype=bytes), np.array(labels, dtype=np.int64))


def scan_folder(root: str | os.PathLike[str]) -> FolderIndex:
    """List (never decode) the images of an image-folder tree and check it (module docstring): one directory
    walk and one ``stat`` per file.

    Raises:
        UsageError: naming the folder or file at fault.
    """
    train_tree, val_tree, test_tree = folder_trees(root)
    classes = folder_classes(root)
    train = _file_list(train_tree, classes, list(classes), "train")
    val, test = (None if tree is None else _file_list(tree, classes, class_dirs(tree), split)
                 for tree, split in ((val_tree, "val"), (test_tree, "test")))
    return FolderIndex(classes, train, val, test)


def rgb(image: PILImage.Image) -> PILImage.Image:
    """``image`` as 8-bit RGB: integer images wider than 8 bits scaled from 16 bits (Pillow's ``convert``
    clips them at 255), every other mode through ``convert``."""
    from PIL import Image

    if image.mode not in _WIDE_INTEGER_MODES:
        return image.convert("RGB")
    wide = np.asarray(image).astype(np.int64)
    eight = np.clip((wide + 128) // 257, 0, 255).astype(np.uint8)
    return Image.fromarray(eight, "L").convert("RGB")


def read_rgb(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """The image at ``path`` as a uint8 ``(3, size, size)`` array (bilinear resize of the whole image).

    Pillow's warnings (a decompression-bomb size) are raised once, naming the file.

    Raises:
        UsageError: naming a file Pillow cannot read.
    """
    from PIL import Image

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with Image.open(path) as image:
                out = rgb(image).resize((size, size), Image.Resampling.BILINEAR)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # OSError: UnidentifiedImageError too
            raise unreadable(path, exc) from None
    for message in dict.fromkeys(str(w.message) for w in caught):
        warnings.warn(f"image {path}: {message}", stacklevel=2)
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1)


def unreadable(path: str | os.PathLike[str], exc: BaseException) -> UsageError:
    """The one-line error for an image file Pillow cannot read."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return UsageError(f"cannot read image {path} ({reason[:160]}); remove or replace it")
