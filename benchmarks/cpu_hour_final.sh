#!/usr/bin/env bash
# Issue 12, phase 2: the recipe configs/cpu_hour.yaml as a user runs it on ISIC 2017, from a cold
# image cache: train.py (5 folds) then infer.py (the val split, 150 images, with TTA), each timed;
# then the val split scored once against its labels, and the OOF compared with the screening's
# reference (benchmarks/cpu_hour_search.sh must have run first). The budget: train + infer <= 60 min.
#
#     bash benchmarks/cpu_hour_final.sh
#     EXTRA="train.aux_weight=0 model.predict=binary" bash benchmarks/cpu_hour_final.sh   # the recipe before issue 18
#     NAME=ov_p5 EXTRA="infer.backend=openvino train.patience=5" BASELINE=oof/diag/bin bash benchmarks/cpu_hour_final.sh
#
# EXTRA: overrides on top of the recipe; BASELINE: the experiment compared against (same rows and folds);
# SCORE_VAL=0: leave the val split unscored (a candidate; score the chosen one with benchmarks/score_val.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=oof/cpuhour
NAME=${NAME:-cpu_hour}
CFG=(--config configs/isic2017.yaml --config configs/cpu_hour.yaml name=$NAME output_dir=$OUT
     data.cache_dir=$OUT/cache_$NAME ${EXTRA:-})  # a cache of its own: its building is part of the timed run
t0=$SECONDS
"$PY" train.py "${CFG[@]}"
t1=$SECONDS
"$PY" infer.py "${CFG[@]}"
t2=$SECONDS
printf '%s\t%s\n%s_infer\t%s\n' $NAME $((t1 - t0)) $NAME $((t2 - t1)) >> $OUT/wall.tsv
echo "whole run: train.py $((t1 - t0)) s + infer.py $((t2 - t1)) s = $(( (t2 - t0) / 60 )) min $(( (t2 - t0) % 60 )) s"
if [ "${SCORE_VAL:-1}" = 1 ]; then bash benchmarks/score_val.sh "$OUT/$NAME/submission.csv"; fi
BASELINE=${BASELINE:-$OUT/ref_seed42}
if [ "$BASELINE" != "$OUT/$NAME" ]; then  # a run named as its own baseline (the first of a comparison) has nothing to pair
  "$PY" -m pipeline cv "$BASELINE" $OUT/$NAME --baseline "$(basename "$BASELINE")" --no-plot --out $OUT/compare_$NAME
fi
