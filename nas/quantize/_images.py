"""Images as a deployed subnet takes them (float32 NCHW RGB in [0, 1] at its resolution, normalisation
inside the graph), and the reader ONNX Runtime's calibration pulls them from."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError

__all__ = ["ImageSet", "calibration_images", "split_images"]


@dataclass(frozen=True)
class ImageSet:
    """Images (float32 NCHW in [0, 1]) and their labels (int64), with what they are."""

    images: np.ndarray
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.images), batch_size):
            yield self.images[start:start + batch_size]

    def head(self, n: int) -> ImageSet:
        return ImageSet(self.images[:n], self.labels[:n], self.source)


def _pixels(data: Any, split: str, resolution: int, limit: int | None, order: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``limit`` images of ``split`` (in ``order`` where given) in [0, 1] at ``resolution``."""
    import torch

    from ..query import Normalization, _resized

    splits = getattr(data, "splits", None)
    if splits is not None:  # nas.data.ImageData: uint8 splits in memory
        x, y = splits[split]
        index = torch.as_tensor(order if order is not None else np.arange(len(y)))[:limit]
        x, y = x.cpu()[index], y.cpu()[index]
        return _resized(x, resolution).numpy(), y.numpy().astype(np.int64)
    # nas.streaming: normalised batches, the normalisation undone here
    normalization = Normalization.of(data)
    mean = torch.tensor(normalization.mean).view(1, 3, 1, 1)
    std = torch.tensor(normalization.std).view(1, 3, 1, 1)
    xs, ys = [], []
    for x, y in data.eval_batches(split, 100, limit):
        xs.append(_resized((x.cpu().float() * std + mean).clamp(0.0, 1.0), resolution).numpy())
        ys.append(y.cpu().numpy().astype(np.int64))
    if not xs:
        return np.zeros((0, 3, resolution, resolution), np.float32), np.zeros(0, np.int64)
    return np.concatenate(xs), np.concatenate(ys)


def check_calibration_count(num_images: int) -> None:
    """Refuse a calibration image count below one (before any work: the command checks it up front)."""
    if num_images < 1:
        raise UsageError(f"--calibration-images (training images to calibrate on): {num_images} is not allowed; "
                         f"must be >= 1")


def calibration_images(data: Any, resolution: int, num_images: int, seed: int = 0) -> ImageSet:
    """``num_images`` seeded training images, not augmented: what static quantisation calibrates on."""
    check_calibration_count(num_images)
    n = data.size("train")
    if n == 0:
        raise UsageError("the dataset has no training images to calibrate the quantisation on")
    order = np.random.default_rng([seed, 15]).permutation(n) if hasattr(data, "splits") else None
    x, y = _pixels(data, "train", resolution, num_images, order)
    return ImageSet(np.ascontiguousarray(x, dtype=np.float32), y, f"{len(y)} training images (seed {seed})")


def split_images(data: Any, split: str, resolution: int, max_images: int | None = None) -> ImageSet:
    """The images of ``split`` (``val`` or ``test``; the first ``max_images``) in [0, 1] at ``resolution``."""
    if split not in ("val", "test"):
        raise UsageError(f"split {split!r} is not allowed; allowed: val, test")
    if data.size(split) == 0:
        raise UsageError(f"the dataset has no {split} images")
    x, y = _pixels(data, split, resolution, max_images)
    return ImageSet(np.ascontiguousarray(x, dtype=np.float32), y, f"{len(y)} {split} images")
