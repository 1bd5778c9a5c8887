"""The experiment tools under misuse (issue 19; docs/bad-input.md, "The experiment tools under misuse
and faults"): no tool writes into or over a folder of another kind, every figure printed beside
another is computed the same way, misuse is refused before the work starts, in one line. The folders
are made by hand here (no training); tests/test_faults.py trains one experiment for the rest.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, run_main, snapshot, tiny_overrides

from pipeline import cli
from pipeline.core import config as C, folders
from pipeline.core.errors import ConfigError, ExperimentError, guarded
from pipeline.report import cv
from pipeline.report.stats import fold_ranks
from pipeline.train import distributed as D, trainer as T

sys.path.insert(0, str(ROOT / "benchmarks"))
import tta_views  # noqa: E402


def oof_rows(seed: int = 0, n: int = 90, folds: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    patient = rng.integers(0, 30, n)
    target = (rng.random(n) < 0.3).astype(int)
    return pd.DataFrame({"image_name": [f"ISIC_{i:04d}" for i in range(n)], "patient_id": [f"IP_{p}" for p in patient],
                         "fold": patient % folds, "target": target,
                         "pred": 1 / (1 + np.exp(-(2 * target - 1 + rng.normal(0, 1.5, n))))})


def experiment(folder: Path, oof: pd.DataFrame) -> Path:
    """An experiment as train.py leaves one, as far as the tools look: config.yaml, folds.csv, oof.csv."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"name: {folder.name}\n")
    oof[["image_name", "fold"]].to_csv(folder / "folds.csv", index=False)
    oof.to_csv(folder / "oof.csv", index=False)
    return folder


@pytest.fixture
def world(tmp_path, monkeypatch):
    """oof/a, oof/b and oof/c (experiments), oof/ab (a blend), oof/compare/a+b (a comparison), oof/a_tta4 (a
    re-prediction), data/ (a data folder), afile (a file)."""
    oof = tmp_path / "oof"
    a, b = experiment(oof / "a", oof_rows(0)), experiment(oof / "b", oof_rows(0).assign(pred=oof_rows(1)["pred"]))
    experiment(oof / "c", oof_rows(0).assign(pred=oof_rows(2)["pred"]))
    for folder, marker in [("ab", "blend.json"), ("compare/a+b", "compare.csv"), ("a_tta4", "tta.json")]:
        (oof / folder).mkdir(parents=True)
        (oof / folder / marker).write_text("{}\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("image_name,target\n")
    (tmp_path / "afile").write_text("a file\n")
    monkeypatch.chdir(tmp_path)  # the paths as a user types them
    return {"root": tmp_path, "a": a, "b": b}


TARGETS = {  # where a tool is told to write -> what it says (own: the kind the tool writes)
    "experiment": ("oof/a", "oof/a: is an experiment (config.yaml, written by train.py), not {own}"),
    "blend": ("oof/ab", "oof/ab: is a blend (blend.json, written by python -m pipeline blend), not {own}"),
    "comparison": ("oof/compare/a+b", "is a comparison (compare.csv, written by python -m pipeline cv), not {own}"),
    "re-prediction": ("oof/a_tta4", "is a re-prediction (tta.json, written by benchmarks/tta_views.py), not {own}"),
    "data": ("data", "data: exists and is not {own} (no {marker}; it holds train.csv (1 in all))"),
    "inside": ("oof/a/sub", "oof/a/sub: inside the experiment oof/a (config.yaml), where only train.py writes"),
    "file": ("afile", "afile: exists and is not a folder"),
    "under a file": ("afile/x", "afile is a file, not a folder"),
}
TOOLS = {"cv": "comparison", "blend": "blend", "train": "experiment", "sample": None}
SAMPLE_SAYS = {k: "exists and is not empty" for k in ("experiment", "blend", "comparison", "re-prediction", "data")}
TRAIN_SAYS = {"data": "data: not an experiment of this pipeline (no config.yaml; it holds train.csv (1 in all))",
              "experiment": None}  # an experiment is train.py's own kind: compared, not refused for its kind


def call(tool: str, target: str, tiny_data: Path) -> int:
    parent, name = str(Path(target).parent), Path(target).name
    if tool == "cv":
        return cli.cv_main(["oof/a", "oof/b", "--out", target, "--no-plot", "--bootstrap", "0"])
    if tool == "blend":
        return cli.blend_main(["oof/b", "oof/c", "--output-dir", parent, "--name", name])
    if tool == "train":
        args = tiny_overrides(tiny_data, Path.cwd(), output_dir=parent, name=name)
        return guarded(lambda: cli.train_main(args))
    try:
        return cli.sample_main([target, "--n-train-patients", "2", "--n-test-patients", "1", "--image-size", "16"])
    except SystemExit as e:
        return e.code


def says(tool: str, target: str) -> str | None:
    """What ``tool`` says when told to write at ``target``; None where that is its own kind."""
    own = TOOLS[tool]
    text = {"sample": SAMPLE_SAYS, "train": TRAIN_SAYS}.get(tool, {}).get(target, TARGETS[target][1])
    return None if own == target or text is None else text.format(own=own and folders.article(own),
                                                                  marker=folders.MARKERS.get(own))


@pytest.mark.parametrize("tool, target", [(tool, t) for tool in TOOLS for t in TARGETS if says(tool, t)])
def test_no_tool_writes_into_or_over_a_folder_of_another_kind(world, tiny_data, capsys, tool, target):
    where, message = TARGETS[target][0], says(tool, target)
    before = snapshot(world["root"])
    assert call(tool, where, tiny_data) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert snapshot(world["root"]) == before  # nothing written, nothing replaced (oof/a/folds.csv included)
    assert not (world["root"] / "input").exists() and not (world["root"] / "afile").is_dir()


def test_a_comparison_folder_is_replaced_whole(world, capsys):
    out = world["root"] / "oof" / "compare" / "a+b"
    (out / "report.html").write_text("the page of an earlier comparison")
    (out / "roc.png").write_bytes(b"an earlier picture")
    assert cli.cv_main(["oof/a", "oof/b", "--no-plot", "--bootstrap", "0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["compare.csv", "correlation.csv", "folds.csv", "subgroups.csv"]


def test_a_projects_own_config_yaml_makes_no_experiment(world, capsys):
    """A folder is an experiment by config.yaml beside what train.py writes with it: a project folder
    with a config.yaml of its own (Hydra's, say) holds comparisons and blends as any folder does."""
    (world["root"] / "project").mkdir()
    (world["root"] / "project" / "config.yaml").write_text("defaults: []\n")
    assert cli.cv_main(["oof/a", "oof/b", "--out", "project/cmp", "--no-plot", "--bootstrap", "0"]) == 0
    assert cli.blend_main(["oof/b", "oof/c", "--output-dir", "project", "--name", "bc"]) == 0
    experiment(world["root"] / "project" / "exp", oof_rows(0))
    (world["root"] / "project" / "exp" / "config.yaml").unlink()
    (world["root"] / "project" / "exp" / "config.yaml").write_text("name: exp\n")
    assert cli.cv_main(["oof/a", "oof/b", "--out", "project/exp/cmp", "--no-plot"]) == 2  # this one is
    assert "project/exp/cmp: inside the experiment project/exp" in capsys.readouterr().err


def test_the_default_comparison_folder_inside_an_experiment_named_compare_is_refused(world, capsys):
    experiment(world["root"] / "oof2" / "compare", oof_rows(0))
    for name in "ab":
        experiment(world["root"] / "oof2" / name, oof_rows(0))
    before = snapshot(world["root"])
    assert cli.cv_main(["oof2/a", "oof2/b", "--no-plot"]) == 2
    assert "oof2/compare/a+b: inside the experiment oof2/compare" in capsys.readouterr().err
    assert snapshot(world["root"]) == before


# -- every figure computed like with like --------------------------------------------------------------

def shifted(seed: int = 0) -> pd.DataFrame:
    """A model whose fold 2 is on another scale (as a fold trained differently is): its pooled AUC is
    below the AUC of its per-fold ranks."""
    oof = oof_rows(seed)
    return oof.assign(pred=np.where(oof["fold"] == 2, 0.2 * oof["pred"], oof["pred"]))


def test_a_rank_blend_with_a_constant_member_is_no_better_than_its_model(world, capsys):
    model = shifted()
    experiment(world["root"] / "oof" / "m", model)
    experiment(world["root"] / "oof" / "const", model.assign(pred=0.5))
    assert cli.blend_main(["oof/m", "oof/const", "--name", "mc"]) == 0
    printed = capsys.readouterr().out
    assert "pooled AUC of per-fold ranks" in printed
    figures = {line.split()[0]: float(line.split()[-2]) for line in printed.splitlines() if line.startswith("oof/")}
    rank_auc = pytest.approx(cv.auc(model["target"], fold_ranks(model["pred"], model["fold"])))
    rank_auc = pytest.approx(rank_auc.expected, abs=5e-5)  # printed with 4 decimals
    assert figures["oof/m"] == rank_auc and figures["oof/mc"] == rank_auc  # the same figure, computed alike
    assert cv.auc(model["target"], model["pred"]) < figures["oof/mc"] - 0.01  # what the raw figure would have shown

    result = cv.compare(["oof/m", "oof/mc"], baseline="m", plot=False, n_boot=50)
    table = result["table"].set_index("experiment")
    assert list(table["basis"]) == ["per-fold rank"] * 2
    assert table.loc["m", "pooled_auc"] == pytest.approx(table.loc["mc", "pooled_auc"])
    assert table.loc["mc", "diff"] == pytest.approx(0.0, abs=1e-12)
    assert "note: compared on per-fold ranks, not on pred: mc is a rank blend" in capsys.readouterr().out
    assert list(cv.compare(["oof/m", "oof/const"], plot=False, n_boot=0)["table"]["basis"]) == ["pred"] * 2


def test_a_mean_blend_of_a_rank_blend_is_refused(world, capsys):
    assert cli.blend_main(["oof/a", "oof/b", "--name", "ranked"]) == 0
    assert cli.blend_main(["oof/a", "oof/ranked", "--name", "x", "--method", "mean"]) == 2
    assert "--method mean averages probabilities, but oof/ranked is a rank blend" in capsys.readouterr().err
    assert not (world["root"] / "oof" / "x").exists()


def test_training_an_experiment_with_other_tta_views_is_refused_and_infer_may_use_others(tiny_cfg):
    from pipeline.experiment.folder import check_config
    from pipeline.train.infer import inference_config
    cfg = tiny_cfg()
    cfg.exp_dir.mkdir(parents=True)
    (cfg.exp_dir / "config.yaml").write_text(C.to_yaml(cfg))
    with pytest.raises(ExperimentError, match=r"infer\.tta: 2 -> 8\) \(infer\.tta is the TTA of its OOF"):
        check_config(tiny_cfg(**{"infer.tta": 8}), force=False)
    assert check_config(tiny_cfg(**{"infer.batch_size": 3}), force=False) == []  # still a run-only key
    assert inference_config(tiny_cfg(**{"infer.tta": 8}), {"infer.tta"}).infer.tta == 8  # the submission's are free
    assert inference_config(tiny_cfg(**{"infer.tta": 8})).infer.tta == 2  # not given: as trained


def test_tta_views_refuses_view_counts_beyond_the_eight_views(world, capsys):
    for views, says in [("9", "got [9]"), ("0,2", "got [0]"), (",", "expects comma-separated integers such as 1,2,4,8")]:
        assert tta_views.main(["oof/a", "--views", views]) == 2
        assert says in capsys.readouterr().err
    assert not list(world["root"].glob("oof/a_tta[!4]*"))


# -- refused before the work, not after ----------------------------------------------------------------

@pytest.mark.parametrize("batch, accumulate", [(2, 1), (4, 2), (6, 3)])
def test_a_micro_batch_of_one_row_is_refused_before_anything_is_written(tiny_cfg, batch, accumulate):
    cfg = tiny_cfg(**{"train.batch_size": batch, "train.accumulate": accumulate})
    with pytest.raises(ConfigError, match=f"leaves micro-batches of 1 row; .* raise train.batch_size to {4 * accumulate}"):
        T.train(cfg, dist=D.Dist(rank=0, world=2))  # torchrun on 2 processes (refused before any collective)
    assert not Path(cfg.output_dir).exists()
    assert T.check_run(tiny_cfg(**{"train.batch_size": 4 * accumulate, "train.accumulate": accumulate}),
                       D.Dist(rank=0, world=2)) == [0, 1, 2]


@pytest.mark.parametrize("option", ["--folds", "--seeds"])
@pytest.mark.parametrize("text", [",", "", " , ", "a"])
def test_a_list_flag_given_an_empty_list_is_refused(option, text):
    with pytest.raises(ConfigError, match=f"{option} expects comma-separated integers"):
        cli.parse_ints(text, option)
    assert cli.parse_ints(None, option) is None  # not given: the default
    assert cli.parse_ints("2,1,2", option) == [2, 1]  # duplicates dropped, in order


def test_seeds_refuse_a_later_seeds_folder_before_the_first_seed_trains(tiny_data, tmp_path, capsys):
    args = tiny_overrides(tiny_data, tmp_path, name="s")
    other = C.load_config(None, args + ["name=s_seed1", "train.seed=1", "train.lr=0.01"])
    other.exp_dir.mkdir(parents=True)
    (other.exp_dir / "config.yaml").write_text(C.to_yaml(other))
    assert guarded(lambda: cli.train_main(["--seeds", "2,1", *args])) == 2
    assert "s_seed1/config.yaml holds a different experiment (train.lr: 0.01 -> 0.001)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "oof").iterdir()) == ["s_seed1"]  # seed 2 did not train first
    experiment(tmp_path / "oof" / "compare", oof_rows(0))  # their comparison's folder is refused up front too
    assert guarded(lambda: cli.train_main(["--seeds", "3,4", *args])) == 2
    assert "oof/compare/s_seed3+s_seed4: inside the experiment" in capsys.readouterr().err
    assert not (tmp_path / "oof" / "s_seed3").exists()


# -- one line, not a traceback -------------------------------------------------------------------------

CONFIGS = {
    "latin-1": (b"train:\n  epochs: 2  # caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset 25); save it as UTF-8"),
    "number key": (b"1: x\n", "config key 1 is not a name (int)"),
    "nested number key": (b"train:\n  3: 1\n", "config key train.3 is not a name (int)"),
    "yes key": (b"yes: 1\n", "config key True is not a name (bool)"),
}


@pytest.mark.parametrize("case", CONFIGS)
def test_a_config_file_that_is_not_utf8_or_has_keys_that_are_not_names_is_one_line(tmp_path, case):
    content, says = CONFIGS[case]
    (tmp_path / "c.yaml").write_bytes(content)
    with pytest.raises(ConfigError, match=r"^" + str(tmp_path / "c.yaml").replace(".", r"\.") + ": ") as e:
        C.load_config(tmp_path / "c.yaml")
    assert says in str(e.value)
    with pytest.raises(ConfigError, match="a folder, not a config file"):
        C.load_config(tmp_path)


OVERRIDES = {
    "train=1 train.epochs=2": "override 'train.epochs=2' sets a key inside 'train', which another override sets to a value",
    "train.epochs=2 train.epochs.x=1": "override 'train.epochs.x=1' sets a key inside 'train.epochs'",
    "train.epochs=[": "override 'train.epochs=[': the value is not valid YAML",
    "train=1": "config key 'train' is a section; give it a mapping",
}


@pytest.mark.parametrize("overrides", OVERRIDES)
def test_overrides_that_are_not_key_values_are_one_line(overrides):
    with pytest.raises(ConfigError, match="in the command-line overrides") as e:
        C.load_config(None, overrides.split())
    assert OVERRIDES[overrides] in str(e.value)


def test_the_train_command_says_one_line_for_a_latin1_config(tmp_path):
    (tmp_path / "c.yaml").write_bytes(CONFIGS["latin-1"][0])
    proc = run_main(str(ROOT / "train.py"), "--config", "c.yaml", "train=1", "train.epochs=2", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: c.yaml: not UTF-8 text") and not (tmp_path / "oof").exists()


LONG = "é" * 130  # 130 characters, 260 bytes: file systems count the bytes


def test_names_too_long_for_the_file_system_are_one_line(world, tiny_data, capsys):
    args = tiny_overrides(tiny_data, world["root"], name=LONG)
    for run, says in [(lambda: cli.train_main(args), "name: the name 'éééééééééééééééééééé...' is 260 bytes long "
                                                     "(130 characters); file and folder names may be at most 255"),
                      (lambda: cli.blend_main(["oof/a", "oof/b", "--name", LONG]), "--name: the name"),
                      (lambda: cli.cv_main([f"oof/{LONG}"]), "oof/éééééééééééééééééééé...: the name"),
                      (lambda: tta_views.main([f"oof/{LONG}", "--views", "1"]), "oof/éééééééééééééééééééé...: the name"),
                      (lambda: cli.train_main(tiny_overrides(tiny_data, world["root"], **{"data.root": LONG})),
                       "data.root: the name 'éééééééééééééééééééé...' is 260 bytes long"),
                      (lambda: C.load_config(f"{LONG}.yaml"), f"{LONG}.yaml: cannot read (File name too long)")]:
        assert guarded(run) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err
    args = tiny_overrides(tiny_data, world["root"], name="é" * 125)  # fits; with _seed1 it does not
    assert guarded(lambda: cli.train_main(["--seeds", "1,2", *args])) == 2
    assert "is 256 bytes long (131 characters)" in capsys.readouterr().err


def test_the_default_comparison_folder_counts_bytes_not_characters(world, capsys):
    names = ["x" + "漢" * 45, "y" + "漢" * 45]  # 91 characters joined, 273 bytes
    for n in names:
        experiment(world["root"] / "oof" / n, oof_rows(0))
    assert cli.cv_main([f"oof/{n}" for n in names] + ["--no-plot", "--bootstrap", "0"]) == 0
    out = next((world["root"] / "oof" / "compare").glob("x漢*"))
    assert len(os.fsencode(out.name)) <= 100 and "+1-more-" in out.name and (out / "compare.csv").is_file()


@pytest.mark.parametrize("tool", ["cv", "blend"])
def test_ctrl_c_in_a_report_is_one_line_and_exit_code_130(world, capsys, monkeypatch, tool):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("pipeline.experiment.oof.read_both_classes", interrupted)
    monkeypatch.setattr("pipeline.report.cv.read_both_classes", interrupted)
    monkeypatch.setattr("pipeline.report.blend.read_both_classes", interrupted)
    main = cli.cv_main if tool == "cv" else cli.blend_main
    assert main(["oof/a", "oof/b"] + (["--name", "x"] if tool == "blend" else ["--no-plot"])) == 130
    err = capsys.readouterr().err
    assert err.startswith("stopped (Ctrl-C);") and err.count("\n") == 1


@pytest.mark.parametrize("folder, says", [("oof/nothere", "oof/nothere: no such folder"),
                                          ("oof/ab", "oof/ab: is a blend (blend.json"),
                                          ("oof/a_tta4", "oof/a_tta4: is a re-prediction (tta.json"),
                                          ("data", "data: is not a trained experiment (config.yaml, data.csv, ...)")])
def test_tta_views_on_a_folder_that_is_not_a_trained_experiment_is_one_line(world, capsys, folder, says):
    assert tta_views.main([folder, "--views", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {says}") and err.count("\n") == 1


def test_tta_views_on_an_experiment_without_every_best_pt_is_one_line(world, capsys):
    (world["a"] / "config.yaml").write_text(C.to_yaml(C.Config()))
    assert tta_views.main(["oof/a", "--views", "2"]) == 2
    assert "oof/a: fold(s) [0, 1, 2, 3, 4] have no best.pt" in capsys.readouterr().err


@pytest.mark.parametrize("args, says", [(["--n-train-patients", "0"], "--n-train-patients must be >= 1, got 0"),
                                        (["--image-size", "8"], "--image-size must be >= 16, got 8")])
def test_sample_refuses_sizes_it_cannot_make_and_writes_a_new_folder(tmp_path, capsys, args, says):
    with pytest.raises(SystemExit) as e:
        cli.sample_main([str(tmp_path / "s"), *args])
    assert e.value.code == 2 and says in capsys.readouterr().err and not (tmp_path / "s").exists()
    assert cli.sample_main([str(tmp_path / "s"), "--n-train-patients", "2", "--n-test-patients", "1",
                            "--image-size", "16"]) == 0
    assert {"train.csv", "test.csv", "sample_submission.csv"} <= {p.name for p in (tmp_path / "s").iterdir()}


# -- inputs almost right ---------------------------------------------------------------------------------

def test_a_blend_keeps_the_members_submission_columns_in_their_order(world, capsys):
    test_ids = [f"{i:05d}" for i in range(7)]
    for name, seed in [("b", 1), ("c", 2)]:  # the template put the prediction first
        preds = np.random.default_rng(seed).random(len(test_ids))
        pd.DataFrame({"target": preds, "image_name": test_ids}).to_csv(world["root"] / "oof" / name / "submission.csv",
                                                                       index=False)
    assert cli.blend_main(["oof/b", "oof/c", "--name", "bc", "--method", "mean"]) == 0
    sub = pd.read_csv(world["root"] / "oof" / "bc" / "submission.csv", dtype={"image_name": str})
    assert list(sub.columns) == ["target", "image_name"] and list(sub["image_name"]) == test_ids
    members = [pd.read_csv(world["root"] / "oof" / n / "submission.csv") for n in "bc"]
    assert np.allclose(sub["target"], (members[0]["target"] + members[1]["target"]) / 2)


def test_new_categories_are_said_when_they_are_many_and_not_when_few(capsys):
    from pipeline.data.features import MetaTransform, check_numeric
    train = pd.DataFrame({"id": [f"i{k}" for k in range(40)], "sex": ["male", "female"] * 20, "age": range(40)})
    transform = MetaTransform(["sex"], ["age"], False, "").fit(train)
    few_new = train.assign(sex=["male", "female"] * 19 + ["x", np.nan])  # one in 40 never seen: a typo
    check_numeric(transform, few_new, "test.csv", "id", 0.05)
    assert capsys.readouterr().err == ""
    recoded = train.assign(sex=["M", "F"] * 19 + [np.nan, "unknown"])  # blanks and 'unknown' are missing, not new
    check_numeric(transform, recoded, "test.csv", "id", 0.05)
    assert capsys.readouterr().err == ("warning: test.csv: column 'sex': 38 of 40 rows (95.0%) hold values never seen "
                                       "in training ('M' at i0, 'F' at i1); they are treated as missing (training saw "
                                       "female, male)\n")
