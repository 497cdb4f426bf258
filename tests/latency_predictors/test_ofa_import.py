from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import yaml

from latency_predictors import Device, LatencyError, MissingEntryError, import_ofa_tables, layer_keys
from latency_predictors.ofa_import import ofa_block_key, ofa_head_keys, ofa_stem_keys
from search_spaces import get_space, plan, sample

SPACE = get_space("ofa_mbv3_w1.2")
NOTE10 = Device(id="note10", backend=None)


def test_imports_shipped_tables_and_predicts_a_w12_subnet(ofa_lut_dir):
    table = import_ofa_tables(ofa_lut_dir, SPACE, NOTE10)
    assert table.resolutions == (160, 176, 192, 208, 224)
    assert table.complete and table.source == "ofa-import"
    # At 160 every layer's shapes are unique to that file, so the sum is exactly the file's.
    arch = replace(sample(SPACE, 1, seed=5)[0], resolution=160)
    with open(ofa_lut_dir / "160_lookup_table.yaml") as handle:
        raw = yaml.safe_load(handle)
    p = plan(SPACE, arch)
    keys = ofa_stem_keys(p) + [ofa_block_key(b) for b in p.blocks] + ofa_head_keys(p)
    expected = sum(raw[k]["mean"] for k in keys)
    assert table.predict_arch(SPACE, arch) == pytest.approx(expected)
    assert 5 < expected < 200  # milliseconds on a phone


def test_resolution_outside_tables_is_a_clear_error(ofa_lut_dir):
    table = import_ofa_tables(ofa_lut_dir, SPACE, NOTE10)
    arch = replace(sample(SPACE, 1, seed=5)[0], resolution=164)
    with pytest.raises(MissingEntryError, match="resolution 164"):
        table.predict_arch(SPACE, arch)


def test_missing_ofa_entry_is_a_clear_error(ofa_lut_dir, tmp_path):
    for f in ofa_lut_dir.glob("*.yaml"):
        shutil.copy(f, tmp_path / f.name)
    arch = replace(sample(SPACE, 1, seed=5)[0], resolution=160)
    block = plan(SPACE, arch).blocks[4]
    path = tmp_path / "160_lookup_table.yaml"
    raw = yaml.safe_load(path.read_text())
    del raw[ofa_block_key(block)]
    path.write_text(yaml.safe_dump(raw))
    table = import_ofa_tables(tmp_path, SPACE, NOTE10)
    assert not table.complete
    with pytest.raises(MissingEntryError, match=block.key()):
        table.predict_arch(SPACE, arch)
    assert block.key() in layer_keys(SPACE, arch)


def test_wrong_space_or_folder(ofa_lut_dir, tmp_path):
    with pytest.raises(LatencyError, match="none of the layers"):
        import_ofa_tables(ofa_lut_dir, get_space("ofa_mbv3_w1.0"), NOTE10)
    with pytest.raises(LatencyError, match="does not exist"):
        import_ofa_tables(tmp_path / "nope", SPACE, NOTE10)
    with pytest.raises(LatencyError, match="no '<resolution>"):
        import_ofa_tables(tmp_path, SPACE, NOTE10)
