"""Exports that deploy without hwnas: ONNX and torch.export programs take RGB in [0, 1] and normalise inside,
carry their metadata, and agree with the hwnas subnet on the run's real images (ONNX Runtime and
torch.export for real, no mocks)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from nas.cli import main
from nas.data import DatasetConfig, load_dataset
from nas.query import (
    Normalization,
    RunCalibration,
    export_member,
    ofa_config_of,
    open_fronts,
    query_front,
    run_calibration,
    subnet_of,
)
from nas.search import run_search
from nas.search_config import SearchConfig
from search_spaces import get_space, largest, to_ofa_config
from supernets import build, build_supernet
from supernets.training.checkpoint import save_supernet

from .search.conftest import SPACE_NAME, ToyObjectives, stub_counts

# The run's dataset: digits kept at 32 x 32 (the space's largest resolution), few images, so a test is quick.
DATASET = {"kind": "digits", "image_size": 32, "max_train_images": 256}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A searched run with a real (untrained, seeded) supernet and a dataset recorded in its front store."""
    path = tmp_path_factory.mktemp("exports") / "run"
    checkpoint = path / "checkpoints" / "supernet.pt"
    checkpoint.parent.mkdir(parents=True)
    space = get_space(SPACE_NAME)
    torch.manual_seed(0)
    save_supernet(checkpoint, build_supernet(space).eval(), space, "exports-test")
    toy = ToyObjectives()
    config = SearchConfig.parse({"n_trials": 12, "batch_size": 6, "population_size": 6}, ["dev", "dev2"])
    run_search(config, path, toy.accuracy, {"dev": toy.latency(), "dev2": toy.latency(3.0)}, space=SPACE_NAME,
               counts_fn=stub_counts, checkpoint=str(checkpoint),
               meta={"dataset": DATASET, "data_seed": 0, "bn_images": 32})
    return path


@pytest.fixture(scope="module")
def member(run):
    return open_fronts(run).front("dev")[0]  # the fastest: the smallest subnet, quick to export


@pytest.fixture(scope="module")
def subnet(run, member):
    """The hwnas subnet as an export takes it: batch norms recalibrated on the run's data."""
    return subnet_of(member, run_calibration(open_fronts(run), member.arch.resolution))


@pytest.fixture(scope="module")
def images(member):
    """Real test images of the run's dataset: uint8 -> [0, 1] at the subnet's resolution, and the same
    images normalised as hwnas normalises them (``ImageData.mean/std``, computed by nas.data)."""
    data = load_dataset(DatasetConfig(**DATASET), member.arch.resolution, seed=0)
    pixels = data.splits["test"][0][:12].float() / 255
    r = member.arch.resolution
    pixels = F.interpolate(pixels, size=(r, r), mode="bilinear", align_corners=False)
    return pixels, (pixels - data.mean) / data.std, data


def _query(run, member, *extra):
    return ["query", str(run), "--device", "dev", "--max-latency-ms", str(member.latency_ms), *map(str, extra)]


def _close(got, expected, tolerance=1e-4):
    expected = np.asarray(expected)
    assert np.abs(np.asarray(got) - expected).max() <= tolerance * max(1.0, float(np.abs(expected).max()))


@pytest.fixture(scope="module")
def onnx_export(run, member, tmp_path_factory):
    """``nas query --export FILE.onnx --json``: the file and the printed result."""
    out = tmp_path_factory.mktemp("onnx") / "net.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(_query(run, member, "--json", "--export", out)) == 0
    return out, json.loads(stdout.getvalue())


def test_onnx_on_uint8_images_gives_the_logits_of_the_subnet_on_normalised_images(onnx_export, subnet, images):
    path, result = onnx_export
    pixels, normalised, _ = images
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"] and session.get_inputs()[0].shape[0] == "batch"
    with torch.no_grad():
        expected = subnet(normalised).numpy()
    _close(session.run(None, {"image": pixels.numpy()})[0], expected)
    _close(session.run(None, {"image": pixels[:1].numpy()})[0], expected[:1])  # any batch size
    export = result["export"]
    assert export["format"] == "onnx" and export["batch_norm"] == "recalibrated"
    assert "images of the run's dataset" in export["checked_on"] and export["max_abs_diff"] <= 1e-4


def test_onnx_metadata_props_say_how_to_use_the_file(onnx_export, member, images):
    path, result = onnx_export
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert all(isinstance(v, str) for v in props.values())
    assert props["hwnas_format"] == "hwnas-subnet-onnx-1" and props["space"] == SPACE_NAME
    assert props["arch_string"] == member.arch_string and props["arch_id"] == member.arch_id
    assert int(props["resolution"]) == member.arch.resolution and int(props["num_classes"]) == 10
    assert "[0, 1]" in props["input"] and "inside the graph" in props["input"]
    _, _, data = images
    assert np.allclose(json.loads(props["mean"]), data.mean.flatten().numpy())
    assert np.allclose(json.loads(props["std"]), data.std.flatten().numpy())
    assert props["normalization"] == "training images of the run's dataset"
    assert json.loads(props["val_accuracy"]) == pytest.approx(member.val_accuracy)
    assert json.loads(props["test_accuracy"]) is None
    latency = json.loads(props["latency_ms"])
    assert set(latency) == {"dev", "dev2"} and latency["dev"] == pytest.approx(member.latency_ms)
    assert props["batch_norm"] == "recalibrated"
    assert json.loads(props["ofa_config"]) == to_ofa_config(get_space(SPACE_NAME), member.arch)
    assert props["hwnas_version"] == importlib.metadata.version("hwnas")
    # The same config in `nas query --json`.
    assert result["ofa_config"] == json.loads(props["ofa_config"])


def test_pt2_loads_with_torch_alone_and_matches(run, member, subnet, images, tmp_path, capsys):
    out = tmp_path / "net.pt2"
    assert main(_query(run, member, "--export", out)) == 0
    printed = capsys.readouterr().out
    assert "torch.export vs PyTorch" in printed and "ofa config" in printed
    extra = {"hwnas.json": ""}
    program = torch.export.load(str(out), extra_files=extra).module()
    meta = json.loads(extra["hwnas.json"])
    assert meta["hwnas_format"] == "hwnas-subnet-pt2-1" and meta["arch_id"] == member.arch_id
    assert meta["batch"] == "dynamic" and "[0, 1]" in meta["input"]
    pixels, normalised, data = images
    assert np.allclose(meta["mean"], data.mean.flatten().numpy())
    with torch.no_grad():
        expected = subnet(normalised).numpy()
        _close(program(pixels).numpy(), expected)
        _close(program(pixels[:3]).numpy(), expected[:3])


def test_pt_keeps_the_state_dict_with_mean_and_std(run, member, subnet, images, tmp_path):
    store = open_fronts(run)
    export_member(member, tmp_path / "net.pt", model=subnet, store=store,
                  calibration=run_calibration(store, member.arch.resolution))
    data = torch.load(tmp_path / "net.pt", weights_only=True)
    assert data["format"] == "hwnas-subnet-1" and data["arch_id"] == member.arch_id
    rebuilt = build(get_space(SPACE_NAME), member.arch).eval()
    rebuilt.load_state_dict(data["state_dict"])
    pixels, _, _ = images
    mean, std = torch.tensor(data["mean"]).view(1, 3, 1, 1), torch.tensor(data["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        _close(rebuilt((pixels - mean) / std).numpy(), subnet((pixels - mean) / std).numpy())


def test_without_data_the_export_uses_imagenet_and_random_images(member, tmp_path):
    torch.manual_seed(0)
    model = build(get_space(SPACE_NAME), member.arch).eval()
    summary = export_member(member, tmp_path / "net.onnx", model=model)
    assert summary["batch_norm"] == "supernet statistics" and "seeded random" in summary["checked_on"]
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "net.onnx")).metadata_props}
    imagenet = Normalization.imagenet()
    assert props["normalization"] == "ImageNet" and json.loads(props["mean"]) == list(imagenet.mean)
    assert json.loads(props["latency_ms"]) == {"dev": member.latency_ms}  # no store: its own device
    # Plain calibration batches carry no normalisation: refused rather than guessed.
    with pytest.raises(ValueError, match="normalization"):
        export_member(member, tmp_path / "x.onnx", model=model, calibration=[torch.zeros(2, 3, 24, 24)])


def test_streamed_folders_give_imagenet_normalisation_and_real_pixels(tmp_path):
    from PIL import Image

    from nas.streaming import StreamingFolderData

    for split in ("train", "val"):
        (tmp_path / split / "grey").mkdir(parents=True)
        Image.new("RGB", (50, 40), (124, 116, 104)).save(tmp_path / split / "grey" / "a.png")
    (tmp_path / "train" / "white").mkdir()  # a classifier needs two classes
    Image.new("RGB", (50, 40), (255, 255, 255)).save(tmp_path / "train" / "white" / "a.png")
    calibration = RunCalibration(StreamingFolderData(tmp_path, 16, val_fraction=0.0, workers=0), 1, 1)
    assert calibration.normalization == Normalization.imagenet()
    pixels = calibration.check_images(4)
    assert pixels.shape == (1, 3, 16, 16)
    assert torch.allclose(pixels[0, :, 8, 8], torch.tensor([124, 116, 104]) / 255, atol=1e-5)


def test_ofa_config_only_where_the_space_has_one(run, member, capsys):
    assert ofa_config_of(largest(get_space("mnasnet"))) is None
    assert ofa_config_of(member.arch)["r"] == [member.arch.resolution]
    best = query_front(run, "dev", member.latency_ms)
    assert best.arch_id == member.arch_id
