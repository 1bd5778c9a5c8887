"""The fused training augmentation does what its albumentations twin does, exactly where it can."""
import numpy as np
import pytest
import torch

from pipeline.data.augment import LUMA, FusedAugment, train_transform
from pipeline.data.dataset import ImageMetaDataset

RNG = np.random.default_rng(0)
IMG = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
DIHEDRAL = {"identity": IMG, "hflip": IMG[:, ::-1], "vflip": IMG[::-1], "transpose": IMG.transpose(1, 0, 2),
            "rot90": np.rot90(IMG), "rot180": IMG[::-1, ::-1], "rot270": np.rot90(IMG, 3),
            "antitranspose": np.rot90(IMG, 2).transpose(1, 0, 2)}


def test_flips_and_transposes_are_exact_and_all_eight_occur():
    aug = FusedAugment(scale=0.1, color=0.1, p_affine=0.0, p_color=0.0)
    seen = []
    for seed in range(64):
        out = aug(IMG, np.random.default_rng(seed))
        match = [name for name, view in DIHEDRAL.items() if np.array_equal(out, view)]
        assert len(match) == 1, f"seed {seed}: not one of the 8 flips/transposes"
        seen += match
    assert set(seen) == set(DIHEDRAL)


def test_rotation_and_scale_about_the_centre():
    aug = FusedAugment(scale=0.0, color=0.0)
    m = aug.geometry(33, np.random.default_rng(3))
    centre = np.array([16, 16, 1])
    np.testing.assert_allclose(m @ centre, centre, atol=1e-9)  # every flip and rotation keeps the centre
    assert abs(abs(np.linalg.det(m[:2, :2])) - 1) < 1e-9  # scale 0: area kept
    grow = FusedAugment(scale=0.5, color=0.0, p_affine=1.0)
    dets = [abs(np.linalg.det(grow.geometry(33, np.random.default_rng(s))[:2, :2])) for s in range(50)]
    assert 0.25 <= min(dets) < 0.8 and 1.3 < max(dets) <= 2.25  # scale 1 +- 0.5, squared


def test_colour_matrix_is_identity_without_jitter_and_blends_towards_grey():
    eye = np.hstack([np.eye(3), np.zeros((3, 1))])
    np.testing.assert_allclose(FusedAugment(0.0, 0.0).colour(np.array([90.0, 60, 30]), np.random.default_rng(0)),
                               eye, atol=1e-6)
    aug = FusedAugment(0.0, 0.5, p_affine=0.0, p_color=1.0)
    grey_pixel = np.array([100.0, 100, 100, 1])
    for seed in range(20):
        m = aug.colour(np.array([100.0, 100, 100]), np.random.default_rng(seed))
        out = m @ grey_pixel  # a grey image stays grey (hue and saturation turn about the grey axis)
        assert np.ptp(out) < 1e-3 and 50 <= out[0] <= 150
    colour_pixel = np.array([200.0, 50, 20, 1])
    m = aug.colour(np.array([200.0, 50, 20]), np.random.default_rng(1))
    assert np.ptp(m @ colour_pixel) > 50  # a coloured pixel keeps its colour
    assert abs(LUMA.sum() - 1) < 1e-9


@pytest.mark.parametrize("kind", ["fused", "albumentations"])
def test_augment_is_seeded_uint8_and_keeps_shape(kind):
    aug = train_transform(kind, 0.1, 0.1)
    a = [aug(IMG.copy(), np.random.default_rng(s)) for s in range(6)]
    b = [aug(IMG.copy(), np.random.default_rng(s)) for s in range(6)]
    assert all(x.dtype == np.uint8 and x.shape == IMG.shape for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len({x.tobytes() for x in a}) > 3


@pytest.mark.parametrize("kind", [None, "fused", "albumentations"])
def test_dataset_reads_the_read_only_cache_without_changing_it(tmp_path, kind):
    np.save(tmp_path / "cache.npy", np.stack([IMG, IMG[::-1]]))
    cache = np.load(tmp_path / "cache.npy", mmap_mode="r")  # read-only, as build_cache returns it
    ds = ImageMetaDataset(cache, np.array([1, 0]), np.zeros((2, 3)), np.array([0, 1]),
                          train_transform(kind, 0.1, 0.1) if kind else None)
    for i in range(2):
        img, meta, y = ds[i]
        assert img.dtype == torch.uint8 and img.shape == IMG.shape
        img += 1  # a tensor of its own: writing to it must not touch the cache
        if kind is None:
            np.testing.assert_array_equal(img.numpy() - 1, cache[ds.rows[i]])
    np.testing.assert_array_equal(cache[0], IMG)
