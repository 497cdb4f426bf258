"""Quantising a subnet of a run: extract it, recalibrate its batch norms, calibrate and quantise it under a
policy (given, uniform int8, or the fastest within an accuracy-loss bound), check the int8 model against its
fake-quantised graph, measure it against fp32 and write it."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latency_predictors.measure import MeasureConfig
from search_spaces import Arch, PrecisionPolicy, SearchSpace, arch_to_string, plan, policy_from_string, policy_to_string

from ..errors import ExportCheckError, UsageError
from ._images import ImageSet, calibration_images, check_calibration_count, split_images
from ._ptq import SubnetQuantizer, check_method
from ._runtime import DEFAULT_MEASURE, FAKE_QUANT_TOLERANCE, fake_quant_agreement, latencies_ms, top1
from ._search import GRANULARITIES, MethodChoice, PolicySearch, choose_method, search_policy

__all__ = ["CALIBRATION_IMAGES", "QDQ_FORMAT", "PreparedSubnet", "QuantizeReport", "prepare_member", "prepare_net",
           "prepare_subnet", "quantize_subnet", "subnet_quantizer"]

QDQ_FORMAT = "hwnas-subnet-onnx-qdq-1"
CALIBRATION_IMAGES = 256
# Test images the int8 kernels are checked on against the fake-quantised graph before a file is written.
CHECK_IMAGES = 64
AGREEMENTS = ("require", "warn")
"""What ``quantize_subnet`` does when the int8 kernels fail that check: refuse to write, or write and warn."""
# Batch size of the BN-recalibration batches (recalibration keeps a cumulative average over batches), as
# ``supernets.training.evaluate.subnet_accuracy``'s default.
BN_BATCH = 200


@dataclass
class PreparedSubnet:
    """A run's subnet ready to quantise: its quantiser (fp32 graph, calibration) and the evaluation splits."""

    space: SearchSpace
    arch: Arch
    quantizer: SubnetQuantizer
    val: ImageSet
    test: ImageSet
    bn_images: int

    @property
    def arch_string(self) -> str:
        return arch_to_string(self.space, self.arch)


def prepare_subnet(config: Any, run: Any, arch: Arch, *, calibration: int = CALIBRATION_IMAGES,
                   max_images: int | None = None) -> PreparedSubnet:
    """Extract ``arch`` from the run's supernet (refused when it is another config's, as ``nas eval`` refuses
    it), recalibrate its batch norms as ``nas eval`` does
    (``train.bn_recal_images`` augmented training images, on ``train.device``), and make its quantiser,
    calibrated on ``calibration`` other (seeded, not augmented) training images; ``max_images`` caps the val
    and test splits. The quantiser is ``subnet_quantizer``'s, the function the search's quantised accuracy
    (``nas.accuracy.DirectEvaluator``) builds its models with too."""
    from supernets.training.device import DeviceError, Execution

    from ..accuracy import check_run_supernet
    from ..data import check_dataset, load_dataset
    from ..rundir import load_supernet

    if config.dataset is None:
        raise UsageError("the config has no dataset to calibrate and evaluate on; add a dataset section "
                         "(e.g. {kind: digits})")
    _check_max_images(max_images)
    check_calibration_count(calibration)
    check_dataset(config.dataset)
    try:
        execution = Execution.resolve(config.train.device, "fp32", channels_last=False)
    except DeviceError as exc:
        raise UsageError(str(exc)) from exc
    if run.supernet_checkpoint.is_file():  # a missing one is load_supernet's error, naming `nas train`
        check_run_supernet(config, run)  # another config's (seed, data, training) or space's: refused, as `nas eval`
    space, supernet = load_supernet(run)
    execution.module(supernet)
    data = load_dataset(config.dataset, max(space.resolutions), config.seed)
    bn_images = int(config.train.bn_recal_images)
    quantizer = subnet_quantizer(space, supernet, arch, data, seed=config.seed, bn_images=bn_images,
                                 calibration=calibration, execution=execution)
    return PreparedSubnet(space, arch, quantizer, split_images(data, "val", arch.resolution, max_images),
                          split_images(data, "test", arch.resolution, max_images), bn_images)


def subnet_quantizer(space: SearchSpace, supernet: Any, arch: Arch, data: Any, *, seed: int, bn_images: int,
                     calibration: int = CALIBRATION_IMAGES, execution: Any = None) -> SubnetQuantizer:
    """The quantiser of ``arch`` of a run: the one step ``nas quantize`` (``prepare_subnet``) and the search's
    quantised accuracy (``nas.accuracy.SupernetAccuracy``) share, so the model a search measures is the
    model ``nas quantize`` writes for that arch and policy.

    The subnet is extracted from ``supernet`` (on its device), its batch norms recalibrated on ``bn_images``
    augmented training images of ``data`` (``data.calibration_batches(bn_images, BN_BATCH, seed)``, the
    batches ``supernets.training.evaluate.subnet_accuracy`` recalibrates the fp32 accuracy on; none when 0)
    in fp32 on ``execution``'s device (``supernets.training.device.Execution``; None: the supernet's device),
    then exported to the deployed graph (RGB in [0, 1], ``Normalization.of(data)`` inside) and calibrated on
    ``calibration`` seeded training images (``calibration_images(data, resolution, calibration, seed)``).
    """
    import torch

    from supernets import extract
    from supernets.training.bn import recalibrate_bn
    from supernets.training.evaluate import resize

    net = extract(supernet, arch)
    if bn_images > 0:
        device = next(net.parameters()).device
        prepare = execution.batch if execution is not None else (lambda x: x.to(device))
        with torch.no_grad():
            recalibrate_bn(net, (resize(prepare(x), arch.resolution)
                                 for x in data.calibration_batches(bn_images, BN_BATCH, seed)))
    return _quantizer(space, arch, net.cpu().eval(), data, seed=seed, bn_images=bn_images, calibration=calibration)


def prepare_member(member: Any, run_data: Any, *, calibration: int = CALIBRATION_IMAGES,
                   max_images: int | None = None, metadata: dict[str, Any] | None = None) -> PreparedSubnet:
    """A front member's subnet ready to quantise, from the run alone: extracted and its batch norms
    recalibrated exactly as its fp32 export is (``nas.query.subnet_of`` on ``run_data``), calibrated on
    ``calibration`` training images of the run's dataset.

    Args:
        member: the ``FrontMember`` (its arch and supernet checkpoint).
        run_data: the run's dataset as exports take it (``nas.query.run_calibration``; its ``data_seed``
            seeds the calibration images).
        calibration: training images the activation ranges are calibrated on.
        max_images: caps the val and test splits the accuracies are measured on.
        metadata: more to record in the model (merged over the arch's).
    """
    from search_spaces import get_space

    from ..query import _recalibrates, subnet_of

    if run_data is None or getattr(run_data, "data", None) is None:
        raise UsageError(f"front member {member.member_id} is {member.precision}: quantising it needs training "
                         f"images to calibrate on, and the run records no dataset (the search's front store "
                         f"meta 'dataset'); export an fp32 member instead")
    _check_max_images(max_images)
    net = subnet_of(member, run_data)
    bn_images = int(run_data.num_images) if _recalibrates(run_data) else 0
    return prepare_net(get_space(member.arch.space), member.arch, net, run_data.data,
                       seed=int(getattr(run_data, "data_seed", 0)), bn_images=bn_images, calibration=calibration,
                       max_images=max_images, metadata=metadata)


def prepare_net(space: SearchSpace, arch: Arch, net: Any, data: Any, *, seed: int, bn_images: int,
                calibration: int = CALIBRATION_IMAGES, max_images: int | None = None,
                metadata: dict[str, Any] | None = None) -> PreparedSubnet:
    """``prepare_member``'s last step: the quantiser of ``net`` (the subnet of ``arch``, batch norms already
    recalibrated on ``bn_images`` images, eval mode), made as ``subnet_quantizer`` makes one after its
    recalibration (calibrated on ``calibration`` seeded training images of ``data``), with its val and test
    splits (up to ``max_images``)."""
    _check_max_images(max_images)
    quantizer = _quantizer(space, arch, net, data, seed=seed, bn_images=bn_images, calibration=calibration,
                           metadata=metadata)
    return PreparedSubnet(space, arch, quantizer, split_images(data, "val", arch.resolution, max_images),
                          split_images(data, "test", arch.resolution, max_images), bn_images)


def _quantizer(space: SearchSpace, arch: Arch, net: Any, data: Any, *, seed: int, bn_images: int,
               calibration: int = CALIBRATION_IMAGES, metadata: dict[str, Any] | None = None) -> SubnetQuantizer:
    """The quantiser of ``net`` (``arch``'s subnet, batch norms recalibrated on ``bn_images`` images) with the
    arch recorded in its models, calibrated on ``calibration`` training images of ``data`` seeded ``seed``."""
    from ..query import Normalization

    recorded = {"space": space.name, "arch": arch.to_dict(), "arch_string": arch_to_string(space, arch),
                "arch_id": arch.arch_id, "num_classes": int(space.num_classes),
                "batch_norm": f"recalibrated on {bn_images} training images" if bn_images else "supernet statistics",
                **(metadata or {})}
    return SubnetQuantizer(net.eval(), plan(space, arch), arch.resolution, Normalization.of(data),
                           calibration_images(data, arch.resolution, calibration, seed), recorded)


def _check_max_images(max_images: int | None) -> None:
    if max_images is not None and max_images < 1:
        raise UsageError(f"--max-images (images per split to evaluate on): {max_images} is not allowed; must be "
                         f">= 1 (or leave it out for every image)")


@dataclass(frozen=True)
class QuantizeReport:
    """What ``quantize_subnet`` wrote and measured."""

    path: str
    arch_string: str
    policy: str
    how: str                    # "given", "uniform int8" or "searched within N points"
    method: MethodChoice
    val_accuracy: dict[str, float]     # fp32 and quantised, on the validation split
    test_accuracy: dict[str, float]    # fp32 and quantised, on the test split
    latency_ms: dict[str, float]       # fp32 and quantised, ONNX Runtime CPU, 1 thread, batch 1
    fake_quant_check: dict[str, float]
    search: PolicySearch | None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["method"] = self.method.to_dict()
        out["search"] = self.search.to_dict() if self.search is not None else None
        return out


def _method(prepared: PreparedSubnet, method: str) -> MethodChoice:
    if method == "auto":
        return choose_method(prepared.quantizer, prepared.space, prepared.val)
    return choose_method(prepared.quantizer, prepared.space, prepared.val, (check_method(method),))


def quantize_subnet(prepared: PreparedSubnet, out: str | os.PathLike[str], *, policy: str | None = None,
                    max_loss_points: float | None = None, method: str = "auto", granularity: str = "stage",
                    measure: MeasureConfig = DEFAULT_MEASURE, agreement: str = "require") -> QuantizeReport:
    """Quantise ``prepared`` and write the ONNX model to ``out`` atomically.

    Args:
        prepared: from ``prepare_subnet``.
        out: an ``.onnx`` file.
        policy: a precision policy string (``p:f,i,...``); default: uniform int8, or searched when
            ``max_loss_points`` is given (not both).
        max_loss_points: the accuracy-loss bound in top-1 percentage points on the validation split: the
            fastest policy within it (``search_policy``).
        method: calibration method, or ``auto``: each of ``minmax``, ``entropy``, ``percentile`` measured
            on the validation split (uniform int8) and the most accurate taken.
        granularity: ``stage`` or ``block``: the groups the search switches.
        measure: the latency protocol's settings.
        agreement: ``require`` (write only when the check below passes, else ``ExportCheckError``) or
            ``warn`` (write anyway and warn: for a model already chosen by its accuracy under ONNX Runtime's
            own kernels, which the metadata records, as ``nas run``'s export of the front's knee).

    The file is written only when ONNX Runtime's int8 kernels agree with the fake-quantised graph on
    ``CHECK_IMAGES`` test images (``fake_quant_agreement``: mean logit difference within
    ``FAKE_QUANT_TOLERANCE`` of the quantisation error), unless ``agreement`` is ``warn``; its metadata
    records the arch, the policy, the calibration, the accuracies and the check.
    """
    from ..io import atomic_write_bytes

    path = Path(out)
    if path.suffix != ".onnx":
        raise UsageError(f"cannot write a quantised subnet to {str(path)!r}: the file name must end in .onnx")
    if policy is not None and max_loss_points is not None:
        raise UsageError("give a precision policy (--policy) or an accuracy-loss bound (--max-loss), not both")
    if method != "auto":
        check_method(method)
    if granularity not in GRANULARITIES:
        raise UsageError(f"granularity {granularity!r} is not allowed; allowed: {', '.join(GRANULARITIES)}")
    if agreement not in AGREEMENTS:
        raise UsageError(f"agreement {agreement!r} is not allowed; allowed: {', '.join(AGREEMENTS)}")
    space, arch, quantizer = prepared.space, prepared.arch, prepared.quantizer
    chosen: PrecisionPolicy = (policy_from_string(space, policy, arch) if policy is not None
                               else PrecisionPolicy.uniform(space, "int8"))
    choice = _method(prepared, method)
    search = None
    if max_loss_points is not None:
        search = search_policy(quantizer, space, arch, prepared.val, max_loss_points, choice.method, granularity,
                               measure)
        chosen = search.policy
    how = "given" if policy is not None else (f"searched within {max_loss_points:g} points" if search
                                              else "uniform int8")
    model = quantizer.quantize(chosen, choice.method)
    check = fake_quant_agreement(model, prepared.test.head(CHECK_IMAGES), quantizer.fp32) \
        if model is not quantizer.fp32 else {"mean_abs_diff": 0.0, "steps": 0.0, "top1_agreement": 1.0, "within": 1.0}
    if not check["within"]:
        differ = (f"ONNX Runtime's int8 kernels differ from the fake-quantised graph by {check['mean_abs_diff']:.3g} "
                  f"on average (allowed {check['allowed']:.3g}: {FAKE_QUANT_TOLERANCE:g} x the quantisation error "
                  f"{check['quantization_error']:.3g})")
        if agreement == "require":
            raise ExportCheckError(f"{differ}; nothing written")
        warnings.warn(f"{path}: {differ}; written anyway, its accuracies measured with those kernels "
                      f"(metadata fake_quant_check)", stacklevel=2)
    val = {"fp32": top1(quantizer.fp32, prepared.val), "quantized": top1(model, prepared.val)}
    test = {"fp32": top1(quantizer.fp32, prepared.test), "quantized": top1(model, prepared.test)}
    fp32_ms, quant_ms = (m.latency_ms for m in latencies_ms([quantizer.fp32, model], arch.resolution, measure))
    policy_string = policy_to_string(chosen)
    data = _with_metadata(model, {
        "hwnas_format": QDQ_FORMAT, "precision_policy": policy_string, "calibration_method": choice.method,
        "calibration_images": quantizer.calibration.source, "quantization": "ONNX Runtime static QDQ: weights "
        "int8 symmetric per output channel, activations uint8 asymmetric per tensor; fp32 groups not quantised",
        "val_accuracy": val["quantized"], "test_accuracy": test["quantized"], "fp32_val_accuracy": val["fp32"],
        "fp32_test_accuracy": test["fp32"], "fake_quant_check": check})
    atomic_write_bytes(path, data)
    return QuantizeReport(str(path), prepared.arch_string, policy_string, how, choice, val, test,
                          {"fp32": fp32_ms, "quantized": quant_ms}, check, search)


def _with_metadata(model: bytes, metadata: dict[str, Any]) -> bytes:
    import onnx

    from .. import hwnas_version

    proto = onnx.load_from_string(model)
    props = {p.key: p.value for p in proto.metadata_props if p.key != "onnx.infer"}
    props.update({k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()})
    props["hwnas_version"] = hwnas_version()
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    return proto.SerializeToString()

