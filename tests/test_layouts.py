"""Real-world data layouts, each read through its example config in configs/.

Small stand-ins are rearranged from the generated sample into the shape of the real downloads; each
config is loaded from its file with only the data root, output folders and tiny training settings
overridden, then trained (2 folds x 1 epoch, 32 px) and used for a submission. So these tests show
that the configs' column, folder and extension names fit those layouts:

1. Kaggle SIIM-ISIC 2020 download: train.csv, test.csv, sample_submission.csv, jpeg/{train,test}/*.jpg
2. jpeg-melanoma-NxN: train.csv with tfrecord/width/height (tfrecord == -1 marks duplicates), train/, test/
3. layout 2 plus jpeg-isic2019-NxN as external training-only data (own table and folder, a renamed
   column, rows without patient_id)
4. a generic image + tabular task: other column names, .png images, rows without a subject
5. the real ISIC 2017 data in ../shared/data (and the real 2020 table for the folds), when present
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SHARED_DATA, run_main
from PIL import Image

from pipeline.core import config as C
from pipeline.data import prepare as prepare_module
from pipeline.data.features import MISSING
from pipeline.data.folds import make_folds
from pipeline.data.prepare import prepare as prepare_data
from pipeline.data.sample import generate_sample
from pipeline.data.tables import load_test
from pipeline.model.net import ImageMetaNet
from pipeline.report.cv import report
from pipeline.train import trainer
from pipeline.train.infer import make_submission

CONFIGS = ROOT / "configs"
TINY = {"model.image_size": 32, "folds.n_folds": 2, "train.epochs": 1, "train.batch_size": 16,
        "infer.tta": 2, "infer.batch_size": 64}


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Module scope, so that it also covers the module fixtures."""
    yield


def overrides(root: Path, work: Path, **extra) -> list[str]:
    values = {"data.root": root, "data.cache_dir": work / "cache", "output_dir": work / "oof", **TINY, **extra}
    return [f"{k}={v}" for k, v in values.items()]


def layout_cfg(config: str, root: Path, work: Path, **extra) -> C.Config:
    return C.load_config(CONFIGS / config, overrides(root, work, **extra))


def read(path: Path, *ids: str) -> pd.DataFrame:
    return pd.read_csv(path, dtype={c: "string" for c in ids or ("image_name", "patient_id")})


def kaggle_columns(train: pd.DataFrame) -> pd.DataFrame:
    """The 2020 table's diagnosis columns (before target), as in the real train.csv."""
    malignant = train["target"] == 1
    return train.assign(diagnosis=np.where(malignant, "melanoma", "unknown"),
                        benign_malignant=np.where(malignant, "malignant", "benign"))[
        ["image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis",
         "benign_malignant", "target"]]


# ---------------------------------------------------------------------------------------------
# 1. The Kaggle 2020 download, through the real command lines
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kaggle(tiny_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("kaggle2020")
    root = work / "siim-isic-melanoma-classification"
    root.mkdir()
    kaggle_columns(read(tiny_data / "train.csv")).to_csv(root / "train.csv", index=False)
    shutil.copy(tiny_data / "test.csv", root / "test.csv")
    # in another order than test.csv: the submission must follow the template
    read(tiny_data / "sample_submission.csv").sample(frac=1, random_state=0).to_csv(
        root / "sample_submission.csv", index=False)
    for part in ("train", "test"):
        shutil.copytree(tiny_data / part, root / "jpeg" / part)
    args = ["--config", str(CONFIGS / "kaggle2020.yaml"), *overrides(root, work)]
    run = SimpleNamespace(root=root, exp=work / "oof" / "kaggle2020")
    run.train = run_main(str(ROOT / "train.py"), *args, cwd=work)
    run.infer = run_main(str(ROOT / "infer.py"), *args, cwd=work)
    return run


def test_kaggle2020_layout_trains_and_submits_through_the_cli(kaggle):
    train = read(kaggle.root / "train.csv")
    oof = read(kaggle.exp / "oof.csv")
    assert sorted(oof["image_name"]) == sorted(train["image_name"]) and set(oof["fold"]) == {0, 1}
    sub = read(kaggle.exp / "submission.csv")
    sample = read(kaggle.root / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns)
    assert list(sub["image_name"]) == list(sample["image_name"])  # the template's order, not test.csv's
    assert list(sample["image_name"]) != list(read(kaggle.root / "test.csv")["image_name"])
    assert sub["target"].between(0, 1).all() and sub["target"].nunique() > 1


# ---------------------------------------------------------------------------------------------
# 2. jpeg-melanoma-NxN: duplicates marked tfrecord == -1, no submission template
# ---------------------------------------------------------------------------------------------
def melanoma_resized(src: Path, root: Path) -> list[str]:
    """Write the layout into root; return the ids marked as duplicates (tfrecord == -1)."""
    root.mkdir(parents=True)
    train = kaggle_columns(read(src / "train.csv"))
    codes = pd.factorize(train["patient_id"])[0]
    train = train.assign(tfrecord=codes % 15, width=6000, height=4000)
    dups = train.index[3::17][:7]
    train.loc[dups, "tfrecord"] = -1
    train.to_csv(root / "train.csv", index=False)
    read(src / "test.csv").assign(width=6000, height=4000).to_csv(root / "test.csv", index=False)
    for part in ("train", "test"):
        shutil.copytree(src / part, root / part)
    return train["image_name"][dups].tolist()


@pytest.fixture(scope="module")
def resized(tiny_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("resized")
    root = work / "jpeg-melanoma-32x32"
    run = SimpleNamespace(root=root, work=work, dups=melanoma_resized(tiny_data, root))
    run.cfg = layout_cfg("melanoma_resized.yaml", root, work)
    run.oof = trainer.train(run.cfg)
    run.sub = read(make_submission(run.cfg))
    return run


def test_melanoma_resized_drops_the_tfrecord_minus_one_duplicates(resized):
    assert len(resized.dups) == 7
    train = read(resized.root / "train.csv")
    kept = set(train["image_name"]) - set(resized.dups)
    assert set(read(resized.cfg.exp_dir / "oof.csv")["image_name"]) == kept
    assert set(read(resized.root / "train_folds2_seed42.csv")["image_name"]) == kept
    features = json.loads((resized.cfg.exp_dir / "features.json").read_text())
    assert features["file_size"] and features["group_context"]  # the config's context features are on
    # without the filter the duplicates are training rows (own fold table: the saved one lists other ids)
    cfg = layout_cfg("melanoma_resized.yaml", resized.root, resized.work, **{
        "data.drop_where": "{}", "folds.path": resized.work / "all_folds.csv"})
    assert sorted(prepare_data(cfg).df["image_name"]) == sorted(train["image_name"])


def test_melanoma_resized_submission_follows_test_csv(resized):
    test = read(resized.root / "test.csv")
    assert list(resized.sub.columns) == ["image_name", "target"]
    assert list(resized.sub["image_name"]) == list(test["image_name"])
    assert resized.sub["target"].between(0, 1).all()


# ---------------------------------------------------------------------------------------------
# 3. Layout 2 plus external ISIC 2019 data for training only
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def external(tiny_data, tmp_path_factory, monkeypatch_module):
    work = tmp_path_factory.mktemp("external")
    root = work / "jpeg-melanoma-512x512"  # the config names ../jpeg-isic2019-512x512 beside it
    dups = melanoma_resized(tiny_data, root)
    generate_sample(work / "gen2019", n_train_patients=8, n_test_patients=1, image_size=48, seed=7)
    ext = kaggle_columns(read(work / "gen2019" / "train.csv"))
    rng = np.random.default_rng(0)
    ext["target"] = (rng.random(len(ext)) < 0.6).astype(int)  # a base rate far from the 2020 table's
    ext["diagnosis"] = np.where(ext["target"] == 1, "MEL", "NV")  # in 2019's words: renamed by the config
    ext.loc[ext.index[::3], "patient_id"] = pd.NA  # 2019 images often have no patient id
    ext = ext.assign(tfrecord=np.arange(len(ext)) % 15, width=1024, height=1024)
    ext.loc[ext.index[[1, 5, 9]], "tfrecord"] = -1  # duplicates there too: dropped by the same filter
    ext = ext.rename(columns={"anatom_site_general_challenge": "anatom_site_general"})  # the 2019 name
    ext_root = work / "jpeg-isic2019-512x512"
    ext_root.mkdir()
    ext.to_csv(ext_root / "train.csv", index=False)
    shutil.copytree(work / "gen2019" / "train", ext_root / "train")
    assert not set(ext["image_name"]) & set(read(root / "train.csv")["image_name"])

    datasets, biases, prepared = [], [], []
    make_dataset, init_bias, prepare = trainer.ImageMetaDataset, ImageMetaNet.init_head_bias, trainer.prepare

    def spy_dataset(images, rows, meta, targets, transform=None, seed=0):
        datasets.append((np.asarray(rows).copy(), transform is not None))
        return make_dataset(images, rows, meta, targets, transform, seed)

    def spy_bias(self, rate, class_shares=None):
        biases.append(rate)
        return init_bias(self, rate, class_shares)

    def spy_prepare(cfg):
        prepared.append(prepare(cfg))
        return prepared[-1]

    monkeypatch_module.setattr(trainer, "ImageMetaDataset", spy_dataset)
    monkeypatch_module.setattr(prepare_module, "ImageMetaDataset", spy_dataset)
    monkeypatch_module.setattr(ImageMetaNet, "init_head_bias", spy_bias)
    monkeypatch_module.setattr(trainer, "prepare", spy_prepare)
    cfg = layout_cfg("melanoma_external2019.yaml", root, work, **{
        "data.external_rename": "{anatom_site_general: anatom_site_general_challenge}"})
    oof = trainer.train(cfg)
    monkeypatch_module.undo()
    usable = ext[ext["tfrecord"] != -1]
    return SimpleNamespace(cfg=cfg, root=root, dups=dups, ext=usable, oof=oof, data=prepared[0],
                           datasets=datasets, biases=biases, sub=read(make_submission(cfg)))


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_external_rows_train_every_fold_and_are_never_validated(external):
    df = external.data.df
    is_ext = df["image_name"].isin(external.ext["image_name"])
    assert set(df["image_name"][is_ext]) == set(external.ext["image_name"])  # tfrecord -1 dropped there too
    assert (df["fold"][is_ext] == -1).all() and (df["fold"][~is_ext] >= 0).all()
    assert df["is_external"].tolist() == is_ext.tolist()
    # the layout's diagnosis: 2019's MEL/NV renamed to the 2020 classes, the target's agreeing
    assert set(df["diagnosis"][is_ext]) == {"melanoma", "nevus"}
    assert (df["diagnosis"][is_ext] == "melanoma").tolist() == (df["target"][is_ext] == 1).tolist()
    ext_rows = set(df["cache_row"][is_ext])
    assert len(external.datasets) == 4  # (train, validation) for each of the 2 folds
    for k in (0, 1):
        (train_rows, augmented), (val_rows, val_augmented) = external.datasets[2 * k: 2 * k + 2]
        assert augmented and not val_augmented
        assert ext_rows <= set(train_rows) and not ext_rows & set(val_rows)
        assert sorted(val_rows) == sorted(df["cache_row"][df["fold"] == k])


def test_external_rows_are_not_in_the_oof_or_the_cv(external):
    oof = read(external.cfg.exp_dir / "oof.csv")
    own = set(read(external.root / "train.csv")["image_name"]) - set(external.dups)
    assert set(oof["image_name"]) == own and len(oof) == len(own)
    assert report(external.cfg.exp_dir, plot=False)["rows"] == len(own)
    assert len(external.sub) == len(read(external.root / "test.csv"))


def test_head_bias_starts_at_the_training_rate_including_external_rows(external):
    df = external.data.df
    for k, rate in enumerate(external.biases):
        train = df[df["fold"] != k]
        assert rate == pytest.approx(train["target"].mean())
        assert abs(rate - train["target"][~train["is_external"]].mean()) > 0.05  # the external rows count


# ---------------------------------------------------------------------------------------------
# 4. A generic image + tabular task: other names, .png images, rows without a subject
# ---------------------------------------------------------------------------------------------
GENERIC_RENAME = {"image_name": "id", "patient_id": "subject", "sex": "gender", "age_approx": "age",
                  "anatom_site_general_challenge": "site", "target": "label"}


def generic(src: Path, root: Path) -> dict:
    """Ids with leading zeros (they must stay strings), a numeric column with gaps, an unused column,
    PNG images (some grayscale or with alpha); returns {old id: new id}."""
    train, test = read(src / "train.csv"), read(src / "test.csv")
    new_id = {old: f"{k:05d}" for k, old in enumerate(sorted([*train["image_name"], *test["image_name"]]))}
    rng = np.random.default_rng(1)
    for part, df in (("train", train), ("test", test)):
        old_ids = df["image_name"].tolist()
        df = df.rename(columns=GENERIC_RENAME)
        df["id"] = df["id"].map(new_id)
        df["weight"] = np.where(rng.random(len(df)) < 0.1, np.nan, rng.normal(70, 12, len(df)).round(1))
        df["notes"] = "scanner A"
        df.loc[df.index[::6], "subject"] = pd.NA
        columns = ["id", "subject", "gender", "age", "weight", "site", "notes"] + ["label"] * (part == "train")
        (root / "images" / part).mkdir(parents=True)
        df[columns].to_csv(root / f"{part}.csv", index=False)
        for j, (old, new) in enumerate(zip(old_ids, df["id"])):
            img = Image.open(src / part / f"{old}.jpg")
            img = img.convert("L") if j % 10 == 1 else img.convert("RGBA") if j % 10 == 2 else img
            img.save(root / "images" / part / f"{new}.png")
    pd.DataFrame({"id": test["image_name"].map(new_id), "label": 0}).to_csv(root / "sample_submission.csv",
                                                                             index=False)
    return new_id


@pytest.fixture(scope="module")
def generic_task(tiny_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("generic")
    root = work / "my_task"
    generic(tiny_data, root)
    cfg = layout_cfg("generic.yaml", root, work)
    oof = trainer.train(cfg)
    return SimpleNamespace(root=root, cfg=cfg, oof=oof, sub_path=make_submission(cfg))


def test_generic_task_trains_with_its_own_names(generic_task):
    train = read(generic_task.root / "train.csv", "id", "subject")
    assert train["id"].str.startswith("0").any() and train["subject"].isna().sum() >= 5
    oof = read(generic_task.cfg.exp_dir / "oof.csv", "id", "subject")
    assert sorted(oof["id"]) == sorted(train["id"])  # leading zeros kept
    assert list(oof.columns) == ["id", "subject", "fold", "target", "pred"]
    m = oof.merge(train, on="id", suffixes=("", "_train"))
    assert (m["target"] == m["label"]).all()
    assert m.dropna(subset=["subject"]).groupby("subject")["fold"].nunique().max() == 1
    assert set(m["fold"][m["subject"].isna()]) == {0, 1}  # own groups, spread over the folds
    names = json.loads((generic_task.cfg.exp_dir / "features.json").read_text())
    assert names["categorical"] == ["gender", "site"] and names["numeric"] == ["age", "weight"]


def test_generic_task_submission_uses_the_template_columns(generic_task):
    sub = read(generic_task.sub_path, "id")
    sample = read(generic_task.root / "sample_submission.csv", "id")
    assert list(sub["id"]) == list(sample["id"])
    assert sub.iloc[:, 1].between(0, 1).all()
    assert list(sub.columns) == list(sample.columns)  # id, label: the column name the task expects


# ---------------------------------------------------------------------------------------------
# 5. Real data in ../shared/data
# ---------------------------------------------------------------------------------------------
ISIC2017, ISIC2020 = SHARED_DATA / "isic2017", SHARED_DATA / "isic2020"


@pytest.mark.skipif(not (ISIC2017 / "metadata.csv").is_file(), reason="../shared/data/isic2017 is absent")
def test_isic2017_real_data_through_its_config(tmp_path):
    cfg = C.load_config(CONFIGS / "isic2017.yaml", [
        f"data.root={ISIC2017}", f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'oof'}",
        f"folds.path={tmp_path / 'folds.csv'}", "model.image_size=32"])
    start = time.perf_counter()
    data = prepare_data(cfg)
    took = time.perf_counter() - start
    meta = read(ISIC2017 / "metadata.csv", "image_id")
    train = meta[meta["split"] == "train"].reset_index(drop=True)
    df = data.df
    assert df["image_id"].tolist() == train["image_id"].tolist() and len(df) == 2000
    assert data.images.shape == (2000, 32, 32, 3)
    assert df["melanoma"].dtype == np.int64 and set(df["melanoma"]) == {0, 1}
    assert df["melanoma"].sum() == (train["melanoma"] == 1.0).sum()
    names = data.transform.names
    assert data.transform.levels["sex"] == ["female", "male", MISSING]
    unknown_sex = (train["sex"] == "unknown").to_numpy()
    unknown_age = (train["age_approximate"] == "unknown").to_numpy()
    assert unknown_sex.sum() > 100 and unknown_age.sum() > 100
    assert (data.meta[:, names.index(f"sex={MISSING}")] == unknown_sex).all()
    assert (data.meta[:, names.index("age_approximate_missing")] == unknown_age).all()
    assert (data.meta[unknown_age, names.index("age_approximate")] == 0).all()
    per_fold = df.groupby("fold")["melanoma"].agg(["size", "sum"])
    assert per_fold.index.tolist() == [0, 1, 2, 3, 4] and (per_fold["size"] - 400).abs().max() <= 2
    assert (per_fold["sum"] - df["melanoma"].sum() / 5).abs().max() <= 1
    test, sub = load_test(cfg)
    assert test["image_id"].tolist() == meta["image_id"][meta["split"] == "val"].tolist() == sub["image_id"].tolist()
    assert took < 60, f"prepare() took {took:.0f}s"  # ~2000 256 px JPEGs decoded once into the cache


@pytest.mark.skipif(not (ISIC2020 / "train.csv").is_file(), reason="../shared/data/isic2020 is absent")
def test_isic2020_folds_are_patient_disjoint_and_balanced():
    df = read(ISIC2020 / "train.csv")
    fold = make_folds(df, "target", "patient_id", 5, 42)
    df = df.assign(fold=fold)
    assert set(fold) == {0, 1, 2, 3, 4}
    assert df.groupby("patient_id")["fold"].nunique().max() == 1
    rate = df["target"].mean()
    assert rate == pytest.approx(0.0176, abs=1e-4)
    per_fold = df.groupby("fold")["target"].agg(["size", "mean"])
    assert (per_fold["mean"] - rate).abs().max() < 0.001
    assert (per_fold["size"] / per_fold["size"].mean() - 1).abs().max() < 0.01
