"""Streaming image-folder loader: decode + augment throughput for several DataLoader worker counts.

Reads a JPEG tree (``--root``, laid out ``train/<class>/<image>``, ``val/<class>/<image>``) or generates
one in a temporary folder (``--classes`` x ``--per-class`` photo-like JPEGs of ``--width`` x ``--height``),
then, for each ``--workers`` count in one process, draws ``--images`` training images through
``nas.streaming.StreamingFolderData.train_batches`` (Pillow decode, random resized crop, flip, collation,
normalisation) and as many evaluation images (decode, resize, centre crop). Every epoch starts its loader
workers afresh, as in training, so start-up is included in "img/s"; "workers running" leaves out each
epoch's first batch (start-up and its decoding), and is what an ImageNet-sized epoch sees. Rows are
measured side by side in one process; the last column is the ratio of training throughput to the first
row. Batches are delivered on ``--device`` (pinned memory and non-blocking copies on CUDA).

For reference it also times the in-memory path of ``nas.data`` (decode and resize every image once,
in this process) on the same files.

    .venv/bin/python experiments/benchmarks/folder_loader.py --workers 0 1 2 --image-size 224 --images 512
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nas.streaming import StreamingFolderData  # noqa: E402


def write_jpeg_tree(root: Path, classes: int, per_class: int, width: int, height: int, seed: int = 0) -> None:
    """Photo-like JPEGs (smooth colour fields with fine noise, quality 90): their decode cost is close to
    that of real photographs, unlike flat images (too cheap) or white noise (too expensive)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", max(1, per_class // 10))):
        for c in range(classes):
            folder = root / split / f"class_{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                coarse = rng.integers(0, 256, (max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8)
                field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC),
                                   dtype=np.int16)
                noisy = np.clip(field + rng.normal(0, 8, field.shape), 0, 255).astype(np.uint8)
                Image.fromarray(noisy).save(folder / f"img_{i:05d}.jpg", quality=90)


@dataclass
class Pass:
    """One measurement: images drawn, seconds in all, and each epoch's first batch (seconds, images)."""

    images: int
    seconds: float
    first_batch_s: list[float]
    first_batch_images: int

    @property
    def per_s(self) -> float:
        return self.images / self.seconds

    @property
    def steady_per_s(self) -> float:
        """Images per second once the workers are running (each epoch's first batch excluded)."""
        return (self.images - self.first_batch_images) / max(self.seconds - sum(self.first_batch_s), 1e-9)


def measure(data: StreamingFolderData, images: int, batch_size: int, train: bool) -> Pass:
    """Draw ``images`` images, epoch after epoch (each epoch starts its loader workers afresh)."""
    started = time.perf_counter()
    count, seed, first, first_images = 0, 0, [], 0
    while count < images:
        batches = data.train_batches(batch_size, seed) if train else data.eval_batches("train", batch_size)
        epoch_started = time.perf_counter()
        for i, (x, _) in enumerate(batches):
            if i == 0:
                first.append(time.perf_counter() - epoch_started)
                first_images += len(x)
            count += len(x)
            if count >= images:
                break
        del batches
        seed += 1
    return Pass(count, time.perf_counter() - started, first, first_images)


def eager_images_per_s(data: StreamingFolderData, images: int, size: int) -> float:
    """``nas.data``'s up-front path: open, convert, resize to size x size, in this process."""
    from PIL import Image

    files = data.files["train"]
    started = time.perf_counter()
    for i in range(images):
        with Image.open(files.path(i % len(files))) as image:
            np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    return images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="an existing tree (default: generate one in a temporary folder)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=512, help="images per measurement")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="passes per worker count; the best is shown")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--device", default="cpu", help="where batches are delivered (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of this process (a training worker's threads_per_worker, 1 by "
                             "default; loader workers always use 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="hwnas-folder-bench-") as scratch:
        root = Path(args.root) if args.root else Path(scratch)
        if not args.root:
            started = time.perf_counter()
            write_jpeg_tree(root, args.classes, args.per_class, args.width, args.height)
            print(f"generated {args.classes} x {args.per_class} JPEGs of {args.width}x{args.height} in "
                  f"{time.perf_counter() - started:.1f} s")
        print(f"tree {root}; image size {args.image_size}; {args.images} images per pass, batch "
              f"{args.batch_size}, best of {args.repeats}; {os.cpu_count()} CPUs, {args.threads} torch thread(s) "
              f"in this process; device {args.device}")
        rows = []
        for workers in args.workers:
            data = StreamingFolderData(root, args.image_size, val_fraction=0.0, workers=workers)
            data.to(args.device)
            measure(data, args.batch_size, args.batch_size, train=True)  # warm the page cache
            train = max((measure(data, args.images, args.batch_size, True) for _ in range(args.repeats)),
                        key=lambda p: p.per_s)
            evaluate = max((measure(data, args.images, args.batch_size, False) for _ in range(args.repeats)),
                           key=lambda p: p.per_s)
            rows.append((workers, train, evaluate))
        eager = max(eager_images_per_s(data, min(args.images, len(data)), args.image_size)
                    for _ in range(args.repeats))
    print(f"\n| workers | train img/s | train img/s, workers running | first batch of an epoch, s | "
          f"eval img/s | train vs {args.workers[0]} workers |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for workers, train, evaluate in rows:
        print(f"| {workers} | {train.per_s:.0f} | {train.steady_per_s:.0f} | "
              f"{statistics.median(train.first_batch_s):.2f} | {evaluate.per_s:.0f} | "
              f"{train.per_s / rows[0][1].per_s:.2f} |")
    print(f"\nreference: nas.data up-front decode + resize, one process: {eager:.0f} img/s")


if __name__ == "__main__":
    main()
