"""The EfficientLab loss (paper eq. 13-16, REFERENCE §2): cross-entropy - ln(dice(soft IoU)) + L2.

    L = H - ln(J) + lambda * ||theta||^2,   J = 2 IoU / (IoU + 1)

* H is the pixel-mean softmax cross-entropy over the classes (for two classes, the paper's binary cross-entropy
  on the foreground probability).
* IoU is a soft IoU computed per image as a ratio of sums, (sum p*y + eps) / (sum p + sum y - sum p*y + eps) with
  eps = 1e-7, then averaged over the batch. That is what the reference code computes; the paper's eq. 16 writes a
  per-pixel average, which would be dominated by the easy background pixels. For two classes p is the foreground
  probability; for the multi-class joint-training head the sums run over every class channel (background
  included, as the reference's joint model did).
* Pixels whose target is IGNORE (255: PASCAL's object boundaries) count in neither term.
* L2 covers every trainable weight except BatchNorm's gamma and beta (biases included), as the reference. The
  coefficient follows the paper's convention, lambda * ||theta||^2 with lambda = 5e-4. The reference code computed
  0.0005 * ||theta||^2 / 2 (TF's l2_loss), i.e. an effective lambda of 2.5e-4; pass l2=2.5e-4 to match it.
"""

from __future__ import annotations

import torch
from torch import nn

EPS = 1e-7
IGNORE = 255  # fewshotseg.data.dataset.IGNORE (models/ knows nothing about data/)


def soft_iou(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image soft IoU (B,) of probabilities and {0, 1} targets of the same shape (B, ...)."""
    dims = tuple(range(1, probs.dim()))
    intersection = (probs * target).sum(dims)
    union = probs.sum(dims) + target.sum(dims) - intersection
    return (intersection + EPS) / (union + EPS)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """H - ln(2 IoU / (IoU + 1)) for logits (B, C, H, W) and integer targets (B, H, W) in [0, C) or IGNORE."""
    ignored = target == IGNORE
    if ignored.any():
        return _loss_with_ignored(logits, target, ~ignored)
    logp = logits.log_softmax(dim=1)
    logp_true = logp.gather(1, target[:, None])  # (B, 1, H, W) log-probability of each pixel's class
    ce = -logp_true.mean()
    if logits.shape[1] == 2:
        fg = logp[:, 1].exp()
        iou = soft_iou(fg, target.to(fg.dtype))
    else:
        # Over all C channels of a one-hot target, I = sum over pixels of p[true class] and, because every pixel's
        # probabilities and one-hot labels each sum to 1, U = 2 * pixels - I: no (B, C, H, W) one-hot is needed.
        intersection = logp_true.exp().flatten(1).sum(1)
        union = 2 * target[0].numel() - intersection
        iou = (intersection + EPS) / (union + EPS)
    iou = iou.mean()
    return ce - torch.log(2 * iou / (iou + 1))


def _loss_with_ignored(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The same loss over the valid pixels only (B, H, W) bool: both terms' sums skip the IGNORE pixels."""
    logp = logits.log_softmax(dim=1)
    weight = valid.to(logp.dtype)
    logp_true = logp.gather(1, torch.where(valid, target, 0)[:, None])[:, 0]  # (B, H, W)
    ce = -(logp_true * weight).sum() / weight.sum().clamp(min=1)
    if logits.shape[1] == 2:
        fg = logp[:, 1].exp() * weight
        iou = soft_iou(fg, (target == 1).to(fg.dtype))
    else:
        intersection = (logp_true.exp() * weight).flatten(1).sum(1)
        union = 2 * weight.flatten(1).sum(1) - intersection
        iou = (intersection + EPS) / (union + EPS)
    iou = iou.mean()
    return ce - torch.log(2 * iou / (iou + 1))


def l2_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every trainable parameter that does not belong to a BatchNorm layer."""
    bn_params = {
        id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()
    }
    return [p for p in model.parameters() if p.requires_grad and id(p) not in bn_params]


def l2_penalty(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([p.pow(2).sum() for p in params]).sum()
