"""Mixup of the image and the meta features together: one lambda, one permutation per batch; the
loss mixed the same way, the diagnosis targets with it."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def mixup(images: torch.Tensor, meta: torch.Tensor, target: torch.Tensor, prob: float, alpha: float,
          rng: np.random.Generator):
    """With probability ``prob``: lam ~ Beta(alpha, alpha) and one permutation mix the images and the
    meta features alike. Returns (images, meta, target, partner target, lam); lam = 1 when unmixed.
    The targets are permuted as rows: a (target, diagnosis class) pair travels together."""
    if prob <= 0 or rng.random() >= prob:
        return images, meta, target, target, 1.0
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(images.shape[0]))
    if images.is_cuda:  # from pinned memory the copy does not wait for the device
        perm = perm.pin_memory()
    perm = perm.to(images.device, non_blocking=True)
    # lerp(b, a, lam) = lam * a + (1 - lam) * b in one pass over the batch (twice as fast on CPU)
    images = torch.lerp(images[perm], images, lam)
    meta = torch.lerp(meta[perm], meta, lam)
    return images, meta, target, target[perm], lam


def head_loss(logits: torch.Tensor, y: torch.Tensor, aux_weight: float = 0.0) -> torch.Tensor:
    """BCE of the binary logit (column 0); with (target, class) rows and the diagnosis head, plus
    ``aux_weight`` x the cross-entropy of the class logits over the rows whose class is known (a
    class of -1, unknown, adds nothing; a batch without a known class adds 0). The mean over the known
    rows is their summed cross-entropy over their count (at least 1), without reading the count on
    the host: no device-to-host copy."""
    if y.ndim == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], y)
    loss = F.binary_cross_entropy_with_logits(logits[:, 0], y[:, 0])
    if aux_weight <= 0:
        return loss
    classes = y[:, 1].long()
    summed = F.cross_entropy(logits[:, 1:], classes, ignore_index=-1, reduction="sum")
    return loss + aux_weight * (summed / (classes >= 0).sum().clamp(min=1))


def mixup_loss(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: float,
               aux_weight: float = 0.0) -> torch.Tensor:
    """lam x the loss on the targets + (1 - lam) x the loss on the partners' targets."""
    loss = head_loss(logits, y_a, aux_weight)
    if lam == 1.0:
        return loss
    return lam * loss + (1 - lam) * head_loss(logits, y_b, aux_weight)
