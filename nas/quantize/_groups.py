"""Which layer group of a subnet each node of its ONNX graph belongs to.

``torch.onnx.export`` names a node after the module that made it (``/model/blocks/blocks.7/expand/...``);
ONNX Runtime's pre-processing fuses and splits some (a ``HardSwish`` becomes ``HardSigmoid`` and ``Mul``)
and leaves the new ones unnamed. ``name_nodes`` gives every unnamed node a name that starts with its
producer's, so every node maps back: ``/model/stem/`` and the input normalisation to the stem,
``/model/blocks/blocks.N/`` to block N of the plan (its stage, or the stem for a fixed first block),
``/model/head/`` to the head.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from search_spaces import NetworkPlan, PrecisionPolicy

if TYPE_CHECKING:
    import onnx

__all__ = ["BlockKey", "block_of_node", "name_nodes", "nodes_to_exclude"]

# (stage index, block index) of a block; the stem is (-1, 0) (the fixed first block joins it), the head (-2, 0).
BlockKey = tuple[int, int]
STEM: BlockKey = (-1, 0)
HEAD: BlockKey = (-2, 0)
_BLOCK = re.compile(r"/model/blocks/blocks\.(\d+)/")


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed (or duplicate-named) node of ``model`` a unique name that starts with the name
    of the node producing its first input (in place; returns ``model``)."""
    producer: dict[str, str] = {}
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            parent = next((producer[i] for i in node.input if i in producer), "")
            node.name = f"{parent}/{node.op_type}_{index}"
        seen.add(node.name)
        for output in node.output:
            producer[output] = node.name
    return model


def block_of_node(name: str, plan: NetworkPlan) -> BlockKey | None:
    """The block a node belongs to, by its name: ``STEM``, ``HEAD``, ``(stage, block)``; None when the
    name says nothing (a node this module did not name)."""
    match = _BLOCK.search(name)
    if match:
        block = plan.blocks[int(match.group(1))]
        return STEM if block.stage_index < 0 else (block.stage_index, block.block_index)
    if name.startswith("/model/stem/") or name.split("/")[1:2] in (["Sub"], ["Div"]):
        return STEM
    if name.startswith("/model/head/"):
        return HEAD
    return None


def precision_of_block(policy: PrecisionPolicy, key: BlockKey) -> str:
    if key == STEM:
        return policy.stem
    if key == HEAD:
        return policy.head
    return policy.block_precision(*key)


def nodes_to_exclude(nodes: Iterable[str], plan: NetworkPlan, policy: PrecisionPolicy,
                     quantized: str = "int8") -> list[str]:
    """The names of the nodes that stay in floating point under ``policy``: those of groups whose precision
    is not ``quantized``, and nodes of no known group unless the whole policy is ``quantized``."""
    whole = policy.is_uniform(quantized)
    out = []
    for name in nodes:
        key = block_of_node(name, plan)
        if key is None:
            if not whole:
                out.append(name)
        elif precision_of_block(policy, key) != quantized:
            out.append(name)
    return out
