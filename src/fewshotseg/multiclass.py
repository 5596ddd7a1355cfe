"""`MultiClassSegmenter`: several kinds of object at once, from support images labelled with several classes.

    from fewshotseg import MultiClassSegmenter

    seg = MultiClassSegmenter.from_pretrained("general")
    seg.fit(["a.jpg", "b.jpg"], ["a.png", "b.png"], classes=["cat", "dog"])   # indexed masks: 1 cat, 2 dog
    seg.fit(["a.jpg", "b.jpg"], {"cat": ["a.cat.png", None], "dog": [None, "b.dog.png"]})  # one mask per class
    for p in seg.predict(["new.jpg"]):
        p.labels          # (H, W) uint8: 0 background, k = seg.classes[k - 1]
        p.probabilities   # (K, H, W) float32: each class's probability
        p.masks["cat"]    # (H, W) bool; the classes' masks never overlap
        p.contested       # pixels that two or more classes claimed (above the threshold)
    seg.save_pretrained("my-segmenter")   # `fewshotseg predict --model my-segmenter` labels a folder with it

Masks: a list of indexed masks, one per image ((H, W) integers, or a palette / grayscale PNG whose index values are
the classes: 0 background, k the class `classes[k - 1]`; `classes` may instead map mask values to names, e.g.
{8: "cat", 12: "dog"}), or a dict {class name: one binary mask per image, None where the image shows none of it}.
A value no class names, a class with no pixel in any support mask, and two classes marking one pixel are refused.

Two strategies (`strategy`):
  * ``one-vs-rest``: one `FewShotSegmenter` per class, fit on every support image with that class's pixels as the
    object and everything else (the background and the other classes) as background; any adaptation method;
  * ``joint`` (the probe only): one softmax head over the background and the K classes on the frozen features
    (`adaptation.joint.JointProbe`), fit once.
``auto`` (default) takes `DEFAULT_STRATEGY` for the probe, one-vs-rest for every other method.

Overlaps: a pixel belongs to class k when k's probability is above `threshold` and is the highest of the classes';
a pixel that several classes claim (their probabilities above the threshold) goes to the most probable one (the
class listed first on an exact tie), never to both, and `contested` counts such pixels. Under the joint head, class
probabilities share one softmax, so with a threshold of 0.5 or more no two classes can claim a pixel.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fewshotseg.adaptation import MethodSpec, settings_for
from fewshotseg.adaptation.joint import JointProbe
from fewshotseg.data.images import ImageLike, load_image, mask_on_image, read_label_map, resize_image
from fewshotseg.data.tasks import TaskTensors, episode_rng
from fewshotseg.errors import UserError
from fewshotseg.initializations.card import read_card
from fewshotseg.initializations.pretrained import save_pretrained as save_network
from fewshotseg.meta_learning.update_routine import UpdateParams
from fewshotseg.models.efficientlab import ModelConfig
from fewshotseg.segmenter import ADAPTER_FILE, FewShotSegmenter, with_stats

STRATEGIES = ("auto", "one-vs-rest", "joint")
# Chosen by bench/multiclass.py on two-object mosaics of the corpus's real-photo validation classes (README, "Several
# objects at once"): no measurable difference in mean IoU (joint - one-vs-rest +0.0 points, CI95 [-1.0, +1.1], over
# 168 class scores of 84 1- and 5-shot episodes, the shipped self-training probe), so the faster one: one fit and one
# feature pass for every class (1.59 against 2.25 s per episode).
DEFAULT_STRATEGY = "joint"
CLASSES_FILE = "classes.txt"


@dataclass
class MultiClassPrediction:
    """One image's result at the image's own (upright) size."""

    classes: list[str]  # the class names; class k is classes[k - 1]
    probabilities: np.ndarray  # (K, H, W) float32: each class's probability
    labels: np.ndarray  # (H, W) uint8: 0 background, k = classes[k - 1]
    contested: int  # pixels above the threshold for two or more classes (given to the most probable)

    @property
    def masks(self) -> dict[str, np.ndarray]:
        """{class name: (H, W) bool}; no pixel is in two of them."""
        return {name: self.labels == k for k, name in enumerate(self.classes, start=1)}


def resolve(probabilities: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, int]:
    """(label map (H, W) uint8, contested pixels) of class probabilities (K, H, W): a pixel is the class with the
    highest probability when that is above `threshold` (the first such class on an exact tie), else background."""
    above = probabilities > threshold
    labels = np.where(above.any(0), probabilities.argmax(0) + 1, 0).astype(np.uint8)
    return labels, int((above.sum(0) >= 2).sum())


# ------------------------------------------------------------------------------------------ support label maps


def label_maps(images: Sequence[ImageLike], masks: Sequence[ImageLike] | Mapping[str, Sequence[ImageLike | None]],
               classes: Sequence[str] | Mapping[int, str] | None = None, names: Sequence[str] | None = None,
               ) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """(upright (H, W, 3) uint8 images, (H, W) uint8 label maps with values 0..K, the K class names) of support
    pairs in either form `fit` takes (see the module docstring), every mistake refused with the file it is in."""
    names = list(names) if names is not None else [_described(x, i) for i, x in enumerate(images)]
    if not images:
        raise UserError("no support image: give at least one labelled image")
    rgbs = [load_image(x, n) for x, n in zip(images, names, strict=True)]
    maps: list[np.ndarray] = []
    if isinstance(masks, Mapping):
        order = list(masks) if classes is None else list(classes.values() if isinstance(classes, Mapping) else classes)
        if sorted(order) != sorted(masks):
            raise UserError(f"classes {order} and the masks' classes {list(masks)} differ: give masks for exactly the "
                            "named classes")
        for cls, ms in masks.items():
            if len(ms) != len(images):
                raise UserError(f"class {cls!r}: {len(ms)} mask(s) for {len(images)} support image(s): give one per "
                                "image (None where the image shows none of it)")
        class_names = order
        for i, (image, rgb, name) in enumerate(zip(images, rgbs, names, strict=True)):
            labels = np.zeros(rgb.shape[:2], np.uint8)
            owner: dict[int, str] = {}
            for k, cls in enumerate(class_names, start=1):
                mask = masks[cls][i]
                if mask is None:
                    continue
                where = f"{name} ({cls}: {mask})" if isinstance(mask, (str, Path)) else f"{name} ({cls})"
                m = mask_on_image(mask, rgb.shape[:2], image, where)
                clash = m & (labels > 0)
                if clash.any():
                    other = owner[int(labels[clash][0])]
                    raise UserError(f"{name}: {int(clash.sum())} pixel(s) are marked as both {other!r} and {cls!r}; "
                                    "a pixel belongs to one class: erase it from one of the two masks")
                labels[m] = k
                owner[k] = cls
            maps.append(labels)
    else:
        if classes is None:
            raise UserError("indexed masks need their classes: classes=[name of value 1, name of value 2, ...] or "
                            "{value: name}")
        if len(masks) != len(images):
            raise UserError(f"{len(images)} support image(s) but {len(masks)} mask(s): give one mask per image")
        values = dict(classes) if isinstance(classes, Mapping) else dict(enumerate(classes, start=1))
        bad = [v for v in values if not isinstance(v, (int, np.integer)) or not 1 <= int(v) <= 255]
        if bad:
            raise UserError(f"class value(s) {bad}: mask values of classes are 1..255 (0 is the background)")
        values = dict(sorted((int(v), n) for v, n in values.items()))
        class_names = list(values.values())
        lookup = np.zeros(256, np.uint8)
        for k, value in enumerate(values, start=1):
            lookup[value] = k
        known = ", ".join(f"{v} {n}" for v, n in values.items())
        for image, mask, rgb, name in zip(images, masks, rgbs, names, strict=True):
            where = f"{name} (mask {mask})" if isinstance(mask, (str, Path)) else name
            raw = read_label_map(mask, image, rgb.shape[:2], where)
            unknown = sorted(set(np.unique(raw).tolist()) - {0} - set(values))
            if unknown:
                raise UserError(f"{where}: value(s) {', '.join(map(str, unknown))} in its indexed mask name no class "
                                f"(the classes: {known}; 0 is the background): name them in the classes (classes.txt), "
                                "or set those pixels to 0")
            maps.append(lookup[raw])
    if len(set(class_names)) != len(class_names) or not class_names:
        raise UserError(f"classes {class_names}: give one or more classes, each named once")
    present = set(np.unique(np.concatenate([m.ravel() for m in maps])).tolist())
    missing = [c for k, c in enumerate(class_names, start=1) if k not in present]
    if missing:
        raise UserError(f"class(es) {', '.join(repr(c) for c in missing)}: no pixel in any support mask "
                        f"({', '.join(names)}); mark them in at least one image, or leave them out of the classes")
    return rgbs, maps, class_names


# ------------------------------------------------------------------------------------------ the segmenter


class MultiClassSegmenter:
    """An initialization adapted to K classes at once: one-vs-rest (a `FewShotSegmenter` per class) or one joint
    softmax head (the probe); `fit` adapts, `predict` gives each image's label map (see the module docstring)."""

    def __init__(self, base: FewShotSegmenter):
        self.base = base  # the initialization, its card and device; its `init` network is shared, never changed
        self.classes: list[str] = []
        self.strategy = ""
        self.method: MethodSpec | None = None
        self.method_source = ""
        self.params: UpdateParams | None = None
        self._per_class: list[FewShotSegmenter] = []
        self._joint: JointProbe | None = None
        self._fitted = 0

    @property
    def size(self) -> int:
        return self.base.size

    @property
    def fitted(self) -> bool:
        return bool(self._per_class) or self._joint is not None

    # ------------------------------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, spec: str | Path = "general", *, device: str = "auto", size: int = 0,
                        model_config: ModelConfig | None = None) -> MultiClassSegmenter:
        """An initialization (anything `FewShotSegmenter.from_pretrained` takes), or a folder that `save_pretrained`
        wrote after `fit`: then it predicts at once."""
        folder = Path(str(spec))
        card = read_card(folder) if folder.is_dir() else None
        fitted = (card.adaptation or {}).get("fitted") if card is not None else None
        if not (isinstance(fitted, dict) and fitted.get("classes")):
            return cls(FewShotSegmenter.from_pretrained(spec, device=device, size=size, model_config=model_config))
        assert card is not None
        strategy = fitted.get("strategy")
        if strategy == "one-vs-rest":
            parts = [FewShotSegmenter.from_pretrained(folder / class_folder(k), device=device, size=size,
                                                      model_config=model_config)
                     for k in range(1, len(fitted["classes"]) + 1)]
            seg = cls(FewShotSegmenter(parts[0].init, parts[0].card, device=parts[0].device,
                                       described=parts[0].described))
            seg._per_class = parts
            seg.params = parts[0].params
        elif strategy == "joint":
            from fewshotseg.initializations.pretrained import resolve_pretrained
            from fewshotseg.runs.device import choose_device

            model, base_card, described = resolve_pretrained(str(folder), model_config=model_config, size=size)
            seg = cls(FewShotSegmenter(model, base_card, device=choose_device(device), described=described))
            seg._joint = _restore_joint(folder, base_card.adaptation, seg.base)
        else:
            raise UserError(f"{folder}/card.json: unknown multi-class strategy {strategy!r}; save the segmenter again")
        seg.classes, seg.strategy = list(fitted["classes"]), strategy
        seg.method = MethodSpec.of(card.adaptation["method"], card.adaptation.get("settings"))
        seg.method_source = card.adaptation.get("source", "saved fit")
        seg._fitted = int(fitted.get("support_images", 0))
        return seg

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the fitted segmenter: `card.json` (its classes and strategy in `adaptation.fitted`), `classes.txt`,
        and for one-vs-rest one fitted `FewShotSegmenter` folder per class (`class-<k>/`), for the joint head the
        frozen network and the head (`adapter.safetensors`)."""
        if not self.fitted or self.method is None:
            raise UserError("save_pretrained before fit: adapt the segmenter to labelled examples first (fit)")
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        card = copy.deepcopy(self.base.card)
        card.name = out.name
        card.summary = (f"{self.base.card.name} adapted to {self._fitted} labelled image(s) of {len(self.classes)} "
                        f"classes ({', '.join(self.classes)}), {self.strategy}, with {self.method.describe()}.")
        card.training = {**card.training, "adapted_from": self.base.described, "adapted_with": self.method_source}
        card.metrics = []
        fitted: dict[str, Any] = {"support_images": self._fitted, "from": self.base.described,
                                  "classes": list(self.classes), "strategy": self.strategy}
        if self.params is not None:
            fitted["update_params"] = self.params.as_dict()
        card.adaptation = {**self.method.as_dict(), "source": self.method_source or "fit", "fitted": fitted}
        if self._joint is not None:
            save_network(out, self._joint.network(), card)
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu() for k, v in self._joint.tensors().items()}, str(out / ADAPTER_FILE))
        else:
            for k, (seg, cls) in enumerate(zip(self._per_class, self.classes, strict=True), start=1):
                part = seg.save_pretrained(out / class_folder(k))
                own = read_card(part)  # named after its class: `predict --model` on it alone labels that class
                assert own is not None
                own.name, own.summary = cls, f"{own.summary} The class {cls!r} of {card.name} ({self.strategy})."
                own.save(part)
            card.weights = {"classes": [f"{class_folder(k)}/" for k in range(1, len(self.classes) + 1)]}
            card.save(out)
        (out / CLASSES_FILE).write_text("".join(f"{c}\n" for c in self.classes))
        return out

    # ------------------------------------------------------------------------------------------ fit

    def fit(self, images: Sequence[ImageLike],
            masks: Sequence[ImageLike] | Mapping[str, Sequence[ImageLike | None]],
            classes: Sequence[str] | Mapping[int, str] | None = None, *, strategy: str = "auto",
            method: str | MethodSpec = "card", settings: dict[str, Any] | None = None, seed: int = 0,
            update_params: UpdateParams | None = None, stats: str = "card", names: Sequence[str] | None = None,
            progress: Callable[[int], None] | None = None) -> MultiClassSegmenter:
        """Adapt to support images labelled with several classes (forms and strategies in the module docstring):
        the card's method unless `method` says otherwise, as `FewShotSegmenter.fit`. `progress(n)` is called with
        the steps done so far, counted over all classes (one-vs-rest fine-tuning: K x U's steps in all)."""
        if strategy not in STRATEGIES:
            raise UserError(f"strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
        rgbs, maps, class_names = label_maps(images, masks, classes, names)
        names = list(names) if names is not None else [_described(x, i) for i, x in enumerate(images)]
        spec, source = (method, "given") if isinstance(method, MethodSpec) else self.base.method_for(
            method, settings=settings)
        chosen = strategy if strategy != "auto" else (DEFAULT_STRATEGY if spec.method == "probe" else "one-vs-rest")
        if chosen == "joint" and spec.method != "probe":
            raise UserError(f"the joint strategy is a softmax head on the probe's features; the method is "
                            f"{spec.method}: use strategy one-vs-rest (or method probe)")
        self._per_class, self._joint, self.params = [], None, None
        if chosen == "joint":
            settings_obj = settings_for("probe", spec.as_dict()["settings"])
            joint = JointProbe(settings_obj, self.base.device, classes=len(class_names))
            xs = np.stack([resize_image(x, self.size) for x in rgbs])
            ys = np.stack([np.asarray(Image.fromarray(m).resize((self.size, self.size), Image.Resampling.NEAREST))
                           for m in maps])
            joint.fit(self.base.init, TaskTensors.from_arrays(xs, ys), episode_rng(seed, 10), on_step=progress)
            self._joint = joint
        else:
            params = None
            if spec.method == "finetune":
                params = update_params if update_params is not None else self.base.update_params_for(len(rgbs))[0]
                params = with_stats(params, stats)
            arrays: list[ImageLike] = list(rgbs)
            per_fit = params.steps if params is not None else 1  # the steps each class's fit reports
            for k, cls in enumerate(class_names, start=1):
                step = None if progress is None else partial(_counted_on, progress, (k - 1) * per_fit)
                seg = FewShotSegmenter(self.base.init, self.base.card, device=self.base.device,
                                       described=self.base.described)
                seg.fit(arrays, [m == k for m in maps], seed=seed, update_params=params, stats="card", names=[
                    f"{n} ({cls})" for n in names], method=spec, allow_empty=True, progress=step)
                self._per_class.append(seg)
            self.params = params
        self.classes, self.strategy = class_names, chosen
        self.method, self.method_source = spec, source
        self._fitted = len(rgbs)
        return self

    # ------------------------------------------------------------------------------------------ prediction

    @torch.no_grad()
    def predict(self, images: Sequence[ImageLike], *, threshold: float = 0.5,
                batch_size: int = 16) -> list[MultiClassPrediction]:
        """One `MultiClassPrediction` per image, at the image's own (upright) size."""
        return [MultiClassPrediction(list(self.classes), p, *resolve(p, threshold))
                for p in self.probabilities(images, batch_size=batch_size)]

    @torch.no_grad()
    def probabilities(self, images: Sequence[ImageLike], *, batch_size: int = 16) -> list[np.ndarray]:
        """Each image's class probabilities (K, H, W) float32 at its own (upright) size."""
        if not self.fitted:
            raise UserError("predict before fit: adapt the segmenter to labelled examples first (fit)")
        rgbs = [load_image(x, _described(x, i)) for i, x in enumerate(images)]
        if not rgbs:
            return []
        if self._per_class:
            arrays: list[ImageLike] = list(rgbs)
            per_class = [seg.predict(arrays, batch_size=batch_size) for seg in self._per_class]
            return [np.stack([preds[i].probability for preds in per_class]) for i in range(len(rgbs))]
        assert self._joint is not None
        small = torch.from_numpy(np.stack([resize_image(x, self.size) for x in rgbs])).permute(0, 3, 1, 2)
        probs = self._joint.predict(small.float().div_(255), batch_size=batch_size)  # (B, K+1, S, S)
        out = []
        for rgb, p in zip(rgbs, probs, strict=True):
            h, w = rgb.shape[:2]
            out.append(np.stack([np.asarray(Image.fromarray(c.numpy().astype(np.float32)).resize(
                (w, h), Image.Resampling.BILINEAR)) for c in p[1:]]))
        return out


def _counted_on(progress: Callable[[int], None], before: int, step: int) -> None:
    """Report a class's fit step counted on from the steps of the classes fitted before it."""
    progress(before + step)


def _described(x: ImageLike, i: int) -> str:
    return str(x) if isinstance(x, (str, Path)) else f"image {i + 1}"


def class_folder(k: int) -> str:
    """The sub-folder of class k's fitted segmenter in a one-vs-rest save."""
    return f"class-{k}"


def _restore_joint(folder: Path, adaptation: dict[str, Any], base: FewShotSegmenter) -> JointProbe:
    from safetensors.torch import load_file

    path = folder / ADAPTER_FILE
    if not path.is_file():
        raise UserError(f"{folder}: its card says it holds a fitted joint head, but {ADAPTER_FILE} is missing; copy "
                        "the whole folder that save_pretrained wrote")
    settings = settings_for("probe", adaptation.get("settings"))
    restored = JointProbe.restore(base.init, settings, load_file(str(path)), base.device)
    assert isinstance(restored, JointProbe)
    return restored
