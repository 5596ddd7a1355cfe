"""BatchNorm folded into the convolution before it, for a frozen network in eval mode.

A frozen network's BatchNorm layers (eval mode: fixed statistics) are affine maps per channel, so each one that
directly follows a convolution can be folded into that convolution's weights and bias (`torch.nn.utils.fusion`),
leaving only its activation. The probe and the prototype read the frozen network's features many times per task
(every support and query image, and their mirror images); on a CPU the folded encoder is about a quarter faster
(`bench/adapt_latency.py`), with the same features up to float rounding.

`fold_batchnorm` returns a folded copy (the network itself is never changed: its unfolded form is what gets saved)
and checks it against the network on a small seeded input; where the two disagree (a layout it does not know) it
warns and returns the network itself, which is slower but never wrong.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

CHECK_SIZE = 64  # px of the seeded input on which the folded copy is compared with the network
CHECK_TOLERANCE = 1e-3  # largest difference allowed, relative to the largest output


def _without_norm(bn: nn.BatchNorm2d) -> nn.Module | None:
    """What remains of a BatchNorm layer once its affine map is folded away, or None for a kind not known here."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if type(bn).__name__ == "BatchNormAct2d" and hasattr(bn, "drop") and hasattr(bn, "act"):  # timm's BN + act
        return nn.Sequential(bn.drop, bn.act)
    return None


def _fold_pairs_(model: nn.Module) -> int:
    """Folds, in place, each eval-mode BatchNorm2d that is the next child after a Conv2d in the same parent (the
    order in which timm's EfficientNet blocks and the decoder apply them). Returns how many were folded."""
    folded = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (_, conv), (name, bn) in zip(children, children[1:], strict=False):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)) or bn.training:
                continue
            if bn.running_mean is None or bn.running_var is None or conv.out_channels != bn.num_features:
                continue
            rest = _without_norm(bn)
            if rest is None:
                continue
            weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                                bn.weight, bn.bias)
            conv.weight, conv.bias = weight, bias
            setattr(parent, name, rest)
            folded += 1
    return folded


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode, for inference only) with its BatchNorm layers folded into the convolutions
    before them; `model` itself when nothing could be folded or the copy does not match it (with a warning)."""
    if model.training:
        raise ValueError("fold_batchnorm: put the network in eval mode first (folding fixes its BatchNorm statistics)")
    folded = copy.deepcopy(model).requires_grad_(False)
    if _fold_pairs_(folded) == 0:
        return model
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, CHECK_SIZE, CHECK_SIZE, generator=generator).to(device)
    expected, got = model(x), folded(x)
    scale = expected.abs().max().clamp(min=1.0)
    if got.shape != expected.shape or not bool(((got - expected).abs().max() <= CHECK_TOLERANCE * scale).item()):
        warnings.warn(f"fold_batchnorm: the folded copy of {type(model).__name__} does not match it; using the "
                      "network as it is (slower, same results)", RuntimeWarning, stacklevel=2)
        return model
    return folded
