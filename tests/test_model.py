"""The model: head bias at the fold's base rate, and model.pretrained files that must fit the backbone
(the offline ImageNet weights: test_pretrained.py)."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from pipeline.core.errors import ConfigError
from pipeline.model.net import ImageMetaNet, build_model, create_backbone


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
        prob = model.probability(model(image, meta))
    assert prob.shape == (16,)
    assert abs(prob.mean().item() - p) < 1e-5
    assert (prob - p).abs().max().item() < 1e-5  # every row, not only on average


class _Recorded(Exception):
    pass


@pytest.mark.parametrize("aux", [False, True], ids=["binary", "diagnosis_head"])
def test_run_fold_sets_the_bias_from_the_training_rows(tiny_cfg, tmp_path, monkeypatch, aux):
    """run_fold must use the positive rate (and, with the diagnosis head, the class shares) of the
    rows it trains on (fold != k), not all rows or the validation rows. The run stops right after
    the call: no training is needed to see it."""
    from pipeline.data.prepare import prepare
    from pipeline.train import trainer
    from pipeline.train.process import StopFlag
    extra = {"data.diagnosis_col": "diagnosis", "train.aux_weight": 1.0} if aux else {}
    cfg = tiny_cfg(**{"model.pretrained": "none", "folds.path": str(tmp_path / "folds.csv"), **extra})
    data = prepare(cfg)
    seen = []

    def record(self, positive_rate, class_shares=None):
        seen.append((positive_rate, class_shares))
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
            trainer.run_fold(cfg, data, k, StopFlag())
        assert seen[-1][0] == pytest.approx(expected, abs=1e-7)
        if aux:
            codes = data.codes[fold != k]
            shares = np.bincount(codes[codes >= 0], minlength=len(data.diagnosis.classes)) / (codes >= 0).sum()
            np.testing.assert_allclose(seen[-1][1], shares)
            assert not np.allclose(seen[-1][1], data.diagnosis.shares(data.codes))  # not all rows'
        else:
            assert seen[-1][1] is None
        checked += 1
    assert checked >= 2


# --- model.pretrained=<file> ----------------------------------------------------------------

TINY = "test_efficientnet"  # a timm test model: 86 tensors, built in milliseconds


def tiny_state(seed: int = 1) -> dict:
    torch.manual_seed(seed)
    return timm.create_model(TINY, num_classes=0).state_dict()


def refusal(path, backbone: str = TINY) -> str:
    with pytest.raises(ConfigError) as e:
        create_backbone(backbone, str(path))
    message = str(e.value)
    assert "\n" not in message and f"model.pretrained={path}" in message
    assert f"does not fit the backbone {backbone}" in message
    return message


def test_a_full_state_dict_loads_its_weights(tmp_path):
    state = tiny_state()
    torch.save(state, tmp_path / "w.pt")
    backbone = create_backbone(TINY, str(tmp_path / "w.pt"))
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, state[k]), k
    # BatchNorm's batch counters are no weights: a file without them fits
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, tmp_path / "w.pt")
    backbone = create_backbone(TINY, str(tmp_path / "w.pt"))
    assert torch.equal(backbone.state_dict()["conv_stem.weight"], state["conv_stem.weight"])


def test_a_partial_state_dict_is_refused_naming_the_missing_keys(tmp_path):
    state = tiny_state()
    dropped = [k for k in state if not k.endswith("num_batches_tracked")][:10]
    torch.save({k: v for k, v in state.items() if k not in dropped}, tmp_path / "w.pt")
    message = refusal(tmp_path / "w.pt")
    assert "missing key(s): " + ", ".join(dropped[:3]) + ", ... (10 in all)" in message
    assert "unexpected" not in message


def test_an_extra_key_is_refused(tmp_path):
    torch.save({**tiny_state(), "classifier.weight": torch.zeros(1000, 32)}, tmp_path / "w.pt")
    message = refusal(tmp_path / "w.pt")
    assert message.endswith("unexpected key(s): classifier.weight (1 in all)") and "missing" not in message


def test_weights_of_another_backbone_are_refused_naming_both_sides(tmp_path):
    torch.save(tiny_state(), tmp_path / "w.pt")
    message = refusal(tmp_path / "w.pt", "tf_efficientnet_lite0")
    assert "missing key(s): " in message and "unexpected key(s): " in message


def test_a_misshapen_weight_is_refused(tmp_path):
    state = tiny_state()
    name = next(k for k, v in state.items() if v.ndim == 4)
    state[name] = torch.zeros(1, *state[name].shape[1:])
    torch.save(state, tmp_path / "w.pt")
    message = refusal(tmp_path / "w.pt")
    assert f"misshapen key(s): {name} 1x" in message and "(backbone: " in message
    assert "missing" not in message and "unexpected" not in message


def test_a_pipeline_checkpoint_gives_its_backbone_weights(tmp_path):
    """best.pt holds {"model": ImageMetaNet state}: its backbone.* keys are the backbone's."""
    from pipeline.model.checkpoint_file import save_checkpoint
    torch.manual_seed(2)
    net = ImageMetaNet(TINY, n_meta=5)
    save_checkpoint(tmp_path / "best.pt", {"model": net.state_dict(), "epoch": 3, "auc": 0.8})
    backbone = create_backbone(TINY, str(tmp_path / "best.pt"))
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, net.backbone.state_dict()[k]), k
    # ... and only when they are all there
    state = {k: v for k, v in net.state_dict().items() if k != "backbone.conv_stem.weight"}
    save_checkpoint(tmp_path / "part.pt", {"model": state})
    message = refusal(tmp_path / "part.pt")
    assert "(its backbone.* keys)" in message and "missing key(s): conv_stem.weight (1 in all)" in message
