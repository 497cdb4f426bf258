"""Per-device latency: devices, the measurement protocol and its backends, lookup tables (build, import),
learned predictors and their accuracy.

Never imports ``supernets``: code that must build modules to time them takes a ``LayerBuilder``.
"""

from __future__ import annotations

from .devices import (
    Device,
    DeviceStore,
    LatencyError,
    UnknownDeviceError,
    capture_metadata,
    check_measurable,
    default_root,
    local_device_id,
    parse_device_id,
)
from .layers import LayerBuilder, LayerSpec, arch_features, enumerate_layers, layer_keys, network_macs
from .learned import (
    PREDICTOR_KINDS,
    FlopsPredictor,
    MLPPredictor,
    Predictor,
    RidgePredictor,
    TableLinearPredictor,
    TableSumPredictor,
    load_predictor,
    make_predictor,
)
from .lut import LayerMeasurer, LookupTable, MissingEntryError, build_table, layer_measurer
from .measure import (
    BACKENDS,
    Backend,
    MeasureConfig,
    Measurement,
    NoisyMeasurementWarning,
    backend_for,
    configure_allocator,
    device_lock,
    get_backend,
    measure_module,
)
from .metrics import accuracy, kendall, spearman
from .ofa_import import import_ofa_tables, read_ofa_tables
from .remote import MeasurementLog, init_ray, measure_archs, measure_network
from .workflow import (
    EvalReport,
    evaluate_predictors,
    fit_predictors,
    format_report,
    load_predictors,
    load_table,
    sample_archs,
)

__all__ = [
    "BACKENDS",
    "PREDICTOR_KINDS",
    "Backend",
    "Device",
    "DeviceStore",
    "EvalReport",
    "FlopsPredictor",
    "LatencyError",
    "LayerBuilder",
    "LayerMeasurer",
    "LayerSpec",
    "LookupTable",
    "MLPPredictor",
    "MeasureConfig",
    "Measurement",
    "MeasurementLog",
    "MissingEntryError",
    "NoisyMeasurementWarning",
    "Predictor",
    "RidgePredictor",
    "TableLinearPredictor",
    "TableSumPredictor",
    "UnknownDeviceError",
    "accuracy",
    "arch_features",
    "build_table",
    "capture_metadata",
    "check_measurable",
    "configure_allocator",
    "default_root",
    "device_lock",
    "enumerate_layers",
    "evaluate_predictors",
    "fit_predictors",
    "format_report",
    "backend_for",
    "get_backend",
    "import_ofa_tables",
    "init_ray",
    "kendall",
    "layer_keys",
    "layer_measurer",
    "load_predictor",
    "load_predictors",
    "load_table",
    "local_device_id",
    "make_predictor",
    "measure_archs",
    "measure_module",
    "measure_network",
    "network_macs",
    "parse_device_id",
    "read_ofa_tables",
    "sample_archs",
    "spearman",
]
