"""Supernets: one weight-sharing network per space family, run at any arch of its space.

The active subnet is an argument of ``forward(x, arch)``; the module holds no active-arch state, so
one supernet can be run at different archs in one step (sandwich rule) and wrapped in DDP as is (use
``find_unused_parameters=True``: blocks beyond a stage's depth and inactive operators get no gradient).

- Depth: the first ``depth`` blocks of each stage run.
- Width, kernel, squeeze-excite: see ``elastic_layers``.
- Operator (MnasNet): every block holds separate elastic weights per operator; one is active.
- Resolution: the input tensor's size (``arch.resolution`` is what the data loader should produce).
"""

from __future__ import annotations

import torch
from torch import nn

from search_spaces import Arch, NetworkPlan, SearchSpace, StageSpec, get_space, largest, plan
from search_spaces._plan import mid_channels, se_channels

from .elastic_blocks import ElasticChoiceBlock, ElasticMBConv, ElasticRegularConv, ElasticSepConv
from .elastic_layers import ElasticConvBNAct, prefixed
from .static import ConvBNAct, MBConv, activation, init_weights


class ElasticHead(nn.Module):
    """Elastic counterpart of ``static.Head``: elastic in its input width only."""

    def __init__(self, space: SearchSpace, max_in: int) -> None:
        super().__init__()
        act = space.head_activation
        if space.final_expand_channels:
            self.final_expand: ElasticConvBNAct | None = ElasticConvBNAct(max_in, space.final_expand_channels,
                                                                          act=act)
            self.feature: nn.Module = nn.Sequential(
                nn.Conv2d(space.final_expand_channels, space.feature_channels, 1, bias=False), activation(act))
        else:
            self.final_expand = None
            self.feature = ElasticConvBNAct(max_in, space.feature_channels, act=act)
        self.dropout = nn.Dropout(space.dropout)
        self.classifier = nn.Linear(space.feature_channels, space.num_classes)
        self.final_expand_channels = space.final_expand_channels
        self.feature_channels = space.feature_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.final_expand is not None:
            x = self.final_expand(x, self.final_expand_channels)
            x = self.feature(x.mean((2, 3), keepdim=True))
        else:
            x = self.feature(x, self.feature_channels).mean((2, 3), keepdim=True)
        return self.classifier(self.dropout(torch.flatten(x, 1)))

    def static_state(self, in_channels: int) -> dict[str, torch.Tensor]:
        if self.final_expand is not None:
            state = prefixed("final_expand.", self.final_expand.static_state(in_channels,
                                                                            self.final_expand_channels))
            state.update(prefixed("feature.", self.feature.state_dict()))
        else:
            state = prefixed("feature.", self.feature.static_state(in_channels, self.feature_channels))
        state.update(prefixed("classifier.", self.classifier.state_dict()))
        return state


class ElasticSupernet(nn.Module):
    """Stem, optional fixed first block, elastic stages (``stages[s][b]``), elastic head.

    Subclasses decide what one elastic block is (``make_block``).
    """

    family = ""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        divisor = space.channel_divisor
        full = plan(space, largest(space))
        self.stem = ConvBNAct(3, space.stem_channels, 3, space.stem_stride, act=space.stem_activation)
        self.first_block = MBConv(full.blocks[0]) if space.first_block_channels else None
        in_choices = {space.first_block_channels or space.stem_channels}
        stages = []
        for spec in space.stages:
            out_choices = {spec.out_channels(w, divisor) for w in spec.width_mults}
            blocks = []
            for b in range(spec.max_depth):
                ins = in_choices if b == 0 else out_choices
                blocks.append(self.make_block(spec, spec.stride if b == 0 else 1, ins, out_choices))
            stages.append(nn.ModuleList(blocks))
            in_choices = out_choices
        self.stages = nn.ModuleList(stages)
        self.head = ElasticHead(space, max(in_choices))
        init_weights(self)

    def make_block(self, spec: StageSpec, stride: int, in_choices: set[int], out_choices: set[int]) -> nn.Module:
        raise NotImplementedError

    def _max_mid_and_se(self, spec: StageSpec, op: str, in_choices: set[int],
                        out_choices: set[int]) -> tuple[int, int]:
        divisor = self.space.channel_divisor
        mids = {mid_channels(op, i, o, e, divisor) for i in in_choices for o in out_choices
                for e in spec.allowed_expand_ratios(op)}
        return max(mids), max(se_channels(m, r, divisor) for m in mids for r in spec.se_ratios)

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        return self.forward_plan(x, plan(self.space, arch))

    def forward_plan(self, x: torch.Tensor, p: NetworkPlan) -> torch.Tensor:
        """Forward through the subnet of an already resolved plan."""
        x = self.stem(x)
        stages = self.stages
        for bp in p.blocks:
            if bp.stage_index < 0:
                x = self.first_block(x)
            else:
                x = stages[bp.stage_index][bp.block_index](x, bp)
        return self.head(x)

    def zero_init_residuals(self) -> int:
        """Set gamma to 0 in the last batch norm of every block that always adds a residual (all but the first of
        each stage: stride 1, same widths; not in stages where the skip connection is itself a choice, whose
        blocks would then output zeros), so that each begins as the identity (BigNAS's initialisation, for
        training from scratch). Returns how many batch norms were set."""
        norms = [bn for spec, stage in zip(self.space.stages, self.stages) if all(spec.skips)
                 for block in list(stage)[1:] for bn in block.residual_norms()]
        with torch.no_grad():
            for bn in norms:
                bn.weight.zero_()
        return len(norms)

    def set_in_place_grads(self, enabled: bool) -> None:
        """Add the gradients of active parts of parameters into existing gradients in place (``elastic_layers``'
        docstring): fewer kernels per backward pass after the first of a step. Leave it off under
        ``DistributedDataParallel``, whose hooks watch the gradient accumulation this bypasses."""
        for module in self.modules():
            if hasattr(module, "in_place_grads"):
                module.in_place_grads = bool(enabled)

    def subnet_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """The state dict of ``build(space, arch)`` holding this supernet's active weights (not copies)."""
        p = plan(self.space, arch)
        state = prefixed("stem.", self.stem.state_dict())
        for i, bp in enumerate(p.blocks):
            if bp.stage_index < 0:
                block_state = self.first_block.state_dict()
            else:
                block_state = self.stages[bp.stage_index][bp.block_index].static_state(bp)
            state.update(prefixed(f"blocks.{i}.", block_state))
        state.update(prefixed("head.", self.head.static_state(p.last_block_channels)))
        return state


class OFAMobileNetV3Supernet(ElasticSupernet):
    """Once-for-All MobileNetV3: elastic depth, kernel (3/5/7 via transforms), expand ratio, resolution."""

    family = "ofa_mbv3"

    def make_block(self, spec: StageSpec, stride: int, in_choices: set[int], out_choices: set[int]) -> nn.Module:
        max_mid, max_se = self._max_mid_and_se(spec, "mbconv", in_choices, out_choices)
        return ElasticMBConv(max(in_choices), max_mid, max(out_choices), spec.kernel_sizes, stride, max_se,
                             spec.activation)


class MnasNetSupernet(ElasticSupernet):
    """MnasNet: per-stage operator (separate weights per op), kernel, SE, skip, width, depth."""

    family = "mnasnet"

    def make_block(self, spec: StageSpec, stride: int, in_choices: set[int], out_choices: set[int]) -> nn.Module:
        max_in, max_out = max(in_choices), max(out_choices)
        ops: dict[str, nn.Module] = {}
        for op in spec.op_types:
            max_mid, max_se = self._max_mid_and_se(spec, op, in_choices, out_choices)
            if op == "mbconv":
                ops[op] = ElasticMBConv(max_in, max_mid, max_out, spec.kernel_sizes, stride, max_se,
                                        spec.activation)
            elif op == "sepconv":
                ops[op] = ElasticSepConv(max_in, max_out, spec.kernel_sizes, stride, max_se, spec.activation)
            else:
                ops[op] = ElasticRegularConv(max_in, max_out, spec.kernel_sizes, stride, max_se, spec.activation)
        return ElasticChoiceBlock(ops)


SUPERNET_CLASSES: dict[str, type[ElasticSupernet]] = {
    OFAMobileNetV3Supernet.family: OFAMobileNetV3Supernet,
    MnasNetSupernet.family: MnasNetSupernet,
}


def build_supernet(space: SearchSpace | str, num_classes: int | None = None) -> ElasticSupernet:
    """A freshly initialised supernet for ``space`` (or a registered space name), by family."""
    if isinstance(space, str):
        space = get_space(space)
    if space.family not in SUPERNET_CLASSES:
        raise ValueError(f"no supernet for family {space.family!r} of space {space.name!r}; "
                         f"allowed: {', '.join(sorted(SUPERNET_CLASSES))}")
    if num_classes is not None and num_classes != space.num_classes:
        space = space.with_num_classes(num_classes)
    return SUPERNET_CLASSES[space.family](space)
