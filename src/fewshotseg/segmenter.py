"""`FewShotSegmenter`: segment a new kind of object from a handful of labelled examples.

    from fewshotseg import FewShotSegmenter

    seg = FewShotSegmenter.from_pretrained("general")    # the shipped initialization, or a folder / run folder
    seg.fit(["a.jpg", "b.jpg"], ["a_mask.png", "b_mask.png"])
    for p in seg.predict(["new.jpg"]):
        p.mask          # (H, W) bool at the image's own size
        p.probability   # (H, W) float32 foreground probability
    seg.save_pretrained("my-segmenter")                  # the adapted network, with its card

Images may be paths, PIL images or numpy arrays ((H, W, 3) uint8, or float in [0, 1]); masks paths, PIL images or
(H, W) arrays (bool, {0, 1} or {0, 255}). Photos are turned upright by their EXIF orientation (masks too, see
`_oriented_mask`), resized once to the network's square input size, and the predicted probability map is resized back
to each image's own size before thresholding.

How the initialization is adapted comes from its card: the adaptation method (`card.adaptation`: fine-tuning with U,
the linear `probe`, `prototype` or the `rf` pixel classifier; see fewshotseg.adaptation) with its settings, and for
fine-tuning U's update parameters for the number of support images given. `fit(method=..., settings=...,
update_params=...)` says otherwise.

BatchNorm at prediction is part of the method's settings, so what was tuned and measured is what runs: U's
`bn_policy` for fine-tuning (``support``: statistics recomputed exactly from the support images, every query
normalised with them; ``transductive``: the statistics of the images of one `predict` call; ``paper``: the running
statistics U left), the frozen network's `stats` for probe and prototype. `fit(stats=...)` overrides U's regime:
``"support"``, ``"query-batch"`` (transductive) or ``"running"`` (paper); ``"card"`` (default) keeps U's own.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from fewshotseg.adaptation import (
    Adapter,
    FinetuneAdapter,
    FrozenFeatures,
    MethodSpec,
    OneClassSupportError,
    RFAdapter,
    make_adapter,
    settings_for,
)
from fewshotseg.data.images import ImageLike, load_image, no_signal, read_pair  # noqa: F401 (re-exported)
from fewshotseg.data.tasks import TaskTensors, episode_rng
from fewshotseg.errors import UserError
from fewshotseg.initializations.card import Card, read_card
from fewshotseg.initializations.pretrained import resolve_pretrained, save_pretrained
from fewshotseg.initializations.weights import find_initialization
from fewshotseg.meta_learning.update_routine import UpdateParams
from fewshotseg.models.efficientlab import ModelConfig
from fewshotseg.runs.device import choose_device

log = logging.getLogger(__name__)

STATS = ("card", "support", "query-batch", "running")
ADAPTER_FILE = "adapter.safetensors"  # a fitted frozen-feature method's head, beside the network
STATS_POLICY = {"support": "support", "query-batch": "transductive", "running": "paper"}


@dataclass
class Prediction:
    """One image's result: its mask and foreground probability at the image's own (upright) size."""

    mask: np.ndarray  # (H, W) bool at the input's own (upright) size
    probability: np.ndarray  # (H, W) float32 foreground probability


class FewShotSegmenter:
    """An initialization plus the update routine U that adapts it; `fit` adapts, `predict` segments."""

    def __init__(self, model: nn.Module, card: Card, *, device: str | torch.device = "cpu", described: str = ""):
        self.device = torch.device(device)
        self.card = card
        self.size = int(card.size)
        self.described = described or card.name
        self.init = model.to(self.device).eval()
        self._adapter: Adapter | None = None
        self.method: MethodSpec | None = None
        self.method_source = ""
        self.params: UpdateParams | None = None
        self.params_source = ""
        self.stats = "card"

    # ------------------------------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, spec: str | Path = "general", *, device: str = "auto", size: int = 0,
                        model_config: ModelConfig | None = None) -> FewShotSegmenter:
        """`general` (shipped with the package), a folder with `card.json` (`save_pretrained`'s), a run folder
        or `model.safetensors`, or `imagenet` / `random` (architecture from `model_config`).

        A folder that `save_pretrained` wrote after `fit` holds a fitted segmenter: it predicts at once (and `fit`
        adapts it again, from the network it holds)."""
        if multiclass_classes(spec):
            raise UserError(f"{spec} holds a segmenter of several classes ({', '.join(multiclass_classes(spec))}): "
                            "load it with fewshotseg.MultiClassSegmenter.from_pretrained")
        model, card, described = resolve_pretrained(str(spec), model_config=model_config, size=size)
        seg = cls(model, card, device=choose_device(device), described=described)
        fitted = (card.adaptation or {}).get("fitted")
        if fitted:
            seg._restore(Path(find_initialization(str(spec))).parent, fitted)
        return seg

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the segmenter: after `fit`, the fitted one (the adapted network, or the frozen network and the
        fitted head as `adapter.safetensors`), with a card that says how it was made, so `from_pretrained` gives
        a segmenter that predicts the same masks; before `fit`, the initialization."""
        card = copy.deepcopy(self.card)
        adapter = self._adapter
        if adapter is None or self.method is None:
            return save_pretrained(folder, self.init, card)
        if isinstance(adapter, RFAdapter):
            raise UserError("save_pretrained after an rf fit: a random forest can only be stored with pickle, which "
                            "fewshotseg never loads; keep the support pairs and fit again (seconds)")
        card.name = Path(folder).name
        card.summary = f"{self.card.name} adapted to {self._fitted} labelled image(s) with {self.method.describe()}."
        card.training = {**card.training, "adapted_from": self.described,
                         "adapted_with": self.params_source or self.method_source}
        card.metrics = []
        fitted: dict[str, Any] = {"support_images": self._fitted, "from": self.described}
        if self.params is not None:
            fitted["update_params"] = self.params.as_dict()
        card.adaptation = {**self.method.as_dict(), "source": self.method_source or "fit", "fitted": fitted}
        out = save_pretrained(folder, adapter.network(), card)
        tensors = adapter.tensors()
        if tensors:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu() for k, v in tensors.items()}, str(Path(out) / ADAPTER_FILE))
        return out

    def _restore(self, folder: Path, fitted: dict[str, Any]) -> None:
        spec = MethodSpec.of(self.card.adaptation["method"], self.card.adaptation.get("settings"))
        self.method, self.method_source = spec, self.card.adaptation.get("source", "saved fit")
        self._fitted = int(fitted.get("support_images", 0))
        if spec.method == "finetune":
            self.params = UpdateParams.from_dict(fitted["update_params"])
            self._adapter = FinetuneAdapter.restore(copy.deepcopy(self.init), self.params, self.device,
                                                    settings=settings_for("finetune", spec.as_dict()["settings"]))
            return
        from safetensors.torch import load_file

        path = folder / ADAPTER_FILE
        if not path.is_file():
            raise UserError(f"{folder}: its card says it holds a fitted {spec.method}, but {ADAPTER_FILE} is missing; "
                            "copy the whole folder that save_pretrained wrote")
        adapter = make_adapter(spec, device=self.device)
        if not isinstance(adapter, FrozenFeatures):
            raise UserError(f"{folder}: a fitted {spec.method} cannot be stored; fit again")
        self._adapter = type(adapter).restore(self.init, adapter.settings, load_file(str(path)), self.device)

    @property
    def fitted(self) -> bool:
        """Whether `predict` can run: after `fit`, or when loaded from a fitted segmenter's folder."""
        return self._adapter is not None

    # ------------------------------------------------------------------------------------------ U

    def update_params_for(self, shots: int, *, preset: str = "card", file: str | Path | None = None,
                          **overrides: Any) -> tuple[UpdateParams, str]:
        """U's hyperparameters for `shots` support images and where they came from: the card (default), the paper's
        Table 3 (`preset="paper"`), or a file written by `tune`; `overrides` replace single fields."""
        from fewshotseg.initializations.adapting import resolve_card_update_params

        return resolve_card_update_params(self.card, shots, preset=preset, file=file, **overrides)

    def method_for(self, method: str = "card", *, settings: dict[str, Any] | None = None,
                   file: str | Path | None = None) -> tuple[MethodSpec, str]:
        """The adaptation method and its settings, and where they came from: the card's own (`method="card"`), or
        the named method with the card's settings for it (else its defaults), a file, then single `settings`."""
        from fewshotseg.initializations.adapting import resolve_method

        return resolve_method(self.card, method, settings=settings, file=file)

    def fit(self, images: list[ImageLike], masks: list[ImageLike], *, seed: int = 0,
            update_params: UpdateParams | None = None, stats: str = "card", names: list[str] | None = None,
            method: str | MethodSpec = "card", settings: dict[str, Any] | None = None,
            progress=None, allow_empty: bool = False) -> FewShotSegmenter:
        """Adapt the initialization to labelled examples: with the card's method (fine-tuning with U, the card's
        update parameters for this many shots, unless `update_params` is given) or the one named by `method`.
        Support pairs without foreground are refused with their names, unless `allow_empty` keeps them as examples
        of background (a one-vs-rest class of `MultiClassSegmenter`: an image without that class)."""
        if stats not in STATS:
            raise UserError(f"stats {stats!r}: choose one of {', '.join(STATS)}")
        if len(images) != len(masks):
            raise UserError(f"{len(images)} support image(s) but {len(masks)} mask(s): give one mask per image")
        if not images:
            raise UserError("no support image: give at least one labelled image")
        names = names or [_name(x, i) for i, x in enumerate(images)]
        xs, ys, empty = [], [], []
        for name, image, mask in zip(names, images, masks, strict=True):
            rgb, m = read_pair(image, mask, name)
            if not m.any() and not allow_empty:
                empty.append(name)
                continue
            if (reason := no_signal(rgb.shape[:2], m.astype(np.uint8))) is not None:
                raise UserError(f"support pair {name}: {reason}")
            xs.append(_resize_image(rgb, self.size))
            ys.append(np.asarray(Image.fromarray(m.astype(np.uint8)).resize((self.size, self.size), Image.Resampling.NEAREST)))
        if empty:
            raise UserError(f"support mask(s) without any foreground: {', '.join(empty)}; every support image needs "
                            "the object marked in its mask (or leave that image out)")
        spec, spec_source = (method, "given") if isinstance(method, MethodSpec) else self.method_for(method,
                                                                                                    settings=settings)
        params, source = None, ""
        if spec.method == "finetune":
            params, source = (update_params, "given") if update_params is not None else self.update_params_for(len(xs))
            params = with_stats(params, stats)
        self.method, self.method_source = spec, spec_source
        self.params, self.params_source, self.stats = params, source, stats
        task = TaskTensors.from_arrays(np.stack(xs), np.stack(ys))
        previous = self._adapter if isinstance(self._adapter, FinetuneAdapter) else None
        adapter = make_adapter(spec, params=self.params, device=self.device,
                               learner=previous.learner if previous is not None else None)
        try:
            adapter.fit(self.init, task, episode_rng(seed, 10), on_step=progress)
        except OneClassSupportError as err:
            raise OneClassSupportError(f"support images {', '.join(names)}: {err}") from None
        self._adapter = adapter
        self._fitted = len(xs)
        return self

    # ------------------------------------------------------------------------------------------ prediction

    @torch.no_grad()
    def predict(self, images: list[ImageLike], *, threshold: float = 0.5, batch_size: int = 16) -> list[Prediction]:
        """One `Prediction` per image, at the image's own (upright) size."""
        if self._adapter is None:
            raise UserError("predict before fit: adapt the segmenter to labelled examples first (fit)")
        rgbs = [load_image(x, _name(x, i)) for i, x in enumerate(images)]
        if not rgbs:
            return []
        small = torch.from_numpy(np.stack([_resize_image(x, self.size) for x in rgbs])).permute(0, 3, 1, 2)
        small = small.float().div_(255)
        probs = self._probabilities(small, batch_size)
        out = []
        for rgb, p in zip(rgbs, probs, strict=True):
            h, w = rgb.shape[:2]
            full = np.asarray(Image.fromarray(p.numpy().astype(np.float32), mode="F").resize(
                (w, h), Image.Resampling.BILINEAR))
            out.append(Prediction(full > threshold, full))
        return out

    def _probabilities(self, images: torch.Tensor, batch_size: int) -> torch.Tensor:
        assert self._adapter is not None
        return self._adapter.predict(images, batch_size=batch_size)

    @property
    def model(self) -> nn.Module:
        """The network: fine-tuned by the last `fit` with U, else the initialization (frozen methods)."""
        if isinstance(self._adapter, FinetuneAdapter) and self._adapter.model is not None:
            return self._adapter.model
        return self.init


# ------------------------------------------------------------------------------------------ helpers


def multiclass_classes(spec: str | Path) -> list[str]:
    """The class names of a folder that `MultiClassSegmenter.save_pretrained` wrote; [] for anything else."""
    folder = Path(str(spec))
    card = read_card(folder) if folder.is_dir() else None
    fitted = (card.adaptation or {}).get("fitted") if card is not None else None
    return list(fitted.get("classes") or []) if isinstance(fitted, dict) else []


def with_stats(params: UpdateParams, stats: str) -> UpdateParams:
    """U with the BatchNorm regime `stats` names at prediction ("card": U's own)."""
    return params if stats == "card" else params.replace(bn_policy=STATS_POLICY[stats])


def _name(x: ImageLike, i: int) -> str:
    return str(x) if isinstance(x, (str, Path)) else f"image {i + 1}"


def _resize_image(rgb: np.ndarray, size: int) -> np.ndarray:
    if rgb.shape[:2] == (size, size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))


