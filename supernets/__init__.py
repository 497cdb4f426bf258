"""Supernets: elastic layers, extraction of static subnets, static builders, training."""

from __future__ import annotations

from .channel_sort import sort_channels, sort_mbconv_channels
from .counting import built_counts, count_macs, count_params
from .elastic import (
    SUPERNET_CLASSES,
    ElasticHead,
    ElasticSupernet,
    MnasNetSupernet,
    OFAMobileNetV3Supernet,
    build_supernet,
)
from .elastic_blocks import ElasticChoiceBlock, ElasticMBConv, ElasticRegularConv, ElasticSepConv
from .elastic_layers import ElasticBatchNorm2d, ElasticConv2d, ElasticConvBNAct, ElasticSqueezeExcite
from .extract import extract
from .static import StaticNet, build

__all__ = [
    "SUPERNET_CLASSES",
    "ElasticBatchNorm2d",
    "ElasticChoiceBlock",
    "ElasticConv2d",
    "ElasticConvBNAct",
    "ElasticHead",
    "ElasticMBConv",
    "ElasticRegularConv",
    "ElasticSepConv",
    "ElasticSqueezeExcite",
    "ElasticSupernet",
    "MnasNetSupernet",
    "OFAMobileNetV3Supernet",
    "StaticNet",
    "built_counts",
    "build",
    "build_supernet",
    "count_macs",
    "count_params",
    "extract",
    "sort_channels",
    "sort_mbconv_channels",
]
