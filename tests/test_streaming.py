"""The streaming image-folder source on a real JPEG tree: file lists, transforms, sharding, seeds, errors,
and one real Ray Train run over it."""

from __future__ import annotations

import functools
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas.errors import UsageError
from nas.streaming import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    StreamingFolderData,
    centre_crop_box,
    folder_classes,
    random_resized_crop_box,
    scan_folder,
)

CLASSES = ("cat", "dog", "emu")
SIZE = 32


def write_tree(root: Path, train_per_class: int = 20, val_per_class: int = 4) -> Path:
    """JPEGs of varied sizes (both orientations), one colour cast per class, noise for texture."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                w, h = (40 + 9 * i, 30 + 5 * i) if i % 2 else (30 + 4 * i, 44 + 7 * i)
                pixels = rng.integers(0, 160, (h, w, 3), dtype=np.uint8)
                pixels[..., c] += 90
                Image.fromarray(pixels).save(folder / f"img_{i:03d}.jpg", quality=90)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("tree"))


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x * std + mean) * 255


def test_file_lists_labels_and_seeded_validation_split(tree: Path) -> None:
    index = scan_folder(tree)
    assert folder_classes(tree) == index.classes == CLASSES and len(index.train) == 60 and len(index.test) == 12
    assert index.train.path(0) == str(tree / "train" / "cat" / "img_000.jpg")
    assert list(np.bincount(index.train.labels)) == [20, 20, 20]
    data = StreamingFolderData(tree, SIZE, val_fraction=0.2, seed=0, workers=0)
    assert data.num_classes == 3 and (len(data), data.size("val"), data.size("test")) == (48, 12, 12)
    train = {data.files["train"].path(i) for i in range(len(data))}
    val = {data.files["val"].path(i) for i in range(data.size("val"))}
    assert not train & val and len(train | val) == 60
    again = StreamingFolderData(tree, SIZE, val_fraction=0.2, seed=0, workers=0)
    assert np.array_equal(again.files["val"].names, data.files["val"].names)
    other = StreamingFolderData(tree, SIZE, val_fraction=0.2, seed=1, workers=0)
    assert not np.array_equal(other.files["val"].names, data.files["val"].names)
    capped = StreamingFolderData(tree, SIZE, seed=0, workers=0, max_train_images=10, max_test_images=5)
    assert (len(capped), capped.size("test")) == (10, 5)


def test_batches_are_normalised_float_images_with_int64_labels(tree: Path) -> None:
    data = StreamingFolderData(tree, SIZE, workers=0)
    data.to(torch.device("cpu"))
    x, y = next(data.train_batches(8, seed=0))
    assert x.shape == (8, 3, SIZE, SIZE) and x.dtype == torch.float32
    assert y.shape == (8,) and y.dtype == torch.int64 and set(y.tolist()) <= {0, 1, 2}
    for batch in (x, next(data.eval_batches("test", 5))[0], next(data.calibration_batches(4, 4, seed=0))):
        pixels = unnormalise(batch)  # normalised with the ImageNet statistics, from uint8 pixels
        assert float(pixels.min()) > -1e-3 and float(pixels.max()) < 255 + 1e-3
        assert torch.allclose(pixels, pixels.round(), atol=1e-3)
    sizes = [len(b) for b, _ in data.eval_batches("test", 5)]
    assert sizes == [5, 5, 2]  # every test image once, last batch partial
    assert sum(len(b) for b in data.calibration_batches(10, 4, seed=0)) == 10


def test_solid_image_normalises_to_known_values(tmp_path: Path) -> None:
    for split in ("train", "val"):
        (tmp_path / split / "grey").mkdir(parents=True)
        Image.new("RGB", (50, 40), (124, 116, 104)).save(tmp_path / split / "grey" / "a.png")
    (tmp_path / "train" / "white").mkdir()  # a classifier needs two classes
    Image.new("RGB", (50, 40), (255, 255, 255)).save(tmp_path / "train" / "white" / "a.png")
    data = StreamingFolderData(tmp_path, 16, val_fraction=0.0, workers=0)
    x, y = next(data.eval_batches("test", 1))
    expected = (torch.tensor([124, 116, 104]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x[0], expected.view(3, 1, 1).expand(3, 16, 16), atol=1e-5) and y.tolist() == [0]


def test_crop_boxes_stay_inside_with_allowed_area_and_aspect() -> None:
    rng = np.random.default_rng(0)
    for width, height in ((500, 375), (60, 300), (7, 5), (1, 1)):
        for _ in range(50):
            left, top, right, bottom = random_resized_crop_box(width, height, rng)
            assert 0 <= left < right <= width and 0 <= top < bottom <= height
    areas = []
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(500, 375, rng)
        w, h = right - left, bottom - top
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
        areas.append(w * h / (500 * 375))
    assert min(areas) >= 0.075 and max(areas) > 0.8
    # Shorter side to round(224 / 0.875) = 256, centre 224 x 224: 7/8 of the shorter side, centred.
    x0, y0, x1, y1 = centre_crop_box(500, 400, 224)
    assert x1 - x0 == pytest.approx(350, abs=2) and y1 - y0 == pytest.approx(350, abs=1)
    assert x0 == pytest.approx(500 - x1, abs=2) and y0 == pytest.approx(400 - y1, abs=2)


def test_reduced_scale_jpeg_decoding_keeps_the_same_crop(tmp_path: Path) -> None:
    """A 1600 x 1200 JPEG evaluated at 64 px is decoded at 1/8 scale; the result must match a full decode
    cropped and resized the same way (a wrong box mapping would show a different part of the image)."""
    from nas.streaming import FileList, _Images

    yy, xx = np.mgrid[0:1200, 0:1600]
    pixels = np.stack([xx * 255 // 1600, yy * 255 // 1200, (xx + yy) * 255 // 2800], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "big.jpg", quality=95)
    files = FileList(str(tmp_path), ("",), np.array([b"big.jpg"]), np.array([0]))
    streamed = _Images(files, 64, augment=False, flip=False)[(0, 0, 0)][0]
    with Image.open(tmp_path / "big.jpg") as image:
        full = image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR,
                                           box=centre_crop_box(1600, 1200, 64))
    reference = torch.from_numpy(np.asarray(full).transpose(2, 0, 1).copy())
    assert (streamed.int() - reference.int()).abs().float().mean() < 2.0


def test_two_ranks_with_two_workers_read_disjoint_shards_of_the_epoch(tree: Path) -> None:
    data = StreamingFolderData(tree, SIZE, val_fraction=0.1, workers=2)
    n, batch = len(data), 4
    assert n == 54 and data.steps_per_epoch(batch, 2) == 6
    shards = [data.train_indices(seed=7, rank=r, world_size=2) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == n // 2
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))
    assert not np.array_equal(data.train_indices(seed=8, rank=0, world_size=2), shards[0])  # reshuffled
    labels = data.files["train"].labels
    for rank, shard in enumerate(shards):
        batches = list(data.train_batches(batch, seed=7, rank=rank, world_size=2))
        assert len(batches) == data.steps_per_epoch(batch, 2)  # 27 images: 6 batches, 3 dropped
        assert all(len(y) == batch for _, y in batches)
        delivered = torch.cat([y for _, y in batches])
        assert torch.equal(delivered, torch.from_numpy(labels[shard[: 6 * batch]]))


def test_same_seed_same_batches_whatever_the_number_of_workers(tree: Path) -> None:
    in_process = StreamingFolderData(tree, SIZE, workers=0)
    two_workers = StreamingFolderData(tree, SIZE, workers=2)
    first = list(in_process.train_batches(8, seed=3, rank=1, world_size=2))
    second = list(two_workers.train_batches(8, seed=3, rank=1, world_size=2))
    assert len(first) == len(second) == 3
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = next(in_process.train_batches(8, seed=4, rank=1, world_size=2))
    assert not torch.equal(other[0], first[0][0])
    calib = [torch.cat(list(d.calibration_batches(6, 4, seed=1))) for d in (in_process, two_workers)]
    assert torch.equal(calib[0], calib[1])
    assert not torch.equal(calib[0], torch.cat(list(in_process.calibration_batches(6, 4, seed=2))))


def test_evaluation_is_deterministic_and_unaugmented(tree: Path) -> None:
    data = StreamingFolderData(tree, SIZE, workers=2)
    runs = [list(data.eval_batches("val", 4, max_images=5)) for _ in range(2)]
    assert data.size("val") == 6 and [len(y) for _, y in runs[0]] == [4, 1]
    for (x1, y1), (x2, y2) in zip(*runs):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    labels = torch.cat([y for _, y in data.eval_batches("test", 100)])
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # file order
    with pytest.raises(ValueError, match="split"):
        next(data.eval_batches("holdout", 4))


def test_without_augmentation_training_batches_get_the_evaluation_transform(tree: Path) -> None:
    data = StreamingFolderData(tree, SIZE, workers=0, augment=False)
    x, y = next(data.train_batches(6, seed=2))
    everything = torch.cat([b for b, _ in data.eval_batches("train", 100)])
    expected = everything[torch.from_numpy(data.train_indices(seed=2)[:6])]
    assert torch.equal(x, expected)


@pytest.mark.parametrize("workers", [0, 2])
def test_truncated_jpeg_raises_usage_error_naming_the_file(tmp_path: Path, workers: int) -> None:
    root = write_tree(tmp_path, train_per_class=3, val_per_class=1)
    bad = root / "train" / "dog" / "img_001.jpg"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    data = StreamingFolderData(root, SIZE, val_fraction=0.0, workers=workers)  # listing reads no pixels
    with pytest.raises(UsageError) as caught:
        for _ in data.train_batches(3, seed=0):
            pass
    message = str(caught.value)
    assert str(bad) in message and "cannot read image" in message and "\n" not in message
    assert not multiprocessing.active_children()  # the loader's workers have stopped already
    bad.write_bytes(b"definitely not a jpeg")
    with pytest.raises(UsageError, match="img_001.jpg"):
        list(data.eval_batches("train", 3))


def test_unusable_trees_are_refused_with_the_folder_or_file_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no train/ folder"):
        StreamingFolderData(tmp_path, SIZE)
    root = write_tree(tmp_path / "tree", train_per_class=2, val_per_class=1)
    (root / "train" / "fox").mkdir()
    with pytest.raises(UsageError, match=r"class folder .*train/fox has no images") as caught:
        StreamingFolderData(root, SIZE)
    assert "\n" not in str(caught.value)
    (root / "train" / "fox" / "empty.jpg").touch()
    with pytest.raises(UsageError, match=r"image file .*fox/empty.jpg is empty"):
        StreamingFolderData(root, SIZE)
    (root / "train" / "fox" / "empty.jpg").unlink()
    (root / "train" / "fox").rmdir()
    (root / "val" / "yak").mkdir()
    with pytest.raises(UsageError, match=r"val/yak is not a class"):
        StreamingFolderData(root, SIZE)
    (root / "val" / "yak").rmdir()
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    with pytest.raises(UsageError, match="no class sub-folders"):
        StreamingFolderData(empty, SIZE)


# ---------------------------------------------------------------------------------------------------------
# Real Ray Train over the streaming source.


def make_streaming_data(root: str) -> StreamingFolderData:
    """Module level, so the job pickles to Ray workers; one loader worker per rank, as in production."""
    return StreamingFolderData(root, 32, val_fraction=0.2, seed=0, workers=1)


@pytest.fixture(scope="module")
def ray_cluster():
    from supernets.training import ensure_ray_env

    ensure_ray_env()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_train_runs_two_workers_over_the_streaming_source(ray_cluster, tree: Path, tmp_path: Path) -> None:
    from search_spaces import get_space
    from supernets.training import (
        RaySettings,
        TrainJob,
        TrainSettings,
        make_phase,
        read_metrics,
        read_supernet_file,
        run_on_ray,
    )

    space = get_space("ofa_mbv3_cifar").with_num_classes(3)
    settings = TrainSettings(
        strategy="progressive_shrinking", phases=(make_phase("full", 1, 0.05, {"resolutions": [24]}),),
        batch_size=4, max_steps_per_epoch=2, bn_recal_images=8, max_val_images=8, eval_random_subnets=0)
    job = TrainJob(
        space=space, settings=settings, phases=settings.resolved_phases(space), seed=0, config_hash="streaming",
        latest_path=str(tmp_path / "latest.pt"), teacher_path=str(tmp_path / "teacher.pt"),
        supernet_path=str(tmp_path / "supernet.pt"), metrics_path=str(tmp_path / "metrics.jsonl"),
        make_data=functools.partial(make_streaming_data, str(tree)), progress=False)
    run_on_ray(job, RaySettings(num_workers=2, cpus_per_worker=1, num_cpus=2), storage_path=str(tmp_path / "ray"))
    supernet = read_supernet_file(tmp_path / "supernet.pt")  # written by rank 0 at the end
    assert supernet["space"] == "ofa_mbv3_cifar" and supernet["num_classes"] == 3
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert len(rows) == 1 and rows[0]["steps"] == 2 and 0.0 <= rows[0]["val_acc_largest"] <= 1.0
