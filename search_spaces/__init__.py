"""Search spaces: typed descriptions of what can vary, arch values, encodings, sampling, the registry.

Needs only the standard library and numpy.
"""

from __future__ import annotations

from . import _mnasnet, _ofa  # noqa: F401  (registers the built-in spaces)
from ._arch import Arch, ArchError, BlockArch, StageArch, validate
from ._counts import Counts, arch_counts, block_macs, head_macs, stem_macs
from ._encoding import decode, encode, encode_many, encoding_length, encoding_names
from ._files import READ_ERRORS, DamagedFileError, keep_copy, reading, short_text
from ._ofa import from_ofa_config, to_ofa_config
from ._plan import BlockPlan, NetworkPlan, conv_out_size, plan
from ._precision import (
    PRECISIONS,
    PolicyError,
    PrecisionPolicy,
    policy_from_string,
    policy_or_none,
    policy_to_string,
    precision_groups,
    precision_label,
    validate_policy,
)
from ._progress import progress_bar
from ._ray import RayAddressError, connect_ray, ray_address_problem, ray_cluster_named_or_running, set_ray_environment
from ._registry import UnknownSpaceError, get_space, list_spaces, register_space
from ._sampling import Seed, as_generator, crossover, largest, mutate, random_arch, sample, smallest
from ._size import block_choices, space_size
from ._space import ACTIVATIONS, OP_TYPES, SearchSpace, StageSpec, make_divisible
from ._strings import arch_from_string, arch_to_string

__all__ = [
    "PRECISIONS",
    "PolicyError",
    "PrecisionPolicy",
    "policy_from_string",
    "policy_or_none",
    "policy_to_string",
    "precision_groups",
    "precision_label",
    "validate_policy",
    "Counts",
    "arch_counts",
    "block_macs",
    "head_macs",
    "stem_macs",
    "RayAddressError",
    "connect_ray",
    "progress_bar",
    "ray_address_problem",
    "ray_cluster_named_or_running",
    "set_ray_environment",
    "ACTIVATIONS",
    "OP_TYPES",
    "READ_ERRORS",
    "Arch",
    "ArchError",
    "BlockArch",
    "BlockPlan",
    "DamagedFileError",
    "keep_copy",
    "NetworkPlan",
    "SearchSpace",
    "Seed",
    "StageArch",
    "StageSpec",
    "UnknownSpaceError",
    "arch_from_string",
    "arch_to_string",
    "block_choices",
    "as_generator",
    "conv_out_size",
    "crossover",
    "decode",
    "encode",
    "encode_many",
    "encoding_length",
    "encoding_names",
    "from_ofa_config",
    "get_space",
    "largest",
    "list_spaces",
    "make_divisible",
    "mutate",
    "plan",
    "random_arch",
    "reading",
    "register_space",
    "sample",
    "short_text",
    "smallest",
    "space_size",
    "to_ofa_config",
    "validate",
]
