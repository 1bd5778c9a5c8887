"""Synthetic "dermoscopy-like" sample data in the SIIM-ISIC 2020 layout.

FOR DEMOS AND TESTS ONLY: every image and every row is made up.  The data let
the pipeline run end to end (and show that images + metadata beat either one
alone) without downloading the real competition data.

Layout written into ``root``::

    train.csv              image_name, patient_id, sex, age_approx,
                           anatom_site_general_challenge, diagnosis, target
    test.csv               the same columns without target
    sample_submission.csv  image_name, target (all 0, test.csv order)
    train/<image_name>.jpg
    test/<image_name>.jpg

How the target is made: each image gets a latent lesion "malignancy" score
``z_img`` that drives how the lesion is drawn (darker, multi-coloured with
blue-grey/black patches, larger, more irregular border), and a metadata score
``z_meta`` from age, body site and sex, drawn independently of ``z_img``.
``target = 1`` when ``W_IMG * z_img + W_META * z_meta + noise`` is above its
78th percentile (about 22 % positives).

Run::

    python -m pipeline sample OUT_DIR [--seed 0] [--image-size 128]

The output is deterministic: the same arguments give byte-identical CSVs and
identical image pixels.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

W_IMG, W_META, W_NOISE = 1.0, 0.8, 0.7
POSITIVE_RATE = 0.22
JPEG_QUALITY = 90

SITES = ["torso", "lower extremity", "upper extremity", "head/neck",
         "palms/soles", "oral/genital"]
SITE_PROBS = [0.50, 0.25, 0.15, 0.06, 0.02, 0.01]  # the rest (1 %) missing
SITE_EFFECT = {"torso": 0.0, "lower extremity": -0.2, "upper extremity": -0.3,
               "head/neck": 0.8, "palms/soles": 0.5, "oral/genital": 0.4}
AGES = np.arange(20, 90, 5)
AGE_WEIGHTS = np.exp(-0.5 * ((AGES - 52) / 16) ** 2)

SKIN_LIGHT = np.array([238, 205, 185], float)
SKIN_DARK = np.array([190, 140, 105], float)
BENIGN_LIGHT = np.array([180, 125, 85], float)   # light brown
BENIGN_MID = np.array([125, 80, 50], float)      # mid brown
MALIGNANT = np.array([55, 38, 32], float)        # near black
BLUE_GREY = np.array([95, 105, 130], float)
BLACK = np.array([25, 20, 22], float)


# --------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------
def _unique_ids(rng, n, prefix):
    numbers = rng.choice(10_000_000, size=n, replace=False)
    return [f"{prefix}{k:07d}" for k in numbers]


def _patients(rng, n):
    """One row per patient: id, sex, age, skin tone, number of images."""
    sex = np.where(rng.random(n) < 0.52, "male", "female").astype(object)
    sex[rng.random(n) < 0.04] = np.nan
    age = rng.choice(AGES, size=n, p=AGE_WEIGHTS / AGE_WEIGHTS.sum()).astype(float)
    age[rng.random(n) < 0.03] = np.nan
    return pd.DataFrame({
        "patient_id": _unique_ids(rng, n, "IP_"),
        "sex": sex,
        "age_approx": age,
        "skin": rng.random(n),                  # 0 light .. 1 darker
        "n_images": 2 + rng.binomial(7, 3 / 7, size=n),  # 2..9, mean 5
    })


def _images(rng, patients):
    """One row per image, with body site and the two latent scores."""
    df = patients.loc[patients.index.repeat(patients["n_images"])]
    df = df.drop(columns="n_images").reset_index(drop=True)
    n = len(df)
    site_idx = rng.choice(len(SITES) + 1, size=n, p=SITE_PROBS + [0.01])
    sites = np.array(SITES + [np.nan], dtype=object)
    df["anatom_site_general_challenge"] = sites[site_idx]
    df["image_name"] = _unique_ids(rng, n, "ISIC_")
    df["z_img"] = rng.standard_normal(n)
    df["z_meta"] = _meta_score(df)
    return df


def _meta_score(df):
    """Standardised metadata risk: older, male, head/neck etc. -> higher."""
    age = ((df["age_approx"] - 52) / 15).fillna(0.0)
    site = df["anatom_site_general_challenge"].map(SITE_EFFECT).fillna(0.0)
    male = (df["sex"] == "male").astype(float) * 0.5
    raw = (age + site + male).to_numpy(float)
    return (raw - raw.mean()) / raw.std()


def _add_target(rng, df):
    latent = (W_IMG * df["z_img"] + W_META * df["z_meta"]
              + W_NOISE * rng.standard_normal(len(df)))
    threshold = np.quantile(latent, 1 - POSITIVE_RATE)
    df["target"] = (latent > threshold).astype(int)
    return df


def _add_diagnosis(df):
    """A diagnosis as the 2020 table has one, drawn from nothing new (the other columns and the
    images stay as they were): melanoma for target 1; for target 0, seborrheic keratosis where the
    lesion is drawn most like a melanoma (the top quarter of z_img), else nevus; and every fifth
    row unknown, as most of the real table is."""
    negative_z = df["z_img"].where(df["target"] == 0)
    sk = negative_z > negative_z.quantile(0.75)
    df["diagnosis"] = np.where(df["target"] == 1, "melanoma", np.where(sk, "seborrheic keratosis", "nevus"))
    df.loc[np.arange(len(df)) % 5 == 4, "diagnosis"] = "unknown"
    return df


# --------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------
def _smooth_noise(rng, size, cells):
    """Low-frequency noise in [-1, 1]: a small random grid upsampled."""
    grid = rng.uniform(0, 255, size=(cells, cells)).astype(np.uint8)
    up = Image.fromarray(grid).resize((size, size), Image.BICUBIC)
    return np.asarray(up, float) / 127.5 - 1.0


def _background(rng, size, skin):
    tone = SKIN_LIGHT + (SKIN_DARK - SKIN_LIGHT) * skin
    tone = tone + rng.normal(0, 6, 3)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 1 + rng.uniform(0.05, 0.15) * (np.cos(angle) * xx + np.sin(angle) * yy)
    texture = 1 + 0.04 * _smooth_noise(rng, size, 8) + 0.02 * _smooth_noise(rng, size, size // 4)
    img = tone * (gradient * texture)[..., None]
    return img + rng.normal(0, 4, img.shape)


def _lesion_mask(rng, size, m):
    """Soft mask of an irregular ellipse; larger and rougher when m is high."""
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    cx, cy = rng.normal(0, 0.04, 2)
    rot = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(rot) + (yy - cy) * np.sin(rot)
    v = -(xx - cx) * np.sin(rot) + (yy - cy) * np.cos(rot)
    v = v / rng.uniform(0.65, 1.0)                   # ellipse aspect ratio
    dist, theta = np.hypot(u, v), np.arctan2(v, u)
    radius = np.clip(0.17 + 0.045 * m + rng.normal(0, 0.025), 0.07, 0.33)
    rough = 0.03 + 0.09 / (1 + np.exp(-1.5 * m))
    wobble = 0.0
    for k in range(2, 8):                            # low-frequency border harmonics
        amplitude = rng.normal(0, rough / np.sqrt(k - 1))
        wobble = wobble + amplitude * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    edge = rng.uniform(0.01, 0.03)
    return np.clip((radius * (1 + wobble) - dist) / edge, 0, 1), radius


def _lesion_colour(rng, size, m, radius):
    """Per-pixel lesion colour: uniform brown, or dark with blue-grey/black patches."""
    dark = 1 / (1 + np.exp(-(1.6 * m + rng.normal(0, 0.5))))
    benign = BENIGN_LIGHT + (BENIGN_MID - BENIGN_LIGHT) * rng.random()
    base = benign + (MALIGNANT - benign) * dark
    mottle = 0.08 * _smooth_noise(rng, size, 6) + 0.06 * _smooth_noise(rng, size, size // 5)
    colour = base * (1 + mottle)[..., None]
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    for _ in range(rng.poisson(4 * dark)):
        px, py = rng.normal(0, radius / 2, 2)
        width = radius * rng.uniform(0.15, 0.35)
        blob = np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * width ** 2))
        patch = BLUE_GREY if rng.random() < 0.6 else BLACK
        colour += 0.85 * blob[..., None] * (patch - colour)
    return colour


def _draw_hairs(rng, img):
    size = img.shape[0]
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    for _ in range(rng.integers(1, 5)):
        p0, p2 = rng.uniform(0, size, (2, 2))
        p1 = (p0 + p2) / 2 + rng.normal(0, size / 8, 2)
        t = np.linspace(0, 1, 20)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t ** 2 * p2
        shade = int(rng.integers(20, 60))
        draw.line([tuple(p) for p in pts], fill=(shade, shade - 10, shade - 15),
                  width=max(1, size // 100))
    return np.asarray(pil)


def _vignette(rng, img):
    """Dark corners, like the circular field of view of a dermatoscope."""
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    r = np.hypot(xx - rng.normal(0, 0.05), yy - rng.normal(0, 0.05))
    fade = np.clip((r - rng.uniform(0.48, 0.6)) / 0.04, 0, 1)
    return img * (1 - 0.9 * fade)[..., None]


def render_image(rng, size, z_img, skin):
    """One RGB uint8 image whose lesion appearance follows z_img."""
    m = z_img + rng.normal(0, 0.3)          # appearance is a noisy view of z_img
    img = _background(rng, size, skin)
    mask, radius = _lesion_mask(rng, size, m)
    colour = _lesion_colour(rng, size, m, radius)
    img = img * (1 - mask[..., None]) + colour * mask[..., None]
    if rng.random() < 0.25:
        img = _vignette(rng, img)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        img = _draw_hairs(rng, img)
    return img


def _write_images(df, folder, size, seed):
    folder.mkdir(parents=True, exist_ok=True)
    for row in df.itertuples():
        number = int(row.image_name[5:])
        rng = np.random.default_rng([seed, number])   # independent of row order
        img = render_image(rng, size, row.z_img, row.skin)
        Image.fromarray(img).save(folder / f"{row.image_name}.jpg", quality=JPEG_QUALITY)


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------
META_COLUMNS = ["image_name", "patient_id", "sex", "age_approx",
                "anatom_site_general_challenge"]


def generate_sample(root, n_train_patients=80, n_test_patients=20,
                    image_size=128, seed=0) -> None:
    """Write root/train.csv, root/test.csv, root/sample_submission.csv,
    root/train/<image_name>.jpg and root/test/<image_name>.jpg."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    patients = _patients(rng, n_train_patients + n_test_patients)
    images = _add_diagnosis(_add_target(rng, _images(rng, patients)))
    is_test = images["patient_id"].isin(patients["patient_id"][n_train_patients:])
    train = images[~is_test].sort_values("image_name").reset_index(drop=True)
    test = images[is_test].sort_values("image_name").reset_index(drop=True)

    _write_images(train, root / "train", image_size, seed)
    _write_images(test, root / "test", image_size, seed)
    test[META_COLUMNS].to_csv(root / "test.csv", index=False)
    pd.DataFrame({"image_name": test["image_name"], "target": 0}).to_csv(
        root / "sample_submission.csv", index=False)
    train[META_COLUMNS + ["diagnosis", "target"]].to_csv(root / "train.csv", index=False)


def ensure_sample(root, **kwargs) -> bool:
    """Generate the sample into root unless root/train.csv already exists.

    Generation goes to the sibling folder ``<root>.tmp`` that is renamed into
    place at the end, so an interrupted run is redone next time.  Returns True
    if it generated.  Raises FileExistsError if root exists, is not empty and
    has no train.csv (it is not ours to overwrite)."""
    root = Path(root)
    if (root / "train.csv").exists():
        return False
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty but has no train.csv")
    tmp = root.parent / (root.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    generate_sample(tmp, **kwargs)
    if root.exists():
        root.rmdir()  # empty, checked above
    os.replace(tmp, root)
    return True
