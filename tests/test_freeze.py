"""train.freeze_stages and train.unfreeze_epoch (pipeline/model/freeze.py): the frozen stem and stages
get no gradient and keep their weights and batch-norm statistics, train again after the unfreeze
epoch, resume exactly on either side of it, and leave a best.pt that the plain model predicts with."""
from __future__ import annotations

import copy
import itertools

import pandas as pd
import pytest
import timm
import torch
from conftest import ROOT, one_error_line, run_cli, run_main, tiny_overrides

from pipeline.core.config import load_config
from pipeline.core.errors import ConfigError, Interrupted
from pipeline.data.prepare import prepare
from pipeline.model import freeze as F
from pipeline.model.checkpoint_file import load_checkpoint
from pipeline.model.net import build_model
from pipeline.model.runtime import forward, to_input
from pipeline.train import trainer as T
from pipeline.train.checkpoints import predicting_model
from pipeline.train.distributed import SINGLE, Dist

TRAIN, INFER = str(ROOT / "train.py"), str(ROOT / "infer.py")
PREFIX = ("conv_stem.", "bn1.", "blocks.0.", "blocks.1.")  # tf_efficientnet_lite0, train.freeze_stages=2


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    yield


def lite0(stages: int = 0):
    """A tiny ImageMetaNet on tf_efficientnet_lite0 (no weights), its backbone frozen to ``stages``."""
    model = build_model(load_config(None, ["model.pretrained=none"]), 4)
    F.set_frozen(model, stages)
    return model


def test_the_stages_of_tf_efficientnet_lite0_and_the_largest_freezes_the_whole_backbone():
    model = lite0()
    assert F.stage_count(model.backbone) == 7
    assert F.frozen_roots(model.backbone, 1) == ("conv_stem", "bn1", "blocks.0")
    assert F.frozen_roots(model.backbone, 6) == ("conv_stem", "bn1", *(f"blocks.{i}" for i in range(6)))
    assert F.frozen_roots(model.backbone, 7) == ("conv_stem", "bn1", "blocks", "conv_head", "bn2")
    groups = F.groups(model.backbone)
    assert {groups[k] for k in ("blocks.6.0.conv_pw.weight", "conv_head.weight", "bn2.running_mean")} == {7}
    assert F.set_frozen(model, 7) and not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in [*model.meta.parameters(), *model.head.parameters()])
    assert not F.set_frozen(model, 7)  # nothing changed
    assert F.set_frozen(model, 0) and all(p.requires_grad for p in model.parameters()) and model.frozen == ()


def test_a_backbones_own_parameters_in_the_stem_group_are_frozen_too():
    with torch.device("meta"):
        vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    holder = torch.nn.Module()
    holder.backbone, holder.frozen = vit, ()
    F.set_frozen(holder, 1)
    assert not vit.cls_token.requires_grad and not vit.pos_embed.requires_grad
    assert not vit.blocks[0].attn.qkv.weight.requires_grad and vit.blocks[1].attn.qkv.weight.requires_grad
    # timm's freeze takes submodules: the same stem left cls_token training
    with torch.device("meta"):
        again = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    timm.utils.model.freeze(again, ["patch_embed", "blocks.0"])
    assert again.cls_token.requires_grad


def test_timms_batch_norm_swap_would_change_the_tensors_and_the_keys_eval_mode_computes_the_same():
    model = lite0()
    bn = model.backbone.bn1
    bn.momentum = 0.01
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
    x = torch.randn(2, 32, 8, 8)
    swapped = timm.layers.freeze_batch_norm_2d(copy.deepcopy(bn))
    assert isinstance(swapped, timm.layers.FrozenBatchNormAct2d)
    with torch.no_grad():
        torch.testing.assert_close(swapped(x.clone()), bn.eval()(x.clone()), rtol=0, atol=1e-5)
    backbone = copy.deepcopy(model.backbone)
    weight = backbone.bn1.weight
    timm.utils.model.freeze(backbone, ["bn1"])
    assert backbone.bn1.weight is not weight and "bn1.num_batches_tracked" not in backbone.state_dict()
    timm.utils.model.unfreeze(backbone, ["bn1"])
    assert backbone.bn1.weight is not weight and backbone.bn1.momentum == 0.1
    # set_frozen keeps the module, its tensors and its state dict
    keys = list(model.state_dict())
    F.set_frozen(model, 2)
    assert model.backbone.bn1 is bn and bn.weight.requires_grad is False and list(model.state_dict()) == keys


def fold_cfg(tiny_cfg, **extra):
    return tiny_cfg(**{"folds.n_folds": 2, "train.folds": "[0]", "train.lookahead_k": 2, **extra})


def prefix_state(model) -> dict:
    return {k: v.clone() for k, v in model.backbone.state_dict().items() if k.startswith(PREFIX)}


def test_frozen_stages_get_no_gradient_keep_weights_and_statistics_then_train_again(tiny_cfg, capsys):
    cfg = fold_cfg(tiny_cfg, **{"train.epochs": 3, "train.freeze_stages": 2, "train.unfreeze_epoch": 2})
    f = T.build_fold(cfg, prepare(cfg), 0)
    bb = f.model.backbone
    assert f.model.frozen == ("conv_stem", "bn1", "blocks.0", "blocks.1")
    before, everything = prefix_state(f.model), {k: v.clone() for k, v in bb.state_dict().items()}

    # one step by hand: the frozen prefix runs in eval mode, outside autograd, and gets no gradient
    seen = {}
    hook = bb.blocks[1].register_forward_hook(lambda m, i, out: seen.update(out=out))
    f.model.train()
    assert not bb.bn1.training and not bb.blocks[1][1].drop_path.training and bb.blocks[2].training
    images, meta, _ = next(iter(f.train_loader))
    forward(f.net, to_input(images, f.rt), meta, f.rt).sum().backward()
    hook.remove()
    assert not seen["out"].requires_grad
    for name, p in bb.named_parameters():
        assert (p.grad is None) == name.startswith(PREFIX), name
    f.model.zero_grad(set_to_none=True)

    for epoch in (0, 1):
        T.run_epoch(cfg, f, epoch, lambda: False)
    after = bb.state_dict()
    for k, v in before.items():  # weights, running statistics, num_batches_tracked
        assert torch.equal(after[k], v), k
    for k in ("blocks.2.0.conv_pw.weight", "blocks.2.0.bn1.running_mean", "conv_head.weight"):
        assert not torch.equal(after[k], everything[k]), k
    state = f.optimizer._base_optimizer.state  # no Adam state, no Lookahead slow copy for the frozen
    assert not any(p in state for n, p in bb.named_parameters() if n.startswith(PREFIX))
    steps = f.state["step"]

    T.run_epoch(cfg, f, 2, lambda: False)  # train.unfreeze_epoch=2: the third epoch trains everything
    assert "fold 0 epoch 3: nothing frozen;" in capsys.readouterr().out
    assert f.model.frozen == () and all(p.requires_grad for p in bb.parameters())
    after = bb.state_dict()
    for k in ("conv_stem.weight", "bn1.running_mean", "blocks.1.0.conv_pw.weight"):
        assert not torch.equal(after[k], before[k]), k
    stem = state[bb.conv_stem.weight]  # Adam started afresh at the unfreeze
    assert int(stem["step"]) == f.state["step"] - steps and "lookahead_slow_buff" in stem


def stop_after(log, epochs: int, steps: int = 0):
    """A stop flag that turns true once ``epochs`` epochs are logged and then ``steps`` more asks."""
    asks = itertools.count()
    return lambda: log.exists() and len(pd.read_csv(log)) >= epochs and next(asks) >= steps


def test_resume_is_exact_before_and_after_the_unfreeze_epoch(tiny_cfg, capsys):
    extra = {"train.epochs": 4, "train.freeze_stages": 2, "train.unfreeze_epoch": 2, "train.ema": True,
             "train.patience": 9}
    ref_cfg, cfg = fold_cfg(tiny_cfg, name="ref", **extra), fold_cfg(tiny_cfg, name="res", **extra)
    data = prepare(cfg)
    T.run_fold(ref_cfg, data, 0, lambda: False)
    log = cfg.exp_dir / "fold0" / "log.csv"
    with pytest.raises(Interrupted, match="after epoch 1"):  # frozen, before the unfreeze epoch
        T.run_fold(cfg, data, 0, stop_after(log, 1))
    with pytest.raises(Interrupted, match="during epoch 4"):  # mid-epoch, after the unfreeze epoch
        T.run_fold(cfg, data, 0, stop_after(log, 3, steps=2))
    capsys.readouterr()
    T.run_fold(cfg, data, 0, lambda: False)
    out = capsys.readouterr().out
    assert "resuming from" in out and "after epoch 3" in out and "fold 0 epoch 4: nothing frozen;" in out
    cols = ["epoch", "train_loss", "val_auc", "lr", "best"]
    pd.testing.assert_frame_equal(pd.read_csv(log)[cols], pd.read_csv(ref_cfg.exp_dir / "fold0" / "log.csv")[cols])
    got, ref = (load_checkpoint(c.exp_dir / "fold0" / "best.pt") for c in (cfg, ref_cfg))
    assert got["epoch"] == ref["epoch"] and got["model"].keys() == ref["model"].keys()
    for k, v in ref["model"].items():
        assert torch.equal(got["model"][k], v), k
    pd.testing.assert_frame_equal(*(pd.read_csv(c.exp_dir / "fold0" / "val_predictions.csv") for c in (cfg, ref_cfg)))


def test_train_py_freezes_unfreezes_and_infer_py_predicts_with_the_plain_model(tiny_data, tmp_path):
    args = tiny_overrides(tiny_data, tmp_path, **{"folds.n_folds": 2, "folds.path": str(tmp_path / "folds.csv"),
                                                  "train.freeze_stages": 3, "train.unfreeze_epoch": 1})
    out = run_cli(TRAIN, "--folds", "0", *args, cwd=tmp_path).stdout
    assert "fold 0 epoch 2: nothing frozen;" in out
    exp = tmp_path / "oof" / "tiny"
    best = load_checkpoint(exp / "fold0" / "best.pt")["model"]
    cfg = load_config(None, args)
    plain = build_model(cfg, best["meta.0.weight"].shape[1], pretrained="none")
    assert list(plain.state_dict()) == list(best) and plain.frozen == ()
    model, _ = predicting_model(cfg, best["meta.0.weight"].shape[1], exp / "fold0")
    assert model.frozen == ()
    run_main(INFER, "--allow-missing-folds", *args, cwd=tmp_path)
    sub = pd.read_csv(exp / "submission.csv")
    assert len(sub) > 0 and sub["target"].between(0, 1).all()


@pytest.mark.parametrize("extra, message", [
    ({"train.freeze_stages": -1}, "train.freeze_stages and train.unfreeze_epoch must be >= 0, got -1 and 0"),
    ({"train.freeze_stages": 8}, "train.freeze_stages=8: model.backbone=tf_efficientnet_lite0 has 7 stages after "
                                 "its stem; at most 7 (which freezes the whole backbone)"),
    ({"train.unfreeze_epoch": 1}, "train.unfreeze_epoch=1 needs train.freeze_stages > 0 (nothing is frozen)"),
    ({"train.freeze_stages": 2, "train.unfreeze_epoch": 2},
     "train.unfreeze_epoch=2 must be below train.epochs=2 (0 = never unfreeze)"),
], ids=["negative", "too_many", "nothing_frozen", "past_the_end"])
def test_bad_freeze_values_are_one_line_and_write_nothing(tiny_data, tmp_path, extra, message):
    args = tiny_overrides(tiny_data, tmp_path, **extra)
    line = one_error_line(run_main(TRAIN, *args, cwd=tmp_path, check=False))
    assert line == f"error: {message}"
    assert not (tmp_path / "oof").exists()


def test_unfreezing_under_torchrun_is_refused(tiny_cfg):
    cfg = tiny_cfg(**{"train.freeze_stages": 2, "train.unfreeze_epoch": 1})
    assert T.check_run(cfg, SINGLE) == [0, 1, 2]
    with pytest.raises(ConfigError, match="train.unfreeze_epoch needs one process: under torchrun"):
        T.check_run(cfg, Dist(world=2))
