#!/usr/bin/env bash
# The CUDA path, checked in a few minutes on whatever GPU is at hand (never run in CI):
#
#     bash benchmarks/gpu_check.sh            # then copy its last lines into benchmarks/README.md
#
# 1. trains and predicts a small real run on CUDA with AMP (train.py, infer.py: autocast bf16/fp16,
#    GradScaler for fp16, pinned memory, non-blocking copies), and the same run on the CPU;
# 2. checks CUDA against CPU: the CPU-trained checkpoints predict the test set on CUDA (AMP) and on the
#    CPU within 0.02 of each other, and the CUDA run's pooled OOF AUC is within 0.10 of the CPU's;
# 3. trains one fold under torchrun with NCCL (one process per visible GPU);
# 4. the compiled path (issue 17): the same run with train.compile (AMP + inductor/Triton) and
#    infer.backend=compile, its OOF AUC within 0.10 of the eager CUDA run's and its compile times
#    (log.csv's compile_s); one fold under torchrun + NCCL with train.compile (DDP first, then compile);
# 5. the device decisions: the AMP dtype chosen for this GPU's compute capability (bf16 from 8.0, else
#    fp16); with 2 or more GPUs, one fold under torchrun with train.sync_bn=true whose best.pt loads
#    into the plain model and predicts as the SyncBatchNorm model does; one epoch of the training loop
#    under torch.cuda.set_sync_debug_mode, counting the host syncs (one per epoch, for the loss);
# 6. prints benchmarks/throughput.py's ratios on the GPU (eager, compiled training, torch and compile
#    inference; ONNX Runtime and OpenVINO are CPU backends here).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('device:', torch.cuda.get_device_name())"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" -c "from pipeline.data.sample import generate_sample; generate_sample('$WORK/data')"
COMMON=(data.root="$WORK/data" data.cache_dir="$WORK/cache" output_dir="$WORK/oof" data.generate_sample=false
        folds.n_folds=3 train.epochs=3 model.image_size=96 train.batch_size=32 infer.tta=4)
time "$PY" train.py "${COMMON[@]}" name=cuda
"$PY" infer.py "${COMMON[@]}" name=cuda
time CUDA_VISIBLE_DEVICES= "$PY" train.py "${COMMON[@]}" name=cpu
CUDA_VISIBLE_DEVICES= "$PY" infer.py "${COMMON[@]}" name=cpu
"$PY" - "$WORK" <<'PYEOF'
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pipeline.core import config as C
from pipeline.train.infer import make_submission

work = Path(sys.argv[1])
auc = {n: roc_auc_score(*pd.read_csv(work / "oof" / n / "oof.csv")[["target", "pred"]].T.to_numpy()) for n in ("cuda", "cpu")}
print(f"pooled OOF AUC: cuda {auc['cuda']:.4f}, cpu {auc['cpu']:.4f}")
cpu_sub = pd.read_csv(work / "oof" / "cpu" / "submission.csv")
# the CPU-trained checkpoints, predicted on CUDA with AMP (this process sees the GPU)
cfg = C.load_config(None, [f"output_dir={work / 'oof'}", "name=cpu", f"data.cache_dir={work / 'cache'}"])
gpu_sub = pd.read_csv(make_submission(cfg))
diff = np.abs(gpu_sub.iloc[:, 1].to_numpy() - cpu_sub.iloc[:, 1].to_numpy()).max()
print(f"same checkpoints, CUDA AMP vs CPU float32 test predictions: max |diff| {diff:.4f}")
ok = diff < 0.02 and abs(auc["cuda"] - auc["cpu"]) < 0.10
print("gpu_check:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PYEOF
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
time "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" train.py "${COMMON[@]}" name=ddp --folds 0
time "$PY" train.py "${COMMON[@]}" name=cuda_compiled train.compile=true infer.backend=compile
"$PY" infer.py "${COMMON[@]}" name=cuda_compiled infer.backend=compile
time "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" train.py "${COMMON[@]}" name=ddp_compiled \
    train.compile=true --folds 0
"$PY" - "$WORK" <<'PYEOF'
import sys
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

oof = Path(sys.argv[1]) / "oof"
auc = {n: roc_auc_score(*pd.read_csv(oof / n / "oof.csv")[["target", "pred"]].T.to_numpy())
       for n in ("cuda", "cuda_compiled")}
compile_s = [pd.read_csv(p)["compile_s"].sum() for p in sorted((oof / "cuda_compiled").glob("fold*/log.csv"))]
ddp = pd.read_csv(oof / "ddp_compiled" / "fold0" / "log.csv")["compile_s"].sum()
print(f"compiled: pooled OOF AUC {auc['cuda_compiled']:.4f} (eager {auc['cuda']:.4f}); compile s per fold "
      f"{', '.join(f'{s:.0f}' for s in compile_s)}; DDP+compile fold 0: {ddp:.0f}s")
ok = abs(auc["cuda_compiled"] - auc["cuda"]) < 0.10 and all(s > 0 for s in compile_s) and ddp > 0
print("gpu_check compiled:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PYEOF
"$PY" - <<'PYEOF'
import torch

from pipeline.model.net import ImageMetaNet
from pipeline.model.runtime import make_runtime

cap = torch.cuda.get_device_capability()
rt = make_runtime(ImageMetaNet("test_efficientnet", 0), True, False, True, torch.device("cuda"))
want = torch.bfloat16 if cap >= (8, 0) else torch.float16
print(f"AMP dtype: {rt.amp_dtype} on compute capability {cap[0]}.{cap[1]} "
      f"(rule: bf16 from 8.0, else fp16 with a GradScaler)")
print("gpu_check AMP dtype:", "PASS" if rt.amp_dtype == want else f"FAIL (expected {want})")
raise SystemExit(rt.amp_dtype != want)
PYEOF
if [ "$NGPU" -ge 2 ]; then
    time "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" train.py "${COMMON[@]}" name=ddp_sync_bn \
        train.sync_bn=true --folds 0
    "$PY" - "$WORK" <<'PYEOF'
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.data.prepare import aux_head, eval_loader, prepare
from pipeline.experiment.record import saved_config
from pipeline.model.checkpoint_file import load_checkpoint
from pipeline.model.net import build_model, sync_batchnorm
from pipeline.model.runtime import place
from pipeline.train.checkpoints import predicting_model
from pipeline.train.loop import predict

fold = Path(sys.argv[1]) / "oof" / "ddp_sync_bn" / "fold0"
cfg = saved_config(fold.parent / "config.yaml")
data = prepare(cfg)
diagnosis = data.diagnosis if aux_head(cfg) else None
plain, rt = predicting_model(cfg, data.meta.shape[1], fold, diagnosis, torch.device("cuda"))  # strict load
synced = sync_batchnorm(build_model(cfg, data.meta.shape[1], diagnosis, pretrained="none"))
synced.load_state_dict(load_checkpoint(fold / "best.pt")["model"])
place(synced, rt)
loader = eval_loader(cfg, data, np.flatnonzero(data.df["fold"].to_numpy() == 0), True)
diff = np.abs(predict(plain, loader, rt) - predict(synced, loader, rt)).max()
print(f"train.sync_bn: best.pt in the plain model vs the SyncBatchNorm model: max |diff| {diff:.2e}")
print("gpu_check sync_bn:", "PASS" if diff < 1e-6 else "FAIL")
sys.exit(0 if diff < 1e-6 else 1)
PYEOF
else
    echo "gpu_check sync_bn: skipped (train.sync_bn needs 2 or more GPUs; $NGPU visible)"
fi
"$PY" - "$WORK" <<'PYEOF'
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from pipeline.core import config as C
from pipeline.data.prepare import prepare
from pipeline.train import loop, trainer as T

work = Path(sys.argv[1])
# bf16 needs no GradScaler; below sm_80 the loop runs in fp32, as fp16's GradScaler.step reads its
# inf check on the host every step (torch's design)
bf16 = torch.cuda.get_device_capability() >= (8, 0)
cfg = C.load_config(None, [f"data.root={work / 'data'}", f"data.cache_dir={work / 'cache'}",
                           f"output_dir={work / 'oof'}", "data.generate_sample=false", "folds.n_folds=3",
                           "model.image_size=96", "train.batch_size=32", "name=sync_check", f"train.amp={bf16}",
                           "train.ema=true", "train.mixup_prob=1.0", "data.diagnosis_col=diagnosis",
                           "train.aux_weight=0.5"])
f = T.build_fold(cfg, prepare(cfg), 0)


def epoch() -> int:
    """One epoch of the loop as run_epoch runs it (diagnosis head, mixup, EMA); returns its steps."""
    before = f.state["step"]
    _, f.state["step"] = loop.train_one_epoch(
        f.net, f.train_loader, f.optimizer, f.scheduler, f.scaler, f.rt, before, 1.0, 0.4,
        np.random.default_rng(0), after_step=lambda s: f.ema.update(f.model, step=s), aux_weight=0.5)
    return f.state["step"] - before


epoch()  # warm-up: the allocator, cuDNN's choices
torch.cuda.synchronize()
start = time.time()
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    torch.cuda.set_sync_debug_mode("warn")
    steps = epoch()
    torch.cuda.set_sync_debug_mode("default")
torch.cuda.synchronize()
ms = (time.time() - start) / steps * 1000
syncs = [w for w in seen if "synchroniz" in str(w.message)]
print(f"host syncs: {len(syncs)} in one epoch of {steps} steps ({ms:.1f} ms/step, amp {f.rt.amp_dtype})")
for w in syncs[:5]:
    print(f"  {w.filename}:{w.lineno}: {str(w.message).splitlines()[0]}")
ok = len(syncs) <= 1 + steps // loop.LOSS_EVERY  # the epoch's loss, and the progress bar's every LOSS_EVERY steps
print("gpu_check no sync per step:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PYEOF
"$PY" benchmarks/throughput.py --source generated --images 1024 --backends torch,compile | tail -1
