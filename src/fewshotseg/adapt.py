"""`fewshotseg adapt`: adapt an initialization to a user's labelled images and segment new ones.

    support folder (image + mask pairs) --U--> adapted network --> for every query image:
        <out>/<name>_mask.png     binary mask (0/255) at the query image's own size
        <out>/<name>_overlay.png  the query with the predicted foreground tinted red
    optionally <out>/adapted.safetensors (weights + config) and <out>/adapted.onnx (image in [0, 1] ->
    foreground probability, any batch size).

Images are resized to the network's square input size for adaptation and prediction; the predicted probability
map is resized back to each query's original size before thresholding.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fewshotseg.config import ModelFields, option
from fewshotseg.data.dataset import DataError
from fewshotseg.data.tasks import TaskTensors, episode_rng
from fewshotseg.meta_learning.update_routine import Learner, UpdateParams

log = logging.getLogger(__name__)


@dataclass
class AdaptConfig(ModelFields):
    init: str = option("", "initialization: a checkpoint or run folder (e.g. from meta-train), imagenet or random",
                       required=True)
    support: str = option("", "folder of labelled pairs: name.jpg + name_mask.png, or FSS-style 1.jpg + 1.png",
                          required=True)
    query: str = option("", "folder of images to segment (or one image)", required=True)
    out: str = option("", "output folder for masks, overlays and optional weights", required=True)
    update_params: str = option("", "U's hyperparameters (from `tune`); default: the paper's Table 3")
    size: int = option(0, "network input size (0: the size the initialization was trained at, else 224)")
    threshold: float = option(0.5, "foreground probability threshold")
    save_weights: bool = option(False, "also write the adapted network to adapted.safetensors")
    onnx: bool = option(False, "also export the adapted network to adapted.onnx")
    seed: int = option(0, "seed of U's augmentation and batching")
    device: str = option("auto", "cpu, cuda or auto")


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with foreground pixels tinted red (paper Fig. 2)."""
    out = image.astype(np.float32)
    red = np.array([255.0, 0.0, 0.0])
    out[mask] = (1 - alpha) * out[mask] + alpha * red
    return out.round().astype(np.uint8)


class Probabilities(torch.nn.Module):
    """The exported graph: image batch in [0, 1] -> foreground probability (B, H, W)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(dim=1)[:, 1]


def export_onnx(model: torch.nn.Module, size: int, path: Path) -> None:
    wrapper = Probabilities(model).eval()
    example = torch.rand(1, 3, size, size)
    torch.onnx.export(wrapper, (example,), str(path), input_names=["image"], output_names=["foreground"],
                      dynamic_axes={"image": {0: "batch"}, "foreground": {0: "batch"}}, dynamo=False)


def adapt(cfg: AdaptConfig) -> dict:
    from fewshotseg.data.folder import list_queries, load_support
    from fewshotseg.data.images import read_image
    from fewshotseg.runs.device import choose_device
    from fewshotseg.runs.initialization import (
        find_initialization,
        load_initialization,
        read_initialization,
        save_initialization,
    )

    params = UpdateParams.load(cfg.update_params) if cfg.update_params else UpdateParams()
    size = cfg.size
    if not size and cfg.init not in ("random", "imagenet"):
        size = int(read_initialization(find_initialization(cfg.init))[2].get("size") or 0)
    size = size or 224
    device = choose_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model, described = load_initialization(cfg.init, cfg.model_config(dropout=params.dropout))
    model.to(device)

    images, masks, problems = load_support(cfg.support, size)
    queries = list_queries(cfg.query)
    if not queries:
        raise DataError(f"{cfg.query}: no .jpg/.jpeg/.png image to segment")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"adapting {described} to {len(images)} support pair(s) at {size} px "
          f"(U: lr {params.lr:g}, {params.steps} steps, batch {params.batch_size})")

    learner = Learner(model, device)
    init = _frozen_copy(model)
    learner.adapt(init, TaskTensors.from_arrays(images, masks), params, episode_rng(cfg.seed, 10))

    written, failed = [], []
    for path in queries:
        try:
            image = read_image(path)
        except DataError as err:
            failed.append(f"{path}: {err}")
            log.warning("skipped query %s", err)
            continue
        small = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
        prob = learner.predict(TaskTensors.from_arrays(small[None], np.zeros((1, size, size))).images)[0].numpy()
        full = np.asarray(Image.fromarray(prob.astype(np.float32), mode="F").resize(image.shape[1::-1], Image.BILINEAR))
        mask = full > cfg.threshold
        stem = path.stem
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{stem}_mask.png")
        Image.fromarray(overlay(image, mask)).save(out / f"{stem}_overlay.png")
        written.append({"query": str(path), "mask": str(out / f"{stem}_mask.png"),
                        "foreground_fraction": float(mask.mean())})
    if cfg.save_weights:
        save_initialization(out / "adapted.safetensors", learner.model, {"size": size, "adapted_from": described})
    if cfg.onnx:
        export_onnx(learner.model.cpu(), size, out / "adapted.onnx")
    summary = {"init": described, "size": size, "support_pairs": len(images), "support_problems": len(problems),
               "update_params": params.as_dict(), "queries": written, "failed": failed}
    (out / "adapt.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).eval()
