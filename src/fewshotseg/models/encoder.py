"""The EfficientLab encoder: a timm `features_only` EfficientNet/MobileNet cut after its stride-16 stage.

The paper's encoder is EfficientNet-B0 with stages 7-8 and the classification head removed (REFERENCE §1.1): for B0
that keeps the stem and 11 MBConv blocks, and the deepest feature map has 112 channels at stride 16. Any timm model of
the EfficientNet/MobileNet family works the same way, because their feature pyramids all report reductions
2, 4, 8, 16, 32; we take the stride-4 map as the decoder's skip and the stride-16 map as its input, and delete every
block after the stride-16 stage so that no unused parameter remains (an unused parameter would still be L2-penalised
and meta-updated).
"""

from __future__ import annotations

import gc
import sys
from types import ModuleType

import torch
from torch import nn

SKIP_STRIDE = 4
DEEP_STRIDE = 16


def import_timm() -> ModuleType:
    """timm, imported with Python's cyclic garbage collector paused (its state is restored after).

    timm imports torchvision and, through it, torch._dynamo: hundreds of thousands of objects, all kept for the life of
    the process. With the collector on, CPython runs its full collections over them again and again while they are
    being created; pausing it took a third off the import (`bench/adapt_latency.py` prints the import's share)."""
    if "timm" in sys.modules:
        return sys.modules["timm"]
    enabled = gc.isenabled()
    gc.disable()
    try:
        import timm
    finally:
        if enabled:
            gc.enable()
    return timm


class Encoder(nn.Module):
    def __init__(self, name: str, *, pretrained: bool = False, drop_path_rate: float = 0.0):
        super().__init__()
        timm = import_timm()  # here, not at the top: timm imports torchvision (and torch._dynamo), a second or more

        try:
            # out_indices (1, 3) are the stride-4 and stride-16 levels of the 5-level (2..32) pyramid.
            body = timm.create_model(
                name, features_only=True, out_indices=(1, 3), pretrained=pretrained, drop_path_rate=drop_path_rate
            )
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise ValueError(f"unknown timm encoder {name!r}; e.g. tf_efficientnet_b0, tinynet_e, "
                                 "mobilenetv3_small_100, tf_efficientnet_lite0") from err
            raise
        reductions = body.feature_info.reduction()
        if reductions != [SKIP_STRIDE, DEEP_STRIDE] or not hasattr(body, "blocks"):
            raise ValueError(
                f"encoder {name!r} is not an EfficientNet/MobileNet-family model with stride-4 and stride-16 "
                f"features (its feature reductions are {reductions})"
            )
        # Keep the blocks up to the stage that produces the stride-16 features; drop the rest (stride-32 stages).
        deep_module = body.feature_info.module_name()[1]  # e.g. "blocks.4"
        last_stage = int(deep_module.split(".")[1])
        body.blocks = body.blocks[: last_stage + 1]
        self.body = body
        self.name = name
        self.channels: tuple[int, int] = tuple(body.feature_info.channels())  # (skip, deep)
        self.strides = (SKIP_STRIDE, DEEP_STRIDE)

    @property
    def num_blocks(self) -> int:
        return sum(len(stage) for stage in self.body.blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip, deep = self.body(x)  # (B, C4, H/4, W/4), (B, C16, H/16, W/16)
        return skip, deep
