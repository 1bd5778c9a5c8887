"""Config: typed dotted overrides, errors naming the key, YAML files, --help."""
from __future__ import annotations

import dataclasses

import pytest
import yaml
from conftest import ROOT, run_main

from pipeline.core.config import Config, load_config
from pipeline.core.errors import ConfigError
from pipeline.model.checkpoint_file import load_checkpoint


def test_dotted_overrides_set_typed_values():
    cfg = load_config(None, ["train.epochs=3", "train.lr=3e-4", "train.min_lr=0.5", "train.amp=false",
                             "model.meta_hidden=[64, 16]", "name=123", "features.numeric=age_approx",
                             "model.backbone=efficientnet_b0", "train.weight_decay=0"])
    assert cfg.train.epochs == 3 and type(cfg.train.epochs) is int
    assert cfg.train.lr == 3e-4 and type(cfg.train.lr) is float  # YAML reads 3e-4 as a string
    assert cfg.train.min_lr == 0.5
    assert cfg.train.weight_decay == 0.0 and type(cfg.train.weight_decay) is float
    assert cfg.train.amp is False
    assert cfg.model.meta_hidden == [64, 16]
    assert cfg.name == "123"
    assert cfg.features.numeric == ["age_approx"]
    assert cfg.model.backbone == "efficientnet_b0"
    assert Config().train.epochs != 3  # the defaults are left alone
    assert load_config(None, []) == Config()


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="'train.epoch'"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="'trian'"):
        load_config(None, ["trian.epochs=3"])


@pytest.mark.parametrize("override, key", [("train.epochs=abc", "train.epochs"), ("train.epochs=2.5", "train.epochs"),
                                           ("train.lr=fast", "train.lr"), ("train.amp=maybe", "train.amp"),
                                           ("model=3", "model")])
def test_wrong_type_is_an_error(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(None, [override])


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: from_yaml\ntrain:\n  epochs: 4\n  lr: 2.0e-4\nmodel:\n  image_size: 64\n")
    cfg = load_config(path, ["train.epochs=6"])
    assert (cfg.name, cfg.train.lr, cfg.model.image_size) == ("from_yaml", 2e-4, 64)
    assert cfg.train.epochs == 6  # the override wins over the file
    assert cfg.train.batch_size == Config().train.batch_size
    path.write_text("train:\n  epohcs: 4\n")
    with pytest.raises(ConfigError, match="'train.epohcs'"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_help_lists_every_key_with_its_default(tmp_path):
    out = run_main(str(ROOT / "train.py"), "--help", cwd=tmp_path).stdout
    lines = {line.split()[0]: line for line in out.splitlines() if "=" in line and line.startswith("  ")}

    def walk(obj, prefix=""):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                yield from walk(value, prefix + f.name + ".")
            else:
                yield prefix + f.name, value

    keys = dict(walk(Config()))
    assert len(keys) > 40
    for key, default in keys.items():
        assert key in lines, f"--help does not list {key}"
        assert repr(default) in lines[key], lines[key]
    assert "8" in lines["train.epochs"] and "tf_efficientnet_lite0" in lines["model.backbone"]


def test_several_config_files_combine_later_ones_winning(tmp_path):
    layout, recipe = tmp_path / "layout.yaml", tmp_path / "recipe.yaml"
    layout.write_text("name: layout\ndata:\n  root: somewhere\nmodel:\n  image_size: 64\ntrain:\n  epochs: 4\n")
    recipe.write_text("model:\n  image_size: 128\ntrain:\n  lr: 2.0e-4\n")
    cfg = load_config([layout, recipe], ["train.epochs=6"])
    assert (cfg.name, cfg.data.root, cfg.model.image_size, cfg.train.lr, cfg.train.epochs) == \
        ("layout", "somewhere", 128, 2e-4, 6)  # each file adds its keys; the later file wins a shared one
    assert load_config([recipe, layout]).model.image_size == 64
    recipe.write_text("train:\n  lr_typo: 1\n")
    with pytest.raises(ConfigError, match=f"{recipe}: unknown config key 'train.lr_typo'"):
        load_config([layout, recipe])
    # the command line takes --config more than once
    recipe.write_text("folds:\n  n_folds: 3\n")
    proc = run_main(str(ROOT / "train.py"), "--config", str(layout), "--config", str(recipe), "--folds", "4",
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "error: train.folds must be fold numbers in 0..2, got [4]" in proc.stderr, proc.stderr


RECIPE = ROOT / "configs" / "cpu_hour.yaml"
LAYOUTS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if p != RECIPE)


def test_cpu_hour_recipe_holds_only_training_sections_and_wins_over_every_layout():
    recipe = yaml.safe_load(RECIPE.read_text())
    assert set(recipe) <= {"model", "train", "infer", "features"}, set(recipe)
    assert LAYOUTS
    for layout in LAYOUTS:
        alone, combined = load_config(layout), load_config([layout, RECIPE])
        assert combined.data == alone.data and combined.folds == alone.folds and combined.name == alone.name
        for section, values in recipe.items():
            for key, value in values.items():
                assert getattr(getattr(combined, section), key) == value, (layout.name, section, key)


@pytest.mark.parametrize("diagnosis_col", ["", "diagnosis"])
def test_cpu_hour_recipe_trains_on_a_data_layout_from_the_command_line(tiny_data, tmp_path, diagnosis_col):
    """The recipe on top of a layout file, as the README shows it; only size and length shrunk here.
    Its diagnosis head (aux_weight, predict mean) is there where the layout names the column, and a
    layout without one trains the binary model."""
    layout = tmp_path / "layout.yaml"
    layout.write_text(yaml.safe_dump({"name": "layout", "data": {"root": str(tiny_data), "generate_sample": False,
                                                                 "cache_dir": str(tmp_path / "cache"),
                                                                 "diagnosis_col": diagnosis_col},
                                      "folds": {"n_folds": 3}, "train": {"lr": 0.123, "epochs": 9}}))
    proc = run_main(str(ROOT / "train.py"), "--config", str(layout), "--config", str(RECIPE), "--folds", "0",
                   "model.image_size=32", "train.epochs=1", "infer.tta=1", f"output_dir={tmp_path / 'oof'}",
                   cwd=tmp_path)
    saved = yaml.safe_load((tmp_path / "oof" / "layout" / "config.yaml").read_text())
    recipe = yaml.safe_load(RECIPE.read_text())
    assert saved["data"]["root"] == str(tiny_data) and saved["folds"]["n_folds"] == 3
    assert saved["train"]["lr"] == recipe["train"]["lr"] != 0.123  # the recipe's, not the layout's
    assert recipe["train"]["aux_weight"] > 0 and recipe["model"]["predict"] == "mean"
    assert (tmp_path / "oof" / "layout" / "fold0" / "val_predictions.csv").is_file()
    head = load_checkpoint(tmp_path / "oof" / "layout" / "fold0" / "best.pt")["model"]["head.weight"]
    assert head.shape[0] == (4 if diagnosis_col else 1)  # binary + melanoma, nevus, seborrheic keratosis
    assert ("adds no diagnosis head" in proc.stdout) == (not diagnosis_col), proc.stdout
