"""Decoders of EfficientLab: the residual skip decoder (RSD) and the DeepLab-style ablation of the paper's Table 1.

RSD, exactly as paper §4 / Fig. 1 and REFERENCE §1.2, for deep features Z (C_up channels) and a skip S (C_s):

    up  = bilinear_resize(Z, size(S), align_corners=True)
    cat = concat(up, S)                                        # C_up + C_s
    b0  = BN(swish(conv1x1(cat)))                              # C
    b1  = BN(swish(conv3x3(cat, dilation=2)))                  # C
    b2  = mean_HW(cat) broadcast back to H x W                 # C_up + C_s, no parameters
    out = BN(swish(conv3x3(concat(b0, b1, b2))))               # C
    out = out + up                                             # the residual: upsampled deep features

The order is conv -> swish -> BN, as in the reference code. C is 112 for EfficientNet-B0, i.e. the encoder's
stride-16 width, so the residual adds without a projection; when C_up != C the deep features are first projected
(conv1x1 -> swish -> BN), which the reference also does (it never triggers for B0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvSwishBN(nn.Sequential):
    """conv (with bias) -> swish -> BN, the reference's `conv_nl_bn_branch` order."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 1, dilation: int = 1):
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, padding=padding, dilation=dilation, bias=True),
            nn.SiLU(inplace=True),
            nn.BatchNorm2d(cout),
        )


class ResidualSkipDecoder(nn.Module):
    def __init__(self, deep_channels: int, skip_channels: int, channels: int, residual: bool = True):
        super().__init__()
        cat = deep_channels + skip_channels
        self.project = ConvSwishBN(deep_channels, channels) if deep_channels != channels else None
        self.branch1x1 = ConvSwishBN(cat, channels, 1)
        self.branch3x3 = ConvSwishBN(cat, channels, 3, dilation=2)
        self.fuse = ConvSwishBN(2 * channels + cat, channels, 3)
        self.residual = residual
        self.out_channels = channels

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = deep
        if deep.shape[-2:] != skip.shape[-2:]:
            up = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        cat = torch.cat([up, skip], dim=1)  # (B, C_up + C_s, H, W)
        branches = torch.cat([self.branch1x1(cat), self.branch3x3(cat)], dim=1)  # (B, 2C, H, W)
        conv, swish, bn = self.fuse
        n = branches.shape[1]
        out = F.conv2d(branches, conv.weight[:, :n], conv.bias, padding=1)
        # The pooling branch is the global mean of `cat` broadcast over H x W; the fuse conv's response to that
        # constant map is computed exactly without building it (the same weights, ~40 % of the conv's FLOPs saved).
        out = out + constant_map_conv3x3(cat.mean(dim=(2, 3)), conv.weight[:, n:], cat.shape[-2:])
        out = bn(swish(out))
        if self.residual:
            out = out + (self.project(up) if self.project is not None else up)
        return out


def constant_map_conv3x3(values: torch.Tensor, weight: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """conv2d(values broadcast to an H x W map, weight, padding=1) for values (B, C) and weight (O, C, 3, 3).

    Each output pixel sums the taps that fall inside the image: sum_ij (W_ij . values) [y+i-1 in range] [x+j-1 in
    range], with separable in-range masks.
    """
    h, w = size
    taps = torch.einsum("ocij,bc->boij", weight, values)  # (B, O, 3, 3)
    offsets = torch.arange(3, device=values.device)[:, None] - 1
    rows = ((torch.arange(h, device=values.device) + offsets >= 0) & (torch.arange(h, device=values.device) + offsets < h))
    cols = ((torch.arange(w, device=values.device) + offsets >= 0) & (torch.arange(w, device=values.device) + offsets < w))
    return torch.einsum("boij,iy,jx->boyx", taps, rows.to(taps.dtype), cols.to(taps.dtype))


class RSDStack(nn.Module):
    """EfficientLab's decoder: RSD modules applied deepest first.

    `stages` names the skip each module uses: "deep" is the stride-16 map itself (the paper's stage 6: the
    reference concatenates the encoder output with itself and its "upsample" is the identity), "skip" the stride-4
    map (the paper's stage 3). EfficientLab-3 is ("skip",), EfficientLab-6-3 is ("deep", "skip").
    """

    def __init__(self, skip_channels: int, deep_channels: int, stages: tuple[str, ...], residual: bool = True):
        super().__init__()
        self.stages = stages
        modules, cin = [], deep_channels
        for stage in stages:
            cs = deep_channels if stage == "deep" else skip_channels
            modules.append(ResidualSkipDecoder(cin, cs, deep_channels, residual=residual))
            cin = deep_channels
        self.rsd = nn.ModuleList(modules)
        self.out_channels = deep_channels

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        x = deep
        for stage, module in zip(self.stages, self.rsd, strict=True):
            x = module(x, deep if stage == "deep" else skip)
        return x


class SeparableConvBNSwish(nn.Sequential):
    """depthwise 3x3 -> BN -> swish -> pointwise 1x1 -> BN -> swish (DeepLabv3+'s decoder conv)."""

    def __init__(self, channels: int):
        super().__init__(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.BatchNorm2d(channels),
            nn.SiLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.SiLU(inplace=True),
        )


class DeepLabV3PlusDecoder(nn.Module):
    """The DeepLab-style decoder of the paper's Table 1 ablation ("Auto-DeepLab decoder", REFERENCE §1.3).

    ASPP on the stride-16 features (1x1 branch, 3x3 dilation-6 branch, image pooling; no BN and dropout 0.5 as the
    reference), then DeepLabv3+ skip decoding at stride 4 (skip projected to C/2, two separable convs). Two reference
    bugs are fixed: the image-pool branch is a real 1x1 conv on the pooled channel vector broadcast back over H x W
    (the reference treated the (N, C, 1, 1) means as a C x 1 one-channel image), and the skip-decoding BN follows
    train/eval mode (the reference hard-coded batch statistics even at prediction).
    """

    def __init__(self, skip_channels: int, deep_channels: int, aspp_dropout: float = 0.5, dilation: int = 6):
        super().__init__()
        c = deep_channels
        self.aspp1x1 = nn.Conv2d(c, c, 1)
        self.aspp3x3 = nn.Conv2d(c, c, 3, padding=dilation, dilation=dilation)
        self.aspp_pool = nn.Conv2d(c, c, 1)
        self.aspp_project = nn.Conv2d(3 * c, c, 1)
        self.dropout = nn.Dropout(aspp_dropout)
        self.act = nn.SiLU(inplace=True)
        self.skip_project = nn.Sequential(
            nn.Conv2d(skip_channels, c // 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.SiLU(inplace=True)
        )
        self.refine = nn.Sequential(SeparableConvBNSwish(c + c // 2), SeparableConvBNSwish(c + c // 2))
        self.out_channels = c + c // 2

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        branch = lambda conv, x: self.dropout(self.act(conv(x)))  # noqa: E731
        pooled = branch(self.aspp_pool, deep.mean(dim=(2, 3), keepdim=True)).expand_as(deep)
        x = torch.cat([pooled, branch(self.aspp3x3, deep), branch(self.aspp1x1, deep)], dim=1)
        x = branch(self.aspp_project, x)
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self.refine(torch.cat([x, self.skip_project(skip)], dim=1))
