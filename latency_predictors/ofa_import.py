"""Import Once-for-All's YAML lookup tables (``<resolution>_lookup_table.yaml``) as hwnas tables.

OFA keys name a layer by its shapes, e.g.
``expanded_conv-input:56x56x32-output:28x28x48-expand:192-kernel:5-stride:2-idskip:0-se:0-hs:0``
(``expand`` is the inner channel count), plus ``Conv`` (stem), ``Conv_1`` (final expansion),
``AvgPool2D``, ``Conv_2`` (feature layer) and ``Logits``. Each value is ``{count, mean, std}`` in ms.
Each layer of our plans maps to OFA keys: the stem to ``Conv``, each block to one ``expanded_conv``, the
head to ``Conv_1 + AvgPool2D + Conv_2 + Logits``. The result is an ordinary ``LookupTable`` of the space
(``ofa_mbv3_w1.2`` for the published Note10 tables), so prediction is the same sum as for measured tables.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import reprlib
from pathlib import Path
from typing import Any

import yaml

from search_spaces import BlockPlan, NetworkPlan, SearchSpace

from .devices import Device, LatencyError
from .layers import enumerate_layers

_FILE = re.compile(r"^(\d+)_lookup_table\.ya?ml$")
# The ``source`` of the tables this module makes (``LookupTable.source``); an import replaces only its own.
OFA_SOURCE = "ofa-import"
# Values quoted in error messages: whole layer names (about 100 characters), anything else cut short.
_quote = reprlib.Repr()
_quote.maxstring, _quote.maxother = 160, 60


def ofa_block_key(b: BlockPlan) -> str:
    if b.op_type != "mbconv":
        raise LatencyError(f"OFA tables only hold inverted-residual blocks, not {b.op_type!r}")
    return (f"expanded_conv-input:{b.input_size}x{b.input_size}x{b.in_channels}"
            f"-output:{b.output_size}x{b.output_size}x{b.out_channels}-expand:{b.mid_channels}"
            f"-kernel:{b.kernel_size}-stride:{b.stride}-idskip:{int(b.residual)}"
            f"-se:{int(b.se_channels > 0)}-hs:{int(b.activation == 'hswish')}")


def ofa_stem_keys(p: NetworkPlan) -> list[str]:
    s = p.stem_output_size
    return [f"Conv-input:{p.resolution}x{p.resolution}x3-output:{s}x{s}x{p.stem_channels}"]


def ofa_head_keys(p: NetworkPlan) -> list[str]:
    s = p.head_input_size
    c, e, f = p.last_block_channels, p.final_expand_channels, p.feature_channels
    return [f"Conv_1-input:{s}x{s}x{c}-output:{s}x{s}x{e}",
            f"AvgPool2D-input:{s}x{s}x{e}-output:1x1x{e}",
            f"Conv_2-input:1x1x{e}-output:1x1x{f}",
            f"Logits-input:1x1x{f}-output:{p.num_classes}"]


def read_ofa_tables(directory: str | os.PathLike[str]) -> dict[int, dict[str, dict[str, Any]]]:
    """``{resolution: {ofa key: {count, mean, std}}}`` from the YAML files of ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise LatencyError(f"OFA lookup-table folder {directory} " + ("is not a folder" if directory.exists()
                                                                     else "does not exist"))
    tables: dict[int, dict[str, dict[str, Any]]] = {}
    for path in sorted(directory.iterdir()):
        match = _FILE.match(path.name)
        if match:
            try:
                with open(path, encoding="utf-8") as handle:
                    data = yaml.safe_load(handle)
            except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: bytes that are not UTF-8
                raise LatencyError(f"{path} is not a readable OFA lookup table ({_reason(exc)})") from None
            tables[int(match[1])] = _checked_table(path, data)
    if not tables:
        raise LatencyError(f"no '<resolution>_lookup_table.yaml' files in {directory}")
    return tables


def _reason(exc: BaseException) -> str:
    """One line on why a YAML file could not be read (a YAML error's text spans lines and repeats the path)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        return exc.problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return " ".join(str(exc).split()) or type(exc).__name__


def _checked_table(path: Path, data: Any) -> dict[str, dict[str, Any]]:
    """``data`` when it is an OFA table: layer names mapped to ``{count, mean, std}`` with a finite mean >= 0 (ms);
    anything else is refused here, so no NaN or text reaches a saved table."""
    if not isinstance(data, dict) or not data:
        raise LatencyError(f"{path} is not an OFA lookup table (expected a mapping of layer names to "
                           f"{{count, mean, std}}, got {_quote.repr(data)})")
    for key, entry in data.items():
        mean = entry.get("mean") if isinstance(entry, dict) else None
        if not isinstance(key, str) or not isinstance(entry, dict):
            problem = f"is {_quote.repr(entry)}, not {{count, mean, std}}"
        elif isinstance(mean, bool) or not isinstance(mean, (int, float)) or not _finite(mean) or mean < 0:
            problem = f"has mean {_quote.repr(mean)}, not a finite number of milliseconds >= 0"
        else:
            continue
        raise LatencyError(f"{path} is not a usable OFA lookup table: entry {_quote.repr(key)} {problem}")
    return data


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def import_ofa_tables(directory: str | os.PathLike[str], space: SearchSpace, device: Device):
    """A ``LookupTable`` of ``space`` on ``device`` from OFA's YAML tables in ``directory``.

    Covers the resolutions that have a YAML file and that the space allows. Layers whose OFA keys are
    absent are left out (the table is then marked incomplete, and predicting an arch that uses one
    raises ``MissingEntryError`` naming the layer).
    """
    from .lut import LookupTable

    raw = read_ofa_tables(directory)
    resolutions = tuple(r for r in sorted(raw) if r in space.resolutions)
    if not resolutions:
        raise LatencyError(f"the OFA tables cover resolutions {sorted(raw)}, none of which space "
                           f"{space.name!r} allows")
    values: dict[str, list[float]] = {}
    kinds: dict[str, tuple[str, list[str]]] = {}
    missing: set[str] = set()
    found: dict[int, int] = {}  # layers each resolution's file gave
    for r in resolutions:
        table = raw[r]
        for key, layer in enumerate_layers(space, [r]).items():
            if layer.kind == "stem":
                ofa_keys = ofa_stem_keys(layer.network)
            elif layer.kind == "head":
                ofa_keys = ofa_head_keys(layer.network)
            else:
                assert layer.block is not None
                ofa_keys = [ofa_block_key(layer.block)]
            if all(k in table for k in ofa_keys):
                values.setdefault(key, []).append(sum(float(table[k]["mean"]) for k in ofa_keys))
                kinds[key] = (layer.kind, ofa_keys)
                found[r] = found.get(r, 0) + 1
            else:
                missing.add(key)
    # A layer whose shapes occur at several resolutions (176 and 192 both end at 6 x 6) was timed once per
    # file; the entry is the mean of those timings.
    entries = {key: {"ms": float(sum(v) / len(v)), "spread": 0.0, "kind": kinds[key][0],
                     "ofa_keys": kinds[key][1]} for key, v in values.items()}
    missing -= set(entries)
    if not entries:
        raise LatencyError(f"none of the layers of space {space.name!r} appear in the OFA tables of "
                           f"{directory}; they were measured for another network (e.g. ofa_mbv3_w1.2)")
    empty = [r for r in resolutions if not found.get(r)]
    if empty:
        raise LatencyError(f"the OFA tables of {directory} for resolution(s) {', '.join(map(str, empty))} hold none "
                           f"of the layers of space {space.name!r}; they are not tables of this network")
    # The same files give the same id, so importing them again keeps the predictors fitted over the first import.
    table_id = "ofa-" + hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:16]
    return LookupTable(space=space.name, device=device, resolutions=resolutions, entries=entries,
                       protocol=None, source=OFA_SOURCE, complete=not missing, table_id=table_id)
