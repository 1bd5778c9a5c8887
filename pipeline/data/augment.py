"""The training augmentation of the cached uint8 images: flips, rotation, scale and colour
jitter, fused into one warp and one colour matrix (``fused``) or through albumentations.
"""
from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np

# Colour jitter's constants: Rec. 601 luma of an RGB pixel, the matrix that turns a pixel into its
# grey, and the cross-product and outer-product matrices of the unit grey axis (a hue rotation).
LUMA = np.array([0.299, 0.587, 0.114])


GREY = np.outer(np.ones(3), LUMA)


_U = 3 ** -0.5


GREY_CROSS = np.array([[0, -_U, _U], [_U, 0, -_U], [-_U, _U, 0]])


GREY_OUTER = np.full((3, 3), _U * _U)


FLIPS = [np.array(m, float) for m in ([[-1, 0, 1], [0, 1, 0], [0, 0, 1]],  # horizontal (x -> last - x)
                                      [[1, 0, 0], [0, -1, 1], [0, 0, 1]],  # vertical
                                      [[0, 1, 0], [1, 0, 0], [0, 0, 1]])]  # transpose


class FusedAugment:
    """The default training augmentation: a random flip/transpose, rotation and scale warped in one
    cv2.warpAffine, then brightness, contrast, saturation and hue jitter applied as one 3x4 colour
    matrix (cv2.transform, saturating to uint8). The same operations as ``AlbumentationsAugment``
    without its per-transform overhead (timings in benchmarks/README.md). Images are square (the cache's)."""

    def __init__(self, scale: float, color: float, p_affine: float = 0.7, p_color: float = 0.7):
        self.scale, self.color, self.p_affine, self.p_color = scale, color, p_affine, p_color

    def geometry(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """3x3 pixel-coordinate matrix: a random element of the 8 flips/transposes, then (with
        p_affine) a rotation in [-180, 180] degrees and a scale in 1 +- scale about the centre."""
        m, last = np.eye(3), size - 1
        for flip, draw in zip(FLIPS, rng.random(3)):
            if draw < 0.5:
                flip = flip.copy()
                flip[:2, 2] *= last
                m = flip @ m
        if rng.random() < self.p_affine:
            angle, scale = rng.uniform(-180, 180), rng.uniform(1 - self.scale, 1 + self.scale)
            m = np.vstack([cv2.getRotationMatrix2D((last / 2, last / 2), angle, scale), [0, 0, 1]]) @ m
        return m

    def colour(self, mean_rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """3x4 matrix [M | offset] for brightness, contrast (towards the mean grey), saturation
        (towards each pixel's grey) and a hue rotation about the grey axis, each drawn in turn."""
        c = self.color
        brightness, contrast, saturation = rng.uniform(1 - c, 1 + c, 3)
        theta = 2 * np.pi * rng.uniform(-c / 5, c / 5)
        # brightness scales; contrast blends with the mean grey (of the brightened image)
        m = np.zeros((3, 4))
        m[:, :3] = brightness * contrast * np.eye(3)
        m[:, 3] = (1 - contrast) * brightness * (LUMA @ mean_rgb)
        sat = saturation * np.eye(3) + (1 - saturation) * GREY
        hue = np.cos(theta) * np.eye(3) + np.sin(theta) * GREY_CROSS + (1 - np.cos(theta)) * GREY_OUTER  # Rodrigues
        return (hue @ sat @ m).astype(np.float32)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        size = img.shape[0]
        m = self.geometry(size, rng)
        if not np.array_equal(m, np.eye(3)):
            img = cv2.warpAffine(img, m[:2], (size, size), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REFLECT_101)
        if rng.random() < self.p_color:
            img = cv2.transform(img, self.colour(np.array(cv2.mean(img)[:3]), rng))
        return img


class AlbumentationsAugment:
    """The same augmentation as ``FusedAugment`` built from albumentations transforms
    (``train.augment: albumentations``): slower per image, a base to extend with other transforms."""

    def __init__(self, scale: float, color: float):
        self.compose = A.Compose([
            A.HorizontalFlip(), A.VerticalFlip(), A.Transpose(),
            A.Affine(scale=(1 - scale, 1 + scale), rotate=(-180, 180), border_mode=cv2.BORDER_REFLECT_101, p=0.7),
            A.ColorJitter(brightness=color, contrast=color, saturation=color, hue=color / 5, p=0.7),
        ])

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # One random stream shared by the transforms in turn (Compose.set_random_seed would give each
        # transform the same seed: identical draws, so all flips fired together).
        self.compose.set_random_state(rng, random.Random(int(rng.integers(2**32))))
        return self.compose(image=img)["image"]


def train_transform(kind: str, scale: float, color: float):
    """Dermoscopy suits any flip, transpose and rotation; scale and colour jitter stay mild and
    nothing is cropped away (the lesion is usually central). Returns ``f(uint8 HWC image, rng)``."""
    return {"fused": FusedAugment, "albumentations": AlbumentationsAugment}[kind](scale, color)
