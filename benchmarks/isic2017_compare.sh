#!/usr/bin/env bash
# Several experiments on the real ISIC 2017 data, compared with intervals and blended out of fold
# (issue 11). About 30 min on a 2-core CPU; the tables land in oof/cmp/compare*/ and on stdout:
#
#     bash benchmarks/isic2017_compare.sh
#
# The runs: the full pipeline with two training seeds (the noise floor), EMA on, mixup off,
# Lookahead off, and 96 px instead of 64; all at 64 px (but one), up to 4 epochs, the same folds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=oof/cmp
BASE=(--config configs/isic2017.yaml model.image_size=64 train.epochs=4 output_dir=$OUT)
"$PY" train.py "${BASE[@]}" name=full --seeds 42,1
"$PY" train.py "${BASE[@]}" name=ema train.ema=true
"$PY" train.py "${BASE[@]}" name=no_mixup train.mixup_prob=0
"$PY" train.py "${BASE[@]}" name=no_lookahead train.lookahead_k=1 train.lookahead_alpha=1
"$PY" train.py "${BASE[@]}" name=px96 model.image_size=96
RUNS=(full_seed42 full_seed1 ema no_mixup no_lookahead px96)
for run in "${RUNS[@]}"; do "$PY" infer.py output_dir=$OUT name="$run"; done  # submissions, as each was trained
"$PY" -m pipeline cv "${RUNS[@]/#/$OUT/}" --baseline full_seed42 --out "$OUT/compare"
"$PY" -m pipeline blend $OUT/full_seed42 $OUT/ema $OUT/px96 --name blend_rank --method rank
"$PY" -m pipeline blend $OUT/full_seed42 $OUT/ema $OUT/px96 --name blend_fit --method fit
"$PY" -m pipeline cv $OUT/full_seed42 $OUT/px96 $OUT/blend_rank $OUT/blend_fit --baseline px96 --no-plot \
    --out "$OUT/compare_blends"
