"""Elastic layers: one set of largest weights, any smaller kernel or width taken from it.

- Width: the leading input/output channels of a weight (and of batch-norm parameters and statistics).
- Kernel: the centre crop of the largest kernel, passed through a learned ``k*k x k*k`` matrix per
  step down (7 -> 5, 5 -> 3), shared by all channels of one convolution and initialised to identity
  (Once-for-All's kernel transformation).

When the full width and kernel are active, the parameters are used as they are (no copy). Every layer
also returns the state dict of its static counterpart (``static_state``), which is how extraction
copies exact weights.

Gradients of a parameter's active part: plain autograd writes them into a zero gradient of the whole
parameter (a fill and a copy), which ``AccumulateGrad`` then adds to the gradient that is there. With
``in_place_grads`` on (``ElasticSupernet.set_in_place_grads``; the training loop turns it on unless
``DistributedDataParallel``, whose hooks watch ``AccumulateGrad``, wraps the supernet), the active part's
gradient is added into the existing gradient's matching part in place: one kernel instead of three, for every
subnet of a sandwich step after the first. Same sums, so the same training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .static import BN_EPS, BN_MOMENTUM


def act_fn(x: torch.Tensor, name: str | None) -> torch.Tensor:
    """The activation ``name`` applied in place (as the static modules do); ``None`` for none."""
    if name is None:
        return x
    if name == "relu":
        return F.relu(x, inplace=True)
    if name == "hswish":
        return F.hardswish(x, inplace=True)
    raise ValueError(f"unknown activation {name!r}; allowed: relu, hswish")


def leading_box(t: torch.Tensor, sizes: tuple[int, ...], starts: tuple[int, ...] | None = None) -> torch.Tensor:
    """The box of ``t`` with ``sizes`` beginning at ``starts`` (default: the leading corner), as one strided
    view (``t`` itself when the box is all of it); the same values as chained slices, in any memory format."""
    if starts is None and tuple(t.shape) == tuple(sizes):
        return t
    if len(sizes) != t.dim() or any(a < 0 or n < 1 or a + n > d for a, n, d in
                                    zip(starts or (0,) * t.dim(), sizes, t.shape)):
        raise ValueError(f"box {tuple(sizes)} at {starts or 'the start'} does not fit a tensor of {tuple(t.shape)}")
    offset = t.storage_offset() + sum(a * s for a, s in zip(starts or (), t.stride()))
    return t.as_strided(sizes, t.stride(), offset)


class _ParameterBox(torch.autograd.Function):
    """``leading_box`` of a parameter whose backward adds into the parameter's gradient in place when it
    exists (and returns none), else returns a whole-parameter gradient as plain autograd would."""

    @staticmethod
    def forward(ctx, param: nn.Parameter, sizes: tuple[int, ...], starts: tuple[int, ...] | None
                ) -> torch.Tensor:
        ctx.param, ctx.sizes, ctx.starts = param, sizes, starts
        return leading_box(param, sizes, starts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        param = ctx.param
        if param.grad is not None and param.grad.shape == param.shape:
            leading_box(param.grad, ctx.sizes, ctx.starts).add_(grad)
            return None, None, None
        full = torch.zeros_like(param)
        leading_box(full, ctx.sizes, ctx.starts).copy_(grad)
        return full, None, None


def parameter_box(param: nn.Parameter, sizes: tuple[int, ...], starts: tuple[int, ...] | None = None,
                  in_place_grads: bool = False) -> torch.Tensor:
    """``leading_box`` of a parameter; with ``in_place_grads`` its gradient is added in place where one
    exists (module docstring)."""
    if not in_place_grads or not torch.is_grad_enabled() or not param.requires_grad or (
            starts is None and tuple(param.shape) == tuple(sizes)):
        return leading_box(param, sizes, starts)
    return _ParameterBox.apply(param, tuple(sizes), starts)


class ElasticConv2d(nn.Module):
    """A convolution elastic in input channels, output channels and kernel size ('same' padding).

    ``depthwise`` convolutions have one group per channel, so their width is the input's.
    """

    def __init__(self, max_in: int, max_out: int, kernel_sizes: tuple[int, ...] = (1,), stride: int = 1,
                 depthwise: bool = False, bias: bool = False) -> None:
        super().__init__()
        if depthwise and max_in != max_out:
            raise ValueError("a depthwise convolution has as many outputs as inputs")
        self.kernel_sizes = tuple(sorted(set(kernel_sizes), reverse=True))  # largest first
        self.max_kernel = self.kernel_sizes[0]
        self.max_in, self.max_out = max_in, max_out
        self.stride, self.depthwise = stride, depthwise
        self.in_place_grads = False  # see the module docstring
        k = self.max_kernel
        self.weight = nn.Parameter(torch.empty(max_out, 1 if depthwise else max_in, k, k))
        self.bias = nn.Parameter(torch.zeros(max_out)) if bias else None
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        for big, small in zip(self.kernel_sizes, self.kernel_sizes[1:]):
            self.register_parameter(self.transform_name(big, small), nn.Parameter(torch.eye(small * small)))

    @staticmethod
    def transform_name(big: int, small: int) -> str:
        return f"transform_{big}to{small}"

    def active_weight(self, out_channels: int, in_channels: int, kernel_size: int) -> torch.Tensor:
        """The weight of the active subnet: leading channels, then the transformed centre crops.

        The leading channels and the first crop are one view of the weight (``leading_box``), and each later
        crop one view of the transformed kernel, so that backward writes each into a full-size gradient once
        (two or three chained slices would each allocate and fill one: on a GPU bound by kernel launches,
        those launches are what the supernet's step costs beyond the static network's)."""
        if self.depthwise:
            in_channels = 1
        current = self.max_kernel
        if kernel_size == current:
            return parameter_box(self.weight, (out_channels, in_channels, current, current),
                                 in_place_grads=self.in_place_grads)
        w = self.weight
        for small in self.kernel_sizes[1:]:
            start = (current - small) // 2
            box = (out_channels, in_channels, small, small)
            crop = (parameter_box(w, box, (0, 0, start, start), self.in_place_grads) if w is self.weight else
                    leading_box(w, box, (0, 0, start, start)))
            matrix = getattr(self, self.transform_name(current, small))
            w = F.linear(crop.reshape(-1, small * small), matrix).reshape(crop.shape)
            current = small
            if current == kernel_size:
                return w
        raise ValueError(f"kernel size {kernel_size} not in {self.kernel_sizes}")

    def active_bias(self, out_channels: int) -> torch.Tensor | None:
        if self.bias is None:
            return None
        return parameter_box(self.bias, (out_channels,), in_place_grads=self.in_place_grads)

    def forward(self, x: torch.Tensor, out_channels: int, kernel_size: int) -> torch.Tensor:
        in_channels = x.shape[1]
        if self.depthwise:
            out_channels = in_channels
        w = self.active_weight(out_channels, in_channels, kernel_size)
        return F.conv2d(x, w, self.active_bias(out_channels), self.stride, kernel_size // 2, 1,
                        in_channels if self.depthwise else 1)


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the leading channels of its input (statistics sliced, updated in place)."""

    def __init__(self, max_channels: int) -> None:
        super().__init__(max_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.in_place_grads = False  # see the module docstring

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        factor = self.momentum if self.momentum is not None else 0.0
        if self.training:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average, as nn.BatchNorm2d (used by BN recalibration)
                factor = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c],
                            parameter_box(self.weight, (c,), in_place_grads=self.in_place_grads),
                            parameter_box(self.bias, (c,), in_place_grads=self.in_place_grads),
                            self.training, factor, self.eps)

    def static_state(self, channels: int) -> dict[str, torch.Tensor]:
        """State dict of a ``nn.BatchNorm2d(channels)`` holding the leading channels."""
        return {
            "weight": self.weight[:channels],
            "bias": self.bias[:channels],
            "running_mean": self.running_mean[:channels],
            "running_var": self.running_var[:channels],
            "num_batches_tracked": self.num_batches_tracked,
        }


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{key}": value for key, value in state.items()}


class ElasticConvBNAct(nn.Module):
    """Elastic counterpart of ``static.ConvBNAct``."""

    def __init__(self, max_in: int, max_out: int, kernel_sizes: tuple[int, ...] = (1,), stride: int = 1,
                 depthwise: bool = False, act: str | None = None) -> None:
        super().__init__()
        self.conv = ElasticConv2d(max_in, max_out, kernel_sizes, stride, depthwise)
        self.bn = ElasticBatchNorm2d(max_out)
        self.act = act

    def forward(self, x: torch.Tensor, out_channels: int, kernel_size: int = 1) -> torch.Tensor:
        return act_fn(self.bn(self.conv(x, out_channels, kernel_size)), self.act)

    def static_state(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> dict[str, torch.Tensor]:
        """State dict of the ``ConvBNAct`` (``0`` conv, ``1`` batch norm) of the active subnet."""
        state = {"0.weight": self.conv.active_weight(out_channels, in_channels, kernel_size)}
        state.update(prefixed("1.", self.bn.static_state(out_channels)))
        return state


class ElasticSqueezeExcite(nn.Module):
    """Elastic counterpart of ``static.SqueezeExcite``: leading channels and leading reduced channels."""

    def __init__(self, max_channels: int, max_reduced: int) -> None:
        super().__init__()
        self.reduce = ElasticConv2d(max_channels, max_reduced, bias=True)
        self.expand = ElasticConv2d(max_reduced, max_channels, bias=True)

    def forward(self, x: torch.Tensor, reduced: int) -> torch.Tensor:
        c = x.shape[1]
        s = x.mean((2, 3), keepdim=True)
        s = torch.relu(self.reduce(s, reduced, 1))
        return x * F.hardsigmoid(self.expand(s, c, 1))

    def static_state(self, channels: int, reduced: int) -> dict[str, torch.Tensor]:
        return {
            "reduce.weight": self.reduce.active_weight(reduced, channels, 1),
            "reduce.bias": self.reduce.active_bias(reduced),
            "expand.weight": self.expand.active_weight(channels, reduced, 1),
            "expand.bias": self.expand.active_bias(channels),
        }
