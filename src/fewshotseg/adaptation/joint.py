"""The probe for several classes at once: one softmax head over the background and K classes on the frozen features.

    features (B, C, h, w) + label maps (B, H, W) in 0..K  ->  W (K+1, C), b (K+1)  ->  softmax(W x + b) per pixel

The binary probe's recipe (`ProbeAdapter`) with a multinomial logistic regression in place of the binary one: the
same frozen network, features, BatchNorm statistics, mirrored support images and mirrored queries, L2 penalty and
L-BFGS; class-balanced as the binary probe is (each of the K+1 labels' cells carries the same total weight). A
feature cell's label is the label covering most of it; a class that covers most of no cell (an object smaller than
half a cell everywhere) still gets every cell it touches, as the binary probe's `hard_labels` does. Per-image
self-training (`self_train` rounds) as the binary probe's: the head refit on the query's own confident cells (the
largest softmax probability >= `confidence`, labelled by it), pulled toward the support's head by the L2 penalty.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fewshotseg.adaptation.methods import (
    FrozenFeatures,
    OneClassSupportError,
    ProbeConvergenceWarning,
    ProbeSettings,
)
from fewshotseg.models.closed_form import flatten, lbfgs_minimize


@dataclass
class SoftmaxHead:
    weight: torch.Tensor  # (K+1, C): row 0 the background, row k class k
    bias: torch.Tensor  # (K+1,)
    converged: bool = True

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, K+1, h, w)."""
        return torch.einsum("bchw,kc->bkhw", features, self.weight) + self.bias[None, :, None, None]


def balanced_label_weights(y: torch.Tensor, labels: int) -> torch.Tensor:
    """Per-sample weights for labels y in 0..labels-1: each label present sums to n / (number of labels present)."""
    counts = torch.bincount(y, minlength=labels).to(torch.float32)
    present = int((counts > 0).sum())
    return (y.numel() / (present * counts.clamp(min=1)))[y]


def softmax_head(x: torch.Tensor, y: torch.Tensor, labels: int, l2: float, weights: torch.Tensor | None = None, *,
                 max_iter: int = 100, tol: float = 1e-5, prior: SoftmaxHead | None = None) -> SoftmaxHead:
    """argmin_W,b mean_i weights_i * CE(W x_i + b, y_i) + l2/2 ||W - W0||^2 by L-BFGS (deterministic on CPU).

    x (N, C), y (N,) int64 in 0..labels-1; W0 is `prior`'s weight (the solver starts from it), else 0.
    `converged`: the gradient's largest entry fell below `tol`."""
    x = x.detach()
    weights = torch.ones(len(y), dtype=x.dtype, device=x.device) if weights is None else weights.detach().to(x)
    w0 = (torch.zeros(labels, x.shape[1], dtype=x.dtype, device=x.device) if prior is None
          else prior.weight.detach().to(x))
    w = w0.clone().requires_grad_(True)
    b = (torch.zeros(labels, dtype=x.dtype, device=x.device) if prior is None
         else prior.bias.detach().to(x)).clone().requires_grad_(True)
    total = weights.sum()

    def loss() -> torch.Tensor:
        return (weights * F.cross_entropy(x @ w.T + b, y, reduction="none")).sum() / total \
            + 0.5 * l2 * ((w - w0) ** 2).sum()

    grad, _ = lbfgs_minimize([w, b], loss, max_iter=max_iter, tol=tol)
    return SoftmaxHead(w.detach(), b.detach(), converged=grad < 10 * tol)


def cell_labels(fractions: torch.Tensor) -> torch.Tensor:
    """(B, h, w) int64 label of each feature cell from the share of it each label covers, fractions (B, K+1, h, w):
    the largest share; a class that wins no cell takes every cell it touches (the largest class share there)."""
    labels = fractions.argmax(1)
    classes = fractions.shape[1] - 1
    missing = [k for k in range(1, classes + 1) if not (labels == k).any()]
    if missing:
        objects = fractions[:, 1:]
        touched = (objects[:, [k - 1 for k in missing]] > 0).any(1)
        best = objects.argmax(1) + 1
        labels = torch.where(touched & torch.isin(best, torch.tensor(missing, device=best.device)), best, labels)
    absent = [k for k in range(1, classes + 1) if not (labels == k).any()]
    if absent or not (labels == 0).any():
        which = f"class(es) {absent} have no pixel" if absent else "no background pixel is left"
        raise OneClassSupportError(f"on the {fractions.shape[-1]}x{fractions.shape[-2]} feature grid {which}: the "
                                   "joint head needs every class and the background in the support masks")
    return labels


class JointProbe(FrozenFeatures):
    """The binary probe's multi-class form (see the module docstring); `predict` gives (B, K+1, H, W) probabilities,
    channel 0 the background."""

    method = "probe"
    settings: ProbeSettings

    def __init__(self, settings: ProbeSettings, device: torch.device | str = "cpu", classes: int = 0):
        if settings.solver != "logistic":
            raise ValueError("the joint multi-class head is a logistic regression; choose the one-vs-rest strategy "
                             "for the probe's ridge solver")
        super().__init__(settings, device)
        self.classes = classes

    def fit(self, init, support, rng, *, on_step=None) -> None:
        """`support.masks` hold label maps (n, S, S) in 0..K."""
        import warnings

        self.model = self._network(init, support)
        images, masks = support.images, support.masks
        if self.settings.flip:  # the mirrored images as more examples (BatchNorm statistics from the originals)
            images, masks = torch.cat([images, images.flip(-1)]), torch.cat([masks, masks.flip(-1)])
        feats = self.features(images)
        onehot = F.one_hot(masks.long().to(self.device), self.classes + 1).permute(0, 3, 1, 2).float()
        y = cell_labels(F.adaptive_avg_pool2d(onehot, (feats.shape[-2], feats.shape[-1]))).flatten()
        s = self.settings
        self.head = softmax_head(flatten(feats), y, self.classes + 1, s.l2,
                                 balanced_label_weights(y, self.classes + 1), max_iter=s.max_iter)
        if not self.head.converged:
            warnings.warn(ProbeConvergenceWarning(
                f"the joint head's logistic regression did not converge in {s.max_iter} L-BFGS iterations; raise "
                f"the probe's max_iter or its l2 penalty (now {s.l2:g})"), stacklevel=2)
        if on_step is not None:
            on_step(1)

    def logits(self, features):
        return self.head.logits(features)

    @torch.no_grad()
    def predict(self, images, batch_size=16):
        """(B, K+1, H, W) softmax probabilities on the CPU, float32, channel 0 the background."""
        out = []
        for i in range(0, len(images), batch_size):
            chunk = images[i:i + batch_size]
            full = F.interpolate(self.query_logits(chunk), size=chunk.shape[-2:], mode="bilinear",
                                 align_corners=False)
            out.append(self.refined(full.softmax(1), chunk).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.classes + 1, *images.shape[-2:])

    @torch.no_grad()
    def query_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, K+1, h, w) logits on the feature grid: with `flip`, the mean of each image's and its mirror image's;
        with `self_train`, each image's from its own refit head."""
        s = self.settings
        views = [self.features(images)] + ([self.features(images.flip(-1))] if s.flip else [])
        rounds = int(getattr(s, "self_train", 0))
        if not rounds:
            return _mean_view_logits(self.head, views)
        labels = self.classes + 1
        out = []
        for i in range(len(images)):
            feats = [v[i:i + 1] for v in views]
            head = self.head
            for _ in range(rounds):
                top, y = _mean_view_logits(head, feats).softmax(1).max(1)  # (1, h, w)
                sure = top >= s.confidence
                if len(torch.unique(y[sure])) < 2:
                    break  # confident cells of one label only: the support's head stands
                x = torch.cat([flatten(f) for f in feats])
                ys = torch.cat([y.flatten(), *([y.flip(-1).flatten()] if s.flip else [])])
                keep = torch.cat([sure.flatten(), *([sure.flip(-1).flatten()] if s.flip else [])])
                head = softmax_head(x[keep], ys[keep], labels, s.l2, balanced_label_weights(ys[keep], labels),
                                    max_iter=s.max_iter, prior=self.head)
            out.append(_mean_view_logits(head, feats))
        return torch.cat(out)

    def tensors(self):
        return {"weight": self.head.weight.contiguous(), "bias": self.head.bias.contiguous()}

    def load_tensors(self, tensors):
        self.head = SoftmaxHead(tensors["weight"], tensors["bias"])
        self.classes = int(tensors["weight"].shape[0]) - 1


def _mean_view_logits(head: SoftmaxHead, views: list[torch.Tensor]) -> torch.Tensor:
    """A head's logits on an image's features, averaged with its mirror image's (mirrored back) when given."""
    logits = head.logits(views[0])
    return logits if len(views) == 1 else (logits + head.logits(views[1]).flip(-1)) / 2
