"""The four adaptation methods behind one interface (see the package docstring)."""

from __future__ import annotations

import copy
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewshotseg.data.tasks import TaskTensors
from fewshotseg.errors import UserError
from fewshotseg.meta_learning import batchnorm
from fewshotseg.meta_learning.update_routine import Learner, UpdateParams
from fewshotseg.models.closed_form import (
    FEATURES,
    LinearHead,
    balanced_weights,
    flatten,
    logistic_head,
    mask_targets,
    pixel_features,
    ridge_head,
)
from fewshotseg.models.folding import fold_batchnorm

FROZEN_STATS = ("running", "support")


class OneClassSupportError(UserError, ValueError):
    """The support masks, on the grid a method learns on, hold pixels of one class only."""


class ProbeConvergenceWarning(UserWarning):
    """The probe's solver stopped before converging."""


# --------------------------------------------------------------------------------------------- settings


def _check_features(features: list[str]) -> None:
    bad = [f for f in features if f not in FEATURES]
    if bad or not features:
        raise ValueError(f"features {features}: choose one or more of {', '.join(FEATURES)}")


def _check_refine(radius: int, eps: float) -> None:
    if radius < 0 or not eps > 0:
        raise ValueError("refine_radius must be >= 0 (0: no refinement) and refine_eps > 0")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} {value!r}: choose one of {', '.join(choices)}")


@dataclass
class ProbeSettings:
    features: list[str] = field(default_factory=lambda: list(FEATURES))
    solver: str = "logistic"  # or "ridge" (closed form onto {0, 1}; probabilities clipped to [0, 1])
    l2: float = 1e-3  # penalty on the weights (logistic: l2/2 ||w||^2 added to the mean weighted loss)
    stats: str = "running"  # BatchNorm statistics of the frozen network: its own (running) or the support images'
    max_iter: int = 200  # L-BFGS iterations of the logistic solver
    flip: bool = False  # also fit on the mirrored support images, and average each query with its mirror image
    # Per-image self-training (transductive within one image, so a mask never depends on the other queries): refit
    # the head on the query's own confident pixels (probability >= confidence or <= 1 - confidence), its weights
    # pulled toward the support's solution by l2; `self_train` rounds, each from the previous round's mask.
    self_train: int = 0
    confidence: float = 0.9
    # Edge-aware refinement of the predicted probabilities: a guided filter (He et al. 2010) with the query image as
    # its guide, window 2 * refine_radius + 1 pixels at the method's size (0: none), regularisation refine_eps.
    refine_radius: int = 0
    refine_eps: float = 1e-3

    def __post_init__(self) -> None:
        _check_features(self.features)
        _check_refine(self.refine_radius, self.refine_eps)
        _check_choice("solver", self.solver, ("logistic", "ridge"))
        _check_choice("stats", self.stats, FROZEN_STATS)
        if not self.l2 > 0 or self.max_iter < 1:
            raise ValueError("l2 must be > 0 and max_iter >= 1")
        if self.self_train < 0 or not 0.5 < self.confidence < 1:
            raise ValueError("self_train must be >= 0 and confidence in (0.5, 1)")
        if self.self_train and self.solver != "logistic":
            raise ValueError("self_train needs the logistic solver")


@dataclass
class PrototypeSettings:
    features: list[str] = field(default_factory=lambda: list(FEATURES))
    temperature: float = 20.0  # PANet's scale of the cosine similarities
    stats: str = "running"
    flip: bool = False
    refine_radius: int = 0  # as ProbeSettings'
    refine_eps: float = 1e-3

    def __post_init__(self) -> None:
        _check_features(self.features)
        _check_refine(self.refine_radius, self.refine_eps)
        _check_choice("stats", self.stats, FROZEN_STATS)
        if not self.temperature > 0:
            raise ValueError("temperature must be > 0")


@dataclass
class RFSettings:
    sigma_max: float = 16.0  # the largest Gaussian scale of scikit-image's multiscale features (ilastik's 0.3-10+)
    trees: int = 50
    max_depth: int = 12
    max_pixels: int = 20000  # training pixels drawn per task, half foreground and half background when possible

    def __post_init__(self) -> None:
        if not self.sigma_max >= 1 or self.trees < 1 or self.max_depth < 1 or self.max_pixels < 2:
            raise ValueError("sigma_max must be >= 1, trees and max_depth >= 1, max_pixels >= 2")


@dataclass
class FinetuneSettings:
    """U's hyperparameters (per shot count) live in `UpdateParams`; here only what is done to its predictions."""

    refine_radius: int = 0  # as ProbeSettings': the guided filter of the probabilities, the query as guide
    refine_eps: float = 1e-3

    def __post_init__(self) -> None:
        _check_refine(self.refine_radius, self.refine_eps)


SETTINGS: dict[str, type] = {"finetune": FinetuneSettings, "probe": ProbeSettings, "prototype": PrototypeSettings,
                             "rf": RFSettings}
METHODS = tuple(SETTINGS)


def settings_for(method: str, values: dict[str, Any] | None = None) -> Any:
    """The method's settings dataclass from a dict (a card's or a file's); unknown keys and bad values are errors."""
    if method not in SETTINGS:
        raise ValueError(f"unknown adaptation method {method!r}; choose one of {', '.join(METHODS)}")
    cls = SETTINGS[method]
    values = dict(values or {})
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {method} setting(s) {unknown}; known: {sorted(f.name for f in fields(cls))}")
    try:
        return cls(**values)
    except TypeError as err:
        raise ValueError(f"{method} settings: {err}") from None


@dataclass(frozen=True)
class MethodSpec:
    """A method and its settings, as sent to evaluation workers and recorded in results and cards."""

    method: str = "finetune"
    settings: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, method: str, settings: dict[str, Any] | None = None) -> MethodSpec:
        checked = asdict(settings_for(method, settings))
        return cls(method, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in checked.items())))

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method,
                "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in self.settings}}

    def describe(self) -> str:
        values = self.as_dict()["settings"]
        shown = ", ".join(f"{k} {'+'.join(v) if isinstance(v, list) else v}" for k, v in values.items())
        return self.method + (f" ({shown})" if shown else "")


# --------------------------------------------------------------------------------------------- interface


class Adapter(ABC):
    """Fit on one task's support tensors, then predict foreground probabilities for any images of that size."""

    method: str

    @abstractmethod
    def fit(self, init: nn.Module, support: TaskTensors, rng: np.random.Generator, *,
            on_step: Callable[[int], None] | None = None) -> None: ...

    @abstractmethod
    def predict(self, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Foreground probabilities (B, H, W) on the CPU, float32."""

    def network(self) -> nn.Module:
        """The network the fitted adapter predicts with (what `save_pretrained` writes)."""
        raise UserError(f"the {self.method} method predicts without a network to save")

    def tensors(self) -> dict[str, torch.Tensor]:
        """What was fit besides the network, to save beside it (safetensors); nothing by default."""
        return {}


def refine(probability: torch.Tensor, images: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """(B, K, H, W) probabilities guided-filtered (He et al. 2010) with the images (B, 3, H, W) in [0, 1] as guide,
    window 2 * radius + 1, regularisation eps; radius 0 returns them as they are. The filter is linear in its input,
    so K probabilities that sum to one still do after it. A window wider than the image is the whole image (the
    radius is cut to fit, as the filter's reflected borders need)."""
    radius = min(radius, (min(probability.shape[-2:]) - 1) // 2)
    if radius <= 0:
        return probability
    from kornia.filters import guided_blur  # here: only the refinement needs kornia

    guide = images.to(probability.device, probability.dtype)
    return guided_blur(guide, probability, 2 * radius + 1, eps, separable=True).clamp(0, 1)


class FinetuneAdapter(Adapter):
    """U: the update routine's gradient steps (its BatchNorm regime is `params.bn_policy`)."""

    method = "finetune"

    def __init__(self, params: UpdateParams, device: torch.device | str = "cpu", *, learner: Learner | None = None,
                 steps: int | None = None, settings: FinetuneSettings | None = None):
        self.params, self.device, self.learner, self.steps = params, torch.device(device), learner, steps
        self.settings = settings or FinetuneSettings()

    def fit(self, init, support, rng, *, on_step=None) -> None:
        if self.learner is None:
            self.learner = Learner(copy.deepcopy(init), self.device)
        self.learner.adapt(init, support, self.params, rng, steps=self.steps, on_step=on_step)

    def predict(self, images, batch_size=16):
        assert self.learner is not None, "fit first"
        probability = self.learner.predict(images, batch_size=max(batch_size, 1))
        return refine(probability[:, None], images, self.settings.refine_radius, self.settings.refine_eps)[:, 0]

    @property
    def model(self) -> nn.Module | None:
        return None if self.learner is None else self.learner.model

    def network(self) -> nn.Module:
        """The adapted network as it predicts (support statistics set under the support policy)."""
        assert self.learner is not None, "fit first"
        self.learner.refresh_statistics()
        return self.learner.model

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}  # everything is in the network

    @classmethod
    def restore(cls, network: nn.Module, params: UpdateParams, device: torch.device | str = "cpu", *,
                settings: FinetuneSettings | None = None) -> FinetuneAdapter:
        """A fitted adapter from a saved adapted network (its statistics already final)."""
        learner = Learner(network, device)
        learner.params = params
        return cls(params, device, learner=learner, settings=settings)


class FrozenFeatures(Adapter):
    """Shared by probe and prototype: the frozen network's per-pixel features, BatchNorm as the settings say."""

    settings: ProbeSettings | PrototypeSettings

    def __init__(self, settings, device: torch.device | str = "cpu"):
        self.settings, self.device = settings, torch.device(device)
        self.model: nn.Module | None = None
        self._folded: tuple[nn.Module, nn.Module] | None = None  # (self.model, its BatchNorm-folded copy)

    def _network(self, init: nn.Module, support: TaskTensors) -> nn.Module:
        if self.settings.stats == "support":
            model = copy.deepcopy(init).to(self.device)
            batchnorm.set_statistics_(model, support.images.to(self.device))
        else:
            model = init.to(self.device)
        return model.eval()

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        assert self.model is not None, "fit first"
        self.model.eval()
        if self._folded is None or self._folded[0] is not self.model:  # (a new fit or restore: fold it again)
            self._folded = (self.model, fold_batchnorm(self.model))
        return pixel_features(self._folded[1], images.to(self.device), tuple(self.settings.features))

    def _support(self, init: nn.Module, support: TaskTensors) -> tuple[torch.Tensor, torch.Tensor]:
        self.model = self._network(init, support)
        images, masks = support.images, support.masks
        if self.settings.flip:  # the mirrored images as more examples (BatchNorm statistics from the originals)
            images, masks = torch.cat([images, images.flip(-1)]), torch.cat([masks, masks.flip(-1)])
        feats = self.features(images)
        return feats, mask_targets(masks.to(self.device), feats.shape[-2:])

    @torch.no_grad()
    def predict(self, images, batch_size=16):
        out = []
        for i in range(0, len(images), batch_size):
            chunk = images[i:i + batch_size]
            logits = self.query_logits(chunk)
            full = F.interpolate(logits[:, None], size=chunk.shape[-2:], mode="bilinear", align_corners=False)
            out.append(self.refined(self.probability(full), chunk)[:, 0].float().cpu())
        return torch.cat(out) if out else torch.zeros(0, *images.shape[-2:])

    def query_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, h, w) logits on the feature grid; with `flip`, the mean of each image's and its mirror image's."""
        logits = self.logits(self.features(images))
        if self.settings.flip:  # the mean of the logits of the image and of its mirror image, mirrored back
            logits = (logits + self.logits(self.features(images.flip(-1))).flip(-1)) / 2
        return logits

    def refined(self, probability: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """`refine` with these settings' radius and eps."""
        return refine(probability, images, self.settings.refine_radius, self.settings.refine_eps)

    @abstractmethod
    def logits(self, features: torch.Tensor) -> torch.Tensor: ...

    def network(self) -> nn.Module:
        """The frozen network whose features the fitted head reads (support statistics set, if asked for)."""
        assert self.model is not None, "fit first"
        return self.model

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """What was fit, to save beside the network (safetensors)."""

    @abstractmethod
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None: ...

    @classmethod
    def restore(cls, network: nn.Module, settings, tensors: dict[str, torch.Tensor],
                device: torch.device | str = "cpu") -> FrozenFeatures:
        """A fitted adapter from a saved network (its BatchNorm statistics as they were fit) and fitted tensors."""
        adapter = cls(settings, device)
        adapter.model = network.to(adapter.device).eval()
        adapter.load_tensors({k: v.to(adapter.device) for k, v in tensors.items()})
        return adapter

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


def _mean_view_logits(head: LinearHead, views: list[torch.Tensor]) -> torch.Tensor:
    """A head's logits on an image's features, averaged with its mirror image's (mirrored back) when given."""
    logits = head.logits(views[0])
    return logits if len(views) == 1 else (logits + head.logits(views[1]).flip(-1)) / 2


def _per_view(grid: torch.Tensor, flip: bool) -> torch.Tensor:
    """A (1, h, w) map of one image, flattened for each of its views: itself, then (flip) its mirror image."""
    return torch.cat([grid.flatten(), *([grid.flip(-1).flatten()] if flip else [])])


def hard_labels(fraction: torch.Tensor) -> torch.Tensor:
    """Each feature cell's label from its foreground fraction: >= 0.5 is foreground. An object smaller than half a
    cell everywhere still counts: then every cell it touches is foreground. One class only is an error."""
    labels = fraction >= 0.5
    if not labels.any():
        labels = fraction > 0
    if labels.all() or not labels.any():
        which = "foreground" if labels.all() else "background"
        raise OneClassSupportError(
            f"the support masks hold only {which} pixels on the {fraction.shape[-1]}x{fraction.shape[-2]} feature "
            "grid: a method needs pixels of both the object and its surroundings; mark the object only, or add a "
            "support image where it does not fill the frame")
    return labels.float()


class ProbeAdapter(FrozenFeatures):
    method = "probe"

    def fit(self, init, support, rng, *, on_step=None) -> None:
        feats, fraction = self._support(init, support)
        y = hard_labels(fraction).flatten()
        x = flatten(feats)
        s = self.settings
        if s.solver == "ridge":
            weights = balanced_weights(y).double()  # normalised to sum 1, as R2-D2's inner loop (meta_update)
            self.head: LinearHead = ridge_head(x.double(), y.double(), s.l2, weights / weights.sum())
            self.head = LinearHead(self.head.weight.float(), self.head.bias.float())
        else:
            self.head = logistic_head(x, y, s.l2, balanced_weights(y), max_iter=s.max_iter)
            if not self.head.converged:
                warnings.warn(ProbeConvergenceWarning(
                    f"the probe's logistic regression did not converge in {s.max_iter} L-BFGS iterations; its mask "
                    "may be poor: raise the probe's max_iter or its l2 penalty (now "
                    f"{s.l2:g}) in the method settings"), stacklevel=2)
        if on_step is not None:
            on_step(1)

    def logits(self, features):
        return self.head.logits(features)

    @torch.no_grad()
    def query_logits(self, images):
        s = self.settings
        if not s.self_train:
            return super().query_logits(images)
        views = [self.features(images)] + ([self.features(images.flip(-1))] if s.flip else [])
        out = []
        for i in range(len(images)):
            feats = [v[i:i + 1] for v in views]
            x = torch.cat([flatten(f) for f in feats])  # every view's pixels, in the order _per_view lists labels
            head = self.head
            for _ in range(s.self_train):
                prob = torch.sigmoid(_mean_view_logits(head, feats))
                sure = (prob >= s.confidence) | (prob <= 1 - s.confidence)
                y = (prob > 0.5).float()
                if not (sure & (y > 0)).any() or not (sure & (y == 0)).any():
                    break  # no confident pixels of one class: the support's head stands
                keep = _per_view(sure, s.flip)
                labels = _per_view(y, s.flip)[keep]
                head = logistic_head(x[keep], labels, s.l2, balanced_weights(labels), max_iter=s.max_iter,
                                     prior=self.head)
            out.append(_mean_view_logits(head, feats))
        return torch.cat(out) if out else self.head.logits(views[0])

    def tensors(self):
        return {"weight": self.head.weight.contiguous(), "bias": self.head.bias.reshape(1).contiguous()}

    def load_tensors(self, tensors):
        self.head = LinearHead(tensors["weight"], tensors["bias"].reshape(()))

    def probability(self, logits):
        return logits.clamp(0, 1) if self.settings.solver == "ridge" else torch.sigmoid(logits)


class PrototypeAdapter(FrozenFeatures):
    method = "prototype"

    def fit(self, init, support, rng, *, on_step=None) -> None:
        feats, fraction = self._support(init, support)
        hard_labels(fraction)  # refuses a one-class support set
        w = fraction[:, None]
        self.foreground = (w * feats).sum((0, 2, 3)) / w.sum().clamp(min=1e-6)
        self.background = ((1 - w) * feats).sum((0, 2, 3)) / (1 - w).sum().clamp(min=1e-6)
        if on_step is not None:
            on_step(1)

    def logits(self, features):
        fg = F.cosine_similarity(features, self.foreground[None, :, None, None], dim=1)
        bg = F.cosine_similarity(features, self.background[None, :, None, None], dim=1)
        return self.settings.temperature * (fg - bg)  # softmax over the two = sigmoid of the difference

    def tensors(self):
        return {"foreground": self.foreground.contiguous(), "background": self.background.contiguous()}

    def load_tensors(self, tensors):
        self.foreground, self.background = tensors["foreground"], tensors["background"]


class RFAdapter(Adapter):
    """ilastik's recipe: Gaussian-smoothed intensity, edge and texture features at several scales per pixel
    (`skimage.feature.multiscale_basic_features`), a random forest per pixel (`sklearn.ensemble`)."""

    method = "rf"

    def __init__(self, settings: RFSettings, device: torch.device | str = "cpu"):
        self.settings = settings

    def _features(self, images: torch.Tensor) -> np.ndarray:
        from skimage.feature import multiscale_basic_features

        arrays = images.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
        return np.stack([multiscale_basic_features(a, channel_axis=-1, sigma_min=1.0,
                                                   sigma_max=self.settings.sigma_max) for a in arrays])

    def fit(self, init, support, rng, *, on_step=None) -> None:
        from sklearn.ensemble import RandomForestClassifier

        feats = self._features(support.images)
        labels = hard_labels(support.masks.float()).numpy().astype(bool)
        x, y = feats.reshape(-1, feats.shape[-1]), labels.reshape(-1)
        half = self.settings.max_pixels // 2
        picks = [rng.choice(idx, size=min(half, len(idx)), replace=False)
                 for idx in (np.flatnonzero(y), np.flatnonzero(~y))]
        rows = np.sort(np.concatenate(picks))
        self.forest = RandomForestClassifier(n_estimators=self.settings.trees, max_depth=self.settings.max_depth,
                                             class_weight="balanced", n_jobs=1,
                                             random_state=int(rng.integers(2**31 - 1)))
        self.forest.fit(x[rows], y[rows])
        if on_step is not None:
            on_step(1)

    def predict(self, images, batch_size=16):
        out = []
        for i in range(len(images)):
            feats = self._features(images[i:i + 1])[0]
            p = self.forest.predict_proba(feats.reshape(-1, feats.shape[-1]))[:, 1]
            out.append(torch.from_numpy(p.reshape(feats.shape[:2]).astype(np.float32)))
        return torch.stack(out) if out else torch.zeros(0, *images.shape[-2:])


def make_adapter(spec: MethodSpec, *, params: UpdateParams | None = None, device: torch.device | str = "cpu",
                 learner: Learner | None = None, steps: int | None = None) -> Adapter:
    """The adapter for `spec`; fine-tuning needs U's `params` (and may reuse a `learner`)."""
    settings = settings_for(spec.method, spec.as_dict()["settings"])
    if spec.method == "finetune":
        if params is None:
            raise ValueError("the finetune method needs U's update parameters")
        return FinetuneAdapter(params, device, learner=learner, steps=steps, settings=settings)
    if spec.method == "probe":
        return ProbeAdapter(settings, device)
    if spec.method == "prototype":
        return PrototypeAdapter(settings, device)
    return RFAdapter(settings, device)
