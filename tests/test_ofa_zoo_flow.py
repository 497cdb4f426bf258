"""Once-for-All's zoo through the whole flow: a config that imports the supernet and predictor, `nas run`
on the Note10 tables, queries and exports, `nas eval` on an image folder; and the config's checks."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nas.cli import main
from nas.config import parse_config
from nas.errors import UsageError
from nas.ofa_zoo import load_ofa_state_dict, sha256_file, to_ofa_state_dict
from nas.rundir import RunDir
from search_spaces import get_space
from supernets import build_supernet
from tests.cli_helpers import fails_in_one_line

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ZOO = Path(os.environ.get("HWNAS_OFA_ZOO_DIR", SHARED / "ofa_zoo_format"))
NOTE10 = Path(os.environ.get("HWNAS_OFA_LUT_DIR", SHARED / "ofa_note10_lut"))
W10_FILE = ZOO / "ofa_mbv3_d234_e346_k357_w1.0.pth"
PREDICTOR_FILE = ZOO / "acc_predictor_random.pth"
RESOLUTIONS = [160, 176, 192, 208, 224]

needs_zoo = pytest.mark.skipif(not (W10_FILE.is_file() and PREDICTOR_FILE.is_file()),
                               reason=f"Once-for-All zoo files not found at {ZOO} (set HWNAS_OFA_ZOO_DIR)")
needs_note10 = pytest.mark.skipif(not (NOTE10 / "160_lookup_table.yaml").is_file(),
                                  reason=f"Note10 tables not found at {NOTE10} (set HWNAS_OFA_LUT_DIR)")


def _standin_module():
    spec = importlib.util.spec_from_file_location("make_standin", REPO / "experiments/ofa_zoo/make_standin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory):
    """The stand-in w1.2 supernet and predictor that experiments/ofa_zoo_*.yaml import."""
    if not PREDICTOR_FILE.is_file():
        pytest.skip(f"Once-for-All zoo files not found at {ZOO}")
    out = tmp_path_factory.mktemp("zoo")
    assert _standin_module().main(["--out", str(out), "--predictor", str(PREDICTOR_FILE)]) == 0
    return out


def _config(tmp_path: Path, zoo: Path, **overrides) -> Path:
    raw = {
        "name": "zoo", "space": "ofa_mbv3_w1.2", "run_dir": str(tmp_path / "run"),
        "supernet": {"import": "ofa", "path": str(zoo / "ofa_mbv3_d234_e346_k357_w1.2.pth"),
                     "accuracy_predictor": str(zoo / "acc_predictor.pth")},
        "devices": ["note10"], "latency": {"table": True, "resolutions": RESOLUTIONS},
        "search": {"sampler": "nsga2", "n_trials": 120, "batch_size": 40, "population_size": 40,
                   "accuracy": "predictor", "resolutions": RESOLUTIONS},
    }
    raw.update(overrides)
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# --- the mapping both ways, the stand-in's format ---------------------------------------------------------


@needs_zoo
def test_hwnas_names_map_back_onto_the_zoo_file_exactly():
    from nas.ofa_zoo import build_imported_supernet

    original = load_ofa_state_dict(W10_FILE)
    space, supernet, _ = build_imported_supernet(W10_FILE, "ofa_mbv3_w1.0")
    back = to_ofa_state_dict(space, supernet.state_dict())
    assert sorted(back) == sorted(original)  # Once-for-All's names (in hwnas's order; order does not matter)
    assert all(torch.equal(back[name], original[name]) for name in original)


def test_the_standin_is_a_zoo_format_w12_file(zoo_files):
    state = torch.load(zoo_files / "ofa_mbv3_d234_e346_k357_w1.2.pth", map_location="cpu", weights_only=True)
    names = list(state["state_dict"])
    assert names[0] == "first_conv.conv.weight" and names[-1] == "classifier.linear.bias"
    assert state["state_dict"]["first_conv.conv.weight"].shape == (24, 3, 3, 3)  # w1.2's stem
    assert len(names) == len(build_supernet(get_space("ofa_mbv3_w1.2")).state_dict())


# --- the config section -----------------------------------------------------------------------------------


def _raw(**overrides):
    raw = {"name": "z", "space": "ofa_mbv3_w1.2",
           "supernet": {"import": "ofa", "path": "zoo/w12.pth", "accuracy_predictor": "zoo/acc.pth"},
           "search": {"accuracy": "predictor"}}
    raw.update(overrides)
    return raw


def test_an_import_config_without_data_parses(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZOO_DIR", str(tmp_path / "files"))
    config = parse_config(_raw(supernet={"import": "ofa", "path": "$ZOO_DIR/w12.pth",
                                         "accuracy_predictor": "zoo/acc.pth"}))
    assert config.dataset is None
    assert config.supernet.path == str(tmp_path / "files" / "w12.pth")
    assert config.supernet.accuracy_predictor == str(tmp_path / "zoo" / "acc.pth")
    assert parse_config(yaml.safe_load(yaml.safe_dump(config.to_dict()))).supernet == config.supernet
    assert parse_config(_raw(dataset={"kind": "digits"})).dataset.kind == "digits"


@pytest.mark.parametrize(("overrides", "needles"), [
    ({"supernet": {"import": "timm", "path": "x"}}, ["supernet.import", "'timm'", "allowed: ofa"]),
    ({"supernet": {"import": "ofa"}}, ["supernet.path is required"]),
    ({"supernet": {"import": "ofa", "path": "x", "weights": "y"}}, ["supernet", "unknown key 'weights'"]),
    ({"space": "ofa_mbv3_cifar"}, ["ofa_mbv3_cifar", "no Once-for-All zoo supernet", "ofa_mbv3_w1.2"]),
    ({"search": {"accuracy": "direct"}}, ["search.accuracy", "no dataset", "predictor"]),
    ({"supernet": {"import": "ofa", "path": "x"}}, ["no dataset", "supernet.accuracy_predictor"]),
    ({"supernet": {"import": "ofa", "path": "$HWNAS_UNSET_VARIABLE/x.pth"}}, ["supernet.path", "not set"]),
])
def test_bad_supernet_sections_are_one_line(overrides, needles, monkeypatch):
    monkeypatch.delenv("HWNAS_UNSET_VARIABLE", raising=False)
    with pytest.raises(UsageError) as info:
        parse_config(_raw(**overrides))
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


# --- the whole flow on Once-for-All's Note10 tables -------------------------------------------------------


@needs_note10
def test_nas_run_imports_searches_queries_and_exports(tmp_path, zoo_files, capsys):
    home = tmp_path / "home"
    assert main(["latency", "import-ofa", str(NOTE10), "--device", "note10", "--space", "ofa_mbv3_w1.2",
                 "--home", str(home)]) == 0
    config = _config(tmp_path, zoo_files)
    capsys.readouterr()
    assert main(["run", str(config), "--home", str(home), "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ran"][:3] == ["import", "latency", "search"] or result["ran"][:2] == ["import", "search"]
    assert "train" not in result["ran"] + result["skipped"]
    run = RunDir(tmp_path / "run")
    record = json.loads((run.root / "import.json").read_text())
    assert record["sha256"] == sha256_file(zoo_files / "ofa_mbv3_d234_e346_k357_w1.2.pth")
    # The front holds the predictor's accuracies (no data: no test accuracy) at the covered resolutions.
    assert main(["query", str(run.root), "--device", "note10", "--max-latency-ms", "30", "--json",
                 "--export", str(tmp_path / "best.pt")]) == 0
    member = json.loads(capsys.readouterr().out)
    assert member["arch"]["resolution"] in RESOLUTIONS and member["latency_ms"] <= 30
    assert 0 < member["val_accuracy"] < 1 and member["test_accuracy"] is None
    assert member["export"]["batch_norm"] == "supernet statistics"
    exported = torch.load(tmp_path / "best.pt", map_location="cpu", weights_only=True)
    assert exported["batch_norm"] == "supernet statistics" and exported["arch_id"] == member["arch_id"]
    # Run again: every stage is done.
    assert main(["run", str(config), "--home", str(home), "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ran"] == []
    # Another zoo file for the same run folder is refused; the run keeps what it has.
    other = tmp_path / "other.pth"
    shutil.copyfile(zoo_files / "ofa_mbv3_d234_e346_k357_w1.2.pth", other)
    with open(other, "ab") as handle:
        handle.write(b"\0")
    changed = _config(tmp_path, zoo_files, supernet={"import": "ofa", "path": str(other),
                                                     "accuracy_predictor": str(zoo_files / "acc_predictor.pth")})
    fails_in_one_line(capsys, ["run", changed, "--home", home, "--no-progress"],
                      "already holds a supernet imported from another file", "use another run_dir")
    assert json.loads((run.root / "import.json").read_text())["sha256"] == record["sha256"]


@needs_note10
def test_search_resolutions_the_predictor_does_not_cover_are_refused(tmp_path, zoo_files, capsys,
                                                                     monkeypatch):
    home = tmp_path / "home"
    assert main(["latency", "import-ofa", str(NOTE10), "--device", "note10", "--space", "ofa_mbv3_w1.2",
                 "--home", str(home)]) == 0
    assert main(["train", str(_config(tmp_path, zoo_files))]) == 0  # the import
    assert "imported" in capsys.readouterr().out
    # A config without the supernet section (as after `nas import ofa-supernet`) finds the import, trains nothing.
    assert main(["train", str(_config(tmp_path, zoo_files, supernet=None))]) == 0
    assert "holds a supernet imported from Once-for-All's zoo" in capsys.readouterr().out
    bad = _config(tmp_path, zoo_files, search={"accuracy": "predictor", "n_trials": 10, "resolutions": [128, 160]},
                  latency={"table": True, "resolutions": [128, 160]})
    monkeypatch.setenv("HWNAS_HOME", str(home))
    fails_in_one_line(capsys, ["search", bad], "search.resolutions [128]", "not covered", "allowed: 160")
    assert not (RunDir(tmp_path / "run").fronts / "fronts.sqlite").exists()


# --- nas eval: BN recalibration and top-1 on an image folder ----------------------------------------------


def _image_folder(root: Path, classes: int = 2, per_class: int = 3) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40 + 7 * i, 52, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@needs_zoo
def test_nas_eval_recalibrates_and_scores_an_imported_net(tmp_path, capsys):
    from nas.streaming import StreamingFolderData
    from search_spaces import smallest
    from supernets import extract
    from supernets.training.bn import recalibrate_bn
    from supernets.training.checkpoint import load_supernet_file
    from supernets.training.evaluate import resize

    folder = _image_folder(tmp_path / "images")
    raw = {"name": "w10", "space": "ofa_mbv3_w1.0", "run_dir": str(tmp_path / "run"),
           "supernet": {"import": "ofa", "path": str(W10_FILE)},
           "dataset": {"kind": "folder", "path": str(folder), "stream": True, "loader_workers": 0,
                       "val_fraction": 0.0},
           "train": {"bn_recal_images": 4, "device": "cpu"}}
    config = tmp_path / "w10.yaml"
    config.write_text(yaml.safe_dump(raw))
    fails_in_one_line(capsys, ["eval", config, "--arch", "smallest"], "has no supernet", "nas train")
    assert main(["train", str(config)]) == 0
    capsys.readouterr()
    assert main(["eval", str(config), "--arch", "smallest", "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["images"] == 6 and result["bn_images"] == 4 and result["split"] == "test"
    # The same by hand: extracted, batch norms recalibrated on the same 4 training images, top-1 on val/.
    space, supernet = load_supernet_file(RunDir(tmp_path / "run").supernet_checkpoint)
    arch = smallest(space)
    data = StreamingFolderData(folder, 224, val_fraction=0.0, workers=0)
    net = extract(supernet, arch)
    recalibrate_bn(net, (resize(x, arch.resolution) for x in data.calibration_batches(4, 200, 0)))
    assert not torch.equal(net.state_dict()["stem.1.running_mean"], supernet.state_dict()["stem.1.running_mean"])
    correct = total = 0
    with torch.no_grad():
        for x, y in data.eval_batches("test", 200):
            correct += int((net.eval()(resize(x, arch.resolution)).argmax(1) == y).sum())
            total += len(y)
    assert total == 6 and result["accuracy"] == pytest.approx(correct / total)
    # Without data, or with a bad split or size: one line each.
    no_data = tmp_path / "nodata.yaml"
    no_data.write_text(yaml.safe_dump({**{k: v for k, v in raw.items() if k != "dataset"},
                                       "supernet": {"import": "ofa", "path": str(W10_FILE),
                                                    "accuracy_predictor": str(PREDICTOR_FILE)},
                                       "search": {"accuracy": "predictor"}}))
    fails_in_one_line(capsys, ["eval", no_data, "--arch", "smallest"], "no dataset")
    fails_in_one_line(capsys, ["eval", config, "--arch", "smallest", "--max-images", "0"], "--max-images")
    fails_in_one_line(capsys, ["eval", config, "--arch", "r999/bogus"], "arch string", "has 5")
