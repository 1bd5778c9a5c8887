"""EMA of the weights (timm ModelEmaV3): validated, saved as best.pt, resumed exactly; and --seeds."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, run_main, tiny_overrides

from pipeline.data.prepare import prepare
from pipeline.model.checkpoint_file import load_checkpoint, save_checkpoint
from pipeline.model.net import build_model
from pipeline.train import trainer as T
from pipeline.train.distributed import SINGLE
from pipeline.train.loop import predict


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


def test_ema_weights_are_validated_saved_and_resumed_exactly(tiny_cfg):
    def cfg(name):
        return tiny_cfg(**{"folds.n_folds": 2, "train.epochs": 2, "train.ema": True, "train.ema_decay": 0.9,
                           "name": name})

    ref_cfg, res_cfg = cfg("ref"), cfg("res")
    data = prepare(ref_cfg)
    ref = T.run_fold(ref_cfg, data, 0, lambda: False)
    last = res_cfg.exp_dir / "fold0" / "last.pt"
    with pytest.raises(T.Interrupted):
        T.run_fold(res_cfg, data, 0, last.exists)  # "Ctrl-C" once epoch 1 is saved
    ckpt, best = load_checkpoint(last), load_checkpoint(res_cfg.exp_dir / "fold0" / "best.pt")
    assert ckpt["ema"].keys() == ckpt["model"].keys()
    # epoch 1 is best by definition: best.pt holds the weights that were validated, the EMA's
    assert all(torch.equal(best["model"][k], ckpt["ema"][k]) for k in ckpt["ema"])
    assert any(not torch.equal(ckpt["model"][k], ckpt["ema"][k]) for k in ckpt["ema"] if "weight" in k)
    res = T.run_fold(res_cfg, data, 0, lambda: False)
    np.testing.assert_array_equal(ref["pred"].to_numpy(), res["pred"].to_numpy())  # resume is exact
    plain = T.run_fold(tiny_cfg(**{"folds.n_folds": 2, "train.epochs": 2, "name": "plain"}), data, 0, lambda: False)
    assert np.abs(plain["pred"].to_numpy() - ref["pred"].to_numpy()).max() > 1e-4  # the EMA is what predicts


def test_oof_is_predicted_by_the_best_checkpoint_with_ema(tiny_cfg):
    """With train.ema, best.pt holds the EMA's weights of the best epoch: the OOF rows must come
    from them, not from the EMA as it stands after the last epoch."""
    cfg = tiny_cfg(**{"folds.n_folds": 2, "train.ema": True, "name": "ema_best"})
    data = prepare(cfg)
    f = T.build_fold(cfg, data, 0)
    f.dir.mkdir(parents=True)
    torch.manual_seed(0)
    best = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() and "running" not in k else v
            for k, v in f.model.state_dict().items()}  # an epoch the EMA has since moved away from
    save_checkpoint(f.dir / "best.pt", {"model": best, "epoch": 1, "auc": 0.5})
    f.state.update(best_auc=0.5, best_epoch=1)
    oof = T.finish_fold(cfg, data, f, SINGLE)
    model = build_model(cfg, data.meta.shape[1])
    model.load_state_dict(best)
    expected = predict(model, f.val_loader, f.rt, tta=cfg.infer.tta)
    np.testing.assert_allclose(oof["pred"].to_numpy(), expected, atol=1e-6)


def test_seeds_train_one_experiment_each_and_compare_them(tiny_data, tmp_path):
    args = tiny_overrides(tiny_data, tmp_path, **{"train.epochs": 1})
    out = run_main(str(ROOT / "train.py"), *args, "--folds", "0", "--seeds", "3,4", cwd=tmp_path).stdout
    for seed in (3, 4):
        saved = yaml.safe_load((tmp_path / "oof" / f"tiny_seed{seed}" / "config.yaml").read_text())
        assert saved["train"]["seed"] == seed and saved["name"] == f"tiny_seed{seed}"
    assert "Compare 2 experiments" in out and "tiny_seed3" in out and "tiny_seed4" in out
