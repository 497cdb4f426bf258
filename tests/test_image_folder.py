"""Users' image-folder trees: layouts, what counts as an image, 16-bit images, and the refusals (both loaders)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nas.data import DatasetConfig, check_dataset, load_dataset, split_sizes
from nas.errors import UsageError
from nas.image_folder import read_rgb, scan_folder
from nas.streaming import StreamingFolderData


def _images(folder: Path, count: int, colour: tuple[int, int, int], suffix: str = ".png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (12 + i, 10), colour).save(folder / f"{i}{suffix}")


def _tree(root: Path, splits: dict[str, int], classes: tuple[str, ...] = ("cat", "dog")) -> Path:
    """``root/<split>/<class>/`` with ``splits[split]`` images a class (split ``""``: the flat layout)."""
    for split, count in splits.items():
        for c, name in enumerate(classes):
            _images(root / split / name, count, (200 * c, 60, 255 - 200 * c))
    return root


def test_sixteen_bit_images_are_scaled_not_clipped_to_white(tmp_path):
    ramp = np.linspace(0, 65535, 64).astype(np.uint16)
    path = tmp_path / "ramp.png"
    Image.fromarray(np.tile(ramp, (64, 1))).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")  # what Pillow gives a 16-bit PNG
    row = read_rgb(path, 64)[0, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and abs(row[32] - 130) <= 2 and np.all(np.diff(row) >= 0)
    # Through both loaders: a dark and a bright 16-bit class stay apart.
    for split in ("train", "val"):
        for name, level in (("dark", 8000), ("bright", 50000)):
            (tmp_path / "t" / split / name).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((20, 20), level, np.uint16)).save(tmp_path / "t" / split / name / f"{i}.png")
    memory = load_dataset(DatasetConfig(kind="folder", path=str(tmp_path / "t"), val_fraction=0.2), 16)
    x, y = memory.splits["test"]
    means = {int(label): int(x[i].float().mean()) for i, label in enumerate(y)}
    assert means == {0: round(50000 / 257), 1: round(8000 / 257)}  # classes sorted: bright, dark
    streamed = StreamingFolderData(tmp_path / "t", 16, val_fraction=0.2, workers=0)
    x, y = next(streamed.eval_batches("test", 6))
    assert x[y == 0].mean() > x[y == 1].mean() + 1.0


def test_images_in_sub_folders_count_and_hidden_files_do_not(tmp_path):
    root = _tree(tmp_path / "flat", {"": 4})
    _images(root / "cat" / "indoor", 2, (9, 9, 9), ".tif")
    _images(root / "cat" / ".thumbnails", 2, (9, 9, 9))
    (root / "dog" / "._0.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (root / "dog" / "notes.txt").write_text("not an image")
    index = scan_folder(root)
    assert index.classes == ("cat", "dog") and index.val is None and index.test is None
    names = [bytes(n).decode() for n, label in zip(index.train.names, index.train.labels) if label == 0]
    assert len(index.train) == 10 and names[-2:] == ["indoor/0.tif", "indoor/1.tif"]
    data = load_dataset(DatasetConfig(kind="folder", path=str(root), val_fraction=0.1, test_fraction=0.2), 8)
    assert len(data) + data.size("val") + data.size("test") == 10


@pytest.mark.parametrize("build, needle", [
    (lambda r: (_tree(r, {"": 3}), (r / "emu").mkdir()), r"class folder .*emu has no images"),
    (lambda r: _tree(r, {"": 3}, classes=("only",)), r"has one class folder \(only\); a classifier needs at least two"),
    (lambda r: (_tree(r, {"train": 3}), _tree(r, {"test": 1}, classes=("cat", "Dog"))),
     r"class folder .*test/Dog is not a class of the training tree"),
    (lambda r: (_tree(r, {"": 3}), _tree(r / "val", {"": 1})),
     r"val holds class folders of .* \(cat, dog\) as a val split would, but .* has no train/ folder"),
    (lambda r: (_tree(r, {"train": 3}), (r / "test" / "cat").mkdir(parents=True)), r"test has no images"),
])
def test_trees_that_would_train_on_wrong_labels_are_refused_before_any_work(tmp_path, build, needle):
    build(tmp_path / "tree")
    with pytest.raises(UsageError, match=needle) as caught:
        check_dataset(DatasetConfig(kind="folder", path=str(tmp_path / "tree")))
    assert "\n" not in str(caught.value)


def test_a_class_named_test_in_a_flat_tree_is_a_class(tmp_path):
    root = _tree(tmp_path / "quiz", {"": 3}, classes=("exam", "test"))
    data = load_dataset(DatasetConfig(kind="folder", path=str(root), val_fraction=0.2, test_fraction=0.2), 8)
    assert data.num_classes == 2 and len(data) + data.size("val") + data.size("test") == 6


def test_val_beside_test_is_the_validation_split_in_both_loaders(tmp_path):
    root = _tree(tmp_path / "three", {"train": 5, "val": 2, "test": 3})
    cfg = DatasetConfig(kind="folder", path=str(root), val_fraction=0.5)
    memory = load_dataset(cfg, 8)
    sizes = {split: memory.size(split) for split in ("train", "val", "test")}
    assert sizes == {"train": 10, "val": 4, "test": 6} == split_sizes(cfg)
    streamed = StreamingFolderData(root, 8, val_fraction=0.5, workers=0)
    assert {split: streamed.size(split) for split in sizes} == sizes
    x, y = memory.splits["val"]
    assert y.tolist() == [0, 0, 1, 1] and int(x[2, 2].float().mean()) == 255 - 200  # dog's blue channel
    # Without test/, val/ is the test split and validation is held out of train/ (as before).
    two = _tree(tmp_path / "two", {"train": 5, "val": 2})
    assert split_sizes(DatasetConfig(kind="folder", path=str(two), val_fraction=0.2)) == \
        {"train": 8, "val": 2, "test": 4}


def test_pillow_warnings_name_the_image_once(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 40), (1, 2, 3)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,600 pixels: over the limit, under twice it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_rgb(path, 8)
    assert len(caught) == 1 and str(path) in str(caught[0].message)


def test_eval_refuses_a_tree_whose_classes_changed_since_training(tmp_path, capsys):
    import yaml

    from nas.cli import main
    from nas.config import parse_config
    from nas.rundir import RunDir
    from supernets import build_supernet
    from supernets.training.checkpoint import save_supernet

    root = _tree(tmp_path / "tree", {"train": 3, "test": 1})
    raw = {"name": "t", "space": "ofa_mbv3_cifar", "run_dir": str(tmp_path / "run"),
           "dataset": {"kind": "folder", "path": str(root)}, "train": {"bn_recal_images": 2}}
    config_file = tmp_path / "t.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    config = parse_config(raw)
    space = config.get_space().with_num_classes(2)
    save_supernet(RunDir(tmp_path / "run").supernet_checkpoint, build_supernet(space), space, config.config_hash)
    assert main(["eval", str(config_file), "--arch", "smallest", "--json"]) == 0
    capsys.readouterr()
    _tree(root, {"train": 3}, classes=("ant",))  # a class added: every label after it would shift
    assert main(["eval", str(config_file), "--arch", "smallest"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has 3 classes and the supernet" in err and "classifies 2" in err and "\n" not in err


def test_a_run_refuses_data_whose_files_changed_since_training(tmp_path, capsys):
    """Images added, removed or renamed move others between the seeded held-out splits and training: the run
    keeps a fingerprint of the files (``checkpoints/data.json``) and eval refuses changed data."""
    import yaml

    from nas.cli import main
    from nas.config import parse_config
    from nas.data import data_fingerprint, record_data
    from nas.rundir import RunDir
    from supernets import build_supernet
    from supernets.training.checkpoint import save_supernet

    root = _tree(tmp_path / "flat", {"": 6})
    raw = {"name": "t", "space": "ofa_mbv3_cifar", "run_dir": str(tmp_path / "run"),
           "dataset": {"kind": "folder", "path": str(root), "val_fraction": 0.2, "test_fraction": 0.2},
           "train": {"bn_recal_images": 2}}
    config_file = tmp_path / "t.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    config = parse_config(raw)
    run = RunDir(tmp_path / "run")
    space = config.get_space().with_num_classes(2)
    save_supernet(run.supernet_checkpoint, build_supernet(space), space, config.config_hash)
    record_data(run.data_record, config.dataset)  # as `nas train` does when it starts
    record_data(run.data_record, config.dataset)  # on a resume: the same files pass
    assert main(["eval", str(config_file), "--arch", "smallest", "--json"]) == 0
    capsys.readouterr()
    _images(root / "cat", 7, (9, 9, 9))  # one image more (0..5 are overwritten, 6.png is new)
    assert main(["eval", str(config_file), "--arch", "smallest"]) == 2
    err = capsys.readouterr().err.strip()
    assert "changed since this run trained on it (train: 12 images then, 13 now)" in err and "\n" not in err
    (root / "cat" / "6.png").unlink()
    (root / "cat" / "5.png").rename(root / "cat" / "7.png")  # 12 images again, one renamed
    assert main(["eval", str(config_file), "--arch", "smallest"]) == 2
    assert "its train files differ" in capsys.readouterr().err
    (root / "cat" / "7.png").rename(root / "cat" / "5.png")
    assert data_fingerprint(config.dataset) == yaml.safe_load(run.data_record.read_text())
    assert main(["eval", str(config_file), "--arch", "smallest", "--json"]) == 0
