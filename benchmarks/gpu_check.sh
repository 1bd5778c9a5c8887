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
# 5. prints benchmarks/throughput.py's ratios on the GPU (eager, compiled training, torch and compile
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
"$PY" benchmarks/throughput.py --source generated --images 1024 --backends torch,compile | tail -1
