"""Test fixtures' trained-enough classifiers: a subnet's classifier fitted to its own features by ridge regression.

The quantisation tests need subnets that classify digits well above chance (so int8 against fp32 means
something) without training a supernet: the features of a seeded network are good enough once the last layer is
solved for in closed form.
"""

from __future__ import annotations

import torch


def ridge_classifier(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, alpha: float = 1.0,
                     classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of the linear classifier that maps ``net``'s classifier inputs on images ``x`` to
    one-hot targets of ``y`` (scaled to +-5) by ridge regression of strength ``alpha``; ``net`` is run in eval
    mode without gradients, and its ``head.classifier`` is read, not changed."""
    features: list[torch.Tensor] = []
    hook = net.head.classifier.register_forward_hook(lambda m, i, o: features.append(i[0]))
    with torch.no_grad():
        net.eval()(x)
    hook.remove()
    f = torch.cat([features[0].double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    targets = 10 * torch.nn.functional.one_hot(y, classes).double() - 5
    w = torch.linalg.solve(f.T @ f + alpha * torch.eye(f.shape[1], dtype=torch.float64), f.T @ targets)
    return w[:-1].T.float(), w[-1].float()


def set_classifier(module: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Copy ``weight`` and ``bias`` into ``module.head.classifier``."""
    with torch.no_grad():
        module.head.classifier.weight.copy_(weight)
        module.head.classifier.bias.copy_(bias)
