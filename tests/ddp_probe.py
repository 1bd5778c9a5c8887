"""Run under torchrun by tests/test_distributed.py: builds one fold as the trainer does, trains one
epoch with DDP, and prints (rank 0) JSON of what each rank saw: the head bias at the start, every
mixup lambda, the global step, a checksum of the weights and of Lookahead's slow weights, and how far
the model is from its slow weights."""
import json
import sys

from pipeline.core import config as C
from pipeline.data.prepare import prepare
from pipeline.train import distributed as D, loop, trainer as T


def seen_by_this_rank(dist: D.Dist) -> dict:
    """The fold (its DDP model holds the process group) lives only in here: gloo's threads end with
    it, before the group is destroyed; a DDP model still alive at exit aborted the ranks now and then
    ("terminate called without an active exception", after the JSON was printed)."""
    cfg = C.load_config(None, sys.argv[1:])
    fold = T.build_fold(cfg, prepare(cfg), 0, dist)
    bias = fold.model.head.bias.detach().tolist()
    lams = []
    real_mixup = loop.mixup

    def recording(*args, **kwargs):
        out = real_mixup(*args, **kwargs)
        lams.append(out[-1])
        return out

    loop.mixup = recording
    T.run_epoch(cfg, fold, 0, lambda: False, dist)
    pairs = [(p, s["lookahead_slow_buff"]) for g in fold.optimizer.param_groups for p in g["params"]
             if (s := fold.optimizer._base_optimizer.state.get(p)) and "lookahead_slow_buff" in s]
    slow = [s for _, s in pairs]
    return {"bias": bias, "lams": lams, "step": fold.state["step"], "rows": len(fold.train_loader.sampler),
            "weights": float(sum(p.double().sum() for p in fold.model.state_dict().values() if p.is_floating_point())),
            "slow": float(sum(s.double().sum() for s in slow)), "n_slow": len(slow),
            "gap": max(float((p - s).abs().max()) for p, s in pairs),  # the model against its slow weights
            "head": fold.model.head.weight.detach().double().sum(1).tolist()}  # per output: binary, then classes


dist = D.init()
everyone = dist.gather(seen_by_this_rank(dist))
if dist.main:
    sys.__stdout__.write(json.dumps(everyone) + "\n")
D.shutdown(dist)
