"""Bad input to ``nas latency ...`` is refused in one line (exit status 2) before anything under the device data
folder is created or changed: an OFA import onto a local device or over a measured table, OFA YAML files with
bad content, bad measurement flags, a data folder that is a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from latency_predictors import Device, DeviceStore, LatencyError, LookupTable, enumerate_layers, import_ofa_tables
from latency_predictors.devices import atomic_write_text, parse_device_id
from latency_predictors.ofa_import import OFA_SOURCE, ofa_block_key, ofa_head_keys, ofa_stem_keys
from nas.cli import main
from search_spaces import get_space

SPACE = get_space("ofa_mbv3_w1.2")
CIFAR = ["--space", "ofa_mbv3_cifar", "--device", "local-cpu-1t-torch"]


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    _out, err = capsys.readouterr()
    return code, err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("nas: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (what a refused command must leave as it was)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _ofa_folder(folder: Path, mean: float = 1.0, resolution: int = 160) -> Path:
    """A small OFA lookup-table folder: every layer of ``SPACE`` at ``resolution``, each timed ``mean`` ms."""
    keys: set[str] = set()
    for layer in enumerate_layers(SPACE, [resolution]).values():
        if layer.kind == "stem":
            keys.update(ofa_stem_keys(layer.network))
        elif layer.kind == "head":
            keys.update(ofa_head_keys(layer.network))
        else:
            keys.add(ofa_block_key(layer.block))
    folder.mkdir(parents=True, exist_ok=True)
    data = {k: {"count": 10, "mean": mean, "std": 0.01} for k in sorted(keys)}
    (folder / f"{resolution}_lookup_table.yaml").write_text(yaml.safe_dump(data))
    return folder


# --- A1: import-ofa never lands on a local device nor replaces a table it did not import ----------------------


@pytest.mark.parametrize("device_id", ["local-cpu-1t-ort", "local-cpu-2t-torch-b8", "local-cuda-b1-torch",
                                       "local-gpu-1t-ort", "local-cpu-1t-tflite"])
def test_import_ofa_refuses_local_device_ids(device_id, capsys, tmp_path):
    lut = _ofa_folder(tmp_path / "lut")
    home = tmp_path / "home"
    code, err = _run(capsys, "latency", "import-ofa", str(lut), "--device", device_id, "--home", str(home))
    _one_line_error(code, err, repr(device_id), "another device id")
    assert not home.exists()


def _measured_table(store: DeviceStore, device: Device) -> Path:
    table = LookupTable(space=SPACE.name, device=device, resolutions=(160,), source="measured",
                        entries={"stem@160": {"ms": 0.5, "spread": 0.01, "kind": "stem"}})
    path = store.table_path(device.id, SPACE.name)
    table.save(path)
    return path


def test_import_ofa_refuses_a_stored_device_with_a_backend(capsys, tmp_path):
    store = DeviceStore(tmp_path / "home")
    device = store.save(Device(id="lab-x", backend="torch"))
    _measured_table(store, device)
    before = _files(store.root)
    code, err = _run(capsys, "latency", "import-ofa", str(_ofa_folder(tmp_path / "lut")), "--device", "lab-x",
                     "--home", str(store.root))
    _one_line_error(code, err, "'lab-x'", "local device", "another device id")
    assert _files(store.root) == before


def test_import_ofa_keeps_a_measured_table(capsys, tmp_path):
    """Also when the device record was moved away: the table's own source decides."""
    store = DeviceStore(tmp_path / "home")
    path = _measured_table(store, Device(id="lab-x", backend=None))
    before = _files(store.root)
    code, err = _run(capsys, "latency", "import-ofa", str(_ofa_folder(tmp_path / "lut")), "--device", "lab-x",
                     "--home", str(store.root))
    _one_line_error(code, err, "'lab-x'", "measured table", "another device id")
    assert _files(store.root) == before
    assert LookupTable.load(path).source == "measured"


def test_import_ofa_again_replaces_its_own_table(capsys, tmp_path):
    home = tmp_path / "home"
    for mean in (1.0, 2.0):
        lut = _ofa_folder(tmp_path / f"lut{mean}", mean=mean)
        code, err = _run(capsys, "latency", "import-ofa", str(lut), "--device", "phone", "--home", str(home))
        assert code == 0, err
        table = LookupTable.load(DeviceStore(home).table_path("phone", SPACE.name))
        assert table.source == OFA_SOURCE and table.complete and table.resolutions == (160,)
        assert table.entries and all(e["ms"] >= mean for e in table.entries.values())
    assert sorted(p.name for p in (home / "devices" / "phone" / "tables").iterdir()) == [f"{SPACE.name}.json"]


# --- B5 / C14: OFA YAML files with bad content ---------------------------------------------------------------


def _cut(text: str) -> bytes:
    return text[:len(text) // 2].encode()


def _first_mean(value: str):
    def edit(text: str) -> bytes:
        data = yaml.safe_load(text)
        first = next(iter(data))
        data[first]["mean"] = value
        return yaml.safe_dump(data).replace(f"mean: '{value}'", f"mean: {value}").encode()
    return edit


@pytest.mark.parametrize("edit, message", [
    (_cut, "not a readable OFA lookup table"),
    (_first_mean("abc"), "has mean 'abc'"),
    (_first_mean(".nan"), "has mean nan"),
    (_first_mean("-1.0"), "has mean -1.0"),
    (lambda text: (text + "Conv-input:1x1x3-output:1x1x1: 5\n").encode(), "is 5, not {count, mean, std}"),
    (lambda text: b"foo: bar\nbaz: [1, 2]\n", "entry 'foo' is 'bar'"),
    (lambda text: b"a: {mean: 1}\nb: {mean: 2}\n", "none of the layers"),
    (lambda text: b"\xff\xfe\x00 not utf-8", "not a readable OFA lookup table"),
    (lambda text: b"", "not an OFA lookup table"),
    (lambda text: b"- 1\n- 2\n", "not an OFA lookup table"),
])
def test_bad_ofa_yaml_is_refused(edit, message, capsys, tmp_path):
    lut = _ofa_folder(tmp_path / "lut")
    path = lut / "160_lookup_table.yaml"
    path.write_bytes(edit(path.read_text()))
    with pytest.raises(LatencyError, match="OFA"):
        import_ofa_tables(lut, SPACE, Device(id="phone", backend=None))
    home = tmp_path / "home"
    code, err = _run(capsys, "latency", "import-ofa", str(lut), "--device", "phone", "--home", str(home))
    _one_line_error(code, err, message)
    assert not home.exists()


def test_a_resolution_file_of_another_network_is_refused(capsys, tmp_path):
    lut = _ofa_folder(tmp_path / "lut")
    (lut / "176_lookup_table.yaml").write_text("a: {count: 1, mean: 1.0, std: 0.0}\n")
    with pytest.raises(LatencyError, match="resolution\\(s\\) 176 hold none of the layers"):
        import_ofa_tables(lut, SPACE, Device(id="phone", backend=None))


def test_bad_ofa_yaml_keeps_an_earlier_import(capsys, tmp_path):
    home = tmp_path / "home"
    code, err = _run(capsys, "latency", "import-ofa", str(_ofa_folder(tmp_path / "lut")), "--device", "phone",
                     "--home", str(home))
    assert code == 0, err
    before = _files(home)
    bad = _ofa_folder(tmp_path / "bad")
    (bad / "160_lookup_table.yaml").write_text(_first_mean(".nan")((bad / "160_lookup_table.yaml").read_text())
                                               .decode())
    code, err = _run(capsys, "latency", "import-ofa", str(bad), "--device", "phone", "--home", str(home))
    _one_line_error(code, err, "has mean nan")
    assert _files(home) == before
    json.loads((home / "devices" / "phone" / "tables" / f"{SPACE.name}.json").read_text())  # valid JSON, no NaN


# --- B6 / D1 / C16: flags are checked before the device is recorded ------------------------------------------


BAD_FLAGS = [
    (["build", *CIFAR, "--noise-threshold", "nan"], "--noise-threshold"),
    (["build", *CIFAR, "--noise-threshold", "-1"], "--noise-threshold"),
    (["fit", *CIFAR, "--noise-threshold", "inf"], "--noise-threshold"),
    (["eval", *CIFAR, "--noise-threshold", "nan"], "--noise-threshold"),
    (["build", *CIFAR, "--repeats", "0"], "--repeats"),
    (["build", *CIFAR, "--warmup", "-1"], "--warmup"),
    (["build", *CIFAR, "--resolutions", "99"], "[99]"),
    (["build", *CIFAR, "--quantile", "nan"], "--quantile"),
    (["build", *CIFAR, "--precisions", "int8"], "--precisions int8"),
    (["fit", *CIFAR, "--samples", "5", "--repeats", "0"], "--repeats"),
    (["fit", *CIFAR, "--resolutions", "99"], "[99]"),
    (["fit", *CIFAR, "--from-kind", "x"], "--from-kind"),
    (["fit", *CIFAR, "--from", "nope"], "unknown device 'nope'"),
    (["fit", *CIFAR, "--from", "local-cpu-1t-torch"], "names the device being fitted"),
    (["fit", *CIFAR, "--seed", "-1"], "--seed"),
    (["eval", *CIFAR, "--draws", "0"], "--draws"),
    (["eval", *CIFAR, "--quantile", "0.7"], "--quantile"),
    (["eval", *CIFAR, "--precision", "int8"], "--precision int8"),
    (["eval", "--space", "ofa_mbv3_cifar", "--device", "local-cpu-1t-ort", "--precision", "int8",
      "--fit-samples", "1"], "--fit-samples"),
    (["build", "--space", "ofa_mbv3_cifar", "--device", "local-cpu-2t-torch", "--clock", "thread_cpu"],
     "one-thread device"),
    (["build", "--space", "ofa_mbv3_cifar", "--device", "lab-x", "--backend", "onnxruntime", "--warmup", "-1"],
     "--warmup"),
]


@pytest.mark.parametrize("argv, message", BAD_FLAGS)
def test_bad_flags_create_nothing(argv, message, capsys, tmp_path):
    home = tmp_path / "home"
    code, err = _run(capsys, "latency", *argv, "--home", str(home))
    _one_line_error(code, err, message)
    assert not home.exists()


@pytest.mark.parametrize("argv, message", BAD_FLAGS)
def test_bad_flags_leave_a_stored_device_as_it_was(argv, message, capsys, tmp_path):
    store = DeviceStore(tmp_path / "home")
    device_id = argv[argv.index("--device") + 1]
    local = parse_device_id(device_id) or Device(id=device_id, backend="onnxruntime")
    store.save(local.with_metadata({"host": "elsewhere", "date": "2020-01-01"}))
    before = _files(store.root)
    code, err = _run(capsys, "latency", *argv, "--home", str(store.root))
    _one_line_error(code, err, message)
    assert _files(store.root) == before


# --- C15: a data folder that is a file ------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["build", *CIFAR, "--resolutions", "24", "--repeats", "1", "--warmup", "0", "--no-ray"],
    ["fit", *CIFAR, "--no-ray"],
    ["eval", *CIFAR, "--no-ray"],
    ["import-ofa", "LUT", "--device", "phone"],
])
@pytest.mark.parametrize("how", ["--home", "HWNAS_HOME", "under a file"])
def test_home_that_is_a_file(argv, how, capsys, tmp_path, monkeypatch):
    blocker = tmp_path / "home"
    blocker.write_text("not a folder\n")
    home = blocker / "sub" if how == "under a file" else blocker
    argv = [str(_ofa_folder(tmp_path / "lut")) if a == "LUT" else a for a in argv]
    if how == "HWNAS_HOME":
        monkeypatch.setenv("HWNAS_HOME", str(home))
    else:
        argv += ["--home", str(home)]
    code, err = _run(capsys, "latency", *argv)
    _one_line_error(code, err, str(blocker), "is a file", "HWNAS_HOME")
    assert blocker.read_text() == "not a folder\n"


def test_atomic_write_under_a_file_is_a_latency_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LatencyError, match="cannot write"):
        atomic_write_text(blocker / "devices" / "d" / "device.json", "{}")
    with pytest.raises(LatencyError, match="is a file"):
        DeviceStore(blocker / "sub").check_writable()
    DeviceStore(tmp_path / "new" / "home").check_writable()  # a folder still to be made is fine
