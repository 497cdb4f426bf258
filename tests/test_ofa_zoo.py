"""Once-for-All's zoo files imported into hwnas: exact against the numbers Once-for-All's own code produced."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from nas.accuracy import PREDICTOR_NAME, AccuracyPredictor
from nas.cli import main
from nas.errors import UsageError
from nas.ofa_zoo import (
    IMPORT_RECORD_NAME,
    OFA_PREDICTOR_RESOLUTIONS,
    OFAAccuracyPredictor,
    build_imported_supernet,
    encoding_matrix,
    import_ofa_supernet,
    load_ofa_predictor_layers,
    ofa_predictor_features,
)
from nas.rundir import RunDir
from search_spaces import encode, encode_many, from_ofa_config, get_space, largest
from supernets import extract
from supernets.training.checkpoint import load_supernet_file, read_supernet_file
from tests.cli_helpers import fails_in_one_line

REPO = Path(__file__).resolve().parents[1]
ZOO = Path(os.environ.get("HWNAS_OFA_ZOO_DIR", REPO.parent / "shared" / "data" / "ofa_zoo_format"))
SUPERNET_FILE = ZOO / "ofa_mbv3_d234_e346_k357_w1.0.pth"
SUPERNET_SHA256 = "b2ff219a34c69d3742deaf0142b909b720bb62fe065eae4953ee5ceaf17e37ea"

pytestmark = pytest.mark.skipif(not SUPERNET_FILE.is_file(),
                                reason=f"Once-for-All zoo files not found at {ZOO} (set HWNAS_OFA_ZOO_DIR)")


def _outputs(name: str) -> dict:
    with open(ZOO / name, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def imported():
    """The w1.0 file mapped onto hwnas's supernet, built once for the module."""
    return build_imported_supernet(SUPERNET_FILE, "ofa_mbv3_w1.0")




def test_all_475_tensors_map_and_the_file_is_hashed(imported):
    space, supernet, sha = imported
    assert space.name == "ofa_mbv3_w1.0"
    assert len(supernet.state_dict()) == 475
    assert sha == SUPERNET_SHA256


@pytest.mark.parametrize("index", range(12))
def test_subnets_equal_once_for_all_logits(imported, index):
    space, supernet, _ = imported
    case = _outputs("ofa_mbv3_d234_e346_k357_w1.0_outputs.json")["subnets"][index]
    arch = from_ofa_config(space, case["config"])
    x = torch.randn(case["input_shape"], generator=torch.Generator().manual_seed(case["input_seed"]))
    subnet = extract(supernet, arch).eval()
    with torch.no_grad():
        sub_logits = subnet(x)
        super_logits = supernet.eval()(x, arch)
    torch.testing.assert_close(sub_logits, torch.tensor(case["logits_subnet"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(super_logits, torch.tensor(case["logits_supernet"]), atol=1e-5, rtol=0)
    assert sum(p.numel() for p in subnet.parameters()) == case["params"]


def test_import_writes_an_hwnas_run_with_provenance(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["import", "ofa-supernet", str(SUPERNET_FILE), "--space", "ofa_mbv3_w1.0",
                 "--run-dir", str(run_dir)]) == 0
    assert "imported 475 tensors" in capsys.readouterr().out
    run = RunDir(run_dir)
    assert run.is_trained
    data = read_supernet_file(run.supernet_checkpoint)
    assert data["space"] == "ofa_mbv3_w1.0"
    assert data["config_hash"] == f"ofa-import-{SUPERNET_SHA256[:16]}"
    assert data["summary"]["imported"]["sha256"] == SUPERNET_SHA256
    assert data["summary"]["imported"]["file"] == str(SUPERNET_FILE.resolve())
    record = json.loads((run_dir / IMPORT_RECORD_NAME).read_text())
    assert record["sha256"] == SUPERNET_SHA256 and record["file"] == str(SUPERNET_FILE.resolve())
    assert record["space"] == "ofa_mbv3_w1.0" and record["tensors"] == 475
    # The run's supernet loads like a trained one and computes Once-for-All's logits.
    space, supernet = load_supernet_file(run.supernet_checkpoint)
    case = _outputs("ofa_mbv3_d234_e346_k357_w1.0_outputs.json")["subnets"][1]
    arch = from_ofa_config(space, case["config"])
    x = torch.randn(case["input_shape"], generator=torch.Generator().manual_seed(case["input_seed"]))
    with torch.no_grad():
        logits = extract(supernet, arch).eval()(x)
    torch.testing.assert_close(logits, torch.tensor(case["logits_subnet"]), atol=1e-5, rtol=0)
    # Importing again into the same run replaces the import (same file, same hash).
    assert import_ofa_supernet(SUPERNET_FILE, "ofa_mbv3_w1.0", run_dir).tensors == 475


def test_wrong_width_names_the_first_mismatch(tmp_path, capsys):
    err = fails_in_one_line(capsys, ["import", "ofa-supernet", SUPERNET_FILE, "--space", "ofa_mbv3_w1.2",
                                      "--run-dir", tmp_path / "run"],
                             "first_conv.conv.weight", "[16, 3, 3, 3]", "ofa_mbv3_w1.2")
    assert "expects" in err
    assert not (tmp_path / "run").exists()


def test_not_a_checkpoint_is_one_line(tmp_path, capsys):
    junk = tmp_path / "notes.pth"
    junk.write_text("this is not a checkpoint\n")
    fails_in_one_line(capsys, ["import", "ofa-supernet", junk, "--space", "ofa_mbv3_w1.0",
                                "--run-dir", tmp_path / "run"], str(junk), "not a readable")
    fails_in_one_line(capsys, ["import", "ofa-supernet", tmp_path / "missing.pth", "--space", "ofa_mbv3_w1.0",
                                "--run-dir", tmp_path / "run"], "does not exist")
    assert not (tmp_path / "run").exists()


def test_foreign_or_partial_state_dicts_are_refused(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"features.0.weight": torch.zeros(3)}}, other)
    with pytest.raises(UsageError, match="'features.0.weight' has no counterpart"):
        import_ofa_supernet(other, "ofa_mbv3_w1.0", tmp_path / "run")
    state = torch.load(SUPERNET_FILE, map_location="cpu", weights_only=True)["state_dict"]
    del state["classifier.linear.bias"]
    partial = tmp_path / "partial.pth"
    torch.save({"state_dict": state}, partial)
    with pytest.raises(UsageError, match="lacks 1 .*'head.classifier.bias'"):
        import_ofa_supernet(partial, "ofa_mbv3_w1.0", tmp_path / "run")
    with pytest.raises(UsageError, match="allowed: ofa_mbv3_w1.0, ofa_mbv3_w1.2"):
        import_ofa_supernet(SUPERNET_FILE, "mnasnet", tmp_path / "run")
    assert not (tmp_path / "run").exists()


# --- the tutorial accuracy predictor ---------------------------------------------------------------------

PREDICTOR_FILE = ZOO / "acc_predictor_random.pth"


def test_hwnas_encoding_maps_onto_the_tutorial_one_hot():
    space = get_space("ofa_mbv3_w1.2")
    matrix = encoding_matrix(space)
    for config in _outputs("acc_predictor_random_outputs.json")["configs"]:
        arch = from_ofa_config(space, config)
        np.testing.assert_array_equal(encode(space, arch) @ matrix, ofa_predictor_features(config))


@pytest.mark.parametrize("space_name", ["ofa_mbv3_w1.2", "ofa_mbv3_w1.0"])
def test_imported_predictor_equals_once_for_all(tmp_path, capsys, space_name):
    expected = _outputs("acc_predictor_random_outputs.json")
    run_dir = tmp_path / "run"
    assert main(["import", "ofa-accuracy-predictor", str(PREDICTOR_FILE), "--run-dir", str(run_dir),
                 "--space", space_name]) == 0
    assert "imported the accuracy predictor" in capsys.readouterr().out
    path = RunDir(run_dir).search / PREDICTOR_NAME
    data = json.loads(path.read_text())
    assert data["imported"]["sha256"] == "5df45338d08a013f502fdd166999611a460afb95460c29c7c9af85fee823df18"
    assert data["resolutions"] == list(OFA_PREDICTOR_RESOLUTIONS)
    space = get_space(space_name)
    archs = [from_ofa_config(space, config) for config in expected["configs"]]
    # The file is an ordinary hwnas predictor (whose predict clips to [0, 1]; these random weights give
    # outputs around 0) ...
    plain = AccuracyPredictor.load(path)
    assert plain.space.name == space_name
    raw = plain.predict_encoded(encode_many(space, archs))
    np.testing.assert_allclose(raw, expected["predictions"], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(plain.predict(archs), np.clip(raw, 0, 1))
    # ... and the checking wrapper, which the search uses, gives Once-for-All's outputs unclipped.
    checked = OFAAccuracyPredictor.load(path)
    np.testing.assert_allclose(checked(archs), expected["predictions"], atol=1e-6, rtol=0)


def test_predictor_space_must_fit_the_run(tmp_path, capsys):
    """A --space other than the run's supernet's, or a run of a space the predictor does not score, is refused
    in one line, writing nothing; left out, --space is the run's."""
    from supernets import build_supernet
    from supernets.training.checkpoint import save_supernet

    imported = tmp_path / "imported"
    import_ofa_supernet(SUPERNET_FILE, "ofa_mbv3_w1.0", imported)
    trained = RunDir(tmp_path / "trained").create()
    cifar = get_space("ofa_mbv3_cifar")
    save_supernet(trained.supernet_checkpoint, build_supernet(cifar), cifar, "trained-here")
    for run_dir, extra, needles in (
            (imported, ["--space", "ofa_mbv3_w1.2"], ("--space ofa_mbv3_w1.2 contradicts", "'ofa_mbv3_w1.0'")),
            (trained.root, ["--space", "ofa_mbv3_w1.2"], ("'ofa_mbv3_cifar'", "does not score")),
            (trained.root, [], ("'ofa_mbv3_cifar'", "does not score"))):
        fails_in_one_line(capsys, ["import", "ofa-accuracy-predictor", PREDICTOR_FILE, "--run-dir", run_dir, *extra],
                          *needles)
        assert not (RunDir(run_dir).search / PREDICTOR_NAME).exists()
    assert main(["import", "ofa-accuracy-predictor", str(PREDICTOR_FILE), "--run-dir", str(imported)]) == 0
    assert AccuracyPredictor.load(RunDir(imported).search / PREDICTOR_NAME).space.name == "ofa_mbv3_w1.0"


def test_predictor_refuses_resolutions_it_does_not_cover():
    space = get_space("ofa_mbv3_w1.2")
    predictor = OFAAccuracyPredictor.from_layers(space, load_ofa_predictor_layers(PREDICTOR_FILE))
    assert predictor.resolutions == (160, 176, 192, 208, 224)
    arch = replace(largest(space), resolution=164)
    with pytest.raises(UsageError, match="does not cover resolution 164.*covered: 160, 176, 192, 208, 224") as info:
        predictor.predict([largest(space), arch])
    assert "\n" not in str(info.value)
    assert predictor.predict([largest(space)]).shape == (1,)


def test_wrong_predictor_files_are_one_line(tmp_path, capsys):
    fails_in_one_line(capsys, ["import", "ofa-accuracy-predictor", SUPERNET_FILE, "--run-dir", tmp_path / "run"],
                       "unexpected tensor 'first_conv.conv.weight'", "0.weight")
    state = torch.load(PREDICTOR_FILE, map_location="cpu", weights_only=True)
    state["0.weight"] = state["0.weight"][:, :100]
    narrow = tmp_path / "narrow.pth"
    torch.save(state, narrow)
    fails_in_one_line(capsys, ["import", "ofa-accuracy-predictor", narrow, "--run-dir", tmp_path / "run"],
                       "'0.weight' has shape [400, 100]", "[400, 128]")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not torch")
    fails_in_one_line(capsys, ["import", "ofa-accuracy-predictor", junk, "--run-dir", tmp_path / "run"],
                       "not a readable Once-for-All accuracy predictor")
    assert not (tmp_path / "run").exists()


def test_import_refuses_a_run_in_training_or_locked(tmp_path, capsys):
    from nas.search_paths import search_lock
    from supernets.training import FileLock

    # A run stopped part-way through training: its checkpoints would be mixed with the import's.
    partial = RunDir(tmp_path / "partial").create()
    partial.checkpoints.mkdir(parents=True, exist_ok=True)
    partial.latest_checkpoint.write_bytes(b"a training's latest checkpoint")
    assert main(["import", "ofa-supernet", str(SUPERNET_FILE), "--space", "ofa_mbv3_w1.0",
                 "--run-dir", str(partial.root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "in training" in err and "latest.pt" in err
    assert not partial.supernet_checkpoint.exists()
    # A run whose training or search is running (another process holds its lock).
    for name, hold in (("training", lambda run: FileLock(run.train_lock, "run").acquire()),
                       ("searching", None)):
        run = RunDir(tmp_path / name).create()
        if hold is not None:
            lock = hold(run)
            try:  # flock: a second handle in this process is refused like another process
                code = main(["import", "ofa-supernet", str(SUPERNET_FILE), "--space", "ofa_mbv3_w1.0",
                             "--run-dir", str(run.root)])
            finally:
                lock.release()
            assert code == 2 and "train.lock" in capsys.readouterr().err
            assert not run.supernet_checkpoint.exists()
        else:  # the search lock is re-entrant in a process: taking it here and importing succeeds
            with search_lock(run.root):
                assert main(["import", "ofa-supernet", str(SUPERNET_FILE), "--space", "ofa_mbv3_w1.0",
                             "--run-dir", str(run.root)]) == 0
