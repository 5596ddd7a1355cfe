"""Everywhere an initialization is asked for, accept a checkpoint/initialization path, `random` or `imagenet`.

* `random`: the encoder's timm initialization and EfficientNet's for the decoder and head.
* `imagenet`: ImageNet encoder weights (timm's hub, or the lite0 package offline) with a fresh decoder and head
  (the paper's "ImageNet-trained encoder" baseline).
* a path: a `model.safetensors` initialization, a `checkpoint.pt`, or a run folder holding either. A network with
  another number of classes (the joint-trained baseline's C+1) gets a fresh two-class head, as the reference did
  with `--do_not_restore_final_layer_weights`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fewshotseg.models.efficientlab import EfficientLab, ModelConfig, build_model, reset_head


def find_initialization(spec: str | Path) -> Path:
    path = Path(spec)
    if path.is_dir():
        for name in ("model.safetensors", "checkpoint.pt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: no model.safetensors or checkpoint.pt in this run folder")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such initialization; pass random, imagenet, a run folder or a file")
    return path


def load_initialization(spec: str, config: ModelConfig | None, *, num_classes: int = 2) -> tuple[EfficientLab, str]:
    """(model, one-line description). `config` supplies the architecture for `random` and `imagenet`, and the
    dropout and memory format for a file (None: the file's own)."""
    from fewshotseg.training.checkpoint import read_initialization

    if spec in ("random", "imagenet"):
        if config is None:
            raise ValueError(f"--init {spec} needs a model configuration (variant and encoder)")
        model = build_model(replace(config, num_classes=num_classes), encoder_weights=spec)
        what = "random initialization" if spec == "random" else f"ImageNet-trained {config.encoder} encoder"
        return model, f"{what} ({config.variant})"
    path = find_initialization(spec)
    saved, state, _ = read_initialization(path)
    if config is not None:
        saved = replace(saved, dropout=config.dropout, channels_last=config.channels_last)
    model = build_model(saved)
    model.load_state_dict(state, strict=True)
    what = f"{path} ({saved.variant}, {saved.encoder})"
    if saved.num_classes != num_classes:
        reset_head(model, num_classes)
        what += f"; its {saved.num_classes}-class head replaced by a fresh {num_classes}-class head"
    return model, what


def write_for_workers(spec: str, config: ModelConfig, path: Path, *, seed: int) -> str:
    """Resolve an initialization once and write it to `path` (what worker processes load); returns its description.

    `random` is seeded, so the same seed gives the same random network in every command and every process.
    """
    import torch

    from fewshotseg.training.checkpoint import save_initialization

    torch.manual_seed(seed)
    model, described = load_initialization(spec, config)
    save_initialization(path, model, {"described": described})
    return described
