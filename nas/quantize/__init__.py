"""Post-training quantisation of subnets and mixed precision per layer group, through ONNX Runtime (QDQ).

- ``SubnetQuantizer``: one subnet's deployed fp32 graph, calibrated once per method on training images,
  quantised under any ``search_spaces.PrecisionPolicy`` (int8 groups get Q/DQ pairs, fp32 groups are left out).
- ``choose_method`` / ``search_policy``: the calibration method and the fastest policy within an
  accuracy-loss bound, chosen by measurement (sensitivity order, bisection, ONNX Runtime latency).
- ``prepare_subnet`` / ``quantize_subnet``: the same for a subnet of a run, written as an ``.onnx`` file
  (``nas quantize``); its quantiser is made by ``subnet_quantizer``, which the search's quantised accuracy
  (``nas.accuracy.DirectEvaluator``) builds its models with too. ``prepare_member``: a front member's subnet
  from the run alone (``nas query --export`` of a member with a precision policy), through ``prepare_net``.
- ``sensitivities`` / ``prefix_policies``: each group alone in int8 (KL from fp32), and the mixes that make
  the least sensitive groups int8 first (what the precision search measures).
- ``fake_quant_agreement``, ``latencies_ms``, ``top1``: running the models in ONNX Runtime on the CPU.
- ``quantize_layer`` / ``quantized_subnet_model``: the quantised models the latency predictors time (int8
  lookup-table entries, quantised subnets measured end to end), through the same QDQ functions
  (``preprocess``, ``calibrate_ranges``, ``qdq_quantize``).
"""

from __future__ import annotations

from ._flow import (
    CALIBRATION_IMAGES,
    QDQ_FORMAT,
    PreparedSubnet,
    QuantizeReport,
    prepare_member,
    prepare_net,
    prepare_subnet,
    quantize_subnet,
    subnet_quantizer,
)
from ._groups import block_of_node, name_nodes, nodes_to_exclude
from ._images import ImageSet, calibration_images, check_calibration_count, split_images
from ._latency import quantized_subnet_model
from ._ptq import (
    CALIBRATION_METHODS,
    QUANTIZER_ID,
    SubnetQuantizer,
    calibrate_ranges,
    preprocess,
    qdq_quantize,
    quantize_layer,
    unshare_initializers,
)
from ._runtime import DEFAULT_MEASURE, FAKE_QUANT_TOLERANCE, fake_quant_agreement, latencies_ms, logits, top1
from ._search import (
    GRANULARITIES,
    Candidate,
    GroupSensitivity,
    MethodChoice,
    PolicySearch,
    check_max_loss,
    choose_method,
    group_units,
    policy_of,
    prefix_policies,
    search_policy,
    sensitivities,
    unit_name,
)

__all__ = ["CALIBRATION_IMAGES", "CALIBRATION_METHODS", "DEFAULT_MEASURE", "FAKE_QUANT_TOLERANCE", "GRANULARITIES",
           "QUANTIZER_ID",
           "QDQ_FORMAT", "Candidate", "GroupSensitivity", "ImageSet", "MethodChoice", "PolicySearch", "PreparedSubnet",
           "QuantizeReport", "SubnetQuantizer", "block_of_node", "calibration_images", "check_calibration_count",
           "check_max_loss", "choose_method",
           "fake_quant_agreement", "group_units", "latencies_ms", "logits", "name_nodes", "nodes_to_exclude",
           "policy_of", "prefix_policies", "prepare_member", "prepare_net", "prepare_subnet", "quantize_subnet",
           "search_policy", "sensitivities", "split_images", "subnet_quantizer", "top1", "unit_name",
           "calibrate_ranges", "preprocess", "qdq_quantize", "quantize_layer", "quantized_subnet_model",
           "unshare_initializers"]
