"""Mixup: images and meta mixed with one lam and one permutation; the mixed loss."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.model.mixup import mixup, mixup_loss

PERM = np.array([2, 0, 3, 1])


class StubRng:
    """Stands in for numpy's Generator: always mixes, lam 0.3, a known permutation."""

    def random(self):
        return 0.0

    def beta(self, a, b):
        return 0.3

    def permutation(self, n):
        assert n == len(PERM)
        return PERM.copy()


def batch():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 8, 8, generator=g)
    meta = torch.rand(4, 5, generator=g)
    target = torch.tensor([1.0, 0.0, 0.0, 1.0])
    return images, meta, target


def test_images_and_meta_are_mixed_with_the_same_lam_and_permutation():
    images, meta, target = batch()
    out_images, out_meta, y_a, y_b, lam = mixup(images, meta, target, prob=1.0, alpha=0.4, rng=StubRng())
    assert lam == 0.3
    for i, j in enumerate(PERM):
        torch.testing.assert_close(out_images[i], 0.3 * images[i] + 0.7 * images[j])
        torch.testing.assert_close(out_meta[i], 0.3 * meta[i] + 0.7 * meta[j])
    torch.testing.assert_close(y_a, target)
    torch.testing.assert_close(y_b, torch.tensor([0.0, 1.0, 1.0, 0.0]))


def test_prob_zero_leaves_the_batch_untouched():
    images, meta, target = batch()
    saved = images.clone(), meta.clone(), target.clone()
    out = mixup(images, meta, target, prob=0.0, alpha=0.4, rng=np.random.default_rng(0))
    assert out[0] is images and out[1] is meta and out[2] is target and out[3] is target
    assert out[4] == 1.0
    for a, b in zip((images, meta, target), saved):
        assert torch.equal(a, b)


def test_prob_half_mixes_about_half_the_batches():
    images, meta, target = batch()
    rng = np.random.default_rng(0)
    lams = [mixup(images, meta, target, prob=0.5, alpha=0.4, rng=rng)[4] for _ in range(400)]
    mixed = [lam for lam in lams if lam != 1.0]
    assert 0.4 < len(mixed) / len(lams) < 0.6
    assert all(0.0 <= lam <= 1.0 for lam in mixed)


def bce(logits, y):
    """Binary cross-entropy written out, independent of torch's fused version."""
    p = torch.sigmoid(logits.double())
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def test_mixup_loss_is_the_lam_weighted_sum_of_both_targets():
    binary = torch.tensor([2.0, -1.0, 0.5, -3.0])
    logits = binary[:, None]  # the model's (N, 1) output without the diagnosis head
    y_a = torch.tensor([1.0, 0.0, 0.0, 1.0])
    y_b = torch.tensor([0.0, 1.0, 1.0, 0.0])
    for lam in (0.3, 0.85):
        expected = lam * bce(binary, y_a) + (1 - lam) * bce(binary, y_b)
        assert abs(mixup_loss(logits, y_a, y_b, lam).item() - expected.item()) < 1e-6
    assert abs(mixup_loss(logits, y_a, y_b, 1.0).item() - bce(binary, y_a).item()) < 1e-6
