"""Optimizer: Lookahead(Adam), weight decay only on conv/linear weights, slow update every k steps;
an epoch ends on the slow weights (validated, saved, resumed)."""
from __future__ import annotations

import copy

import pytest
import torch
from timm.optim import Lookahead, param_groups_weight_decay
from torch import nn

from pipeline.core.config import TrainConfig
from pipeline.data.prepare import prepare
from pipeline.model.checkpoint_file import load_checkpoint
from pipeline.train import trainer as T
from pipeline.train.checkpoints import resume, save_epoch
from pipeline.train.trainer import build_optimizer, sync_slow_weights


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 1))


def test_lookahead_wraps_adam_with_configured_k_alpha_lr():
    t = TrainConfig()
    assert (t.lookahead_k, t.lookahead_alpha) == (5, 0.5)
    opt = build_optimizer(small_net(), t)
    assert isinstance(opt, Lookahead)
    assert type(opt._base_optimizer) is torch.optim.Adam
    for g in opt.param_groups:
        assert (g["lookahead_k"], g["lookahead_alpha"], g["lr"]) == (5, 0.5, t.lr)
    opt = build_optimizer(small_net(), TrainConfig(lookahead_k=3, lookahead_alpha=0.8))
    assert {(g["lookahead_k"], g["lookahead_alpha"]) for g in opt.param_groups} == {(3, 0.8)}


def test_weight_decay_only_on_conv_and_linear_weights():
    net = small_net()
    opt = build_optimizer(net, TrainConfig(weight_decay=0.03))
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    expected = {"0.weight": 0.03, "0.bias": 0.0, "1.weight": 0.0, "1.bias": 0.0, "4.weight": 0.03, "4.bias": 0.0}
    assert {n: decay[id(p)] for n, p in net.named_parameters()} == expected


def test_slow_weights_move_every_k_steps():
    """Lookahead against a plain Adam run on an identical copy: in between sync points the
    parameters are exactly the fast (Adam) ones; at a sync point they become
    slow + alpha * (fast - slow)."""
    t = TrainConfig(weight_decay=0.01, lr=0.05)
    k, alpha = t.lookahead_k, t.lookahead_alpha
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    ref = copy.deepcopy(net)
    opt = build_optimizer(net, t)
    ref_opt = torch.optim.Adam(param_groups_weight_decay(ref, t.weight_decay), lr=t.lr)
    x, y = torch.randn(8, 3), torch.randn(8, 2)

    def step(model, optimizer):
        optimizer.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        optimizer.step()

    def params(model):
        return [p.detach().clone() for p in model.parameters()]

    def has_slow():
        return any("lookahead_slow_buff" in opt._base_optimizer.state[p] for p in net.parameters())

    for _ in range(k - 1):
        step(net, opt), step(ref, ref_opt)
        for a, b in zip(params(net), params(ref)):
            assert torch.equal(a, b)
        assert not has_slow()

    # step k: the first sync point. timm creates the slow copy here (from the fast weights, so this
    # first pull changes nothing); either way the parameters now equal the slow weights.
    step(net, opt), step(ref, ref_opt)
    slow = params(net)
    for p, s in zip(net.parameters(), slow):
        assert torch.equal(opt._base_optimizer.state[p]["lookahead_slow_buff"], s)
    with torch.no_grad():  # the reference continues from the synced point with the same Adam state
        for p, s in zip(ref.parameters(), slow):
            p.copy_(s)

    for _ in range(k - 1):
        step(net, opt), step(ref, ref_opt)
        for a, b in zip(params(net), params(ref)):
            assert torch.equal(a, b)
        for p, s in zip(net.parameters(), slow):  # slow weights did not move
            assert torch.equal(opt._base_optimizer.state[p]["lookahead_slow_buff"], s)

    step(net, opt), step(ref, ref_opt)  # step 2k: pulled back towards the slow weights
    for a, fast, s in zip(params(net), params(ref), slow):
        torch.testing.assert_close(a, s + alpha * (fast - s), rtol=0, atol=1e-7)
        assert not torch.allclose(a, fast)


@pytest.mark.parametrize("extra", [{}, {"train.ema": True}, {"train.accumulate": 2}], ids=["plain", "ema", "accumulate"])
def test_the_slow_weights_are_validated_saved_and_resumed(tiny_cfg, monkeypatch, one_torch_thread, extra):
    """An epoch whose step count is not a multiple of k ends on its slow weights: they are what
    the model holds, what validates (the EMA validates with train.ema), what last.pt and best.pt
    hold, and what a resumed fold starts from."""
    cfg = tiny_cfg(**{"train.lookahead_k": 3, "train.batch_size": 16, **extra})
    data = prepare(cfg)
    f = T.build_fold(cfg, data, 0)
    validated = {}

    def record(model, *args):
        validated.update({k: v.clone() for k, v in model.state_dict().items()})
        return real_predict(model, *args)

    real_predict = T.predict_fold
    monkeypatch.setattr(T, "predict_fold", record)
    row = T.run_epoch(cfg, f, 0, lambda: False)
    assert f.state["step"] % 3 != 0  # the epoch ends between two of Lookahead's own slow updates
    slow = slow_weights(f.model, f.optimizer)
    assert slow and all(torch.equal(p, slow[n]) for n, p in f.model.named_parameters())
    if not cfg.train.ema:
        assert all(torch.equal(validated[n], w) for n, w in slow.items())
    f.dir.mkdir(parents=True)
    save_epoch(f, True, row["val_auc"])
    saved = load_checkpoint(f.dir / "last.pt")["model"]
    assert all(torch.equal(saved[n], w) for n, w in slow.items())
    if not cfg.train.ema:
        best = load_checkpoint(f.dir / "best.pt")["model"]
        assert all(torch.equal(best[n], w) for n, w in slow.items())
    again = T.build_fold(cfg, data, 0)
    resume(again)
    assert slow_weights(again.model, again.optimizer).keys() == slow.keys()
    assert all(torch.equal(p, slow[n]) for n, p in again.model.named_parameters())
    assert all(torch.equal(w, slow[n]) for n, w in slow_weights(again.model, again.optimizer).items())


def slow_weights(model, optimizer) -> dict:
    state = optimizer._base_optimizer.state
    return {n: state[p]["lookahead_slow_buff"] for n, p in model.named_parameters() if "lookahead_slow_buff" in state[p]}


def test_the_sync_pulls_towards_the_slow_weights_and_leaves_unstepped_parameters():
    t = TrainConfig(lr=0.05)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    net[1].requires_grad_(False)  # never stepped: no optimizer state
    opt = build_optimizer(net, t)
    x = torch.randn(8, 3)
    for step in range(t.lookahead_k + 2):  # a slow update at step k, then two fast steps
        opt.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
        opt.step()
        if step == t.lookahead_k - 1:
            slow = [p.detach().clone() for p in net[0].parameters()]
    opt.zero_grad(set_to_none=True)  # as the loop leaves it: timm's sync_lookahead would skip every parameter
    fast = [p.detach().clone() for p in net[0].parameters()]
    frozen = [p.detach().clone() for p in net[1].parameters()]
    sync_slow_weights(opt)
    for p, s, f in zip(net[0].parameters(), slow, fast):
        torch.testing.assert_close(p.detach(), s + t.lookahead_alpha * (f - s), rtol=0, atol=1e-7)
        assert not torch.equal(p, f)
    assert all(torch.equal(p, q) for p, q in zip(net[1].parameters(), frozen))
    assert not any(opt._base_optimizer.state.get(p) for p in net[1].parameters())
