#!/usr/bin/env bash
# The ISIC 2017 val split scored against its labels: a submission.csv that infer.py wrote with
# configs/isic2017.yaml (150 images). Run once, for the recipe chosen on its OOF, never to choose.
#
#     bash benchmarks/score_val.sh oof/cpuhour/<name>/submission.csv
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" - "$1" <<'PY'
import sys
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from pipeline.report import stats
sub = pd.read_csv(sys.argv[1])
meta = pd.read_csv("../shared/data/isic2017/metadata.csv").set_index("image_id")
y, p = meta.loc[sub["image_id"], "melanoma"].to_numpy(), sub["melanoma"].to_numpy()
assert (meta.loc[sub["image_id"], "split"] == "val").all() and len(sub) == 150
draws = stats.draw_groups(len(y), 1000, np.random.default_rng(0))  # pipeline.stats' bootstrap: each image a group
lo, hi = stats.percentile_interval(stats.bootstrap_auc(p, y, stats.group_codes(None, len(y)), draws)[:, 0])
print(f"val split (scored once): AUC {roc_auc_score(y, p):.4f} (95% interval {lo:.3f} to {hi:.3f}, images resampled) "
      f"on {len(sub)} images, {int(y.sum())} melanoma")
PY
