"""The diagnosis head (issue 18): classes from the training rows, the head's bias at the class
priors, mixup and masking of the class targets, what is predicted, resume, and bad input."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, run_main, tiny_overrides

from pipeline.core import config as C
from pipeline.core.errors import ConfigError, DataError, ExperimentError
from pipeline.data.diagnosis import OTHER, Diagnosis, clean
from pipeline.data.prepare import prepare
from pipeline.data.tables import diagnosis_from_onehot
from pipeline.model.checkpoint_file import load_checkpoint
from pipeline.model.mixup import head_loss, mixup, mixup_loss
from pipeline.model.net import ImageMetaNet, build_model
from pipeline.train import trainer as T

AUX = {"data.diagnosis_col": "diagnosis", "train.aux_weight": 1.0}


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    pass


def test_classes_come_from_the_training_rows_rare_ones_grouped_and_unknown_left_out():
    values = pd.Series(["nevus"] * 20 + ["melanoma"] * 3 + ["solar lentigo"] * 2 + ["unknown", None, " Unknown "])
    diag = Diagnosis.fit(values, "diagnosis", min_rows=5, melanoma="melanoma")
    assert diag.classes == ["melanoma", "nevus", OTHER] and diag.grouped == ["solar lentigo"]  # melanoma kept
    codes, unseen = diag.codes(pd.Series(["nevus", "solar lentigo", "unknown", None, "melanoma", "lentigo NOS"]))
    assert codes.tolist() == [1, 2, -1, -1, 0, -1] and unseen.tolist() == [False] * 5 + [True]
    np.testing.assert_allclose(diag.shares(np.array([0, 1, 1, 1, -1])), [0.25, 0.75, 0.0])
    assert Diagnosis.from_dict(json.loads(json.dumps(diag.to_dict()))) == diag
    assert clean(pd.Series(["NA", "?", "nevus "])).tolist()[2] == "nevus"


def test_the_head_bias_starts_at_the_base_rate_and_the_class_priors(tiny_cfg):
    cfg = tiny_cfg(**{"model.pretrained": "none", **AUX, "model.predict": "mean"})
    diag = Diagnosis("diagnosis", ["melanoma", "nevus", "seborrheic keratosis"], [], "melanoma")
    torch.manual_seed(0)
    model = build_model(cfg, 7, diag)
    shares = np.array([0.2, 0.7, 0.1])
    model.init_head_bias(0.2, shares)
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(8, 3, 32, 32), torch.randn(8, 7))
    assert logits.shape == (8, 4)
    np.testing.assert_allclose(torch.sigmoid(logits[:, 0]).numpy(), 0.2, atol=1e-6)
    np.testing.assert_allclose(torch.softmax(logits[:, 1:], 1).numpy(), np.tile(shares, (8, 1)), atol=1e-6)
    # predict=mean: (binary + the melanoma class's probability) / 2, at the priors 0.2 and 0.2
    np.testing.assert_allclose(model.probability(logits).numpy(), 0.2, atol=1e-6)


@pytest.mark.parametrize("predict", C.PREDICT)
def test_model_predict_scores_its_own_read_out(tiny_cfg, predict):
    """readouts: binary head, the melanoma class (here the 2nd class) of the diagnosis head, their mean,
    in C.PREDICT's order; probability is the one model.predict names."""
    diag = Diagnosis("diagnosis", ["nevus", "melanoma", "seborrheic keratosis"], [], "melanoma")
    model = build_model(tiny_cfg(**{"model.pretrained": "none", **AUX, "model.predict": predict}), 7, diag)
    logits = torch.tensor([[2.0, 0.5, 1.0, -1.0], [-1.0, 0.0, 2.0, 0.0]])
    binary, melanoma = torch.sigmoid(logits[:, 0]), torch.softmax(logits[:, 1:], 1)[:, 1]
    expected = {"binary": binary, "diagnosis": melanoma, "mean": (binary + melanoma) / 2}
    torch.testing.assert_close(model.readouts(logits), torch.stack([expected[m] for m in C.PREDICT], 1))
    torch.testing.assert_close(model.probability(logits), expected[predict])


def test_mixup_mixes_the_class_targets_with_the_same_lambda_and_permutation():
    rng = np.random.default_rng(3)
    x, meta = torch.randn(6, 3, 4, 4), torch.randn(6, 2)
    y = torch.tensor([[1, 0], [0, 1], [0, 2], [0, -1], [1, 0], [0, 1]], dtype=torch.float32)
    _, _, y_a, y_b, lam = mixup(x, meta, y, 1.0, 0.4, rng)
    assert lam != 1.0 and torch.equal(y_a, y)
    assert sorted(map(tuple, y_b.tolist())) == sorted(map(tuple, y.tolist()))  # whole rows permuted
    logits = torch.randn(6, 4)
    expected = lam * head_loss(logits, y_a, 0.5) + (1 - lam) * head_loss(logits, y_b, 0.5)
    assert torch.allclose(mixup_loss(logits, y_a, y_b, lam, 0.5), expected)


def test_the_cross_entropy_leaves_out_unknown_classes_and_its_weight_scales_it():
    logits = torch.randn(4, 4)
    y = torch.tensor([[1, 0], [0, -1], [0, 2], [0, -1]], dtype=torch.float32)
    bce = F.binary_cross_entropy_with_logits(logits[:, 0], y[:, 0])
    ce = F.cross_entropy(logits[[0, 2], 1:], torch.tensor([0, 2]))
    assert torch.allclose(head_loss(logits, y, 2.0), bce + 2.0 * ce)
    assert torch.allclose(head_loss(logits, y, 0.0), bce)
    unknown = y.clone()
    unknown[:, 1] = -1
    assert torch.allclose(head_loss(logits, unknown, 1.0), bce)  # no known class: BCE alone, not NaN
    binary = F.binary_cross_entropy_with_logits(logits[:, 0], y[:, 0])
    assert torch.equal(head_loss(logits[:, :1], y[:, 0]), binary)  # without the head: exactly today's loss


def test_the_column_without_the_head_trains_exactly_as_without_the_column(tiny_cfg):
    plain = tiny_cfg(**{"folds.n_folds": 2, "train.epochs": 1, "name": "plain"})
    recorded = tiny_cfg(**{"folds.n_folds": 2, "train.epochs": 1, "name": "recorded", "data.diagnosis_col": "diagnosis"})
    a = T.train(C.with_overrides(plain, ["train.folds=[0]"]))
    b = T.train(C.with_overrides(recorded, ["train.folds=[0]"]))
    np.testing.assert_array_equal(a["pred"].to_numpy(), b["pred"].to_numpy())
    assert "diagnosis" in pd.read_csv(recorded.exp_dir / "data.csv").columns  # but it is recorded data
    assert json.loads((recorded.exp_dir / "features.json").read_text())["diagnosis"]["classes"]
    assert "diagnosis" not in json.loads((plain.exp_dir / "features.json").read_text())


@pytest.mark.parametrize("predict", ["binary", "diagnosis", "mean"])
def test_what_is_predicted_and_an_interrupted_fold_resumes_exactly(tiny_cfg, predict):
    def cfg(name):
        return tiny_cfg(**{"folds.n_folds": 2, "train.epochs": 2, **AUX, "model.predict": predict, "name": name})
    ref_cfg, res_cfg = cfg(f"ref_{predict}"), cfg(f"res_{predict}")
    data = prepare(ref_cfg)
    ref = T.run_fold(ref_cfg, data, 0, lambda: False)
    last = res_cfg.exp_dir / "fold0" / "last.pt"
    with pytest.raises(T.Interrupted):
        T.run_fold(res_cfg, data, 0, last.exists)  # "Ctrl-C" once epoch 1 is saved
    assert load_checkpoint(last)["model"]["head.weight"].shape[0] == 1 + len(data.diagnosis.classes)
    res = T.run_fold(res_cfg, data, 0, lambda: False)
    np.testing.assert_array_equal(ref["pred"].to_numpy(), res["pred"].to_numpy())
    assert ref["pred"].between(0, 1).all() and ref["pred"].nunique() > 1


def test_train_and_infer_through_the_cli_with_the_diagnosis_head(tiny_data, tmp_path):
    args = tiny_overrides(tiny_data, tmp_path, **{"train.epochs": 1, **AUX, "model.predict": "mean"})
    run_main(str(ROOT / "train.py"), *args, "--folds", "0", cwd=tmp_path)
    run_main(str(ROOT / "infer.py"), *args, "--allow-missing-folds", cwd=tmp_path)
    sub = pd.read_csv(tmp_path / "oof" / "tiny" / "submission.csv")
    assert sub["target"].between(0, 1).all() and sub["target"].nunique() > 1


def _table(tiny_data, tmp_path, change):
    root = tmp_path / "data"
    import shutil
    shutil.copytree(tiny_data, root)
    for name, fn in change.items():
        df = pd.read_csv(root / name)
        fn(df)
        df.to_csv(root / name, index=False)
    return root


def _cfg(root, tmp_path, **extra):
    return C.load_config(None, tiny_overrides(root, tmp_path, **{**AUX, **extra}))


def test_bad_diagnosis_input_is_one_line_naming_file_column_and_rows(tiny_data, tmp_path):
    missing = _table(tiny_data, tmp_path / "a", {"train.csv": lambda df: df.drop(columns="diagnosis", inplace=True)})
    with pytest.raises(DataError, match=r"train\.csv: missing column\(s\) diagnosis"):
        prepare(_cfg(missing, tmp_path / "a"))

    def contradict(df, n):
        nevus = df.index[df["target"] == 1][:n]
        df.loc[nevus, "diagnosis"] = "nevus"
    few = _table(tiny_data, tmp_path / "b", {"train.csv": lambda df: contradict(df, 1)})
    with pytest.raises(DataError, match=r"train\.csv: column 'diagnosis' contradicts 'target' in 1 of \d+ rows .*"
                                        r"\(nevus, target 1\).*raise data.max_contradictions \(now 0.001\)"):
        prepare(_cfg(few, tmp_path / "b", **{"data.max_contradictions": 0.001}))
    prepare(_cfg(few, tmp_path / "b"))  # 1 row of ~120: under the default 1%, a warning

    def test_class(df):
        df["diagnosis"] = ["nevus"] * (len(df) - 1) + ["dermatofibroma"]
    unseen = _table(tiny_data, tmp_path / "c", {"test.csv": test_class})
    with pytest.raises(DataError, match=r"test\.csv: column 'diagnosis' has class\(es\) never seen in the training "
                                        r"rows \(melanoma, nevus, seborrheic keratosis\): ISIC_\d+ \(dermatofibroma\)"):
        prepare(_cfg(unseen, tmp_path / "c"))


def test_the_external_one_hot_columns_become_the_2020_classes(tmp_path):
    df = pd.DataFrame({"image": ["a", "b", "c", "d"], "MEL": [1, 0, 0, 0], "NV": [0, 1, 0, 0],
                       "BKL": [0, 0, 1.0, 0], "UNK": [0, 0, 0, 1]})
    out = diagnosis_from_onehot(df, {"MEL": "melanoma", "NV": "nevus", "BKL": "seborrheic keratosis"},
                                tmp_path / "x.csv", "image")
    assert out.tolist()[:3] == ["melanoma", "nevus", "seborrheic keratosis"] and pd.isna(out.iloc[3])
    with pytest.raises(DataError, match=r"x\.csv: missing column\(s\) SCC named in data.external_diagnosis"):
        diagnosis_from_onehot(df, {"SCC": "squamous cell carcinoma"}, tmp_path / "x.csv", "image")
    df.loc[0, "NV"] = 1
    with pytest.raises(DataError, match=r"more than one of the columns MEL, NV is 1 at a"):
        diagnosis_from_onehot(df, {"MEL": "melanoma", "NV": "nevus"}, tmp_path / "x.csv", "image")


def test_a_changed_diagnosis_is_a_changed_experiment(tiny_data, tmp_path):
    root = _table(tiny_data, tmp_path, {})
    cfg = C.with_overrides(_cfg(root, tmp_path, **{"train.epochs": 1, "folds.n_folds": 2}), ["train.folds=[0]"])
    T.train(cfg)
    df = pd.read_csv(root / "train.csv")
    row = df.index[df["diagnosis"] == "nevus"][0]
    df.loc[row, "diagnosis"] = "seborrheic keratosis"
    df.to_csv(root / "train.csv", index=False)
    with pytest.raises(ExperimentError, match=rf"column 'diagnosis' changed in 1 row\(s\): {df['image_name'][row]} "
                                              r"\(nevus -> seborrheic keratosis\)"):
        T.train(cfg)


def test_predicting_from_the_class_head_needs_the_head():
    with pytest.raises(ConfigError, match="model.predict=diagnosis needs the diagnosis head"):
        C.load_config(None, ["model.predict=diagnosis", "data.diagnosis_col=diagnosis"])
    with pytest.raises(ConfigError, match="model.predict=diagnosis needs the diagnosis head"):
        C.load_config(None, ["model.predict=diagnosis", "train.aux_weight=1"])
    with pytest.raises(ConfigError, match="train.aux_weight must be >= 0, got -1"):
        C.load_config(None, ["train.aux_weight=-1", "data.diagnosis_col=diagnosis"])
    with pytest.raises(ConfigError, match="model.predict=diagnosis needs a diagnosis head with the melanoma class"):
        ImageMetaNet("tf_efficientnet_lite0", 0, predict="diagnosis")


def test_the_mean_read_out_without_a_diagnosis_head_is_the_binary_one():
    """The recipe's aux_weight 0.5 and predict mean on a layout without the column: a binary model."""
    C.load_config(None, ["train.aux_weight=0.5", "model.predict=mean"])  # no error
    model = ImageMetaNet("tf_efficientnet_lite0", 0, predict="mean").eval()
    logits = torch.tensor([[-2.0], [0.5]])
    assert model.head.out_features == 1 and model.predict == "binary"
    assert torch.equal(model.probability(logits), torch.sigmoid(logits[:, 0]))


def test_an_external_diagnosis_column_is_renamed_to_the_2020_classes(tmp_path):
    from pipeline.data.tables import external_diagnosis
    df = pd.DataFrame({"image": ["a", "b", "c"], "diagnosis": ["MEL", "nevus", "unknown"]})
    out = external_diagnosis(df, {"MEL": "melanoma", "NV": "nevus"}, "diagnosis", tmp_path / "x.csv", "image")
    assert out.tolist() == ["melanoma", "nevus", "unknown"]
    hot = df.assign(MEL=[1, 0, 0], NV=[0, 1, 0])  # one-hot columns win over the column
    assert external_diagnosis(hot, {"MEL": "melanoma", "NV": "nevus"}, "diagnosis", tmp_path / "x.csv",
                              "image").tolist()[:2] == ["melanoma", "nevus"]
