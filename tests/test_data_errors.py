"""Bad input: every problem is found before training starts and reported in one line naming the file,
the column and the rows (the first few and their count); the CLI prints ``error: ...`` and exits 2.

Each test copies the session's tiny sample into tmp_path and breaks one thing. Most call the library
(``trainer.train`` / ``tables``) directly; a few run train.py / infer.py themselves (conftest.run_main).
"""
from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, one_error_line, run_main, snapshot, tiny_overrides
from PIL import Image

from pipeline.core import config as C
from pipeline.core.errors import DataError
from pipeline.data.cache import build_cache, decode
from pipeline.data.features import MISSING, MetaTransform
from pipeline.data.prepare import prepare
from pipeline.data.tables import load_test, load_train
from pipeline.train import trainer

TRAIN, INFER = str(ROOT / "train.py"), str(ROOT / "infer.py")
SENTINEL = "image_name,fold,target,pred\nISIC_sentinel,0,1,0.5\n"


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Module scope, so that it also covers the module fixtures."""
    yield


def copy_data(src: Path, dst: Path) -> Path:
    """A private copy of the sample (never the session fixture itself), without fold tables of other tests."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*_folds*.csv"))
    return dst


@pytest.fixture
def data(tiny_data, tmp_path) -> Path:
    return copy_data(tiny_data, tmp_path / "data")


def make_cfg(root: Path, work: Path, **extra) -> C.Config:
    return C.load_config(None, tiny_overrides(root, work, **{"train.epochs": 1, **extra}))


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"image_name": "string", "patient_id": "string"})


def fails_before_training(cfg: C.Config, *parts: str) -> str:
    """train() on an existing experiment (same config, a sentinel oof.csv) must raise DataError with a
    one-line message containing ``parts``, and leave every file of the experiment as it was."""
    exp = cfg.exp_dir
    (exp / "fold0").mkdir(parents=True)
    (exp / "config.yaml").write_text(C.to_yaml(cfg))
    (exp / "oof.csv").write_text(SENTINEL)
    (exp / "fold0" / "val_predictions.csv").write_text(SENTINEL)
    before = snapshot(exp)
    with pytest.raises(DataError) as info:
        trainer.train(cfg)
    assert snapshot(exp) == before, "files of the existing experiment changed"
    assert not list(exp.glob("fold*/*.pt")) and not (exp / "fold1").exists()
    msg = str(info.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def test_missing_train_csv(data, tmp_path):
    (data / "train.csv").unlink()
    msg = fails_before_training(make_cfg(data, tmp_path), "file not found")
    assert msg.startswith(f"{data / 'train.csv'}:")


def test_cli_missing_train_csv_in_a_folder_of_data_is_one_error_line(data, tmp_path):
    """With the default data.generate_sample=true, a data folder without its table must not get the
    synthetic sample (nor a traceback): the user hears that the table is missing."""
    (data / "train.csv").rename(data / "labels.csv")
    args = tiny_overrides(data, tmp_path)
    args.remove("data.generate_sample=False")
    line = one_error_line(run_main(TRAIN, *args, cwd=tmp_path, check=False), alone=True)
    assert "train.csv" in line and str(data) in line
    assert not (tmp_path / "oof").exists() and not (data / "train.csv").exists()


@pytest.mark.parametrize("column", ["sex", "target", "patient_id"])
def test_missing_column(data, tmp_path, column):
    read(data / "train.csv").drop(columns=column).to_csv(data / "train.csv", index=False)
    msg = fails_before_training(make_cfg(data, tmp_path), f"missing column(s) {column} ", "(has: image_name")
    assert msg.startswith(f"{data / 'train.csv'}:")


@pytest.mark.parametrize("content, says", [("", "the file is empty"),
                                           ("image_name,patient_id,sex,age_approx,anatom_site_general_challenge,"
                                            "target\n", "no rows")], ids=["zero_bytes", "header_only"])
def test_empty_csv(data, tmp_path, content, says):
    (data / "train.csv").write_text(content)
    fails_before_training(make_cfg(data, tmp_path), f"{data / 'train.csv'}: {says}")


def test_duplicate_ids_listed_with_their_count(data, tmp_path):
    df = read(data / "train.csv")
    df.loc[20:26, "image_name"] = df["image_name"][:7].to_numpy()  # 7 ids appear twice
    df.to_csv(data / "train.csv", index=False)
    first = df["image_name"][:7].tolist()
    fails_before_training(make_cfg(data, tmp_path), f"{data / 'train.csv'}: duplicate ids in column 'image_name'",
                          *first[:3], "(7 in all)")


def test_empty_ids_are_counted(data, tmp_path):
    df = read(data / "train.csv")
    df.loc[60:66, "image_name"] = pd.NA
    df.to_csv(data / "train.csv", index=False)
    fails_before_training(make_cfg(data, tmp_path), f"{data / 'train.csv'}: column 'image_name' is empty in 7 row(s)")


@pytest.mark.parametrize("case", ["missing_column", "same_ids"])
def test_bad_external_table(data, tmp_path, case):
    ext = read(data / "train.csv")[:10]
    if case == "missing_column":
        ext = ext.drop(columns="sex").assign(image_name=lambda d: "EXT_" + d["image_name"])
        for old, new in zip(read(data / "train.csv")["image_name"][:10], ext["image_name"]):
            shutil.copy(data / "train" / f"{old}.jpg", data / "train" / f"{new}.jpg")
    ext.rename(columns={"image_name": "image"}).to_csv(data / "external.csv", index=False)
    cfg = make_cfg(data, tmp_path, **{"data.external_csv": "external.csv",
                                      "data.external_rename": "{image: image_name}"})
    says = ["missing column(s) sex (after data.external_rename"] if case == "missing_column" else \
        [f"ids also in {data / 'train.csv'}", *sorted(ext["image_name"])[:5], "(10 in all)"]
    msg = fails_before_training(cfg, *says)
    assert msg.startswith(f"{data / 'external.csv'}:")


@pytest.mark.parametrize("value, shown", [("unknown", "'unknown'"), (2, "'2'"), (np.nan, "'nan'")],
                         ids=["unknown", "two", "nan"])
def test_non_binary_target(data, tmp_path, value, shown):
    df = read(data / "train.csv")
    df["target"] = df["target"].astype(object)
    df.loc[30:36, "target"] = value  # 7 bad rows
    df.to_csv(data / "train.csv", index=False)
    bad = df["image_name"][30:37].tolist()
    fails_before_training(make_cfg(data, tmp_path), f"{data / 'train.csv'}: column 'target' must be 0/1",
                          shown, *bad[:3], "(7 in all)")


def test_float_targets_are_accepted_as_binary(data, tmp_path):
    df = read(data / "train.csv")
    (data / "train.csv").write_text(df.assign(target=df["target"].map({0: "0.0", 1: "1.0"})).to_csv(index=False))
    assert "0.0" in (data / "train.csv").read_text()
    out = load_train(make_cfg(data, tmp_path))
    assert out["target"].dtype == np.int64
    assert out["target"].tolist() == df["target"].tolist()


def test_missing_images_are_all_listed_at_once(data, tmp_path):
    ids = read(data / "train.csv")["image_name"].tolist()
    gone = ids[5:12]
    for i in gone:
        (data / "train" / f"{i}.jpg").unlink()
    fails_before_training(make_cfg(data, tmp_path), f"{data / 'train'}: 7 training image(s) missing (.jpg)",
                          *gone[:5], "(7 in all)")


def test_filter_on_a_column_that_does_not_exist(data, tmp_path):
    fails_before_training(make_cfg(data, tmp_path, **{"data.drop_where": "{tfrecord: -1}"}),
                          f"{data / 'train.csv'}: column 'tfrecord' named in data.")


@pytest.mark.parametrize("rare,word", [(1, "positive"), (0, "negative")], ids=["positives", "negatives"])
def test_a_fold_without_one_class(data, tmp_path, rare, word):
    """3 rows of one class cannot cover 5 folds: the AUC of the others is undefined."""
    df = read(data / "train.csv")
    df["target"] = 1 - rare
    df.loc[[0, 1, 2], "target"] = rare
    df.to_csv(data / "train.csv", index=False)
    msg = fails_before_training(make_cfg(data, tmp_path, **{"folds.n_folds": 5}), f"have no {word}", "fewer folds")
    assert msg.startswith(str(data / "train_folds5_seed42.csv"))


def test_test_ids_differ_from_sample_submission(data, tmp_path):
    sub = read(data / "sample_submission.csv")
    only_test = sub["image_name"][:7].tolist()
    pd.concat([sub[7:], pd.DataFrame({"image_name": ["ISIC_extra1", "ISIC_extra2"], "target": 0})]).to_csv(
        data / "sample_submission.csv", index=False)
    with pytest.raises(DataError) as info:
        load_test(make_cfg(data, tmp_path))
    msg = str(info.value)
    assert msg.startswith(f"{data / 'sample_submission.csv'}: ids differ from {data / 'test.csv'}")
    assert "2 only in the submission: ISIC_extra1, ISIC_extra2 (2 in all); 7 only in the test table: " in msg
    assert all(i in msg for i in sorted(only_test)[:5]) and msg.endswith("(7 in all)")


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------
def corrupt(path: Path):
    path.write_bytes(b"this is not a JPEG\n" * 20)


def truncate(path: Path):
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def empty(path: Path):
    path.write_bytes(b"")


@pytest.mark.parametrize("damage", [corrupt, truncate, empty], ids=["corrupt", "truncated", "zero_bytes"])
def test_undecodable_images_fail_by_default(data, tmp_path, damage):
    ids = read(data / "train.csv")["image_name"].tolist()
    bad = ids[40:47]
    for i in bad:
        damage(data / "train" / f"{i}.jpg")
    fails_before_training(make_cfg(data, tmp_path), f"{data / 'train'}: 7 image(s) cannot be decoded",
                          *bad[:3], "(7 in all)", "data.on_bad_image=skip")


@pytest.fixture(scope="module")
def skipped(tiny_data, tmp_path_factory):
    """Two undecodable images (skipped) and four that need a conversion to RGB; trained, 2 folds x 1 epoch."""
    work = tmp_path_factory.mktemp("skip")
    root = copy_data(tiny_data, work / "data")
    ids = read(root / "train.csv")["image_name"].tolist()
    run = SimpleNamespace(ids=ids, bad=[ids[3], ids[50]], converted={})
    corrupt(root / "train" / f"{ids[3]}.jpg")
    truncate(root / "train" / f"{ids[50]}.jpg")
    for i, mode in zip(ids[10:14], ["L", "RGBA", "P", "CMYK"]):
        path = root / "train" / f"{i}.jpg"
        rgb = Image.open(path).convert("RGB")
        rgb.save(work / f"{i}_rgb.png")  # lossless reference of what the converted image should give
        # RGBA and palette images cannot be JPEGs: PNG content under a .jpg name, as happens in real folders
        rgb.convert(mode).save(path, format="JPEG" if mode in ("L", "CMYK") else "PNG")
        run.converted[mode] = i
    cfg = make_cfg(root, work, **{"data.on_bad_image": "skip", "folds.n_folds": 2})
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        run.oof = trainer.train(cfg)
        run.data = prepare(cfg)  # again: the cache is reused, its two bad images read again
    run.stderr, run.work, run.cfg = err.getvalue(), work, cfg
    run.folds = read(root / "train_folds2_seed42.csv")
    return run


def test_skip_lists_the_undecodable_images_and_trains_without_them(skipped):
    warnings = [line for line in skipped.stderr.splitlines() if line.startswith("warning: skipping")]
    assert len(warnings) == 2  # train() and the second prepare()
    assert "skipping 2 undecodable image(s)" in warnings[0]
    assert all(i in warnings[0] for i in skipped.bad)
    good = set(skipped.ids) - set(skipped.bad)
    assert set(skipped.folds["image_name"]) == good
    oof = read(skipped.cfg.exp_dir / "oof.csv")
    assert sorted(oof["image_name"]) == sorted(good) and sorted(oof["fold"].unique()) == [0, 1]
    assert set(skipped.data.df["image_name"]) == good


def test_grayscale_rgba_palette_cmyk_images_are_cached_as_rgb(skipped):
    data = skipped.data
    assert data.images.dtype == np.uint8 and data.images.shape[1:] == (32, 32, 3)
    row = dict(zip(data.df["image_name"], data.df["cache_row"]))
    gray = data.images[row[skipped.converted["L"]]]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all() and gray.std() > 0
    for mode, tolerance in [("RGBA", 0), ("P", 12), ("CMYK", 12)]:
        i = skipped.converted[mode]
        expected = decode(skipped.work / f"{i}_rgb.png", 32).astype(int)
        assert np.abs(data.images[row[i]].astype(int) - expected).mean() <= tolerance, mode
    assert set(skipped.converted.values()) <= set(read(skipped.cfg.exp_dir / "oof.csv")["image_name"])


def test_a_cache_array_without_its_json_is_rebuilt(tmp_path):
    """The .json is written after the array: a build killed in between leaves an array alone, which
    the next build must not trust (its list of unread rows and digests are gone, its pixels unchecked)."""
    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30)]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (20, 20), colour).save(paths[-1])
    first = build_cache(paths, 16, tmp_path / "cache")
    npy = next((tmp_path / "cache").glob("*.npy"))
    expected = np.array(first.images)
    del first
    np.save(npy, np.zeros_like(expected))  # as if the array were damaged...
    npy.with_suffix(".json").unlink()      # ...by a build that never wrote its .json
    again = build_cache(paths, 16, tmp_path / "cache")
    np.testing.assert_array_equal(again.images, expected)
    assert again.bad == {} and all(again.digests) and npy.with_suffix(".json").is_file()


# ---------------------------------------------------------------------------------------------
# Meta features
# ---------------------------------------------------------------------------------------------
def test_nan_unknown_and_unseen_values_map_to_the_missing_level():
    fit = pd.DataFrame({"sex": ["male", "female", np.nan, "unknown", "", "male"],
                        "age": ["30", "unknown", "50", np.nan, "70", "40"], "pid": list("aabbcc")})
    new = pd.DataFrame({"sex": ["other", np.nan, " Unknown", "FEMALE"], "age": ["n/a", np.nan, "60", "unknown"],
                        "pid": ["x", "x", np.nan, "y"]})
    t = MetaTransform(["sex"], ["age"], n_images=False, group_col="pid").fit(fit)
    assert t.levels["sex"] == ["female", "male", MISSING]
    x = t.transform(new)
    names = t.names
    onehot = x[:, [names.index(f"sex={lvl}") for lvl in t.levels["sex"]]]
    assert onehot.tolist() == [[0, 0, 1], [0, 0, 1], [0, 0, 1], [1, 0, 0]]
    assert x[:, names.index("age_missing")].tolist() == [1, 1, 0, 1]
    assert x[:, names.index("age")][[0, 1, 3]].tolist() == [0, 0, 0]
    assert t.stats["age"][0] == pytest.approx(47.5)  # mean of 30, 50, 70, 40: 'unknown' is not a number


# ---------------------------------------------------------------------------------------------
# Through the command line: another experiment in the output folder, --force, infer-time id checks
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli(tiny_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("cli")
    root = copy_data(tiny_data, work / "data")
    args = tiny_overrides(root, work, **{"train.epochs": 1, "folds.n_folds": 2})
    run = SimpleNamespace(exp=work / "oof" / "tiny", root=root)
    # an experiment trained at 48 px already lives in the output folder
    (run.exp / "fold0").mkdir(parents=True)
    (run.exp / "config.yaml").write_text(C.to_yaml(C.load_config(None, args + ["model.image_size=48"])))
    (run.exp / "oof.csv").write_text(SENTINEL)
    (run.exp / "fold0" / "val_predictions.csv").write_text(SENTINEL)
    run.before = snapshot(run.exp)
    run.refused = run_main(TRAIN, *args, cwd=work, check=False)
    run.after_refusal = snapshot(run.exp)
    run.forced = run_main(TRAIN, "--force", "--folds", "0", *args, cwd=work, check=False)
    sub = read(root / "sample_submission.csv")
    run.only_test = sorted(sub["image_name"][:7])
    sub[7:].to_csv(root / "sample_submission.csv", index=False)
    run.infer = run_main(INFER, "--allow-missing-folds", *args, cwd=work, check=False)
    return run


def test_cli_refuses_an_output_folder_of_another_experiment(cli):
    line = one_error_line(cli.refused, alone=True)
    assert f"{cli.exp / 'config.yaml'} holds a different experiment" in line
    assert "model.image_size: 48 -> 32" in line and "--force" in line
    assert cli.after_refusal == cli.before


def test_cli_force_replaces_the_other_experiment(cli):
    assert cli.forced.returncode == 0, cli.forced.stderr[-2000:]
    assert "model.image_size" in cli.forced.stderr  # it says what it deletes
    oof = read(cli.exp / "oof.csv")
    assert "ISIC_sentinel" not in set(oof["image_name"]) and len(oof) > 20 and set(oof["fold"]) == {0}
    assert C.load_config(cli.exp / "config.yaml").model.image_size == 32
    assert (cli.exp / "fold0" / "best.pt").is_file()


def test_cli_infer_refuses_test_ids_that_differ_from_sample_submission(cli):
    line = one_error_line(cli.infer, alone=True)
    assert f"{cli.root / 'sample_submission.csv'}: ids differ from {cli.root / 'test.csv'}" in line
    assert "only in the submission" not in line and "7 only in the test table: " in line
    assert all(i in line for i in cli.only_test[:5]) and "(7 in all)" in line
    assert not (cli.exp / "submission.csv").exists()
