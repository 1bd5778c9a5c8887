"""The model: head bias at the fold's base rate, and offline ImageNet weights that really work."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from pipeline.model import ImageMetaNet, build_model, create_backbone, offline_lite0_state


@pytest.mark.parametrize("p", [0.02, 0.22, 0.7])
def test_head_bias_gives_the_base_rate(tiny_cfg, p):
    cfg = tiny_cfg(**{"model.pretrained": "none"})
    torch.manual_seed(0)
    model = build_model(cfg, n_meta=7)
    model.init_head_bias(p)
    model.eval()
    image = torch.randn(16, 3, cfg.model.image_size, cfg.model.image_size)
    meta = torch.randn(16, 7)
    with torch.no_grad():
        prob = torch.sigmoid(model(image, meta))
    assert prob.shape == (16,)
    assert abs(prob.mean().item() - p) < 1e-5
    assert (prob - p).abs().max().item() < 1e-5  # every row, not only on average


class _Recorded(Exception):
    pass


def test_run_fold_sets_the_bias_from_the_training_rows(tiny_cfg, tmp_path, monkeypatch):
    """run_fold must use the positive rate of the rows it trains on (fold != k), not all rows or
    the validation rows. The run stops right after the call: no training is needed to see it."""
    from pipeline import trainer
    cfg = tiny_cfg(**{"model.pretrained": "none", "folds.path": str(tmp_path / "folds.csv")})
    data = trainer.prepare(cfg)
    seen = []

    def record(self, positive_rate):
        seen.append(positive_rate)
        raise _Recorded

    monkeypatch.setattr(ImageMetaNet, "init_head_bias", record)
    fold = data.df["fold"].to_numpy()
    y = data.df[cfg.data.target_col].to_numpy()
    checked = 0
    for k in range(cfg.folds.n_folds):
        expected = y[fold != k].mean()
        if abs(expected - y.mean()) < 1e-6 or abs(expected - y[fold == k].mean()) < 1e-6:
            continue  # this fold could not tell the right rows from the wrong ones
        with pytest.raises(_Recorded):
            trainer.run_fold(cfg, data, k, trainer.StopFlag())
        assert seen[-1] == pytest.approx(expected, abs=1e-7)
        checked += 1
    assert checked >= 2


# --- offline pretrained weights -------------------------------------------------------------

DAISY = 985  # ImageNet class index


def test_offline_lite0_weights_classify_the_flower_as_a_daisy():
    from sklearn.datasets import load_sample_image
    model = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    model.load_state_dict(offline_lite0_state(model, keep_classifier=True))
    model.eval()
    cfg = timm.data.resolve_model_data_config(model)
    img = Image.fromarray(load_sample_image("flower.jpg")).resize((224, 224), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(cfg["mean"]).view(3, 1, 1)) / torch.tensor(cfg["std"]).view(3, 1, 1)
    with torch.no_grad():
        logits = model(x[None])
    assert logits.argmax(1).item() == DAISY, logits.topk(5).indices.tolist()

    # the backbone the pipeline builds with pretrained=offline carries the same feature weights
    backbone = create_backbone("tf_efficientnet_lite0", "offline")
    assert backbone.num_features == model.num_features
    full = model.state_dict()
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, full[name]), name
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(x[None]), model.forward_head(model.forward_features(x[None]),
                                                                                 pre_logits=True))
