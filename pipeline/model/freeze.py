"""``train.freeze_stages``: the backbone's stem and first stages frozen, for a cheaper training step;
``train.unfreeze_epoch``: after that many epochs they train again.

The stages are timm's own: a backbone's coarse ``group_matcher`` (the groups of timm's layer-wise
learning-rate decay) puts the stem in group 0 and each stage in a group after it, and freezing N
freezes groups 0..N, so the largest N freezes the whole backbone. tf_efficientnet_lite0 has 7:
``conv_stem`` and ``bn1``, then ``blocks.0`` ... ``blocks.6``, the last with ``conv_head`` and ``bn2``.

Every parameter of those groups gets ``requires_grad=False``: no gradient, and no backward pass
through the frozen prefix; Adam and Lookahead skip a parameter without a gradient, so it stays as it
is. The largest submodules whose parameters and buffers all lie in those groups (``frozen_roots``)
stay in eval mode (``ImageMetaNet.train``): their batch norms normalise with their running statistics
and do not update them, and their stochastic depth is off.

timm's ``timm.utils.model.freeze`` is not used: it freezes submodules only (a backbone's own
parameters, such as a ViT's ``cls_token`` in its stem group, would train on), and its batch-norm swap
to ``FrozenBatchNormAct2d`` puts new tensors in place of the weights and biases (the optimizer, and
Lookahead's slow weights, would hold the old ones) in modules without ``num_batches_tracked`` (the
state dict's keys would change with the freezing); its ``unfreeze`` swaps back to new parameters
with the default momentum. Eval mode gives the same arithmetic as the swap and keeps the modules,
their tensors and the state dict as they are.

The optimizer holds every parameter from the start, the frozen ones too; those start their Adam
state (and Lookahead's slow copy) at their first step after ``train.unfreeze_epoch``.
"""
from __future__ import annotations

import timm
import torch
from timm.models._manipulate import group_with_matcher
from torch import nn

from pipeline.core.errors import ConfigError


def groups(backbone: nn.Module) -> dict[str, int]:
    """Each parameter's and buffer's name in ``backbone`` -> its group: 0 the stem, then the stages
    (timm's coarse ``group_matcher``)."""
    names = [n for n, _ in backbone.named_parameters()] + [n for n, _ in backbone.named_buffers()]
    return group_with_matcher(((n, None) for n in names), backbone.group_matcher(coarse=True), reverse=True)


def stage_count(backbone: nn.Module) -> int:
    """How many stages follow the stem: the largest ``train.freeze_stages``."""
    return max(groups(backbone).values())


def frozen_roots(backbone: nn.Module, stages: int) -> tuple[str, ...]:
    """The largest submodules of ``backbone`` whose parameters and buffers all lie in the stem and
    the first ``stages`` stages, in order; none for 0."""
    if stages == 0:
        return ()
    group, roots = groups(backbone), []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            tensors = [g for k, g in group.items() if k.startswith(f"{prefix}{name}.")]
            if tensors and max(tensors) <= stages:
                roots.append(prefix + name)
            elif tensors and min(tensors) <= stages:
                walk(child, f"{prefix}{name}.")

    walk(backbone, "")
    return tuple(roots)


def set_frozen(model: nn.Module, stages: int) -> bool:
    """Freeze the stem and the first ``stages`` stages of ``model.backbone`` (an ImageMetaNet) and
    let the rest of it train: ``requires_grad`` per parameter by its group, eval mode through
    ``model.frozen``. Returns whether anything changed."""
    group, roots = groups(model.backbone), frozen_roots(model.backbone, stages)
    changed = roots != model.frozen
    for name, p in model.backbone.named_parameters():
        trains = stages == 0 or group[name] > stages
        changed |= p.requires_grad != trains
        p.requires_grad_(trains)
    model.frozen = roots
    model.train(model.training)  # the frozen ones to eval mode, the others back to the model's mode
    return changed


def stages_at(t, epoch: int) -> int:
    """The stages frozen during ``epoch`` (0-based) by the train config ``t``: train.freeze_stages
    until train.unfreeze_epoch epochs have run (0: always), then none."""
    return t.freeze_stages if t.unfreeze_epoch == 0 or epoch < t.unfreeze_epoch else 0


def describe(model: nn.Module) -> str:
    """What trains: the frozen submodules and the count of trainable parameters."""
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = f"frozen: {', '.join(model.frozen)}" if model.frozen else "nothing frozen"
    return f"{frozen}; {n:,} trainable parameters"


def check_freeze(cfg, world: int) -> None:
    """train.freeze_stages and train.unfreeze_epoch against the backbone (built on the meta device:
    names only, no memory, no weights) and the run: a one-line ConfigError before anything is written."""
    t, name = cfg.train, cfg.model.backbone
    if min(t.freeze_stages, t.unfreeze_epoch) < 0:
        raise ConfigError(f"train.freeze_stages and train.unfreeze_epoch must be >= 0, got {t.freeze_stages} "
                          f"and {t.unfreeze_epoch}")
    if t.unfreeze_epoch and not t.freeze_stages:
        raise ConfigError(f"train.unfreeze_epoch={t.unfreeze_epoch} needs train.freeze_stages > 0 (nothing is frozen)")
    if t.unfreeze_epoch >= t.epochs:
        raise ConfigError(f"train.unfreeze_epoch={t.unfreeze_epoch} must be below train.epochs={t.epochs} "
                          f"(0 = never unfreeze)")
    if t.unfreeze_epoch and world > 1:
        raise ConfigError("train.unfreeze_epoch needs one process: under torchrun, DDP keeps the parameters that "
                          "trained when it was built; set train.unfreeze_epoch=0")
    if not t.freeze_stages:
        return
    with torch.device("meta"):
        backbone = timm.create_model(name, pretrained=False, num_classes=0)
    if not hasattr(backbone, "group_matcher"):
        raise ConfigError(f"train.freeze_stages: model.backbone={name} has no timm group_matcher to name its stages")
    top = stage_count(backbone)
    if t.freeze_stages > top:
        raise ConfigError(f"train.freeze_stages={t.freeze_stages}: model.backbone={name} has {top} stages after "
                          f"its stem; at most {top} (which freezes the whole backbone)")
