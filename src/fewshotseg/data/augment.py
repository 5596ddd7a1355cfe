"""The paper's six augmentations, on batches of tensors, image and mask transformed together.

The augmentation rate is the probability that an example is augmented at all; an augmented example gets a random
non-empty subset of the six (n ~ U{1..6}, then the first n of a random order — the reference's rule, REFERENCE
§6.1). Geometric operations move image and mask identically (one affine warp, bilinear for the image, nearest for
the mask); photometric ones touch the image only; erasing sets the erased mask region to background.

Magnitudes are the reference's, defined at 224 px and scaled with the image size where they are lengths:
translation up to 23 px (23/224 of the side), rotation within ±45°, Gaussian noise with sd |N(5.1, 1)| / 255 per
example, a brightness shift N(0, |N(12.75, 1)|) / 255, erasing 2-10 % of the area with aspect 0.3-3.3 and a random
gray fill. Unlike the reference, translation is a plain shift with an empty (background) border rather than a
wrap-around, and the erased rectangle lies inside the image (Zhong et al.'s rule).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

OPS = ("translate", "rotate", "flip", "noise", "brightness", "erase")
MAX_SHIFT = 23 / 224
MAX_ANGLE = 45.0


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def choose_ops(batch: int, rate: float, g: torch.Generator) -> torch.Tensor:
    """(batch, 6) boolean: which operation each example gets."""
    augmented = torch.rand(batch, generator=g) < rate
    count = torch.randint(1, len(OPS) + 1, (batch,), generator=g)
    order = torch.rand(batch, len(OPS), generator=g).argsort(dim=1)  # a random permutation per example
    rank = order.argsort(dim=1)  # position of each op in that permutation
    return (rank < count[:, None]) & augmented[:, None]


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, rate: float, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment images (B, 3, H, W) in [0, 1] and masks (B, H, W) {0, 1} (any dtype); returns new tensors."""
    if rate <= 0:
        return images, masks
    b, _, h, w = images.shape
    ops = choose_ops(b, rate, g)
    use = {name: ops[:, i] for i, name in enumerate(OPS)}
    # Draw every parameter for every example so the stream of random numbers does not depend on which ops fire.
    shift = _uniform(2 * b, -MAX_SHIFT, MAX_SHIFT, g).view(b, 2)  # fraction of the side
    angle = _uniform(b, -MAX_ANGLE, MAX_ANGLE, g) * math.pi / 180
    noise_sd = torch.randn(b, generator=g).add(5.1).abs() / 255
    brightness = torch.randn(b, generator=g) * torch.randn(b, generator=g).add(12.75).abs() / 255
    area = _uniform(b, 0.02, 0.10, g) * h * w
    log_aspect = _uniform(b, math.log(0.3), math.log(1 / 0.3), g)
    corner = torch.rand(b, 2, generator=g)
    fill = torch.rand(b, generator=g)

    images, masks = images.clone(), masks.clone()
    mask_dtype = masks.dtype

    flip = use["flip"]
    if flip.any():
        images[flip] = images[flip].flip(-1)
        masks[flip] = masks[flip].flip(-1)

    warp = use["translate"] | use["rotate"]
    if warp.any():
        idx = warp.nonzero().squeeze(1)
        theta = torch.zeros(len(idx), 2, 3)
        a = torch.where(use["rotate"][idx], angle[idx], torch.zeros_like(angle[idx]))
        # Square images: the normalised grid is isotropic, so a plain rotation matrix is a rigid rotation.
        theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), -torch.sin(a)
        theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
        t = torch.where(use["translate"][idx, None], shift[idx] * 2, torch.zeros(len(idx), 2))  # grid is [-1, 1]
        theta[:, :, 2] = -t
        grid = F.affine_grid(theta, [len(idx), 3, h, w], align_corners=False).to(images.dtype)
        images[idx] = F.grid_sample(images[idx], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        warped = F.grid_sample(masks[idx, None].float(), grid.float(), mode="nearest", align_corners=False)
        masks[idx] = warped[:, 0].to(mask_dtype)

    noise = use["noise"]
    if noise.any():
        sd = noise_sd[noise].view(-1, 1, 1, 1).to(images.dtype)
        images[noise] = images[noise] + sd * torch.randn(images[noise].shape, generator=g).to(images.dtype)
    bright = use["brightness"]
    if bright.any():
        images[bright] = images[bright] + brightness[bright].view(-1, 1, 1, 1).to(images.dtype)

    for i in use["erase"].nonzero().squeeze(1).tolist():
        aspect = math.exp(log_aspect[i].item())
        eh = min(h, max(1, int(round(math.sqrt(area[i].item() * aspect)))))
        ew = min(w, max(1, int(round(math.sqrt(area[i].item() / aspect)))))
        top = int(corner[i, 0].item() * (h - eh + 1))
        left = int(corner[i, 1].item() * (w - ew + 1))
        images[i, :, top : top + eh, left : left + ew] = fill[i].item()
        masks[i, top : top + eh, left : left + ew] = 0
    return images.clamp_(0, 1), masks
