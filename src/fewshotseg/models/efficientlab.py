"""EfficientLab (paper §4): an EfficientNet encoder, residual skip decoders, dropout and a 1x1 classifier.

    x (B, 3, H, W) in [0, 1] -> normalise -> encoder -> (skip (B, C4, H/4, W/4), deep (B, C16, H/16, W/16))
      -> decoder (B, C, H/4, W/4) -> dropout -> 1x1 conv (B, classes, H/4, W/4) -> bilinear to (B, classes, H, W)

The model returns logits; the softmax over the class axis gives probabilities. Input
normalisation lives inside the model (as in the reference graph), so every caller feeds images in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewshotseg.config import option
from fewshotseg.models.encoder import Encoder, import_timm
from fewshotseg.models.residual_skip_decoder import DeepLabV3PlusDecoder, RSDStack

# name -> (decoder kind, RSD stages, RSD residual). The paper's Table 1 rows.
VARIANTS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "efficientlab-3": ("rsd", ("skip",), True),  # one RSD on the stride-4 skip (paper stage 3)
    "efficientlab-6-3": ("rsd", ("deep", "skip"), True),  # RSD at stage 6 (stride 16), then stage 3
    "efficientlab-3-no-residual": ("rsd", ("skip",), False),  # the ablation the reference's flag ignored
    "deeplabv3plus": ("deeplab", (), True),  # the DeepLab-style decoder of Table 1
}


@dataclass
class ModelConfig:
    """EfficientLab's architecture and its regularisation: variant (paper Table 1), timm encoder, classes, dropout,
    BatchNorm momentum, drop-connect, memory format."""

    variant: str = "efficientlab-3"
    encoder: str = "tf_efficientnet_b0"  # the paper's; tinynet_e / mobilenetv3_small_100 for CPU runs
    num_classes: int = 2  # background, foreground; joint training uses train classes + 1
    dropout: float = 0.2  # paper: one dropout layer, after all BN layers, before the classifier
    # TF's BN momentum 0.99 (REFERENCE §1.1) is PyTorch's 0.01: running statistics move 1 % per step.
    bn_momentum: float = 0.01
    # Drop-connect: the reference ran it (rate 0.2 scaled per block) while adapting; the paper does not mention it.
    drop_path_rate: float = 0.0
    channels_last: bool = True  # measured faster on CPU (bench/model_throughput.py)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")


@dataclass
class ModelFields:
    """The model fields of every command's settings that builds a network (`config.option` fields: flags, limits)."""

    variant: str = option("efficientlab-3", "EfficientLab variant (paper: efficientlab-3; best: efficientlab-6-3)",
                          choices=tuple(VARIANTS))
    encoder: str = option("tf_efficientnet_b0", "timm encoder name (paper: tf_efficientnet_b0)")
    bn_momentum: float = option(0.01, "BN running-statistics momentum, PyTorch convention (TF 0.99 = 0.01)")
    drop_path_rate: float = option(0.0, "drop-connect rate of the encoder (reference code: 0.2; paper: none)")
    channels_last: bool = option(True, "channels-last memory format (faster on CPU and GPU)")

    def model_config(self, num_classes: int = 2, dropout: float = 0.2) -> ModelConfig:
        return ModelConfig(
            variant=self.variant, encoder=self.encoder, num_classes=num_classes, dropout=dropout,
            bn_momentum=self.bn_momentum, drop_path_rate=self.drop_path_rate, channels_last=self.channels_last,
        )


class EfficientLab(nn.Module):
    """EfficientNet encoder cut at stride 16, residual skip decoder(s), dropout and a 1x1 classifier; images in
    [0, 1] -> logits at the input's size (the module docstring has the shapes)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.encoder, drop_path_rate=config.drop_path_rate)
        skip_ch, deep_ch = self.encoder.channels
        kind, stages, residual = VARIANTS[config.variant]
        if kind == "rsd":
            self.decoder = RSDStack(skip_ch, deep_ch, stages, residual=residual)
        else:
            self.decoder = DeepLabV3PlusDecoder(skip_ch, deep_ch)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Conv2d(self.decoder.out_channels, config.num_classes, 1))
        cfg = self.encoder.body.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1), False)
        init_decoder_and_head(self)
        set_bn_momentum(self, config.bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip, deep = self.encoder((x - self.mean) / self.std)
        logits = self.head(self.decoder(skip, deep))  # (B, classes, H/4, W/4)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)

    def set_dropout(self, rate: float) -> None:
        self.head[0].p = rate


def init_decoder_and_head(model: EfficientLab) -> None:
    """EfficientNet's initialisation for the decoder and head, as paper footnote 8 says.

    Conv kernels ~ N(0, sqrt(2 / fan_out)) with fan_out = k*k*out/groups, biases 0, BN gamma 1 and beta 0. For the
    final 1x1 conv to two classes this is N(0, 1), the reference's value. (The reference's RSD convs used TF's
    Glorot-uniform default instead, contradicting the footnote; we follow the paper.)
    """
    for module in [*model.decoder.modules(), *model.head.modules()]:
        if isinstance(module, nn.Conv2d):
            init_conv(module)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def init_conv(conv: nn.Conv2d) -> None:
    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def reset_head(model: EfficientLab, num_classes: int = 2) -> None:
    """A fresh classifier for `num_classes` (how a joint-trained network becomes a two-class initialization)."""
    old = model.head[1]
    model.head[1] = nn.Conv2d(old.in_channels, num_classes, 1).to(old.weight.device)
    model.config.num_classes = num_classes
    init_conv(model.head[1])
    if model.config.channels_last:
        model.head[1].to(memory_format=torch.channels_last)


def build_model(config: ModelConfig, *, encoder_weights: str = "random") -> EfficientLab:
    """Build EfficientLab; `encoder_weights` is "random", "imagenet" or a local timm-named weights file."""
    import_timm()  # before the module below imports it, so that it comes with the collector paused
    from fewshotseg.models.pretrained import load_encoder_weights

    model = EfficientLab(config)
    if encoder_weights != "random":
        load_encoder_weights(model.encoder, encoder_weights)
        set_bn_momentum(model, config.bn_momentum)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def describe(model: EfficientLab, size: int = 224) -> str:
    """A plain-text summary: trainable parameters per part, feature channels and strides at `size` px."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        x = torch.zeros(1, 3, size, size)
        skip, deep = model.encoder((x - model.mean) / model.std)
        decoded = model.decoder(skip, deep)
    model.train(was_training)
    buffers = sum(b.numel() for name, b in model.named_buffers() if "running" in name)
    cfg = model.config
    rows = [
        f"EfficientLab variant {cfg.variant} with encoder {cfg.encoder} "
        f"({model.encoder.num_blocks} encoder blocks kept, cut after stride {model.encoder.strides[1]})",
        f"trainable parameters: {count_parameters(model):,} (+{buffers:,} BN running statistics)",
        f"  encoder: {count_parameters(model.encoder):,}",
        f"  decoder: {count_parameters(model.decoder):,}",
        f"  head:    {count_parameters(model.head):,}",
        f"features at {size} px input:",
        f"  skip     {skip.shape[1]:4d} ch, stride {size // skip.shape[-1]:2d}, {skip.shape[-2]}x{skip.shape[-1]}",
        f"  deep     {deep.shape[1]:4d} ch, stride {size // deep.shape[-1]:2d}, {deep.shape[-2]}x{deep.shape[-1]}",
        f"  decoder  {decoded.shape[1]:4d} ch, stride {size // decoded.shape[-1]:2d}, "
        f"{decoded.shape[-2]}x{decoded.shape[-1]}",
        f"  output   {cfg.num_classes:4d} ch, stride  1, {size}x{size}",
    ]
    return "\n".join(rows)


