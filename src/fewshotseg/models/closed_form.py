"""Linear heads fit in closed form (or by a few Newton-like steps) on per-pixel features.

    features (B, C, h, w) + masks (B, h, w) in [0, 1]  ->  w (C,), b  ->  logit = <w, x> + b per pixel

* `pixel_features`: an EfficientLab's frozen features at stride 4 — the encoder's stride-4 skip, its stride-16
  output upsampled, and the decoder's output — each L2-normalised per pixel, concatenated.
* `ridge_head`: weighted ridge regression onto {0, 1} targets, solved exactly and differentiably (R2-D2,
  Bertinetto et al. 2019): gradients flow through the solve into the features, which is what meta-training a
  network for a linear inner loop needs (`meta_learning/r2d2.py`).
* `logistic_head`: class-balanced, L2-regularised logistic regression by L-BFGS (the linear probe); reports
  whether it converged.

Both weight the two classes equally ("balanced": each class's pixels carry half the total weight), so a small
object is not drowned by its background.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FEATURES = ("skip", "deep", "decoder")


def pixel_features(model: torch.nn.Module, images: torch.Tensor, names: tuple[str, ...] = FEATURES, *,
                   normalise: bool = True) -> torch.Tensor:
    """(B, C, H/4, W/4) features of an EfficientLab for images (B, 3, H, W) in [0, 1]; each named group
    L2-normalised per pixel (`normalise`) and concatenated in the order of FEATURES."""
    unknown = [n for n in names if n not in FEATURES]
    if unknown or not names:
        raise ValueError(f"features {list(names)}: choose one or more of {', '.join(FEATURES)}")
    skip, deep = model.encoder((images - model.mean) / model.std)
    groups = []
    for name in FEATURES:
        if name not in names:
            continue
        if name == "skip":
            x = skip
        elif name == "deep":
            x = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        else:
            x = model.decoder(skip, deep)
        groups.append(F.normalize(x.float(), dim=1) if normalise else x.float())
    return torch.cat(groups, dim=1).contiguous(memory_format=torch.contiguous_format)


def mask_targets(masks: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Foreground fraction of every feature cell: masks (B, H, W) area-averaged to (B, h, w), in [0, 1]."""
    return F.adaptive_avg_pool2d(masks.float().unsqueeze(1), size).squeeze(1)


def balanced_weights(y: torch.Tensor) -> torch.Tensor:
    """Per-sample weights for hard labels y in {0, 1}: each class sums to half the number of samples."""
    n = y.numel()
    pos = y.sum()
    neg = n - pos
    return torch.where(y > 0.5, n / (2 * pos.clamp(min=1)), n / (2 * neg.clamp(min=1)))


def flatten(features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B*h*w, C)."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


@dataclass
class LinearHead:
    weight: torch.Tensor  # (C,)
    bias: torch.Tensor  # ()
    converged: bool = True
    iterations: int = 0

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, h, w)."""
        return torch.einsum("bchw,c->bhw", features, self.weight) + self.bias


def ridge_head(x: torch.Tensor, y: torch.Tensor, l2: float, weights: torch.Tensor | None = None) -> LinearHead:
    """argmin_w,b sum_i weights_i (<w, x_i> + b - y_i)^2 + l2 ||w||^2, exactly, differentiable in x.

    x (N, C), y (N,). Solved in the smaller of the two dimensions: the C+1 normal equations when N > C, else the
    N x N dual (Woodbury), as R2-D2 does for few samples in many dimensions."""
    weights = torch.ones_like(y) if weights is None else weights
    n, c = x.shape
    xb = torch.cat([x, torch.ones(n, 1, dtype=x.dtype, device=x.device)], dim=1)
    reg = torch.full((c + 1,), float(l2), dtype=x.dtype, device=x.device)
    reg[-1] = 0.0  # the bias is not penalised
    if n > c:
        a = xb.T @ (weights[:, None] * xb) + torch.diag(reg)
        wb = torch.linalg.solve(a, xb.T @ (weights * y))
    else:
        # w = X^T (W X X^T + l2 I)^-1 W y with the bias folded in as an (almost) unpenalised column
        reg_dual = reg.clone()
        reg_dual[-1] = 1e-6 * max(float(l2), 1e-6)
        scaled = xb / reg_dual.sqrt()
        k = weights[:, None] * (scaled @ scaled.T) + torch.eye(n, dtype=x.dtype, device=x.device)
        alpha = torch.linalg.solve(k, weights * y)
        wb = (scaled.T @ alpha) / reg_dual.sqrt()
    return LinearHead(wb[:-1], wb[-1])


def logistic_head(x: torch.Tensor, y: torch.Tensor, l2: float, weights: torch.Tensor | None = None, *,
                  max_iter: int = 100, tol: float = 1e-5, prior: LinearHead | None = None) -> LinearHead:
    """argmin_w,b mean_i weights_i * BCE(<w, x_i> + b, y_i) + l2/2 ||w - w0||^2 by L-BFGS (deterministic on CPU).

    w0 is `prior`'s weight (the solver starts from it), else 0. `converged` says whether the gradient's largest entry
    fell below `tol` within `max_iter` iterations."""
    x, y = x.detach(), y.detach().float()
    weights = torch.ones_like(y) if weights is None else weights.detach()
    w0 = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device) if prior is None else prior.weight.detach().to(x)
    w = w0.clone().requires_grad_(True)
    b = (torch.zeros((), dtype=x.dtype, device=x.device) if prior is None
         else prior.bias.detach().to(x).reshape(())).clone().requires_grad_(True)
    total = weights.sum()

    def loss() -> torch.Tensor:
        return (weights * F.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none")).sum() / total \
            + 0.5 * l2 * ((w - w0) ** 2).sum()

    grad, iterations = lbfgs_minimize([w, b], loss, max_iter=max_iter, tol=tol)
    return LinearHead(w.detach(), b.detach(), converged=grad < 10 * tol, iterations=iterations)


def lbfgs_minimize(params: list[torch.Tensor], loss: Callable[[], torch.Tensor], *, max_iter: int,
                   tol: float) -> tuple[float, int]:
    """Minimise loss() over params in place by L-BFGS with a strong-Wolfe line search (deterministic on CPU);
    returns the largest gradient entry at the end and the iterations taken."""
    opt = torch.optim.LBFGS(params, lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(closure)
        grads = torch.autograd.grad(loss(), params)
    return max(float(g.abs().max()) for g in grads), int(opt.state[opt._params[0]].get("n_iter", 0))
